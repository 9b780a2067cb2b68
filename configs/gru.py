"""A GRU reading Fashion-MNIST images row by row: a sequence of 28 steps of 28 pixels.

The classic "sequential MNIST by rows" task on Fashion-MNIST: Reshape turns each (28, 28, 1)
image into a (28, 28) sequence, a GRU of 128 units reads it (back-propagation through time),
and its last state feeds the output layer. Set model.layers[1] to "elman(128)" for an Elman RNN.
"""

from jaxnet.training.config import base_config


def get_config():
    config = base_config()
    config.dataset.name = "fashion_mnist"
    config.dataset.validation_size = 5000
    config.model.kind = "layers"
    config.model.layers = ("reshape(28, 28)", "gru(128)")
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 2e-3
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1
    config.batch_size = 128
    config.epochs = 10
    config.early_stopping.patience = 3
    config.steps_per_chunk = 1
    return config
