"""Elman and GRU layers against flax.linen and torch, and their BPTT against autodiff and FD."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import backprop, losses
from jaxnet import layers as L
from jaxnet.verify import check_jacobian, relative_error

LAYERS = {"Elman": L.Elman, "GRU": L.GRU}


def _rng(key):
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())


def _setup(layer, rng, steps, channels, batch=3, scale=0.6):
    """Random params of the layer's shapes (no zero biases) and a random batch, from numpy."""
    init = lambda k: layer.init(k, (steps, channels))[1]
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    params = {k: jnp.asarray(scale * rng.standard_normal(p.shape)) for k, p in shapes.items()}
    return params, jnp.asarray(rng.standard_normal((batch, steps, channels)))


def _random_case(name, return_sequence, rng):
    """The layer with a small random hidden size, and a random sequence length and width."""
    hidden, steps, channels = (int(v) for v in rng.integers(1, [5, 7, 4]))
    return LAYERS[name](hidden, return_sequence), steps, channels


BOTH_MODES = [(name, mode) for name in LAYERS for mode in (False, True)]


def _to_flax(name, params):
    """jaxnet's rows-by-output params as flax's kernels (inputs first)."""
    if name == "Elman":
        cell = {"i": {"kernel": params["W"].T, "bias": params["b"]}, "h": {"kernel": params["U"].T}}
    else:
        cell = {
            "ir": {"kernel": params["W_r"].T, "bias": params["b_r"]},
            "iz": {"kernel": params["W_z"].T, "bias": params["b_z"]},
            "in": {"kernel": params["W_n"].T, "bias": params["b_in"]},
            "hr": {"kernel": params["U_r"].T},
            "hz": {"kernel": params["U_z"].T},
            "hn": {"kernel": params["U_n"].T, "bias": params["b_hn"]},
        }
    return {"params": {"cell": cell}}


def test_forward_matches_flax_rnn_over_simple_cell_and_gru_cell(key):
    rng = _rng(key)
    for name, flax_cell in (("Elman", nn.SimpleCell), ("GRU", nn.GRUCell)):
        params, x = _setup(LAYERS[name](4, True), rng, 5, 3)
        reference = nn.RNN(flax_cell(4, param_dtype=jnp.float64)).apply(_to_flax(name, params), x)
        np.testing.assert_allclose(LAYERS[name](4, True).apply(params, x), reference, rtol=1e-12)
        np.testing.assert_allclose(LAYERS[name](4).apply(params, x), reference[:, -1], rtol=1e-12)


def _to_torch(name, params, torch):
    """torch.nn.RNN / GRU weights: gates stacked [r, z, n], r's and z's bias in bias_ih."""
    t = lambda a: torch.tensor(np.asarray(a))
    if name == "Elman":
        return t(params["W"]), t(params["U"]), t(params["b"]), t(0 * params["b"])
    stack = lambda *names: t(np.concatenate([params[n] for n in names]))
    zero = 0 * params["b_hn"]
    return (
        stack("W_r", "W_z", "W_n"),
        stack("U_r", "U_z", "U_n"),
        stack("b_r", "b_z", "b_in"),
        t(np.concatenate([zero, zero, params["b_hn"]])),
    )


def test_forward_matches_torch_rnn_and_gru(key):
    torch = pytest.importorskip("torch")
    rng = _rng(key)
    for name, module in (("Elman", torch.nn.RNN), ("GRU", torch.nn.GRU)):
        params, x = _setup(LAYERS[name](4), rng, 6, 3)
        net = module(3, 4, batch_first=True).double()
        with torch.no_grad():
            for tensor, value in zip(
                (net.weight_ih_l0, net.weight_hh_l0, net.bias_ih_l0, net.bias_hh_l0),
                _to_torch(name, params, torch),
            ):
                tensor.copy_(value)
            sequence, h_last = net(torch.tensor(np.asarray(x)))
        np.testing.assert_allclose(LAYERS[name](4, True).apply(params, x), sequence, rtol=1e-12)
        np.testing.assert_allclose(LAYERS[name](4).apply(params, x), h_last[0], rtol=1e-12)


