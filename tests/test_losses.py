"""Tests of jaxnet.losses.

Per-sample losses and their derivatives, information measures, error rates, weight decay, the
risk, out-of-range class indices, argument checking, and the notes' 80/20 example (004,
question 3).

References: jax.grad, central finite differences in float64, optax.losses, scipy.special /
scipy.stats, numpy, and the notes' analytic results. Random inputs come from a numpy generator
seeded by the test's `key`; the code under test runs under jax.jit to keep the suite fast on CPU.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
import scipy.stats

from jaxnet import losses as L
from jaxnet.activations import softmax

LN2 = math.log(2.0)


def rng_from(key):
    """A numpy generator seeded by the test's fresh JAX key."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)))


@functools.cache
def _jitted(f, kw_items):
    return jax.jit(lambda *xs: f(*xs, **dict(kw_items)))


def call(f, *args, **kw):
    """f(*args, **kw) under jax.jit (keyword arguments static, compilations cached), as numpy."""
    return np.asarray(_jitted(f, tuple(sorted(kw.items())))(*(jnp.asarray(x) for x in args)))


def grad_of_sum(f, x, t, **kw):
    """jax.grad of sum_n l_n with respect to the prediction."""
    return np.asarray(
        jax.jit(jax.grad(lambda p, y: jnp.sum(f(p, y, **kw))))(jnp.asarray(x), jnp.asarray(t))
    )


def finite_differences(f, x, t, steps, **kw):
    """Five-point central differences of the per-sample loss (error O(h^4)).

    One coordinate of every sample at a time: each l_n depends only on row n, so perturbing
    coordinate j of all rows at once gives d l_n / d x_nj.
    `steps` has x's shape: a step per entry (smaller next to the singularities of log p).
    """
    x = np.asarray(x, dtype=np.float64)
    flat, hs = x.reshape(x.shape[0], -1), np.asarray(steps).reshape(x.shape[0], -1)
    loss = jax.jit(lambda p, y: f(p, y, **kw))
    out = np.empty_like(flat)
    for j in range(flat.shape[1]):
        values = {}
        for m in (-2, -1, 1, 2):
            shifted = flat.copy()
            shifted[:, j] += m * hs[:, j]
            values[m] = np.asarray(loss(jnp.asarray(shifted.reshape(x.shape)), jnp.asarray(t)))
        out[:, j] = (values[-2] - 8 * values[-1] + 8 * values[1] - values[2]) / (12 * hs[:, j])
    return out.reshape(x.shape)


def dirichlet(rng, n, k, alpha=1.0):
    return rng.dirichlet(np.full(k, alpha), size=n)


def one_hot(labels, k):
    return np.eye(k)[labels]


def make_case(rng, name, kind):
    """(prediction, target) for loss `name` with targets of `kind`, random sizes."""
    n = int(rng.integers(2, 9))
    k = int(rng.integers(2, 7))
    if name == "quadratic":
        shape = {"vector": (n,), "matrix": (n, k), "image": (n, 3, 4, 2)}[kind]
        return rng.normal(size=shape), rng.normal(size=shape)
    if name.startswith("binary_cross_entropy"):
        shape = (n, k) if kind == "multi" else (n,)
        if name.endswith("from_logits"):
            pred = rng.normal(size=shape) * 3
        else:
            pred = rng.uniform(0.03, 0.97, size=shape)
        target = (
            rng.uniform(0, 1, size=shape)
            if kind == "soft"
            else rng.integers(0, 2, size=shape).astype(np.float64)
        )
        return pred, target
    # multi-class
    logits = rng.normal(size=(n, k)) * (1.0 if name == "cross_entropy" else 3.0)
    pred = scipy.special.softmax(logits, axis=-1) if name == "cross_entropy" else logits
    labels = rng.integers(0, k, size=n)
    target = {"int": labels, "onehot": one_hot(labels, k), "soft": dirichlet(rng, n, k)}[kind]
    return pred, target


DERIVATIVE_CASES = [
    ("quadratic", "vector", {}),
    ("quadratic", "matrix", {"scale": 1.0}),
    ("quadratic", "image", {"scale": 0.5}),
    ("quadratic", "matrix", {"scale": 2.7}),
    ("binary_cross_entropy", "binary", {}),
    ("binary_cross_entropy", "soft", {"unit": "bits"}),
    ("binary_cross_entropy", "multi", {}),
    ("binary_cross_entropy_from_logits", "binary", {}),
    ("binary_cross_entropy_from_logits", "soft", {"unit": "bits"}),
    ("binary_cross_entropy_from_logits", "multi", {}),
    ("cross_entropy", "int", {}),
    ("cross_entropy", "onehot", {"unit": "bits"}),
    ("cross_entropy", "soft", {}),
    ("cross_entropy_from_logits", "int", {}),
    ("cross_entropy_from_logits", "onehot", {}),
    ("cross_entropy_from_logits", "soft", {"unit": "bits"}),
]
DERIVATIVE_IDS = [
    f"{n}-{k}-{'-'.join(f'{a}={b}' for a, b in kw.items()) or 'default'}"
    for n, k, kw in DERIVATIVE_CASES
]


