"""The layer record and `serial`, which composes layers into one network with one parameter pytree.

A layer is pure functions over explicit parameters, in the style of `jax.example_libraries.stax`:

    output_shape, params = layer.init(key, input_shape)   # input_shape excludes the batch axis
    y = layer.apply(params, x, key=None)                  # x has a leading batch axis

and, beside them, its hand-written derivatives:

    J_params, J_x = layer.jacobians(params, x, n, key=None)
        the local Jacobians of the notes' equation (5) for sample n of the batch x:
        J_x has shape out_shape + in_shape, and J_params is a pytree like params whose leaves
        have shape out_shape + leaf.shape (the layout `jax.jacrev` produces);
    g_params, g_x = layer.vjp(params, x, g, key=None)
        the same derivatives applied to a batch of row vectors g = dl/dy (closed form, no
        Jacobian matrix is built): g_params is summed over the batch, g_x is per sample.

`key` is the explicit PRNG key of stochastic layers (dropout). Passing one means "training";
without it every layer is deterministic. Layers without parameters have params == ().

State. A layer with running statistics (BatchNorm) also has `stateful`, a `Stateful` record:

    state = layer.stateful.init_state(input_shape)
    y, new_state = layer.stateful.apply(params, state, x, key=None, train=False,
                                        mask=None, axis_name=None)

`train=True` normalises with the batch's statistics and returns the updated running averages;
`train=False` uses the running averages and returns the state unchanged. `mask` (N,) weighs
the examples that count in batch statistics (padding weighs 0); `axis_name` names the pmap
axis over which a data-parallel batch's statistics are summed. Nothing is mutated: the caller
threads the state. `init_state(layer, shape)` and `apply_stateful(layer, ...)` work on every
layer (a stateless layer's state is ()), so code that threads state need not ask which is which.
A layer's plain `apply` (and its `jacobians`, `vjp`) is the training-mode function of the batch.

A layer whose output for sample n depends on other samples of the batch (BatchNorm in
training) has spec["couples_batch"] = True, and its `jacobians(params, x, n)` returns J_x of
shape out_shape + x.shape (sample n's output against the whole batch); `couples_batch(layer)`.

Tuple activations. Between layers an activation may be a tuple of batches (the branches of
`jaxnet.layers.combinators`); a layer then gets a tuple of shapes in `init`, and its Jacobians
keep jax.jacrev's layout for pytrees: J_x[i][j] has shape out_i + in_j (out_i + x_j.shape for a
layer that couples the batch), and J_params[i] is a pytree like params with leaves
out_i + leaf.shape; vjp takes g shaped like the output and returns g_x shaped like x.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Stateful(NamedTuple):
    """What a layer with state adds: its initial state and its state-threading apply."""

    init_state: Callable  # (input_shape) -> state pytree
    apply: Callable  # (params, state, x, *, key, train, mask, axis_name) -> (y, new_state)


class Layer(NamedTuple):
    """A layer: init and apply, its local Jacobians and vector-Jacobian product, its settings.

    `spec` holds its hyper-parameters.
    """

    name: str
    init: Callable
    apply: Callable
    jacobians: Callable | None
    vjp: Callable | None
    spec: Mapping[str, Any]
    stateful: Stateful | None = None

    # Layers are closures, so two are the same layer only if they are the same object; hashing by
    # identity also lets a network be a static argument of jax.jit.
    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def __hash__(self):
        return id(self)


def default_float():
    """The dtype of freshly initialised parameters.

    float64 when jax_enable_x64 is on, float32 otherwise.
    """
    return jax.dtypes.canonicalize_dtype(jax.numpy.float64)


def couples_batch(layer: Layer) -> bool:
    """Whether sample n's output depends on the other samples of the batch."""
    return bool(layer.spec.get("couples_batch", False))


