"""CNN arithmetic: padding, output sizes, receptive fields and parameter counts (notes 002, Sec. 3).

Everything here is plain Python on integers, so it can be used to design a network before any
array exists. The layers in `jaxnet.layers` call `padding_pairs` so that their shapes agree
with these formulas by construction; the tests check both against real forward passes.

Padding styles, for a window of size k slid with stride s over n inputs:

- 'valid': no padding; only windows that fit entirely inside the input.
- 'same':  the least padding giving ceil(n / s) outputs, split as XLA and TensorFlow do
           (the extra element, if any, goes after the input).
- 'full':  k - 1 on each side, so every window that overlaps the input at all is computed
           (for s = 1 the output has n + k - 1 entries).
- explicit: a pair (lo, hi) per spatial dimension.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

PaddingLike = str | Sequence[tuple[int, int]]
PADDING_STYLES = ("same", "valid", "full")


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def padding_pair(n: int, k: int, s: int, padding: str | tuple[int, int]) -> tuple[int, int]:
    """Padding (before, after) of one dimension of size n for window k, stride s."""
    n, k, s = (
        _check_positive(name, v) for name, v in (("input size", n), ("window", k), ("stride", s))
    )
    if isinstance(padding, str):
        style = padding.lower()
        if style == "valid":
            return (0, 0)
        if style == "full":
            return (k - 1, k - 1)
        if style == "same":
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            return (total // 2, total - total // 2)
        raise ValueError(
            f"padding must be one of {PADDING_STYLES} or explicit (lo, hi) pairs, got {padding!r}"
        )
    try:
        lo, hi = padding
    except (TypeError, ValueError):
        raise ValueError(
            f"explicit padding must be a pair (lo, hi) of integers, got {padding!r}"
        ) from None
    if min(lo, hi) < 0:
        raise ValueError(f"explicit padding must be non-negative, got {(lo, hi)}")
    return (int(lo), int(hi))


def padding_pairs(
    spatial_shape: Sequence[int],
    window: Sequence[int],
    strides: Sequence[int],
    padding: PaddingLike,
) -> tuple[tuple[int, int], ...]:
    """Padding (before, after) for every spatial dimension."""
    if len(window) != len(spatial_shape) or len(strides) != len(spatial_shape):
        raise ValueError(
            f"window {tuple(window)} and strides {tuple(strides)} must have one entry per spatial "
            f"dimension of {tuple(spatial_shape)}"
        )
    if isinstance(padding, str):
        per_dim = [padding] * len(spatial_shape)
    else:
        per_dim = list(padding)
        if len(per_dim) != len(spatial_shape):
            raise ValueError(
                "explicit padding needs one (lo, hi) pair per spatial dimension "
                f"({len(spatial_shape)}), got {padding!r}"
            )
    return tuple(
        padding_pair(n, k, s, p) for n, k, s, p in zip(spatial_shape, window, strides, per_dim)
    )


def output_size(n: int, k: int, s: int = 1, padding: str | tuple[int, int] = "valid") -> int:
    """Number of outputs of a window k with stride s over n inputs.

    floor((n + lo + hi - k) / s) + 1.
    """
    lo, hi = padding_pair(n, k, s, padding)
    span = n + lo + hi - k
    if span < 0:
        raise ValueError(
            f"window {k} does not fit in input of size {n} with padding {(lo, hi)}: "
            f"use a smaller window or more padding"
        )
    return span // s + 1


def conv_output_shape(
    input_shape: Sequence[int],
    window: Sequence[int],
    out_channels: int | None = None,
    strides: Sequence[int] | None = None,
    padding: PaddingLike = "valid",
) -> tuple[int, ...]:
    """Output shape (H', W', C') of a convolution or pooling on an (H, W, C) or (N, H, W, C) input.

    For pooling pass out_channels=None: the channel count is kept.
    """
    input_shape = tuple(input_shape)
    if len(input_shape) not in (3, 4):
        raise ValueError(f"input_shape must be (H, W, C) or (N, H, W, C), got {input_shape}")
    batch, (h, w, c) = input_shape[:-3], input_shape[-3:]
    strides = tuple(strides) if strides is not None else (1,) * len(window)
    pads = padding_pairs((h, w), window, strides, padding)
    spatial = tuple(output_size(n, k, s, p) for n, k, s, p in zip((h, w), window, strides, pads))
    return batch + spatial + (c if out_channels is None else out_channels,)


def receptive_field(stack: Iterable[tuple[int, int]]) -> int:
    """One-dimensional receptive field of a stack of (window, stride) layers, input first.

    Generalises the notes' r = (k2 - 1) s + k1 (002, Sec. 3) to any depth:
    r = 1 + sum_l (k_l - 1) * prod_{m < l} s_m, since layer l's window spans (k_l - 1) steps of
    its input, and one step there is prod_{m < l} s_m input pixels.
    """
    r, jump = 1, 1
    for i, (k, s) in enumerate(stack):
        _check_positive(f"window of layer {i}", k)
        _check_positive(f"stride of layer {i}", s)
        r += (k - 1) * jump
        jump *= s
    return r


def conv_param_count(
    window: Sequence[int], in_channels: int, out_channels: int, bias: bool = True
) -> int:
    """Parameters of a convolution: m (C k1 k2 + 1) with m = out_channels.

    Notes 002: 34,944 for AlexNet's first layer.
    """
    return out_channels * (in_channels * math.prod(window) + int(bias))


def dense_param_count(in_features: int, out_features: int, bias: bool = True) -> int:
    """Parameters of a fully connected layer: e (d + 1)."""
    return out_features * (in_features + int(bias))


def param_count(params) -> int:
    """Number of scalars in a parameter pytree."""
    import jax

    return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(params))


def network_receptive_field(network) -> tuple[int, ...]:
    """The receptive field of one output of a jaxnet network, per spatial axis.

    (height, width) for images, (length,) for sequences (Conv1D), from the conv and pooling
    layers. Point activations, normalisation and dropout leave it unchanged; a Dense, Flatten or
    global pooling layer sees everything, so the walk stops there.
    """
    layers = network.spec["layers"] if network.name == "serial" else (network,)
    stacks = None
    for layer in layers:
        if layer.name in ("dense", "flatten", "global_avg_pool"):
            break
        if "window" in layer.spec:
            window, strides = layer.spec["window"], layer.spec["strides"]
            stacks = stacks or [[] for _ in window]
            if len(window) != len(stacks):
                raise ValueError(
                    f"layer {layer.name} has a {len(window)}-D window after {len(stacks)}-D ones"
                )
            for stack, k, s in zip(stacks, window, strides):
                stack.append((k, s))
    return tuple(receptive_field(stack) for stack in stacks or [[], []])


def multiply_adds(network, input_shape) -> list[int]:
    """Forward multiply-adds per example of each layer.

    d e for a Dense layer, H' W' k1 k2 C C' for a Conv2D (L' k C C' for a Conv1D), else 0.
    Shapes are traced abstractly (`jax.eval_shape`) through each layer's own `apply`, so no
    parameter is drawn. Training costs about three times the sum (forward, weight gradients,
    input gradients), less the first weighted layer's input gradient, which nothing needs.
    """
    import jax

    layers = network.spec["layers"] if network.name == "serial" else (network,)
    params = jax.eval_shape(
        lambda key: network.init(key, tuple(input_shape))[1], jax.random.PRNGKey(0)
    )
    params = params if network.name == "serial" else (params,)

    def layer_outputs(params, x):
        outputs = []
        for layer, p in zip(layers, params):
            x = layer.apply(p, x, key=None)
            outputs.append(x)
        return outputs

    x = jax.ShapeDtypeStruct((1, *input_shape), "float32")
    outputs = jax.eval_shape(layer_outputs, params, x)
    counts = []
    for layer, p, y in zip(layers, params, outputs):
        if layer.name == "dense":
            counts.append(int(np.prod(p["W"].shape)))
        elif layer.name in ("conv", "conv1d"):
            counts.append(int(np.prod(y.shape[1:-1])) * int(np.prod(p["W"].shape)))
        else:
            counts.append(0)
    return counts