@pytest.mark.parametrize("name, return_sequence", BOTH_MODES)
def test_jacobians_match_jacrev_jacfwd_and_finite_differences(name, return_sequence, key):
    rng = _rng(key)
    layer, steps, channels = _random_case(name, return_sequence, rng)
    params, x = _setup(layer, rng, steps, channels)
    n = int(rng.integers(3))
    J_w, J_x = jax.jit(layer.jacobians, static_argnums=2)(params, x, n)
    # One check over (params, x_n) together: d out / d params and d out / d input.
    on_both = lambda p_x: layer.apply(p_x[0], x.at[n].set(p_x[1]))[n]
    result = check_jacobian(on_both, (J_w, J_x), (params, x[n]))
    assert result.passed, (layer.spec, steps, channels, result)


def _vjps_and_jacobians(layer, params, x, g):
    """(jax.vjp's pullback of g, the layer's vjp of g, its jacobians for every sample)."""
    _, pullback = jax.vjp(layer.apply, params, x)
    jacobians = jax.vmap(lambda n: layer.jacobians(params, x, n))(jnp.arange(x.shape[0]))
    return pullback(g), layer.vjp(params, x, g), jacobians


@pytest.mark.parametrize("name, return_sequence", BOTH_MODES)
def test_vjp_matches_jax_vjp_and_the_jacobians(name, return_sequence, key):
    rng = _rng(key)
    layer, steps, channels = _random_case(name, return_sequence, rng)
    params, x = _setup(layer, rng, steps, channels)
    g = jnp.asarray(rng.standard_normal(jax.eval_shape(layer.apply, params, x).shape))
    (ref_w, ref_x), (hand_w, hand_x), (J_w, J_x) = jax.jit(_vjps_and_jacobians, static_argnums=0)(
        layer, params, x, g
    )
    assert relative_error(hand_x, ref_x) < 1e-12
    assert set(hand_w) == set(params)
    contract = g.ndim - 1
    for leaf in params:
        assert relative_error(hand_w[leaf], ref_w[leaf]) < 1e-12, leaf
        # eq. (2) summed over the batch: sum_n g_n J_params(n)
        from_jacobians = sum(np.tensordot(g[i], J_w[leaf][i], contract) for i in range(3))
        assert relative_error(hand_w[leaf], from_jacobians) < 1e-12, leaf
    for i in range(x.shape[0]):
        assert relative_error(hand_x[i], np.tensordot(g[i], J_x[i], contract)) < 1e-12


@pytest.mark.parametrize("name, return_sequence", [("Elman", False), ("GRU", True)])
def test_bptt_through_60_steps_matches_jax_grad(name, return_sequence, key):
    """A long sequence: the hand-written recursion stays finite and agrees with jax.grad."""
    rng = _rng(key)
    layer = LAYERS[name](4, return_sequence)
    params, x = _setup(layer, rng, 60, 2, batch=2, scale=0.5)
    c = jnp.asarray(rng.standard_normal(jax.eval_shape(layer.apply, params, x).shape))

    @jax.jit
    def both(params, x):
        risk = lambda p, x_: jnp.sum(c * layer.apply(p, x_))
        return jax.grad(risk, argnums=(0, 1))(params, x), layer.vjp(params, x, c)

    (ref_w, ref_x), (hand_w, hand_x) = both(params, x)
    assert np.isfinite(np.asarray(hand_x)).all()
    assert relative_error(hand_x, ref_x) < 1e-10
    for leaf in params:
        assert np.isfinite(np.asarray(hand_w[leaf])).all(), leaf
        assert relative_error(hand_w[leaf], ref_w[leaf]) < 1e-10, leaf
    # The first input's gradient has passed through 59 later steps; for Elman it is tiny (it
    # vanishes geometrically) but still right on its own scale, not flushed to 0 or NaN.
    assert np.abs(np.asarray(hand_x[:, 0])).max() > 0
    assert relative_error(hand_x[:, 0], ref_x[:, 0]) < 1e-10