def output_shape(layer: Layer, input_shape) -> tuple[int, ...]:
    """The shape `layer.init` gives for `input_shape`, traced without drawing a number."""
    out = []  # a Python tuple, which eval_shape would turn into arrays if returned
    jax.eval_shape(lambda k: out.append(layer.init(k, tuple(input_shape))[0]), _ABSTRACT_KEY)
    return out[0]


_ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jax.numpy.uint32)


def init_state(layer: Layer, input_shape):
    """The layer's initial state: () for a layer without one."""
    return () if layer.stateful is None else layer.stateful.init_state(tuple(input_shape))


def apply_stateful(
    layer: Layer, params, state, x, *, key=None, train=False, mask=None, axis_name=None
):
    """(y, new_state) for any layer: a stateless one applies and returns `state` as it was."""
    if layer.stateful is None:
        return layer.apply(params, x, key=key), state
    return layer.stateful.apply(
        params, state, x, key=key, train=train, mask=mask, axis_name=axis_name
    )


def has_state(layer: Layer) -> bool:
    return layer.stateful is not None


def sequence_stateful(layers) -> Stateful | None:
    """The Stateful of layers applied in sequence, the state a tuple with one entry per layer.

    None if no layer has state.
    """
    layers = tuple(layers)
    if not any(has_state(layer) for layer in layers):
        return None

    def init(input_shape):
        states, shape = [], tuple(input_shape)
        for layer in layers:
            states.append(init_state(layer, shape))
            shape = output_shape(layer, shape)
        return tuple(states)

    def apply(params, state, x, *, key=None, train=False, mask=None, axis_name=None):
        new = []
        for layer, p, s, k in zip(layers, params, state, layer_keys(key, len(layers))):
            x, s = apply_stateful(
                layer, p, s, x, key=k, train=train, mask=mask, axis_name=axis_name
            )
            new.append(s)
        return x, tuple(new)

    return Stateful(init, apply)


def layer_keys(key, count: int) -> list:
    """Per-layer keys for `count` layers.

    The split `serial` uses, so back-propagation can repeat it.
    """
    if key is None:
        return [None] * count
    return list(jax.random.split(key, count))


def forward_with_activations(layers, params, x, key=None) -> list:
    """Forward propagation that stores every layer output: [x^(0), x^(1), ..., x^(K)]."""
    xs = [x]
    for layer, p, k in zip(layers, params, layer_keys(key, len(layers))):
        xs.append(layer.apply(p, xs[-1], key=k))
    return xs


def backward(layers, params, xs, g, keys) -> tuple[tuple, Any]:
    """The backward recursion (2)-(3) over a batch.

    Each layer's vjp, from the last layer to the first.

    Returns the parameter gradients (one entry per layer) and g = dl/dx^(0).
    """
    grads = [None] * len(layers)
    for k in reversed(range(len(layers))):
        grads[k], g = layers[k].vjp(params[k], xs[k], g, key=keys[k])
    return tuple(grads), g


def pull_back(layers, params, xs, keys, g, n, rows: int = 0, *, to_input: bool = True):
    """The backward recursion (2)-(3) for sample n, with each layer's explicit Jacobians.

    g = dl_n/dx^(K) is a pytree like the output of sample n whose leaves have `rows` leading
    axes (0: the notes' row vector; a Jacobian's out_shape: a block of rows). Layer k's
    gradient is g J_w^(k) (2) and the next g is g J_x^(k) (3), contracted leafwise (`contract`).
    Below a layer that couples the batch, g is a row over the whole batch (leaves
    rows + (N,) + shape: dl_n/dx_m^(k) for every sample m), and each layer below takes
    g_m J^(k)(m) for each m, its params gradient summed over m.

    Returns the per-layer gradients and g at x^(0) (None unless `to_input`).
    """
    grads = [None] * len(layers)
    over_batch = False
    for k in reversed(range(len(layers))):
        want_x = to_input or k > 0
        if over_batch:
            grads[k], g = _pull_back_over_batch(
                layers[k], params[k], xs[k], keys[k], g, rows, want_x
            )
            continue
        J_w, J_x = layers[k].jacobians(params[k], xs[k], n, key=keys[k])
        grads[k] = contract(g, J_w, rows)  # (2)
        g = contract(g, J_x, rows) if want_x else None  # (3); over the batch if layer k couples it
        over_batch = couples_batch(layers[k])
    return tuple(grads), g


