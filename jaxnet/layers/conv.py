"""2-D convolution on NHWC images with HWIO kernels, and 1-D convolution on NLC sequences.

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

from jaxnet import shapes
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


# ----------------------------------------------------------------------------------- Conv1D
# A sequence (N, L, C) is an image (N, 1, L, C) of height 1 and the kernel (k, C, O) a (1, k, C, O)
# one, so Conv1D reuses the 2-D functions above; only the shapes and the messages are its own.


def _positive_1d(name: str, value) -> tuple[int]:
    """An int or a 1-tuple of ints as a 1-tuple, with an error naming the argument otherwise."""
    single = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(single) != 1 or not (
        isinstance(single[0], int) and not isinstance(single[0], bool) and single[0] >= 1
    ):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return single


def _padding_2d(padding):
    """Conv1D's padding as Conv2D's: the added height axis is never padded."""
    if isinstance(padding, str):
        if padding.lower() in shapes.PADDING_STYLES:
            return padding  # on the height axis (window 1, stride 1) every style pads nothing
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in padding):
            return ((0, 0), tuple(padding))
    raise ValueError(
        "Conv1D padding must be 'same', 'valid', 'full' or one pair (lo, hi) of non-negative "
        f"ints, got {padding!r}"
    )


def _check_sequences(x, channels: int) -> None:
    if x.ndim != 3:
        raise ValueError(
            f"Conv1D expects a batch of sequences (N, L, C), got an array of shape {x.shape}"
        )
    if x.shape[-1] != channels:
        raise ValueError(
            f"Conv1D was built for {channels} input channels, got input of shape {x.shape}"
        )


def _as_image_params(params):
    return {"W": params["W"][None], "b": params["b"]}


def conv1d_apply(params, x, stride: int, padding_2d):
    """a[n, i, o] = b_o + sum_{p, c} W[p, c, o] x~[n, i s + p, c]."""
    _check_sequences(x, params["W"].shape[1])
    return conv_apply(_as_image_params(params), x[:, None], (1, stride), padding_2d)[:, 0]


def conv1d_jacobians(params, x_n, stride: int, padding_2d):
    """Local Jacobians of one sequence's convolution: the 2-D ones without their height axes.

    da[i,o]/dW[p,c,o'] = delta_oo' x~[i s + p, c],   da[i,o]/db[o'] = delta_oo',
    da[i,o]/dx[u,c]    = W[u - i s + lo, c, o]  (0 outside the kernel).
    """
    _check_sequences(x_n[None], params["W"].shape[1])
    J_w, J_x = conv_jacobians(_as_image_params(params), x_n[None], (1, stride), padding_2d)
    return {"W": J_w["W"][0, :, :, 0], "b": J_w["b"][0]}, J_x[0, :, :, 0]


def conv1d_vjp(params, x, g, stride: int, padding_2d):
    """Row vectors g = dl/da (N, L', O) back through the convolution, as Conv2D's vjp."""
    _check_sequences(x, params["W"].shape[1])
    g_params, g_x = conv_vjp(
        _as_image_params(params), x[:, None], g[:, None], (1, stride), padding_2d
    )
    return {"W": g_params["W"][0], "b": g_params["b"]}, g_x[:, 0]


def Conv1D(
    out_channels: int,
    window,
    strides=1,
    padding="valid",
    W_init=glorot_normal,
    b_init=jax.nn.initializers.zeros,
) -> Layer:
    """1-D convolution of sequences (N, L, C) with `out_channels` filters of `window` taps.

    The kernel W has shape (k, C, O). padding: 'same', 'valid', 'full' or one pair (lo, hi).
    """
    if not isinstance(out_channels, int) or isinstance(out_channels, bool) or out_channels < 1:
        raise ValueError(f"Conv1D out_channels must be a positive int, got {out_channels!r}")
    window = _positive_1d("Conv1D window", window)
    strides = _positive_1d("Conv1D strides", strides)
    padding_2d = _padding_2d(padding)
    (stride,) = strides

    def init(key, input_shape):
        if len(input_shape) != 2:
            raise ValueError(
                f"Conv1D expects a sequence input shape (L, C), got {tuple(input_shape)}"
            )
        length, c = input_shape
        try:
            _, (_, length_out) = win.geometry((1, length), (1,) + window, (1, stride), padding_2d)
        except ValueError as error:
            raise ValueError(f"Conv1D on sequences of length {length}: {error}") from None
        k_w, k_b = jax.random.split(key)
        dtype = default_float()
        params = {
            "W": W_init(k_w, window + (c, out_channels), dtype),
            "b": b_init(k_b, (out_channels,), dtype),
        }
        return (length_out, out_channels), params

    def apply(params, x, *, key=None):
        return conv1d_apply(params, x, stride, padding_2d)

    def jacobians(params, x, n, *, key=None):
        return conv1d_jacobians(params, x[n], stride, padding_2d)

    def vjp(params, x, g, *, key=None):
        return conv1d_vjp(params, x, g, stride, padding_2d)

    spec = {
        "out_channels": out_channels,
        "window": window,
        "strides": strides,
        "padding": padding if isinstance(padding, str) else tuple(padding),
    }
    return Layer("conv1d", init, apply, jacobians, vjp, spec)
