"""Tests of jaxnet.activations.

Hand-written derivatives, ReLU conventions, soft-max and its Jacobians.

References: jax.grad / jax.jacrev, jax.nn, scipy.special, central finite differences in float64,
and the numbers of the notes' worked exercise (004). Random inputs come from a numpy generator
seeded by the test's `key`, and the functions under test run under jax.jit (eager dispatch of many
small ops with fresh shapes is slow on CPU).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from jaxnet import activations as A

F64 = jnp.float64

# (id, f, f', keyword arguments)
POINT_CASES = [
    ("sigmoid", A.sigmoid, A.sigmoid_derivative, {}),
    ("tanh", A.tanh, A.tanh_derivative, {}),
    ("relu", A.relu, A.relu_derivative, {}),
    ("swish", A.swish, A.swish_derivative, {}),
    ("swish_beta_0.5", A.swish, A.swish_derivative, {"beta": 0.5}),
    ("swish_beta_2.5", A.swish, A.swish_derivative, {"beta": 2.5}),
    ("identity", A.identity, A.identity_derivative, {}),
]
POINT_IDS = [case[0] for case in POINT_CASES]


def rng_from(key):
    """A numpy generator seeded by the test's fresh JAX key."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)))


def random_shape(rng, max_rank=3, max_size=7):
    return tuple(int(d) for d in rng.integers(1, max_size + 1, size=rng.integers(1, max_rank + 1)))


def points_away_from_kink(rng, shape, scale=4.0, gap=1e-2):
    """Uniform points with gap <= |a| <= scale + gap: a finite-difference step never crosses 0."""
    u = rng.uniform(-scale, scale, size=shape)
    return np.where(u >= 0, 1.0, -1.0) * (gap + np.abs(u))


def elementwise_grad(f, a):
    """f' at every entry of a, by jax.vmap(jax.grad(f)) over the flattened array."""
    a = jnp.asarray(a)
    return np.asarray(jax.jit(jax.vmap(jax.grad(f)))(a.reshape(-1))).reshape(a.shape)


@functools.cache
def _jitted(f, kw_items):
    return jax.jit(lambda *xs: f(*xs, **dict(kw_items)))


def call(f, *args, **kw):
    """f(*args, **kw) under jax.jit (keyword arguments static, compilations cached), as numpy."""
    return np.asarray(_jitted(f, tuple(sorted(kw.items())))(*(jnp.asarray(x) for x in args)))


# ------------------------------------------------------------------------- point activations


def test_point_activation_table_is_complete():
    assert set(A.POINT_ACTIVATIONS) == {"sigmoid", "tanh", "relu", "swish", "identity"}
    for name, f, df, _ in POINT_CASES:
        assert A.POINT_ACTIVATIONS[name.split("_beta")[0]] == (f, df)


