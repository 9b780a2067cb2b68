"""Every training config key with its default: configs/*.py start from this and change what they need."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "fashion_mnist"  # mnist | fashion_mnist | cifar10 | digits | synthetic
    c.dataset.data_dir = (
        ""  # a prepared TFDS data dir or a directory of IDX files; "" = the defaults
    )
    c.dataset.validation_size = 0.1  # held out of the training split: a fraction < 1, or a count

    c.model = ml_collections.ConfigDict()
    c.model.kind = "cnn"  # mlp | cnn | lenet | cifar_cnn
    c.model.hidden = (128,)  # widths of the dense hidden layers
    c.model.channels = (32, 64)  # feature maps per conv block (cnn, cifar_cnn)
    c.model.activation = "relu"  # sigmoid | tanh | relu | swish
    c.model.output_activation = "none"  # none (logits) | sigmoid | softmax
    c.model.dropout = 0.0  # drop probability before the output layer
    c.model.init = "glorot"  # glorot | he | normal | nielsen (N(0, 1/n_in))
    c.model.init_std = 0.01  # for init = normal

    c.loss = "cross_entropy"  # cross_entropy (soft-max) | quadratic | binary_cross_entropy (sigmoid outputs)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"  # sgd | momentum | nesterov | adam
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.9  # mu for momentum / nesterov with a constant schedule
    c.optimizer.momentum_schedule = "constant"  # constant | sutskever (the notes' Figure 4)
    c.optimizer.mu_max = 0.99  # cap of the sutskever schedule
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8

    c.weight_decay = ml_collections.ConfigDict()
    c.weight_decay.lam = 0.0  # (lambda/2) sum w^2
    c.weight_decay.decoupled = False  # True: AdamW-style, outside the optimizer

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "constant"  # constant | step | cosine | plateau
    c.schedule.warmup_epochs = 0  # cosine: linear warm-up
    c.schedule.step_epochs = 10  # step: multiply by step_factor every step_epochs
    c.schedule.step_factor = 0.1
    c.schedule.plateau_patience = (
        2  # plateau: divide by 10 after this many epochs without validation progress
    )
    c.schedule.plateau_factor = 0.1

    c.batch_size = 128  # 1 = online learning; -1 = the full training set
    c.epochs = 10

    c.early_stopping = ml_collections.ConfigDict()
    c.early_stopping.patience = (
        0  # epochs without a better validation zero-one error; 0 = never stop early
    )

    c.devices = ml_collections.ConfigDict()
    c.devices.strategy = "sharding"  # single | pmap | sharding (jit with NamedSharding over a mesh)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.keep = 3  # checkpoints kept in WORKDIR/checkpoints
    c.checkpoint.every_chunks = (
        0  # also save every N step chunks within an epoch; 0 = at epoch ends only
    )

    c.steps_per_chunk = 10  # compiled steps per dispatch and progress update (unrolled on CPU: compile time grows with it)
    return c
