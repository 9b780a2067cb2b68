"""Check hand-written derivatives against jax.jacrev, jax.jacfwd and central finite differences.

As a library: `check_jacobian(f, jacobian, x)` and `check_gradient(f, gradient, x)` compare a
formula of your own with JAX's autodiff and with finite differences, in float64:

    import jax; jax.config.update("jax_enable_x64", True)
    from jaxnet.verify import check_gradient
    result = check_gradient(lambda w: jnp.sum(jnp.tanh(w) ** 2),
                            lambda w: 2 * jnp.tanh(w) * (1 - jnp.tanh(w) ** 2), w0)
    assert result.passed, result

As a command, `python -m jaxnet.verify` (or `jaxnet-verify`) checks every layer, loss and
activation of jaxnet and both forms of back-propagation, prints a table and exits with status 1
if any check fails; `--json` prints the results for machines.

Errors are relative: max |A - B| / max(max |A|, max |B|), 0 when both are 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_TOLERANCE = 1e-7

# Every check's programs run once, so compiling fast beats running fast (as for the trainer's
# initial state): on CPU, LLVM's costly passes are off.
_RUN_ONCE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit_once(f, **options):
    """jax.jit for a program that runs once: compiled cheaply on CPU."""
    compiler = _RUN_ONCE if jax.default_backend() == "cpu" else None
    return jax.jit(f, compiler_options=compiler, **options)


@dataclasses.dataclass
class CheckResult:
    """One comparison of a hand-written derivative: errors against autodiff and finite steps."""

    name: str
    shapes: str
    error_vs_autodiff: float
    error_vs_finite_differences: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(
            self.error_vs_autodiff <= self.tolerance
            and self.error_vs_finite_differences <= self.tolerance
        )

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}


def relative_error(a, b) -> float:
    """max |a - b| / max(max |a|, max |b|).

    0 when both are all zero; inf on a shape mismatch or NaN.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(b), initial=0.0))
    if not np.isfinite(scale) or np.isnan(a).any() or np.isnan(b).any():
        return float("inf")
    return 0.0 if scale == 0 else float(np.max(np.abs(a - b)) / scale)


def _require_x64():
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            "derivative checks need float64: call jax.config.update('jax_enable_x64', True) "
            "before creating arrays"
        )


