"""Activation functions, each with its hand-written derivative beside it (slides 003, notes 004).

Point activations f: R -> R act entrywise; their Jacobian is diag(f'(a)). sigmoid, tanh and relu
are `jax.custom_jvp`s whose derivative is the one written here, so `jax.grad` through a jaxnet
network keeps full relative precision where the activations saturate (JAX's own sigmoid and tanh
gradients round to 0 beyond |a| ~ 37 and ~ 19; the true values are ~1e-16 to 1e-300). The
soft-max and log-soft-max act on the last axis; their Jacobians are written out too. Everything
stays finite for logits of +-1e4 and beyond.

Relative precision in saturation. Every derivative here is exact to a few float64 ulps of its
own value wherever that value is a normal float64, however saturated the unit: no formula
subtracts a number from 1 when the difference is tiny (1 - sigma(a), 1 - tanh(a)^2, 1 - Prob(i)
are written sigma(-a), sech(a)^2, -expm1(log Prob(i))). Where the exact value is below the
smallest normal float64 (2.2e-308) the result is 0 or that subnormal: XLA on CPU flushes
subnormals to zero. The exceptions are inherent and written in the docstrings: swish' near its
zero, and the roundings of beta a and of z_j - z_t before an exponential.
tests/test_saturated_derivatives.py checks all this against mpmath.

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
    """tanh'(a) = 1 - tanh(a)^2 = sech(a)^2 = 4 t / (1 + t)^2 with t = e^(-2|a|).

    The difference 1 - tanh^2 rounds to 0 for |a| > 19. 1 / cosh(a)^2 keeps the value but not
    its last digits: XLA's cosh(a) is e^(a - log 2) + e^(-a - log 2), and rounding a - log 2
    costs up to |a| ulp / 2 (18 ulps at |a| = 36). 2|a| is exact, so t costs one rounding; and
    nothing overflows.
    """
    t = jnp.exp(-2 * jnp.abs(a))
    return 4 * t / (1 + t) ** 2


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
    """swish(a) = a sigma(beta a) (slides 003); beta = 1 is SiLU.

    Through jaxnet's `sigmoid`, so jax.grad gets sigma' = sigma(x) sigma(-x), not JAX's
    sigma (1 - sigma) (12 ulps off at a = 30).
    """
    return a * sigmoid(beta * a)


def swish_derivative(a, beta: float = 1.0):
    """swish'(a) = sigma(x) + beta a sigma'(x) = sigma(x) (1 + x sigma(-x)) with x = beta a.

    sigma'(x) = sigma(x) (1 - sigma(x)) = sigma(x) sigma(-x). Exact to a few ulps except near the
    minimum of swish, x = -1.2785, where swish' = 0 and any formula loses digits to the
    cancellation 1 + x sigma(-x); and where beta a itself rounds (beta not a power of 2), which
    moves sigma(x) by up to |x| ulp / 2, as for any float64 formula fed x = beta a.
    """
    x = beta * a
    s = jax.nn.sigmoid(x)
    return s + x * s * jax.nn.sigmoid(-x)


def identity(a):
    """f(a) = a."""
    return a


def identity_derivative(a):
    """f'(a) = 1."""
    return jnp.ones_like(a)


def _shift(z, axis):
    """Logits z shifted by their largest entry z_t along axis, as (top, d, rest).

    top marks t (the first arg max, on ties); d = z - z_t, a constant 0 at t whatever z_t (no
    gradient flows there); rest = sum_{j != t} exp(d_j), at most K - 1.
    """
    axis = axis % z.ndim
    t = jnp.argmax(z, axis=axis, keepdims=True)
    top = jax.lax.broadcasted_iota(t.dtype, z.shape, axis) == t
    d = jnp.where(top, 0, z - jnp.take_along_axis(z, t, axis=axis))
    rest = jnp.sum(jnp.where(top, 0, jnp.exp(d)), axis=axis, keepdims=True)
    return top, d, rest


def _softmax_parts(z, axis):
    """(top, log Prob, Prob) along axis from one `_shift`, for the Jacobians and vjps."""
    top, d, rest = _shift(z, axis)
    return top, d - jnp.log1p(rest), jnp.exp(d) / (1 + rest)


