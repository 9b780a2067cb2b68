"""Derivatives exact to relative precision where units saturate, against mpmath (issue 12).

Back-propagation starts from the loss derivatives and multiplies by the activations'
derivatives, so each must be right to a few ulps of its own value, however small that value is.

Reference. Each derivative's textbook formula (sigma (1 - sigma), 1 - tanh^2, sigma(z) - y,
p - q, diag(p) - p p^T, delta_ik - p_k, ...), evaluated by mpmath on the float64 inputs taken as
exact, with 50 significant digits to spare beyond the formula's worst cancellation: at
|z| = 700, 1 - tanh(z)^2 ~ 1e-608 comes out of numbers ~1, so mpmath works with 50 + 609 digits.

Criterion (decided here). Wherever the exact value is a normal float64 (>= 2.2e-308 in
magnitude), each element's relative error is at most TOL_ULPS = 8 ulps (8 * 2.2e-16). Below
that the result must be 0 or a subnormal (|error| < 2.2e-308): XLA on CPU flushes subnormals to
zero, so gradual underflow is not promised. Where a soft label makes the derivative a difference
of two rounded numbers of similar size (sigma(z) ~ y), that cancellation is inherent, and the
bound is TOL_ULPS times the size of those numbers.

Inputs. z = +-{0, 1e-8, 0.5, 1, 5, 10, 20, 30, 36, 40, 100, 300, 700} plus fresh draws from the
`key` seed, labels 0 and 1 and soft labels. Multi-class rows (K = 2..5) put one logit far above
the rest, at a random place; the other logits are multiples of 1/32 and the random gaps multiples
of 2^-20, so every difference z_j - z_t is an exact float64 (rounding it would move
e^(z_j - z_t) by up to |z_j - z_t| ulp / 2, in any formula). The functions run on whole
arrays under one jax.jit per test, the mpmath reference in plain Python loops.
"""

import math

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

from jaxnet import activations as A
from jaxnet import layers as L
from jaxnet import losses, models

EPS = np.finfo(np.float64).eps
TINY = np.finfo(np.float64).tiny
TOL_ULPS = 8
Z_MAX = 700.0
DIGITS = 50 + math.ceil(2 * Z_MAX / math.log(10))  # 50 digits beyond e^(-2 |z|)
BASE = (0.0, 1e-8, 0.5, 1.0, 5.0, 10.0, 20.0, 30.0, 36.0, 40.0, 100.0, 300.0, 700.0)
P_NEAR_ONE_GAP = 13 * math.log(10)  # two classes: Prob = 1 - 1e-13 at the top


def rng_from(key):
    return np.random.default_rng(np.asarray(jax.random.key_data(key)))


def z_grid(rng, draws=12):
    """+-BASE, then fresh draws: uniform on [-700, 700] and log-uniform magnitudes 1e-8..700."""
    magnitudes = 10.0 ** rng.uniform(-8, math.log10(Z_MAX), draws)
    return np.concatenate(
        [BASE, np.negative(BASE), rng.uniform(-Z_MAX, Z_MAX, draws), magnitudes * -1, magnitudes]
    )


def exact(formula, *columns):
    """formula(*elements) by mpmath for each position of the equal-shaped columns."""
    with mp.workdps(DIGITS):
        flat = [np.ravel(np.asarray(c, np.float64)) for c in columns]
        values = [formula(*map(mp.mpf, map(float, xs))) for xs in zip(*flat)]
    return np.array(values, dtype=object).reshape(np.shape(columns[0]))


def ulps(got, reference, scale=None):
    """Per element |got - exact| / max(|exact|, scale), in units of EPS.

    Where max(|exact|, scale) is below the smallest normal float64 the element counts 0 if
    |got - exact| < TINY (0 or a subnormal) and inf otherwise.
    """
    got = np.ravel(np.asarray(got, np.float64))
    reference = np.ravel(reference)
    scale = np.zeros(got.shape) if scale is None else np.ravel(np.asarray(scale, np.float64))
    out = np.empty(got.shape)
    with mp.workdps(DIGITS):
        for i, (g, e, s) in enumerate(zip(got, reference, scale)):
            error = abs(mp.mpf(float(g)) - e) if np.isfinite(g) else mp.inf
            size = max(abs(e), mp.mpf(float(s)))
            if size >= TINY:
                out[i] = float(error / size) / EPS
            else:
                out[i] = 0.0 if error < TINY else np.inf
    return out


