"""The CIFAR-10 CNN sized for a TPU VM: a large global batch split over every chip of every host."""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.batch_size = 1024  # global: each of the 8 chips of a v4-8 / v5e-8 gets 128
    config.optimizer.learning_rate = 0.2  # scaled with the batch
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 2
    config.devices.strategy = "sharding"
    config.steps_per_chunk = 100  # a rolled lax.scan on TPU: long chunks cost no compile time
    return config
