"""A config's objects: the network, the per-sample loss, the optimizer and its schedules.

Every config string is resolved through a registry here (or in `jaxnet.models` for networks,
`jaxnet.data` for datasets, `placement` for devices); `config.py` validates against the same
registries, so each list of allowed values is written once.

The optimizer chain is wrapped in `optax.inject_hyperparams`, so the current learning rate and
momentum are in the optimizer state (the training table prints them) and the plateau rule can
divide the learning rate by 10 between epochs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxnet import activations, losses, models, optim, precision
from jaxnet import layers as L
from jaxnet.training.steps import TrainState, Variables

OUTPUT_ACTIVATIONS = {
    "none": lambda z: z,
    "sigmoid": activations.sigmoid,
    "softmax": activations.softmax,
}


def _cross_entropy(output_activation, num_classes, label_smoothing=0.0):
    if label_smoothing == 0:
        return losses.cross_entropy_from_logits

    def loss(z, y):
        return losses.cross_entropy_from_logits(z, losses.smooth_labels(y, z, label_smoothing))

    return loss


def _binary_cross_entropy(output_activation, num_classes, label_smoothing=0.0):
    """The slides' multi-output cross-entropy of sigmoid units, from logits."""

    def loss(z, y):
        return losses.binary_cross_entropy_from_logits(
            z, jax.nn.one_hot(y, num_classes, dtype=z.dtype)
        )

    return loss


def _quadratic(output_activation, num_classes, label_smoothing=0.0):
    """C = 1/2 ||a - y||^2 on the output units a = f(z) against one-hot targets."""
    f = OUTPUT_ACTIVATIONS[output_activation]
    return lambda z, y: losses.quadratic(f(z), jax.nn.one_hot(y, num_classes, dtype=z.dtype))


LOSSES = {
    "cross_entropy": _cross_entropy,
    "quadratic": _quadratic,
    "binary_cross_entropy": _binary_cross_entropy,
}
# Losses computed from logits fix the output activation; "none" means "the loss's own".
LOSS_OUTPUTS = {"cross_entropy": ("none", "softmax"), "binary_cross_entropy": ("none", "sigmoid")}
SMOOTHED_LOSSES = ("cross_entropy",)  # the losses label_smoothing applies to


# The compute dtype of the forward and backward passes (config.dtype). Parameters, optimizer
# state, the loss and its soft-max stay float32 under every policy (`jaxnet.precision`).
COMPUTE_DTYPES = {
    "float32": lambda network: network,
    "bfloat16": lambda network: precision.mixed(network, jnp.bfloat16),
}


def per_sample_loss(
    loss_name: str, output_activation: str, num_classes: int, label_smoothing: float = 0.0
):
    """l(logits, labels) -> (N,): cross-entropies from logits (stable), quadratic on outputs."""
    return LOSSES[loss_name](output_activation, num_classes, label_smoothing)


UPDATE_RULES = {
    "sgd": lambda o, lr, mu: optim.sgd(lr),
    "momentum": lambda o, lr, mu: optim.momentum(lr, mu),
    "nesterov": lambda o, lr, mu: optim.momentum(lr, mu, nesterov=True),
    "adam": lambda o, lr, mu: optim.adam(lr, o.b1, o.b2, o.eps),
}
# The momentum column of the table: mu where the rule has one, Adam's beta1, 0 for SGD.
MOMENTUM_SHOWN = {"sgd": lambda o, mu: 0.0, "adam": lambda o, mu: o.b1}


def _cosine(config, steps_per_epoch):
    lr, s = config.optimizer.learning_rate, config.schedule
    total = config.epochs * steps_per_epoch
    if s.warmup_epochs == 0:
        return optax.cosine_decay_schedule(lr, total)
    warmup = s.warmup_epochs * steps_per_epoch
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total)


def _step(config, steps_per_epoch):
    s = config.schedule
    every = s.step_epochs * steps_per_epoch
    return optax.exponential_decay(
        config.optimizer.learning_rate, every, s.step_factor, staircase=True
    )


SCHEDULES = {
    "constant": lambda config, steps_per_epoch: config.optimizer.learning_rate,
    "plateau": lambda config, steps_per_epoch: config.optimizer.learning_rate,  # set by trainer
    "step": _step,
    "cosine": _cosine,
}

MOMENTUM_SCHEDULES = {
    "constant": lambda o: o.momentum,
    "sutskever": lambda o: lambda t: optim.sutskever_momentum(t, o.mu_max),
}


