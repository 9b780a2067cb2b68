"""Layer normalisation and batch normalisation, with their Jacobians beside them.

Both standardise their input x = x^(k-1) over some of its values and then scale and shift each
channel c (the last axis), with the parameters w^(k) = {"scale": gamma, "offset": beta}
(ones and zeros at first):

    xhat = (x - mu) / sigma,   sigma = sqrt(var + eps),   x^(k)_c = gamma_c xhat_c + beta_c,

mu and var being the mean and the biased variance of the M values that share them. LayerNorm
(Ba, Kiros & Hinton 2016) takes them over the C features of one position of one sample;
BatchNorm (Ioffe & Szegedy 2015) over the M = N P values of one channel at the batch's N
samples and P spatial positions.

The standardisation's Jacobian. Over M values x_1 .. x_M sharing mu and sigma,
d mu / d x_j = 1/M and, from sigma^2 = (1/M) sum_k (x_k - mu)^2 + eps,
d sigma / d x_j = (x_j - mu) / (M sigma) = xhat_j / M (the mu term drops out since
sum_k (x_k - mu) = 0; eps only shifts sigma^2). So

    d xhat_i / d x_j = (delta_ij - 1/M) / sigma - (x_i - mu) xhat_j / (M sigma^2)
                     = (delta_ij - 1/M - xhat_i xhat_j / M) / sigma,

and a row vector g = dl/dxhat goes back as the closed form

    g J = (g - mean(g) - xhat mean(g xhat)) / sigma        (means over the same M values).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxnet.layers.base import Layer, Stateful, default_float


def _check_eps(name: str, eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ValueError(f"{name} eps must be a positive finite number, got {eps!r}")
    return float(eps)


def _check_input(name: str, params, x) -> None:
    channels = params["scale"].shape[0]
    if x.ndim < 2 or x.shape[-1] != channels:
        raise ValueError(
            f"{name} was built for {channels} channels on the last axis, expected input "
            f"(N, ..., {channels}), got an array of shape {x.shape}"
        )


def _init_affine(name: str, input_shape):
    """(input_shape, {"scale": ones (C,), "offset": zeros (C,)}) for channels C = the last axis."""
    if len(input_shape) < 1:
        raise ValueError(f"{name} expects an input shape (..., C) with channels last, got ()")
    channels, dtype = input_shape[-1], default_float()
    params = {"scale": jnp.ones((channels,), dtype), "offset": jnp.zeros((channels,), dtype)}
    return tuple(input_shape), params


def per_channel(v, ndim: int):
    """A (C,) vector shaped (1, ..., 1, C) to combine with an ndim-axis array, channels last."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def standardise(x, mean, var, eps: float):
    """(xhat, sigma): xhat = (x - mean) / sigma with sigma = sqrt(var + eps)."""
    sigma = jnp.sqrt(var + eps)
    return (x - mean) / sigma, sigma


def standardise_vjp(g_xhat, xhat, sigma, axes):
    """Row vectors g = dl/dxhat back to dl/dx: (g - mean g - xhat mean(g xhat)) / sigma."""
    mean = lambda v: jnp.mean(v, axis=axes, keepdims=True)
    return (g_xhat - mean(g_xhat) - xhat * mean(g_xhat * xhat)) / sigma


def affine(params, xhat):
    """x^(k) = gamma xhat + beta, per channel."""
    return per_channel(params["scale"], xhat.ndim) * xhat + per_channel(params["offset"], xhat.ndim)


def affine_jacobians(xhat_n):
    """d x^(k)_{u,c} / d gamma_c' = delta_cc' xhat_{u,c} and / d beta_c' = delta_cc'.

    For one sample's xhat of shape S + (C,); the leaves have shape S + (C,) + (C,).
    """
    channels = xhat_n.shape[-1]
    eye = jnp.eye(channels, dtype=xhat_n.dtype).reshape((1,) * (xhat_n.ndim - 1) + (channels,) * 2)
    return {
        "scale": xhat_n[..., None] * eye,
        "offset": jnp.broadcast_to(eye, xhat_n.shape + (channels,)),
    }


def affine_vjp(params, xhat, g):
    """(dl/dw^(k) summed over the batch, dl/dxhat) for row vectors g = dl/dx^(k)."""
    axes = tuple(range(xhat.ndim - 1))
    grads = {"scale": jnp.sum(g * xhat, axis=axes), "offset": jnp.sum(g, axis=axes)}
    return grads, g * per_channel(params["scale"], g.ndim)


# ---------------------------------------------------------------------------------- LayerNorm


