"""Tests of jaxnet.optim: the notes' update rules (000 Sec. 4, 004).

Against optax and against the equations.

Every trajectory is run for 100 steps under jit (lax.scan) in float64 on two problems built from
fresh random numbers: a small MLP from jaxnet.layers with the cross-entropy risk, and an
ill-conditioned quadratic. Parameters are compared after every step.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jaxnet import losses, optim
from jaxnet.layers import Dense, Sigmoid, Tanh, serial

STEPS = 100
RTOL = 1e-10


# ----------------------------------------------------------------------------------- helpers


def mlp_problem(key):
    """A random serial(Dense(8), Tanh, Dense(3)) with the cross-entropy risk on random data."""
    k_net, k_x, k_y = jax.random.split(key, 3)
    net = serial(Dense(8), Tanh, Dense(3))
    _, params = net.init(k_net, (4,))
    x = jax.random.normal(k_x, (32, 4))
    y = jax.random.randint(k_y, (32,), 0, 3)

    def risk(p):
        return losses.risk(losses.cross_entropy_from_logits, net.apply(p, x), y)

    return risk, params


def quadratic_problem(key, condition=1e3):
    """L(w) = (1/2) (w - c)^T A (w - c) with A = Q diag(lambda) Q^T, on a two-leaf pytree.

    lambda runs from 1/condition to 1.
    """
    k_q, k_c, k_u, k_v = jax.random.split(key, 4)
    q, _ = jnp.linalg.qr(jax.random.normal(k_q, (12, 12)))
    eigenvalues = jnp.logspace(-math.log10(condition), 0.0, 12)
    a = (q * eigenvalues[None, :]) @ q.T
    c = jax.random.normal(k_c, (12,))
    params = {"u": jax.random.normal(k_u, (6,)), "v": jax.random.normal(k_v, (2, 3))}

    def loss(p):
        r = ravel_pytree(p)[0] - c
        return 0.5 * r @ (a @ r)

    return loss, params


PROBLEMS = {"mlp": mlp_problem, "quadratic": quadratic_problem}


def trajectory(opt, loss, params, steps=STEPS):
    """Parameters after steps 1..steps (leading axis).

    Each step is w <- optax.apply_updates(w, update(grad L(w))).
    """

    def step(carry, _):
        p, state = carry
        grads = jax.grad(loss)(p)
        updates, state = opt.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), p

    _, path = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return path


def trajectories(opt_a, opt_b, loss, params, steps=STEPS):
    """Both optimizers' trajectories from the same start, compiled together."""
    return jax.jit(
        lambda p: (trajectory(opt_a, loss, p, steps), trajectory(opt_b, loss, p, steps))
    )(params)


def max_relative_difference(path, reference):
    """max over steps and leaves of |a - b| / max|b| (the reference leaf's scale at that step)."""
    worst = 0.0
    for a, b in zip(jax.tree_util.tree_leaves(path), jax.tree_util.tree_leaves(reference)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype == np.float64
        axes = tuple(range(1, b.ndim))
        scale = np.maximum(np.max(np.abs(b), axis=axes), 1e-300)
        worst = max(worst, float(np.max(np.max(np.abs(a - b), axis=axes) / scale)))
    return worst


def assert_same_trajectory(path, reference, rtol=RTOL):
    """Same parameters after every step, to rtol of each leaf's magnitude.

    Also that the parameters moved.
    """
    diff = max_relative_difference(path, reference)
    print(f"max relative difference over {STEPS} steps: {diff:.3e}")
    assert diff <= rtol, diff
    first, last = (jax.tree_util.tree_map(lambda x: x[i], reference) for i in (0, -1))
    assert (
        float(jnp.max(jnp.abs(ravel_pytree(first)[0] - ravel_pytree(last)[0]))) > 1e-3
    )  # a real trajectory


def assert_trees_close(a, b, rtol=1e-12):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol * float(np.max(np.abs(y)))
        )


def at_step(path, t):
    """Parameters after step t (1-based) of a trajectory."""
    return jax.tree_util.tree_map(lambda x: x[t - 1], path)


# ----------------------------------------------------------------------------------- versus optax