def learning_rate_schedule(config, steps_per_epoch: int):
    """A float, or an optax schedule of the step count, for config.schedule."""
    return SCHEDULES[config.schedule.name](config, steps_per_epoch)


def decay_mask(params):
    """Weight decay applies to weights, not biases (1-D leaves), as is usual in practice."""
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def build_optimizer(config, steps_per_epoch: int, params) -> optax.GradientTransformation:
    """The config's update rule, with weight decay in the loss or decoupled, and its schedules."""
    o, wd = config.optimizer, config.weight_decay
    mask = decay_mask(params)

    def make(learning_rate, momentum):
        rule = UPDATE_RULES[o.name](o, learning_rate, momentum)
        if wd.lam == 0:
            return rule
        if wd.decoupled:
            return optax.chain(rule, optim.decoupled_weight_decay(wd.lam, learning_rate, mask))
        return optax.chain(optim.l2_regularization(wd.lam, mask), rule)

    schedule = learning_rate_schedule(config, steps_per_epoch)
    momentum = MOMENTUM_SCHEDULES[o.momentum_schedule](o)
    return optax.inject_hyperparams(make)(learning_rate=schedule, momentum=momentum)


def hyperparameters(opt_state, optimizer_config) -> tuple[float, float]:
    """(learning rate, momentum) in use, the momentum as MOMENTUM_SHOWN defines it."""
    hp = opt_state.hyperparams
    mu = float(hp["momentum"])
    shown = MOMENTUM_SHOWN.get(optimizer_config.name, lambda o, mu: mu)
    return float(hp["learning_rate"]), float(shown(optimizer_config, mu))


def with_learning_rate(state: TrainState, value: float) -> TrainState:
    """The state with the optimizer's injected learning rate set to `value`."""
    hp = dict(state.opt_state.hyperparams)
    hp["learning_rate"] = jnp.asarray(value, hp["learning_rate"].dtype)
    return state._replace(opt_state=state.opt_state._replace(hyperparams=hp))


# Run once, so a fast compile beats fast code: with LLVM's costly passes off, the default CNN's
# setup took 0.67 s, against 2.62 s with eager initialisers each compiled alone (the initialisers
# alone: 0.54 s against 2.35 s). Values differ from eager ones by an ulp or so.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _init_fn(model, optimizer, input_shape):
    def init(key):
        init_key, dropout_key = jax.random.split(key)
        _, params = model.init(init_key, input_shape)
        model_state = L.init_state(model, input_shape)
        step = jnp.zeros([], jnp.int32)
        return TrainState(step, params, optimizer.init(params), dropout_key, model_state)

    return init


def initial_state(model, optimizer, seed: int, input_shape) -> TrainState:
    """Step 0: parameters from the first half of PRNGKey(seed), the dropout key the second half."""
    compiler_options = _FAST_COMPILE if jax.default_backend() == "cpu" else None
    init = _init_fn(model, optimizer, input_shape)
    return jax.jit(init, compiler_options=compiler_options)(jax.random.PRNGKey(seed))


