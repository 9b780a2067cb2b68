"""A residual CNN with BatchNorm on Fashion-MNIST, from layer specs.

conv-BN-ReLU, then per stage a residual block (two 3x3 convs with BatchNorm, y = x + f(x))
and 2x2 max-pooling; global average pooling before the output layer. Adam with a warm-up and
cosine decay (one cycle).
"""

from jaxnet.training.config import base_config


def stage(channels: int) -> tuple[str, ...]:
    conv = f"conv2d({channels}, 3, padding='same')"
    block = f"residual({conv}, batchnorm, relu, {conv}, batchnorm)"
    return (conv, "batchnorm", "relu", block, "relu", "maxpool(2)")


def get_config():
    config = base_config()
    config.dataset.name = "fashion_mnist"
    config.dataset.validation_size = 5000
    config.model.kind = "layers"
    config.model.layers = stage(32) + stage(64) + ("globalavgpool",)
    config.model.init = "he"
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1
    config.batch_size = 128
    config.epochs = 10
    config.early_stopping.patience = 3
    config.steps_per_chunk = 1
    return config