@pytest.mark.parametrize("name,f,df,kw", POINT_CASES, ids=POINT_IDS)
def test_derivative_equals_jax_grad(key, name, f, df, kw):
    rng = rng_from(key)
    a = points_away_from_kink(rng, random_shape(rng))
    expected = elementwise_grad(lambda x: f(x, **kw), a)
    got = call(df, a, **kw)
    assert got.shape == a.shape
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name,f,df,kw", POINT_CASES, ids=POINT_IDS)
def test_derivative_matches_central_finite_differences(key, name, f, df, kw):
    rng = rng_from(key)
    a = points_away_from_kink(rng, random_shape(rng))
    h = 1e-3
    g = jax.jit(lambda x: f(x, **kw))
    # five-point central differences, error O(h^4)
    fd = (
        np.asarray(g(a - 2 * h))
        - 8 * np.asarray(g(a - h))
        + 8 * np.asarray(g(a + h))
        - np.asarray(g(a + 2 * h))
    ) / (12 * h)
    # rel err < 1e-7; the tiny atol only matters where f' itself is ~0 (swish's minimum)
    np.testing.assert_allclose(call(df, a, **kw), fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name,f,df,kw", POINT_CASES, ids=POINT_IDS)
def test_point_activation_jacobian_is_diagonal(key, name, f, df, kw):
    rng = rng_from(key)
    a = points_away_from_kink(rng, (int(rng.integers(2, 9)),))
    J = np.asarray(jax.jit(jax.jacrev(lambda x: f(x, **kw)))(jnp.asarray(a)))
    np.testing.assert_allclose(J, np.diag(call(df, a, **kw)), rtol=1e-12, atol=1e-15)


def test_point_activation_values_match_references(key):
    a = rng_from(key).normal(size=(5, 6)) * 5
    np.testing.assert_allclose(call(A.sigmoid, a), scipy.special.expit(a), rtol=1e-14)
    np.testing.assert_allclose(call(A.tanh, a), np.tanh(a), rtol=1e-14)
    np.testing.assert_array_equal(call(A.relu, a), np.maximum(a, 0))
    np.testing.assert_allclose(call(A.swish, a), a * scipy.special.expit(a), rtol=1e-14)
    np.testing.assert_allclose(call(A.swish, a), call(jax.nn.silu, a), rtol=1e-14)
    np.testing.assert_allclose(
        call(A.swish, a, beta=1.7), a * scipy.special.expit(1.7 * a), rtol=1e-14
    )
    np.testing.assert_array_equal(call(A.identity, a), a)
    np.testing.assert_array_equal(call(A.identity_derivative, a), np.ones_like(a))


def test_swish_derivative_formula(key):
    """swish'(a) = sigma(beta a) + beta a sigma(beta a)(1 - sigma(beta a)), evaluated with scipy."""
    rng = rng_from(key)
    a = rng.normal(size=50) * 3
    beta = float(rng.uniform(0.1, 3.0))
    s = scipy.special.expit(beta * a)
    np.testing.assert_allclose(
        call(A.swish_derivative, a, beta=beta), s + beta * a * s * (1 - s), rtol=1e-12, atol=1e-15
    )


# ------------------------------------------------------------------------- saturation


SATURATED = np.array([-1e3, -40.0, -30.0, -20.0, 20.0, 30.0, 40.0, 1e3])


def test_sigmoid_saturated_values_finite_and_correct():
    s = call(A.sigmoid, SATURATED)
    assert np.all(np.isfinite(s))
    assert np.all((s >= 0) & (s <= 1))
    np.testing.assert_allclose(s, scipy.special.expit(SATURATED), rtol=1e-15, atol=0)
    # sigma(-|a|) = e^-|a| / (1 + e^-|a|): tiny but exact in float64 (0 at -1e3 by underflow)
    neg = SATURATED < 0
    e = np.exp(-np.abs(SATURATED[neg]))
    np.testing.assert_allclose(s[neg], e / (1 + e), rtol=1e-14, atol=0)


def test_sigmoid_derivative_saturated_matches_asymptote():
    """sigma'(a) = e^-|a| / (1 + e^-|a|)^2 ~ e^-|a|, the same on both sides (sigma' is even).

    Relative accuracy is the float64 standard; at a = +40 the exact value 4.25e-18 is representable.
    """
    d = call(A.sigmoid_derivative, SATURATED)
    assert np.all(np.isfinite(d))
    e = np.exp(-np.abs(SATURATED))
    exact = e / (1 + e) ** 2
    np.testing.assert_allclose(
        exact, e, rtol=3 * np.exp(-20.0), atol=0
    )  # the asymptote: relative gap ~ 2 e^-|a|
    # the same quantity through jax.nn.sigmoid, written without cancellation
    np.testing.assert_allclose(
        exact, call(lambda x: jax.nn.sigmoid(x) * jax.nn.sigmoid(-x), SATURATED), rtol=1e-14, atol=0
    )
    np.testing.assert_allclose(d, exact, rtol=1e-12, atol=0)
    np.testing.assert_allclose(d, call(A.sigmoid_derivative, -SATURATED), rtol=1e-12, atol=0)
    # +-1e3: the true derivative e^-1000 underflows to 0
    assert d[0] == 0.0 and d[-1] == 0.0


def test_grad_through_saturated_sigmoid_and_tanh_keeps_relative_precision():
    # jaxnet's sigmoid and tanh are custom_jvps using the derivatives above, so jax.grad is exact
    # on both sides.
    e = np.exp(-np.abs(SATURATED))
    np.testing.assert_allclose(
        elementwise_grad(A.sigmoid, SATURATED), e / (1 + e) ** 2, rtol=1e-12, atol=0
    )
    e2 = np.exp(-2 * np.abs(SATURATED))
    np.testing.assert_allclose(
        elementwise_grad(A.tanh, SATURATED), 4 * e2 / (1 + e2) ** 2, rtol=1e-12, atol=0
    )
    # JAX's own gradients cancel to exactly 0 at a = +40 (sigmoid) and |a| = 20 (tanh): the reason
    # for the custom_jvps.
    assert elementwise_grad(jax.nn.sigmoid, np.array([40.0]))[0] == 0.0
    assert elementwise_grad(jnp.tanh, np.array([20.0]))[0] == 0.0


def test_tanh_derivative_saturated_matches_asymptote():
    """tanh'(a) = 1 / cosh(a)^2 = 4 e^-2|a| / (1 + e^-2|a|)^2, even in a.

    Representable down to ~1e-308.
    """
    d = call(A.tanh_derivative, SATURATED)
    assert np.all(np.isfinite(d))
    e = np.exp(-2 * np.abs(SATURATED))
    np.testing.assert_allclose(d, 4 * e / (1 + e) ** 2, rtol=1e-12, atol=0)


def test_activations_finite_for_huge_inputs():
    a = np.array([-1e4, -1e3, 0.0, 1e3, 1e4])
    for name, f, df, kw in POINT_CASES:
        assert np.all(np.isfinite(call(f, a, **kw))), name
        assert np.all(np.isfinite(call(df, a, **kw))), name
        assert np.all(np.isfinite(elementwise_grad(lambda x: f(x, **kw), a))), name
    np.testing.assert_array_equal(call(A.sigmoid, a), [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(call(A.tanh, a), [-1.0, -1.0, 0.0, 1.0, 1.0])
    # swish -> a for a -> +inf, -> 0 for a -> -inf
    np.testing.assert_array_equal(call(A.swish, a), [0.0, 0.0, 0.0, 1e3, 1e4])
    np.testing.assert_array_equal(call(A.swish_derivative, a), [0.0, 0.0, 0.5, 1.0, 1.0])


# ------------------------------------------------------------------------- ReLU conventions


def test_relu_grad_at_zero_follows_the_notes():
    """The notes take dReLU/da = 1 for a >= 0; jax.nn.relu uses 0 at 0."""
    assert float(jax.grad(A.relu)(0.0)) == 1.0
    assert float(jax.grad(jax.nn.relu)(0.0)) == 0.0
    assert float(A.relu_derivative(jnp.asarray(0.0))) == 1.0
    assert float(A.relu_derivative(jnp.asarray(0.0), at_zero=0.0)) == 0.0
    assert float(jax.grad(A.relu)(-0.0)) == 1.0
    assert float(jax.grad(A.relu)(3.0)) == 1.0
    assert float(jax.grad(A.relu)(-3.0)) == 0.0


def test_relu_derivative_conventions_everywhere_including_zero(key):
    a = rng_from(key).normal(size=40)
    a[::4] = 0.0  # exact zeros among random points
    jax_convention = elementwise_grad(jax.nn.relu, a)
    notes_convention = elementwise_grad(A.relu, a)
    np.testing.assert_array_equal(call(A.relu_derivative, a, at_zero=0.0), jax_convention)
    np.testing.assert_array_equal(call(A.relu_derivative, a), notes_convention)
    np.testing.assert_array_equal(notes_convention, (a >= 0).astype(np.float64))
    np.testing.assert_array_equal(jax_convention, (a > 0).astype(np.float64))
    np.testing.assert_array_equal(call(A.relu, a), call(jax.nn.relu, a))
    assert call(A.relu_derivative, a).dtype == np.float64


def test_relu_grad_through_a_reduction_at_zero(key):
    """The custom_jvp must also hold under jax.grad of a sum (the back-propagation situation)."""
    x = rng_from(key).normal(size=6)
    x[[1, 4]] = 0.0
    g = jax.jit(jax.grad(lambda v: jnp.sum(3.0 * A.relu(v))))(jnp.asarray(x))
    np.testing.assert_array_equal(g, 3.0 * (x >= 0))


# ------------------------------------------------------------------------- soft-max


def random_logits(rng, scale=3.0):
    return rng.normal(size=(int(rng.integers(1, 6)), int(rng.integers(1, 10)))) * scale


def test_softmax_and_log_softmax_equal_references(key):
    z = random_logits(rng_from(key))
    p, lp = call(A.softmax, z), call(A.log_softmax, z)
    np.testing.assert_allclose(p, call(jax.nn.softmax, z), rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(lp, call(jax.nn.log_softmax, z), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(p, scipy.special.softmax(z, axis=-1), rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(lp, scipy.special.log_softmax(z, axis=-1), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np.sum(p, axis=-1), 1.0, rtol=1e-14)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_axis_argument(key, axis):
    z = rng_from(key).normal(size=(4, 5, 3)) * 2
    np.testing.assert_allclose(
        call(A.softmax, z, axis=axis), scipy.special.softmax(z, axis=axis), rtol=1e-13, atol=1e-16
    )
    np.testing.assert_allclose(
        call(A.log_softmax, z, axis=axis),
        scipy.special.log_softmax(z, axis=axis),
        rtol=1e-13,
        atol=1e-14,
    )


def test_softmax_ties_give_uniform(key):
    rng = rng_from(key)
    k = int(rng.integers(2, 12))
    z = np.full((3, k), rng.normal() * 1e3)
    np.testing.assert_allclose(call(A.softmax, z), np.full((3, k), 1.0 / k), rtol=1e-14)
    np.testing.assert_allclose(call(A.log_softmax, z), np.full((3, k), -np.log(k)), rtol=1e-14)


def test_softmax_is_shift_invariant(key):
    rng = rng_from(key)
    z = random_logits(rng)
    shift = 1e3 * rng.normal()
    np.testing.assert_allclose(
        call(A.softmax, z + shift), scipy.special.softmax(z, axis=-1), rtol=1e-9, atol=1e-15
    )


def test_softmax_huge_logits_finite(key):
    z = rng_from(key).uniform(-1e4, 1e4, size=(6, 5))
    z[:, 0], z[:, 1] = 1e4, -1e4
    p, lp = call(A.softmax, z), call(A.log_softmax, z)
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(lp))
    np.testing.assert_allclose(np.sum(p, axis=-1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(
        lp, z - scipy.special.logsumexp(z, axis=-1, keepdims=True), rtol=1e-13, atol=1e-12
    )
    np.testing.assert_allclose(p, scipy.special.softmax(z, axis=-1), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(p, call(jax.nn.softmax, z), rtol=1e-12, atol=1e-300)
    # exact values of a hand-made row
    row = np.array([[1e4, -1e4, 0.0]])
    np.testing.assert_array_equal(call(A.log_softmax, row), [[0.0, -2e4, -1e4]])
    np.testing.assert_array_equal(call(A.softmax, row), [[1.0, 0.0, 0.0]])
    # gradients through huge logits are finite too
    assert np.all(np.isfinite(call(jax.jacrev(A.softmax), z[0])))
    assert np.all(np.isfinite(call(jax.jacrev(A.log_softmax), z[0])))


def test_softmax_jacobian(key):
    z = random_logits(rng_from(key))[0]
    p = scipy.special.softmax(z)
    J = call(A.softmax_jacobian, z)
    np.testing.assert_allclose(J, np.diag(p) - np.outer(p, p), rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(J, call(jax.jacrev(A.softmax), z), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(J, call(jax.jacrev(jax.nn.softmax), z), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.sum(J, axis=0), 0.0, atol=1e-15)  # p stays on the simplex


def test_log_softmax_jacobian(key):
    z = random_logits(rng_from(key))[0]
    p = scipy.special.softmax(z)
    J = call(A.log_softmax_jacobian, z)
    # d log Prob(i) / dz_k = delta_ik - Prob(k)
    np.testing.assert_allclose(J, np.eye(z.shape[0]) - p[None, :], rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(J, call(jax.jacrev(A.log_softmax), z), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(J, call(jax.jacrev(jax.nn.log_softmax), z), rtol=1e-12, atol=1e-15)


def test_log_softmax_jacobian_finite_differences(key):
    z = random_logits(rng_from(key))[0]
    h = 1e-3
    E = np.eye(z.shape[0]) * h
    f = jax.jit(jax.vmap(A.log_softmax))
    v = {m: np.asarray(f(jnp.asarray(z[None, :] + m * E))) for m in (-2, -1, 1, 2)}
    fd = (
        (v[-2] - 8 * v[-1] + 8 * v[1] - v[2]) / (12 * h)
    ).T  # five-point central differences, column k = d/dz_k
    np.testing.assert_allclose(call(A.log_softmax_jacobian, z), fd, rtol=1e-7, atol=1e-9)


def test_jacobians_exact_for_huge_logits():
    z = np.array([1e4, -1e4, 0.0, 1e4])
    p = np.array([0.5, 0.0, 0.0, 0.5])
    np.testing.assert_array_equal(call(A.softmax_jacobian, z), np.diag(p) - np.outer(p, p))
    np.testing.assert_array_equal(call(A.log_softmax_jacobian, z), np.eye(4) - p[None, :])
    np.testing.assert_allclose(
        call(jax.jacrev(A.softmax), z), np.diag(p) - np.outer(p, p), atol=1e-300
    )
    np.testing.assert_allclose(
        call(jax.jacrev(A.log_softmax), z), np.eye(4) - p[None, :], atol=1e-300
    )


def test_notes_worked_exercise():
    """Notes 004: z = (1, 2, 3), correct class 2 (index 1 zero-based)."""
    z = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(np.round(call(A.softmax, z), 2), [0.09, 0.24, 0.67])
    np.testing.assert_allclose(
        np.sum(np.exp([1.0, 2.0, 3.0])), 30.193, atol=5e-4
    )  # the explanation's sum
    grad = call(jax.grad(lambda v: A.log_softmax(v)[1]), z)
    np.testing.assert_array_equal(np.round(grad, 2), [-0.09, 0.76, -0.67])
    np.testing.assert_array_equal(
        np.round(call(A.log_softmax_jacobian, z)[1], 2), [-0.09, 0.76, -0.67]
    )
    # "the correct class (2) is pushed up, while the incorrect class with the highest activation
    # (3) is pushed down the most"
    assert int(np.argmax(grad)) == 1 and int(np.argmin(grad)) == 2