def test_every_loss_has_a_derivative_case():
    assert {name for name, _, _ in DERIVATIVE_CASES} == set(L.LOSSES)
    for name, loss in L.LOSSES.items():
        assert loss.name == name
        assert loss.value is getattr(L, name)
        assert loss.derivative is getattr(L, name + "_derivative")


@pytest.mark.parametrize("name,kind,kw", DERIVATIVE_CASES, ids=DERIVATIVE_IDS)
def test_derivative_equals_jax_grad_of_summed_loss(key, name, kind, kw):
    x, t = make_case(rng_from(key), name, kind)
    loss = L.LOSSES[name]
    values = call(loss.value, x, t, **kw)
    assert values.shape == (x.shape[0],)
    d = call(loss.derivative, x, t, **kw)
    assert d.shape == x.shape
    np.testing.assert_allclose(d, grad_of_sum(loss.value, x, t, **kw), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kind,kw", DERIVATIVE_CASES, ids=DERIVATIVE_IDS)
def test_derivative_matches_finite_differences(key, name, kind, kw):
    x, t = make_case(rng_from(key), name, kind)
    loss = L.LOSSES[name]
    on_probabilities = name in ("binary_cross_entropy", "cross_entropy")
    steps = 1e-3 * (np.minimum(x, 1 - x) if on_probabilities else np.ones_like(x))
    fd = finite_differences(loss.value, x, t, steps, **kw)
    np.testing.assert_allclose(call(loss.derivative, x, t, **kw), fd, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------- values against references


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_quadratic_against_numpy(key, scale):
    rng = rng_from(key)
    for shape in [(7,), (5, 3), (4, 2, 3, 2)]:
        x, t = rng.normal(size=shape), rng.normal(size=shape)
        expected = scale * np.sum(((x - t) ** 2).reshape(shape[0], -1), axis=1)
        np.testing.assert_allclose(call(L.quadratic, x, t, scale=scale), expected, rtol=1e-14)
        np.testing.assert_allclose(
            call(L.quadratic_derivative, x, t, scale=scale), 2 * scale * (x - t), rtol=1e-14
        )
    # default scale is the slides' 1/2
    np.testing.assert_allclose(
        call(L.quadratic, x, t),
        0.5 * np.sum(((x - t) ** 2).reshape(shape[0], -1), axis=1),
        rtol=1e-14,
    )


def test_binary_cross_entropy_against_numpy(key):
    rng = rng_from(key)
    p, y = rng.uniform(0.01, 0.99, size=20), rng.uniform(0, 1, size=20)
    expected = -y * np.log(p) - (1 - y) * np.log(1 - p)
    np.testing.assert_allclose(call(L.binary_cross_entropy, p, y), expected, rtol=1e-13)
    np.testing.assert_allclose(
        call(L.binary_cross_entropy, p, y, unit="bits"), expected / LN2, rtol=1e-13
    )


def test_integer_and_one_hot_labels_agree(key):
    rng = rng_from(key)
    n, k = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    z = rng.normal(size=(n, k)) * 3
    p = scipy.special.softmax(z, axis=-1)
    y = rng.integers(0, k, size=n)
    q = one_hot(y, k)
    for f, x in [(L.cross_entropy, p), (L.cross_entropy_from_logits, z)]:
        np.testing.assert_allclose(call(f, x, y), call(f, x, q), rtol=1e-14, atol=0)
    for f, x in [(L.cross_entropy_derivative, p), (L.cross_entropy_from_logits_derivative, z)]:
        np.testing.assert_allclose(call(f, x, y), call(f, x, q), rtol=1e-14, atol=0)
    np.testing.assert_array_equal(call(L.zero_one_loss, z, y), call(L.zero_one_loss, z, q))
    # -log p_y
    np.testing.assert_allclose(call(L.cross_entropy, p, y), -np.log(p[np.arange(n), y]), rtol=1e-13)


def test_cross_entropy_from_logits_against_optax(key):
    rng = rng_from(key)
    n, k = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    z = rng.normal(size=(n, k)) * 4
    y = rng.integers(0, k, size=n)
    q = dirichlet(rng, n, k)
    got = call(L.cross_entropy_from_logits, z, y)
    # atol: losses near 0 come from log-sum-exp minus z_y, a difference of numbers ~|z|
    np.testing.assert_allclose(
        got,
        call(optax.losses.softmax_cross_entropy_with_integer_labels, z, y),
        rtol=1e-12,
        atol=1e-14,
    )
    np.testing.assert_allclose(
        got, call(L.cross_entropy, scipy.special.softmax(z, axis=-1), y), rtol=1e-10, atol=1e-13
    )
    np.testing.assert_allclose(
        got, call(lambda a, b: L.cross_entropy(softmax(a), b), z, y), rtol=1e-10, atol=1e-13
    )
    np.testing.assert_allclose(
        call(L.cross_entropy_from_logits, z, q),
        call(optax.losses.softmax_cross_entropy, z, q),
        rtol=1e-12,
        atol=1e-14,
    )
    np.testing.assert_allclose(
        call(L.cross_entropy_from_logits, z, y, unit="bits"), got / LN2, rtol=1e-14
    )


def test_cross_entropy_from_logits_huge_logits(key):
    rng = rng_from(key)
    n, k = 8, 5
    z = rng.normal(size=(n, k)) * 3
    z[:, 0], z[:, 1] = 1e4, -1e4
    z[::3, 2] = -1e4
    y = rng.integers(0, k, size=n)
    y[:3] = [0, 1, 2]  # the winning class, a losing class at -1e4 and another one
    loss = call(L.cross_entropy_from_logits, z, y)
    assert np.all(np.isfinite(loss))
    expected = scipy.special.logsumexp(z, axis=-1) - z[np.arange(n), y]
    np.testing.assert_allclose(loss, expected, rtol=1e-13, atol=1e-12)
    assert loss[0] == 0.0 and loss[1] == 2e4
    q = one_hot(y, k)
    p = call(jax.nn.softmax, z)
    np.testing.assert_allclose(p, scipy.special.softmax(z, axis=-1), rtol=1e-12, atol=1e-300)
    g = grad_of_sum(L.cross_entropy_from_logits, z, y)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, p - q, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        call(L.cross_entropy_from_logits_derivative, z, y), p - q, rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(
        loss,
        call(optax.losses.softmax_cross_entropy_with_integer_labels, z, y),
        rtol=1e-13,
        atol=1e-12,
    )


def test_binary_cross_entropy_from_logits_against_optax(key):
    rng = rng_from(key)
    z = np.clip(
        rng.normal(size=(6, 4)) * 4, -12, 12
    )  # moderate logits: 1 - sigma(z) keeps ~5 digits at worst
    y = rng.uniform(0, 1, size=(6, 4))
    got = call(L.binary_cross_entropy_from_logits, z, y)
    ref = call(optax.losses.sigmoid_binary_cross_entropy, z, y)
    np.testing.assert_allclose(got, ref.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        got, call(L.binary_cross_entropy, scipy.special.expit(z), y), rtol=1e-9
    )
    zv, yv = z[:, 0], (y[:, 0] > 0.5).astype(np.float64)
    np.testing.assert_allclose(
        call(L.binary_cross_entropy_from_logits, zv, yv),
        call(optax.losses.sigmoid_binary_cross_entropy, zv, yv),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        call(L.binary_cross_entropy_from_logits_derivative, z, y),
        scipy.special.expit(z) - y,
        rtol=1e-12,
        atol=1e-15,
    )


def test_binary_cross_entropy_from_logits_huge():
    z = np.array([1e4, 1e4, -1e4, -1e4, 0.0])
    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    loss = call(L.binary_cross_entropy_from_logits, z, y)
    assert np.all(np.isfinite(loss))
    # log(1 + e^z) - y z
    np.testing.assert_allclose(loss, [1e4, 0.0, 1e4, 0.0, LN2], rtol=1e-15, atol=0)
    np.testing.assert_allclose(
        call(L.binary_cross_entropy_from_logits, z, y, unit="bits"),
        [1e4 / LN2, 0, 1e4 / LN2, 0, 1],
        rtol=1e-15,
    )
    # gradient sigma(z) - y: 1 at z = 1e4, y = 0; -1 at z = -1e4, y = 1
    expected_grad = [1.0, 0.0, -1.0, 0.0, -0.5]
    np.testing.assert_array_equal(
        grad_of_sum(L.binary_cross_entropy_from_logits, z, y), expected_grad
    )
    np.testing.assert_array_equal(
        call(L.binary_cross_entropy_from_logits_derivative, z, y), expected_grad
    )
    np.testing.assert_allclose(
        loss, call(optax.losses.sigmoid_binary_cross_entropy, z, y), rtol=1e-15
    )


def test_two_class_cross_entropy_is_one_bit_at_one_half():
    p = np.array([0.5, 0.5])
    for y in ([1.0, 0.0], [0.0, 1.0]):
        np.testing.assert_allclose(
            call(L.binary_cross_entropy, p, np.array(y), unit="bits"), [1.0, 1.0], rtol=1e-15
        )
    np.testing.assert_allclose(
        call(L.binary_cross_entropy, p, np.array([1.0, 0.0])), [LN2, LN2], rtol=1e-15
    )
    np.testing.assert_allclose(
        call(L.cross_entropy, np.array([[0.5, 0.5]]), np.array([1]), unit="bits"), [1.0], rtol=1e-15
    )
    np.testing.assert_allclose(
        call(L.binary_cross_entropy_from_logits, np.zeros(2), np.array([1.0, 0.0]), unit="bits"),
        [1.0, 1.0],
        rtol=1e-15,
    )


def test_two_class_symmetry(key):
    """l(1, p) = l(0, 1 - p) = -log p."""
    p = rng_from(key).uniform(1e-3, 1 - 1e-3, size=30)
    ones, zeros = np.ones_like(p), np.zeros_like(p)
    l1 = call(L.binary_cross_entropy, p, ones)
    l0 = call(L.binary_cross_entropy, 1 - p, zeros)
    np.testing.assert_allclose(l1, l0, rtol=1e-12)
    np.testing.assert_allclose(l1, -np.log(p), rtol=1e-14)


def test_binary_cross_entropy_at_certain_predictions():
    """p in {0, 1} with the matching label: loss 0 (0 log 0 = 0), finite gradient."""
    p = np.array([0.0, 1.0])
    y = np.array([0.0, 1.0])
    np.testing.assert_array_equal(call(L.binary_cross_entropy, p, y), [0.0, 0.0])
    # d/dp [-(1 - y) log(1 - p)] = 1 at p = 0, y = 0; d/dp [-y log p] = -1 at p = y = 1
    np.testing.assert_array_equal(grad_of_sum(L.binary_cross_entropy, p, y), [1.0, -1.0])
    np.testing.assert_array_equal(call(L.binary_cross_entropy_derivative, p, y), [1.0, -1.0])


def test_cross_entropy_gradient_finite_where_q_is_zero():
    p = np.array([[0.0, 0.3, 0.7], [0.2, 0.0, 0.8]])
    q = np.array([[0.0, 0.0, 1.0], [0.25, 0.0, 0.75]])
    loss = call(L.cross_entropy, p, q)
    np.testing.assert_allclose(
        loss, [-np.log(0.7), -0.25 * np.log(0.2) - 0.75 * np.log(0.8)], rtol=1e-14
    )
    g = grad_of_sum(L.cross_entropy, p, q)
    expected = -np.divide(q, p, out=np.zeros_like(q), where=q != 0)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, expected, rtol=1e-14)
    np.testing.assert_allclose(call(L.cross_entropy_derivative, p, q), expected, rtol=1e-14)


# ------------------------------------------------------------------------- information measures


def test_cross_entropy_at_least_entropy(key):
    rng = rng_from(key)
    n, k = int(rng.integers(2, 10)), int(rng.integers(2, 9))
    q, p = dirichlet(rng, n, k), dirichlet(rng, n, k)
    H = call(L.entropy, q)
    Hqp = call(L.cross_entropy_between, p, q)
    assert np.all(Hqp > H)  # p != q almost surely: Gibbs' inequality is strict
    np.testing.assert_allclose(Hqp, -np.sum(q * np.log2(p), axis=-1), rtol=1e-13)
    np.testing.assert_allclose(call(L.cross_entropy_between, q, q), H, rtol=1e-14)
    np.testing.assert_allclose(call(L.kl_divergence, q, q), 0.0, atol=1e-14)
    np.testing.assert_allclose(
        call(L.cross_entropy_between, p, q, unit="nats"), Hqp * LN2, rtol=1e-14
    )


def test_entropy_with_zeros(key):
    rng = rng_from(key)
    n, k = int(rng.integers(2, 10)), int(rng.integers(3, 9))
    q = dirichlet(rng, n, k)
    q[rng.uniform(size=(n, k)) < 0.4] = 0.0
    q[:, 0] += 1e-3  # no all-zero row
    q /= q.sum(axis=-1, keepdims=True)
    H = call(L.entropy, q)
    assert np.all(np.isfinite(H))
    np.testing.assert_allclose(H, scipy.stats.entropy(q, base=2, axis=-1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        call(L.entropy, q, unit="nats"), scipy.stats.entropy(q, axis=-1), rtol=1e-12, atol=1e-15
    )
    # a certain outcome has no entropy; the uniform distribution has log2 k bits
    np.testing.assert_array_equal(call(L.entropy, one_hot(np.arange(k), k)), np.zeros(k))
    np.testing.assert_allclose(call(L.entropy, np.full(k, 1.0 / k)), math.log2(k), rtol=1e-14)
    # entropy over another axis
    np.testing.assert_allclose(call(L.entropy, q.T, axis=0), H, rtol=1e-14)
    # gradients stay finite where q = 0 and p > 0 for the cross-entropy between them
    p = dirichlet(rng, n, k)
    g = np.asarray(
        jax.jit(jax.grad(lambda a, b: jnp.sum(L.cross_entropy_between(a, b))))(
            jnp.asarray(p), jnp.asarray(q)
        )
    )
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, -q / p / LN2, rtol=1e-12)


def test_kl_divergence_against_scipy(key):
    rng = rng_from(key)
    n, k = int(rng.integers(2, 10)), int(rng.integers(2, 9))
    q, p = dirichlet(rng, n, k), dirichlet(rng, n, k)
    q[0, 0] = 0.0  # 0 log 0 = 0
    q[0] /= q[0].sum()
    expected = scipy.special.rel_entr(q, p).sum(axis=-1) / LN2
    np.testing.assert_allclose(call(L.kl_divergence, p, q), expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(
        call(L.kl_divergence, p, q, unit="nats"), expected * LN2, rtol=1e-10, atol=1e-13
    )
    np.testing.assert_allclose(
        call(L.kl_divergence, p, q),
        scipy.stats.entropy(q, p, base=2, axis=-1),
        rtol=1e-10,
        atol=1e-13,
    )
    assert np.all(call(L.kl_divergence, p, q) > 0)


def test_binary_entropy(key):
    np.testing.assert_array_equal(call(L.binary_entropy, np.array([0.0, 1.0])), [0.0, 0.0])
    np.testing.assert_allclose(call(L.binary_entropy, np.array([0.5])), [1.0], rtol=1e-15)
    np.testing.assert_allclose(
        call(L.binary_entropy, np.array([0.5]), unit="nats"), [LN2], rtol=1e-15
    )
    q = rng_from(key).uniform(0, 1, size=25)
    H = call(L.binary_entropy, q)
    np.testing.assert_allclose(H, call(L.binary_entropy, 1 - q), rtol=1e-12)
    np.testing.assert_allclose(
        H, scipy.stats.entropy(np.stack([q, 1 - q]), base=2, axis=0), rtol=1e-12
    )
    assert np.all((H > 0) & (H <= 1))


# ------------------------------------------------------------------------- multi-output BCE


def test_multi_output_binary_cross_entropy(key):
    rng = rng_from(key)
    n, e = int(rng.integers(2, 9)), int(rng.integers(1, 6))
    a = rng.uniform(0.02, 0.98, size=(n, e))
    y = rng.integers(0, 2, size=(n, e)).astype(np.float64)
    got = call(L.multi_output_binary_cross_entropy, a, y)
    expected = -np.sum(y * np.log(a) + (1 - y) * np.log(1 - a), axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-13)
    per_output = sum(call(L.binary_cross_entropy, a[:, j], y[:, j]) for j in range(e))
    np.testing.assert_allclose(got, per_output, rtol=1e-13)
    np.testing.assert_allclose(
        call(L.multi_output_binary_cross_entropy, a, y, unit="bits"), expected / LN2, rtol=1e-13
    )


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4)])
def test_multi_output_binary_cross_entropy_rejects_other_ranks(shape):
    a = jnp.full(shape, 0.5)
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        L.multi_output_binary_cross_entropy(a, a)


