"""Experiment 10, hidden-unit geometry: what a 2-unit hidden layer does.

Notes 004's learning outcome.

Noisy XOR: four clusters at (+-1, +-1), class 1 where the signs differ. No line separates the
classes in the input plane. A 2-2-1 network (tanh hidden units, a sigmoid output trained with the
cross-entropy) must move the points, in its 2-D hidden space, to where one line does: the output
unit's line w . h + b = 0. The hidden activations are plotted as training proceeds.

XOR with two hidden units has local minima: from some initial weights the hidden layer maps two
clusters of different classes onto the same point and no line can part them. Several seeds are
trained; the first that separates XOR is shown step by step, and the first that does not beside
it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from experiments.descent import descend
from jaxnet import layers as L
from jaxnet import losses, optim

SNAPSHOTS = (0, 10, 25, 100, 2000)
SEEDS = 8
SOLVED_RISK = 0.1  # local minima stall near 0.35 (one cluster lost), solutions go on towards 0
HIDDEN, OUTPUT = L.serial(L.Dense(2), L.Tanh), L.Dense(1)


def noisy_xor(n_per_cluster: int, seed: int = 0, noise: float = 0.25):
    rng = np.random.default_rng(seed)
    centres = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1]], np.float32)
    x = np.concatenate([c + noise * rng.normal(size=(n_per_cluster, 2)) for c in centres]).astype(
        np.float32
    )
    y = np.repeat([0, 0, 1, 1], n_per_cluster).astype(np.float32)
    return x, y


def risk(params, x, y):
    z = OUTPUT.apply(params[1], HIDDEN.apply(params[0], x))
    return jnp.mean(losses.binary_cross_entropy_from_logits(z, y[:, None]))


def train_with_snapshots(x, y, seed: int, optimizer):
    """(step, hidden activations, output-layer params, accuracy, risk) at each of SNAPSHOTS."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = (HIDDEN.init(k1, (2,))[1], OUTPUT.init(k2, (2,))[1])
    state, done, snapshots = optimizer.init(params), 0, []
    for at in SNAPSHOTS:
        if at > done:
            params, state = descend(risk, optimizer, at - done, params, state, x, y)
            done = at
        h = HIDDEN.apply(params[0], x)
        z = OUTPUT.apply(params[1], h)[:, 0]
        snapshots.append(
            (
                at,
                np.asarray(h),
                params[1],
                float(jnp.mean((z > 0) == (y > 0.5))),
                float(risk(params, x, y)),
            )
        )
    return snapshots


def draw_hidden(ax, h, y, out, title):
    ax.scatter(h[:, 0], h[:, 1], c=y, cmap="coolwarm", s=6)
    w, b = np.asarray(out["W"])[0], float(np.asarray(out["b"])[0])
    t = np.linspace(-1.1, 1.1, 2)
    if abs(w[1]) > 1e-6:  # the output unit's line w . h + b = 0
        ax.plot(t, -(w[0] * t + b) / w[1], color="k", lw=1)
    ax.set(
        title=title, xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), aspect="equal", xlabel="h1", ylabel="h2"
    )


def run(out_dir: str, quick: bool = False) -> dict:
    x, y = noisy_xor(50 if quick else 100)
    x, y = jnp.asarray(x), jnp.asarray(y)
    optimizer = optim.adam(0.02)
    runs = {seed: train_with_snapshots(x, y, seed, optimizer) for seed in range(SEEDS)}
    solved = [seed for seed, snaps in runs.items() if snaps[-1][4] < SOLVED_RISK]
    stuck = [seed for seed in runs if seed not in solved]
    shown = solved[0] if solved else min(runs, key=lambda s: runs[s][-1][4])

    fig, axes = report.figure(ncols=len(SNAPSHOTS) + 1 + bool(stuck), width=3.2, height=3.4)
    axes[0, 0].scatter(*np.asarray(x).T, c=np.asarray(y), cmap="coolwarm", s=6)
    axes[0, 0].set(title="input plane (XOR)", aspect="equal", xlabel="x1", ylabel="x2")
    rows = []
    for ax, (at, h, out, accuracy, r) in zip(axes[0, 1:], runs[shown]):
        draw_hidden(ax, h, np.asarray(y), out, f"seed {shown}, step {at}\naccuracy {accuracy:.1%}")
        rows.append({"step": at, "accuracy": accuracy, "risk": r})
    if stuck:
        at, h, out, accuracy, _ = runs[stuck[0]][-1]
        draw_hidden(
            axes[0, -1],
            h,
            np.asarray(y),
            out,
            f"seed {stuck[0]}, step {at}: stuck\naccuracy {accuracy:.1%}",
        )
    figure = report.save_figure(fig, out_dir, "hidden_geometry")
    seeds = [
        {
            "seed": s,
            "final accuracy": snaps[-1][3],
            "final risk": snaps[-1][4],
            "separates XOR": s in solved,
        }
        for s, snaps in runs.items()
    ]
    return report.write_results(
        out_dir,
        "hidden_geometry",
        "Hidden-unit geometry: noisy XOR through a 2-unit hidden layer",
        rows,
        [figure],
        {"shown_seed": shown, "solved": len(solved), "seeds": SEEDS},
        {f"All {SEEDS} seeds after {SNAPSHOTS[-1]} Adam steps": seeds},
    )
