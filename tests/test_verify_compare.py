"""Structure first, then element by element, kinks and the pytest helpers (jaxnet.verify)."""

import jax
import jax.numpy as jnp
import pytest

from jaxnet import verify


def _params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"W": jax.random.normal(k1, (3, 2)), "b": jax.random.normal(k2, (3,))}
    return params, jax.random.normal(k3, (2,))


def test_a_right_gradient_in_another_shape_fails_naming_the_leaf(key):
    w = jax.random.normal(key, (3,))
    f = lambda w: jnp.sum(jnp.sin(w))
    result = verify.check_gradient(f, jnp.cos(w)[:, None], w)
    assert not result.passed and result.error_vs_autodiff == float("inf")
    assert "expected shape (3,)" in result.message and "given (3, 1)" in result.message


def test_a_list_for_a_dict_fails_naming_both_paths(key):
    params, x = _params(key)
    f = lambda p: jnp.sum(jnp.tanh(p["W"] @ x + p["b"]))
    right = jax.grad(f)(params)
    assert verify.check_gradient(f, right, params).passed
    result = verify.check_gradient(f, [right["W"], right["b"]], params)
    assert not result.passed
    assert "['W']" in result.message and "[0]" in result.message, result.message


def test_a_flattened_jacobian_fails_unless_the_matrix_layout_is_chosen(key):
    x = jax.random.normal(key, (5,))
    J = jnp.diag(jnp.cos(x))
    flat = verify.check_jacobian(jnp.sin, J.ravel(), x)
    assert not flat.passed and "expected shape (5, 5)" in flat.message
    assert "given (25,)" in flat.message
    assert verify.check_jacobian(jnp.sin, J, x, layout="matrix").passed
    wrong_size = verify.check_jacobian(jnp.sin, J[:4], x, layout="matrix")
    assert not wrong_size.passed and "given (4, 5)" in wrong_size.message
    with pytest.raises(ValueError, match="layout"):
        verify.check_jacobian(jnp.sin, J, x, layout="rows")


def test_pytree_jacobians_in_the_matrix_layout(key):
    params, x = _params(key)
    f = lambda p: jnp.sin(p["W"] @ x + p["b"])
    matrix = verify.jacobian_matrix(jax.jacrev(f)(params), 3)
    assert verify.check_jacobian(f, matrix, params, layout="matrix").passed
    assert not verify.check_jacobian(f, matrix[:, ::-1], params, layout="matrix").passed


def test_scalar_jacobians_work_and_a_wrong_scalar_shape_fails(key):
    x = jax.random.normal(key, ())
    assert verify.check_jacobian(jnp.sin, jnp.cos(x), x).passed
    assert verify.check_gradient(jnp.sin, jnp.cos, x).passed
    result = verify.check_jacobian(jnp.sin, jnp.cos(x)[None], x)
    assert not result.passed and "expected shape ()" in result.message


def test_a_wrong_sign_in_a_small_component_fails():
    c = jnp.array([1.0, -2.0, 1e-9])
    f = lambda x: x @ c
    assert verify.check_gradient(f, lambda x: c, jnp.ones(3)).passed
    wrong = verify.check_gradient(f, lambda x: c.at[2].set(-1e-9), jnp.ones(3))
    assert wrong.error_vs_autodiff < 1e-7  # the max-norm error hides it
    assert not wrong.passed and wrong.worst_element == "(root)[2]"
    assert wrong.worst_relative_error == pytest.approx(2.0)


