"""Activation functions, each with its hand-written derivative beside it (slides 003, notes 004).

Point activations f: R -> R act entrywise; their Jacobian is diag(f'(a)). sigmoid, tanh and relu
are `jax.custom_jvp`s whose derivative is the one written here, so `jax.grad` through a jaxnet
network keeps full relative precision where the activations saturate (JAX's own sigmoid and tanh
gradients round to 0 beyond |a| ~ 37 and ~ 19; the true values are ~1e-16 to 1e-300). The
soft-max and log-soft-max act on the last axis; their Jacobians are written out too. Everything
stays finite for logits of +-1e4 and beyond.

ReLU convention. The notes (000/001/002, appendix) take dReLU/da = 1 for a >= 0; `jax.nn.relu`
uses 0 at a = 0. jaxnet's `relu` is a `jax.custom_jvp` that follows the notes, so `jax.grad`
through a jaxnet network and the hand-written back-propagation agree even where an activation is
exactly 0 (common at initialisation: zero pixels times any weight, plus a zero bias).
`relu_derivative(a, at_zero=0.0)` gives JAX's convention when you need it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_jvp
def sigmoid(a):
    """sigma(a) = 1 / (1 + e^-a), evaluated without overflow; jax.grad uses `sigmoid_derivative`."""
    return jax.nn.sigmoid(a)


def sigmoid_derivative(a):
    """sigma'(a) = sigma(a) (1 - sigma(a)) (slides 003), computed as sigma(a) sigma(-a).

    1 - sigma(a) rounds to 0 for a > 37.
    """
    return jax.nn.sigmoid(a) * jax.nn.sigmoid(-a)


@sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    return sigmoid(a), sigmoid_derivative(a) * da


@jax.custom_jvp
def tanh(a):
    """tanh(a) = (e^a - e^-a) / (e^a + e^-a); jax.grad uses `tanh_derivative`."""
    return jnp.tanh(a)


def tanh_derivative(a):
    """tanh'(a) = 1 - tanh(a)^2, as 1 / cosh(a)^2: the difference rounds to 0 for |a| > 19."""
    return 1 / jnp.cosh(a) ** 2


@tanh.defjvp
def _tanh_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    return tanh(a), tanh_derivative(a) * da


@jax.custom_jvp
def relu(a):
    """max(0, a), whose derivative under jax.grad is 1 for a >= 0 as in the notes' appendix."""
    return jnp.maximum(a, 0)


def relu_derivative(a, at_zero: float = 1.0):
    """dReLU/da: 1 for a > 0, 0 for a < 0, and `at_zero` at a = 0.

    at_zero is 1 in the notes, 0 in jax.nn.relu.
    """
    return jnp.where(a > 0, 1.0, jnp.where(a < 0, 0.0, at_zero)).astype(jnp.result_type(a, float))


@relu.defjvp
def _relu_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    return relu(a), relu_derivative(a) * da


def swish(a, beta: float = 1.0):
    """swish(a) = a sigma(beta a) (slides 003); beta = 1 is SiLU."""
    return a * jax.nn.sigmoid(beta * a)


def swish_derivative(a, beta: float = 1.0):
    """swish'(a) = sigma(beta a) + beta a sigma(beta a) (1 - sigma(beta a))."""
    s = jax.nn.sigmoid(beta * a)
    return s + beta * a * s * jax.nn.sigmoid(-beta * a)


def identity(a):
    """f(a) = a."""
    return a


def identity_derivative(a):
    """f'(a) = 1."""
    return jnp.ones_like(a)


def log_softmax(z, axis: int = -1):
    """log Prob(i) = z_i - log sum_j exp(z_j) (notes 004), shifted by max z: it never overflows."""
    shifted = z - jax.lax.stop_gradient(jnp.max(z, axis=axis, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def softmax(z, axis: int = -1):
    """Prob(i) = exp(z_i) / sum_j exp(z_j): a point of the soft-max simplex (notes 000, Sec. 1)."""
    return jnp.exp(log_softmax(z, axis=axis))


def softmax_jacobian(z):
    """dp/dz = diag(p) - p p^T for one vector of logits z (p = softmax(z))."""
    p = softmax(z)
    return jnp.diag(p) - jnp.outer(p, p)


def log_softmax_jacobian(z):
    """d log Prob(i) / dz_k = delta_ik - Prob(k) (notes 004), i.e. I - 1 p^T."""
    p = softmax(z)
    return jnp.eye(z.shape[-1], dtype=p.dtype) - jnp.broadcast_to(p, (z.shape[-1], z.shape[-1]))


POINT_ACTIVATIONS = {
    "sigmoid": (sigmoid, sigmoid_derivative),
    "tanh": (tanh, tanh_derivative),
    "relu": (relu, relu_derivative),
    "swish": (swish, swish_derivative),
    "identity": (identity, identity_derivative),
}
"""Name -> (f, f') for every point activation; swish takes beta as a keyword."""