# (jaxnet optimizer, optax optimizer) for each problem; learning rates chosen stable on each.
PAIRS = {
    "sgd": {
        "mlp": lambda: (optim.sgd(0.5), optax.sgd(0.5)),
        "quadratic": lambda: (optim.sgd(0.9), optax.sgd(0.9)),
    },
    "momentum": {
        "mlp": lambda: (optim.momentum(0.1, 0.9), optax.sgd(0.1, momentum=0.9)),
        "quadratic": lambda: (optim.momentum(0.3, 0.85), optax.sgd(0.3, momentum=0.85)),
    },
    "nesterov": {
        "mlp": lambda: (
            optim.momentum(0.1, 0.9, nesterov=True),
            optax.sgd(0.1, momentum=0.9, nesterov=True),
        ),
        "quadratic": lambda: (
            optim.momentum(0.3, 0.85, nesterov=True),
            optax.sgd(0.3, momentum=0.85, nesterov=True),
        ),
    },
    "adam": {
        "mlp": lambda: (
            optim.adam(0.02, b1=0.8, b2=0.99, eps=1e-6),
            optax.adam(0.02, b1=0.8, b2=0.99, eps=1e-6),
        ),
        "quadratic": lambda: (optim.adam(0.05), optax.adam(0.05)),
    },
    "adamw": {
        "mlp": lambda: (
            optim.adamw(0.02, weight_decay=0.1, b1=0.8, b2=0.99, eps=1e-6),
            optax.adamw(0.02, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1, mask=None),
        ),
        "quadratic": lambda: (
            optim.adamw(0.05, weight_decay=0.3),
            optax.adamw(0.05, weight_decay=0.3, mask=None),
        ),
    },
    "l2_then_sgd": {
        "mlp": lambda: (
            optax.chain(optim.l2_regularization(0.05), optim.sgd(0.5)),
            optax.chain(optax.add_decayed_weights(0.05), optax.sgd(0.5)),
        ),
        "quadratic": lambda: (
            optax.chain(optim.l2_regularization(0.2), optim.sgd(0.9)),
            optax.chain(optax.add_decayed_weights(0.2), optax.sgd(0.9)),
        ),
    },
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_trajectory_equals_optax(key, name, problem):
    loss, params = PROBLEMS[problem](key)
    ours, theirs = PAIRS[name][problem]()
    path, reference = trajectories(ours, theirs, loss, params)
    assert_same_trajectory(path, reference)


SCHEDULES = {
    "exponential_decay": lambda: optax.exponential_decay(
        init_value=0.3, transition_steps=10, decay_rate=0.6
    ),
    "piecewise_constant": lambda: optax.piecewise_constant_schedule(0.3, {20: 0.5, 60: 0.2}),
    "warmup_cosine": lambda: optax.warmup_cosine_decay_schedule(
        0.0, 0.3, warmup_steps=10, decay_steps=100
    ),
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_schedule_equals_optax(key, name, schedule):
    """optax's schedules given to jaxnet and to optax alike.

    They return float32 values even with x64 on.
    """
    problem = "quadratic" if schedule == "piecewise_constant" else "mlp"
    loss, params = PROBLEMS[problem](key)
    lr = SCHEDULES[schedule]()
    if name == "sgd":
        ours, theirs = optim.sgd(lr), optax.sgd(lr)
    elif name == "adam":
        lr_adam = lambda t: 0.2 * lr(t)  # noqa: E731
        ours, theirs = optim.adam(lr_adam), optax.adam(lr_adam)
    else:
        lr_adam = lambda t: 0.2 * lr(t)  # noqa: E731
        ours, theirs = (
            optim.adamw(lr_adam, weight_decay=0.2),
            optax.adamw(lr_adam, weight_decay=0.2, mask=None),
        )
    path, reference = trajectories(ours, theirs, loss, params)
    assert_same_trajectory(path, reference)


def test_schedule_is_evaluated_at_step_count_from_zero(key):
    """alpha_t at t = 0, 1, 2, ...

    On L = (1/2)||w||^2 one sgd step is w <- (1 - alpha_t) w, so w_T = prod_t (1 - alpha_t) w_0.
    """
    w0 = jax.random.normal(key, (5,))
    alphas = [0.5, 0.25, 0.125, 0.1, 0.05]
    schedule = lambda t: jnp.asarray(alphas)[t]  # noqa: E731
    path = jax.jit(
        lambda w: trajectory(optim.sgd(schedule), lambda w: 0.5 * jnp.sum(w**2), w, len(alphas))
    )(w0)
    expected = np.cumprod(1 - np.asarray(alphas))[:, None] * np.asarray(w0)[None, :]
    np.testing.assert_allclose(np.asarray(path), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_l2_regularization_equals_gradient_of_l2_penalty(key, problem):
    """l2_regularization(lam) before sgd == sgd on risk + (lam/2) sum w^2.

    Notes 004's weight decay in the loss.
    """
    loss, params = PROBLEMS[problem](key)
    lam = 0.1
    penalized = lambda p: loss(p) + losses.l2_penalty(p, lam)  # noqa: E731
    ours = optax.chain(optim.l2_regularization(lam), optim.sgd(0.5))
    run = jax.jit(lambda p: (trajectory(ours, loss, p), trajectory(optim.sgd(0.5), penalized, p)))
    path, reference = run(params)
    assert_same_trajectory(path, reference)


def test_l2_regularization_mask_equals_masked_penalty_and_optax(key):
    """A mask leaving the biases out.

    Equals the masked penalty's gradient and optax.add_decayed_weights(mask=...).
    """
    loss, params = mlp_problem(key)
    lam = 0.2
    mask = ({"W": True, "b": False}, (), {"W": True, "b": False})
    penalized = lambda p: loss(p) + losses.l2_penalty(p, lam, mask)  # noqa: E731
    ours = optax.chain(optim.l2_regularization(lam, mask), optim.sgd(0.5))
    theirs = optax.chain(optax.add_decayed_weights(lam, mask=mask), optax.sgd(0.5))
    run = jax.jit(
        lambda p: (
            trajectory(ours, loss, p),
            trajectory(optim.sgd(0.5), penalized, p),
            trajectory(theirs, loss, p),
        )
    )
    path, by_penalty, by_optax = run(params)
    assert_same_trajectory(path, by_penalty)
    assert_same_trajectory(path, by_optax)
    # The mask matters: the unmasked decay gives a different trajectory.
    unmasked = jax.jit(
        lambda p: trajectory(optax.chain(optim.l2_regularization(lam), optim.sgd(0.5)), loss, p)
    )(params)
    assert max_relative_difference(unmasked, path) > 1e-4


# ----------------------------------------------------------------------------------- by hand


def _tree_axpy(a, x, y):
    return jax.tree_util.tree_map(lambda xi, yi: a * xi + yi, x, y)


@pytest.mark.parametrize(
    "lr, mu",
    [
        (0.1, 0.9),
        (0.1, lambda t: 0.5 + 0.45 * (1 - 0.7**t)),
        (0.1, functools.partial(optim.sutskever_momentum, mu_max=0.95, period=4)),
        (lambda t: 0.2 / (1.0 + t), functools.partial(optim.sutskever_momentum, period=3)),
    ],
    ids=["constant", "callable_mu", "sutskever_mu", "callable_lr_and_mu"],
)
def test_momentum_equals_notes_equations(key, lr, mu):
    """v_{t+1} = mu_t v_t - alpha_t grad L(w_t), w_{t+1} = w_t + v_{t+1}, t = 0, 1, ...

    Notes 000 Sec. 4.
    """
    loss, w = mlp_problem(key)
    steps = 25
    path = jax.jit(lambda p: trajectory(optim.momentum(lr, mu), loss, p, steps))(w)
    grad = jax.jit(jax.grad(loss))
    v = jax.tree_util.tree_map(jnp.zeros_like, w)
    for t in range(steps):
        alpha = lr(t) if callable(lr) else lr
        mu_t = mu(t) if callable(mu) else mu
        v = jax.tree_util.tree_map(lambda vi, gi: mu_t * vi - alpha * gi, v, grad(w))
        w = jax.tree_util.tree_map(jnp.add, w, v)
        assert_trees_close(at_step(path, t + 1), w)


def test_nesterov_equals_sutskever_look_ahead_form(key):
    """Sutskever et al.'s NAG, v <- mu v - alpha grad L(w + mu v), w <- w + v.

    It is momentum(nesterov=True) on theta = w + mu v.
    """
    loss, w = quadratic_problem(key)
    lr, mu, steps = 0.3, 0.85, 30
    path = jax.jit(lambda p: trajectory(optim.momentum(lr, mu, nesterov=True), loss, p, steps))(w)
    grad = jax.jit(jax.grad(loss))
    v = jax.tree_util.tree_map(jnp.zeros_like, w)
    for t in range(steps):
        g = grad(_tree_axpy(mu, v, w))
        v = jax.tree_util.tree_map(lambda vi, gi: mu * vi - lr * gi, v, g)
        w = jax.tree_util.tree_map(jnp.add, w, v)
        assert_trees_close(at_step(path, t + 1), _tree_axpy(mu, v, w))


@pytest.mark.parametrize("b1, b2, eps", [(0.9, 0.999, 1e-8), (0.7, 0.95, 1e-3)])
def test_adam_equals_notes_equations(key, b1, b2, eps):
    """Notes 004: m_t, v_t, m^_t = m_t/(1 - b1^t), v^_t = v_t/(1 - b2^t).

    w_t = w_{t-1} - eta m^_t / (sqrt(v^_t) + eps).
    """
    loss, params = mlp_problem(key)
    eta, steps = 0.01, 15
    path = jax.jit(lambda p: trajectory(optim.adam(eta, b1, b2, eps), loss, p, steps))(params)
    grad = jax.jit(lambda w: ravel_pytree(jax.grad(loss)(w))[0])
    flat, unravel = ravel_pytree(params)
    w = np.asarray(flat)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t in range(1, steps + 1):
        g = np.asarray(grad(unravel(jnp.asarray(w))))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        w = w - eta * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(
            np.asarray(ravel_pytree(at_step(path, t))[0]), w, rtol=1e-12, atol=1e-14
        )


def test_adam_first_step_is_minus_eta_sign_of_gradient(key):
    """With bias correction, m^_1 = g and v^_1 = g^2.

    So the first step is -eta g / (|g| + eps), about -eta sign g.
    """
    g = jax.random.normal(key, (7,))
    eta, eps = 0.03, 1e-8
    opt = optim.adam(eta, eps=eps)
    updates, _ = opt.update(g, opt.init(g), g)
    np.testing.assert_allclose(
        np.asarray(updates), -eta * np.asarray(g) / (np.abs(np.asarray(g)) + eps), rtol=1e-13
    )


def test_decoupled_weight_decay_adds_minus_alpha_lambda_w(key):
    """adamw's step is Adam's step minus alpha_t lambda w, the decay outside Adam's rescaling."""
    loss, params = mlp_problem(key)
    lr, lam = (lambda t: 0.05 * 0.9**t), 0.3
    grads = jax.grad(loss)(params)
    adam, adamw = optim.adam(lr), optim.adamw(lr, weight_decay=lam)
    s_adam, s_adamw = adam.init(params), adamw.init(params)
    adam_update, adamw_update = jax.jit(adam.update), jax.jit(adamw.update)
    for t in range(3):
        u_adam, s_adam = adam_update(grads, s_adam, params)
        u_adamw, s_adamw = adamw_update(grads, s_adamw, params)
        expected = jax.tree_util.tree_map(lambda u, w: u - lr(t) * lam * w, u_adam, params)
        assert_trees_close(u_adamw, expected)


@pytest.mark.parametrize("schedule", ["exponential_decay", "warmup_cosine"])
def test_decoupled_weight_decay_keeps_float64_with_float32_schedule(key, schedule):
    """-alpha_t lambda w in float64 when alpha_t comes from an optax schedule.

    The schedule returns a float32 scalar. The decay must be computed as alpha_t (lambda w) or
    (float64(alpha_t) lambda) w, not with alpha_t lambda rounded to float32 first (a 1e-8 relative
    error in every decay step, 1e-9 in adamw's trajectory).
    """
    w = {
        "u": jax.random.normal(key, (6,)),
        "v": jax.random.normal(jax.random.fold_in(key, 1), (2, 3)),
    }
    lam = 0.3
    lr = SCHEDULES[schedule]()
    assert lr(jnp.asarray(5, jnp.int32)).dtype == jnp.float32  # the situation under test
    decay = optim.decoupled_weight_decay(lam, lr)
    state = decay.init(w)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, w)
    for t in range(6):
        updates, state = decay.update(
            zeros, state, w
        )  # eager, so alpha_t is the same float32 as below
        alpha = np.float64(np.asarray(lr(jnp.asarray(t, jnp.int32))))
        for u, wi in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(w)):
            assert u.dtype == jnp.float64
            np.testing.assert_allclose(
                np.asarray(u), -alpha * (lam * np.asarray(wi)), rtol=1e-14, atol=0
            )


# ------------------------------------------------------------------------------ Sutskever schedule


def sutskever_closed_form(t, mu_max=0.99, period=250):
    return min(1 - 1 / (2 * (t // period) + 2), mu_max)


def test_sutskever_momentum_values():
    expected = {0: 0.5, 249: 0.5, 250: 0.75, 500: 5 / 6, 750: 0.875, 1000: 0.9}
    for t, value in expected.items():
        assert sutskever_closed_form(t) == pytest.approx(value, rel=1e-15)
        np.testing.assert_allclose(float(optim.sutskever_momentum(t)), value, rtol=1e-14)
    for t in [
        12_249,
        12_250,
        10**5,
        10**6,
        2**31 - 1,
    ]:  # floor(t/250) + 1 >= 50 reaches the cap 0.99
        np.testing.assert_allclose(
            float(optim.sutskever_momentum(t)), min(sutskever_closed_form(t), 0.99), rtol=1e-14
        )
    assert float(optim.sutskever_momentum(10**6)) == 0.99
    assert float(optim.sutskever_momentum(10**6, mu_max=0.9)) == 0.9
    assert float(optim.sutskever_momentum(1000, mu_max=0.85)) == 0.85
    np.testing.assert_allclose(
        float(optim.sutskever_momentum(250, mu_max=0.999, period=100)), 1 - 1 / 6, rtol=1e-14
    )


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int64])
@pytest.mark.parametrize("mu_max, period", [(0.99, 250), (0.95, 100), (0.999, 7)])
def test_sutskever_momentum_schedule_under_jit(dtype, mu_max, period):
    """Traced integer t: the closed form over t = 0..19999, non-decreasing, never above mu_max."""
    ts = np.arange(20_000)
    values = np.asarray(
        jax.jit(jax.vmap(lambda t: optim.sutskever_momentum(t, mu_max, period)))(
            jnp.asarray(ts, dtype)
        )
    )
    expected = np.minimum(1 - 1 / (2 * (ts // period) + 2), mu_max)
    np.testing.assert_allclose(values, expected, rtol=1e-14, atol=0)
    assert np.all(np.diff(values) >= 0)
    assert np.all(values <= mu_max)
    assert values[0] == 0.5
    assert values[-1] == mu_max  # reached within 20000 steps for these periods
    one = jax.jit(lambda t: optim.sutskever_momentum(t, mu_max, period))
    assert float(one(jnp.asarray(period, dtype))) == pytest.approx(min(0.75, mu_max), rel=1e-14)


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make",
    [
        lambda: optim.l2_regularization(0.1),
        lambda: optim.decoupled_weight_decay(0.1, 0.01),
        lambda: optim.adamw(0.01, weight_decay=0.1),
        lambda: optax.chain(optim.l2_regularization(0.1), optim.sgd(0.1)),
    ],
    ids=["l2_regularization", "decoupled_weight_decay", "adamw", "chained_l2"],
)
def test_weight_decay_without_params_raises(key, make):
    params = {"w": jax.random.normal(key, (3,))}
    opt = make()
    state = opt.init(params)
    with pytest.raises(ValueError, match="params"):
        opt.update(params, state)
    with pytest.raises(ValueError, match="params"):
        opt.update(params, state, None)


# -------------------------------------------------------------------------- optax interoperability


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adamw", "l2_then_sgd"])
def test_optimizers_are_gradient_transformations_in_chain_with_clipping(key, name):
    """optax.chain(clip_by_global_norm, jaxnet optimizer) with optax.apply_updates.

    It equals the all-optax chain.
    """
    loss, params = mlp_problem(key)
    ours, theirs = PAIRS[name]["mlp"]()
    assert isinstance(ours, optax.GradientTransformation)
    max_norm = 0.05
    assert float(optax.tree.norm(jax.grad(loss)(params))) > max_norm  # clipping is active
    run = jax.jit(
        lambda p: (
            trajectory(optax.chain(optax.clip_by_global_norm(max_norm), ours), loss, p),
            trajectory(optax.chain(optax.clip_by_global_norm(max_norm), theirs), loss, p),
            trajectory(ours, loss, p),
        )
    )
    path, reference, unclipped = run(params)
    assert_same_trajectory(path, reference)
    assert max_relative_difference(unclipped, path) > 1e-4  # the clipping changed the trajectory


def test_state_and_update_are_jittable_pytrees(key):
    """init/update are pure: jitted update returns the same as the eager one.

    And the state is a pytree of arrays.
    """
    loss, params = quadratic_problem(key)
    grads = jax.grad(loss)(params)
    for opt in [
        optim.sgd(0.1),
        optim.momentum(0.1, optim.sutskever_momentum),
        optim.adam(0.01),
        optim.adamw(0.01),
    ]:
        state = opt.init(params)
        eager = opt.update(grads, state, params)
        jitted = jax.jit(opt.update)(grads, state, params)
        assert jax.tree_util.tree_structure(eager) == jax.tree_util.tree_structure(jitted)
        assert_trees_close(jitted[0], eager[0], rtol=1e-14)


# ------------------------------------------------------------------------- momentum on the plateau


def test_momentum_speeds_up_learning_on_the_saturated_sigmoid_neuron():
    """Slides 003: one sigmoid neuron, input 1, target 0, quadratic cost, eta = 0.15.

    From w = b = 2.0 (output 0.98), plain gradient descent barely moves for the first 150 steps;
    momentum (mu = 0.9, notes 004: helps on flat regions) gets through the plateau in the same
    number of steps.
    """
    init = jax.nn.initializers.constant(2.0)
    net = serial(Dense(1, W_init=init, b_init=init), Sigmoid)
    _, params = net.init(jax.random.PRNGKey(0), (1,))
    x, y = jnp.ones((1, 1)), jnp.zeros((1, 1))
    loss = lambda p: losses.risk(losses.quadratic, net.apply(p, x), y)  # noqa: E731
    np.testing.assert_allclose(
        float(net.apply(params, x)[0, 0]), 1 / (1 + math.exp(-4.0)), rtol=1e-14
    )
    steps = 150
    sgd_path, momentum_path = trajectories(
        optim.sgd(0.15), optim.momentum(0.15, 0.9), loss, params, steps
    )
    loss_sgd = np.asarray(jax.vmap(loss)(sgd_path))
    loss_momentum = np.asarray(jax.vmap(loss)(momentum_path))
    initial = float(loss(params))
    assert loss_sgd[-1] > 0.8 * initial  # the plateau: SGD has lost less than 20% of the loss
    assert loss_momentum[-1] < 0.01 * initial
    assert np.all(loss_momentum <= loss_sgd + 1e-15)


def test_masked_decoupled_weight_decay_matches_optax_adamw_mask(key):
    params = {
        "W": jax.random.normal(key, (4, 3)),
        "b": jax.random.normal(jax.random.fold_in(key, 1), (3,)),
    }
    mask = {"W": True, "b": False}
    grads = jax.tree_util.tree_map(lambda p: jnp.cos(p), params)
    ours, theirs = (
        optim.adamw(1e-2, weight_decay=0.1, mask=mask),
        optax.adamw(1e-2, weight_decay=0.1, mask=mask),
    )
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    p_ours = p_theirs = params
    for _ in range(20):
        u_ours, s_ours = ours.update(grads, s_ours, p_ours)
        u_theirs, s_theirs = theirs.update(grads, s_theirs, p_theirs)
        p_ours, p_theirs = (
            optax.apply_updates(p_ours, u_ours),
            optax.apply_updates(p_theirs, u_theirs),
        )
    for name in ("W", "b"):
        np.testing.assert_allclose(p_ours[name], p_theirs[name], rtol=1e-12)
    # The bias was not decayed: its trajectory equals plain Adam's.
    adam_only = optim.adam(1e-2)
    state, p = adam_only.init(params), params
    for _ in range(20):
        u, state = adam_only.update(grads, state, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p_ours["b"], p["b"], rtol=1e-13)