# ------------------------------------------------------------------------- zero-one and top-k


def test_zero_one_loss_and_error_rate_with_ties(key):
    rng = rng_from(key)
    n, k = 40, int(rng.integers(2, 6))
    scores = rng.integers(0, 3, size=(n, k)).astype(np.float64)  # many ties
    y = rng.integers(0, k, size=n)
    expected = (np.argmax(scores, axis=-1) != y).astype(np.float64)  # numpy: first maximal class
    np.testing.assert_array_equal(call(L.zero_one_loss, scores, y), expected)
    np.testing.assert_array_equal(call(L.zero_one_loss, scores, one_hot(y, k)), expected)
    np.testing.assert_allclose(call(L.error_rate, scores, y), expected.mean(), rtol=1e-15)
    tie = np.array([[1.0, 3.0, 3.0, 0.0]] * 3)
    np.testing.assert_array_equal(call(L.zero_one_loss, tie, np.array([1, 2, 0])), [0.0, 1.0, 1.0])


def top_k_reference(scores, labels, k):
    """Label in the top k iff its score is at least the k-th largest score (with multiplicity)."""
    kth = -np.sort(-scores, axis=-1)[:, k - 1]
    return np.mean(scores[np.arange(len(labels)), labels] < kth)


def test_top_k_error_against_numpy(key):
    rng = rng_from(key)
    n, c = 50, int(rng.integers(2, 9))
    y = rng.integers(0, c, size=n)
    for scores in (rng.normal(size=(n, c)), rng.integers(0, 3, size=(n, c)).astype(np.float64)):
        for k in range(1, c + 1):
            np.testing.assert_allclose(
                call(L.top_k_error, scores, y, k=k), top_k_reference(scores, y, k), rtol=1e-15
            )
            np.testing.assert_allclose(
                call(L.top_k_error, scores, one_hot(y, c), k=k),
                top_k_reference(scores, y, k),
                rtol=1e-15,
            )
        assert call(L.top_k_error, scores, y, k=c) == 0.0
    # with continuous scores (no ties) top-1 error is the error rate
    np.testing.assert_allclose(
        call(L.top_k_error, scores := rng.normal(size=(n, c)), y, k=1),
        call(L.error_rate, scores, y),
        rtol=1e-15,
    )


