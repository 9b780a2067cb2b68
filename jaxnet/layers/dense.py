"""Fully connected layer a = W x + b, with the notes' local Jacobians beside it.

Bias convention: jaxnet keeps W (shape (e, d), rows indexed by output as in the notes) and b
(shape (e,)) as separate leaves. The notes' W^(k) acting on the augmented input x~ = [1; x] is
the e x (d + 1) matrix [b | W]: `fold_bias` and `augment` convert, and the tests check that
W~ x~ equals `apply`. Keeping b apart lets weight decay and initialisers treat it separately.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet.layers.base import Layer, default_float

glorot_normal = jax.nn.initializers.glorot_normal()


def dense_apply(params, x):
    """a = x W^T + b for a batch of row vectors x of shape (N, d)."""
    W, b = params["W"], params["b"]
    if x.ndim != 2 or x.shape[-1] != W.shape[1]:
        raise ValueError(
            f"Dense layer with W of shape {W.shape} expects input (N, {W.shape[1]}), got {x.shape}"
            + ("; add a Flatten layer before it" if x.ndim > 2 else "")
        )
    return x @ W.T + b[None, :]


def dense_jacobians(params, x_n):
    """Local Jacobians of a = W x~ for one sample (notes' appendix with f = identity).

    da_i/dW_qj = delta_iq x_j,  da_i/db_q = delta_iq,  da_i/dx_j = W_ij.
    """
    W = params["W"]
    eye = jnp.eye(W.shape[0], dtype=W.dtype)
    return {"W": eye[:, :, None] * x_n[None, None, :], "b": eye}, W


def dense_activation_jacobians(params, x_n, f_prime):
    """The notes' Jacobians of a dense layer followed by a point activation, x = f(W x~).

    dx_i/dW_qj = delta_iq f'(a_i) x~_j  and  dx_i/dx_j^(k-1) = f'(a_i) W_ij  (notes 000/002,
    appendix), where a = W x~ and the bias is the x~_0 = 1 column, so dx_i/db_q = delta_iq f'(a_i).
    """
    W, b = params["W"], params["b"]
    d = f_prime(W @ x_n + b)
    eye = jnp.eye(W.shape[0], dtype=W.dtype)
    return {"W": (eye * d[:, None])[:, :, None] * x_n[None, None, :], "b": eye * d[:, None]}, d[
        :, None
    ] * W


def dense_vjp(params, x, g):
    """Row vectors g = dl/da (N, e) back through a = W x + b: (sum_n g_n^T x_n, sum_n g_n), g W."""
    return {"W": g.T @ x, "b": jnp.sum(g, axis=0)}, g @ params["W"]


def fold_bias(params):
    """The notes' W^(k) = [b | W], which acts on x~ = [1; x]."""
    return jnp.concatenate([params["b"][:, None], params["W"]], axis=1)


def augment(x):
    """x~ = [1; x] for a batch of row vectors (N, d) -> (N, d + 1)."""
    return jnp.concatenate([jnp.ones_like(x[:, :1]), x], axis=1)


def Dense(out_features: int, W_init=glorot_normal, b_init=jax.nn.initializers.zeros) -> Layer:
    """Fully connected layer with `out_features` outputs.

    W_init is any jax.nn.initializers function. It is called with shape (d, e), the fan-in-first
    layout those initialisers assume, and its result is transposed to the notes' (e, d), so
    he_normal() and glorot_normal() see the right fan-in without extra arguments.
    """
    if not isinstance(out_features, int) or isinstance(out_features, bool) or out_features < 1:
        raise ValueError(f"Dense out_features must be a positive int, got {out_features!r}")

    def init(key, input_shape):
        if len(input_shape) != 1:
            raise ValueError(
                f"Dense expects a flat input shape (d,), got {tuple(input_shape)}; "
                "add Flatten() before it"
            )
        k_w, k_b = jax.random.split(key)
        d = input_shape[0]
        dtype = default_float()
        W = W_init(k_w, (d, out_features), dtype).T
        return (out_features,), {"W": W, "b": b_init(k_b, (out_features,), dtype)}

    def apply(params, x, *, key=None):
        return dense_apply(params, x)

    def jacobians(params, x, n, *, key=None):
        return dense_jacobians(params, x[n])

    def vjp(params, x, g, *, key=None):
        return dense_vjp(params, x, g)

    return Layer("dense", init, apply, jacobians, vjp, {"out_features": out_features})