def steps_per_epoch(config, num_examples: int) -> int:
    batch = num_examples if config.batch_size == -1 else config.batch_size
    return -(-num_examples // batch)


def network_problem(config, dataset) -> str | None:
    """Why the config's network cannot take the dataset's inputs (naming the keys), or None.

    Each layer is traced on its input shape with eval_shape, so nothing is computed.
    """
    m, shape, classes = config.model, tuple(dataset.input_shape), dataset.num_classes
    try:
        if m.kind == "layers":
            return _layers_problem(m, shape, classes)
        if m.kind == "builder":
            return _builder_problem(m, shape, classes)
        return _kind_problem(m, shape, classes)
    except models.SpecError as error:
        return str(error)


def _first_misfit(stack, shape):
    """(index, its input shape, problem) of the first layer that cannot take its input, else
    (None, the output shape, None)."""
    for index, layer in enumerate(stack):
        try:
            out = tuple(L.output_shape(layer, shape))
        except Exception as error:  # noqa: BLE001  (any layer error is a network that does not fit)
            return index, shape, f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        if any(d < 1 for d in _dims(out)):
            return index, shape, f"nothing left (output {_size(out)})"
        shape = out
    return None, shape, None


def _dims(shape) -> list[int]:
    """The sizes in a shape, or in a tuple of shapes (a fan-out's branches)."""
    return [d for s in shape for d in _dims(s)] if not _is_shape(shape) else list(shape)


def _is_shape(shape) -> bool:
    return not any(isinstance(d, (tuple, list)) for d in shape)


def _size(shape) -> str:
    if not _is_shape(shape):
        return "(" + ", ".join(map(_size, shape)) + ")"
    return "x".join(map(str, shape)) or "scalar"


def _input_kind(shape) -> str:
    return {1: "a (d,) vector", 2: "an (L, C) sequence", 3: "an (H, W, C) image"}.get(
        len(shape), f"of rank {len(shape)}"
    )


def _in_spec_words(problem: str) -> str:
    """A layer's hint in the spelling of layer specs."""
    return problem.replace("add Flatten() before it", "add 'flatten' before it")


def _layers_problem(m, input_shape, classes) -> str | None:
    stack = models.spec_layers(m)
    index, shape, problem = _first_misfit(stack, input_shape)
    if problem:
        origin = f" (from {_size(input_shape)} inputs)" if index else ""
        return (
            f"config.model.layers[{index}] = {m.layers[index]!r} gets input {_size(shape)}"
            f"{origin}: {_in_spec_words(problem)}"
        )
    problem = _first_misfit(models.head(m, classes), shape)[2]
    if problem:
        return (
            f"config.model.layers[{len(stack) - 1}] = {m.layers[-1]!r} gives {_size(shape)} "
            f"outputs, which the output layer dense({classes}) after it cannot take: "
            f"{_in_spec_words(problem)}"
        )
    return None


def _builder_problem(m, input_shape, classes) -> str | None:
    network = models.build_model(m, classes)
    stack = network.spec["layers"] if network.name == "serial" else [network]
    index, shape, problem = _first_misfit(stack, input_shape)
    where = f"config.model.builder={m.builder!r}"
    if problem:
        return (
            f"{where} gives a network that does not fit {_size(input_shape)} inputs: layer "
            f"{index + 1} ({stack[index].name}) gets {_size(shape)}: {problem}"
        )
    if shape != (classes,):
        return f"{where} gives {_size(shape)} outputs: expected {classes} logits (num_classes)"
    return None


def _kind_problem(m, input_shape, classes) -> str | None:
    stack = models.build_model(m, classes).spec["layers"]
    index, shape, problem = _first_misfit(stack, input_shape)
    if not problem:
        return None
    channels = f", model.channels={tuple(m.channels)}" if m.kind in models.CONV_BLOCK_KINDS else ""
    keys, size = f"config.model.kind={m.kind!r}{channels}", _size(input_shape)
    if index == 0:  # the inputs themselves are of the wrong kind, not too small
        return (
            f"{keys} cannot take the dataset's {size} inputs ({_input_kind(input_shape)}): "
            f"{problem}; use model.kind='mlp', or model.kind='layers' with layers for them"
        )
    advice = "fewer or smaller blocks, or model.kind='mlp'" if channels else "model.kind='cnn'"
    return (
        f"{keys} does not fit {size} inputs: layer {index + 1} ({stack[index].name}) gets "
        f"{shape} ({problem}); use {advice}"
    )


class Built:
    """The objects one config and dataset make; the state is drawn on demand (it compiles)."""

    def __init__(self, config, dataset):
        self.config, self.dataset = config, dataset
        network = models.build_model(config.model, dataset.num_classes)
        self.model = COMPUTE_DTYPES[config.dtype](network)
        self.loss_fn = per_sample_loss(
            config.loss, config.model.output_activation, dataset.num_classes, config.label_smoothing
        )
        self.steps_per_epoch = steps_per_epoch(config, len(dataset.train.labels))
        self.optimizer = build_optimizer(config, self.steps_per_epoch, self.abstract_params())

    def abstract_params(self):
        """Parameter shapes and dtypes, traced without drawing a number."""
        init = lambda key: self.model.init(key, self.dataset.input_shape)[1]
        return jax.eval_shape(init, jax.random.PRNGKey(0))

    def abstract_variables(self) -> Variables:
        """Shapes and dtypes of what evaluation takes: the parameters and the model state."""
        state = self.abstract_state()
        return Variables.of(state)

    def abstract_state(self) -> TrainState:
        """The state's shapes and dtypes, traced without compiling."""
        init = _init_fn(self.model, self.optimizer, self.dataset.input_shape)
        return jax.eval_shape(init, jax.random.PRNGKey(self.config.seed))

    def initial_state(self) -> TrainState:
        return initial_state(self.model, self.optimizer, self.config.seed, self.dataset.input_shape)