def test_top_k_error_ties_count_for_the_label():
    scores = np.array([[5.0, 2.0, 2.0, 2.0, 1.0]])
    # label 3 ties with classes 1 and 2: only one class (0) scores strictly higher, so it is in the
    # top 2
    assert call(L.top_k_error, scores, np.array([3]), k=2) == 0.0
    assert call(L.top_k_error, scores, np.array([3]), k=1) == 1.0
    assert call(L.top_k_error, scores, np.array([4]), k=4) == 1.0
    assert call(L.top_k_error, scores, np.array([4]), k=5) == 0.0


@pytest.mark.parametrize("k", [0, 6])
def test_top_k_error_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k="):
        L.top_k_error(jnp.zeros((2, 5)), jnp.array([0, 1]), k=k)


# ------------------------------------------------------------------------- weight decay


def random_params(rng):
    return (
        {
            "W": rng.normal(size=tuple(rng.integers(1, 6, size=2))),
            "b": rng.normal(size=(int(rng.integers(1, 6)),)),
        },
        (),
        {
            "W": rng.normal(size=tuple(rng.integers(1, 4, size=4))),
            "b": rng.normal(size=(int(rng.integers(1, 6)),)),
        },
    )


def test_l2_penalty(key):
    rng = rng_from(key)
    params = random_params(rng)
    lam = float(rng.uniform(1e-4, 1.0))
    mask = ({"W": True, "b": False}, (), {"W": True, "b": False})
    jparams = jax.tree_util.tree_map(jnp.asarray, params)
    all_sq = sum(np.sum(p[name] ** 2) for p in (params[0], params[2]) for name in ("W", "b"))
    w_sq = np.sum(params[0]["W"] ** 2) + np.sum(params[2]["W"] ** 2)
    np.testing.assert_allclose(L.l2_penalty(jparams, lam), lam / 2 * all_sq, rtol=1e-13)
    np.testing.assert_allclose(L.l2_penalty(jparams, lam, mask), lam / 2 * w_sq, rtol=1e-13)
    # derivatives: lam w, 0 for masked-out leaves, and jax.grad of the penalty
    for m in (None, mask):
        d = L.l2_penalty_derivative(jparams, lam, m)
        g = jax.jit(jax.grad(lambda p: L.l2_penalty(p, lam, m)))(jparams)
        assert jax.tree_util.tree_structure(d) == jax.tree_util.tree_structure(jparams)
        for dl, gl in zip(jax.tree_util.tree_leaves(d), jax.tree_util.tree_leaves(g)):
            np.testing.assert_allclose(dl, gl, rtol=1e-14, atol=0)
    d = L.l2_penalty_derivative(jparams, lam, mask)
    for i in (0, 2):
        np.testing.assert_allclose(d[i]["W"], lam * params[i]["W"], rtol=1e-14)
        np.testing.assert_array_equal(d[i]["b"], np.zeros_like(params[i]["b"]))