def _one_step_reference(name, p, x_1):
    """The cell on h_0 = 0 by hand: tanh(W x + b), or (1 - z) n with r, z, n of h = 0."""
    affine = lambda W, b: x_1 @ np.asarray(p[W]).T + np.asarray(p[b])[None, :]
    if name == "Elman":
        return np.tanh(affine("W", "b"))
    sigmoid = lambda a: 1 / (1 + np.exp(-a))
    r, z = sigmoid(affine("W_r", "b_r")), sigmoid(affine("W_z", "b_z"))
    return (1 - z) * np.tanh(affine("W_n", "b_in") + r * np.asarray(p["b_hn"])[None, :])


@pytest.mark.parametrize("name", LAYERS)
def test_single_step_is_the_cell_on_a_zero_state(name, key):
    """T = 1: the cell once from h_0 = 0; U gets no gradient and jacobians equal jacrev's."""
    rng = _rng(key)
    layer, last = LAYERS[name](3, True), LAYERS[name](3)  # h_T alone is h_1
    params, x = _setup(layer, rng, 1, 2)
    g = jnp.asarray(rng.standard_normal((3, 1, 3)))

    @jax.jit
    def everything(params, x, g):
        reference = jax.jacrev(lambda p, x_0: layer.apply(p, x.at[0].set(x_0))[0], (0, 1))
        outputs = layer.apply(params, x), last.apply(params, x)
        vjps = layer.vjp(params, x, g), last.vjp(params, x, g[:, 0])
        return outputs, vjps, layer.jacobians(params, x, 0), reference(params, x[0])

    (y, y_last), ((grads, g_x), (_, g_x_last)), (J_w, J_x), (ref_w, ref_x) = everything(
        params, x, g
    )
    expected = _one_step_reference(name, params, np.asarray(x[:, 0]))
    np.testing.assert_allclose(y[:, 0], expected, rtol=1e-13)
    assert relative_error(J_x, ref_x) < 1e-13
    for leaf in params:
        assert relative_error(J_w[leaf], ref_w[leaf]) < 1e-13, leaf
        if leaf.startswith("U"):
            np.testing.assert_array_equal(grads[leaf], 0)
    np.testing.assert_allclose(y_last, y[:, 0], rtol=1e-15)
    np.testing.assert_allclose(g_x_last, g_x, rtol=1e-14)


@pytest.mark.parametrize("name", LAYERS)
def test_init_shapes_spec_and_initialisers(name, key):
    out_shape, params = jax.jit(LAYERS[name](3).init, static_argnums=1)(key, (5, 2))
    assert out_shape == (3,)
    expected = ["W", "U", "b"] if name == "Elman" else ["W_r", "W_z", "W_n", "U_r", "U_z", "U_n"]
    expected += [] if name == "Elman" else ["b_r", "b_z", "b_in", "b_hn"]
    assert sorted(params) == sorted(expected)
    for leaf, p in params.items():
        assert p.shape == {"W": (3, 2), "U": (3, 3), "b": (3,)}[leaf[0]], leaf
        assert p.dtype == jnp.float64, leaf
        if leaf[0] == "U":  # orthogonal by default
            np.testing.assert_allclose(p @ p.T, np.eye(3), atol=1e-13)
        if leaf[0] == "b":
            np.testing.assert_array_equal(p, 0)
    for return_sequence in (False, True):
        layer = LAYERS[name](3, return_sequence)
        out_shape = (5, 3) if return_sequence else (3,)
        assert L.output_shape(layer, (5, 2)) == out_shape
        assert layer.spec == {"hidden": 3, "return_sequence": return_sequence}
        x = jax.ShapeDtypeStruct((2, 5, 2), jnp.float64)
        assert jax.eval_shape(layer.apply, params, x).shape == (2,) + out_shape


