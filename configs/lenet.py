"""LeNet-style CNN (conv 5x5x6, pool, conv 5x5x16, pool, 120, 84) on MNIST.

Offline, use --config.dataset.name=fashion_mnist.
"""

from jaxnet.training.config import base_config


def get_config():
    config = base_config()
    config.dataset.name = "mnist"
    config.model.kind = "lenet"
    config.model.init = "he"
    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1
    config.weight_decay.lam = 5e-4
    config.batch_size = 128
    config.epochs = 15
    return config
