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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax


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

    return Layer("serial", init, apply, None, vjp, {"layers": flat_layers})