def test_small_components_finite_differences_cannot_resolve_do_not_fail(key):
    # d/dx1 = 1e-6 cos(x1) next to f ~ 1e6: the rounding of f dwarfs it in every difference
    x = jnp.array([1e-2, 0.0]) + 0.1 * jax.random.uniform(key, (2,))
    f = lambda x: 1e6 * jnp.cosh(x[0]) + 1e-6 * jnp.sin(x[1])
    grad = lambda x: jnp.array([1e6 * jnp.sinh(x[0]), 1e-6 * jnp.cos(x[1])])
    result = verify.check_gradient(f, grad, x)
    assert result.passed, result
    fd = verify.finite_differences(f, x)
    assert abs(fd.estimate[0, 1] - grad(x)[1]) > 1e-7 * abs(grad(x)[1])  # unresolved
    wrong = verify.check_gradient(f, lambda x: grad(x) * jnp.array([1.0, -1.0]), x)
    assert not wrong.passed and wrong.worst_element == "(root)[1]"


@pytest.mark.parametrize(
    "at_kink, passes",
    [
        ("either", (True, True)),
        ("left", (True, False)),
        ("right", (False, True)),
        ("fail", (False, False)),
    ],
)
def test_relu_at_0_under_both_conventions(key, at_kink, passes):
    x = jax.random.normal(key, (4,)).at[1].set(0.0)
    jax_convention = lambda x: jnp.diag((x > 0) * 1.0)  # JAX: ReLU'(0) = 0, the left side
    notes_convention = lambda x: jnp.diag((x >= 0) * 1.0)  # the notes: ReLU'(0) = 1
    for derivative, expected in zip((jax_convention, notes_convention), passes):
        result = verify.check_jacobian(jax.nn.relu, derivative, x, at_kink=at_kink)
        assert result.passed is expected, (at_kink, result)
        assert result.kinks == [
            f"not differentiable at element (root)[1, 1]: left 0, right 1, "
            f"given {derivative(x)[1, 1]:.6g}"
        ]
        assert result.kinks[0] in result.message
    # the central difference 1/2 is no one-sided derivative
    half = lambda x: jnp.diag(jnp.where(x == 0, 0.5, (x > 0) * 1.0))
    assert not verify.check_jacobian(jax.nn.relu, half, x, at_kink=at_kink).passed


def test_abs_at_0(key):
    x = jax.random.normal(key, (3,)).at[0].set(0.0)
    f = lambda x: jnp.sum(jnp.abs(x))
    sign = verify.check_gradient(f, jnp.sign, x)  # sign(0) = 0: neither side
    assert not sign.passed and "left -1, right 1, given 0" in sign.message
    right = lambda x: jnp.where(x >= 0, 1.0, -1.0)
    assert verify.check_gradient(f, right, x, at_kink="right").passed
    assert not verify.check_gradient(f, right, x, at_kink="left").passed


def test_a_relu_input_near_0_is_no_kink(key):
    x = jnp.array([3e-6, -2e-6]) + 1e-7 * jax.random.uniform(key, (2,))
    f = lambda x: jnp.sum(jax.nn.relu(10.0 * x))
    result = verify.check_gradient(f, lambda x: 10.0 * (x > 0), x, at_kink="fail")
    assert result.passed and not result.kinks, result


def test_assert_helpers_raise_with_the_row_and_why(key):
    w = jax.random.normal(key, (4,))
    f = lambda w: jnp.sum(jnp.tanh(w) ** 2)
    right = lambda w: 2 * jnp.tanh(w) * (1 - jnp.tanh(w) ** 2)
    assert verify.assert_gradient(f, right, w).passed
    with pytest.raises(AssertionError, match=r"(?s)gradient .*FAIL.*worst element \(root\)\["):
        verify.assert_gradient(f, lambda w: 2 * jnp.tanh(w), w)
    with pytest.raises(AssertionError, match=r"expected shape \(4,\) .*, given \(2, 2\)"):
        verify.assert_gradient(f, lambda w: right(w).reshape(2, 2), w)
    with pytest.raises(AssertionError, match=r"not differentiable at element \(root\)\[0, 0\]"):
        verify.assert_jacobian(jax.nn.relu, jnp.eye(2), jnp.zeros(2), at_kink="left")
    assert verify.assert_jacobian(jnp.sin, lambda x: jnp.diag(jnp.cos(x)), w, name="sin").passed