def _one_line_error(error, match, call):
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_bad_inputs_raise_one_line_errors(key):
    for name, make in LAYERS.items():
        layer = make(3)
        params, _ = _setup(layer, _rng(key), 4, 2)
        _one_line_error(
            ValueError,
            r"expects input \(N, T, 2\).*got \(5, 2\)",
            lambda: layer.apply(params, jnp.zeros((5, 2))),
        )
        _one_line_error(
            ValueError,
            r"\(N, T, 2\).*got \(5, 4, 3\)",
            lambda: layer.apply(params, jnp.zeros((5, 4, 3))),
        )
        _one_line_error(
            ValueError,
            r"T >= 1.*got \(5, 0, 2\)",
            lambda: layer.vjp(params, jnp.zeros((5, 0, 2)), jnp.zeros((5, 3))),
        )
        _one_line_error(
            ValueError,
            r"g of shape \(5, 3\), got \(5, 4, 3\)",
            lambda: layer.vjp(params, jnp.zeros((5, 4, 2)), jnp.zeros((5, 4, 3))),
        )
        _one_line_error(
            ValueError, r"sequence input shape \(T, C\).*got \(4,\)", lambda: layer.init(key, (4,))
        )
        for hidden in (0, -2, 2.5, True):
            _one_line_error(
                ValueError,
                f"{name} hidden must be a positive int, got {hidden!r}",
                lambda: make(hidden),
            )
        for flag in (1, "yes", None):
            _one_line_error(
                TypeError,
                f"{name} return_sequence must be a bool, got {flag!r}",
                lambda: make(3, flag),
            )


def test_backprop_both_forms_through_a_recurrent_network(key):
    """Algorithm 1 (explicit BPTT Jacobians) and the batched vjp form against jax.grad.

    A sequence-returning layer feeds a second one: its vjp gets a g at every step.
    """
    rng = _rng(key)
    net = L.serial(L.Elman(3, True), L.Elman(2), L.Dense(2))
    _, params = jax.jit(net.init, static_argnums=1)(key, (4, 2))
    x = jnp.asarray(rng.standard_normal((5, 4, 2)))
    y = jnp.asarray(rng.integers(0, 2, (5,)))
    loss = losses.CROSS_ENTROPY_FROM_LOGITS

    @jax.jit
    def gradients(params):
        reference = jax.grad(lambda p: losses.risk(loss, net.apply(p, x), y))(params)
        forms = [
            form(net, params, x, y, loss) for form in (backprop.backprop, backprop.backprop_batched)
        ]
        return reference, forms

    reference, forms = gradients(params)
    for grads in forms:
        for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(reference)):
            assert relative_error(a, b) < 1e-12


def test_elman_network_learns_the_sign_of_a_noisy_sum(key):
    """serial(Elman, Dense) trained by BPTT (backprop_batched) and SGD: the loss drops.

    The gradient's norm is clipped at 1, as RNNs are usually trained: with 4 units, 150 plain
    steps left 3 of 40 random initialisations short of the bar, some with exploding steps;
    8 units, clipping and 300 steps reached it for 120 of 120.
    """
    rng = _rng(key)
    net = L.serial(L.Elman(8), L.Dense(2))
    _, params = jax.jit(net.init, static_argnums=1)(key, (6, 1))
    x = rng.standard_normal((128, 6, 1))
    x, y = jnp.asarray(x), jnp.asarray((x.sum(axis=(1, 2)) > 0).astype(np.int32))
    loss = losses.CROSS_ENTROPY_FROM_LOGITS

    @jax.jit
    def train(params):
        def step(p, _):
            grads = backprop.backprop_batched(net, p, x, y, loss)
            norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
            rate = 0.5 * jnp.minimum(1.0, 1.0 / norm)
            return jax.tree_util.tree_map(lambda w, d: w - rate * d, p, grads), None

        return jax.lax.scan(step, params, None, length=300)[0]

    risk_and_accuracy = jax.jit(
        lambda p: (
            losses.risk(loss, net.apply(p, x), y),
            jnp.mean(jnp.argmax(net.apply(p, x), 1) == y),
        )
    )
    before, _ = risk_and_accuracy(params)
    after, accuracy = risk_and_accuracy(train(params))
    assert after < 0.5 * before, (before, after)
    assert accuracy > 0.85, accuracy
