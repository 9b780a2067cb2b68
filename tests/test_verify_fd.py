"""Finite differences that respect f's domain and scale (jaxnet.verify.finite_diff)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import losses, verify


@pytest.mark.parametrize("p", [1e-4, 1e-6, 1e-10])
def test_minus_log_p_passes_at_tiny_p_and_a_near_miss_fails(p):
    right = verify.check_gradient(lambda p: -jnp.log(p), lambda p: -1 / p, jnp.array(p))
    assert right.passed and right.error_vs_finite_differences < 1e-9, right
    near = verify.check_gradient(lambda p: -jnp.log(p), lambda p: -(1 + 1e-6) / p, jnp.array(p))
    assert not near.passed and "worst element" in near.message


def test_minus_log_p_on_random_tiny_probabilities(key):
    p = 10.0 ** jax.random.uniform(key, (6,), minval=-12, maxval=-1)
    fd = verify.finite_difference_jacobian(lambda p: -jnp.log(p), p)
    np.testing.assert_allclose(np.diag(fd), -1 / np.asarray(p), rtol=1e-8)
    assert verify.check_gradient(lambda p: -jnp.sum(jnp.log(p)), lambda p: -1 / p, p).passed


def test_cross_entropy_at_a_label_probability_of_1e_6(key):
    rest = jax.random.dirichlet(key, jnp.ones(3)) * (1 - 1e-6)
    probs = jnp.concatenate([jnp.array([1e-6]), rest])[None, :]
    labels = jnp.array([0])
    loss = lambda p: jnp.sum(losses.cross_entropy(p, labels))
    result = verify.check_gradient(loss, losses.cross_entropy_derivative(probs, labels), probs)
    assert result.passed and result.error_vs_finite_differences < 1e-9, result


def test_binary_cross_entropy_next_to_p_equal_1():
    p, y = jnp.array([[1 - 1e-6]]), jnp.array([[0.0]])
    loss = lambda p: jnp.sum(losses.binary_cross_entropy(p, y))
    fd = verify.finite_differences(loss, p)
    assert abs(fd.estimate[0, 0] - 1 / (1 - p[0, 0])) / 1e6 < 1e-9
    assert np.isfinite(fd.steps[0]) and fd.steps[0] < 1e-6  # shrunk inside (0, 1)
    result = verify.check_gradient(loss, losses.binary_cross_entropy_derivative(p, y), p)
    assert result.passed and result.error_vs_finite_differences < 1e-9, result


def test_sqrt_near_0_and_a_power_on_its_boundary(key):
    x = jnp.concatenate([jnp.array([1e-8, 1e-12]), jax.random.uniform(key, (2,))])
    assert verify.check_gradient(
        lambda x: jnp.sum(jnp.sqrt(x)), lambda x: 0.5 / jnp.sqrt(x), x
    ).passed
    # sqrt(x)^4 = x^2 is NaN left of 0: one-sided differences on the right
    square = lambda x: jnp.sqrt(x) ** 4
    fd = verify.finite_differences(square, jnp.array([0.0, 0.25]))
    assert np.isnan(fd.left[0, 0]) and np.isfinite(fd.right[0, 0])
    np.testing.assert_allclose(np.diag(fd.estimate), [0.0, 0.5], atol=1e-9)
    right = verify.check_jacobian(square, lambda x: jnp.diag(2 * x), jnp.array([0.0, 0.25]))
    assert right.passed, right


def test_logits_of_1e4_still_need_no_tiny_steps():
    z = jnp.array([1e4, 0.0, 1e4 - 1.0])
    lse = jax.scipy.special.logsumexp
    p_exact = np.exp(np.asarray(z) - np.logaddexp(1e4, 1e4 - 1.0))
    fd = verify.finite_difference_jacobian(lse, z)[0]
    np.testing.assert_allclose(fd, p_exact, rtol=1e-8, atol=1e-12)


def test_step_levels_and_skipping_finite_differences(key):
    x = jax.random.normal(key, (4,))
    f, grad = lambda x: jnp.sum(jnp.sin(x)), jnp.cos
    skipped = verify.check_gradient(f, grad, x, finite_differences=False)
    assert skipped.passed and np.isnan(skipped.error_vs_finite_differences)
    assert skipped.as_dict()["error_vs_finite_differences"] is None  # JSON: null, not NaN
    coarse = verify.check_gradient(f, grad, x, step=0.5, levels=4)
    assert coarse.passed and coarse.error_vs_finite_differences < 1e-6
    with pytest.raises(ValueError, match="levels"):
        verify.check_gradient(f, grad, x, levels=1)
    with pytest.raises(ValueError, match="step"):
        verify.finite_differences(f, x, step=0.0)


def test_ridders_error_estimates_bound_the_actual_errors(key):
    x = jax.random.normal(key, (5,))
    fd = verify.finite_differences(lambda x: jnp.exp(x) * jnp.sin(3 * x), x)
    exact = np.diag(np.exp(x) * (np.sin(3 * x) + 3 * np.cos(3 * x)))
    assert np.all(np.abs(fd.estimate - exact) <= 2 * fd.error + 1e-15)
