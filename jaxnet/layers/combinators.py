"""Combinators beyond `serial`: branches that fan out and back in, and residual blocks.

As in `jax.example_libraries.stax`, an activation between layers may be a tuple of batches:

    FanOut(n)            x -> (x, ..., x)
    parallel(f_1, ...)   (x_1, ...) -> (f_1(x_1), ...), params and state a tuple like the layers
    FanInSum             (x_1, ...) -> x_1 + x_2 + ...
    FanInConcat(axis)    (x_1, ...) -> [x_1, x_2, ...] along one of the example's axes
    Residual(*layers)    x -> x + f(x), f = serial(*layers)

so `serial(FanOut(2), parallel(f, g), FanInSum)` is the network x -> f(x) + g(x). Every
combinator has hand-written Jacobians in jax.jacrev's layout for pytrees (J[i][j] has shape
out_i + in_j) and a vjp; `jaxnet.backprop` says how back-propagation runs through them.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp

from jaxnet.layers.base import (
    Layer,
    Stateful,
    apply_stateful,
    as_shape,
    batch_layout,
    couples_batch,
    has_state,
    identity_jacobian,
    init_state,
    is_shape,
    layer_keys,
    sample,
    serial,
    tree_add,
    zero_jacobian,
)


def _check_layers(name: str, layers) -> tuple[Layer, ...]:
    if not layers:
        raise ValueError(f"{name}() needs at least one layer, got none")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(
                f"{name}() argument {i} is {type(layer).__name__}, expected a jaxnet Layer"
            )
    return tuple(layers)


def _input_shapes(name: str, input_shape, count: int | None = None) -> tuple:
    """The tuple of input shapes a fan-in or `parallel` takes, checked."""
    if is_shape(input_shape) or not isinstance(input_shape, (tuple, list)):
        raise ValueError(
            f"{name} takes a tuple of input shapes (from FanOut or parallel), "
            f"got the single shape {input_shape!r}"
        )
    shapes = as_shape(input_shape)
    if count is not None and len(shapes) != count:
        raise ValueError(f"{name} needs a tuple of {count} inputs, got {len(shapes)}: {shapes}")
    return shapes


def _check_inputs(name: str, x, count: int | None = None) -> None:
    if not isinstance(x, (tuple, list)):
        raise ValueError(
            f"{name} takes a tuple of batches (from FanOut or parallel), got {type(x).__name__}"
        )
    if count is not None and len(x) != count:
        raise ValueError(f"{name} needs a tuple of {count} inputs, got {len(x)}")


def _flat_shapes(name: str, shapes) -> None:
    for j, shape in enumerate(shapes):
        if not is_shape(shape):
            raise ValueError(f"{name} input {j} has the tuple shape {shape}, expected one array")


# ------------------------------------------------------------------------------------ fan-out


def FanOut(num: int) -> Layer:
    """x -> (x, ..., x), `num` copies: the point where a graph branches."""
    if not isinstance(num, int) or isinstance(num, bool) or num < 1:
        raise ValueError(f"FanOut num must be a positive int, got {num!r}")

    def init(key, input_shape):
        return (as_shape(input_shape),) * num, ()

    def apply(params, x, *, key=None):
        return (x,) * num

    def jacobians(params, x, n, *, key=None):
        """Each copy is y_i = x, so dy_i/dx = I for every i."""
        return ((),) * num, (identity_jacobian(sample(x, n)),) * num

    def vjp(params, x, g, *, key=None):
        """The sum over consumers: dl/dx = sum_i g_i dy_i/dx = sum_i g_i."""
        _check_inputs("FanOut's vjp", g, num)
        return (), functools.reduce(tree_add, g)

    return Layer("fan_out", init, apply, jacobians, vjp, {"num": num})


# ------------------------------------------------------------------------------------ fan-in


def _fan_in_sum_init(key, input_shape):
    shapes = _input_shapes("FanInSum", input_shape)
    _flat_shapes("FanInSum", shapes)
    if any(shape != shapes[0] for shape in shapes):
        raise ValueError(f"FanInSum needs inputs of one shape, got shapes {shapes}")
    return shapes[0], ()


def _fan_in_sum_apply(params, x, *, key=None):
    _check_inputs("FanInSum", x)
    shapes = tuple(x_j.shape for x_j in x)
    if any(shape != shapes[0] for shape in shapes):
        raise ValueError(f"FanInSum needs inputs of one shape, got batches of shapes {shapes}")
    return functools.reduce(jnp.add, x)


def _fan_in_sum_jacobians(params, x, n, *, key=None):
    """y = sum_j x_j, so dy/dx_j = I for every input j."""
    return (), tuple(identity_jacobian(x_j[n]) for x_j in x)


def _fan_in_sum_vjp(params, x, g, *, key=None):
    """dl/dx_j = g dy/dx_j = g: each input gets a copy of g."""
    return (), tuple(g for _ in x)


FanInSum = Layer(
    "fan_in_sum", _fan_in_sum_init, _fan_in_sum_apply, _fan_in_sum_jacobians, _fan_in_sum_vjp, {}
)


def _concat_axis(axis: int, shapes) -> int:
    """The non-negative concatenation axis of examples of these shapes, checked."""
    ndim = len(shapes[0])
    if any(len(shape) != ndim for shape in shapes):
        raise ValueError(f"FanInConcat needs inputs of one rank, got shapes {shapes}")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"FanInConcat axis must be in [{-ndim}, {ndim}) for examples of rank {ndim} "
            f"(the batch axis does not count), got {axis}"
        )
    a = axis % ndim
    rest = {shape[:a] + shape[a + 1 :] for shape in shapes}
    if len(rest) > 1:
        raise ValueError(
            f"FanInConcat along axis {axis} needs the other dimensions equal, got shapes {shapes}"
        )
    return a


def FanInConcat(axis: int = -1) -> Layer:
    """(x_1, x_2, ...) -> their concatenation along the example's axis `axis`.

    `axis` counts the axes of one example (-1: the last, the features or channels), never the
    batch axis.
    """
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise TypeError(f"FanInConcat axis must be an int, got {axis!r}")

    def init(key, input_shape):
        shapes = _input_shapes("FanInConcat", input_shape)
        _flat_shapes("FanInConcat", shapes)
        a = _concat_axis(axis, shapes)
        return shapes[0][:a] + (sum(s[a] for s in shapes),) + shapes[0][a + 1 :], ()

    def apply(params, x, *, key=None):
        _check_inputs("FanInConcat", x)
        a = _concat_axis(axis, tuple(x_j.shape[1:] for x_j in x))
        return jnp.concatenate(x, axis=1 + a)

    def jacobians(params, x, n, *, key=None):
        """y[.., o_j + u, ..] = x_j[.., u, ..] (o_j: the sizes before x_j along the axis).

        So dy/dx_j is x_j's identity, its output axis padded with o_j zeros before and the
        later inputs' sizes after.
        """
        a = _concat_axis(axis, tuple(x_j.shape[1:] for x_j in x))
        sizes = [x_j.shape[1 + a] for x_j in x]
        blocks, offset = [], 0
        for x_j, size in zip(x, sizes):
            pads = [(0, 0)] * (2 * (x_j.ndim - 1))
            pads[a] = (offset, sum(sizes) - offset - size)
            blocks.append(jnp.pad(identity_jacobian(x_j[n]), pads))
            offset += size
        return (), tuple(blocks)

    def vjp(params, x, g, *, key=None):
        """dl/dx_j = g dy/dx_j: the slice of g that x_j filled."""
        a = _concat_axis(axis, tuple(x_j.shape[1:] for x_j in x))
        ends = list(itertools.accumulate(x_j.shape[1 + a] for x_j in x[:-1]))
        return (), tuple(jnp.split(g, ends, axis=1 + a))

    return Layer("fan_in_concat", init, apply, jacobians, vjp, {"axis": axis})


# ------------------------------------------------------------------------------------ parallel


def _output_n(layer, params, x, key):
    """One example's output of `layer` as shapes: its structure and leaf shapes, nothing run."""
    y = jax.eval_shape(lambda p, x_: layer.apply(p, x_, key=key), params, x)
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), y)