def _flat(f, x):
    """f as a map between flat vectors, and the flat point.

    Flattened with numpy: no per-shape kernels.
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    x_flat = jnp.asarray(np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves]))
    if not jnp.issubdtype(x_flat.dtype, jnp.floating):
        raise TypeError(
            f"derivatives are taken with respect to floating-point inputs, got dtype {x_flat.dtype}"
        )
    shapes = [np.shape(leaf) for leaf in leaves]
    splits = np.cumsum([int(np.prod(shape)) for shape in shapes])[:-1]

    def unravel(v):
        return jax.tree_util.tree_unflatten(
            treedef, [p.reshape(s) for p, s in zip(jnp.split(v, splits), shapes)]
        )

    def f_flat(v):
        return jnp.concatenate(
            [jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(f(unravel(v)))]
        )

    return f_flat, x_flat


def jacobian_matrix(jac, out):
    """A Jacobian in jax.jacrev's layout as an (out, in) matrix.

    The layout: out_shape + in_shape, a pytree of such leaves for a pytree input, and for a
    pytree output one such block per output leaf, nested outside. `out` is the output (arrays
    or shapes), or its size when it is one array.
    """
    if isinstance(out, (int, np.integer)):
        blocks, sizes = [jac], [int(out)]
    else:
        out_leaves, out_def = jax.tree_util.tree_flatten(out)
        blocks, sizes = out_def.flatten_up_to(jac), [int(np.prod(o.shape)) for o in out_leaves]
    return np.concatenate(
        [
            np.concatenate(
                [np.reshape(np.asarray(J), (size, -1)) for J in jax.tree_util.tree_leaves(block)],
                axis=1,
            )
            for block, size in zip(blocks, sizes)
        ],
        axis=0,
    )


def finite_difference_jacobian(f: Callable, x, step: float = 1.0, levels: int = 18):
    """Central differences refined by Ridders' extrapolation, as an (out, in) matrix.

    One fixed step cannot serve every function: -log p needs h << p, while a loss of logits 1e4
    needs h >> eps |f| to escape cancellation. So differences are taken at h = step / 2^i for
    i < levels, combined in a Richardson table (the h^2 error term cancels between columns),
    and each entry keeps the estimate whose change between table neighbours is smallest.
    Steps that leave f's domain give NaN and are skipped.
    """
    _require_x64()
    f_flat, x_flat = _flat(f, x)
    basis = jnp.eye(x_flat.size, dtype=x_flat.dtype)

    @jit_once
    def central(h):
        return (
            jax.vmap(lambda e: f_flat(x_flat + h * e) - f_flat(x_flat - h * e))(basis) / (2 * h)
        ).T

    table = np.asarray(jax.vmap(central)(step / 2.0 ** jnp.arange(levels)))
    best, error = table[0], np.full(table.shape[1:], np.inf)
    previous = [table[0]]
    with np.errstate(invalid="ignore"):
        for i in range(1, levels):
            row, factor = [table[i]], 4.0
            for j in range(1, i + 1):
                row.append((factor * row[j - 1] - previous[j - 1]) / (factor - 1))
                factor *= 4.0
                estimate = np.maximum(np.abs(row[j] - row[j - 1]), np.abs(row[j] - previous[j - 1]))
                better = estimate < error  # False where NaN
                best, error = np.where(better, row[j], best), np.where(better, estimate, error)
            previous = row
    return best


def check_jacobian(
    f: Callable, jacobian, x, *, name: str = "jacobian", tolerance: float = DEFAULT_TOLERANCE
) -> CheckResult:
    """Compare `jacobian` with jacrev, jacfwd and finite differences of f at x.

    `jacobian` is an array, or a function of x. It is in jax.jacrev's layout: out_shape +
    in_shape, a pytree of such leaves when x is a pytree.
    """
    _require_x64()
    hand = jacobian(x) if callable(jacobian) else jacobian
    f_flat, x_flat = _flat(f, x)
    hand = jacobian_matrix(hand, jax.eval_shape(f, x))
    autodiff = max(
        relative_error(hand, jit_once(jax.jacrev(f_flat))(x_flat)),
        relative_error(hand, jit_once(jax.jacfwd(f_flat))(x_flat)),
    )
    fd = relative_error(hand, finite_difference_jacobian(f, x))
    shapes = f"{_shape_str(x)} -> {_shape_str(jax.eval_shape(f, x))}"
    return CheckResult(name, shapes, autodiff, fd, tolerance)


def check_gradient(
    f: Callable, gradient, x, *, name: str = "gradient", tolerance: float = DEFAULT_TOLERANCE
) -> CheckResult:
    """Compare `gradient` of the scalar f with jax.grad and finite differences.

    `gradient` is a pytree like x, or a function of x.
    """
    _require_x64()
    _flat(f, x)  # validates the dtype before jax.grad's less specific error
    hand = gradient(x) if callable(gradient) else gradient
    out = jax.eval_shape(f, x)
    if out.shape != ():
        raise ValueError(
            f"check_gradient needs a scalar function; f returns shape {out.shape}: "
            "use check_jacobian"
        )
    hand_flat = np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(hand)])
    f_flat, x_flat = _flat(f, x)
    autodiff = relative_error(hand_flat, jit_once(jax.grad(lambda v: f_flat(v)[0]))(x_flat))
    fd = relative_error(hand_flat, finite_difference_jacobian(f, x)[0])
    return CheckResult(name, f"{_shape_str(x)} -> ()", autodiff, fd, tolerance)


def _shape_str(tree) -> str:
    leaves = jax.tree_util.tree_leaves(tree)
    if len(leaves) == 1:
        return "x".join(map(str, jnp.shape(leaves[0]))) or "()"
    return "{" + ", ".join("x".join(map(str, jnp.shape(leaf))) for leaf in leaves) + "}"


# ------------------------------------------------------------------------------------- the suite


def _normal(rng, shape):
    return jnp.asarray(rng.standard_normal(shape))


def _split(key):
    return jax.random.split(key, 3)


def _batch(rng, batch: int, shape):
    """A random batch of examples of `shape`; a tuple of batches for a tuple of shapes."""
    from jaxnet.layers.base import is_shape

    if is_shape(shape):
        return _normal(rng, (batch,) + tuple(shape))
    return tuple(_batch(rng, batch, s) for s in shape)


def _layer_checks(rng, key):
    """Every layer's hand-written Jacobians, w.r.t. its input and its parameters.

    For one sample n of a batch; inputs and outputs may be tuples of batches (the combinators),
    and a layer whose samples are coupled is checked against the whole batch (J_x of shape
    out_shape + x.shape).
    """
    from jaxnet import layers as L

    same_conv = lambda: L.Conv2D(2, 3, 1, "same")
    cases = [
        ("Dense(5)", L.Dense(5), (7,)),
        ("Conv2D(3, 3x3, 'valid')", L.Conv2D(3, 3), (6, 5, 2)),
        ("Conv2D(3, 3x2, s=2, 'same')", L.Conv2D(3, (3, 2), 2, "same"), (7, 6, 2)),
        ("Conv2D(2, 3x3, 'full')", L.Conv2D(2, 3, 1, "full"), (4, 5, 2)),
        ("Conv2D(2, 3x3, s=(2,1), explicit)", L.Conv2D(2, 3, (2, 1), ((2, 1), (0, 2))), (6, 5, 3)),
        ("MaxPool(2x2)", L.MaxPool(2), (6, 4, 3)),
        ("MaxPool(3x3, s=2, 'same')", L.MaxPool(3, 2, "same"), (7, 6, 2)),
        ("AvgPool(2x3, s=1, 'same')", L.AvgPool((2, 3), 1, "same"), (5, 5, 2)),
        ("Conv1D(3, k=3, s=2, 'same')", L.Conv1D(3, 3, 2, "same"), (7, 2)),
        ("Conv1D(2, k=2, explicit (2, 1))", L.Conv1D(2, 2, 1, (2, 1)), (5, 3)),
        ("GlobalAvgPool on (L, C)", L.GlobalAvgPool, (5, 3)),
        ("GlobalAvgPool on (H, W, C)", L.GlobalAvgPool, (3, 4, 2)),
        ("LayerNorm on (L, C)", L.LayerNorm(), (3, 5)),
        ("BatchNorm on (L, C), coupled batch", L.BatchNorm(), (3, 2)),
        ("Flatten", L.Flatten, (3, 2, 2)),
        ("Sigmoid", L.Sigmoid, (9,)),
        ("Tanh", L.Tanh, (9,)),
        ("Relu", L.Relu, (3, 3, 2)),
        ("Swish(beta=1.7)", L.Swish(1.7), (9,)),
        ("Softmax", L.Softmax, (6,)),
        ("LogSoftmax", L.LogSoftmax, (6,)),
        ("Dropout(0.4), training", L.Dropout(0.4), (10,)),
        ("Dropout(0.4, scale_at='test'), testing", L.Dropout(0.4, "test"), (10,)),
        ("Reshape(4, 3)", L.Reshape(4, 3), (2, 3, 2)),
        ("RandomCrop(2), training", L.RandomCrop(2), (4, 5, 2)),
        ("RandomFlip, training", L.RandomFlip, (3, 4, 2)),
        ("Elman(3), h_T", L.Elman(3), (4, 2)),
        ("Elman(3), sequence", L.Elman(3, return_sequence=True), (4, 2)),
        ("GRU(3), h_T", L.GRU(3), (4, 2)),
        ("GRU(3), sequence", L.GRU(3, return_sequence=True), (4, 2)),
        ("FanOut(3)", L.FanOut(3), (5,)),
        ("FanInSum of 3", L.FanInSum, ((3, 2), (3, 2), (3, 2))),
        ("FanInConcat(axis=-1)", L.FanInConcat(), ((2, 2, 3), (2, 2, 1))),
        ("FanInConcat(axis=0)", L.FanInConcat(0), ((2, 3), (1, 3))),
        ("parallel(Dense(3), Tanh)", L.parallel(L.Dense(3), L.Tanh), ((4,), (2,))),
        (
            "parallel(Dropout, Dense(2)), training",
            L.parallel(L.Dropout(0.3), L.Dense(2)),
            ((3,), (4,)),
        ),
        ("Residual(Dense(4), Tanh)", L.Residual(L.Dense(4), L.Tanh), (4,)),
        (
            "Residual(Conv2D same, Relu, Conv2D same)",
            L.Residual(same_conv(), L.Relu, same_conv()),
            (4, 4, 2),
        ),
        (
            "two branches: FanOut(2), parallel(Dense, Dense-Tanh), FanInConcat",
            L.serial(
                L.FanOut(2), L.parallel(L.Dense(2), L.serial(L.Dense(3), L.Tanh)), L.FanInConcat()
            ),
            (4,),
        ),
    ]
    results = []
    for name, layer, in_shape in cases:
        key, k_init, k_drop = _split(key)
        results += _one_layer_checks(rng, name, layer, in_shape, k_init, k_drop)
    return results


def _one_layer_checks(rng, name, layer, in_shape, k_init, k_drop):
    """check_jacobian of one layer's J_x and J_params for sample n = 1 of a batch of 3."""
    from jaxnet.layers.base import couples_batch, sample

    _, params = layer.init(k_init, in_shape)
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * _normal(rng, p.shape), params)
    x = _batch(rng, 3, in_shape)
    drop_key = k_drop if "training" in name else None
    n = 1
    J_w, J_x = jit_once(layer.jacobians, static_argnums=2)(params, x, n, key=drop_key)

    def on_input(x_n):
        x_ = jax.tree_util.tree_map(lambda a, a_n: a.at[n].set(a_n), x, x_n)
        return sample(layer.apply(params, x_, key=drop_key), n)

    def on_batch(x_):  # a layer that couples the batch: J_x spans it (out_shape + x.shape)
        return sample(layer.apply(params, x_, key=drop_key), n)

    coupled = couples_batch(layer)
    results = [
        check_jacobian(
            on_batch if coupled else on_input,
            J_x,
            x if coupled else sample(x, n),
            name=f"{name}: d out / d input",
        )
    ]
    if jax.tree_util.tree_leaves(params):

        def on_params(p):
            return sample(layer.apply(p, x, key=drop_key), n)

        results.append(check_jacobian(on_params, J_w, params, name=f"{name}: d out / d params"))
    return results


