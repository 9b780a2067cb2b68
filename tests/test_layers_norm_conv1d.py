"""Conv1D, GlobalAvgPool, LayerNorm and BatchNorm.

Their forward passes against flax.linen and torch, their hand-written Jacobians and vjp against
autodiff and finite differences, BatchNorm's state, mask and pmap axis, and their errors.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import layers as L
from jaxnet.verify import check_jacobian, relative_error


def _rng(key):
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())


def _normal(r, shape, scale=1.0):
    return jnp.asarray(scale * r.standard_normal(shape))


def new_layer_cases(r):
    """(description, layer, input_shape) with random hyper-parameters and shapes."""
    k = lambda lo, hi: int(r.integers(lo, hi + 1))
    paddings = ["same", "valid", "full", (k(0, 2), k(0, 2))]
    cases = []
    for i in r.choice(4, 2, replace=False):
        window, stride = k(1, 3), k(1, 3)
        cases.append(
            (
                f"Conv1D k={window} s={stride} {paddings[i]}",
                L.Conv1D(k(1, 3), window, stride, paddings[i]),
                (k(3, 6), k(1, 3)),
            )
        )
    spatial = [k(1, 3) for _ in range(k(1, 2))]
    cases += [
        ("GlobalAvgPool", L.GlobalAvgPool, (*spatial, k(1, 3))),
        ("LayerNorm", L.LayerNorm(float(r.choice([1e-5, 1e-2]))), (*spatial[:-1], k(2, 4))),
        ("BatchNorm (C,)", L.BatchNorm(), (k(1, 3),)),
        ("BatchNorm (..., C)", L.BatchNorm(0.8, 1e-3), (*spatial, k(1, 3))),
    ]
    return cases


def _init_perturbed(layer, key, r, in_shape, batch=3):
    _, params = layer.init(key, in_shape)
    # Perturbed so that zero offsets and unit scales are not special points.
    params = jax.tree_util.tree_map(lambda p: p + 0.3 * _normal(r, p.shape), params)
    return params, _normal(r, (batch,) + tuple(in_shape))


def test_new_layers_jacobians_match_jacrev_jacfwd_and_finite_differences(key):
    r = _rng(key)
    for name, layer, in_shape in new_layer_cases(r):
        params, x = _init_perturbed(layer, key, r, in_shape)
        n = int(r.integers(0, 3))
        J_w, J_x = jax.jit(layer.jacobians, static_argnums=2)(params, x, n)
        coupled = L.couples_batch(layer)  # then J_x is sample n's output against the whole batch
        out_shape = jax.eval_shape(layer.apply, params, x).shape[1:]
        assert J_x.shape == out_shape + (x.shape if coupled else x.shape[1:]), name

        def out_n(args, layer=layer, coupled=coupled):
            p, x_ = args
            return layer.apply(p, x_ if coupled else x.at[n].set(x_))[n]

        point = (params, x if coupled else x[n])
        result = check_jacobian(out_n, (J_w, J_x), point, name=name)
        assert result.passed, (name, in_shape, result)


def test_new_layers_vjp_match_jax_vjp_and_their_jacobians(key):
    r = _rng(key)
    leaves = jax.tree_util.tree_leaves
    for name, layer, in_shape in new_layer_cases(r):
        params, x = _init_perturbed(layer, key, r, in_shape)
        g = _normal(r, jax.eval_shape(layer.apply, params, x).shape)

        @jax.jit
        def compare(params, x, g, layer=layer):
            _, pullback = jax.vjp(layer.apply, params, x)
            # Every sample's Jacobians, n traced as in backprop's fori_loop; eq. (2)-(3): the
            # row vector g_n times them, summed over the batch for the params and, when the
            # layer couples the batch, for the input too.
            J_w, J_x = jax.vmap(lambda n: layer.jacobians(params, x, n))(jnp.arange(x.shape[0]))
            g_J = jax.vmap(lambda g_n, J_n: jnp.tensordot(g_n, J_n, axes=g.ndim - 1), (0, 0))
            g_x = jnp.sum(g_J(g, J_x), 0) if L.couples_batch(layer) else g_J(g, J_x)
            g_w = jax.tree_util.tree_map(lambda J: jnp.sum(g_J(g, J), 0), J_w)
            return pullback(g), layer.vjp(params, x, g), (g_w, g_x)

        reference, hand, from_jacobians = compare(params, x, g)
        for ref in (reference, from_jacobians):
            assert len(leaves(hand)) == len(leaves(ref)), name
            for a, b in zip(leaves(hand), leaves(ref)):
                assert relative_error(a, b) < 1e-12, name


def test_init_shapes_match_apply(key):
    r = _rng(key)
    for name, layer, in_shape in new_layer_cases(r):
        out_shape, params = layer.init(key, in_shape)
        assert L.output_shape(layer, in_shape) == out_shape, name
        y = jax.eval_shape(layer.apply, params, jnp.zeros((2,) + tuple(in_shape)))
        assert y.shape == (2,) + tuple(out_shape), name


# ------------------------------------------------------------------------------------- Conv1D


def test_conv1d_matches_flax_and_a_direct_loop(key):
    r = _rng(key)
    length, c, o = 9, 3, 4
    x = _normal(r, (2, length, c))
    for window, stride, padding, flax_padding in [
        (3, 2, "same", "SAME"),
        (3, 1, "valid", "VALID"),
        (2, 3, "full", [(1, 1)]),
        (4, 2, (2, 1), [(2, 1)]),
    ]:
        layer = L.Conv1D(o, window, stride, padding)
        out_shape, params = layer.init(key, (length, c))
        assert params["W"].shape == (window, c, o) and params["b"].shape == (o,)
        params = {"W": params["W"], "b": _normal(r, (o,))}
        flax_conv = nn.Conv(o, (window,), (stride,), padding=flax_padding)
        y, ref = jax.jit(
            lambda p, x, layer=layer, flax_conv=flax_conv: (
                layer.apply(p, x),
                flax_conv.apply({"params": {"kernel": p["W"], "bias": p["b"]}}, x),
            )
        )(params, x)
        assert y.shape == (2,) + out_shape
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-14)
    # a[n, i, o] = b_o + sum_{p, c} W[p, c, o] x~[n, i s + p, c] with padding (2, 1), s = 2
    xp = np.pad(np.asarray(x), ((0, 0), (2, 1), (0, 0)))
    loop = np.stack(
        [
            np.einsum("npc,pco->no", xp[:, 2 * i : 2 * i + 4], params["W"])
            for i in range(y.shape[1])
        ],
        axis=1,
    )
    np.testing.assert_allclose(y, loop + np.asarray(params["b"]), rtol=1e-12)


def test_conv1d_errors_speak_of_sequences():
    layer = L.Conv1D(2, 3)
    _, params = layer.init(jax.random.PRNGKey(0), (5, 4))
    cases = [
        (
            lambda: layer.init(jax.random.PRNGKey(0), (5, 5, 4)),
            r"Conv1D expects a sequence .*\(L, C\)",
        ),
        (lambda: layer.apply(params, jnp.zeros((2, 1, 5, 4))), r"Conv1D .*sequences \(N, L, C\)"),
        (lambda: layer.apply(params, jnp.zeros((2, 5, 3))), "Conv1D was built for 4 input"),
        (lambda: layer.vjp(params, jnp.zeros((2, 5)), jnp.zeros((2, 3))), r"\(N, L, C\)"),
        (lambda: layer.init(jax.random.PRNGKey(0), (2, 4)), "Conv1D on sequences of length 2"),
        (lambda: L.Conv1D(0, 3), "Conv1D out_channels"),
        (lambda: L.Conv1D(2, (3, 3)), "Conv1D window must be a positive int"),
        (lambda: L.Conv1D(2, 3, 0), "Conv1D strides must be a positive int"),
        (lambda: L.Conv1D(2, 3, 1, ((1, 1), (0, 0))), "Conv1D padding must be"),
        (lambda: L.Conv1D(2, 3, 1, (1, -1)), "Conv1D padding must be"),
        (lambda: L.Conv1D(2, 3, 1, "circular"), "Conv1D padding must be"),
    ]
    for build, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            build()
        assert "\n" not in str(error.value), str(error.value)
    assert L.Conv1D(2, [3], (2,), "SAME").spec == {
        "out_channels": 2,
        "window": (3,),
        "strides": (2,),
        "padding": "SAME",
    }


# ------------------------------------------------------------------------------ GlobalAvgPool


def test_global_avg_pool_is_the_mean_over_positions(key):
    r = _rng(key)
    for shape in [(2, 5, 3), (2, 3, 4, 2), (2, 1, 1)]:
        x = _normal(r, shape)
        y = L.GlobalAvgPool.apply((), x)
        assert L.GlobalAvgPool.init(key, shape[1:])[0] == (shape[-1],)
        np.testing.assert_allclose(
            y, np.asarray(x).reshape(2, -1, shape[-1]).mean(axis=1), rtol=1e-14
        )
        J = L.GlobalAvgPool.jacobians((), x, 1)[1]
        positions = int(np.prod(shape[1:-1]))
        expected = np.broadcast_to(np.eye(shape[-1])[:, None, :], (shape[-1], positions, shape[-1]))
        np.testing.assert_array_equal(J.reshape(expected.shape), expected / positions)
    with pytest.raises(ValueError, match=r"GlobalAvgPool expects .*\(N, L, C\)"):
        L.GlobalAvgPool.apply((), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"GlobalAvgPool expects an input shape"):
        L.GlobalAvgPool.init(key, (3,))


# ---------------------------------------------------------------------------------- LayerNorm


def _layer_norm_case(key, shape=(3, 4, 5)):
    r = _rng(key)
    c = shape[-1]
    params = {"scale": _normal(r, (c,)) + 1, "offset": _normal(r, (c,))}
    return params, _normal(r, shape, 2.0) + 1.5


def test_layer_norm_matches_flax(key):
    params, x = _layer_norm_case(key)
    y = L.LayerNorm().apply(params, x)
    flax_ln = nn.LayerNorm(epsilon=1e-5)
    ref = flax_ln.apply({"params": {"scale": params["scale"], "bias": params["offset"]}}, x)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-13)
    _, init_params = L.LayerNorm().init(key, (4, 5))
    np.testing.assert_array_equal(init_params["scale"], np.ones(5))
    np.testing.assert_array_equal(init_params["offset"], np.zeros(5))


def test_layer_norm_matches_torch(key):
    torch = pytest.importorskip("torch")
    params, x = _layer_norm_case(key)
    ln = torch.nn.LayerNorm(5, eps=1e-3).double()
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(np.array(params["scale"])))
        ln.bias.copy_(torch.from_numpy(np.array(params["offset"])))
        ref = ln(torch.from_numpy(np.array(x))).numpy()
    np.testing.assert_allclose(L.LayerNorm(1e-3).apply(params, x), ref, rtol=1e-12, atol=1e-13)


def test_layer_norm_of_one_feature_or_constant_features_is_the_offset():
    layer = L.LayerNorm()

    @jax.jit
    def outputs(params, x):
        J_x = layer.jacobians(params, x, 0)[1]
        return layer.apply(params, x), J_x, jax.jacrev(lambda v: layer.apply(params, v)[0])(x)

    for shape in [(2, 1), (2, 4)]:
        params = {"scale": jnp.full(shape[-1:], 2.0), "offset": jnp.arange(shape[-1]) * 1.0}
        y, J_x, J_ref = outputs(params, jnp.full(shape, 7.0))
        np.testing.assert_array_equal(y, jnp.broadcast_to(params["offset"], shape))
        assert relative_error(J_x, J_ref[:, 0]) < 1e-12  # the other sample's block is 0


# ---------------------------------------------------------------------------------- BatchNorm


def _batch_norm_case(r, shape):
    c = shape[-1]
    params = {"scale": _normal(r, (c,)) + 1, "offset": _normal(r, (c,))}
    batches = [_normal(r, shape, 2.0) + 1.0 for _ in range(4)]
    return params, batches


def _to_channels_first(x):
    return np.ascontiguousarray(np.moveaxis(np.array(x), -1, 1))


@pytest.mark.parametrize("shape", [(6, 3), (4, 5, 2), (3, 3, 2, 2)])
def test_batch_norm_matches_torch_over_three_steps_then_eval(shape, key):
    torch = pytest.importorskip("torch")
    r = _rng(key)
    decay, eps = 0.7, 1e-3
    params, batches = _batch_norm_case(r, shape)
    layer = L.BatchNorm(decay, eps)
    module = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        shape[-1], eps=eps, momentum=1 - decay
    ).double()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(np.array(params["scale"])))
        module.bias.copy_(torch.from_numpy(np.array(params["offset"])))
    state = L.init_state(layer, shape[1:])
    step = jax.jit(lambda s, x: layer.stateful.apply(params, s, x, train=True))
    for x in batches[:3]:
        y, state = step(state, x)
        module.train()
        with torch.no_grad():
            ref = module(torch.from_numpy(_to_channels_first(x))).numpy()
        np.testing.assert_allclose(_to_channels_first(y), ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(state["mean"], module.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(state["var"], module.running_var.numpy(), rtol=1e-12)
    module.eval()
    y, same_state = layer.stateful.apply(params, state, batches[3], train=False)
    with torch.no_grad():
        ref = module(torch.from_numpy(_to_channels_first(batches[3]))).numpy()
    np.testing.assert_allclose(_to_channels_first(y), ref, rtol=1e-12, atol=1e-12)
    assert same_state is state


def test_batch_norm_matches_flax_over_three_steps_then_eval(key):
    r = _rng(key)
    decay, eps, shape = 0.8, 1e-5, (4, 3, 2)
    params, batches = _batch_norm_case(r, shape)
    layer = L.BatchNorm(decay, eps)
    state = L.init_state(layer, shape[1:])
    flax_params = {"scale": params["scale"], "bias": params["offset"]}
    flax_stats = {"mean": jnp.zeros(2), "var": jnp.ones(2)}
    train_bn = nn.BatchNorm(use_running_average=False, momentum=decay, epsilon=eps)
    unbiased_var = np.ones(2)
    m = shape[0] * shape[1]
    for x in batches[:3]:
        y, state = layer.stateful.apply(params, state, x, train=True)
        ref, updated = train_bn.apply(
            {"params": flax_params, "batch_stats": flax_stats}, x, mutable=["batch_stats"]
        )
        flax_stats = updated["batch_stats"]
        np.testing.assert_allclose(y, ref, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(state["mean"], flax_stats["mean"], rtol=1e-12, atol=1e-14)
        # flax keeps the biased variance in its running average; jaxnet the unbiased one
        batch_var = np.var(np.asarray(x).reshape(-1, 2), axis=0) * m / (m - 1)
        unbiased_var = decay * unbiased_var + (1 - decay) * batch_var
        np.testing.assert_allclose(state["var"], unbiased_var, rtol=1e-12)
    eval_bn = nn.BatchNorm(use_running_average=True, momentum=decay, epsilon=eps)
    ref = eval_bn.apply({"params": flax_params, "batch_stats": state}, batches[3])
    y, _ = layer.stateful.apply(params, state, batches[3])  # train=False by default
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-13)


def test_batch_norm_mask_equals_removing_the_examples(key):
    r = _rng(key)
    params, (x, *_) = _batch_norm_case(r, (6, 3, 2))
    layer = L.BatchNorm(0.6)
    state = {"mean": _normal(r, (2,)), "var": jnp.asarray(r.uniform(0.5, 2.0, 2))}
    keep = np.array([True, False, True, True, False, True])
    garbage = x.at[~keep].set(jnp.nan).at[4, 0, 0].set(jnp.inf)  # padding must not leak
    y, masked_state = layer.stateful.apply(
        params, state, garbage, train=True, mask=jnp.asarray(keep, jnp.float64)
    )
    y_ref, ref_state = layer.stateful.apply(params, state, x[keep], train=True)
    np.testing.assert_allclose(y[keep], y_ref, rtol=1e-13)
    for name in ("mean", "var"):
        np.testing.assert_allclose(masked_state[name], ref_state[name], rtol=1e-13)
    # A weight of 2 counts an example twice; negative weights count as 0.
    weights = jnp.array([2.0, 0.0, 1.0, 1.0, -3.0, 1.0])
    y, weighted_state = layer.stateful.apply(params, state, x, train=True, mask=weights)
    twice = jnp.concatenate([x[:1], x[keep]])
    y_ref, ref_state = layer.stateful.apply(params, state, twice, train=True)
    np.testing.assert_allclose(y[keep], y_ref[1:], rtol=1e-13)
    for name in ("mean", "var"):
        np.testing.assert_allclose(weighted_state[name], ref_state[name], rtol=1e-13)


def test_batch_norm_axis_name_under_pmap_equals_the_whole_batch(key):
    devices = jax.local_device_count()
    assert devices == 8, "conftest sets 8 fake CPU devices"
    r = _rng(key)
    params, (x, *_) = _batch_norm_case(r, (2 * devices, 3, 2))
    x = x + 100.0  # a large mean: the squared deviations are taken about the global mean
    mask = jnp.asarray(r.uniform(size=2 * devices) > 0.3, jnp.float64).at[0].set(1.0)
    layer = L.BatchNorm(0.9)
    state = L.init_state(layer, (3, 2))

    def train(x, mask):
        return layer.stateful.apply(params, state, x, train=True, mask=mask, axis_name="batch")

    shard = lambda a: a.reshape((devices, -1) + a.shape[1:])
    y, new_state = jax.block_until_ready(jax.pmap(train, axis_name="batch")(shard(x), shard(mask)))
    y_ref, ref_state = layer.stateful.apply(params, state, x, train=True, mask=mask)
    assert relative_error(y.reshape(x.shape), y_ref) < 1e-12
    for name in ("mean", "var"):
        for device_state in new_state[name]:  # every device holds the same, global state
            np.testing.assert_allclose(device_state, ref_state[name], rtol=1e-12)


def test_batch_norm_grad_through_stateful_train_apply_equals_the_vjp(key):
    r = _rng(key)
    params, (x, *_) = _batch_norm_case(r, (3, 4, 2))
    layer = L.BatchNorm()
    state = L.init_state(layer, (4, 2))
    g = _normal(r, x.shape)

    def pairing(params, x):
        y, _ = layer.stateful.apply(params, state, x, train=True)
        return jnp.sum(g * y)

    both = jax.jit(lambda p, x: (jax.grad(pairing, argnums=(0, 1))(p, x), layer.vjp(p, x, g)))
    (ref_params, ref_x), (hand_params, hand_x) = both(params, x)
    assert relative_error(hand_x, ref_x) < 1e-12
    for name in ("scale", "offset"):
        assert relative_error(hand_params[name], ref_params[name]) < 1e-12


def test_batch_norm_edge_cases(key):
    r = _rng(key)
    layer = L.BatchNorm(0.0, 1e-5)  # decay 0: the running averages are the batch's
    params = {"scale": _normal(r, (3,)) + 1, "offset": _normal(r, (3,))}
    state = L.init_state(layer, (3,))

    @functools.partial(jax.jit, static_argnums=2)
    def train(x, mask, n):
        y, new_state = layer.stateful.apply(params, state, x, train=True, mask=mask)
        J_x = layer.jacobians(params, x, n)[1]
        return y, new_state, J_x, jax.jacrev(lambda v: layer.apply(params, v)[n])(x)

    # a batch of one vector: m = 1, so the output is the offset and the biased variance 0 is kept
    x = _normal(r, (1, 3))
    y, new_state, J_x, J_ref = train(x, jnp.ones(1), 0)
    np.testing.assert_allclose(y[0], params["offset"], atol=1e-12)
    np.testing.assert_allclose(new_state["mean"], x[0], rtol=1e-15)
    np.testing.assert_array_equal(new_state["var"], np.zeros(3))
    np.testing.assert_allclose(J_x, J_ref, atol=1e-12)
    # a constant channel: variance 0, output the offset, derivatives finite
    x = _normal(r, (4, 3)).at[:, 1].set(2.5)
    y, _, J_x, J_ref = train(x, jnp.ones(4), 2)
    np.testing.assert_allclose(y[:, 1], params["offset"][1], rtol=1e-15)
    assert np.isfinite(J_x).all() and relative_error(J_x, J_ref) < 1e-12
    # an all-padding batch changes nothing and stays finite
    y, kept, _, _ = train(x, jnp.zeros(4), 2)
    assert np.isfinite(y).all()
    for name in ("mean", "var"):
        np.testing.assert_array_equal(kept[name], state[name])


def test_batch_norm_spec_state_and_contract(key):
    layer = L.BatchNorm()
    assert layer.spec == {"decay": 0.9, "eps": 1e-5, "couples_batch": True}
    assert L.couples_batch(layer) and L.has_state(layer)
    assert not L.couples_batch(L.LayerNorm()) and L.LayerNorm().spec == {"eps": 1e-5}
    state = L.init_state(layer, (5, 4))
    np.testing.assert_array_equal(state["mean"], np.zeros(4))
    np.testing.assert_array_equal(state["var"], np.ones(4))
    assert state["mean"].dtype == state["var"].dtype == jnp.float64
    out_shape, params = layer.init(key, (5, 4))
    assert out_shape == (5, 4) and params["scale"].shape == params["offset"].shape == (4,)


def test_normalization_bad_inputs_raise_one_line_errors(key):
    bn, ln = L.BatchNorm(), L.LayerNorm()
    _, params = bn.init(key, (3,))
    state = bn.stateful.init_state((3,))
    x = jnp.zeros((4, 3))
    cases = [
        (lambda: bn.apply(params, jnp.zeros((4, 2))), r"BatchNorm was built for 3 channels"),
        (lambda: bn.stateful.apply(params, state, jnp.zeros((4, 5, 2)), train=True), "3 channels"),
        (lambda: bn.vjp(params, jnp.zeros(3), jnp.zeros(3)), r"\(N, \.\.\., 3\)"),
        (lambda: ln.apply(params, jnp.zeros((4, 2))), r"LayerNorm was built for 3 channels"),
        (lambda: bn.stateful.apply(params, state, x, train=True, mask=jnp.ones(3)), r"\(N,\)"),
        (lambda: bn.stateful.apply(params, {"mean": jnp.zeros(2)}, x), "BatchNorm state"),
        (lambda: bn.init(key, ()), "BatchNorm expects an input shape"),
        (lambda: bn.stateful.init_state(()), "BatchNorm expects an input shape"),
        (lambda: L.BatchNorm(1.0), r"BatchNorm decay must be in \[0, 1\)"),
        (lambda: L.BatchNorm(-0.1), r"BatchNorm decay must be in \[0, 1\)"),
        (lambda: L.BatchNorm(0.9, 0.0), "BatchNorm eps must be a positive"),
        (lambda: L.BatchNorm(0.9, -1e-5), "BatchNorm eps must be a positive"),
        (lambda: L.LayerNorm(float("nan")), "LayerNorm eps must be a positive"),
        (lambda: L.LayerNorm(True), "LayerNorm eps must be a positive"),
    ]
    for build, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            build()
        assert "\n" not in str(error.value), str(error.value)


def _plain_batch_standardise(x, weights, eps):
    """The same function with no derivative rule: autodiff of every weighted sum."""
    from jaxnet.layers import normalization as N

    mean, var, count = N._moments(x, weights, None)
    xhat, _ = N.standardise(x, N.per_channel(mean, x.ndim), N.per_channel(var, x.ndim), eps)
    return xhat, mean, var, count


def test_batch_standardise_derivative_rule_equals_autodiff_of_its_sums(key):
    from jaxnet.layers.normalization import batch_standardise

    r = _rng(key)
    n, eps = int(r.integers(4, 8)), float(r.choice([1e-5, 0.1]))
    x = _normal(r, (n, int(r.integers(1, 4)), 2), 2.0) + 1.0
    weights = jnp.asarray(r.choice([0.0, 0.5, 1.0, 2.0], n)).at[0].set(1.0).reshape(n, 1, 1)
    rule = lambda x, w: batch_standardise(x, w, eps)
    plain = lambda x, w: _plain_batch_standardise(x, w, eps)
    scalar = lambda f: lambda x: jnp.sum(jnp.sin(f(x, weights)[0]) * x)

    @jax.jit  # one program: derivatives op by op would compile a kernel per operation
    def derivatives(x, weights):
        return [
            (jax.jacrev(rule)(x, weights), jax.jacrev(plain)(x, weights)),
            (jax.jacfwd(rule)(x, weights), jax.jacfwd(plain)(x, weights)),
            (jax.jacrev(rule, 1)(x, weights), jax.jacfwd(plain, 1)(x, weights)),
            ((jax.hessian(scalar(rule))(x),), (jax.hessian(scalar(plain))(x),)),
        ]

    *on_x, on_weights, hessians = derivatives(x, weights)
    for got_all, want_all in on_x:
        for got, want in zip(got_all, want_all):
            assert relative_error(got, want) < 1e-12
    # the weights' derivative where they count (at w = 0 the forward pass has none)
    counted = np.asarray(weights).ravel() > 0
    for got, want in zip(*on_weights):
        assert relative_error(got[..., counted, 0, 0], want[..., counted, 0, 0]) < 1e-12
    assert relative_error(hessians[0][0], hessians[1][0]) < 1e-11


def test_batch_norm_padding_stays_out_of_every_derivative(key):
    """Padding (weight 0) changes no counted output, so its derivatives are exactly 0."""
    r = _rng(key)
    params, (x, *_) = _batch_norm_case(r, (5, 3, 2))
    layer, keep = L.BatchNorm(), np.array([True, True, False, True, False])
    state = L.init_state(layer, (3, 2))
    garbage = x.at[~keep].set(_normal(r, (2, 3, 2), 1e4))
    mask = jnp.asarray(keep, jnp.float64)

    def counted_output(x):
        y, _ = layer.stateful.apply(params, state, x, train=True, mask=mask)
        return y[keep]

    def reference(x):
        y, _ = layer.stateful.apply(params, state, x, train=True)
        return y

    want = jax.jit(jax.jacrev(reference))(x[keep])
    for transform in (jax.jacrev, jax.jacfwd):
        got = jax.jit(transform(counted_output))(garbage)
        assert relative_error(got[..., keep, :, :], want) < 1e-12
        np.testing.assert_array_equal(got[..., ~keep, :, :], 0.0)