def _block_diagonal(blocks, outs, inputs):
    """jax.jacrev's layout of (y_1, y_2, ...) against (v_1, v_2, ...) when y_i depends on v_i only.

    blocks[i] = dy_i/dv_i; outs[i] is y_i of one example (for its shapes).
    """
    rows = []
    for i, (block, out) in enumerate(zip(blocks, outs)):
        zeros = [zero_jacobian(out, v) for v in inputs]
        out_def = jax.tree_util.tree_structure(out)
        per_leaf = [out_def.flatten_up_to(z) for z in zeros]
        mine = out_def.flatten_up_to(block)
        rows.append(
            out_def.unflatten(
                [
                    tuple(mine[a] if j == i else per_leaf[j][a] for j in range(len(inputs)))
                    for a in range(len(mine))
                ]
            )
        )
    return tuple(rows)


def parallel(*layers: Layer) -> Layer:
    """(x_1, x_2, ...) -> (f_1(x_1), f_2(x_2), ...): layer i on input i.

    Params (and state) are a tuple, one entry per layer.
    """
    layers = _check_layers("parallel", layers)
    count = len(layers)
    coupled = any(map(couples_batch, layers))

    def init(key, input_shape):
        shapes = _input_shapes(f"parallel of {count} layers", input_shape, count)
        outs = [
            layer.init(k, s) for layer, k, s in zip(layers, jax.random.split(key, count), shapes)
        ]
        return tuple(o for o, _ in outs), tuple(p for _, p in outs)

    def apply(params, x, *, key=None):
        _check_inputs(f"parallel of {count} layers", x, count)
        _check_params(params)
        keys = layer_keys(key, count)
        return tuple(
            layer.apply(p, x_i, key=k) for layer, p, x_i, k in zip(layers, params, x, keys)
        )

    def jacobians(params, x, n, *, key=None):
        """y_i = f_i(x_i, w_i): dy_i/dx_j = J_x^(i) for j = i, else 0, and dy_i/dw_k likewise."""
        _check_inputs(f"parallel of {count} layers", x, count)
        _check_params(params)
        keys = layer_keys(key, count)
        J = [layer.jacobians(p, x_i, n, key=k) for layer, p, x_i, k in zip(layers, params, x, keys)]
        outs = [_output_n(layer, p, x_i, k) for layer, p, x_i, k in zip(layers, params, x, keys)]
        J_x = [J_i for _, J_i in J]
        if coupled:  # the whole-batch layout of a coupled branch, for every branch
            J_x = [
                J_i if couples_batch(layer) else batch_layout(J_i, out, x_i, n)
                for layer, J_i, out, x_i in zip(layers, J_x, outs, x)
            ]
        inputs = tuple(x) if coupled else sample(tuple(x), n)
        return (
            _block_diagonal([J_w for J_w, _ in J], outs, tuple(params)),
            _block_diagonal(J_x, outs, inputs),
        )

    def vjp(params, x, g, *, key=None):
        """Each branch's vjp on its own g_i: dl/dx_i = g_i J_x^(i), dl/dw_i = g_i J_w^(i)."""
        _check_inputs(f"parallel of {count} layers", x, count)
        _check_params(params)
        keys = layer_keys(key, count)
        pulled = [
            layer.vjp(p, x_i, g_i, key=k)
            for layer, p, x_i, g_i, k in zip(layers, params, x, g, keys)
        ]
        return tuple(w for w, _ in pulled), tuple(g_x for _, g_x in pulled)

    def _check_params(params):
        if not isinstance(params, (tuple, list)) or len(params) != count:
            raise ValueError(
                f"parallel of {count} layers needs a params tuple of that length, "
                f"got {type(params).__name__}"
                + (f" of length {len(params)}" if isinstance(params, (tuple, list)) else "")
            )

    def init_states(input_shape):
        shapes = _input_shapes(f"parallel of {count} layers", input_shape, count)
        return tuple(init_state(layer, s) for layer, s in zip(layers, shapes))

    def apply_states(params, state, x, *, key=None, train=False, mask=None, axis_name=None):
        _check_inputs(f"parallel of {count} layers", x, count)
        _check_params(params)
        out = [
            apply_stateful(layer, p, s, x_i, key=k, train=train, mask=mask, axis_name=axis_name)
            for layer, p, s, x_i, k in zip(layers, params, state, x, layer_keys(key, count))
        ]
        return tuple(y for y, _ in out), tuple(s for _, s in out)

    stateful = Stateful(init_states, apply_states) if any(map(has_state, layers)) else None
    return Layer(
        "parallel",
        init,
        apply,
        jacobians if all(layer.jacobians is not None for layer in layers) else None,
        vjp if all(layer.vjp is not None for layer in layers) else None,
        {"layers": layers, "couples_batch": coupled},
        stateful,
    )