def layer_norm_standardise(x, eps: float):
    """(xhat, sigma) over the last axis of every position of every sample."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return standardise(x, mean, var, eps)


def layer_norm_jacobians(params, x_n, eps: float):
    """Local Jacobians of LayerNorm for one sample x_n of shape S + (C,).

    Positions u, u' of S do not mix, so with M = C (module doc)

    d x^(k)_{u,i} / d x^(k-1)_{u',j} = delta_uu' gamma_i (delta_ij - 1/C - xhat_i xhat_j / C)
                                       / sigma_u,

    and J_params as in `affine_jacobians`.
    """
    xhat, sigma = layer_norm_standardise(x_n, eps)
    c = x_n.shape[-1]
    positions = math.prod(x_n.shape[:-1])
    xh, sig = xhat.reshape(positions, c), sigma.reshape(positions, 1, 1)
    eye = jnp.eye(c, dtype=xhat.dtype)[None]
    block = (eye - 1 / c - xh[:, :, None] * xh[:, None, :] / c) / sig
    block = block * params["scale"][None, :, None]
    J_x = jnp.eye(positions, dtype=xhat.dtype)[:, None, :, None] * block[:, :, None, :]
    return affine_jacobians(xhat), J_x.reshape(x_n.shape + x_n.shape)


def LayerNorm(eps: float = 1e-5) -> Layer:
    """Normalise each sample's features (the last axis) to mean 0, variance 1, then scale, shift.

    x^(k) = gamma (x - mu) / sqrt(var + eps) + beta per position; params {"scale", "offset"}.
    """
    eps = _check_eps("LayerNorm", eps)

    def init(key, input_shape):
        return _init_affine("LayerNorm", input_shape)

    def apply(params, x, *, key=None):
        _check_input("LayerNorm", params, x)
        return affine(params, layer_norm_standardise(x, eps)[0])

    def jacobians(params, x, n, *, key=None):
        _check_input("LayerNorm", params, x)
        return layer_norm_jacobians(params, x[n], eps)

    def vjp(params, x, g, *, key=None):
        _check_input("LayerNorm", params, x)
        xhat, sigma = layer_norm_standardise(x, eps)
        g_params, g_xhat = affine_vjp(params, xhat, g)
        return g_params, standardise_vjp(g_xhat, xhat, sigma, -1)

    return Layer("layer_norm", init, apply, jacobians, vjp, {"eps": eps})


# ---------------------------------------------------------------------------------- BatchNorm


def _example_weights(x, mask):
    """Per-example weights shaped (N, 1, ..., 1): mask where > 0, else 0; all 1 without a mask."""
    n = x.shape[0]
    if mask is None:
        weights = jnp.ones((n,), x.dtype)
    else:
        mask = jnp.asarray(mask)
        if mask.shape != (n,):
            raise ValueError(
                f"BatchNorm mask must have shape (N,) = ({n},), one weight per example, "
                f"got shape {mask.shape}"
            )
        weights = jnp.where(mask > 0, mask, 0).astype(x.dtype)
    return weights.reshape((n,) + (1,) * (x.ndim - 1))


def channel_sums(v, axis_name=None):
    """Per-channel sums over every axis but the last (and over `axis_name`'s devices).

    The sum is taken over v viewed as (rows, C): XLA:CPU reduces that 2-D view faster than
    the same sum over axes (0, 1, 2) of an image batch.
    """
    sums = jnp.sum(v.reshape(-1, v.shape[-1]), axis=0)
    return sums if axis_name is None else jax.lax.psum(sums, axis_name)


def _moments(x, weights, axis_name):
    """(mean, biased var, count m) per channel for example weights shaped (N, 1, ..., 1)."""
    counted = weights > 0
    count = jnp.sum(weights) * math.prod(x.shape[1:-1])
    if axis_name is not None:
        count = jax.lax.psum(count, axis_name)
    divisor = jnp.where(count > 0, count, 1)
    mean = channel_sums(weights * jnp.where(counted, x, 0), axis_name) / divisor
    deviations = jnp.where(counted, x - per_channel(mean, x.ndim), 0)
    return mean, channel_sums(weights * deviations**2, axis_name) / divisor, count


def batch_moments(x, mask=None, axis_name=None):
    """Per-channel (mean, biased variance, count m) over the batch and all spatial axes.

    Examples weighing <= 0 are left out exactly: their values never enter a sum. Under pmap the
    weighted sums are psum'ed over `axis_name`, the mean's first and the squared deviations
    about the global mean second (the one-pass E[x^2] - E[x]^2 loses digits when |mu| >> sigma).
    An empty batch (m = 0) has mean 0 and variance 0.
    """
    return _moments(x, _example_weights(x, mask), axis_name)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def batch_standardise(x, weights, eps: float, axis_name=None):
    """(xhat, mean, var, count): x standardised with the batch's own (weighted) statistics.

    weights are per example, shaped (N, 1, ..., 1), as `batch_moments` takes them. Its
    derivative is the closed form of the module doc, below.
    """
    mean, var, count = _moments(x, weights, axis_name)
    xhat, _ = standardise(x, per_channel(mean, x.ndim), per_channel(var, x.ndim), eps)
    return xhat, mean, var, count


def _tangent_from_weights(x, weights, dw, outputs, axis_name):
    """(d mean, d var, d m) from the weights' tangent dw.

    m = P sum w changes by P sum dw, mean by sum dw (x - mu) / m and var by
    sum dw ((x - mu)^2 - var) / m: mu's own change drops out of var's since the weighted
    deviations sum to 0.
    """
    xhat, mean, var, count = outputs
    counted = weights > 0
    dw = jnp.where(counted, dw, 0)  # the forward pass's where: no derivative at w <= 0
    divisor = jnp.where(count > 0, count, 1)
    deviations = jnp.where(counted, x - per_channel(mean, x.ndim), 0)
    d_mean = channel_sums(dw * deviations, axis_name) / divisor
    d_var = channel_sums(dw * (deviations**2 - per_channel(var, x.ndim)), axis_name) / divisor
    d_count = jnp.sum(dw) * math.prod(x.shape[1:-1])
    if axis_name is not None:
        d_count = jax.lax.psum(d_count, axis_name)
    return d_mean, d_var, d_count


@functools.partial(batch_standardise.defjvp, symbolic_zeros=True)
def _batch_standardise_jvp(eps, axis_name, primals, tangents):
    """The tangent of xhat for a tangent dx: (dx - mean(dx) - xhat mean(xhat dx)) / sigma.

    It is the transpose of the module doc's g J (J is symmetric up to the 1/sigma), with the
    means weighted by the examples' weights over the m counted values; d mean = mean(dx),
    d var = 2 sigma mean(xhat dx). JAX transposes it for the reverse mode, so back-propagation
    through training-mode BatchNorm runs this closed form rather than the autodiff of every
    sum (3x faster on XLA:CPU).
    """
    x, weights = primals
    dx, dw = tangents
    outputs = batch_standardise(x, weights, eps, axis_name)
    xhat, mean, var, count = outputs
    sigma = jnp.sqrt(var + eps)
    divisor = jnp.where(count > 0, count, 1)
    d_mean, d_var, d_count = jnp.zeros_like(mean), jnp.zeros_like(var), jnp.zeros_like(count)
    if not isinstance(dx, SymbolicZero):
        counted = weights > 0  # padding's values and tangents stay out, even NaN ones
        weighted_dx = jnp.where(counted, weights * dx, 0)
        d_mean = channel_sums(weighted_dx, axis_name) / divisor
        d_var = 2 * sigma * channel_sums(jnp.where(counted, xhat * weighted_dx, 0), axis_name)
        d_var = d_var / divisor
    else:
        dx = jnp.zeros_like(x)
    if not isinstance(dw, SymbolicZero):
        w_mean, w_var, d_count = _tangent_from_weights(x, weights, dw, outputs, axis_name)
        d_mean, d_var = d_mean + w_mean, d_var + w_var
    column = lambda v: per_channel(v, x.ndim)
    d_xhat = (dx - column(d_mean) - xhat * column(d_var / (2 * sigma))) / column(sigma)
    return outputs, (d_xhat, d_mean, d_var, d_count)


def running_update(state, mean, var, count, decay: float):
    """running = decay running + (1 - decay) batch, with the unbiased m/(m - 1) var (m > 1).

    As PyTorch; an empty batch (m = 0) leaves the state as it was.
    """
    unbiased = var * jnp.where(count > 1, count / jnp.where(count > 1, count - 1, 1), 1)
    new = {
        "mean": decay * state["mean"] + (1 - decay) * mean,
        "var": decay * state["var"] + (1 - decay) * unbiased,
    }
    return {
        name: jnp.where(count > 0, value, state[name]).astype(state[name].dtype)
        for name, value in new.items()
    }


def batch_norm_standardise(x, eps: float):
    """(xhat, sigma) with the batch's own statistics: the training-mode standardisation."""
    xhat, _, var, _ = batch_standardise(x, _example_weights(x, None), eps)
    return xhat, per_channel(jnp.sqrt(var + eps), x.ndim)


def batch_norm_jacobians(params, x, n, eps: float):
    """Local Jacobians of training-mode BatchNorm: sample n's output against the whole batch.

    Index the M = N P values of channel c by r = (sample m, position u'). With the module
    doc's Jacobian, for the output at (n, u):

    d x^(k)_{n,u,c} / d x^(k-1)_{m,u',c'}
        = delta_cc' gamma_c (delta_(n,u),(m,u') - 1/M - xhat_{n,u,c} xhat_{m,u',c} / M) / sigma_c,

    J_x of shape out_shape + x.shape; the statistics do not depend on w^(k), so J_params are
    `affine_jacobians` of sample n. n may be traced.
    """
    xhat, sigma = batch_norm_standardise(x, eps)
    c = x.shape[-1]
    positions = math.prod(x.shape[1:-1])
    rows = xhat.reshape(-1, c)  # row r = m P + u'
    mine = xhat[n].reshape(positions, c)
    same = jnp.arange(positions)[:, None] + n * positions == jnp.arange(rows.shape[0])[None, :]
    core = (
        same[:, :, None] - 1 / rows.shape[0] - mine[:, None, :] * rows[None, :, :] / rows.shape[0]
    )
    core = core * (params["scale"] / sigma.reshape(c))[None, None, :]  # (P, M, C)
    eye = jnp.eye(c, dtype=xhat.dtype)
    J_x = jnp.transpose(core, (0, 2, 1))[:, :, :, None] * eye[None, :, None, :]
    return affine_jacobians(xhat[n]), J_x.reshape(x.shape[1:] + x.shape)


def _check_state(state, channels: int) -> None:
    shapes = {
        name: jnp.shape(state[name]) if isinstance(state, dict) and name in state else None
        for name in ("mean", "var")
    }
    if any(shape != (channels,) for shape in shapes.values()):
        raise ValueError(
            f"BatchNorm state must be {{'mean', 'var'}} of shape ({channels},), got shapes {shapes}"
        )


def BatchNorm(decay: float = 0.9, eps: float = 1e-5) -> Layer:
    """Batch normalisation per channel (the last axis) over the batch and all spatial axes.

    params {"scale", "offset"}; state {"mean", "var"}, the running averages
    running = decay running + (1 - decay) batch (PyTorch's momentum is 1 - decay). The plain
    `apply` is the training-mode function with the batch's statistics (spec couples_batch);
    `stateful.apply(..., train=False)` normalises with the running averages.
    """
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise ValueError(
            "BatchNorm decay must be in [0, 1) (running = decay running + (1 - decay) batch), "
            f"got {decay!r}"
        )
    decay, eps = float(decay), _check_eps("BatchNorm", eps)

    def init(key, input_shape):
        return _init_affine("BatchNorm", input_shape)

    def init_state(input_shape):
        _init_affine("BatchNorm", input_shape)  # validates the shape
        channels, dtype = input_shape[-1], default_float()
        return {"mean": jnp.zeros((channels,), dtype), "var": jnp.ones((channels,), dtype)}

    def apply(params, x, *, key=None):
        _check_input("BatchNorm", params, x)
        return affine(params, batch_norm_standardise(x, eps)[0])

    def apply_stateful(params, state, x, *, key=None, train=False, mask=None, axis_name=None):
        _check_input("BatchNorm", params, x)
        _check_state(state, params["scale"].shape[0])
        if train:
            weights = _example_weights(x, mask)
            xhat, mean, var, count = batch_standardise(x, weights, eps, axis_name)
            state = running_update(state, mean, var, count, decay)
        else:
            mean, var = state["mean"], state["var"]
            xhat, _ = standardise(x, per_channel(mean, x.ndim), per_channel(var, x.ndim), eps)
        return affine(params, xhat), state

    def jacobians(params, x, n, *, key=None):
        _check_input("BatchNorm", params, x)
        return batch_norm_jacobians(params, x, n, eps)

    def vjp(params, x, g, *, key=None):
        _check_input("BatchNorm", params, x)
        xhat, sigma = batch_norm_standardise(x, eps)
        g_params, g_xhat = affine_vjp(params, xhat, g)
        return g_params, standardise_vjp(g_xhat, xhat, sigma, tuple(range(x.ndim - 1)))

    spec = {"decay": decay, "eps": eps, "couples_batch": True}
    return Layer(
        "batch_norm", init, apply, jacobians, vjp, spec, Stateful(init_state, apply_stateful)
    )
