"""A CIFAR-10 CNN: two conv-conv-pool blocks (64, 128 maps), 256 units, dropout, Nesterov.

Momentum with a step schedule and weight decay.
"""

from jaxnet.training.config import base_config


def get_config():
    config = base_config()
    config.dataset.name = "cifar10"
    config.model.kind = "cifar_cnn"
    config.model.channels = (64, 128)
    config.model.hidden = (256,)
    config.model.dropout = 0.5
    config.model.init = "he"
    config.optimizer.name = "nesterov"
    config.optimizer.learning_rate = 0.05
    config.optimizer.momentum = 0.9
    config.weight_decay.lam = 5e-4
    config.schedule.name = "step"
    config.schedule.step_epochs = 15
    config.batch_size = 128
    config.epochs = 40
    config.early_stopping.patience = 8
    return config
