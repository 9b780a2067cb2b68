"""Max-pooling and average-pooling over NHWC images, and the notes' ReLU + max-pooling Jacobian.

Also global average-pooling, the mean over every spatial axis of (N, ..., C) inputs.

Tie rule. When several inputs of a max-pooling window share the maximum, the whole gradient goes
to the first of them in row-major window order (row p first, then column q). The notes leave the
choice open ("one of the highest inputs, say, chosen at random"); this rule is deterministic and
is also what `jax.grad` of `lax.reduce_window` does, so the two agree on ties. (`jnp.max`
instead splits the gradient evenly among tied inputs: not a valid choice of one winner.)

Padding. Max-pooling pads with -inf, so padded cells never win; average-pooling pads with 0 and
divides by the full window size k1 k2 (padded cells count, as in PyTorch's default).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxnet.activations import relu, relu_derivative
from jaxnet.layers import _windows as win
from jaxnet.layers.base import Layer


def _offsets(window):
    return [(p, q) for p in range(window[0]) for q in range(window[1])]


def max_pool_apply(x, window, strides, padding):
    win.check_nhwc("MaxPool", x)
    return _max_pool(x, window, strides, padding)


def _is_tiling(x, window, strides, padding) -> bool:
    """Whether the windows are non-overlapping, unpadded and tile x exactly."""
    pads, _ = win.geometry(x.shape[1:3], window, strides, padding)
    (h, w), (kh, kw) = x.shape[1:3], window
    return strides == window and all(p == (0, 0) for p in pads) and not (h % kh or w % kw)


def _blocks(x, window):
    """Tiled x as (N, H', k1, W', k2, C): axes 2 and 4 run over each window (a reshape, no copy)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // window[0], window[0], w // window[1], window[1], c)


def _window_views(x, window):
    """The inputs at each window offset, in row-major order: k1 k2 arrays shaped like the output."""
    blocks = _blocks(x, window)
    return [blocks[:, :, p, :, q, :] for p, q in _offsets(window)]


def tile_winners(views, y):
    """Row-major offset of each window's first maximum y (its first NaN, if any), as jnp.argmax."""
    arg = jnp.full(y.shape, len(views) - 1, jnp.int32)
    for t in reversed(range(len(views) - 1)):
        arg = jnp.where((views[t] == y) | jnp.isnan(views[t]), t, arg)
    return arg


# The derivative is hand-written rather than left to XLA: select_and_scatter, which jax.grad of
# reduce_window uses, is slow on CPU (a third of a small CNN's step). As a custom_jvp (the
# tangent of each output is its winner's tangent) it serves forward mode too, and JAX's
# transpose of it is the backward pass. Same tie rule as XLA's. On tiling windows (the common
# k x k, stride k case) value, winner and tangent are elementwise over the window's offsets:
# jnp.max and jnp.argmax over a (..., k1 k2) axis made two passes and a (value, index) reduce
# made one, but XLA:CPU runs tuple-shaped fusions on one thread; the default CNN's step took
# 28.5, 28.5 and 26.4 ms (10th percentiles, one process, 150 steps each).
@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
    if _is_tiling(x, window, strides, padding):
        return functools.reduce(jnp.maximum, _window_views(x, window))
    pads, _ = win.geometry(x.shape[1:3], window, strides, padding)
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        (1,) + window + (1,),
        (1,) + strides + (1,),
        ((0, 0),) + pads + ((0, 0),),
    )


@_max_pool.defjvp
def _max_pool_jvp(window, strides, padding, primals, tangents):
    (x,), (dx,) = primals, tangents
    if _is_tiling(x, window, strides, padding):
        views = _window_views(x, window)
        y = functools.reduce(jnp.maximum, views)
        # written on the (N, H', k1, W', k2, C) view, so that its transpose (the backward pass)
        # writes the input's gradient in the input's own layout
        dx_blocks = _blocks(dx, window)
        offset = jax.lax.broadcasted_iota(jnp.int32, dx_blocks.shape, 2) * window[1]
        offset = offset + jax.lax.broadcasted_iota(jnp.int32, dx_blocks.shape, 4)
        won = offset == tile_winners(views, y)[:, :, None, :, None, :]
        return y, jnp.sum(jnp.where(won, dx_blocks, 0), axis=(2, 4))
    y = _max_pool(x, window, strides, padding)
    arg, pads, out_hw = max_pool_winners(x, window, strides, padding)
    dxpad = win.pad_hw(dx, pads)
    dy = sum(
        jnp.where(arg == t, win.offset_slice(dxpad, p, q, out_hw, strides), 0)
        for t, (p, q) in enumerate(_offsets(window))
    )
    return y, dy


