"""Each layer's forward pass against a reference.

And its hand-written Jacobians and vjp against autodiff and finite differences.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import activations as A
from jaxnet import layers as L
from jaxnet.verify import check_jacobian, relative_error

TOL = 1e-7


def _rng(key):
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())


def random_layer_cases(key):
    """Layers with random hyper-parameters and input shapes: (description, layer, input_shape)."""
    r = _rng(key)
    k = lambda lo, hi: int(r.integers(lo, hi + 1))
    pad_styles = ["same", "valid", "full", ((k(0, 2), k(0, 2)), (k(0, 2), k(0, 2)))]
    cases = [("Dense", L.Dense(k(1, 6)), (k(1, 7),))]
    for padding in pad_styles:
        window, strides = (k(1, 3), k(1, 3)), (k(1, 3), k(1, 3))
        shape = (k(3, 7), k(3, 7), k(1, 3))
        cases.append(
            (
                f"Conv2D {window} s={strides} {padding}",
                L.Conv2D(k(1, 3), window, strides, padding),
                shape,
            )
        )
    for padding in ["same", "valid", ((1, 0), (0, 1))]:
        window, strides = (k(2, 3), k(2, 3)), (k(1, 3), k(1, 3))
        shape = (k(4, 7), k(4, 7), k(1, 3))
        cases.append(
            (f"MaxPool {window} s={strides} {padding}", L.MaxPool(window, strides, padding), shape)
        )
        cases.append(
            (f"AvgPool {window} s={strides} {padding}", L.AvgPool(window, strides, padding), shape)
        )
    for name in ["Sigmoid", "Tanh", "Relu", "Identity", "Softmax", "LogSoftmax", "Flatten"]:
        shape = (k(2, 6),) if name in ("Softmax", "LogSoftmax") else (k(2, 4), k(1, 3))
        cases.append((name, getattr(L, name), shape))
    cases.append(("Swish", L.Swish(float(r.uniform(0.5, 2.0))), (k(2, 6),)))
    return cases


def _init_perturbed(layer, key, in_shape, batch=3):
    k_init, k_p, k_x = jax.random.split(key, 3)
    _, params = layer.init(k_init, in_shape)
    # Perturb so zero-initialised biases are not a special point.
    params = jax.tree_util.tree_map(lambda p: p + 0.3 * jax.random.normal(k_p, p.shape), params)
    return params, jax.random.normal(k_x, (batch,) + tuple(in_shape))


def test_every_layer_jacobian_matches_jacrev_jacfwd_and_finite_differences(key):
    for i, (name, layer, in_shape) in enumerate(random_layer_cases(key)):
        params, x = _init_perturbed(layer, jax.random.fold_in(key, i), in_shape)
        n = 1
        J_w, J_x = jax.jit(layer.jacobians, static_argnums=2)(params, x, n)
        result = check_jacobian(
            lambda x_n: layer.apply(params, x.at[n].set(x_n))[n], J_x, x[n], name=name
        )
        assert result.passed, (name, in_shape, result)
        if jax.tree_util.tree_leaves(params):
            result = check_jacobian(lambda p: layer.apply(p, x)[n], J_w, params, name=name)
            assert result.passed, (name, in_shape, result)


def test_every_layer_vjp_matches_jax_vjp_and_its_own_jacobians(key):
    for i, (name, layer, in_shape) in enumerate(random_layer_cases(key)):
        params, x = _init_perturbed(layer, jax.random.fold_in(key, i), in_shape)

        @jax.jit
        def both(params, x, g_key, layer=layer):
            y, pullback = jax.vjp(lambda p, x_: layer.apply(p, x_), params, x)
            g = jax.random.normal(g_key, y.shape)
            return g, pullback(g), layer.vjp(params, x, g), layer.jacobians(params, x, 0)[1]

        g, (ref_params, ref_x), (hand_params, hand_x), J_x = both(
            params, x, jax.random.fold_in(key, 1000 + i)
        )
        assert relative_error(hand_x, ref_x) < 1e-12, name
        for a, b in zip(
            jax.tree_util.tree_leaves(hand_params), jax.tree_util.tree_leaves(ref_params)
        ):
            assert relative_error(a, b) < 1e-12, name
        # The vjp is the row vector g times the local Jacobians, summed over the batch (eq. (2)).
        assert relative_error(hand_x[0], jnp.tensordot(g[0], J_x, axes=g.ndim - 1)) < 1e-12, name


def test_init_shapes_match_apply(key):
    for i, (name, layer, in_shape) in enumerate(random_layer_cases(key)):
        out_shape, params = layer.init(jax.random.fold_in(key, i), in_shape)
        y = layer.apply(params, jnp.zeros((2,) + tuple(in_shape)))
        assert y.shape == (2,) + tuple(out_shape), name


def test_conv_matches_a_direct_loop_and_flax(key):
    k1, k2, k3 = jax.random.split(key, 3)
    layer = L.Conv2D(4, (3, 2), (2, 1), "same")
    _, params = layer.init(k1, (7, 6, 3))
    params = {"W": params["W"], "b": jax.random.normal(k3, (4,))}
    x = jax.random.normal(k2, (2, 7, 6, 3))
    y = layer.apply(params, x)
    # Direct evaluation of a[n,i,j,o] = b_o + sum W[p,q,c,o] x~[n, i s0 + p, j s1 + q, c].
    (lo0, hi0), (lo1, hi1) = (1, 1), (0, 1)  # 'same' for n=7,k=3,s=2 and n=6,k=2,s=1
    xp = np.pad(np.asarray(x), ((0, 0), (lo0, hi0), (lo1, hi1), (0, 0)))
    W = np.asarray(params["W"])
    ref = np.zeros(y.shape)
    for i in range(y.shape[1]):
        for j in range(y.shape[2]):
            ref[:, i, j, :] = np.einsum(
                "npqc,pqco->no", xp[:, 2 * i : 2 * i + 3, j : j + 2, :], W
            ) + np.asarray(params["b"])
    np.testing.assert_allclose(y, ref, rtol=1e-12)
    flax_conv = nn.Conv(4, (3, 2), (2, 1), padding="SAME")
    np.testing.assert_allclose(
        y, flax_conv.apply({"params": {"kernel": params["W"], "bias": params["b"]}}, x), rtol=1e-12
    )


def test_pooling_matches_flax(key):
    x = jax.random.normal(key, (2, 7, 6, 3))
    for padding in ["VALID", "SAME"]:
        np.testing.assert_allclose(
            L.MaxPool(3, 2, padding.lower()).apply((), x),
            nn.max_pool(x, (3, 3), (2, 2), padding),
            rtol=0,
        )
        np.testing.assert_allclose(
            L.AvgPool(3, 2, padding.lower()).apply((), x),
            nn.avg_pool(x, (3, 3), (2, 2), padding, count_include_pad=True),
            rtol=1e-12,
        )


def test_dense_bias_folding_is_the_notes_augmented_product(key):
    layer = L.Dense(4)
    _, params = layer.init(key, (5,))
    params = {"W": params["W"], "b": jax.random.normal(key, (4,))}
    x = jax.random.normal(jax.random.fold_in(key, 1), (3, 5))
    W_tilde = L.fold_bias(params)
    assert W_tilde.shape == (4, 6)
    np.testing.assert_allclose(L.augment(x) @ W_tilde.T, layer.apply(params, x), rtol=1e-13)


def test_dense_activation_jacobian_has_the_kronecker_delta_structure(key):
    _, params = L.Dense(3).init(key, (4,))
    x = jax.random.normal(key, (4,))
    J_w, J_x = L.dense_activation_jacobians(params, x, A.sigmoid_derivative)
    a = params["W"] @ x + params["b"]
    for i in range(3):
        for q in range(3):
            expected = (i == q) * A.sigmoid_derivative(a[i]) * x
            np.testing.assert_allclose(J_w["W"][i, q], expected, rtol=1e-14)
    np.testing.assert_allclose(J_x, A.sigmoid_derivative(a)[:, None] * params["W"], rtol=1e-14)


def test_dense_activation_jacobian_with_saturated_sigmoid():
    params = {"W": jnp.array([[40.0, 0.0], [-40.0, 0.0]]), "b": jnp.zeros(2)}
    x = jnp.array([1.0, 0.5])  # activations +-40
    J_w, J_x = L.dense_activation_jacobians(params, x, A.sigmoid_derivative)
    exact = (
        np.exp(-40.0) / (1 + np.exp(-40.0)) ** 2
    )  # sigma'(+-40) = 4.2e-18, well inside float64's range
    np.testing.assert_allclose(J_x[:, 0], [40 * exact, -40 * exact], rtol=1e-14)
    np.testing.assert_allclose(J_w["b"], np.diag([exact, exact]), rtol=1e-14)
    # jax.grad of jax.nn.sigmoid computes s (1 - s), which rounds to 0 at a = +40: it agrees only in
    # absolute terms.
    ref = jax.jacrev(lambda x_: A.sigmoid(params["W"] @ x_ + params["b"]))(x)
    np.testing.assert_allclose(J_x, ref, rtol=0, atol=1e-15)


def test_max_pool_ties_go_to_the_first_input_in_row_major_order():
    x = jnp.array([[1.0, 3.0, 3.0, 0.0], [3.0, 2.0, 1.0, 3.0]])[
        None, :, :, None
    ]  # both windows tie at 3
    J = L.MaxPool(2).jacobians((), x, 0)[1][0, :, 0, :, :, 0]
    expected = np.zeros((2, 2, 4))
    expected[0, 0, 1] = 1  # window 0: (0,1) and (1,0) tie; (0,1) comes first
    expected[1, 0, 2] = 1  # window 1: (0,2) and (1,3) tie; (0,2) comes first
    np.testing.assert_array_equal(J, expected)
    # jax.grad of XLA's own lax.reduce_window (select_and_scatter) follows the same rule ...
    np.testing.assert_array_equal(
        jax.jacrev(lambda v: xla_max_pool(v, 2, 2, "VALID")[0, :, :, 0])(x)[0, :, 0, :, :, 0],
        expected,
    )
    # ... and so does jaxnet's faster custom derivative, in both modes.
    np.testing.assert_array_equal(
        jax.jacrev(lambda v: L.MaxPool(2).apply((), v)[0, :, :, 0])(x)[0, :, 0, :, :, 0], expected
    )
    np.testing.assert_array_equal(
        jax.jacfwd(lambda v: L.MaxPool(2).apply((), v)[0, :, :, 0])(x)[0, :, 0, :, :, 0], expected
    )
    # ... and so does the batched vjp; jnp.max would split the gradient 1/2, 1/2 instead.
    g = jnp.ones((1, 1, 2, 1))
    np.testing.assert_array_equal(L.MaxPool(2).vjp((), x, g)[1][0, :, :, 0], expected.sum(axis=0))
    assert jax.grad(lambda v: jnp.max(v))(jnp.array([3.0, 3.0]))[0] == 0.5


def xla_max_pool(x, k, s, padding):
    """Max-pooling by lax.reduce_window alone, whose jax.grad is XLA's select_and_scatter.

    An independent reference; k and s are ints or (rows, columns) pairs.
    """
    k, s = (v if isinstance(v, tuple) else (v, v) for v in (k, s))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *k, 1), (1, *s, 1), padding)


@pytest.mark.parametrize(
    "k, s, padding", [(3, 2, "same"), (2, 2, "valid"), (2, 1, "valid"), (3, 3, "same")]
)
def test_max_pool_derivatives_match_xla_with_random_ties(k, s, padding, key):
    # Integer-valued inputs make ties common; overlapping windows make one input win several times.
    x = jax.random.randint(key, (2, 8, 7, 2), 0, 3).astype(jnp.float64)
    layer = L.MaxPool(k, s, padding)
    np.testing.assert_array_equal(layer.apply((), x), xla_max_pool(x, k, s, padding.upper()))
    g = jax.random.normal(key, layer.apply((), x).shape)
    ref = jax.vjp(lambda v: xla_max_pool(v, k, s, padding.upper()), x)[1](g)[0]
    # An input that wins several overlapping windows sums their g's, in another order than XLA:
    # atol for cancellation.
    np.testing.assert_allclose(
        layer.vjp((), x, g)[1], ref, rtol=1e-14, atol=1e-14
    )  # the hand-written vjp
    np.testing.assert_allclose(
        jax.vjp(lambda v: layer.apply((), v), x)[1](g)[0], ref, rtol=1e-14, atol=1e-14
    )  # jax.grad
    t = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    ref_t = jax.jvp(lambda v: xla_max_pool(v, k, s, padding.upper()), (x,), (t,))[1]
    np.testing.assert_allclose(
        jax.jvp(lambda v: layer.apply((), v), (x,), (t,))[1], ref_t, rtol=1e-14
    )  # forward mode
    for n in range(2):
        ref_J = jax.jacrev(lambda v: xla_max_pool(v, k, s, padding.upper())[n])(x)[:, :, :, n]
        np.testing.assert_allclose(layer.jacobians((), x, n)[1], ref_J, rtol=0)


def test_relu_derivative_conventions_at_exactly_zero():
    x = jnp.array([[-1.0, 0.0, 2.0]])
    J_notes = L.Relu.jacobians((), x, 0)[1]
    np.testing.assert_array_equal(jnp.diag(J_notes), [0.0, 1.0, 1.0])  # the notes: 1 for a >= 0
    np.testing.assert_array_equal(
        jax.jacrev(lambda v: A.relu(v))(x[0]), J_notes
    )  # jaxnet's relu agrees under jax.grad
    np.testing.assert_array_equal(
        jnp.diag(jax.jacrev(jax.nn.relu)(x[0])), [0.0, 0.0, 1.0]
    )  # JAX's own convention
    np.testing.assert_array_equal(
        A.relu_derivative(x[0], at_zero=0.0), jnp.diag(jax.jacrev(jax.nn.relu)(x[0]))
    )


def test_relu_maxpool_notes_jacobian_with_ties_and_zero_activations(key):
    k1, k2 = jax.random.split(key)
    W = jax.random.normal(k1, (6, 3))
    W = W.at[4].set(W[3])  # units 3 and 4 compute the same activation: an exact max-pooling tie
    x = jax.random.normal(k2, (3,))
    a = W @ x
    # Biases chosen so that: unit 0 sits at a = 0 (x + (-x) is exactly 0), units 1 and 2 are
    # negative (ReLU ties at 0), units 3 and 4 tie at the same positive activation.
    b = jnp.array(
        [-a[0], -1.0 - a[1], -2.0 - a[2], 1.5 - a[3], 1.5 - a[3], 0.7 - a[5]]
    )  # a_3 = a_4 bit for bit
    params = {"W": W, "b": b}
    windows = jnp.array([[1, 2, 0], [0, 1, 2], [3, 4, 5], [5, 4, 3]])
    J_w, J_x = L.relu_maxpool_jacobians(params, x, windows)
    ref_x = jax.jacrev(lambda x_: L.relu_maxpool(params, x_, windows))(x)
    ref_w = jax.jacrev(lambda p: L.relu_maxpool(p, x, windows))(params)
    np.testing.assert_allclose(J_x, ref_x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(J_w["W"], ref_w["W"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(J_w["b"], ref_w["b"], rtol=1e-12, atol=1e-12)
    # Window [1, 2, 0]: all ReLU outputs tie at 0; the first listed (unit 1, a < 0) wins:
    # derivative 0.
    np.testing.assert_array_equal(J_x[0], 0)
    # Window [0, 1, 2]: unit 0 (a = 0 exactly) wins; the notes' ReLU rule gives derivative 1, so
    # d x / d x_prev = W_0.
    np.testing.assert_allclose(J_x[1], W[0], rtol=1e-14)
    # Windows [3, 4, 5] and [5, 4, 3]: units 3 and 4 tie; the first listed wins, as d x / d b's
    # delta shows.
    np.testing.assert_array_equal(J_w["b"][2], jnp.eye(6)[3])
    np.testing.assert_array_equal(J_w["b"][3], jnp.eye(6)[4])
    np.testing.assert_allclose(
        J_w["W"][2, 3], x, rtol=1e-14
    )  # delta_{q q^} h'(a_q^) x_j with q^ = 3


def test_dropout_keeps_the_expected_output_under_both_scalings(key):
    x = jnp.ones((1, 20000))
    for scale_at, test_factor in (("train", 1.0), ("test", 0.7)):
        layer = L.Dropout(0.3, scale_at)
        y = layer.apply((), x, key=key)
        kept = float(jnp.mean(y != 0))
        assert abs(kept - 0.7) < 0.02  # about 1 - rate of the units survive
        np.testing.assert_allclose(layer.apply((), x), test_factor * x)  # test-time rule
        # E[training output] equals the test-time output (the point of the notes' "multiply by p").
        assert abs(float(jnp.mean(y)) - test_factor) < 0.02
    # The mask is a function of the key: the same key gives the same units.
    np.testing.assert_array_equal(
        L.Dropout(0.5).apply((), x, key=key), L.Dropout(0.5).apply((), x, key=key)
    )


def test_dropout_jacobian_is_the_mask(key):
    layer = L.Dropout(0.5)
    x = jax.random.normal(key, (4, 6))
    y = layer.apply((), x, key=key)
    J = layer.jacobians((), x, 2, key=key)[1]
    np.testing.assert_allclose(jnp.diag(J), (y[2] != 0) * 2.0)
    np.testing.assert_array_equal(J - jnp.diag(jnp.diag(J)), 0)


def test_softmax_layer_with_huge_logits(key):
    x = jnp.array([[1e4, 0.0, -1e4], [-1e4, -1e4, 3.0]])
    y = L.Softmax.apply((), x)
    assert np.all(np.isfinite(y))
    J = L.Softmax.jacobians((), x, 0)[1]
    np.testing.assert_allclose(
        J, jax.jacrev(lambda v: L.Softmax.apply((), v[None])[0])(x[0]), atol=1e-300
    )
    np.testing.assert_allclose(L.LogSoftmax.apply((), x)[0], [0.0, -1e4, -2e4])


def test_serial_composes_flattens_and_keeps_one_param_tuple(key):
    inner = L.serial(L.Dense(4), L.Relu)
    net = L.serial(L.Flatten, inner, L.Dense(2))
    assert [layer.name for layer in net.spec["layers"]] == ["flatten", "dense", "relu", "dense"]
    out_shape, params = net.init(key, (3, 2))
    assert out_shape == (2,) and isinstance(params, tuple) and len(params) == 4
    x = jax.random.normal(key, (5, 3, 2))
    manual = L.Dense(2).apply(
        params[3], A.relu(x.reshape(5, 6) @ params[1]["W"].T + params[1]["b"][None, :])
    )
    np.testing.assert_allclose(net.apply(params, x), manual, rtol=1e-13)
    g = jax.random.normal(key, (5, 2))
    ref = jax.vjp(lambda p, v: net.apply(p, v), params, x)[1](g)
    hand = net.vjp(params, x, g)
    for a, b in zip(jax.tree_util.tree_leaves(hand), jax.tree_util.tree_leaves(ref)):
        assert relative_error(a, b) < 1e-12


def test_layers_hash_by_identity_so_networks_can_be_static_under_jit(key):
    net = L.serial(L.Dense(3), L.Tanh)
    assert net == net and net != L.serial(L.Dense(3), L.Tanh)
    _, params = net.init(key, (2,))
    apply = jax.jit(lambda network, p, x: network.apply(p, x), static_argnums=0)
    np.testing.assert_allclose(
        apply(net, params, jnp.ones((1, 2))), net.apply(params, jnp.ones((1, 2)))
    )


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: L.Dense(0), "out_features"),
        (lambda: L.Conv2D(2, 3, padding="middle"), "padding must be one of"),
        (lambda: L.Conv2D(2, (3, 3, 3)), "window"),
        (lambda: L.Conv2D(2, 3, strides=0), "strides"),
        (lambda: L.MaxPool(2, padding=((2, 0), (0, 0))), "smaller than the window"),
        (lambda: L.Dropout(1.0), "rate"),
        (lambda: L.Dropout(0.5, scale_at="eval"), "scale_at"),
    ],
)
def test_bad_hyper_parameters_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_inputs_raise_errors_naming_the_shapes(key):
    _, params = L.Dense(3).init(key, (4,))
    with pytest.raises(ValueError, match=r"expects input \(N, 4\), got \(2, 5\)"):
        L.Dense(3).apply(params, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="Flatten"):
        L.Dense(3).init(key, (2, 2))
    conv = L.Conv2D(2, 3)
    _, params = conv.init(key, (5, 5, 3))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        conv.apply(params, jnp.ones((5, 5, 3)))
    with pytest.raises(ValueError, match="3 input channels"):
        conv.apply(params, jnp.ones((1, 5, 5, 2)))
    with pytest.raises(ValueError, match="does not fit"):
        L.Conv2D(2, 7).init(key, (5, 5, 1))
    net = L.serial(L.Dense(2), L.Relu)
    with pytest.raises(ValueError, match="params tuple of that length"):
        net.apply((params,), jnp.ones((1, 4)))
    with pytest.raises(TypeError, match="expected a jaxnet Layer"):
        L.serial(L.Dense(2), "relu")


@pytest.mark.parametrize(
    "W_init, expected_std",
    [
        (jax.nn.initializers.normal(0.01), lambda d, e: 0.01),
        (jax.nn.initializers.he_normal(), lambda d, e: np.sqrt(2 / d)),
        (jax.nn.initializers.glorot_normal(), lambda d, e: np.sqrt(2 / (d + e))),
    ],
)
def test_initializers_see_the_right_fan_in(W_init, expected_std, key):
    d, e = (
        3000,
        40,
    )  # very different fan-in and fan-out, so a swapped layout would be off by sqrt(d / e)
    _, params = L.Dense(e, W_init=W_init).init(key, (d,))
    assert params["W"].shape == (e, d)
    assert abs(float(jnp.std(params["W"])) / expected_std(d, e) - 1) < 0.03
    # HWIO kernels: fan-in k1 k2 C, fan-out k1 k2 C'.
    _, conv_params = L.Conv2D(e, 3, W_init=W_init).init(key, (8, 8, d // 9))
    expected = expected_std(9 * (d // 9), 9 * e)
    assert abs(float(jnp.std(conv_params["W"])) / expected - 1) < 0.03


def lax_conv(x, W, strides, pads):
    """XLA's convolution alone, differentiated by JAX's own rules: the reference."""
    return jax.lax.conv_general_dilated(
        x, W, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize(
    "kernel, strides, padding",
    [((3, 3, 1), (1, 1), "same"), ((3, 2, 3), (2, 1), "valid"), ((5, 5, 2), (1, 2), "full")],
)
def test_stencil_convolution_and_its_derivatives_match_xla(kernel, strides, padding, key):
    from jaxnet.layers import _windows as win
    from jaxnet.layers import conv

    kh, kw, c = kernel
    kx, kW, kg, kt = jax.random.split(key, 4)
    x = jax.random.normal(kx, (2, 80, 76, c))
    W = jax.random.normal(kW, (kh, kw, c, 4))
    pads, (h, w) = win.geometry(x.shape[1:3], (kh, kw), strides, padding)
    # 50 taps: XLA's own convolution
    assert conv.uses_stencil(W, 2 * h * w) == (kernel != (5, 5, 2))
    assert not conv.uses_stencil(W, 9 * 8)  # few outputs: XLA's own, whatever the kernel
    y, vjp = jax.vjp(lambda x, W: conv._correlate(x, W, strides, pads), x, W)
    y_ref, vjp_ref = jax.vjp(lambda x, W: lax_conv(x, W, strides, pads), x, W)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        conv.stencil_conv(x, W, strides, pads), y_ref, rtol=1e-12, atol=1e-12
    )
    g = jax.random.normal(kg, y.shape)
    for got, ref in zip(vjp(g), vjp_ref(g)):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    tx, tW = jax.random.normal(kt, x.shape), jax.random.normal(jax.random.fold_in(kt, 1), W.shape)
    _, t = jax.jvp(lambda x, W: conv._correlate(x, W, strides, pads), (x, W), (tx, tW))
    _, t_ref = jax.jvp(lambda x, W: lax_conv(x, W, strides, pads), (x, W), (tx, tW))
    np.testing.assert_allclose(t, t_ref, rtol=1e-12, atol=1e-12)
    # second order: the Hessian-vector product of a scalar of the output in the weights
    hvp = lambda f: jax.jvp(jax.grad(lambda W: jnp.sum(jnp.sin(f(x, W)))), (W,), (tW,))[1]
    np.testing.assert_allclose(
        hvp(lambda x, W: conv._correlate(x, W, strides, pads)),
        hvp(lambda x, W: lax_conv(x, W, strides, pads)),
        rtol=1e-11,
        atol=1e-11,
    )


def test_stencil_convolution_in_bfloat16_adds_up_in_float32(key):
    from jaxnet.layers import conv

    x = jax.random.normal(key, (4, 12, 12, 3), jnp.float32)
    W = jax.random.normal(jax.random.fold_in(key, 1), (3, 3, 3, 8), jnp.float32)
    pads = ((1, 1), (1, 1))
    xb, Wb = x.astype(jnp.bfloat16), W.astype(jnp.bfloat16)
    y = conv.stencil_conv(xb, Wb, (1, 1), pads)
    assert y.dtype == jnp.bfloat16
    # the exact correlation of the rounded inputs, rounded once to bfloat16 (8 significant bits)
    exact = lax_conv(xb.astype(jnp.float64), Wb.astype(jnp.float64), (1, 1), pads)
    err = np.abs(np.asarray(y, np.float64) - np.asarray(exact))
    assert np.all(err <= 2.0**-8 * np.abs(np.asarray(exact)) + 1e-6)


@pytest.mark.parametrize("window", [(2, 2), (3, 2)])
def test_tiled_max_pool_with_nan_and_inf_matches_the_general_path(window, key):
    from jaxnet.layers import pooling

    kh, kw = window
    x = jax.random.randint(key, (2, 2 * kh, 3 * kw, 3), 0, 3).astype(jnp.float64)
    x = x.at[0, 0, 0, 0].set(jnp.nan).at[1, 1, 1, 1].set(jnp.nan)  # NaN wins, as in jnp.max
    x = x.at[0, :kh, :kw, 2].set(-jnp.inf)  # a window of -inf alone: its first input wins
    x = x.at[1, :kh, kw : 2 * kw, 0].set(jnp.inf)
    y = pooling._max_pool(x, window, window, "valid")
    np.testing.assert_array_equal(y, xla_max_pool(x, window, window, "VALID"))
    arg, _, _ = pooling.max_pool_winners(x, window, window, "valid")  # jnp.argmax's first maximum
    t = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    _, y_t = jax.jvp(lambda v: pooling._max_pool(v, window, window, "valid"), (x,), (t,))
    tiles = t.reshape(2, 2, kh, 3, kw, 3).transpose(0, 1, 3, 5, 2, 4).reshape(2, 2, 3, 3, -1)
    np.testing.assert_array_equal(y_t, jnp.take_along_axis(tiles, arg[..., None], -1)[..., 0])
    g = jax.random.normal(jax.random.fold_in(key, 2), y.shape)
    grad = jax.vjp(lambda v: pooling._max_pool(v, window, window, "valid"), x)[1](g)[0]
    np.testing.assert_array_equal(grad, pooling.max_pool_vjp(x, g, window, window, "valid"))