def test_l2_penalty_mask_must_match():
    params = {"W": jnp.ones((2, 2)), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match="mask"):
        L.l2_penalty(params, 0.1, {"W": True})


# ------------------------------------------------------------------------- risk


def test_risk_is_the_batch_mean(key):
    rng = rng_from(key)
    x, t = rng.normal(size=(9, 3)), rng.normal(size=(9, 3))
    expected = np.mean(0.5 * np.sum((x - t) ** 2, axis=1))
    np.testing.assert_allclose(
        call(lambda a, b: L.risk(L.quadratic, a, b), x, t), expected, rtol=1e-14
    )
    np.testing.assert_allclose(
        call(lambda a, b: L.risk(L.QUADRATIC, a, b), x, t), expected, rtol=1e-14
    )
    z = rng.normal(size=(9, 4))
    y = rng.integers(0, 4, size=9)
    np.testing.assert_allclose(
        call(lambda a, b: L.risk(L.CROSS_ENTROPY_FROM_LOGITS, a, b), z, y),
        np.mean(scipy.special.logsumexp(z, axis=-1) - z[np.arange(9), y]),
        rtol=1e-13,
    )


# ---------------------------------------------------------------------- out-of-range class indices


def bad_label_case(rng):
    """Logits (n, k), labels with k at one random index and -1 at another, and the bad indices."""
    n, k = int(rng.integers(4, 10)), int(rng.integers(2, 7))
    z = rng.normal(size=(n, k)) * 3
    y = rng.integers(0, k, size=n)
    high, low = rng.choice(n, 2, replace=False)
    y[high], y[low] = k, -1
    bad = np.zeros(n, bool)
    bad[[high, low]] = True
    return z, y, bad


