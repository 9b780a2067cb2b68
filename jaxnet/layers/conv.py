"""2-D convolution on NHWC images with HWIO kernels.

Any stride; padding 'same' / 'valid' / 'full' or explicit.

As in every CNN library (and in the notes' "correlation"), the kernel is not flipped:

    a[n, i, j, o] = b_o + sum_{p, q, c} W[p, q, c, o] x~[n, i s0 + p, j s1 + q, c]

where x~ is the zero-padded input. The hand-written derivatives below are the notes' "explicit
loops over appropriate indices" (000, Sec. 3): one loop over the k1 k2 kernel offsets (p, q).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnet.layers import _windows as win
from jaxnet.layers.base import Layer, default_float

glorot_normal = jax.nn.initializers.glorot_normal()  # HWIO: in_axis=-2, out_axis=-1


def conv_apply(params, x, strides, padding):
    W, b = params["W"], params["b"]
    win.check_nhwc("Conv2D", x, W.shape[2])
    pads, _ = win.geometry(x.shape[1:3], W.shape[:2], strides, padding)
    dtype = jnp.result_type(x, W)  # lax.conv needs equal dtypes; promote as a matmul would
    y = _correlate(x.astype(dtype), W.astype(dtype), strides, pads)
    return y + b[None, None, None, :]


# On CPU, kernels with at most this many taps (k1 k2 C) run as a sum of shifted products: XLA:CPU's
# convolution (Eigen's) took 4.3 ms for the default CNN's 3x3x1 -> 32 layer at batch 128, and
# from one process to the next 4-12 ms; the sum 0.9-1.0 ms, fused with the ReLU and pooling
# that follow. Measured faster at 9, 25 (5x5x1) and 27 (3x3x3) taps, slower at 150 (5x5x6: 5.2
# against 3.5 ms). GPUs and TPUs keep their own convolutions: the stencil was measured on CPU only.
STENCIL_MAX_TAPS = 27
# ... and with at least this many output positions N H' W' (the default CNN's first layer has
# 100,352): below it both are quick, and the stencil is k1 k2 C more operations to compile.
STENCIL_MIN_POSITIONS = 4096


def uses_stencil(W, positions: int) -> bool:
    """Whether `_correlate` computes W's correlation at `positions` outputs as a stencil."""
    taps = W.shape[0] * W.shape[1] * W.shape[2]
    return (
        taps <= STENCIL_MAX_TAPS
        and positions >= STENCIL_MIN_POSITIONS
        and jax.default_backend() == "cpu"
    )


