"""jaxnet: how neural networks are trained.

As pure JAX functions whose gradients are checked by hand.
"""

from jaxnet import activations, backprop, layers, losses, optim, shapes

__version__ = "0.1.0"
__all__ = ["activations", "backprop", "layers", "load", "losses", "optim", "shapes", "__version__"]


def load(workdir: str):
    """The trained network of a train.py workdir, ready to call: see jaxnet.training.trained."""
    from jaxnet.training.trained import load as load_trained  # the trainer's imports, on demand

    return load_trained(workdir)


# jaxnet.verify is imported on demand: it is also the module `python -m jaxnet.verify` runs.