CLASS_INDEX_LOSSES = [
    (L.cross_entropy, True),
    (L.cross_entropy_from_logits, False),
    (L.cross_entropy_derivative, True),
    (L.cross_entropy_from_logits_derivative, False),
    (L.zero_one_loss, False),
]


@pytest.mark.parametrize("f,on_probs", CLASS_INDEX_LOSSES, ids=lambda v: getattr(v, "__name__", ""))
def test_out_of_range_labels_give_nan_for_that_sample_only(key, f, on_probs):
    z, y, bad = bad_label_case(rng_from(key))
    x = scipy.special.softmax(z, axis=-1) if on_probs else z
    good_y = np.where(bad, 0, y)
    for got in (np.asarray(f(jnp.asarray(x), jnp.asarray(y))), call(f, x, y)):  # eager, jit
        assert got.shape[0] == len(y)
        per_sample = got.reshape(len(y), -1)
        assert np.isnan(per_sample[bad]).all(), got
        expected = call(f, x, good_y).reshape(len(y), -1)[~bad]
        np.testing.assert_allclose(per_sample[~bad], expected, rtol=1e-13, atol=1e-15)
        assert np.isfinite(per_sample[~bad]).all()


def test_out_of_range_labels_keep_the_gradients_of_the_other_samples_finite(key):
    z, y, bad = bad_label_case(rng_from(key))
    for f, x in [
        (L.cross_entropy_from_logits, z),
        (L.cross_entropy, scipy.special.softmax(z, axis=-1)),
    ]:
        loss = call(f, x, y)
        assert np.isnan(loss[bad]).all() and np.isfinite(loss[~bad]).all()
        g = grad_of_sum(f, x, y)
        assert np.isfinite(g[~bad]).all() and np.isnan(g[bad]).all()
        expected = grad_of_sum(f, x, np.where(bad, 0, y))[~bad]
        np.testing.assert_allclose(g[~bad], expected, rtol=1e-13, atol=1e-15)
        risk = jax.jit(lambda x, y, f=f: L.risk(f, x, y))(jnp.asarray(x), jnp.asarray(y))
        assert np.isnan(risk)  # what a trainer's non-finite check sees