def max_pool_winners(x, window, strides, padding):
    """For every output (n, i, j, c), the row-major index p k2 + q of the window's first maximum."""
    pads, out_hw = win.geometry(x.shape[1:3], window, strides, padding)
    xpad = win.pad_hw(x, pads, -jnp.inf)
    stacked = jnp.stack(
        [win.offset_slice(xpad, p, q, out_hw, strides) for p, q in _offsets(window)], axis=-1
    )
    return jnp.argmax(stacked, axis=-1), pads, out_hw  # argmax returns the first maximum


def max_pool_jacobian(x_n, window, strides, padding):
    """dy[i,j,c]/dx[u,v,d] = delta_cd [(u, v) is the winning input (u^, v^) of window (i, j, c)]."""
    arg, pads, (ho, wo) = max_pool_winners(x_n[None], window, strides, padding)
    arg = arg[0]
    hp, wp = x_n.shape[0] + sum(pads[0]), x_n.shape[1] + sum(pads[1])
    win_u = jnp.arange(ho)[:, None, None] * strides[0] + arg // window[1]
    win_v = jnp.arange(wo)[None, :, None] * strides[1] + arg % window[1]
    eye = jnp.eye(x_n.shape[-1], dtype=x_n.dtype)
    J = jnp.einsum(
        "ijcu,ijcv,cd->ijcuvd",
        jax.nn.one_hot(win_u, hp, dtype=x_n.dtype),
        jax.nn.one_hot(win_v, wp, dtype=x_n.dtype),
        eye,
    )
    return win.crop_hw(J, pads, x_n.shape[:2])


def max_pool_vjp(x, g, window, strides, padding):
    """Route each g[n, i, j, c] to its window's winning input, adding where windows overlap."""
    arg, pads, out_hw = max_pool_winners(x, window, strides, padding)
    g_xpad = win.pad_hw(jnp.zeros_like(g, shape=x.shape), pads)
    for t, (p, q) in enumerate(_offsets(window)):
        g_xpad = win.add_at_offset(g_xpad, jnp.where(arg == t, g, 0), p, q, out_hw, strides)
    return win.crop_hw(g_xpad, pads, x.shape[1:3])


def avg_pool_apply(x, window, strides, padding):
    win.check_nhwc("AvgPool", x)
    pads, _ = win.geometry(x.shape[1:3], window, strides, padding)
    summed = jax.lax.reduce_window(
        x,
        0.0,
        jax.lax.add,
        (1,) + window + (1,),
        (1,) + strides + (1,),
        ((0, 0),) + pads + ((0, 0),),
    )
    return summed / (window[0] * window[1])


def avg_pool_jacobian(x_n, window, strides, padding):
    """dy[i,j,c]/dx[u,v,d] = delta_cd [ (u, v) in window (i, j) ] / (k1 k2)."""
    pads, (ho, wo) = win.geometry(x_n.shape[:2], window, strides, padding)
    hp, wp = x_n.shape[0] + sum(pads[0]), x_n.shape[1] + sum(pads[1])
    A = win.selection(hp, ho, window[0], strides[0], x_n.dtype)
    B = win.selection(wp, wo, window[1], strides[1], x_n.dtype)
    eye = jnp.eye(x_n.shape[-1], dtype=x_n.dtype)
    J = jnp.einsum("piu,qjv,cd->ijcuvd", A, B, eye) / (window[0] * window[1])
    return win.crop_hw(J, pads, x_n.shape[:2])


def avg_pool_vjp(x, g, window, strides, padding):
    """Spread each g[n, i, j, c] evenly over its window."""
    pads, out_hw = win.geometry(x.shape[1:3], window, strides, padding)
    g_xpad = win.pad_hw(jnp.zeros_like(x), pads)
    share = g / (window[0] * window[1])
    for p, q in _offsets(window):
        g_xpad = win.add_at_offset(g_xpad, share, p, q, out_hw, strides)
    return win.crop_hw(g_xpad, pads, x.shape[1:3])


def _pool(name, apply_fn, jacobian_fn, vjp_fn, window, strides, padding) -> Layer:
    window = win.normalize_2d(f"{name} window", window)
    strides = window if strides is None else win.normalize_2d(f"{name} strides", strides)
    pads = win.geometry(window, window, strides, padding)[0]
    if not isinstance(padding, str) and any(
        lo >= k or hi >= k for (lo, hi), k in zip(pads, window)
    ):
        raise ValueError(
            f"{name} padding {padding!r} must be smaller than the window {window} on each side"
        )

    def init(key, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"{name} expects an image input shape (H, W, C), got {tuple(input_shape)}"
            )
        _, out_hw = win.geometry(tuple(input_shape[:2]), window, strides, padding)
        return out_hw + (input_shape[2],), ()

    def apply(params, x, *, key=None):
        return apply_fn(x, window, strides, padding)

    def jacobians(params, x, n, *, key=None):
        return (), jacobian_fn(x[n], window, strides, padding)

    def vjp(params, x, g, *, key=None):
        return (), vjp_fn(x, g, window, strides, padding)

    kind = name.lower().replace("pool", "_pool")
    return Layer(
        kind,
        init,
        apply,
        jacobians,
        vjp,
        {"window": window, "strides": strides, "padding": padding},
    )


