"""jaxnet: how neural networks are trained.

As pure JAX functions whose gradients are checked by hand.
"""

from jaxnet import activations, backprop, layers, losses, optim, shapes

__version__ = "0.1.0"
__all__ = ["activations", "backprop", "layers", "losses", "optim", "shapes", "__version__"]
# jaxnet.verify is imported on demand: it is also the module `python -m jaxnet.verify` runs.