def _pull_back_over_batch(layer, params, x, key, g, rows, want_x):
    """One layer of `pull_back` once g spans the batch: g_m J(m) for every sample m."""
    coupled = couples_batch(layer)

    def at(m, g_m):
        J_w, J_x = layer.jacobians(params, x, m, key=key)
        return contract(g_m, J_w, rows), contract(g_m, J_x, rows) if want_x else ()

    grads, g_x = jax.vmap(at, in_axes=(0, rows), out_axes=(0, 0 if coupled else rows))(
        jnp.arange(batch_size(x)), g
    )
    # every sample m uses the same parameters, so their gradients add up over m
    grads = jax.tree_util.tree_map(lambda a: jnp.sum(a, axis=0), grads)
    if coupled:  # each g_m J(m) spans the whole batch below already
        g_x = jax.tree_util.tree_map(lambda a: jnp.sum(a, axis=0), g_x)
    return grads, g_x if want_x else None


# ---------------------------------------------------------------- Jacobians of tuple activations


def is_shape(shape) -> bool:
    """Whether `shape` is one array's shape (a tuple of ints), not a tuple of shapes."""
    return isinstance(shape, (tuple, list)) and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape
    )


def as_shape(shape):
    """An input shape as nested Python tuples: a tuple of ints, or a tuple of such shapes."""
    if is_shape(shape):
        return tuple(int(d) for d in shape)
    if isinstance(shape, (tuple, list)):
        return tuple(as_shape(s) for s in shape)
    raise TypeError(f"an input shape is a tuple of ints or a tuple of shapes, got {shape!r}")


def sample(x, n):
    """Example n of a batch: x[n] for each leaf of a pytree of batches."""
    return jax.tree_util.tree_map(lambda a: a[n], x)


def batch_size(x) -> int:
    """N, the leading axis shared by every leaf of the activation x."""
    return jax.tree_util.tree_leaves(x)[0].shape[0]


def tree_add(a, b):
    """a + b leafwise."""
    return jax.tree_util.tree_map(jnp.add, a, b)


def contract(g, J, rows: int = 0):
    """g J for row blocks g shaped like a layer's output and J in jax.jacrev's layout.

    g's leaf i has shape rows + out_i (`rows` leading axes); J's block i, for output leaf i, is a
    pytree like the input (or the params) with leaves out_i + in_j. The result is like the input,
    with leaves rows + in_j:  (g J)_j = sum_i g_i J_ij, a sum over the outputs fed by input j.
    """
    g_leaves, out_def = jax.tree_util.tree_flatten(g)
    terms = [
        jax.tree_util.tree_map(lambda J_ij, g_i=g_i: jnp.tensordot(g_i, J_ij, g_i.ndim - rows), J_i)
        for g_i, J_i in zip(g_leaves, out_def.flatten_up_to(J))
    ]
    return functools.reduce(tree_add, terms)


def identity_jacobian(x_n):
    """dx_n/dx_n in jax.jacrev's layout: block (i, j) is I when i = j, else 0."""
    leaves, treedef = jax.tree_util.tree_flatten(x_n)

    def block(a, b, same):
        if same:
            return jnp.eye(a.size, dtype=a.dtype).reshape(a.shape + a.shape)
        return jnp.zeros(a.shape + b.shape, a.dtype)

    return treedef.unflatten(
        [
            treedef.unflatten([block(a, b, i == j) for j, b in enumerate(leaves)])
            for i, a in enumerate(leaves)
        ]
    )


def zero_jacobian(out_n, v):
    """d out_n / d v when out_n does not depend on v: leaves out_i + v_j.shape, all 0."""
    out_leaves, out_def = jax.tree_util.tree_flatten(out_n)
    return out_def.unflatten(
        [
            jax.tree_util.tree_map(lambda v_j, o=o: jnp.zeros(o.shape + v_j.shape, o.dtype), v)
            for o in out_leaves
        ]
    )