def assert_exact(name, got, reference, scale=None, inputs=None):
    errors = ulps(got, reference, scale)
    worst = int(np.argmax(errors))
    where = "" if inputs is None else f" at input {np.ravel(inputs)[worst]!r}"
    assert errors[worst] <= TOL_ULPS, (
        f"{name}: {errors[worst]:.3g} ulps{where} (got {np.ravel(got)[worst]!r}, exact "
        f"{mp.nstr(np.ravel(reference)[worst], 17)}); {np.sum(errors > TOL_ULPS)} of "
        f"{errors.size} beyond {TOL_ULPS}"
    )


def each(f):
    """f' at every entry, by jax.vmap(jax.grad(f)): autodiff's answer, held to the same bound."""
    return jax.vmap(jax.grad(f))


def ones_vjp(layer, x):
    """The layer's vjp at g = 1: its point derivative, entry by entry."""
    return layer.vjp((), x[None], jnp.ones((1,) + x.shape))[1][0]


def mp_sigma(x):
    return 1 / (1 + mp.exp(-x))


# ------------------------------------------------------------------------- point activations


def test_sigmoid_and_tanh_derivatives_are_exact_in_saturation(key):
    z = z_grid(rng_from(key))
    got = jax.jit(
        lambda z: {
            "sigmoid": A.sigmoid(z),
            "sigmoid_derivative": A.sigmoid_derivative(z),
            "jax.grad(sigmoid)": each(A.sigmoid)(z),
            "Sigmoid layer vjp": ones_vjp(L.Sigmoid, z),
            "tanh": A.tanh(z),
            "tanh_derivative": A.tanh_derivative(z),
            "jax.grad(tanh)": each(A.tanh)(z),
            "Tanh layer vjp": ones_vjp(L.Tanh, z),
        }
    )(z)
    ds = exact(lambda x: mp_sigma(x) * (1 - mp_sigma(x)), z)
    dt = exact(lambda x: 1 - mp.tanh(x) ** 2, z)
    assert_exact("sigmoid", got.pop("sigmoid"), exact(mp_sigma, z), inputs=z)
    assert_exact("tanh", got.pop("tanh"), exact(mp.tanh, z), inputs=z)
    for name, values in got.items():
        assert_exact(name, values, ds if "igmoid" in name else dt, inputs=z)


SWISH_BETAS = (1.0, 0.5, 2.0)  # powers of 2, so that beta a is exact


def test_swish_derivative_is_exact_in_saturation(key):
    a = z_grid(rng_from(key))
    swish = {beta: L.Swish(beta) for beta in SWISH_BETAS}
    got = jax.jit(
        lambda a: {
            beta: (
                A.swish(a / beta, beta),
                A.swish_derivative(a / beta, beta),
                each(lambda x: A.swish(x, beta))(a / beta),
                ones_vjp(swish[beta], a / beta),
            )
            for beta in SWISH_BETAS
        }
    )(a)
    for beta, (value, *derivatives) in got.items():

        def terms(x, beta=beta):  # swish' = sigma(x) + x sigma(x) (1 - sigma(x)), x = beta a
            s = mp_sigma(beta * x)
            return s, beta * x * s * (1 - s)

        d = exact(lambda x: sum(terms(x)), a / beta)
        # the terms cancel only near the minimum of swish (beta a = -1.2785), where swish' = 0
        size = exact(lambda x: abs(terms(x)[0]) + abs(terms(x)[1]), a / beta).astype(float)
        assert_exact(f"swish beta={beta}", value, exact(lambda x: x * mp_sigma(beta * x), a / beta))
        for name, values in zip(["swish_derivative", "jax.grad(swish)", "Swish vjp"], derivatives):
            assert_exact(f"{name} beta={beta}", values, d, size, inputs=a / beta)


