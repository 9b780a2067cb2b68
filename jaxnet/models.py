"""Networks named by a config, built from jaxnet's layers: an MLP of given widths, and three CNNs."""

from __future__ import annotations

import functools

import jax

from jaxnet import layers as L

ACTIVATION_LAYERS = {"sigmoid": L.Sigmoid, "tanh": L.Tanh, "relu": L.Relu, "swish": L.Swish()}


def _nielsen(key, shape, dtype):
    """Nielsen's 'improved' initialisation: N(0, 1 / n_in) for weights (shape (d, e): fan-in first)."""
    return jax.random.normal(key, shape, dtype) / jax.numpy.sqrt(shape[0] * 1.0)


def initializer(name: str, std: float = 0.01):
    """The weight initialiser a config names; fan-in first, as jax.nn.initializers expect."""
    return {
        "glorot": jax.nn.initializers.glorot_normal(),
        "he": jax.nn.initializers.he_normal(),
        "normal": jax.nn.initializers.normal(std),
        "nielsen": _nielsen,
    }[name]


def build_model(model_config, num_classes: int) -> L.Layer:
    """The network `model_config` describes, ending in `num_classes` logits.

    The output activation (model.output_activation) is applied by the loss, not here, so that
    cross-entropies are computed stably from logits (`jaxnet.training.objective`).
    """
    c = model_config
    act = ACTIVATION_LAYERS[c.activation]
    W_init = initializer(c.init, c.init_std)
    dense = functools.partial(L.Dense, W_init=W_init)
    conv = functools.partial(L.Conv2D, W_init=W_init)
    stack = []
    if c.kind == "mlp":
        stack.append(L.Flatten)
        for width in c.hidden:
            stack += [dense(width), act]
    elif c.kind == "cnn":  # conv-relu-pool blocks, then dense layers
        for channels in c.channels:
            stack += [conv(channels, 3, 1, "same"), act, L.MaxPool(2)]
        stack.append(L.Flatten)
        for width in c.hidden:
            stack += [dense(width), act]
    elif c.kind == "lenet":  # LeCun et al. 1998, with ReLU and max-pooling
        stack += [
            conv(6, 5, 1, "same"),
            act,
            L.MaxPool(2),
            conv(16, 5, 1, "valid"),
            act,
            L.MaxPool(2),
            L.Flatten,
        ]
        stack += [dense(120), act, dense(84), act]
    elif c.kind == "cifar_cnn":  # two conv-conv-pool blocks
        for channels in c.channels:
            stack += [
                conv(channels, 3, 1, "same"),
                act,
                conv(channels, 3, 1, "same"),
                act,
                L.MaxPool(2),
            ]
        stack.append(L.Flatten)
        for width in c.hidden:
            stack += [dense(width), act]
    if c.dropout > 0:
        stack.append(L.Dropout(c.dropout))
    stack.append(dense(num_classes))
    return L.serial(*stack)
