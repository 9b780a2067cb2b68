"""Algorithm 1 and its batched form against jax.grad of the risk and finite differences.

On random MLPs and CNNs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import activations as A
from jaxnet import backprop, losses
from jaxnet import layers as L
from jaxnet.verify import check_gradient, relative_error

POINT = {
    "sigmoid": L.Sigmoid,
    "tanh": L.Tanh,
    "relu": L.Relu,
    "swish": L.Swish(1.3),
    "identity": L.Identity,
}


def random_mlp(rng):
    depth = int(rng.integers(1, 4))
    stack = []
    for _ in range(depth):
        stack += [L.Dense(int(rng.integers(2, 8))), POINT[rng.choice(list(POINT))]]
    return L.serial(*stack, L.Dense(int(rng.integers(2, 5)))), (int(rng.integers(2, 7)),)


def random_cnn(rng):
    padding = str(rng.choice(["same", "valid", "full"]))
    stack = [
        L.Conv2D(
            int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 3)), padding
        ),
        POINT[rng.choice(["relu", "tanh", "swish"])],
        [L.MaxPool(2, 1), L.AvgPool(2, 2, "same"), L.MaxPool(3, 2, "same")][int(rng.integers(3))],
        L.Flatten,
        L.Dropout(0.25),
        L.Dense(int(rng.integers(2, 5))),
    ]
    return L.serial(*stack), (
        int(rng.integers(5, 8)),
        int(rng.integers(5, 8)),
        int(rng.integers(1, 3)),
    )


def _setup(net, in_shape, key, batch):
    k_init, k_p, k_x, k_y = jax.random.split(key, 4)
    out_shape, params = net.init(k_init, in_shape)
    params = jax.tree_util.tree_map(lambda p: p + 0.2 * jax.random.normal(k_p, p.shape), params)
    x = jax.random.normal(k_x, (batch,) + in_shape)
    return out_shape, params, x, k_y


def _targets(loss, out_shape, key, batch):
    if loss in (losses.CROSS_ENTROPY_FROM_LOGITS, losses.CROSS_ENTROPY):
        return jax.random.randint(key, (batch,), 0, out_shape[0])
    if loss in (losses.BINARY_CROSS_ENTROPY_FROM_LOGITS, losses.BINARY_CROSS_ENTROPY):
        return (jax.random.uniform(key, (batch,) + out_shape) > 0.5).astype(jnp.float64)
    return jax.random.normal(key, (batch,) + out_shape)


def _assert_trees_close(a, b, tol):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert relative_error(x, y) < tol, relative_error(x, y)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_both_forms_equal_jax_grad_on_random_networks(kind, key):
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
    loss_choices = [
        losses.CROSS_ENTROPY_FROM_LOGITS,
        losses.QUADRATIC,
        losses.BINARY_CROSS_ENTROPY_FROM_LOGITS,
    ]
    for trial in range(3):
        net, in_shape = (random_mlp if kind == "mlp" else random_cnn)(rng)
        loss = loss_choices[trial]
        batch = int(rng.integers(1, 6))
        out_shape, params, x, k_y = _setup(net, in_shape, jax.random.fold_in(key, trial), batch)
        y = _targets(loss, out_shape, k_y, batch)
        dropout_key = jax.random.fold_in(key, 99 + trial)

        @jax.jit
        def grads(params, x, y, dropout_key, net=net, loss=loss):
            ref = jax.grad(lambda p: losses.risk(loss, net.apply(p, x, key=dropout_key), y))(params)
            return (
                ref,
                backprop.backprop(net, params, x, y, loss, key=dropout_key),
                backprop.backprop_batched(net, params, x, y, loss, key=dropout_key),
            )

        ref, per_sample, batched = grads(params, x, y, dropout_key)
        _assert_trees_close(per_sample, ref, 1e-12)
        _assert_trees_close(batched, ref, 1e-12)


@pytest.mark.parametrize(
    "output_layer, loss",
    [
        (L.Softmax, losses.CROSS_ENTROPY),  # p through diag(p) - p p^T, then -q / p
        (L.Softmax, losses.QUADRATIC),
        (L.Sigmoid, losses.BINARY_CROSS_ENTROPY),  # the slides' multi-output binary cross-entropy
        (L.LogSoftmax, losses.QUADRATIC),
    ],
)
def test_probability_outputs_against_finite_differences(output_layer, loss, key):
    net = L.serial(L.Dense(5), L.Tanh, L.Dense(3), output_layer)
    out_shape, params, x, k_y = _setup(net, (4,), key, 6)
    y = _targets(loss, out_shape, k_y, 6)
    if loss is losses.QUADRATIC:
        y = jax.random.uniform(k_y, (6, 3))

    def risk(p):
        return losses.risk(loss, net.apply(p, x), y)

    for form in (backprop.backprop, backprop.backprop_batched):
        result = check_gradient(risk, form(net, params, x, y, loss), params)
        assert result.passed, result


def test_cross_entropy_after_softmax_gives_p_minus_q_at_the_logits(key):
    # Back-propagating -q/p through the soft-max Jacobian must give p - q (notes 004), even when
    # written as two layers.
    z = 3 * jax.random.normal(key, (5, 4))
    labels = jax.random.randint(key, (5,), 0, 4)
    _, g_z = L.Softmax.vjp((), z, losses.cross_entropy_derivative(A.softmax(z), labels))
    np.testing.assert_allclose(
        g_z, A.softmax(z) - jax.nn.one_hot(labels, 4), rtol=1e-12, atol=1e-15
    )


def test_relu_exactly_at_zero_follows_the_notes_in_both_autodiff_and_backprop():
    # A zero image and zero biases put every first-layer activation at exactly a = 0.
    net = L.serial(L.Conv2D(2, 3, 1, "same"), L.Relu, L.Flatten, L.Dense(3))
    _, params = net.init(jax.random.PRNGKey(0), (4, 4, 1))
    x, y = jnp.zeros((2, 4, 4, 1)), jnp.array([0, 2])
    loss = losses.CROSS_ENTROPY_FROM_LOGITS
    ref = jax.grad(lambda p: losses.risk(loss, net.apply(p, x), y))(params)
    _assert_trees_close(backprop.backprop(net, params, x, y, loss), ref, 1e-12)
    _assert_trees_close(backprop.backprop_batched(net, params, x, y, loss), ref, 1e-12)
    # With the notes' rule the conv bias receives gradient through the "active" units; JAX's relu
    # would block it.
    assert float(jnp.max(jnp.abs(ref[0]["b"]))) > 0

    def jax_relu_risk(p):
        a = L.Conv2D(2, 3, 1, "same").apply(p[0], x)
        return losses.risk(loss, L.Dense(3).apply(p[3], jax.nn.relu(a).reshape(2, -1)), y)

    np.testing.assert_array_equal(jax.grad(jax_relu_risk)(params)[0]["b"], 0.0)


def test_single_layer_network_and_running_mean(key):
    layer = L.Dense(3)
    _, params = layer.init(key, (4,))
    x = jax.random.normal(key, (7, 4))
    y = jax.random.randint(key, (7,), 0, 3)
    loss = losses.CROSS_ENTROPY_FROM_LOGITS
    per_sample = [
        jax.grad(lambda p: loss.value(layer.apply(p, x[n : n + 1]), y[n : n + 1])[0])(params)
        for n in range(7)
    ]
    mean = jax.tree_util.tree_map(lambda *g: sum(g) / 7, *per_sample)
    _assert_trees_close(backprop.backprop(layer, params, x, y, loss), mean, 1e-12)
    _assert_trees_close(backprop.backprop_batched(layer, params, x, y, loss), mean, 1e-12)


def test_huge_logits_give_finite_exact_gradients():
    net = L.serial(L.Dense(3))
    params = ({"W": jnp.array([[1e4], [0.0], [-1e4]]), "b": jnp.zeros(3)},)
    x, y = jnp.ones((1, 1)), jnp.array([1])
    grads = backprop.backprop(net, params, x, y, losses.CROSS_ENTROPY_FROM_LOGITS)
    # p = (1, 0, 0) to machine precision, q = e_2: dL/dz = p - q = (1, -1, 0), dL/dW = (p - q) x^T.
    np.testing.assert_allclose(grads[0]["W"][:, 0], [1.0, -1.0, 0.0], atol=1e-300)
    np.testing.assert_allclose(grads[0]["b"], [1.0, -1.0, 0.0], atol=1e-300)


def test_bad_arguments_raise_clear_errors(key):
    net = L.serial(L.Dense(2))
    _, params = net.init(key, (3,))
    with pytest.raises(TypeError, match="losses.Loss"):
        backprop.backprop(
            net, params, jnp.ones((1, 3)), jnp.array([0]), losses.cross_entropy_from_logits
        )
    with pytest.raises(TypeError, match="jaxnet Layer"):
        backprop.backprop_batched(
            lambda p, x: x, params, jnp.ones((1, 3)), jnp.array([0]), losses.QUADRATIC
        )
