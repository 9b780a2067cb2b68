"""Index bookkeeping shared by convolution and pooling.

Padding and window offsets in NHWC arrays.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxnet import shapes


def normalize_2d(name: str, value) -> tuple[int, int]:
    """An int or a pair of ints as a pair, with an error naming the argument otherwise."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair
    ):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return pair


def check_nhwc(layer: str, x, channels: int | None = None) -> None:
    if x.ndim != 4:
        raise ValueError(
            f"{layer} expects a batch of images (N, H, W, C), got an array of shape {x.shape}"
        )
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(
            f"{layer} was built for {channels} input channels, got input of shape {x.shape}"
        )


def pad_hw(x, pads, value=0.0):
    """Pad the two spatial axes of an (..., H, W, C) array."""
    widths = [(0, 0)] * (x.ndim - 3) + [tuple(pads[0]), tuple(pads[1]), (0, 0)]
    return jnp.pad(x, widths, constant_values=value)


def offset_slice(xpad, p: int, q: int, out_hw, strides):
    """xpad[..., i*s0 + p, j*s1 + q, :] for all output positions (i, j).

    The inputs at window offset (p, q).
    """
    (h, w), (s0, s1) = out_hw, strides
    return xpad[..., p : p + s0 * (h - 1) + 1 : s0, q : q + s1 * (w - 1) + 1 : s1, :]


def add_at_offset(gpad, value, p: int, q: int, out_hw, strides):
    """The transpose of `offset_slice`: scatter-add value into the window offset (p, q)'s inputs."""
    (h, w), (s0, s1) = out_hw, strides
    return gpad.at[..., p : p + s0 * (h - 1) + 1 : s0, q : q + s1 * (w - 1) + 1 : s1, :].add(value)


def crop_hw(xpad, pads, hw):
    """Undo `pad_hw`."""
    (lo0, _), (lo1, _) = pads
    return xpad[..., lo0 : lo0 + hw[0], lo1 : lo1 + hw[1], :]


def selection(n_padded: int, n_out: int, k: int, s: int, dtype):
    """A[p, i, u] = 1 if u == i s + p: which padded input sits at window offset p of output i."""
    p = jnp.arange(k)[:, None, None]
    i = jnp.arange(n_out)[None, :, None]
    u = jnp.arange(n_padded)[None, None, :]
    return (u == i * s + p).astype(dtype)


def geometry(input_hw, window, strides, padding):
    """(pads, output (H', W')) of a window slid over an input of spatial size input_hw."""
    pads = shapes.padding_pairs(input_hw, window, strides, padding)
    out = tuple(
        shapes.output_size(n, k, s, p) for n, k, s, p in zip(input_hw, window, strides, pads)
    )
    return pads, out
