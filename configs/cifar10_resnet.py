"""A residual CNN with BatchNorm on CIFAR-10, with random crops and flips on the device.

The augmentation layers act in training only (with the step's PRNG key) and inside the
compiled step; evaluation sees the images as they are. Three stages of conv-BN-ReLU and a
residual block (64, 128, 256 maps), global average pooling; Nesterov momentum with weight decay
and a warm-up and cosine decay.
"""

from configs.resnet import stage
from jaxnet.training.config import base_config


def get_config():
    config = base_config()
    config.dataset.name = "cifar10"
    config.model.kind = "layers"
    augment = ("randomcrop(4)", "randomflip")
    config.model.layers = augment + stage(64) + stage(128) + stage(256) + ("globalavgpool",)
    config.model.init = "he"
    config.optimizer.name = "nesterov"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.weight_decay.lam = 5e-4
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 2
    config.batch_size = 128
    config.epochs = 40
    config.early_stopping.patience = 10
    config.steps_per_chunk = 1
    return config
