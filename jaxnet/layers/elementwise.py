"""Parameter-free layers: point activations, soft-max and log-soft-max, and flatten.

A point activation x = f(a) has the diagonal Jacobian diag(f'(a)), built from the derivatives
written beside each function in `jaxnet.activations`.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax.numpy as jnp

from jaxnet import activations as act
from jaxnet.layers.base import Layer


def diagonal_jacobian(values):
    """diag(values) laid out as shape + shape, the Jacobian layout of an entrywise map."""
    size = values.size
    return (jnp.eye(size, dtype=values.dtype) * values.reshape(1, size)).reshape(
        values.shape + values.shape
    )


def elementwise(name: str, f, f_prime, spec=None) -> Layer:
    """A layer applying the point function f entrywise, with derivative f'; spec: its settings."""

    def init(key, input_shape):
        return tuple(input_shape), ()

    def apply(params, x, *, key=None):
        return f(x)

    def jacobians(params, x, n, *, key=None):
        return (), diagonal_jacobian(f_prime(x[n]))

    def vjp(params, x, g, *, key=None):
        return (), g * f_prime(x)

    return Layer(name, init, apply, jacobians, vjp, dict(spec or {}))


Sigmoid = elementwise("sigmoid", act.sigmoid, act.sigmoid_derivative)
Tanh = elementwise("tanh", act.tanh, act.tanh_derivative)
Relu = elementwise("relu", act.relu, act.relu_derivative)
Identity = elementwise("identity", act.identity, act.identity_derivative)


def Swish(beta: float = 1.0) -> Layer:
    """x = a sigma(beta a), entrywise; spec {"beta": beta}."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"Swish beta must be a real number, got {beta!r}")
    if not math.isfinite(beta):
        raise ValueError(f"Swish beta must be finite, got {beta!r}")
    beta = float(beta)
    return elementwise(
        "swish",
        functools.partial(act.swish, beta=beta),
        functools.partial(act.swish_derivative, beta=beta),
        {"beta": beta},
    )


def _check_vectors(name, x):
    if x.ndim != 2:
        raise ValueError(
            f"{name} expects a batch of vectors (N, e), got shape {x.shape}; "
            "add Flatten() before it"
        )


def _softmax_apply(params, x, *, key=None):
    _check_vectors("Softmax", x)
    return act.softmax(x)


def _softmax_vjp(params, x, g, *, key=None):
    return (), act.softmax_vjp(x, g)  # g (diag(p) - p p^T)


def _log_softmax_apply(params, x, *, key=None):
    _check_vectors("LogSoftmax", x)
    return act.log_softmax(x)


def _log_softmax_vjp(params, x, g, *, key=None):
    return (), act.log_softmax_vjp(x, g)  # g (I - 1 p^T)


def _same_shape(key, input_shape):
    return tuple(input_shape), ()


Softmax = Layer(
    "softmax",
    _same_shape,
    _softmax_apply,
    lambda params, x, n, *, key=None: ((), act.softmax_jacobian(x[n])),
    _softmax_vjp,
    {},
)
LogSoftmax = Layer(
    "log_softmax",
    _same_shape,
    _log_softmax_apply,
    lambda params, x, n, *, key=None: ((), act.log_softmax_jacobian(x[n])),
    _log_softmax_vjp,
    {},
)


def _flatten_init(key, input_shape):
    return (math.prod(input_shape),), ()


def _flatten_apply(params, x, *, key=None):
    return x.reshape(x.shape[0], -1)


def _flatten_jacobians(params, x, n, *, key=None):
    size = math.prod(x.shape[1:])
    return (), jnp.eye(size, dtype=x.dtype).reshape((size,) + x.shape[1:])


def _flatten_vjp(params, x, g, *, key=None):
    return (), g.reshape(x.shape)


Flatten = Layer("flatten", _flatten_init, _flatten_apply, _flatten_jacobians, _flatten_vjp, {})


def Reshape(*shape: int) -> Layer:
    """Each example reshaped to `shape` (one entry may be -1): images (28, 28, 1) as a sequence
    (28, 28) of rows, say. The Jacobian is the identity, laid out as out_shape + in_shape."""
    if (
        not shape
        or any(isinstance(d, bool) or not isinstance(d, int) or (d < 1 and d != -1) for d in shape)
        or list(shape).count(-1) > 1
    ):
        raise ValueError(
            f"Reshape takes positive ints (at most one -1) for the example shape, got {shape}"
        )

    def target(input_shape):
        size = math.prod(input_shape)
        known = math.prod(d for d in shape if d != -1)
        out = tuple(size // known if d == -1 else d for d in shape)
        if math.prod(out) != size:
            raise ValueError(
                f"Reshape{shape} cannot take examples of shape {tuple(input_shape)} ({size} values)"
            )
        return out

    def init(key, input_shape):
        return target(input_shape), ()

    def apply(params, x, *, key=None):
        return x.reshape((x.shape[0],) + target(x.shape[1:]))

    def jacobians(params, x, n, *, key=None):
        size, out = math.prod(x.shape[1:]), target(x.shape[1:])
        return (), jnp.eye(size, dtype=x.dtype).reshape(out + x.shape[1:])

    def vjp(params, x, g, *, key=None):
        return (), g.reshape(x.shape)

    return Layer("reshape", init, apply, jacobians, vjp, {"shape": shape})