def log_softmax(z, axis: int = -1):
    """log Prob(i) = z_i - log sum_j exp(z_j) (notes 004), shifted by the largest z_t.

    log sum_j exp(z_j) = z_t + log1p(sum_{j != t} exp(z_j - z_t)): nothing overflows, and
    log Prob(t) = -log1p(...) stays exact when Prob(t) ~ 1 (log(1 + 1e-13) is 1e-3 off), so
    1 - Prob(t) = -expm1(log Prob(t)) is exact too. The shift carries its gradient (no
    stop_gradient) and z_t - z_t is a constant 0, so jax.grad is exact as well: the reverse pass
    never forms 1 - (1 - Prob(t)). Entry j != t rounds z_j - z_t first, which moves it by up to
    |z_j - z_t| ulp / 2 of z_j - z_t, as in any soft-max.
    """
    _, d, rest = _shift(z, axis)
    return d - jnp.log1p(rest)


def softmax(z, axis: int = -1):
    """Prob(i) = exp(z_i) / sum_j exp(z_j): a point of the soft-max simplex (notes 000, Sec. 1).

    As exp(z_i - z_t) / (1 + sum_{j != t} exp(z_j - z_t)): exp(log Prob(i)) would lose
    |log Prob(i)| ulp / 2 (16 ulps at Prob(i) = 1e-14) to the rounding of log Prob(i).
    """
    _, d, rest = _shift(z, axis)
    return jnp.exp(d) / (1 + rest)


def softmax_jacobian(z):
    """dp/dz = diag(p) - p p^T for one vector of logits z (p = softmax(z)).

    dProb(i)/dz_k = Prob(i) (delta_ik - Prob(k)); on the diagonal Prob(i) (1 - Prob(i)), with
    1 - Prob(i) = -expm1(log Prob(i)), exact where Prob(i) ~ 1.
    """
    _, log_p, p = _softmax_parts(z, -1)
    return jnp.where(
        jnp.eye(z.shape[-1], dtype=bool), jnp.diag(p * -jnp.expm1(log_p)), -jnp.outer(p, p)
    )


def log_softmax_jacobian(z):
    """d log Prob(i) / dz_k = delta_ik - Prob(k) (notes 004), i.e. I - 1 p^T.

    The diagonal 1 - Prob(i) is -expm1(log Prob(i)), exact where Prob(i) ~ 1.
    """
    k = z.shape[-1]
    _, log_p, p = _softmax_parts(z, -1)
    diagonal = jnp.broadcast_to(-jnp.expm1(log_p), (k, k))
    return jnp.where(jnp.eye(k, dtype=bool), diagonal, -jnp.broadcast_to(p, (k, k)))


def softmax_vjp(z, g, axis: int = -1):
    """g dp/dz = g (diag(p) - p p^T) = p * (g - sum_j g_j p_j): rows g, p_i = Prob(i) on axis.

    As sum_j p_j = 1, g_i - sum_j g_j p_j = sum_j p_j (g_i - g_j)
    = p_t (g_i - g_t) + g_i (1 - p_t) - sum_{j != t} g_j p_j, with t the arg max of z and
    1 - p_t = -expm1(log p_t): exact for one-hot g (p_t (1 - p_t) at g = e_t), where
    g_t - g . p would round 1 - p_t; only the inherent cancellation of a general g remains.
    """
    top, log_p, p = _softmax_parts(z, axis)

    def at_top(values):
        return jnp.sum(jnp.where(top, values, 0), axis=axis, keepdims=True)

    gp_others = jnp.sum(jnp.where(top, 0, g * p), axis=axis, keepdims=True)
    return p * (at_top(p) * (g - at_top(g)) + g * at_top(-jnp.expm1(log_p)) - gp_others)


def log_softmax_vjp(z, g, axis: int = -1):
    """g d log p/dz = g (I - 1 p^T), entry k g_k - p_k sum_i g_i: rows g, p_k = Prob(k) on axis.

    At t, the arg max of z, it is g_t (1 - p_t) - p_t sum_{i != t} g_i with 1 - p_t =
    -expm1(log p_t): exact for one-hot g, where g_t - p_t g_t would round 1 - p_t.
    """
    top, log_p, p = _softmax_parts(z, axis)
    g_others = jnp.sum(jnp.where(top, 0, g), axis=axis, keepdims=True)
    g_sum = g_others + jnp.sum(jnp.where(top, g, 0), axis=axis, keepdims=True)
    return jnp.where(top, g * -jnp.expm1(log_p) - p * g_others, g - p * g_sum)


POINT_ACTIVATIONS = {
    "sigmoid": (sigmoid, sigmoid_derivative),
    "tanh": (tanh, tanh_derivative),
    "relu": (relu, relu_derivative),
    "swish": (swish, swish_derivative),
    "identity": (identity, identity_derivative),
}
"""Name -> (f, f') for every point activation; swish takes beta as a keyword."""
