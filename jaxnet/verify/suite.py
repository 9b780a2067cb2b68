"""The built-in suite: every layer, loss and back-propagation form of jaxnet, checked.

Each layer gets cases in `_layer_checks`; `iter_checks(seed)` yields the results as they finish.
"""

from __future__ import annotations

import concurrent.futures
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.verify.checks import CheckResult, check_gradient, check_jacobian
from jaxnet.verify.flat import jit_once, require_x64


def _normal(rng, shape):
    return jnp.asarray(rng.standard_normal(shape))


def _init(rng, layer, in_shape):
    """(out_shape, params): params of init's shapes drawn with numpy, 0.5 standard normal.

    jax's initialisers would compile a kernel per shape, for numbers run once.
    """
    out = []  # the Python out_shape, which eval_shape would turn into arrays if returned
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)

    def init(k):
        out_shape, params = layer.init(k, tuple(in_shape))
        out.append(out_shape)
        return params

    shapes = jax.eval_shape(init, key)
    draw = lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape))
    return out[0], jax.tree_util.tree_map(draw, shapes)


def _split(key):
    return jax.random.split(key, 3)


def _batch(rng, batch: int, shape):
    """A random batch of examples of `shape`; a tuple of batches for a tuple of shapes."""
    from jaxnet.layers.base import is_shape

    if is_shape(shape):
        return _normal(rng, (batch,) + tuple(shape))
    return tuple(_batch(rng, batch, s) for s in shape)


def _layer_checks(seed, key):
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
        ("Identity", L.Identity, (4,)),
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
    for i, (name, layer, in_shape) in enumerate(cases):
        key, k_init, k_drop = _split(key)
        rng = np.random.default_rng([seed, 0, i])
        yield functools.partial(
            _listed, _one_layer_checks, rng, name, layer, in_shape, k_init, k_drop
        )


def _listed(checks, *args):
    return list(checks(*args))


def _one_layer_checks(rng, name, layer, in_shape, k_init, k_drop):
    """check_jacobian of one layer's J_x and J_params for sample n = 1 of a batch of 3."""
    from jaxnet.layers.base import couples_batch, sample

    _, params = _init(rng, layer, in_shape)
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
    yield check_jacobian(
        on_batch if coupled else on_input,
        J_x,
        x if coupled else sample(x, n),
        name=f"{name}: d out / d input",
    )
    if jax.tree_util.tree_leaves(params):

        def on_params(p):
            return sample(layer.apply(p, x, key=drop_key), n)

        yield (check_jacobian(on_params, J_w, params, name=f"{name}: d out / d params"))


def _notes_layer_checks(rng, key):
    """The notes' combined layers.

    Dense + point activation, and ReLU + max-pooling over windows P(i).
    """
    from jaxnet import activations as A
    from jaxnet import layers as L

    _, params = _init(rng, L.Dense(6), (4,))
    params = {"W": params["W"], "b": 0.3 * _normal(rng, (6,))}
    x = _normal(rng, (4,))
    for fname in ("sigmoid", "tanh", "relu", "swish"):
        f, f_prime = A.POINT_ACTIVATIONS[fname]
        J_w, J_x = jit_once(L.dense_activation_jacobians, static_argnums=2)(params, x, f_prime)
        yield (
            check_jacobian(
                lambda x_: f(params["W"] @ x_ + params["b"]),
                J_x,
                x,
                name=f"dense + {fname}: d x / d x_prev",
            )
        )
        yield (
            check_jacobian(
                lambda p: f(p["W"] @ x + p["b"]),
                J_w,
                params,
                name=f"dense + {fname}: d x / d W (Kronecker delta)",
            )
        )
    windows = jnp.array([[0, 1, 2], [2, 3, 4], [4, 5, 0]])
    J_w, J_x = jit_once(L.relu_maxpool_jacobians)(params, x, windows)
    yield (
        check_jacobian(
            lambda x_: L.relu_maxpool(params, x_, windows),
            J_x,
            x,
            name="ReLU + max-pool: d x / d x_prev",
        )
    )
    yield (
        check_jacobian(
            lambda p: L.relu_maxpool(p, x, windows), J_w, params, name="ReLU + max-pool: d x / d W"
        )
    )


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
    for name, loss, pred, target in cases:
        yield (
            check_gradient(
                lambda q, loss=loss, target=target: jnp.sum(loss.value(q, target)),
                jit_once(loss.derivative)(pred, target),
                pred,
                name=f"loss: {name}",
            )
        )
    params = {"W": _normal(rng, (3, 4)), "b": _normal(rng, (3,))}
    yield (
        check_gradient(
            lambda w: losses.l2_penalty(w, 0.3),
            losses.l2_penalty_derivative(params, 0.3),
            params,
            name="weight decay (lambda/2) sum w^2",
        )
    )


def _backprop_checks(seed, key):
    from jaxnet import layers as L
    from jaxnet import losses

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
    for i, (name, net, in_shape, loss) in enumerate(networks):
        key, k_init, k_drop = _split(key)
        rng = np.random.default_rng([seed, 3, i])
        yield functools.partial(_listed, _backprop_case, rng, k_drop, name, net, in_shape, loss)


def _backprop_case(rng, k_drop, name, net, in_shape, loss):
    """Both forms of back-propagation through one network against the risk's gradient."""
    from jaxnet import backprop, losses

    out_shape, params = _init(rng, net, in_shape)
    x = _normal(rng, (5,) + in_shape)
    if loss is losses.QUADRATIC:
        y = jnp.asarray(rng.uniform(size=(5,) + out_shape))
    else:
        y = jnp.asarray(rng.integers(0, out_shape[0], (5,)))
    drop_key = k_drop if "dropout" in name else None

    def risk(p):
        return losses.risk(loss, net.apply(p, x, key=drop_key), y)

    for form, fn in (
        ("Algorithm 1, per sample", backprop.backprop),
        ("batched vjp", backprop.backprop_batched),
    ):
        grads = jit_once(fn, static_argnums=(0, 4))(net, params, x, y, loss, key=drop_key)
        yield (check_gradient(risk, grads, params, name=f"backprop ({form}): {name}"))


def _tasks(seed):
    """The checks as tasks, each with its own random numbers: they may run in any order."""
    # Inputs come from numpy: drawing them with jax.random would compile a kernel per shape.
    key = jax.random.PRNGKey(seed)
    yield from _layer_checks(seed, key)
    rng = np.random.default_rng([seed, 1])
    yield functools.partial(_listed, _notes_layer_checks, rng, key)
    yield functools.partial(_listed, _loss_checks, np.random.default_rng([seed, 2]))
    yield from _backprop_checks(seed, key)


def iter_checks(seed: int = 0, workers: int = 2):
    """Every check of jaxnet's hand-written derivatives, yielded in order as each finishes.

    On `workers` threads: most of a check's time is XLA compiling, which leaves Python free.
    """
    require_x64()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(task) for task in _tasks(seed)]
        try:
            for future in futures:
                yield from future.result()
        finally:
            for future in futures:
                future.cancel()


def run_all(seed: int = 0) -> list[CheckResult]:
    """Every check of jaxnet's hand-written derivatives, on random inputs drawn from `seed`."""
    return list(iter_checks(seed))