# ------------------------------------------------------------------------------------ residual


def _check_keeps_shape(x_shapes, y_shapes) -> None:
    if x_shapes != y_shapes:
        raise ValueError(
            f"Residual's layers map shape {x_shapes} to {y_shapes}; "
            "y = x + f(x) needs f to keep the shape"
        )


def _example_shapes(x):
    return jax.tree_util.tree_map(lambda a: a.shape[1:], x)


def Residual(*layers: Layer) -> Layer:
    """y = x + f(x) with f = serial(*layers) keeping the shape (a ResNet block).

    Params (and state) are f's: a tuple, one entry per layer of f.
    """
    f = serial(*_check_layers("Residual", layers))

    def init(key, input_shape):
        shape = as_shape(input_shape)
        out_shape, params = f.init(key, shape)
        _check_keeps_shape(shape, out_shape)
        return shape, params

    def apply(params, x, *, key=None):
        y = f.apply(params, x, key=key)
        _check_keeps_shape(_example_shapes(x), _example_shapes(y))
        return tree_add(x, y)

    def jacobians(params, x, n, *, key=None):
        """dy/dx = I + J_f (the skip connection adds the identity), dy/dw = J_w of f."""
        J_w, J_f = f.jacobians(params, x, n, key=key)
        x_n = sample(x, n)
        eye = identity_jacobian(x_n)
        if couples_batch(f):
            eye = batch_layout(eye, x_n, x, n)
        return J_w, tree_add(eye, J_f)

    def vjp(params, x, g, *, key=None):
        """dl/dx = g (I + J_f) = g + g J_f: the skip connection carries g back unchanged."""
        g_w, g_f = f.vjp(params, x, g, key=key)
        return g_w, tree_add(g, g_f)

    def apply_state(params, state, x, *, key=None, train=False, mask=None, axis_name=None):
        y, new_state = f.stateful.apply(
            params, state, x, key=key, train=train, mask=mask, axis_name=axis_name
        )
        _check_keeps_shape(_example_shapes(x), _example_shapes(y))
        return tree_add(x, y), new_state

    stateful = None if f.stateful is None else Stateful(f.stateful.init_state, apply_state)
    spec = {"layers": f.spec["layers"], "couples_batch": couples_batch(f)}
    return Layer(
        "residual", init, apply, None if f.jacobians is None else jacobians, vjp, spec, stateful
    )
