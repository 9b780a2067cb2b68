"""Experiment 4: loss and information curves (notes 000, Figure 2 and Figure 5; slides 003).

- The two-class cross-entropy l(y, p) = -y log p - (1 - y) log(1 - p) for y = 1 and y = 0
  (Figure 2): mirror images, l(1, p) = l(0, 1 - p), meeting at p = 1/2 where l = 1 bit.
- The entropy H(q) = -q log2 q - (1 - q) log2(1 - q) (Figure 5): 0 at q = 0 and 1, 1 bit at
  q = 1/2.
- The gradients through a sigmoid a = sigma(z) with target y = 0: the quadratic cost's
  (a - y) sigma'(z) vanishes as the unit saturates, the cross-entropy's a - y does not (the cause
  of experiment 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from jaxnet import losses
from jaxnet.activations import sigmoid


def cross_entropy_bits(y: float, p):
    p = jnp.asarray(p)
    return losses.binary_cross_entropy(p[:, None], jnp.full((p.shape[0], 1), y), unit="bits")


def sigmoid_gradients(z):
    """dC/dz of both costs of a = sigma(z) against y = 0, by jax.grad."""
    z = jnp.asarray(z)
    quad = jax.vmap(
        jax.grad(lambda z: losses.quadratic(sigmoid(z)[None, None], jnp.zeros((1, 1)))[0])
    )(z)
    xent = jax.vmap(
        jax.grad(
            lambda z: losses.binary_cross_entropy(sigmoid(z)[None, None], jnp.zeros((1, 1)))[0]
        )
    )(z)
    return np.asarray(quad), np.asarray(xent)


def run(out_dir: str, quick: bool = False) -> dict:
    p = np.linspace(0.0, 1.0, 401)[1:-1]
    q = np.linspace(0.0, 1.0, 401)
    z = np.linspace(-6.0, 6.0, 241)
    ce1, ce0 = np.asarray(cross_entropy_bits(1.0, p)), np.asarray(cross_entropy_bits(0.0, p))
    H = np.asarray(losses.binary_entropy(jnp.asarray(q)))
    quad, xent = sigmoid_gradients(z)

    fig, axes = report.figure(ncols=3, width=4.4)
    axes[0, 0].plot(p, ce1, color="tab:blue", label="y = 1")
    axes[0, 0].plot(p, ce0, color="tab:orange", label="y = 0")
    axes[0, 0].set(
        xlabel="score p",
        ylabel="l(y, p) in bits",
        title="Two-class cross-entropy (000, Fig. 2)",
        ylim=(0, 6),
    )
    axes[0, 0].legend()
    axes[0, 1].plot(q, H)
    axes[0, 1].set(xlabel="q", ylabel="H(q) in bits", title="The entropy function (000, Fig. 5)")
    axes[0, 2].plot(z, quad, label="quadratic: (a - y) sigma'(z)")
    axes[0, 2].plot(z, xent, label="cross-entropy: a - y")
    axes[0, 2].set(
        xlabel="z (a = sigma(z), y = 0)", ylabel="dC/dz", title="Gradient through a sigmoid"
    )
    axes[0, 2].legend(fontsize=8)
    figure = report.save_figure(fig, out_dir, "information")

    half = (
        np.asarray(cross_entropy_bits(1.0, [0.5]))[0],
        np.asarray(cross_entropy_bits(0.0, [0.5]))[0],
    )
    rows = [
        {"quantity": "l(1, 1/2) in bits", "jaxnet": float(half[0]), "notes": 1.0},
        {"quantity": "l(0, 1/2) in bits", "jaxnet": float(half[1]), "notes": 1.0},
        {
            "quantity": "max |l(1, p) - l(0, 1 - p)|",
            "jaxnet": float(np.max(np.abs(ce1 - ce0[::-1]))),
            "notes": 0.0,
        },
        {"quantity": "H(0)", "jaxnet": float(H[0]), "notes": 0.0},
        {"quantity": "H(1/2)", "jaxnet": float(H[200]), "notes": 1.0},
        {"quantity": "H(1)", "jaxnet": float(H[-1]), "notes": 0.0},
        {
            "quantity": "quadratic dC/dz at z = 4 (a = 0.98)",
            "jaxnet": float(quad[np.argmin(np.abs(z - 4))]),
            "notes": "small",
        },
        {
            "quantity": "cross-entropy dC/dz at z = 4 (a = 0.98)",
            "jaxnet": float(xent[np.argmin(np.abs(z - 4))]),
            "notes": "a - y = 0.98",
        },
    ]
    return report.write_results(
        out_dir,
        "information",
        "Cross-entropy, entropy, and gradients through a sigmoid",
        rows,
        [figure],
    )
