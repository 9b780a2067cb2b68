"""Experiment 1, the learning slowdown (slides 003).

One sigmoid neuron learns to map input 1 to output 0:

a = sigma(w x + b) with x = 1, y = 0, plain gradient descent with eta = 0.15 for 300 epochs (one
example, so one step per epoch), from w = 0.6, b = 0.9 (a = 0.82) and from w = b = 2.0 (a = 0.98),
under the quadratic cost C = (y - a)^2 / 2 and the cross-entropy C = -[y ln a + (1 - y) ln(1 - a)].
The quadratic cost's gradient carries sigma'(z), tiny at a = 0.98, so learning starts slowly; the
cross-entropy's gradient is a - y, so it does not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from jaxnet import losses
from jaxnet.activations import sigmoid

ETA, EPOCHS, X, Y = 0.15, 300, 1.0, 0.0
STARTS = {"w=0.6, b=0.9": (0.6, 0.9), "w=b=2.0": (2.0, 2.0)}
COSTS = {
    "quadratic": lambda a: losses.quadratic(a, jnp.full_like(a, Y)),
    "cross-entropy": lambda a: losses.binary_cross_entropy(a, jnp.full_like(a, Y)),
}


def train(cost, w: float, b: float, epochs: int = EPOCHS, eta: float = ETA):
    """Outputs a and costs C at epochs 0..epochs of gradient descent on one (x, y) pair."""

    def output(params):
        return sigmoid(params[0] * X + params[1])

    def loss(params):
        return cost(jnp.reshape(output(params), (1, 1)))[0]

    def epoch(params, _):
        return params - eta * jax.grad(loss)(params), (output(params), loss(params))

    params = jnp.array([w, b], dtype=jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    final, (outputs, costs) = jax.lax.scan(epoch, params, None, length=epochs)
    return np.append(outputs, output(final)), np.append(costs, loss(final))


def run(out_dir: str, quick: bool = False) -> dict:
    curves = {
        (start, cost): train(COSTS[cost], *STARTS[start]) for start in STARTS for cost in COSTS
    }
    fig, axes = report.figure(ncols=2)
    for (start, cost), (a, c) in curves.items():
        style = "-" if cost == "quadratic" else "--"
        axes[0, 0].plot(a, style, label=f"{cost}, {start}")
        axes[0, 1].plot(c, style, label=f"{cost}, {start}")
    axes[0, 0].set(
        xlabel="epoch", ylabel="output a", title="Output of one sigmoid neuron (target 0)"
    )
    axes[0, 1].set(xlabel="epoch", ylabel="cost C", title="Cost", yscale="log")
    axes[0, 0].legend(fontsize=8)
    figure = report.save_figure(fig, out_dir, "slowdown")
    rows = [
        {
            "cost": cost,
            "start": start,
            "a at epoch 0": float(a[0]),
            "a at epoch 150": float(a[150]),
            "a at epoch 300": float(a[300]),
        }
        for (start, cost), (a, _) in curves.items()
    ]
    notes = (
        "slides 003: a = 0.82 and 0.98 at epoch 0; about 0.09 after 300 epochs (quadratic, "
        "0.6/0.9); little change in the first 150 epochs (quadratic, 2.0/2.0)"
    )
    return report.write_results(
        out_dir,
        "slowdown",
        "Learning slowdown of one sigmoid neuron",
        rows,
        [figure],
        {"notes": notes},
    )
