"""Experiment 5, the momentum schedule of notes 000's Figure 4 and its effect on training a CNN.

The schedule [11]: mu_t = min(1 - 2^(-1 - log2(floor(t / 250) + 1)), mu_max): 0.5, 0.75, 0.833,
0.875, ... rising towards mu_max, because momentum helps most late, when gradients are small.
Plain SGD, constant momentum 0.9, the scheduled momentum (all with the same learning rate alpha)
and Adam train the same small CNN from the same initial weights on the same Fashion-MNIST
batches; the training risk of each mini-batch is plotted against the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import report
from jaxnet import losses, optim
from jaxnet.data import load_dataset
from jaxnet.models import build_model

ALPHA, BATCH = 0.01, 64
OPTIMIZERS = {
    "SGD": lambda: optim.sgd(ALPHA),
    "momentum 0.9": lambda: optim.momentum(ALPHA, 0.9),
    "scheduled momentum": lambda: optim.momentum(
        ALPHA, lambda t: optim.sutskever_momentum(t, mu_max=0.99)
    ),
    "Adam 1e-3": lambda: optim.adam(1e-3),
}


def small_cnn():
    c = ml_collections.ConfigDict(
        {
            "kind": "cnn",
            "channels": (8, 16),
            "hidden": (32,),
            "activation": "relu",
            "init": "glorot",
            "init_std": 0.01,
            "dropout": 0.0,
        }
    )
    return build_model(c, 10)


def train_curve(optimizer, model, params, images, labels, order):
    """Per-step training risks of mini-batches order[t] (a (T, BATCH) index array)."""
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, x, y):
        risk, grads = jax.value_and_grad(
            lambda p: jnp.mean(losses.cross_entropy_from_logits(model.apply(p, x), y))
        )(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, risk

    risks = []
    # a Python loop: XLA:CPU runs convolutions inside while loops far slower
    for idx in order:
        params, state, risk = step(params, state, images[idx], labels[idx])
        risks.append(risk)
    return np.asarray(jnp.stack(risks)), params


def smooth(values, width: int = 25):
    return np.convolve(values, np.ones(width) / width, mode="valid")


def run(out_dir: str, quick: bool = False, seed: int = 0) -> dict:
    data = load_dataset("fashion_mnist", validation_size=0, seed=seed, log=lambda *a: None)
    n_train, steps = (4096, 200) if quick else (20000, 1500)
    images, labels = (
        jnp.asarray(data.train.images[:n_train]),
        jnp.asarray(data.train.labels[:n_train]),
    )
    test_x, test_y = jnp.asarray(data.test.images[:2000]), jnp.asarray(data.test.labels[:2000])
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n_train) for _ in range(steps * BATCH // n_train + 1)])[
        : steps * BATCH
    ].reshape(steps, BATCH)
    model = small_cnn()
    _, params = model.init(jax.random.PRNGKey(seed), images.shape[1:])
    curves, rows = {}, []
    for name, make in OPTIMIZERS.items():
        curves[name], trained = train_curve(make(), model, params, images, labels, order)
        accuracy = float(jnp.mean(jnp.argmax(model.apply(trained, test_x), axis=1) == test_y))
        rows.append(
            {
                "optimizer": name,
                "mean risk, first 100 steps": float(curves[name][:100].mean()),
                "mean risk, last 100 steps": float(curves[name][-100:].mean()),
                "test accuracy (2,000 images)": accuracy,
            }
        )

    t = np.arange(steps)
    mu = np.asarray(optim.sutskever_momentum(jnp.asarray(np.arange(5000)), mu_max=0.99))
    fig, axes = report.figure(ncols=2)
    axes[0, 0].plot(np.arange(5000), mu)
    axes[0, 0].set(
        xlabel="step t",
        ylabel="mu_t",
        title="Momentum schedule (000, Fig. 4), mu_max = 0.99",
        ylim=(0.45, 1.0),
    )
    for name, curve in curves.items():
        axes[0, 1].plot(t[24:], smooth(curve), label=name)
    axes[0, 1].set(
        xlabel="step",
        ylabel="training risk (25-step mean)",
        title=f"Small CNN, Fashion-MNIST, batch {BATCH}, alpha = {ALPHA}",
        yscale="log",
    )
    axes[0, 1].legend(fontsize=8)
    figure = report.save_figure(fig, out_dir, "momentum")
    schedule = [
        {
            "t": int(s),
            "mu_t": float(mu[s]),
            "1 - 1 / (2 floor(t / 250) + 2)": 1 - 1 / (2 * (s // 250) + 2),
        }
        for s in (0, 249, 250, 500, 750, 1000, 2500)
    ]
    return report.write_results(
        out_dir,
        "momentum",
        "Momentum schedule and four optimizers on one CNN",
        rows,
        [figure],
        {
            "steps": steps,
            "train_examples": n_train,
            "curves": {k: v.tolist() for k, v in curves.items()},
        },
        {"The schedule's values": schedule},
    )