# ------------------------------------------------------------------------- two-class losses


def _bce_from_logits(z, y):
    return {
        "derivative": losses.binary_cross_entropy_from_logits_derivative(z, y),
        "jax.grad": jax.grad(lambda v: jnp.sum(losses.binary_cross_entropy_from_logits(v, y)))(z),
        "loss": losses.binary_cross_entropy_from_logits(z, y),
    }


def test_binary_cross_entropy_from_logits_derivative_is_exact_for_hard_labels(key):
    z = z_grid(rng_from(key))
    z, y = np.concatenate([z, z]), np.repeat([0.0, 1.0], z.size)
    got = jax.jit(_bce_from_logits)(z, y)
    d = exact(lambda x, t: mp_sigma(x) - t, z, y)
    loss = exact(lambda x, t: t * mp.log(1 + mp.exp(-x)) + (1 - t) * mp.log(1 + mp.exp(x)), z, y)
    assert_exact("binary_cross_entropy_from_logits_derivative", got["derivative"], d, inputs=z)
    assert_exact("jax.grad(binary_cross_entropy_from_logits)", got["jax.grad"], d, inputs=z)
    assert_exact("binary_cross_entropy_from_logits", got["loss"], loss, inputs=z)


def test_binary_cross_entropy_from_logits_derivative_with_soft_labels(key):
    rng = rng_from(key)
    y = np.concatenate([rng.uniform(0, 1, 40), [1e-12, 1 - 1e-12, 0.5, 1e-300, 1 - 2**-53]])
    z = rng.uniform(-40, 40, y.size)
    z[:20] = np.log(y[:20] / (1 - y[:20])) + rng.normal(0, 1e-6, 20)  # sigma(z) ~ y: cancels
    z[-5:] = [40.0, -40.0, 700.0, -700.0, 36.0]
    got = jax.jit(lambda z, y: (_bce_from_logits(z, y), jax.nn.sigmoid(z) - y))(z, y)
    d = exact(lambda x, t: mp_sigma(x) - t, z, y)
    # the inherent cancellation: sigma(z) - y from a rounded sigma(z) or sigma(-z)
    size = exact(lambda x: min(mp_sigma(x), mp_sigma(-x)), z).astype(float)
    new, old = got[0]["derivative"], got[1]  # old: sigma(z) - y, the formula it replaces
    assert_exact("binary_cross_entropy_from_logits_derivative, soft", new, d, size, inputs=z)
    assert_exact("jax.grad(binary_cross_entropy_from_logits), soft", got[0]["jax.grad"], d, size)
    assert np.max(ulps(new, d)) <= np.max(ulps(old, d))  # never worse than sigma(z) - y


def test_binary_cross_entropy_derivative_is_exact_near_p_0_and_1(key):
    rng = rng_from(key)
    near = [1e-300, 1e-100, 1e-20, 1e-10, 1e-3, 0.25, 0.5, 0.75, 1 - 1e-3, 1 - 1e-10, 1 - 2**-53]
    p = np.concatenate([near, 1 / (1 + np.exp(-rng.uniform(-36, 36, 10)))])
    p = np.clip(p, 1e-300, 1 - 2**-53)
    close = p * (1 + 1e-9 * rng.normal(size=p.size))  # y ~ p, where -y/p + (1-y)/(1-p) cancels
    labels = {"y=0": 0 * p, "y=1": 0 * p + 1, "soft": rng.uniform(0, 1, p.size), "y~p": close}
    p_all, y_all = np.tile(p, len(labels)), np.minimum(np.concatenate(list(labels.values())), 1)
    got = jax.jit(
        lambda p, y: {
            "derivative": losses.binary_cross_entropy_derivative(p, y),
            "jax.grad": jax.grad(lambda v: jnp.sum(losses.binary_cross_entropy(v, y)))(p),
            "loss": losses.binary_cross_entropy(p, y),
        }
    )(p_all, y_all)
    d = exact(lambda q, t: -t / q + (1 - t) / (1 - q), p_all, y_all)
    loss = exact(lambda q, t: -t * mp.log(q) - (1 - t) * mp.log(1 - q), p_all, y_all)
    assert_exact("binary_cross_entropy_derivative", got["derivative"], d, inputs=p_all)
    assert_exact("binary_cross_entropy", got["loss"], loss, inputs=p_all)
    hard = slice(0, 2 * p.size)  # autodiff's sum of two terms is exact for 0/1 labels only
    assert_exact(
        "jax.grad(binary_cross_entropy)", got["jax.grad"][hard], d[hard], inputs=p_all[hard]
    )


