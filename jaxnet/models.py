"""Networks named by a config, built from jaxnet's layers: an MLP of given widths, and three CNNs.

Each registry below maps a config string to what it names; configs validate against these keys,
so the allowed values are defined here once.
"""

from __future__ import annotations

import functools

import jax

from jaxnet import layers as L

ACTIVATIONS = {"sigmoid": L.Sigmoid, "tanh": L.Tanh, "relu": L.Relu, "swish": L.Swish()}


def _nielsen(key, shape, dtype):
    """Nielsen's 'improved' initialisation: N(0, 1 / n_in) for weights (d, e), fan-in first."""
    return jax.random.normal(key, shape, dtype) / jax.numpy.sqrt(shape[0] * 1.0)


INITIALIZERS = {
    "glorot": lambda std: jax.nn.initializers.glorot_normal(),
    "he": lambda std: jax.nn.initializers.he_normal(),
    "normal": jax.nn.initializers.normal,
    "nielsen": lambda std: _nielsen,
}


def initializer(name: str, std: float = 0.01):
    """The weight initialiser a config names; fan-in first, as jax.nn.initializers expect."""
    return INITIALIZERS[name](std)


def _mlp(c, act, dense, conv):
    stack = [L.Flatten]
    for width in c.hidden:
        stack += [dense(width), act]
    return stack


def _cnn(c, act, dense, conv):
    """conv-relu-pool blocks, then dense layers."""
    stack = []
    for channels in c.channels:
        stack += [conv(channels, 3, 1, "same"), act, L.MaxPool(2)]
    return stack + _mlp(c, act, dense, conv)


def _lenet(c, act, dense, conv):
    """LeCun et al. 1998, with ReLU and max-pooling."""
    stack = [conv(6, 5, 1, "same"), act, L.MaxPool(2), conv(16, 5, 1, "valid"), act, L.MaxPool(2)]
    return stack + [L.Flatten, dense(120), act, dense(84), act]


def _cifar_cnn(c, act, dense, conv):
    """Two conv-conv-pool blocks, then dense layers."""
    stack = []
    for channels in c.channels:
        pair = [conv(channels, 3, 1, "same"), act, conv(channels, 3, 1, "same"), act]
        stack += pair + [L.MaxPool(2)]
    return stack + _mlp(c, act, dense, conv)


NETWORKS = {"mlp": _mlp, "cnn": _cnn, "lenet": _lenet, "cifar_cnn": _cifar_cnn}


def build_model(model_config, num_classes: int) -> L.Layer:
    """The network `model_config` describes, ending in `num_classes` logits.

    The output activation (model.output_activation) is applied by the loss, not here, so that
    cross-entropies are computed stably from logits (`jaxnet.training.build`).
    """
    c = model_config
    W_init = initializer(c.init, c.init_std)
    dense = functools.partial(L.Dense, W_init=W_init)
    conv = functools.partial(L.Conv2D, W_init=W_init)
    stack = NETWORKS[c.kind](c, ACTIVATIONS[c.activation], dense, conv)
    if c.dropout > 0:
        stack.append(L.Dropout(c.dropout))
    stack.append(dense(num_classes))
    return L.serial(*stack)
