"""Experiment 2, notes 004: the softmax exercise and the 80/20 single-input case.

The exercise: z = 1, 2, 3, correct class 2. Its probabilities and gradients of log Prob(2) come
from jaxnet's softmax and jax.grad of its log-softmax, printed beside the derivation's numbers
(e^1 = 2.718, ..., sum 30.193).

The 80/20 case: one input repeated 100 times, target 1 in 80 cases and 0 in 20. A sigmoid output
z = sigma(b) trained by gradient descent on the summed loss reaches z = 0.8 under both the sum of
squared errors, dE/dz = 100 z - 80, and the cross-entropy, dE/dz = (100 z - 80) / (z (1 - z)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from jaxnet import activations, losses

LOGITS, CORRECT = (1.0, 2.0, 3.0), 1  # classes 1, 2, 3; the correct class 2 at index 1
NOTES_PROBS, NOTES_GRADS = (0.09, 0.24, 0.67), (-0.09, 0.76, -0.67)
TARGETS = np.array([1.0] * 80 + [0.0] * 20)


def exercise():
    z = jnp.array(LOGITS)
    probs = activations.softmax(z)
    grads = jax.grad(lambda z: activations.log_softmax(z)[CORRECT])(z)
    return np.asarray(jnp.exp(z)), np.asarray(probs), np.asarray(grads)


LOSSES = {
    "sum squared error": lambda z, t: jnp.sum(losses.quadratic(z[:, None], t[:, None])),
    "cross-entropy": lambda z, t: jnp.sum(losses.binary_cross_entropy(z[:, None], t[:, None])),
}


def train_80_20(loss, steps: int, eta: float = 0.01, b: float = -1.0):
    """Outputs z = sigma(b) along gradient descent on the summed loss of the 100 cases."""
    t = jnp.asarray(TARGETS)

    def step(b, _):
        z = activations.sigmoid(b)
        return b - eta * jax.grad(lambda b: loss(jnp.full(t.shape, activations.sigmoid(b)), t))(
            b
        ), z

    b, zs = jax.lax.scan(step, jnp.asarray(b), None, length=steps)
    return np.append(zs, activations.sigmoid(b))


def run(out_dir: str, quick: bool = False) -> dict:
    exps, probs, grads = exercise()
    rows = [
        {
            "class": i + 1,
            "exp(z)": float(e),
            "Prob": float(p),
            "notes' Prob": NOTES_PROBS[i],
            "d log Prob(2) / dz": float(g),
            "notes' gradient": NOTES_GRADS[i],
        }
        for i, (e, p, g) in enumerate(zip(exps, probs, grads))
    ]
    steps = 300 if quick else 2000
    paths = {name: train_80_20(loss, steps) for name, loss in LOSSES.items()}
    fig, axes = report.figure(ncols=2)
    zgrid = np.linspace(0.01, 0.99, 197)
    for name, loss in LOSSES.items():
        energy = [float(loss(jnp.full(TARGETS.shape, z), jnp.asarray(TARGETS))) for z in zgrid]
        axes[0, 0].plot(zgrid, energy / np.min(energy), label=name)
        axes[0, 1].plot(np.arange(1, len(paths[name]) + 1), paths[name], label=name)
    axes[0, 0].axvline(0.8, color="gray", lw=0.8)
    axes[0, 0].set(
        xlabel="output z",
        ylabel="E(z) / min E",
        title="80 targets 1, 20 targets 0: E is least at z = 0.8",
        ylim=(0.9, 3),
    )
    axes[0, 1].axhline(0.8, color="gray", lw=0.8)
    axes[0, 1].set(
        xlabel="gradient-descent step + 1",
        ylabel="output z",
        title="Training the output from z = 0.27",
        xscale="log",
    )
    axes[0, 0].legend(fontsize=8)
    figure = report.save_figure(fig, out_dir, "softmax_exercise")
    extra = {"sum_exp": float(np.sum(exps)), "notes_sum_exp": 30.193}
    case = [
        {"loss": name, "output after training": float(path[-1]), "notes": 0.8, "steps": steps}
        for name, path in paths.items()
    ]
    return report.write_results(
        out_dir,
        "softmax_exercise",
        "Softmax exercise (z = 1, 2, 3; correct class 2) and the 80/20 case",
        rows,
        [figure],
        extra,
        {"One input, 80 targets 1 and 20 targets 0 (eta = 0.01, z = sigma(b) from b = -1)": case},
    )