# ------------------------------------------------------------------------- multi-class

CLASSES = (2, 3, 4, 5)


def saturated_rows(rng, k, draws=4):
    """Logits (rows, k), one far above the rest at a random place: the gaps of BASE, Prob =
    1 - 1e-13 and random gaps. Every difference z_j - z_t is an exact float64."""
    gaps = np.concatenate(
        [BASE, [P_NEAR_ONE_GAP], np.round(rng.uniform(0, Z_MAX, draws) * 2**20) / 2**20]
    )
    rows = rng.integers(-64, 65, (gaps.size, k)) / 32
    top = rng.integers(0, k, gaps.size)
    others = np.where(np.arange(k) == top[:, None], -np.inf, rows).max(axis=1)
    rows[np.arange(gaps.size), top] = others + gaps
    return rows


def mp_softmax(row):
    e = [mp.exp(v) for v in row]
    total = mp.fsum(e)
    return [v / total for v in e]


def exact_rows(formula, z, *extra):
    """formula(p, *extra rows) -> a list (or nested lists) per row of logits z, by mpmath."""
    with mp.workdps(DIGITS):
        out = []
        for row, *more in zip(z, *extra):
            p = mp_softmax([mp.mpf(float(v)) for v in row])
            out.append(formula(p, *([mp.mpf(float(v)) for v in m] for m in more)))
    return np.array(out, dtype=object)


def _cross_entropy_from_logits(z, labels):
    return {
        "derivative": losses.cross_entropy_from_logits_derivative(z, labels),
        "jax.grad": jax.grad(lambda v: jnp.sum(losses.cross_entropy_from_logits(v, labels)))(z),
        "loss": losses.cross_entropy_from_logits(z, labels),
    }


