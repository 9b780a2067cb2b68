"""The slides' MNIST MLP (003, after Nielsen ch. 3): 784-30-10 sigmoid units, batch 10, eta 0.5.

30 epochs.

The cost is chosen by one key, the hidden width by another:
    --config.loss=binary_cross_entropy   (the slides' cross-entropy of sigmoid outputs:
                                          95.49% / 96.82%)
    --config.loss=quadratic              (C = 1/2 ||y - a||^2: 95.42% / 96.59%)
    --config.model.hidden='(100,)'       (784-100-10)
"""

from jaxnet.training.config import base_config


def get_config():
    config = base_config()
    config.dataset.name = "mnist"
    config.dataset.validation_size = 10000  # Nielsen's 50,000 / 10,000 split of the training set
    config.model.kind = "mlp"
    config.model.hidden = (30,)
    config.model.activation = "sigmoid"
    config.model.init = "nielsen"
    config.model.output_activation = "sigmoid"  # sigmoid output units, for either cost
    config.loss = "binary_cross_entropy"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.5
    config.batch_size = 10
    config.epochs = 30
    config.devices.strategy = "single"  # mini-batches of 10 are too small to split
    return config