def test_out_of_range_labels_make_the_error_rates_nan(key):
    z, y, bad = bad_label_case(rng_from(key))
    k = z.shape[1]
    assert np.isnan(call(L.error_rate, z, y))
    for top in range(1, k + 1):
        assert np.isnan(call(L.top_k_error, z, y, k=top))
        assert np.isnan(L.top_k_error(jnp.asarray(z), jnp.asarray(y), k=top))
    good = ~bad
    np.testing.assert_allclose(
        call(L.top_k_error, z[good], y[good], k=1), call(L.error_rate, z[good], y[good]), rtol=0
    )


def test_as_distribution_of_out_of_range_labels_is_a_nan_row():
    q = np.asarray(L.as_distribution(jnp.array([0, 3, -1, 2]), jnp.zeros((4, 3))))
    np.testing.assert_array_equal(q[[0, 3]], [[1, 0, 0], [0, 0, 1]])
    assert np.isnan(q[[1, 2]]).all()
    small = jnp.array([0, 255], jnp.uint8)  # no uint8 reaches 300 classes: every label is valid
    assert np.isfinite(L.as_distribution(small, jnp.zeros((2, 300)))).all()


# ------------------------------------------------------------------------- argument checking


def assert_message_names(excinfo, *shapes):
    message = str(excinfo.value)
    for shape in shapes:
        assert str(shape) in message, (shape, message)


def test_bad_label_shapes_name_the_shapes():
    probs = jnp.full((4, 3), 1 / 3)
    for f in (
        L.cross_entropy,
        L.cross_entropy_from_logits,
        L.cross_entropy_derivative,
        L.cross_entropy_from_logits_derivative,
    ):
        with pytest.raises(ValueError) as excinfo:
            f(probs, jnp.zeros(5, dtype=jnp.int32))
        assert_message_names(excinfo, (5,), (4, 3))
        with pytest.raises(ValueError) as excinfo:
            f(probs, jnp.zeros((4, 2)))
        assert_message_names(excinfo, (4, 2), (4, 3))
        with pytest.raises(ValueError) as excinfo:  # float class indices are not labels
            f(probs, jnp.zeros(4))
        assert_message_names(excinfo, (4,), (4, 3))
    for f in (L.quadratic, L.binary_cross_entropy, L.binary_cross_entropy_from_logits):
        with pytest.raises(ValueError) as excinfo:
            f(jnp.zeros((4, 2)), jnp.zeros((4,)))
        assert_message_names(excinfo, (4, 2), (4,))
    with pytest.raises(ValueError) as excinfo:
        L.zero_one_loss(probs, jnp.zeros(5, dtype=jnp.int32))
    assert_message_names(excinfo, (5,), (4, 3))