def _notes_layer_checks(rng, key):
    """The notes' combined layers.

    Dense + point activation, and ReLU + max-pooling over windows P(i).
    """
    from jaxnet import activations as A
    from jaxnet import layers as L

    results = []
    _, params = L.Dense(6).init(key, (4,))
    params = {"W": params["W"], "b": 0.3 * _normal(rng, (6,))}
    x = _normal(rng, (4,))
    for fname in ("sigmoid", "tanh", "relu", "swish"):
        f, f_prime = A.POINT_ACTIVATIONS[fname]
        J_w, J_x = jit_once(L.dense_activation_jacobians, static_argnums=2)(params, x, f_prime)
        results.append(
            check_jacobian(
                lambda x_: f(params["W"] @ x_ + params["b"]),
                J_x,
                x,
                name=f"dense + {fname}: d x / d x_prev",
            )
        )
        results.append(
            check_jacobian(
                lambda p: f(p["W"] @ x + p["b"]),
                J_w,
                params,
                name=f"dense + {fname}: d x / d W (Kronecker delta)",
            )
        )
    windows = jnp.array([[0, 1, 2], [2, 3, 4], [4, 5, 0]])
    J_w, J_x = jit_once(L.relu_maxpool_jacobians)(params, x, windows)
    results.append(
        check_jacobian(
            lambda x_: L.relu_maxpool(params, x_, windows),
            J_x,
            x,
            name="ReLU + max-pool: d x / d x_prev",
        )
    )
    results.append(
        check_jacobian(
            lambda p: L.relu_maxpool(p, x, windows), J_w, params, name="ReLU + max-pool: d x / d W"
        )
    )
    return results


