"""Experiment 9, CNN arithmetic (notes 002, Sec. 3).

The receptive field of Figure 3 and the 224x224x3 layer.

Every number is computed twice: by the formulas in `jaxnet.shapes`, and from a real forward pass
(output shapes) or from `jax.grad` (which input pixels one output depends on).
- Figure 3: a convolution with k1 = 5 and stride s = 2, then one with k2 = 5:
  r = (k2 - 1) s + k1 = 13 in one dimension, 13^2 = 169 pixels.
- The first layer of [4]: 96 kernels of 11x11x3 at stride 4 on a 224x224x3 image: 96 (3 11^2 + 1) =
  34,944 parameters against more than 725 billion for a fully connected layer to 96 maps of
  224x224; 55x55x96 maps (with 2 pixels of padding, one way to match the paper), and 27x27x96 after
  3x3 max-pooling at stride 2 (e = 69,984, a bit less than half of d = 150,528).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from jaxnet import layers as L
from jaxnet import shapes

ONES = jax.nn.initializers.ones


def gradient_footprint(network, input_shape):
    """Which input pixels the centre output of channel 0 depends on.

    The nonzero pattern of its gradient.
    """
    _, params = network.init(jax.random.PRNGKey(0), input_shape)
    x = jnp.ones((1, *input_shape), jnp.float32)
    out = network.apply(params, x)
    i, j = out.shape[1] // 2, out.shape[2] // 2
    g = jax.grad(lambda x: network.apply(params, x)[0, i, j, 0])(x)
    return np.asarray(jnp.abs(g[0, :, :, 0]) > 0)


def extent(mask_1d):
    idx = np.flatnonzero(mask_1d)
    return int(idx[-1] - idx[0] + 1)


def run(out_dir: str, quick: bool = False) -> dict:
    # Figure 3: stride-2 convolution with k1 = 5, then a stride-1 convolution with k2 = 5
    cascade = L.serial(
        L.Conv2D(1, 5, 2, "valid", W_init=ONES), L.Conv2D(1, 5, 1, "valid", W_init=ONES)
    )
    footprint = gradient_footprint(cascade, (29, 29, 1))
    r_formula = shapes.receptive_field([(5, 2), (5, 1)])
    r_grad = extent(footprint.any(axis=1))

    # The 224x224x3 layer of [4], then 3x3 max-pooling at stride 2
    conv = L.Conv2D(96, 11, 4, ((2, 2), (2, 2)))
    layer = L.serial(conv, L.MaxPool(3, 2))
    conv_shape, conv_params = conv.init(jax.random.PRNGKey(0), (224, 224, 3))
    image = jax.random.uniform(jax.random.PRNGKey(1), (1, 224, 224, 3))
    maps = jax.jit(conv.apply)(conv_params, image)
    pooled = jax.jit(layer.apply)((conv_params, ()), image)
    d = 224 * 224 * 3
    dense_params = shapes.dense_param_count(d, 224 * 224 * 96)
    same_valid_full = [
        shapes.conv_output_shape((224, 224, 3), (11, 11), 96, (4, 4), p)[0]
        for p in ("same", "valid", "full")
    ]

    rows = [  # "measured": from a gradient footprint, a real forward pass or a real parameter count
        {
            "quantity": "receptive field, 1-D, formula (k2 - 1) s + k1",
            "jaxnet": r_formula,
            "measured": r_grad,
            "notes": 13,
        },
        {
            "quantity": "receptive field, pixels",
            "jaxnet": r_formula**2,
            "measured": int(footprint.sum()),
            "notes": 169,
        },
        {
            "quantity": "parameters of the 11x11x3 -> 96 layer",
            "jaxnet": shapes.conv_param_count((11, 11), 3, 96),
            "measured": shapes.param_count(conv_params),
            "notes": 34944,
        },
        {
            "quantity": "parameters, fully connected 224x224x3 -> 224x224x96",
            "jaxnet": dense_params,
            "measured": "-",
            "notes": "more than 725 billion",
        },
        {
            "quantity": "feature maps (padding 2)",
            "jaxnet": "x".join(map(str, conv_shape)),
            "measured": "x".join(map(str, maps.shape[1:])),
            "notes": "55x55x96",
        },
        {
            "quantity": "side with 'same' / 'valid' / 'full' padding",
            "jaxnet": " / ".join(map(str, same_valid_full)),
            "measured": "-",
            "notes": "56 / < 55 / > 56",
        },
        {
            "quantity": "after 3x3 max-pooling, stride 2",
            "jaxnet": "x".join(
                map(str, shapes.conv_output_shape(conv_shape, (3, 3), None, (2, 2)))
            ),
            "measured": "x".join(map(str, pooled.shape[1:])),
            "notes": "27x27x96",
        },
        {
            "quantity": "output dimensionality e",
            "jaxnet": math.prod(pooled.shape[1:]),
            "measured": "-",
            "notes": 69984,
        },
        {"quantity": "input dimensionality d", "jaxnet": d, "measured": "-", "notes": 150528},
    ]

    fig, axes = report.figure(ncols=2, width=4.6)
    axes[0, 0].imshow(footprint, cmap="Greys", interpolation="nearest")
    axes[0, 0].set(
        title=f"Input pixels one output depends on: {int(footprint.sum())} = {r_grad}x{r_grad}",
        xlabel="column",
        ylabel="row",
    )
    one_d = L.serial(
        L.Conv2D(1, (1, 5), (1, 2), "valid", W_init=ONES),
        L.Conv2D(1, (1, 5), 1, "valid", W_init=ONES),
    )
    _, p1 = one_d.init(jax.random.PRNGKey(0), (1, 29, 1))
    first, second = one_d.spec["layers"]
    x = jnp.ones((1, 1, 29, 1))
    g_in = jax.grad(lambda x: one_d.apply(p1, x)[0, 0, 0, 0])(x)[0, 0, :, 0]
    g_mid = jax.grad(lambda h: second.apply(p1[1], h)[0, 0, 0, 0])(first.apply(p1[0], x))[
        0, 0, :, 0
    ]
    axes[0, 1].bar(
        np.arange(29),
        np.asarray(g_in) > 0,
        color="tab:blue",
        label=f"input samples used: {extent(np.asarray(g_in) > 0)}",
    )
    centres = np.arange(g_mid.shape[0]) * 2 + 2  # first-layer output j sees inputs 2j .. 2j + 4
    axes[0, 1].bar(
        centres,
        -(np.asarray(g_mid) > 0).astype(float),
        color="tab:orange",
        label="first-layer outputs used, at their centres: 5",
    )
    axes[0, 1].set(title="Figure 3 of 002 in one dimension", xlabel="input position", yticks=[])
    axes[0, 1].legend(fontsize=8, loc="lower right")
    figure = report.save_figure(fig, out_dir, "cnn_arithmetic")
    return report.write_results(
        out_dir,
        "cnn_arithmetic",
        "CNN arithmetic: receptive field and the 224x224x3 layer",
        rows,
        [figure],
    )