@pytest.mark.parametrize(
    "f,args",
    [
        (L.binary_cross_entropy, (jnp.full(2, 0.5), jnp.ones(2))),
        (L.binary_cross_entropy_derivative, (jnp.full(2, 0.5), jnp.ones(2))),
        (L.binary_cross_entropy_from_logits, (jnp.zeros(2), jnp.ones(2))),
        (L.cross_entropy, (jnp.full((2, 2), 0.5), jnp.array([0, 1]))),
        (L.cross_entropy_from_logits, (jnp.zeros((2, 2)), jnp.array([0, 1]))),
        (L.entropy, (jnp.full(2, 0.5),)),
        (L.binary_entropy, (jnp.full(2, 0.5),)),
        (L.cross_entropy_between, (jnp.full(2, 0.5), jnp.full(2, 0.5))),
        (L.kl_divergence, (jnp.full(2, 0.5), jnp.full(2, 0.5))),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_unknown_unit_is_rejected(f, args):
    with pytest.raises(ValueError, match="furlongs"):
        f(*args, unit="furlongs")


# ----------------------------------------------------------- notes 004, question 3: the 80/20 case


TARGETS_80_20 = np.concatenate([np.ones(80), np.zeros(20)])


@pytest.mark.parametrize(
    "loss,lr",
    [(L.quadratic, 20.0), (L.binary_cross_entropy, 4.0)],
    ids=["quadratic", "binary_cross_entropy"],
)
def test_80_20_case_converges_to_0_8(key, loss, lr):
    """One input repeated 100 times, 80 targets 1 and 20 targets 0.

    The trained output is 0.8 under both losses.
    """
    t = jnp.asarray(TARGETS_80_20)

    def mean_loss(s):
        z = jax.nn.sigmoid(s)  # the output z in (0, 1), the same for every copy of the input
        return L.risk(loss, jnp.full((100,), z), t)

    @jax.jit
    def descend(s0):
        return jax.lax.fori_loop(0, 400, lambda _, s: s - lr * jax.grad(mean_loss)(s), s0)

    s0 = rng_from(key).uniform(-3.0, 3.0)
    z = float(jax.nn.sigmoid(descend(jnp.asarray(s0))))
    assert abs(z - 0.8) < 1e-3, (s0, z)


def test_80_20_stationary_point_is_0_8():
    """dE/dz = 100 z - 80 (sum squared error) and (100 z - 80) / (z (1 - z)) (cross-entropy).

    Both are zero at z = 0.8.
    """
    t = jnp.asarray(TARGETS_80_20)

    grads = {
        loss: jax.jit(jax.grad(lambda v, loss=loss: jnp.sum(loss(jnp.full((100,), v), t))))
        for loss in (L.quadratic, L.binary_cross_entropy)
    }

    def dE_dz(loss, z):
        return float(grads[loss](jnp.asarray(z)))

    for z in (0.8, 0.7, 0.9):
        np.testing.assert_allclose(dE_dz(L.quadratic, z), 100 * z - 80, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            dE_dz(L.binary_cross_entropy, z), (100 * z - 80) / (z * (1 - z)), rtol=1e-12, atol=1e-11
        )
        zs = np.full(100, z)
        np.testing.assert_allclose(
            np.sum(call(L.quadratic_derivative, zs, t)), 100 * z - 80, rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(
            np.sum(call(L.binary_cross_entropy_derivative, zs, t)),
            (100 * z - 80) / (z * (1 - z)),
            rtol=1e-12,
            atol=1e-11,
        )
    assert abs(dE_dz(L.quadratic, 0.8)) < 1e-12
    assert abs(dE_dz(L.binary_cross_entropy, 0.8)) < 1e-11


def test_label_smoothing_targets_loss_and_gradient(key):
    from jaxnet.training import build

    k_z, k_y, k_e = jax.random.split(key, 3)
    K = 7
    z = 3 * jax.random.normal(k_z, (5, K))
    y = jax.random.randint(k_y, (5,), 0, K)
    eps = float(jax.random.uniform(k_e, (), minval=0.01, maxval=0.5))
    q = L.smooth_labels(y, z, eps)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(q[jnp.arange(5), y], 1 - eps + eps / K, rtol=1e-15)
    loss = build.per_sample_loss("cross_entropy", "none", K, eps)
    manual = -jnp.sum(q * jax.nn.log_softmax(z), axis=1)  # the smoothed cross-entropy
    np.testing.assert_allclose(loss(z, y), manual, rtol=1e-13)
    grad = jax.grad(lambda z_: jnp.sum(loss(z_, y)))(z)
    np.testing.assert_allclose(grad, jax.nn.softmax(z) - q, rtol=1e-12, atol=1e-15)  # p - q
    assert np.isnan(loss(z, y.at[2].set(K))[2])  # a label out of range still gives NaN
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 1\), got 1.0"):
        L.smooth_labels(y, z, 1.0)