def _loss_checks(rng):
    from jaxnet import activations as A
    from jaxnet import losses

    z = 2 * _normal(rng, (4, 5))
    labels = jnp.asarray(rng.integers(0, 5, (4,)))
    p = A.softmax(z)
    s = jnp.asarray(rng.uniform(0.05, 0.95, (4, 3)))
    y = jnp.asarray(rng.uniform(size=(4, 3)) > 0.5, jnp.float64)
    huge = jnp.array([[1e4, 0.0, -1e4, 5.0, 1e4 - 1.0]] * 2)
    huge_labels = jnp.array([1, 2])
    cases = [
        ("quadratic (1/2)||y' - y||^2", losses.QUADRATIC, s, _normal(rng, (4, 3))),
        ("binary cross-entropy on p", losses.BINARY_CROSS_ENTROPY, s, y),
        (
            "binary cross-entropy on logits",
            losses.BINARY_CROSS_ENTROPY_FROM_LOGITS,
            3 * z[:, :3],
            y,
        ),
        (
            "binary cross-entropy, logits +-1e4",
            losses.BINARY_CROSS_ENTROPY_FROM_LOGITS,
            huge[:, :3],
            jnp.array([[0.0, 1.0, 1.0]] * 2),
        ),
        ("cross-entropy on probabilities", losses.CROSS_ENTROPY, p, labels),
        ("cross-entropy on logits (p - q)", losses.CROSS_ENTROPY_FROM_LOGITS, z, labels),
        (
            "cross-entropy on logits, one-hot",
            losses.CROSS_ENTROPY_FROM_LOGITS,
            z,
            jax.nn.one_hot(labels, 5),
        ),
        ("cross-entropy, logits +-1e4", losses.CROSS_ENTROPY_FROM_LOGITS, huge, huge_labels),
    ]
    results = []
    for name, loss, pred, target in cases:
        results.append(
            check_gradient(
                lambda q, loss=loss, target=target: jnp.sum(loss.value(q, target)),
                jit_once(loss.derivative)(pred, target),
                pred,
                name=f"loss: {name}",
            )
        )
    params = {"W": _normal(rng, (3, 4)), "b": _normal(rng, (3,))}
    results.append(
        check_gradient(
            lambda w: losses.l2_penalty(w, 0.3),
            losses.l2_penalty_derivative(params, 0.3),
            params,
            name="weight decay (lambda/2) sum w^2",
        )
    )
    return results


