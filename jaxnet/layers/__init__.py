"""Layers as pure (init, apply) functions with their hand-written Jacobians.

See `base` for the contract.
"""

from jaxnet.layers.augmentation import RandomCrop, RandomFlip
from jaxnet.layers.base import (
    Layer,
    Stateful,
    apply_stateful,
    contract,
    couples_batch,
    forward_with_activations,
    has_state,
    identity_jacobian,
    init_state,
    layer_keys,
    output_shape,
    pull_back,
    serial,
)
from jaxnet.layers.combinators import FanInConcat, FanInSum, FanOut, Residual, parallel
from jaxnet.layers.conv import Conv1D, Conv2D
from jaxnet.layers.dense import Dense, augment, dense_activation_jacobians, fold_bias
from jaxnet.layers.dropout import Dropout, dropout_mask
from jaxnet.layers.elementwise import (
    Flatten,
    Identity,
    LogSoftmax,
    Relu,
    Reshape,
    Sigmoid,
    Softmax,
    Swish,
    Tanh,
    elementwise,
)
from jaxnet.layers.normalization import BatchNorm, LayerNorm
from jaxnet.layers.pooling import (
    AvgPool,
    GlobalAvgPool,
    MaxPool,
    relu_maxpool,
    relu_maxpool_jacobians,
)
from jaxnet.layers.recurrent import GRU, Elman

__all__ = [
    "Layer",
    "serial",
    "parallel",
    "FanOut",
    "FanInSum",
    "FanInConcat",
    "Residual",
    "forward_with_activations",
    "pull_back",
    "contract",
    "identity_jacobian",
    "layer_keys",
    "Stateful",
    "apply_stateful",
    "init_state",
    "has_state",
    "couples_batch",
    "output_shape",
    "Dense",
    "Conv1D",
    "Conv2D",
    "MaxPool",
    "AvgPool",
    "GlobalAvgPool",
    "LayerNorm",
    "BatchNorm",
    "Elman",
    "GRU",
    "Flatten",
    "Reshape",
    "Dropout",
    "RandomCrop",
    "RandomFlip",
    "Sigmoid",
    "Tanh",
    "Relu",
    "Swish",
    "Identity",
    "Softmax",
    "LogSoftmax",
    "elementwise",
    "fold_bias",
    "augment",
    "dense_activation_jacobians",
    "relu_maxpool",
    "relu_maxpool_jacobians",
    "dropout_mask",
]