def MaxPool(window, strides=None, padding="valid") -> Layer:
    """Max-pooling over `window` with `strides`.

    strides default to the window, i.e. non-overlapping windows; ties as in the module doc.
    """
    return _pool(
        "MaxPool", max_pool_apply, max_pool_jacobian, max_pool_vjp, window, strides, padding
    )


def AvgPool(window, strides=None, padding="valid") -> Layer:
    """Average-pooling over `window` with `strides` (default: the window)."""
    return _pool(
        "AvgPool", avg_pool_apply, avg_pool_jacobian, avg_pool_vjp, window, strides, padding
    )


def _check_spatial(x) -> None:
    if x.ndim < 3:
        raise ValueError(
            "GlobalAvgPool expects a batch with spatial axes and channels last, (N, L, C) or "
            f"(N, H, W, C), got an array of shape {x.shape}"
        )


def global_avg_pool_apply(x):
    """y[n, c] = (1/P) sum_u x[n, u, c] over the P positions u of the spatial axes."""
    _check_spatial(x)
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def global_avg_pool_jacobian(x_n):
    """dy_c/dx[u, c'] = delta_cc' / P for every position u: shape (C,) + x_n.shape."""
    _check_spatial(x_n[None])
    c, positions = x_n.shape[-1], math.prod(x_n.shape[:-1])
    eye = jnp.eye(c, dtype=x_n.dtype)[:, None, :] / positions
    return jnp.broadcast_to(eye, (c, positions, c)).reshape((c,) + x_n.shape)


def global_avg_pool_vjp(x, g):
    """Spread each g[n, c] evenly over the P positions of channel c."""
    _check_spatial(x)
    positions = math.prod(x.shape[1:-1])
    share = g.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)) / positions
    return jnp.broadcast_to(share, x.shape)


def _global_avg_pool_init(key, input_shape):
    if len(input_shape) < 2:
        raise ValueError(
            "GlobalAvgPool expects an input shape with spatial axes and channels last, (L, C) or "
            f"(H, W, C), got {tuple(input_shape)}"
        )
    return (input_shape[-1],), ()


GlobalAvgPool = Layer(
    "global_avg_pool",
    _global_avg_pool_init,
    lambda params, x, *, key=None: global_avg_pool_apply(x),
    lambda params, x, n, *, key=None: ((), global_avg_pool_jacobian(x[n])),
    lambda params, x, g, *, key=None: ((), global_avg_pool_vjp(x, g)),
    {},
)


def relu_maxpool(params, x_n, windows):
    """The notes' layer x_i = max_{q in P(i)} ReLU(a_q), a = W x~, for one sample.

    windows[i] lists P(i). The maximum is taken with the tie rule of this module (first listed
    index wins), so that `jax.grad` of this function follows the same rule as
    `relu_maxpool_jacobians`.
    """
    a = params["W"] @ x_n + params["b"]
    h = relu(a)[windows]
    return jnp.take_along_axis(h, jnp.argmax(h, axis=1)[:, None], axis=1)[:, 0]


def relu_maxpool_jacobians(params, x_n, windows):
    """Jacobians of the notes' ReLU + max-pooling layer (000/002, appendix), for one sample.

    With q^ = argmax_{q in P(i)} h(a_q) (ties: first listed):
    dx_i/dW_qj = delta_{q q^} h'(a_q^) x~_j   and   dx_i/dx_j^(k-1) = h'(a_q^) W_{q^ j},
    where h' is the notes' ReLU derivative (1 for a >= 0) and the bias is the x~_0 = 1 column.
    """
    W, b = params["W"], params["b"]
    a = W @ x_n + b
    h = relu(a)[windows]
    q_hat = jnp.take_along_axis(windows, jnp.argmax(h, axis=1)[:, None], axis=1)[:, 0]
    d = relu_derivative(a[q_hat])
    select = jax.nn.one_hot(q_hat, W.shape[0], dtype=W.dtype) * d[:, None]  # delta_{q q^} h'(a_q^)
    return {"W": select[:, :, None] * x_n[None, None, :], "b": select}, d[:, None] * W[q_hat]