def _backprop_checks(rng, key):
    from jaxnet import backprop, losses
    from jaxnet import layers as L

    networks = [
        (
            "MLP 6-8-8-4 sigmoid/relu, cross-entropy",
            L.serial(L.Dense(8), L.Sigmoid, L.Dense(8), L.Relu, L.Dense(4)),
            (6,),
            losses.CROSS_ENTROPY_FROM_LOGITS,
        ),
        (
            "MLP 5-7-3 tanh + softmax, quadratic",
            L.serial(L.Dense(7), L.Tanh, L.Dense(3), L.Softmax),
            (5,),
            losses.QUADRATIC,
        ),
        (
            "CNN conv-relu-maxpool-dense, dropout",
            L.serial(
                L.Conv2D(3, 3, 1, "same"),
                L.Relu,
                L.MaxPool(2),
                L.Conv2D(2, 2, 2, "valid"),
                L.Swish(),
                L.Flatten,
                L.Dropout(0.3),
                L.Dense(3),
            ),
            (8, 8, 2),
            losses.CROSS_ENTROPY_FROM_LOGITS,
        ),
        (
            "RNN GRU(4)-dense over 5 steps (BPTT)",
            L.serial(L.GRU(4), L.Dense(3)),
            (5, 2),
            losses.CROSS_ENTROPY_FROM_LOGITS,
        ),
        (
            "residual CNN conv-relu-(x + conv-relu-conv)-maxpool-dense",
            L.serial(
                L.Conv2D(3, 3, 1, "same"),
                L.Relu,
                L.Residual(L.Conv2D(3, 3, 1, "same"), L.Relu, L.Conv2D(3, 3, 1, "same")),
                L.MaxPool(2),
                L.Flatten,
                L.Dense(3),
            ),
            (6, 6, 2),
            losses.CROSS_ENTROPY_FROM_LOGITS,
        ),
        (
            "branch MLP fan-out, dense | dense-tanh, concat, dense",
            L.serial(
                L.FanOut(2),
                L.parallel(L.Dense(4), L.serial(L.Dense(3), L.Tanh)),
                L.FanInConcat(),
                L.Dense(3),
            ),
            (5,),
            losses.CROSS_ENTROPY_FROM_LOGITS,
        ),
    ]
    results = []
    for name, net, in_shape, loss in networks:
        key, k_init, k_drop = _split(key)
        out_shape, params = net.init(k_init, in_shape)
        params = jax.tree_util.tree_map(lambda p: p + 0.1 * _normal(rng, p.shape), params)
        x = _normal(rng, (5,) + in_shape)
        if loss is losses.QUADRATIC:
            y = jnp.asarray(rng.uniform(size=(5,) + out_shape))
        else:
            y = jnp.asarray(rng.integers(0, out_shape[0], (5,)))
        drop_key = k_drop if "dropout" in name else None

        def risk(p, net=net, x=x, y=y, loss=loss, drop_key=drop_key):
            return losses.risk(loss, net.apply(p, x, key=drop_key), y)

        for form, fn in (
            ("Algorithm 1, per sample", backprop.backprop),
            ("batched vjp", backprop.backprop_batched),
        ):
            grads = jit_once(fn, static_argnums=(0, 4))(net, params, x, y, loss, key=drop_key)
            results.append(check_gradient(risk, grads, params, name=f"backprop ({form}): {name}"))
    return results


