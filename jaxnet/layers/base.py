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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax


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
        shape = tuple(input_shape)
        for layer, k in zip(flat_layers, jax.random.split(key, len(flat_layers))):
            shape, p = layer.init(k, shape)
            params.append(p)
        return shape, tuple(params)

    def apply(params, x, *, key=None):
        _check_params(params)
        for layer, p, k in zip(flat_layers, params, layer_keys(key, len(flat_layers))):
            x = layer.apply(p, x, key=k)
        return x

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

    stateful = sequence_stateful(flat_layers)
    return Layer("serial", init, apply, None, vjp, {"layers": flat_layers}, stateful)