def test_cross_entropy_from_logits_derivative_is_exact_for_class_labels(key):
    rng = rng_from(key)
    z = {k: np.repeat(saturated_rows(rng, k), k, axis=0) for k in CLASSES}
    y = {k: np.tile(np.arange(k), z[k].shape[0] // k) for k in CLASSES}  # every class, top too
    got = jax.jit(lambda z, y: {k: _cross_entropy_from_logits(z[k], y[k]) for k in z})(z, y)
    for k in CLASSES:
        q = np.eye(k)[y[k]]
        d = exact_rows(lambda p, t: [pi - ti for pi, ti in zip(p, t)], z[k], q)
        loss = exact_rows(lambda p, t: -mp.log(mp.fsum(pi * ti for pi, ti in zip(p, t))), z[k], q)
        assert_exact(f"cross_entropy_from_logits_derivative K={k}", got[k]["derivative"], d)
        assert_exact(f"jax.grad(cross_entropy_from_logits) K={k}", got[k]["jax.grad"], d)
        assert_exact(f"cross_entropy_from_logits K={k}", got[k]["loss"], loss)


def test_cross_entropy_from_logits_derivative_with_soft_labels(key):
    rng = rng_from(key)
    rows = {k: saturated_rows(rng, k) for k in (2, 5)}
    z = {k: np.concatenate([r, r]) for k, r in rows.items()}
    smooth = {k: losses.smooth_labels(rng.integers(0, k, len(r)), r, 0.1) for k, r in rows.items()}
    q = {k: np.concatenate([rng.dirichlet(np.ones(k), len(r)), smooth[k]]) for k, r in rows.items()}
    got = jax.jit(lambda z, q: {k: _cross_entropy_from_logits(z[k], q[k]) for k in z})(z, q)
    for k in rows:
        d = exact_rows(lambda p, t: [pi * mp.fsum(t) - ti for pi, ti in zip(p, t)], z[k], q[k])
        # the terms p_i (Q - q_i) and q_i (1 - p_i): their difference is the inherent cancellation
        size = exact_rows(
            lambda p, t: [pi * abs(mp.fsum(t) - ti) + ti * (1 - pi) for pi, ti in zip(p, t)],
            z[k],
            q[k],
        ).astype(float)
        assert_exact(f"cross_entropy_from_logits_derivative K={k}", got[k]["derivative"], d, size)
        assert_exact(f"jax.grad(cross_entropy_from_logits) K={k}", got[k]["jax.grad"], d, size)


def _softmax_family(z):
    k = z.shape[-1]
    basis = jnp.broadcast_to(jnp.eye(k)[:, None], (k,) + z.shape)

    def rows_of(layer):  # g = e_c: the vjp is row c of the Jacobian
        return jnp.moveaxis(jax.vmap(lambda g: layer.vjp((), z, g)[1])(basis), 0, 1)

    return {
        "softmax": A.softmax(z),
        "log_softmax": A.log_softmax(z),
        "softmax_jacobian": jax.vmap(A.softmax_jacobian)(z),
        "log_softmax_jacobian": jax.vmap(A.log_softmax_jacobian)(z),
        "jax.jacrev(softmax)": jax.vmap(jax.jacrev(A.softmax))(z),
        "jax.jacrev(log_softmax)": jax.vmap(jax.jacrev(A.log_softmax))(z),
        "Softmax vjp": rows_of(L.Softmax),
        "LogSoftmax vjp": rows_of(L.LogSoftmax),
        "Softmax jacobians": L.Softmax.jacobians((), z, 3)[1],
        "LogSoftmax jacobians": L.LogSoftmax.jacobians((), z, 3)[1],
    }


def test_softmax_log_softmax_and_their_jacobians_are_exact(key):
    rng = rng_from(key)
    z = {k: saturated_rows(rng, k) for k in (2, 5)}
    got = jax.jit(lambda z: {k: _softmax_family(z[k]) for k in z})(z)
    for k in z:
        delta = np.eye(k)
        p = exact_rows(lambda p: p, z[k])
        jac = exact_rows(
            lambda p: [[p[i] * (delta[i, j] - p[j]) for j in range(k)] for i in range(k)], z[k]
        )
        log_jac = exact_rows(
            lambda p: [[delta[i, j] - p[j] for j in range(k)] for i in range(k)], z[k]
        )
        reference = {
            "softmax": p,
            "log_softmax": exact_rows(lambda p: [mp.log(v) for v in p], z[k]),
            "softmax_jacobian": jac,
            "log_softmax_jacobian": log_jac,
            "jax.jacrev(softmax)": jac,
            "jax.jacrev(log_softmax)": log_jac,
            "Softmax vjp": jac,
            "LogSoftmax vjp": log_jac,
            "Softmax jacobians": jac[3],
            "LogSoftmax jacobians": log_jac[3],
        }
        for name, values in got[k].items():
            assert_exact(f"{name} K={k}", values, reference[name])


# ------------------------------------------------------------------------- regressions


def test_the_old_formulas_fail_where_the_new_ones_hold():
    """What the tests above catch: each replaced formula, off by far more than TOL_ULPS."""
    z, y = np.array([30.0, 40.0]), np.ones(2)
    row = np.array([[P_NEAR_ONE_GAP, 0.0]])  # Prob(0) = 1 - 1e-13
    p, soft = np.array([0.3 + 1e-10]), np.array([0.3])
    a_tanh, a_sigma = np.array([20.0, 40.0]), np.array([40.0, 100.0])

    def old_and_new():
        shifted = row - jnp.max(row)
        old = {  # the formulas jaxnet had
            "sigma(z) - y": jax.nn.sigmoid(z) - y,  # 0.0 at z = 40, exact -4.25e-18
            "softmax - q": jax.nn.softmax(row)[:, 0] - 1,  # 6e-4 relative
            "log-soft-max": shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True)),
            "-y/p + (1-y)/(1-p)": -soft / p + (1 - soft) / (1 - p),
            "1 - tanh^2": 1 - jnp.tanh(a_tanh) ** 2,
            "sigma (1 - sigma)": jax.nn.sigmoid(a_sigma) * (1 - jax.nn.sigmoid(a_sigma)),
        }
        new = {
            "sigma(z) - y": losses.binary_cross_entropy_from_logits_derivative(z, y),
            "softmax - q": losses.cross_entropy_from_logits_derivative(row, jnp.array([0]))[:, 0],
            "log-soft-max": A.log_softmax(row),
            "-y/p + (1-y)/(1-p)": losses.binary_cross_entropy_derivative(p, soft),
            "1 - tanh^2": A.tanh_derivative(a_tanh),
            "sigma (1 - sigma)": A.sigmoid_derivative(a_sigma),
        }
        return old, new

    old, new = jax.jit(old_and_new)()
    reference = {
        "sigma(z) - y": exact(lambda x, t: mp_sigma(x) - t, z, y),
        "softmax - q": exact_rows(lambda p: p[0] - 1, row),
        "log-soft-max": exact_rows(lambda p: [mp.log(v) for v in p], row),
        "-y/p + (1-y)/(1-p)": exact(lambda q, t: -t / q + (1 - t) / (1 - q), p, soft),
        "1 - tanh^2": exact(lambda x: 1 - mp.tanh(x) ** 2, a_tanh),
        "sigma (1 - sigma)": exact(lambda x: mp_sigma(x) * (1 - mp_sigma(x)), a_sigma),
    }
    assert float(old["sigma(z) - y"][1]) == 0.0
    for name in old:
        assert np.max(ulps(old[name], reference[name])) > 1e5, name
        assert_exact(name, new[name], reference[name])


