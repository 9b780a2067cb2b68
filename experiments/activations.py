"""Experiment 6: the activations of slides 003 and the vanishing gradient of a deep sigmoid network.

- sigmoid, tanh, ReLU and swish (beta = 1) with their hand-written derivatives from
  `jaxnet.activations`, checked against jax.grad on the plotted grid.
- Gradient norm per layer of a 10-hidden-layer, 32-unit MLP on a batch of scikit-learn digits, at
  initialisation (Nielsen's N(0, 1/n_in) weights for both): back-propagation multiplies by
  sigma'(a) <= 1/4 at every sigmoid layer, so the first layers' gradients are orders of magnitude
  smaller than the last's; ReLU passes gradients through at slope 1 where units are active.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import report
from jaxnet import activations as A
from jaxnet.data import load_dataset
from jaxnet.models import build_model
from jaxnet.training.build import per_sample_loss

FUNCTIONS = {
    "sigmoid": (A.sigmoid, A.sigmoid_derivative),
    "tanh": (A.tanh, A.tanh_derivative),
    "relu": (A.relu, A.relu_derivative),
    "swish": (A.swish, A.swish_derivative),
}
DEPTH, WIDTH = 10, 32


def deep_mlp(activation: str):
    c = ml_collections.ConfigDict(
        {
            "kind": "mlp",
            "hidden": (WIDTH,) * DEPTH,
            "activation": activation,
            "init": "nielsen",
            "init_std": 0.01,
            "dropout": 0.0,
        }
    )
    return build_model(c, 10)


def gradient_norms(activation: str, images, labels, seed: int = 0) -> np.ndarray:
    """||dR/dW|| of each Dense layer (input side first) at initialisation.

    R is the batch's mean cross-entropy.
    """
    model = deep_mlp(activation)
    _, params = model.init(jax.random.PRNGKey(seed), images.shape[1:])
    loss = per_sample_loss("cross_entropy", "softmax", 10)
    grads = jax.grad(lambda p: jnp.mean(loss(model.apply(p, images), labels)))(params)
    return np.array(
        [float(jnp.linalg.norm(g["W"])) for g in grads if isinstance(g, dict) and "W" in g]
    )


def run(out_dir: str, quick: bool = False) -> dict:
    z = jnp.linspace(-5.0, 5.0, 401)
    fig, axes = report.figure(ncols=3, width=4.4)
    rows = []
    for name, (f, df) in FUNCTIONS.items():
        (line,) = axes[0, 0].plot(z, f(z), label=name)
        axes[0, 1].plot(z, df(z), color=line.get_color(), label=name)
        by_grad = jax.vmap(jax.grad(f))(z)
        rows.append(
            {
                "activation": name,
                "max |hand-written f' - jax.grad|": float(jnp.max(jnp.abs(df(z) - by_grad))),
                "f'(0)": float(df(jnp.zeros(()))),
            }
        )
    axes[0, 0].set(xlabel="a", title="Activations h(a)", ylim=(-1.5, 5))
    axes[0, 1].set(xlabel="a", title="Derivatives h'(a)")
    axes[0, 0].legend(fontsize=8)

    data = load_dataset("digits", validation_size=0, seed=0, log=lambda *a: None)
    n = 256 if quick else 1024
    images, labels = jnp.asarray(data.train.images[:n]), jnp.asarray(data.train.labels[:n])
    norms = {name: gradient_norms(name, images, labels) for name in ("sigmoid", "relu")}
    layers = np.arange(1, DEPTH + 2)
    for name, g in norms.items():
        axes[0, 2].semilogy(layers, g, "o-", label=name)
    axes[0, 2].set(
        xlabel="layer (1 = input side)",
        ylabel="||dR/dW||",
        title=f"Gradient per layer, {DEPTH}x{WIDTH} MLP at init",
    )
    axes[0, 2].legend()
    figure = report.save_figure(fig, out_dir, "activations")
    extra = {
        "gradient_norms": {name: g.tolist() for name, g in norms.items()},
        "first_over_last": {name: float(g[0] / g[-1]) for name, g in norms.items()},
        "batch": n,
    }
    return report.write_results(
        out_dir,
        "activations",
        "Activations, their derivatives, and the vanishing gradient",
        rows,
        [figure],
        extra,
    )