def batch_layout(J_x, out_n, x, n):
    """A per-sample J_x (out_i + x_j[n].shape) in the whole-batch layout out_i + x_j.shape.

    The layout of a layer that couples the batch; zero off sample n.
    """
    out_leaves, out_def = jax.tree_util.tree_flatten(out_n)

    def embed(J_ij, x_j, out_ndim):
        at_n = (slice(None),) * out_ndim + (n,)
        return jnp.zeros(J_ij.shape[:out_ndim] + x_j.shape, J_ij.dtype).at[at_n].set(J_ij)

    return out_def.unflatten(
        [
            jax.tree_util.tree_map(lambda J_ij, x_j, o=o: embed(J_ij, x_j, o.ndim), J_i, x)
            for o, J_i in zip(out_leaves, out_def.flatten_up_to(J_x))
        ]
    )


def serial(*layers: Layer) -> Layer:
    """Compose layers into a network x^(k) = f^(k)(x^(k-1), w^(k)).

    The params are a tuple, one entry per layer. Nested `serial` networks are flattened, so
    params stay one flat tuple indexed by the notes' k - 1.
    """
    flat: list[Layer] = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(
                f"serial() argument {i} is {type(layer).__name__}, expected a jaxnet Layer"
            )
        flat.extend(layer.spec["layers"] if layer.name == "serial" else [layer])
    flat_layers = tuple(flat)

    def init(key, input_shape):
        params = []
        shape = as_shape(input_shape)
        for layer, k in zip(flat_layers, jax.random.split(key, len(flat_layers))):
            shape, p = layer.init(k, shape)
            params.append(p)
        return shape, tuple(params)

    def apply(params, x, *, key=None):
        _check_params(params)
        for layer, p, k in zip(flat_layers, params, layer_keys(key, len(flat_layers))):
            x = layer.apply(p, x, key=k)
        return x

    def jacobians(params, x, n, *, key=None):
        """The chain rule: J_x = J_K ... J_1, and layer k's params block J_K ... J_{k+1} J_w^(k).

        The recursion (2)-(3) started from g = I (dx^(K)/dx^(K)), one output leaf at a time.
        """
        _check_params(params)
        xs = forward_with_activations(flat_layers, params, x, key)
        keys = layer_keys(key, len(flat_layers))
        y_n = sample(xs[-1], n)
        y_leaves, out_def = jax.tree_util.tree_flatten(y_n)
        seeds = out_def.flatten_up_to(identity_jacobian(y_n))
        pulled = [
            pull_back(flat_layers, params, xs, keys, seed, n, rows=y_i.ndim)
            for seed, y_i in zip(seeds, y_leaves)
        ]
        return out_def.unflatten([w for w, _ in pulled]), out_def.unflatten([g for _, g in pulled])

    def vjp(params, x, g, *, key=None):
        """The backward recursion (2)-(3) of the notes on a whole batch, with each layer's vjp."""
        _check_params(params)
        xs = forward_with_activations(flat_layers, params, x, key)
        return backward(flat_layers, params, xs, g, layer_keys(key, len(flat_layers)))

    def _check_params(params):
        if not isinstance(params, (tuple, list)) or len(params) != len(flat_layers):
            got = (
                f"{type(params).__name__} of length {len(params)}"
                if isinstance(params, (tuple, list))
                else type(params).__name__
            )
            raise ValueError(
                f"serial network of {len(flat_layers)} layers needs a params tuple of that "
                f"length, got {got}"
            )

    has_jacobians = all(layer.jacobians is not None for layer in flat_layers)
    spec = {"layers": flat_layers, "couples_batch": any(map(couples_batch, flat_layers))}
    stateful = sequence_stateful(flat_layers)
    return Layer("serial", init, apply, jacobians if has_jacobians else None, vjp, spec, stateful)