def run_all(seed: int = 0) -> list[CheckResult]:
    """Every check of jaxnet's hand-written derivatives, on random inputs drawn from `seed`."""
    _require_x64()
    # Inputs come from numpy: drawing them with jax.random would compile a kernel per shape.
    rng, key = np.random.default_rng(seed), jax.random.PRNGKey(seed)
    return (
        _layer_checks(rng, key)
        + _notes_layer_checks(rng, key)
        + _loss_checks(rng)
        + _backprop_checks(rng, key)
    )


def format_table(results: list[CheckResult]) -> str:
    """The results as an aligned text table."""
    header = ("check", "shapes", "vs jax (rev+fwd)", "vs finite diff", "result")
    rows = [
        (
            r.name,
            r.shapes,
            f"{r.error_vs_autodiff:.1e}",
            f"{r.error_vs_finite_differences:.1e}",
            "pass" if r.passed else "FAIL",
        )
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = lambda row: "  ".join(
        str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))
    )
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxnet-verify", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--json", action="store_true", help="print the results as JSON instead of a table"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    start = time.perf_counter()
    results = run_all(args.seed)
    failures = [r for r in results if not r.passed]
    if args.json:
        print(
            json.dumps(
                {
                    "seed": args.seed,
                    "tolerance": DEFAULT_TOLERANCE,
                    "passed": not failures,
                    "checks": [r.as_dict() for r in results],
                },
                indent=2,
            )
        )
    else:
        print(format_table(results))
        print(
            f"\n{len(results) - len(failures)} passed, {len(failures)} failed "
            f"(relative error tolerance {DEFAULT_TOLERANCE:g}, float64, seed {args.seed}, "
            f"{time.perf_counter() - start:.1f} s)"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
