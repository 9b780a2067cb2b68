"""Experiment 3, the soft-max simplex (notes 000, Figure 1).

A 3-class network's outputs p in the 2-simplex. The soft-max maps scores to p in the 2-simplex
{p >= 0, p1 + p2 + p3 = 1}, the triangle with corners e1, e2, e3. The classifier picks argmax p,
so the decision regions are three quadrilaterals whose boundaries meet at the unit point
1/3 (1, 1, 1). A 2-16-3 tanh network on three overlapping Gaussian blobs is shown at its random
initialisation (p spread over the middle of the triangle) and after training, when most p sit
near their class's corner and the errors are the blobs' overlap.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from experiments.descent import descend
from jaxnet import activations, losses, optim
from jaxnet import layers as L

CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])  # e1, e2, e3 drawn in the plane


def blobs(n_per_class: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    angles = np.deg2rad([90, 210, 330])
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x = np.concatenate([c + rng.normal(scale=1.0, size=(n_per_class, 2)) for c in centres]).astype(
        np.float32
    )
    y = np.repeat(np.arange(3), n_per_class).astype(np.int32)
    return x, y


def to_plane(p):
    """Barycentric coordinates p (N, 3) as points of the triangle."""
    return np.asarray(p) @ CORNERS


def risk(net, params, x, y):
    return jnp.mean(losses.cross_entropy_from_logits(net.apply(params, x), y))


def train(x, y, steps: int, seed: int = 0):
    net = L.serial(L.Dense(16), L.Tanh, L.Dense(3))
    _, params = net.init(jax.random.PRNGKey(seed), (2,))
    opt = optim.adam(0.02)
    trained, _ = descend(functools.partial(risk, net), opt, steps, params, opt.init(params), x, y)
    return net, params, trained


def draw_simplex(ax, p, y, title):
    ax.fill(*CORNERS.T, color="0.95")
    ax.plot(*np.vstack([CORNERS, CORNERS[:1]]).T, color="0.3", lw=1)
    centre = CORNERS.mean(axis=0)
    for i in range(
        3
    ):  # boundary between regions j and k: from 1/3 (1,1,1) to the midpoint of edge e_j e_k
        mid = (CORNERS[(i + 1) % 3] + CORNERS[(i + 2) % 3]) / 2
        ax.plot([centre[0], mid[0]], [centre[1], mid[1]], color="tab:blue", lw=1.2)
    pts = to_plane(p)
    for c, colour in enumerate(("tab:red", "tab:green", "tab:purple")):
        ax.scatter(*pts[y == c].T, s=6, color=colour, alpha=0.6, label=f"class {c + 1}")
    for i, name in enumerate(("e1", "e2", "e3")):
        ax.annotate(
            name,
            CORNERS[i],
            textcoords="offset points",
            xytext=(-14 if i == 0 else 4, -10 if i < 2 else 4),
        )
    ax.set(title=title, aspect="equal", xticks=[], yticks=[])


def run(out_dir: str, quick: bool = False) -> dict:
    x, y = blobs(100 if quick else 300)
    net, before, after = train(jnp.asarray(x), jnp.asarray(y), steps=200 if quick else 500)
    rows = []
    fig, axes = report.figure(ncols=2, width=4.6, height=4.4)
    for col, (when, params) in enumerate((("before training", before), ("after training", after))):
        p = np.asarray(activations.softmax(net.apply(params, jnp.asarray(x))))
        accuracy = float(np.mean(p.argmax(axis=1) == y))
        rows.append(
            {
                "when": when,
                "accuracy": accuracy,
                "mean max p": float(p.max(axis=1).mean()),
                "max |sum p - 1|": float(np.max(np.abs(p.sum(axis=1) - 1))),
                "min p": float(p.min()),
            }
        )
        draw_simplex(axes[0, col], p, y, f"p {when}: accuracy {accuracy:.1%}")
    axes[0, 1].legend(fontsize=8, loc="upper right")
    figure = report.save_figure(fig, out_dir, "simplex")
    unit = activations.softmax(jnp.zeros(3))
    extra = {
        "softmax_of_equal_scores": np.asarray(unit).tolist(),
        "notes": "boundaries meet at the unit point 1/e = 1/3",
    }
    return report.write_results(
        out_dir,
        "simplex",
        "Soft-max outputs in the 2-simplex, before and after training",
        rows,
        [figure],
        extra,
    )