def xla_conv(x, W, strides, pads):
    """XLA's convolution of NHWC x with the HWIO kernel W (no bias)."""
    return jax.lax.conv_general_dilated(
        x, W, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def stencil_conv(x, W, strides, pads):
    """The same correlation as a sum over the kernel's taps of shifted inputs times a weight row."""
    kh, kw, c, _ = W.shape
    _, out_hw = win.geometry(x.shape[1:3], (kh, kw), strides, pads)
    acc = jnp.promote_types(x.dtype, jnp.float32)  # bfloat16 inputs still add up in float32
    xpad = win.pad_hw(x, pads).astype(acc)
    taps = (
        win.offset_slice(xpad, p, q, out_hw, strides)[..., i : i + 1]
        * W[p, q, i].astype(acc)[None, None, None, :]
        for p in range(kh)
        for q in range(kw)
        for i in range(c)
    )
    return functools.reduce(jnp.add, taps).astype(x.dtype)


# The derivatives stay XLA's own convolutions, whatever computes the value: the tangent is linear
# in (dx, dW), so reverse mode transposes it into XLA's input- and weight-gradient convolutions
# (the stencil's own transpose re-read the output gradient once per tap: 4.5 against 1.9 ms).
@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _correlate(x, W, strides, pads):
    _, (h, w) = win.geometry(x.shape[1:3], W.shape[:2], strides, pads)
    if uses_stencil(W, x.shape[0] * h * w):
        return stencil_conv(x, W, strides, pads)
    return xla_conv(x, W, strides, pads)


@functools.partial(_correlate.defjvp, symbolic_zeros=True)
def _correlate_jvp(strides, pads, primals, tangents):
    (x, W), (dx, dW) = primals, tangents
    terms = [
        xla_conv(*args, strides, pads)
        for args, tangent in (((dx, W), dx), ((x, dW), dW))
        if not isinstance(tangent, jax.custom_derivatives.SymbolicZero)
    ]
    y = _correlate(x, W, strides, pads)
    return y, functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(y)


def conv_jacobians(params, x_n, strides, padding):
    """Local Jacobians of one image's convolution.

    Built from the selection A[p, i, u] = [u = i s + p]:

    da[i,j,o]/dW[p,q,c,o'] = delta_oo' x~[i s0 + p, j s1 + q, c],   da[i,j,o]/db[o'] = delta_oo',
    da[i,j,o]/dx[u,v,c]    = W[u - i s0 + lo0, v - j s1 + lo1, c, o]  (0 outside the kernel).
    """
    W = params["W"]
    kh, kw, _, c_out = W.shape
    (h, w) = x_n.shape[:2]
    pads, (ho, wo) = win.geometry((h, w), (kh, kw), strides, padding)
    xpad = win.pad_hw(x_n, pads)
    A = win.selection(xpad.shape[0], ho, kh, strides[0], W.dtype)
    B = win.selection(xpad.shape[1], wo, kw, strides[1], W.dtype)
    patches = jnp.einsum("piu,qjv,uvc->ijpqc", A, B, xpad)
    eye = jnp.eye(c_out, dtype=W.dtype)
    J_W = patches[:, :, None, :, :, :, None] * eye[None, None, :, None, None, None, :]
    J_b = jnp.broadcast_to(eye, (ho, wo, c_out, c_out))
    J_xpad = jnp.einsum("piu,qjv,pqco->ijouvc", A, B, W)
    return {"W": J_W, "b": J_b}, win.crop_hw(J_xpad, pads, (h, w))


def conv_vjp(params, x, g, strides, padding):
    """Row vectors g = dl/da (N, H', W', C') back through the convolution.

    One kernel offset at a time.
    """
    W = params["W"]
    kh, kw = W.shape[:2]
    out_hw = g.shape[1:3]
    pads, _ = win.geometry(x.shape[1:3], (kh, kw), strides, padding)
    xpad = win.pad_hw(x, pads)
    g_xpad = jnp.zeros_like(xpad)
    g_W = []
    for p in range(kh):
        for q in range(kw):
            g_W.append(
                jnp.einsum("nijc,nijo->co", win.offset_slice(xpad, p, q, out_hw, strides), g)
            )
            g_xpad = win.add_at_offset(
                g_xpad, jnp.einsum("nijo,co->nijc", g, W[p, q]), p, q, out_hw, strides
            )
    g_W = jnp.stack(g_W).reshape(W.shape)
    return {"W": g_W, "b": jnp.sum(g, axis=(0, 1, 2))}, win.crop_hw(g_xpad, pads, x.shape[1:3])


def Conv2D(
    out_channels: int,
    window,
    strides=1,
    padding="valid",
    W_init=glorot_normal,
    b_init=jax.nn.initializers.zeros,
) -> Layer:
    """2-D convolution with `out_channels` feature maps of size `window`.

    padding: 'same', 'valid', 'full' or ((lo, hi), (lo, hi)).
    """
    if not isinstance(out_channels, int) or isinstance(out_channels, bool) or out_channels < 1:
        raise ValueError(f"Conv2D out_channels must be a positive int, got {out_channels!r}")
    window = win.normalize_2d("Conv2D window", window)
    strides = win.normalize_2d("Conv2D strides", strides)
    win.geometry(window, window, strides, padding)  # validates the padding argument early

    def init(key, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"Conv2D expects an image input shape (H, W, C), got {tuple(input_shape)}"
            )
        h, w, c = input_shape
        _, (ho, wo) = win.geometry((h, w), window, strides, padding)
        k_w, k_b = jax.random.split(key)
        dtype = default_float()
        params = {
            "W": W_init(k_w, window + (c, out_channels), dtype),
            "b": b_init(k_b, (out_channels,), dtype),
        }
        return (ho, wo, out_channels), params

    def apply(params, x, *, key=None):
        return conv_apply(params, x, strides, padding)

    def jacobians(params, x, n, *, key=None):
        return conv_jacobians(params, x[n], strides, padding)

    def vjp(params, x, g, *, key=None):
        return conv_vjp(params, x, g, strides, padding)

    spec = {"out_channels": out_channels, "window": window, "strides": strides, "padding": padding}
    return Layer("conv", init, apply, jacobians, vjp, spec)