def test_the_fixed_functions_keep_jit_and_vmap(key):
    """Row by row under jax.vmap is the same as the whole batch at once, under jax.jit."""
    rng = rng_from(key)
    z, g = rng.normal(size=(3, 4)) * 30, rng.normal(size=(3, 4))
    cases = [
        (losses.cross_entropy_from_logits_derivative, (z, rng.integers(0, 4, 3))),
        (losses.binary_cross_entropy_from_logits_derivative, (z, rng.uniform(size=z.shape))),
        (losses.binary_cross_entropy_derivative, (rng.uniform(size=z.shape), 1.0 * (z > 0))),
        (A.softmax_vjp, (z, g)),
        (A.log_softmax_vjp, (z, g)),
        (A.log_softmax, (z,)),
    ]
    args = [a for _, a in cases]
    whole, rows = jax.jit(
        lambda args: [
            [(jax.vmap(f) if by_row else f)(*a) for (f, _), a in zip(cases, args)]
            for by_row in (False, True)
        ]
    )(args)
    for (f, _), w, r in zip(cases, whole, rows):
        np.testing.assert_allclose(r, w, rtol=2 * EPS, atol=0, err_msg=f.__name__)


# ------------------------------------------------------------------------- Swish's spec


def test_swish_records_beta_in_its_spec(key):
    assert L.Swish(1.5).spec == {"beta": 1.5}
    assert L.Swish().spec == {"beta": 1.0}
    assert models.parse_layer("swish(beta=2.0)").spec == {"beta": 2.0}
    assert models.parse_layer("swish").spec == {"beta": 1.0}
    x = jax.random.normal(key, (2, 5))
    y = jax.jit(L.Swish(1.5).apply)((), x)
    np.testing.assert_allclose(y, x * jax.nn.sigmoid(1.5 * x), rtol=1e-14)
    bad_betas = [("2", TypeError), (True, TypeError), (None, TypeError), (math.nan, ValueError)]
    for bad, error in bad_betas + [(math.inf, ValueError)]:
        with pytest.raises(error, match="Swish beta"):
            L.Swish(bad)
