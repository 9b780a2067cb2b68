"""Branching and residual networks: the combinators' Jacobians and vjps against autodiff.

And back-propagation through them (both forms), including a layer that couples the batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.example_libraries import stax

from jaxnet import backprop, losses
from jaxnet import layers as L
from jaxnet.layers.base import Layer, Stateful, is_shape, sample
from jaxnet.verify import check_jacobian, relative_error

# ----------------------------------------------------------- a small layer that couples the batch


def Center(momentum: float = 0.5) -> Layer:
    """y_n = s * (x_n - mean_m x_m) entrywise: sample n's output depends on every sample.

    A miniature BatchNorm for the tests, with a running mean as its state.
    """

    def init(key, input_shape):
        return tuple(input_shape), {"s": 1.0 + jax.random.normal(key, tuple(input_shape))}

    def centred(x, mean):
        return x - mean[None]

    def apply(params, x, *, key=None):
        return params["s"][None] * centred(x, jnp.mean(x, axis=0))

    def jacobians(params, x, n, *, key=None):
        """dy_n,i/dx_m,j = s_i delta_ij (delta_nm - 1/N);  dy_n,i/ds_q = delta_iq (x_n - mu)_i."""
        shape, size, count = x.shape[1:], x[0].size, x.shape[0]
        coupling = (jnp.arange(count) == n) - 1.0 / count
        diag_s = jnp.diag(params["s"].reshape(size))
        J_x = diag_s[:, None, :] * coupling[None, :, None]
        c_n = centred(x, jnp.mean(x, axis=0))[n].reshape(size)
        return (
            {"s": jnp.diag(c_n).reshape(shape + shape)},
            J_x.reshape(shape + (count,) + shape),
        )

    def vjp(params, x, g, *, key=None):
        """g_s = sum_n g_n (x_n - mu);  g_x = s g - mean_n(s g)."""
        sg = params["s"][None] * g
        g_s = jnp.sum(g * centred(x, jnp.mean(x, axis=0)), axis=0)
        return {"s": g_s}, sg - jnp.mean(sg, axis=0)[None]

    def init_state(input_shape):
        return {"mean": jnp.zeros(tuple(input_shape))}

    def apply_state(params, state, x, *, key=None, train=False, mask=None, axis_name=None):
        if not train:
            return params["s"][None] * centred(x, state["mean"]), state
        mean = jnp.mean(x, axis=0)
        running = momentum * state["mean"] + (1 - momentum) * mean
        return params["s"][None] * centred(x, mean), {"mean": running}

    spec = {"momentum": momentum, "couples_batch": True}
    return Layer("center", init, apply, jacobians, vjp, spec, Stateful(init_state, apply_state))


# ------------------------------------------------------------------------------------ helpers


def _rng(key):
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())


def _batch(rng, batch, shape):
    if is_shape(shape):
        return jnp.asarray(rng.standard_normal((batch,) + tuple(shape)))
    return tuple(_batch(rng, batch, s) for s in shape)


def _setup(layer, in_shape, key, batch=3):
    rng = _rng(key)
    out_shape, params = layer.init(key, in_shape)
    params = jax.tree_util.tree_map(lambda p: p + 0.3 * rng.standard_normal(p.shape), params)
    return out_shape, params, _batch(rng, batch, in_shape), rng


def _assert_trees_close(a, b, tol=1e-12):
    """Leafwise max |a - b| within tol of the largest entry of b anywhere in the tree.

    One scale for the tree: a gradient that is 0 in exact arithmetic (a bias before a centring
    layer) comes out as rounding noise in both.
    """
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    scale = max((float(jnp.max(jnp.abs(v))) for v in leaves_b if v.size), default=0.0)
    for u, v in zip(leaves_a, leaves_b):
        assert u.shape == v.shape
        assert float(jnp.max(jnp.abs(u - v), initial=0.0)) <= tol * scale, relative_error(u, v)


def _conv_same(channels=2):
    return L.Conv2D(channels, 3, 1, "same")


CASES = {
    "FanOut(3)": (lambda: L.FanOut(3), (4,)),
    "FanOut(2) of a tuple": (lambda: L.FanOut(2), ((3,), (2, 2))),
    "FanInSum": (lambda: L.FanInSum, ((3, 2), (3, 2), (3, 2))),
    "FanInConcat(-1)": (lambda: L.FanInConcat(), ((2, 2, 3), (2, 2, 1))),
    "FanInConcat(0)": (lambda: L.FanInConcat(0), ((2, 3), (1, 3), (2, 3))),
    "FanInConcat(-2)": (lambda: L.FanInConcat(-2), ((2, 1, 2), (2, 3, 2))),
    "parallel(Dense, Tanh)": (lambda: L.parallel(L.Dense(3), L.Tanh), ((4,), (2,))),
    "parallel(Conv2D, serial(Flatten, Dense))": (
        lambda: L.parallel(_conv_same(), L.serial(L.Flatten, L.Dense(2))),
        ((3, 3, 1), (2, 2)),
    ),
    "parallel of a tuple branch": (
        lambda: L.parallel(L.FanOut(2), L.Dense(2)),
        ((3,), (4,)),
    ),
    "serial(Dense, Tanh, Dense)": (lambda: L.serial(L.Dense(4), L.Tanh, L.Dense(2)), (3,)),
    "serial to a tuple": (
        lambda: L.serial(L.Dense(3), L.FanOut(2), L.parallel(L.Dense(2), L.Sigmoid)),
        (4,),
    ),
    "two branches": (
        lambda: L.serial(
            L.FanOut(2), L.parallel(L.Dense(2), L.serial(L.Dense(3), L.Tanh)), L.FanInConcat()
        ),
        (4,),
    ),
    "Residual(Dense, Tanh)": (lambda: L.Residual(L.Dense(4), L.Tanh), (4,)),
    "Residual(Conv2D, Relu, Conv2D)": (
        lambda: L.Residual(_conv_same(1), L.Relu, _conv_same(1)),
        (3, 3, 1),
    ),
    "nested Residual": (
        lambda: L.Residual(L.Residual(L.Dense(3), L.Tanh), L.Dense(3), L.Sigmoid),
        (3,),
    ),
    "Residual of a tuple": (
        lambda: L.Residual(L.parallel(L.Tanh, L.Dense(2))),
        ((3,), (2,)),
    ),
    "Center (couples the batch)": (lambda: Center(), (3,)),
    "serial(Dense, Center, Tanh)": (lambda: L.serial(L.Dense(3), Center(), L.Tanh), (2,)),
    "Residual(Dense, Center, Tanh)": (lambda: L.Residual(L.Dense(3), Center(), L.Tanh), (3,)),
    "parallel(Center, Dense)": (lambda: L.parallel(Center(), L.Dense(2)), ((2,), (3,))),
}


# -------------------------------------------------------------------------- Jacobians and vjps


@pytest.mark.parametrize("case", list(CASES))
def test_jacobians_match_jacrev_jacfwd_and_finite_differences(case, key):
    make, in_shape = CASES[case]
    layer = make()
    _, params, x, _ = _setup(layer, in_shape, key)
    n = 1
    J_w, J_x = jax.jit(layer.jacobians, static_argnums=2)(params, x, n)
    if L.couples_batch(layer):  # sample n's output against the whole batch

        def on_input(x_):
            return sample(layer.apply(params, x_), n)

        at = x
    else:

        def on_input(x_n):
            return sample(
                layer.apply(
                    params, jax.tree_util.tree_map(lambda a, a_n: a.at[n].set(a_n), x, x_n)
                ),
                n,
            )

        at = sample(x, n)
    result = check_jacobian(on_input, J_x, at, name=case)
    assert result.passed, result
    if jax.tree_util.tree_leaves(params):
        result = check_jacobian(lambda p: sample(layer.apply(p, x), n), J_w, params, name=case)
        assert result.passed, result


@pytest.mark.parametrize("case", list(CASES))
def test_vjp_matches_jax_vjp(case, key):
    make, in_shape = CASES[case]
    layer = make()
    _, params, x, rng = _setup(layer, in_shape, key)
    y = layer.apply(params, x)
    g = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), y)

    @jax.jit
    def both(params, x, g):
        _, pullback = jax.vjp(layer.apply, params, x)
        return layer.vjp(params, x, g), pullback(g)

    hand, ref = both(params, x, g)
    _assert_trees_close(hand, ref)


def test_init_shapes_match_apply_and_output_shape(key):
    for i, (case, (make, in_shape)) in enumerate(CASES.items()):
        layer = make()
        out_shape, params, x, _ = _setup(layer, in_shape, jax.random.fold_in(key, i))
        y_shapes = jax.tree_util.tree_map(lambda a: a.shape[1:], layer.apply(params, x))
        assert y_shapes == out_shape, case
        assert L.output_shape(layer, in_shape) == out_shape, case


def test_forward_values_match_stax(key):
    x = jax.random.normal(key, (3, 2, 4))
    for mine, ref in [
        (
            L.serial(L.FanOut(3), L.parallel(L.Tanh, L.Relu, L.Sigmoid), L.FanInConcat(0)),
            stax.serial(
                stax.FanOut(3),
                stax.parallel(stax.Tanh, stax.Relu, stax.Sigmoid),
                stax.FanInConcat(1),
            ),
        ),
        (
            L.serial(L.FanOut(2), L.parallel(L.Tanh, L.Identity), L.FanInSum),
            stax.serial(stax.FanOut(2), stax.parallel(stax.Tanh, stax.Identity), stax.FanInSum),
        ),
    ]:
        out_shape, params = mine.init(key, (2, 4))
        ref_shape, ref_params = ref[0](key, (3, 2, 4))
        assert (3,) + out_shape == ref_shape
        np.testing.assert_array_equal(mine.apply(params, x), ref[1](ref_params, x))


def test_residual_adds_the_skip_and_fan_out_vjp_sums_its_consumers(key):
    _, params, x, rng = _setup(L.Residual(L.Dense(3), L.Tanh), (3,), key)
    W, b = params[0]["W"], params[0]["b"]
    f_x = jnp.tanh(x @ W.T + b[None])
    np.testing.assert_allclose(L.Residual(L.Dense(3), L.Tanh).apply(params, x), x + f_x, rtol=1e-14)
    # x -> W1 x + W2 x: dl/dx = g W1 + g W2, the sum over FanOut's two consumers
    net = L.serial(L.FanOut(2), L.parallel(L.Dense(2), L.Dense(2)), L.FanInSum)
    _, p = net.init(key, (3,))
    g = jnp.asarray(rng.standard_normal((3, 2)))
    _, g_x = net.vjp(p, x, g)
    np.testing.assert_allclose(g_x, g @ p[1][0]["W"] + g @ p[1][1]["W"], rtol=1e-13)


# --------------------------------------------------------------------------- back-propagation


def _both_forms_vs_jax_grad(net, in_shape, key, batch=4, loss=losses.CROSS_ENTROPY_FROM_LOGITS):
    out_shape, params, x, rng = _setup(net, in_shape, key, batch)
    y = jnp.asarray(rng.integers(0, out_shape[0], (batch,)))

    @jax.jit
    def grads(params, x, y):
        ref = jax.grad(lambda p: losses.risk(loss, net.apply(p, x), y))(params)
        return (
            ref,
            backprop.backprop(net, params, x, y, loss),
            backprop.backprop_batched(net, params, x, y, loss),
        )

    ref, per_sample, batched = grads(params, x, y)
    _assert_trees_close(per_sample, ref)
    _assert_trees_close(batched, ref)


def test_resnet_block_through_both_forms_of_backprop(key):
    net = L.serial(
        L.Conv2D(2, 3, 1, "same"),
        L.Relu,
        L.Residual(_conv_same(), L.Relu, _conv_same()),
        L.MaxPool(2),
        L.Flatten,
        L.Dense(3),
    )
    _both_forms_vs_jax_grad(net, (4, 4, 1), key, batch=3)  # FD: python -m jaxnet.verify


def test_two_branch_net_through_both_forms_of_backprop(key):
    net = L.serial(
        L.FanOut(2),
        L.parallel(L.Dense(4), L.serial(L.Dense(3), L.Tanh)),
        L.FanInConcat(),
        L.Dense(3),
    )
    _both_forms_vs_jax_grad(net, (5,), key)


def test_nested_residual_through_both_forms_of_backprop(key):
    net = L.serial(
        L.Dense(4),
        L.Residual(L.Residual(L.Dense(4), L.Tanh), L.Dense(4), L.Swish()),
        L.Residual(L.Sigmoid),
        L.Dense(3),
    )
    _both_forms_vs_jax_grad(net, (3,), key)


COUPLED_NETS = {
    "MLP with Center": lambda: L.serial(L.Dense(4), Center(), L.Tanh, L.Dense(3)),
    "Center first": lambda: L.serial(Center(), L.Dense(4), L.Sigmoid, L.Dense(3)),
    "two Centers": lambda: L.serial(L.Dense(4), Center(), L.Relu, L.Dense(4), Center(), L.Dense(3)),
    "residual net": lambda: L.serial(
        L.Dense(4), L.Residual(L.Dense(4), Center(), L.Tanh), L.Residual(L.Dense(4)), L.Dense(3)
    ),
    "branches and a residual below Center": lambda: L.serial(
        L.FanOut(2),
        L.parallel(L.Dense(3), L.serial(L.Dense(3), L.Tanh)),
        L.FanInSum,
        L.Residual(L.Dense(3), L.Tanh),
        Center(),
        L.Dense(3),
    ),
    "Center in a branch": lambda: L.serial(
        L.FanOut(2),
        L.parallel(L.serial(L.Dense(3), Center()), L.Dense(2)),
        L.FanInConcat(),
        L.Dense(3),
    ),
}


@pytest.mark.parametrize("case", list(COUPLED_NETS))
def test_a_layer_coupling_the_batch_through_both_forms_of_backprop(case, key):
    _both_forms_vs_jax_grad(COUPLED_NETS[case](), (3,), key, batch=5)


# ------------------------------------------------------------------------------------- state


def test_state_threads_through_parallel_and_residual(key):
    net = L.serial(
        L.Dense(3),
        L.Residual(L.Dense(3), Center(momentum=0.5)),
        L.FanOut(2),
        L.parallel(Center(momentum=0.25), L.Tanh),
        L.FanInSum,
    )
    _, params, x, _ = _setup(net, (2,), key, 4)
    state = L.init_state(net, (2,))
    assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(
        ((), ((), {"mean": 0}), (), ({"mean": 0}, ()), ())
    )
    assert L.Residual(L.Dense(3)).stateful is None and L.parallel(L.Tanh).stateful is None
    y, new_state = L.apply_stateful(net, params, state, x, train=True)
    np.testing.assert_allclose(y, net.apply(params, x), rtol=1e-14)  # train = the batch's stats
    h = L.Dense(3).apply(params[0], x)
    u = L.Dense(3).apply(params[1][0], h)
    np.testing.assert_allclose(new_state[1][1]["mean"], 0.5 * jnp.mean(u, axis=0), rtol=1e-14)
    r = h + Center().apply(params[1][1], u)
    np.testing.assert_allclose(new_state[3][0]["mean"], 0.75 * jnp.mean(r, axis=0), rtol=1e-14)
    # evaluation uses the running means and returns the state unchanged
    y_eval, same = L.apply_stateful(net, params, new_state, x, train=False)
    _assert_trees_close(same, new_state, 0.0)
    r_eval = h + params[1][1]["s"][None] * (u - new_state[1][1]["mean"][None])
    expected = params[3][0]["s"][None] * (r_eval - new_state[3][0]["mean"][None]) + jnp.tanh(r_eval)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-13)


# -------------------------------------------------------------------------------- bad inputs


BAD = [
    (
        lambda: L.FanInSum.init(None, ((3,), (4,))),
        ValueError,
        r"FanInSum needs inputs of one shape",
    ),
    (
        lambda: L.FanInSum.apply((), (jnp.ones((2, 3)), jnp.ones((2, 4)))),
        ValueError,
        "FanInSum needs inputs of one shape",
    ),
    (lambda: L.FanInSum.init(None, (3,)), ValueError, "tuple of input shapes"),
    (
        lambda: L.FanInConcat().init(None, ((2, 3), (3, 3))),
        ValueError,
        r"other dimensions equal, got shapes \(\(2, 3\), \(3, 3\)\)",
    ),
    (
        lambda: L.FanInConcat(2).init(None, ((2, 3), (2, 3))),
        ValueError,
        r"axis must be in \[-2, 2\)",
    ),
    (lambda: L.FanInConcat().init(None, ((2, 3), (3,))), ValueError, "one rank"),
    (lambda: L.FanInConcat("last"), TypeError, "axis must be an int"),
    (lambda: L.FanOut(0), ValueError, "FanOut num must be a positive int"),
    (
        lambda: L.parallel(L.Tanh, L.Relu).init(jax.random.PRNGKey(0), ((3,), (3,), (3,))),
        ValueError,
        "parallel of 2 layers needs a tuple of 2 inputs, got 3",
    ),
    (
        lambda: L.parallel(L.Tanh, L.Relu).apply(((), ()), (jnp.ones((2, 3)),)),
        ValueError,
        "needs a tuple of 2 inputs, got 1",
    ),
    (
        lambda: L.parallel(L.Tanh, L.Relu).init(jax.random.PRNGKey(0), (3,)),
        ValueError,
        "single shape",
    ),
    (
        lambda: L.Residual(L.Dense(2)).init(jax.random.PRNGKey(0), (3,)),
        ValueError,
        r"map shape \(3,\) to \(2,\); y = x \+ f\(x\) needs f to keep the shape",
    ),
    (lambda: L.Residual(), ValueError, "Residual\\(\\) needs at least one layer"),
    (lambda: L.Residual(L.Dense(2), "relu"), TypeError, "Residual\\(\\) argument 1 is str"),
    (lambda: L.parallel(L.Dense(2), jnp.tanh), TypeError, "parallel\\(\\) argument 1 is"),
    (lambda: L.parallel(), ValueError, "needs at least one layer"),
]


@pytest.mark.parametrize("make, error, message", BAD)
def test_bad_inputs_raise_one_line_errors(make, error, message):
    with pytest.raises(error, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_residual_apply_checks_the_shape(key):
    block = L.Residual(L.Flatten)
    with pytest.raises(ValueError, match=r"map shape \(2, 2\) to \(4,\)"):
        block.apply(((),), jnp.ones((3, 2, 2)))


def test_check_jacobian_on_tuple_outputs(key):
    x = jax.random.normal(key, (3,))
    f = lambda v: (jnp.sin(v), jnp.sum(v**2))
    good = (jnp.diag(jnp.cos(x)), 2 * x)
    assert check_jacobian(f, good, x).passed
    bad = (jnp.diag(jnp.cos(x)), x)
    assert not check_jacobian(f, bad, x).passed
