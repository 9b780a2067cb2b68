"""The least wall time to 92% Fashion-MNIST test accuracy found on 2 CPU cores.

Measured: 92.35% mean test accuracy over seeds 0-2 (92.26, 92.20, 92.60) in 58 s per run,
compilation included (README, "A fast run"). A small CNN with BatchNorm after every layer,
trained on all 60,000 training images for 5 epochs with Adam, a one-cycle schedule (one epoch
of linear warm-up to 3e-3, then cosine decay to 0) and label smoothing 0.1. There is no
validation split: the schedule is fixed, so the last epoch is the one reported.

What the tuning found (README): wider layers (24-48 or 32-64 channels, a residual block at
7x7) cost more time than their accuracy saves; BatchNorm on the 128-unit layer gained 0.3-0.5
points at no cost; 4 epochs fell short (91.86%, seed 0).
"""

from jaxnet.training.config import base_config


def get_config():
    config = base_config()
    config.dataset.name = "fashion_mnist"
    config.dataset.validation_size = 0
    config.model.kind = "layers"
    config.model.layers = (
        "conv2d(16, 3, padding='same')",
        "batchnorm",
        "relu",
        "maxpool(2)",
        "conv2d(32, 3, padding='same')",
        "batchnorm",
        "relu",
        "maxpool(2)",
        "flatten",
        "dense(128)",
        "batchnorm",
        "relu",
    )
    config.model.init = "he"
    config.label_smoothing = 0.1
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1
    config.batch_size = 128
    config.epochs = 5
    # a step takes ~20 ms: dispatching one step per chunk costs nothing and compiles fastest
    config.steps_per_chunk = 1
    return config
