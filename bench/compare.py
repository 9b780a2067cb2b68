"""Train one network with jaxnet, Flax NNX and PyTorch; compare throughput and time-to-accuracy.

Each implementation trains the same network on the same data.

    python bench/compare.py                          # every row, jaxnet vs flax vs torch
    python bench/compare.py --rows cnn --quick       # a smoke run of a few steps
    python bench/compare.py --json bench.json        # also write the results

Per row and implementation it reports
- examples/s: training throughput after warm-up (compilation), over a fixed number of full
  batches, repeated `--repeats` times with the implementations interleaved; the median repeat is
  shown;
- time-to-accuracy: seconds from an empty start (building the model and optimizer, placing the
  data, compiling) to the first evaluation whose test accuracy reaches the row's target.
  Evaluations happen at the same steps for everyone (every `eval_every` steps and at each epoch's
  end) and their own time is left out of the clock, so evaluating more or less often changes no
  implementation's figure.

Fairness rules, the same for every implementation: the network, initialisation scheme, loss,
optimizer hyper-parameters and batch size come from one jaxnet config per row; every epoch visits
the training set in the same shuffled order (jaxnet's `epoch_plan`, so the batches are identical),
including the last, partial batch; float32 throughout; one process at a time on all the CPU
cores this process may use, and each time-to-accuracy run in a fresh one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the configs/ package lives at the repository root, beside jaxnet/

from jaxnet.training import xla_cpu  # noqa: E402

xla_cpu.prefer_xla_convolutions()  # as train.py does; the Flax rows run under the same XLA flags

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ceiling import matmul_flops  # noqa: E402

from jaxnet import shapes  # noqa: E402
from jaxnet.data import Dataset, Split, load_dataset  # noqa: E402
from jaxnet.models import build_model  # noqa: E402
from jaxnet.training import build  # noqa: E402
from jaxnet.training.placement import Single  # noqa: E402
from jaxnet.training.steps import (  # noqa: E402
    Variables,
    abstract_split,
    chunk_shape,
    epoch_plan,
    make_evaluate,
    run_epoch,
)

IMPLEMENTATIONS = (
    "jaxnet",
    "flax",
    "torch",
    "flax_scan",
)  # flax_scan: opt-in, Flax with jaxnet's chunking
TORCH_MISSING = (
    "PyTorch is not installed: run `pip install torch==2.13.0` "
    "(or `pip install -e '.[bench]'`), or pass --impls jaxnet,flax"
)
# held out as configs/default.py does, so every row trains on the same 55,000 images
VALIDATION_SIZE = 5000
QUICK_TRAIN, QUICK_TEST = 8192, 1000  # --quick trains on this many images and tests on this many
MATMUL_N = 2048  # the matrix product whose rate is the machine's ceiling in the table


# --------------------------------------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True)
class Row:
    """One network to compare: its jaxnet config and how to time it.

    The config is the single description all three implementations follow.
    """

    name: str
    summary: str
    config: Callable  # () -> the jaxnet ConfigDict; steps_per_chunk in it is what jaxnet runs with
    target: float  # test accuracy that stops the time-to-accuracy clock
    # steps between evaluations (a multiple of steps_per_chunk); also at each epoch's end
    eval_every: int
    max_epochs: int  # time-to-accuracy gives up after this many epochs ...
    max_seconds: float  # ... or this much training time, whichever comes first
    throughput_steps: int  # timed steps per repeat (a multiple of steps_per_chunk)


def _configs():
    from configs import default, nielsen

    return default, nielsen


def nielsen_config():
    """configs/nielsen.py on Fashion-MNIST.

    784-30-10 sigmoid, binary cross-entropy, SGD 0.5, batch 10.
    """
    c = _configs()[1].get_config()
    c.dataset.name = "fashion_mnist"
    c.dataset.validation_size = VALIDATION_SIZE
    # 50 runs ~1.8x more steps/s but compiles ~5 s longer than 10: more than this row's training
    c.steps_per_chunk = 10
    return c


def cnn_config():
    """configs/default.py: the default CNN.

    conv32-pool-conv64-pool-dense128-dropout-dense10, Adam 1e-3, batch 128.
    """
    c = _configs()[0].get_config()
    c.devices.strategy = "single"  # steps_per_chunk as configs/default.py sets it
    return c


def wide_mlp_config(width=2048):
    """784-width-width-10 ReLU MLP, Adam 1e-3, batch 1024.

    Almost all of a step is three large matmuls and their gradients.
    """
    c = _configs()[0].get_config()
    c.model.kind = "mlp"
    c.model.hidden = (width, width)
    c.model.activation = "relu"
    c.model.dropout = 0.0
    c.batch_size = 1024
    c.devices.strategy = "single"
    # ~0.2 s steps of matmuls: 2 measured ~5% faster than 1 (one sync per two steps),
    # 0.8 s more compile
    c.steps_per_chunk = 2
    return c


ROWS = {
    # Targets are first reached in 1-2 epochs; nielsen's noisy SGD hovers around 80-82% for most
    # of its first epoch.
    "nielsen": Row(
        "nielsen",
        "MLP 784-30-10 sigmoid, BCE, SGD 0.5, batch 10",
        nielsen_config,
        0.83,
        500,
        3,
        60.0,
        2000,
    ),
    "cnn": Row(
        "cnn",
        "CNN c32-p-c64-p-d128-drop-d10, Adam 1e-3, batch 128",
        cnn_config,
        0.87,
        100,
        2,
        90.0,
        60,
    ),
    "wide_mlp": Row(
        "wide_mlp",
        "MLP 784-2048-2048-10 ReLU, Adam 1e-3, batch 1024",
        wide_mlp_config,
        0.85,
        18,
        2,
        90.0,
        10,
    ),
}


def quick_row(row: Row) -> Row:
    """A few steps of the same row (one evaluation, then give up) on a small subset.

    It runs every code path, in seconds.
    """
    config = row.config

    def small_config():
        c = config()
        c.steps_per_chunk = 2  # short unrolled chunks compile quickly
        if row.name == "wide_mlp":
            c.model.hidden = (256, 256)
        return c

    return dataclasses.replace(
        row, config=small_config, eval_every=4, max_epochs=1, max_seconds=0.0, throughput_steps=4
    )


# ---------------------------------------------------------------------------------- implementations


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The training-set order of an epoch.

    Exactly jaxnet's `epoch_plan` batches, flattened (padding comes last).
    """
    return epoch_plan(num_examples, num_examples, 1, seed, epoch).indices.reshape(-1)[:num_examples]


class Implementation:
    """A framework training one row.

    `setup` builds everything, `train` runs steps of an epoch, `accuracy` tests.
    """

    name = ""

    def __init__(self, row: Row, config, dataset: Dataset, seed: int):
        self.row, self.config, self.dataset, self.seed = row, config, dataset, seed
        self.batch = config.batch_size
        self.num_train = len(dataset.train)
        self._order_epoch, self._order = None, None

    def order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order_epoch, self._order = epoch, epoch_order(self.num_train, self.seed, epoch)
        return self._order

    def batch_indices(self, epoch: int, step: int) -> np.ndarray:
        return self.order(epoch)[step * self.batch : (step + 1) * self.batch]

    def setup(self) -> None:
        raise NotImplementedError

    def train(self, epoch: int, start: int, stop: int) -> None:
        """Run steps [start, stop) of `epoch` and return once they are done."""
        raise NotImplementedError

    def accuracy(self) -> float:
        raise NotImplementedError

    def num_parameters(self) -> int:
        """Trainable parameters: equal across implementations when they build the same network."""
        raise NotImplementedError


class Jaxnet(Implementation):
    """The path train.py takes: build.Built, a Single placement, steps.run_epoch over the plan."""

    name = "jaxnet"

    def setup(self):
        built = build.Built(self.config, self.dataset)
        self.placement = Single(built.model, built.loss_fn, built.optimizer)
        train = self.dataset.train
        # as the trainer starts (trainer._compile_ahead): the chunk compiles on a thread while
        # the initial state is built and the data are placed
        data = abstract_split(train.images, train.labels)
        shape = chunk_shape(len(train.labels), self.batch, self.config.steps_per_chunk)
        self.placement.compile_ahead(built.abstract_state(), data, shape)
        self.data = self.placement.put_data(train.images, train.labels)
        self.state = self.placement.put_state(built.initial_state())
        self.evaluate = make_evaluate(built.model, built.loss_fn, self.dataset.num_classes)
        self._plan_epoch, self._plan = None, None

    def num_parameters(self):
        params = self.placement.host_state(self.state).params
        return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))

    def plan(self, epoch: int):
        if self._plan_epoch != epoch:
            self._plan_epoch = epoch
            self._plan = epoch_plan(
                self.num_train, self.batch, self.config.steps_per_chunk, self.seed, epoch
            )
        return self._plan

    def train(self, epoch, start, stop):
        plan = self.plan(epoch)
        k = plan.chunk_steps
        if start % k or (stop % k and stop != plan.steps):
            raise ValueError(
                f"jaxnet runs whole chunks of {k} steps: cannot run steps [{start}, {stop})"
            )
        # the trainer's own loop: it waits for each chunk's risks to check them
        for state, result in run_epoch(self.placement, self.state, self.data, plan, start // k):
            self.state = state
            if not np.all(np.isfinite(result.risks)):
                raise FloatingPointError(
                    f"jaxnet: non-finite training risk in epoch {epoch + 1}, "
                    f"chunk {result.chunk + 1}"
                )
            if (result.chunk + 1) * k >= stop:
                break

    def accuracy(self):
        variables = Variables.of(self.placement.host_state(self.state))
        test = self.dataset.test
        _, error, _ = self.evaluate(variables, test.images, test.labels)
        return 1.0 - error


# ----------------------------------------------------------------------------------------- Flax NNX


def _flax_kernel_init(init_name: str):
    from flax import nnx

    if init_name == "nielsen":  # N(0, 1 / fan_in), as jaxnet.models._nielsen
        return nnx.initializers.variance_scaling(1.0, "fan_in", "normal")
    if init_name == "glorot":  # jaxnet's default, jax.nn.initializers.glorot_normal (truncated)
        return nnx.initializers.glorot_normal()
    raise ValueError(f"the benchmark does not map init {init_name!r} to Flax")


def _flax_model(model_config, input_shape, num_classes, rngs):
    """The network of `model_config` as an nnx.Module.

    It is written the way the Flax NNX MNIST tutorial writes one.
    """
    from flax import nnx

    activation = {"sigmoid": nnx.sigmoid, "relu": nnx.relu}[model_config.activation]
    kernel_init = _flax_kernel_init(model_config.init)
    dense = functools.partial(nnx.Linear, kernel_init=kernel_init, rngs=rngs)

    class MLP(nnx.Module):
        def __init__(self):
            widths = (math.prod(input_shape),) + tuple(model_config.hidden)
            self.hidden = nnx.List([dense(a, b) for a, b in zip(widths[:-1], widths[1:])])
            self.dropout = (
                nnx.Dropout(model_config.dropout, rngs=rngs) if model_config.dropout > 0 else None
            )
            self.out = dense(widths[-1], num_classes)

        def __call__(self, x):
            x = x.reshape(x.shape[0], -1)
            for layer in self.hidden:
                x = activation(layer(x))
            return self.out(self.dropout(x) if self.dropout is not None else x)

    class CNN(nnx.Module):
        def __init__(self):
            conv = functools.partial(
                nnx.Conv, kernel_size=(3, 3), padding="SAME", kernel_init=kernel_init, rngs=rngs
            )
            channels = (input_shape[-1],) + tuple(model_config.channels)
            self.convs = nnx.List([conv(a, b) for a, b in zip(channels[:-1], channels[1:])])
            side_h, side_w = input_shape[0] >> len(self.convs), input_shape[1] >> len(self.convs)
            widths = (side_h * side_w * channels[-1],) + tuple(model_config.hidden)
            self.hidden = nnx.List([dense(a, b) for a, b in zip(widths[:-1], widths[1:])])
            self.dropout = (
                nnx.Dropout(model_config.dropout, rngs=rngs) if model_config.dropout > 0 else None
            )
            self.out = dense(widths[-1], num_classes)

        def __call__(self, x):
            for conv in self.convs:
                x = nnx.max_pool(activation(conv(x)), window_shape=(2, 2), strides=(2, 2))
            x = x.reshape(x.shape[0], -1)
            for layer in self.hidden:
                x = activation(layer(x))
            return self.out(self.dropout(x) if self.dropout is not None else x)

    if model_config.kind == "mlp":
        return MLP()
    if model_config.kind == "cnn":
        return CNN()
    raise ValueError(f"the benchmark has no Flax version of model.kind={model_config.kind!r}")


def _optax_optimizer(config):
    import optax

    o = config.optimizer
    if o.name == "sgd":
        return optax.sgd(o.learning_rate)
    if o.name == "momentum":
        return optax.sgd(o.learning_rate, momentum=o.momentum)
    if o.name == "adam":
        return optax.adam(o.learning_rate, b1=o.b1, b2=o.b2, eps=o.eps)
    raise ValueError(f"the benchmark does not map optimizer {o.name!r} to optax")


def _optax_loss(config, num_classes):
    """Mean over the batch of the per-example loss jaxnet's objective names."""
    import optax

    if config.loss == "cross_entropy":
        return lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    if config.loss == "binary_cross_entropy":
        return lambda logits, y: (
            optax.sigmoid_binary_cross_entropy(logits, jax.nn.one_hot(y, num_classes))
            .sum(-1)
            .mean()
        )
    raise ValueError(f"the benchmark does not map loss {config.loss!r} to optax")


class Flax(Implementation):
    """Idiomatic Flax NNX: nnx.Optimizer over optax, an @nnx.jit train step.

    The step is called once per batch of numpy arrays.
    """

    name = "flax"

    def num_parameters(self):
        from flax import nnx

        return sum(
            int(np.size(leaf))
            for leaf in jax.tree_util.tree_leaves(nnx.state(self.model, nnx.Param))
        )

    def setup(self):
        from flax import nnx

        self.model = _flax_model(
            self.config.model,
            self.dataset.input_shape,
            self.dataset.num_classes,
            nnx.Rngs(self.seed),
        )
        self.optimizer = nnx.Optimizer(self.model, _optax_optimizer(self.config), wrt=nnx.Param)
        loss = _optax_loss(self.config, self.dataset.num_classes)

        # Built here, not at module level, so that every run compiles afresh as a new user's would.
        @nnx.jit
        def train_step(model, optimizer, x, y):
            def loss_fn(model):
                return loss(model(x), y)

            value, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return value

        @nnx.jit
        def correct(model, x, y):
            return jnp.sum(jnp.argmax(model(x), axis=-1) == y)

        self.train_step, self.correct = train_step, correct

    def train(self, epoch, start, stop):
        from flax import nnx

        images, labels = self.dataset.train.images, self.dataset.train.labels
        self.model.train()
        for step in range(start, stop):
            idx = self.batch_indices(epoch, step)
            self.train_step(self.model, self.optimizer, images[idx], labels[idx])
        jax.block_until_ready(nnx.state((self.model, self.optimizer)))

    def accuracy(self):
        self.model.eval()
        test = self.dataset.test
        hits = sum(
            int(self.correct(self.model, test.images[i : i + 1000], test.labels[i : i + 1000]))
            for i in range(0, len(test), 1000)
        )
        return hits / len(test)


class FlaxScan(Flax):
    """Flax NNX through its functional API (nnx.split / nnx.merge), chunked like jaxnet.

    K steps per call, unrolled on CPU.
    """

    name = "flax_scan"

    def setup(self):
        super().setup()
        from flax import nnx

        loss = _optax_loss(self.config, self.dataset.num_classes)
        self.model.train()
        graphdef, state = nnx.split((self.model, self.optimizer))

        @functools.partial(jax.jit, donate_argnums=0)
        def chunk(state, images, labels, indices):
            def step(state, idx):
                model, optimizer = nnx.merge(graphdef, state)
                x, y = images[idx], labels[idx]
                value, grads = nnx.value_and_grad(lambda m: loss(m(x), y))(model)
                optimizer.update(model, grads)
                return nnx.state((model, optimizer)), value

            if jax.default_backend() != "cpu":
                return jax.lax.scan(step, state, indices)
            # Unrolled in Python, as jaxnet unrolls on CPU, and without lax.scan: a 1-step scan
            # stays a while loop, inside which XLA:CPU leaves convolution gradients on a ~20x
            # slower path.
            values = []
            for idx in indices:
                state, value = step(state, idx)
                values.append(value)
            return state, jnp.stack(values)

        self.chunk, self.graph_state = chunk, state
        self.images, self.labels = (
            jax.device_put(self.dataset.train.images),
            jax.device_put(self.dataset.train.labels),
        )

    def train(self, epoch, start, stop):
        k = self.config.steps_per_chunk
        full = [s for s in range(start, stop) if (s + 1) * self.batch <= self.num_train]
        for i in range(0, len(full), k):
            indices = np.stack([self.batch_indices(epoch, s) for s in full[i : i + k]])
            self.graph_state, values = self.chunk(
                self.graph_state, self.images, self.labels, indices
            )
        if len(full) < stop - start:
            # the epoch's last, partial batch: a shape of its own, compiled once
            indices = self.batch_indices(epoch, stop - 1)[None]
            self.graph_state, values = self.chunk(
                self.graph_state, self.images, self.labels, indices
            )
        np.asarray(values)

    def accuracy(self):
        from flax import nnx

        nnx.update((self.model, self.optimizer), self.graph_state)
        result = super().accuracy()
        self.model.train()
        self.graph_state = nnx.state((self.model, self.optimizer))
        return result


# ------------------------------------------------------------------------------------------ PyTorch


def import_torch():
    try:
        import torch
    except ImportError as error:
        raise SystemExit(TORCH_MISSING) from error
    return torch


def _torch_init(module, init_name: str):
    """jaxnet's initialisation scheme for a torch Linear or Conv2d.

    Weights are drawn as named, biases are zero.
    """
    torch = import_torch()
    w = module.weight
    receptive = math.prod(w.shape[2:]) if w.dim() > 2 else 1
    fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
    with torch.no_grad():
        if init_name == "nielsen":
            torch.nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fan_in))
        elif init_name == "glorot":
            # jax's glorot_normal: a normal truncated at 2 sigma, rescaled to variance
            # 2/(fan_in + fan_out)
            std = math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978
            torch.nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)
        else:
            raise ValueError(f"the benchmark does not map init {init_name!r} to torch")
        module.bias.zero_()


def _torch_model(model_config, input_shape, num_classes):
    """The network of `model_config` as a torch.nn.Sequential on NCHW images."""
    nn = import_torch().nn
    activation = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}[model_config.activation]
    h, w, c = input_shape
    layers = []
    if model_config.kind == "cnn":
        for channels in model_config.channels:
            layers += [nn.Conv2d(c, channels, 3, padding=1), activation(), nn.MaxPool2d(2)]
            c, h, w = channels, h // 2, w // 2
    elif model_config.kind != "mlp":
        raise ValueError(f"the benchmark has no torch version of model.kind={model_config.kind!r}")
    layers.append(nn.Flatten())
    width = c * h * w
    for hidden in model_config.hidden:
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    if model_config.dropout > 0:
        layers.append(nn.Dropout(model_config.dropout))
    layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            _torch_init(layer, model_config.init)
    return model


class Torch(Implementation):
    """Idiomatic PyTorch: nn.Sequential, torch.optim, in-memory NCHW tensors.

    Training is a Python loop of eager steps.
    """

    name = "torch"

    def num_parameters(self):
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def setup(self):
        torch = import_torch()
        F = torch.nn.functional
        torch.manual_seed(self.seed)
        self.torch = torch
        self.model = _torch_model(
            self.config.model, self.dataset.input_shape, self.dataset.num_classes
        )
        o = self.config.optimizer
        if o.name == "sgd":
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=o.learning_rate)
        elif o.name == "momentum":
            self.optimizer = torch.optim.SGD(
                self.model.parameters(), lr=o.learning_rate, momentum=o.momentum
            )
        elif o.name == "adam":
            self.optimizer = torch.optim.Adam(
                self.model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps
            )
        else:
            raise ValueError(f"the benchmark does not map optimizer {o.name!r} to torch.optim")
        k = self.dataset.num_classes
        if self.config.loss == "cross_entropy":
            self.loss = F.cross_entropy
        elif self.config.loss == "binary_cross_entropy":
            self.loss = lambda logits, y: (
                F.binary_cross_entropy_with_logits(logits, F.one_hot(y, k).float(), reduction="sum")
                / len(y)
            )
        else:
            raise ValueError(f"the benchmark does not map loss {self.config.loss!r} to torch")
        as_nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        self.images, self.labels = (
            as_nchw(self.dataset.train.images),
            torch.from_numpy(self.dataset.train.labels).long(),
        )
        self.test_images, self.test_labels = (
            as_nchw(self.dataset.test.images),
            torch.from_numpy(self.dataset.test.labels).long(),
        )

    def train(self, epoch, start, stop):
        order = self.torch.from_numpy(self.order(epoch)).long()
        self.model.train()
        for step in range(start, stop):
            idx = order[step * self.batch : (step + 1) * self.batch]
            loss = self.loss(self.model(self.images[idx]), self.labels[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def accuracy(self):
        self.model.eval()
        with self.torch.no_grad():
            hits = sum(
                int(
                    (
                        self.model(self.test_images[i : i + 1000]).argmax(1)
                        == self.test_labels[i : i + 1000]
                    ).sum()
                )
                for i in range(0, len(self.test_labels), 1000)
            )
        return hits / len(self.test_labels)


CLASSES = {"jaxnet": Jaxnet, "flax": Flax, "torch": Torch, "flax_scan": FlaxScan}


# ------------------------------------------------------------------------------------------- timing


def eval_segments(steps_per_epoch: int, eval_every: int, max_epochs: int):
    """(epoch, first step, end step) of the training between two evaluations.

    Evaluations come every eval_every steps and at epoch ends.
    """
    for epoch in range(max_epochs):
        for start in range(0, steps_per_epoch, eval_every):
            yield epoch, start, min(start + eval_every, steps_per_epoch)


def time_to_accuracy(impl: Implementation, row: Row) -> dict:
    """Train from nothing until the test accuracy reaches row.target.

    The clock stops while evaluating.
    """
    # start cold, as a fresh process would: no executables compiled by an earlier run or framework
    jax.clear_caches()
    clock = 0.0
    tic = time.perf_counter()
    impl.setup()
    setup_seconds = time.perf_counter() - tic
    clock += setup_seconds
    steps_per_epoch = math.ceil(impl.num_train / impl.batch)
    history, reached, first_segment, done = [], None, None, 0
    for epoch, start, stop in eval_segments(steps_per_epoch, row.eval_every, row.max_epochs):
        tic = time.perf_counter()
        impl.train(epoch, start, stop)
        elapsed = time.perf_counter() - tic
        clock += elapsed
        first_segment = elapsed if first_segment is None else first_segment
        done += stop - start
        accuracy = impl.accuracy()
        history.append(
            {"epoch": epoch + 1, "step": done, "seconds": round(clock, 4), "accuracy": accuracy}
        )
        if accuracy >= row.target:
            reached = history[-1]
        if reached or clock >= row.max_seconds:
            break
    return {
        "seed": impl.seed,
        "reached": reached is not None,
        "seconds": reached["seconds"] if reached else None,
        "steps": reached["step"] if reached else None,
        "setup_seconds": setup_seconds,
        "first_segment_seconds": first_segment,
        "final_accuracy": history[-1]["accuracy"],
        "history": history,
    }


def time_to_accuracy_in_fresh_process(row: Row, impl: str, seed: int, quick: bool) -> dict:
    """time_to_accuracy in a new Python process, so that every run starts as cold as a user's.

    In one process, PyTorch's first convolution of a shape builds its oneDNN kernels once (1.2 s
    for the cnn row) and later seeds reuse them, while jax.clear_caches() makes every jaxnet seed
    compile again: a fresh process per run charges each start-up to every seed alike.
    """
    argv = [sys.executable, os.path.abspath(__file__), "--tta-worker", row.name, impl, str(seed)]
    done = subprocess.run(argv + (["--quick"] if quick else []), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{row.name}/{impl} seed {seed} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def tta_worker(row_name: str, impl: str, seed: int, quick: bool) -> None:
    """One time_to_accuracy run, printed as a JSON line (the child of the function above)."""
    start_frameworks([impl])
    dataset = load_fashion_mnist(quick)
    row = quick_row(ROWS[row_name]) if quick else ROWS[row_name]
    cfg = row.config()
    cfg.seed = seed
    print(json.dumps(time_to_accuracy(CLASSES[impl](row, cfg, dataset, seed), row)))


def throughput(impl: Implementation, steps: int, repeat: int) -> float:
    """Examples per second over `steps` full batches.

    They follow one untimed warm-up batch group of the same epoch.
    """
    epoch = 10_000 + repeat  # an epoch no time-to-accuracy run reaches: fresh batches, all full
    warm = impl.config.steps_per_chunk if isinstance(impl, (Jaxnet, FlaxScan)) else 1
    impl.train(epoch, 0, warm)
    tic = time.perf_counter()
    impl.train(epoch, warm, warm + steps)
    return steps * impl.batch / (time.perf_counter() - tic)


def training_flops_per_example(config, dataset: Dataset) -> int:
    """Multiply-adds x 2 of one training example.

    It counts the forward pass, weight gradients, and input gradients but the first layer's.
    """
    macs = shapes.multiply_adds(build_model(config.model, dataset.num_classes), dataset.input_shape)
    return 2 * (3 * sum(macs) - next(m for m in macs if m))


def matmul_gflops(n: int, repeats: int = 5) -> float:
    """This machine's float32 rate on one large matrix product, the ceiling for the rows."""
    return matmul_flops(n, repeats=repeats) / 1e9


def run_row(
    row: Row,
    dataset: Dataset,
    impls: list[str],
    seeds: list[int],
    repeats: int,
    log,
    quick: bool = False,
) -> dict:
    """Time-to-accuracy for each implementation and seed, then interleaved throughput repeats."""
    config = row.config()
    flops = training_flops_per_example(config, dataset)
    n = len(dataset.train)
    if row.eval_every % config.steps_per_chunk or row.throughput_steps % config.steps_per_chunk:
        raise ValueError(
            f"{row.name}: eval_every and throughput_steps must be multiples of "
            f"steps_per_chunk={config.steps_per_chunk}"
        )
    if (row.throughput_steps + config.steps_per_chunk) * config.batch_size > n:
        raise ValueError(
            f"{row.name}: {row.throughput_steps} timed steps do not fit in one epoch "
            f"of {n} examples"
        )
    load_before = os.getloadavg()
    results = {name: {"tta": []} for name in impls}
    for seed in seeds:
        for name in impls:
            log(f"  {row.name}/{name} seed {seed}: time to {row.target:.0%} (a fresh process) ...")
            tta = time_to_accuracy_in_fresh_process(row, name, seed, quick)
            results[name]["tta"].append(tta)
            shown = (
                f"{tta['seconds']:.1f} s at step {tta['steps']}"
                if tta["reached"]
                else f"not reached (last {tta['final_accuracy']:.2%})"
            )
            log(
                f"    {shown}; setup {tta['setup_seconds']:.2f} s, "
                f"first segment {tta['first_segment_seconds']:.2f} s"
            )
    trained = {}
    for name in impls:  # set up and compiled here, for the throughput repeats
        cfg = row.config()
        cfg.seed = seeds[-1]
        trained[name] = CLASSES[name](row, cfg, dataset, seeds[-1])
        trained[name].setup()
        results[name]["parameters"] = trained[name].num_parameters()
    for name in impls:
        results[name]["examples_per_s"] = []
    for repeat in range(repeats):
        # interleaved, so that a burst of outside load hits every implementation alike
        for name in impls:
            rate = throughput(trained[name], row.throughput_steps, repeat)
            results[name]["examples_per_s"].append(rate)
            log(f"  {row.name}/{name} throughput repeat {repeat + 1}: {rate:,.0f} examples/s")
    for name in impls:
        r = results[name]
        r["examples_per_s_median"] = statistics.median(r["examples_per_s"])
        # the least disturbed repeat, if the machine was not idle
        r["examples_per_s_best"] = max(r["examples_per_s"])
        r["gflops"] = r["examples_per_s_median"] * flops / 1e9
        times = [t["seconds"] for t in r["tta"] if t["reached"]]
        r["tta_reached"] = f"{len(times)}/{len(r['tta'])}"
        r["tta_seconds_median"] = statistics.median(times) if len(times) == len(r["tta"]) else None
    ratios = {}
    for peer in impls:
        if peer == "jaxnet" or "jaxnet" not in impls:
            continue
        j, p = results["jaxnet"], results[peer]
        tta = (
            p["tta_seconds_median"] / j["tta_seconds_median"]
            if j["tta_seconds_median"] and p["tta_seconds_median"]
            else None
        )
        ratios[f"jaxnet/{peer}"] = {
            "throughput": j["examples_per_s_median"] / p["examples_per_s_median"],
            "time_to_accuracy": tta,
        }
    return {
        "summary": row.summary,
        "batch_size": config.batch_size,
        "target_accuracy": row.target,
        "eval_every_steps": row.eval_every,
        "jaxnet_steps_per_chunk": config.steps_per_chunk,
        "throughput_steps": row.throughput_steps,
        "train_examples": n,
        "training_flops_per_example": flops,
        "test_examples": len(dataset.test),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "implementations": results,
        "speedups": ratios,
    }


# ------------------------------------------------------------------------------------------- output


def format_table(results: dict) -> str:
    """The rows as a fixed-width table; speed-ups > 1 mean jaxnet is faster."""
    peak = results["machine"].get("matmul_gflops")
    lines = [
        f"{'row':<9} {'impl':<10} {'batch':>5} {'examples/s':>12} {'GFLOP/s':>8} "
        f"{'time-to-acc':>13} {'at step':>8} {'last eval':>9}"
    ]
    for name, row in results["rows"].items():
        lines.append("-" * len(lines[0]))
        for impl, r in row["implementations"].items():
            if r["tta_seconds_median"] is not None:
                tta = f"{r['tta_seconds_median']:.1f} s"
            else:  # some seeds, or all, never got there
                tta = (
                    "not reached"
                    if r["tta_reached"].startswith("0/")
                    else f"{r['tta_reached']} reached"
                )
            steps = [t["steps"] for t in r["tta"] if t["reached"]]
            step = f"{int(statistics.median(steps))}" if steps else "-"
            final = statistics.median(t["final_accuracy"] for t in r["tta"])
            label = name if impl == next(iter(row["implementations"])) else ""
            lines.append(
                f"{label:<9} {impl:<10} {row['batch_size']:>5} "
                f"{r['examples_per_s_median']:>12,.0f} {r['gflops']:>8.1f} "
                f"{tta:>13} {step:>8} {final:>9.2%}"
            )
        speedups = []
        for pair, s in row["speedups"].items():
            tta = f"{s['time_to_accuracy']:.2f}x" if s["time_to_accuracy"] else "n/a"
            speedups.append(f"{pair}: {s['throughput']:.2f}x throughput, {tta} time-to-acc")
        lines.append(
            f"{'':<9} target {row['target_accuracy']:.0%} test accuracy; "
            f"jaxnet steps_per_chunk={row['jaxnet_steps_per_chunk']}"
        )
        lines.extend(f"{'':<9} {s}" for s in speedups)
    if peak:
        lines.append("-" * len(lines[0]))
        lines.append(
            f"GFLOP/s: training arithmetic done per second; one {MATMUL_N}x{MATMUL_N} float32 "
            f"matmul in XLA runs at {peak:.0f} here"
        )
    return "\n".join(lines)


def machine_info(impls) -> dict:
    """Versions and settings the figures depend on."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import flax

        info["flax"] = flax.__version__
    except ImportError:
        pass
    if "torch" in impls:
        import torch

        info.update(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            torch_flush_denormal=True,
        )
    return info


def load_fashion_mnist(quick: bool) -> Dataset:
    dataset = load_dataset(
        "fashion_mnist", validation_size=VALIDATION_SIZE, seed=0, log=lambda *a: None
    )
    if quick:
        first = lambda split, k: Split(split.images[:k], split.labels[:k])  # noqa: E731
        dataset = dataclasses.replace(
            dataset, train=first(dataset.train, QUICK_TRAIN), test=first(dataset.test, QUICK_TEST)
        )
    return dataset


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"comma-separated rows of {', '.join(ROWS)} (default: all)",
    )
    parser.add_argument(
        "--impls",
        default="jaxnet,flax,torch",
        help=f"comma-separated implementations of {', '.join(IMPLEMENTATIONS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: a few steps on a subset; the figures mean nothing",
    )
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated seeds for time-to-accuracy (the median is shown)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved throughput repeats (default 3, 1 with --quick)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    args.impls = [i for i in args.impls.split(",") if i]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    for kind, chosen, allowed in (
        ("row", args.rows, ROWS),
        ("implementation", args.impls, IMPLEMENTATIONS),
    ):
        unknown = [c for c in chosen if c not in allowed]
        if unknown or not chosen:
            parser.error(f"unknown {kind}(s) {unknown or chosen}; choose from {', '.join(allowed)}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return args


def start_frameworks(impls) -> None:
    """Each framework's one-time start-up, charged to no row, and the same numeric settings."""
    if "torch" in impls:
        torch = import_torch()
        # every core this process may use, as XLA does
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        # XLA flushes denormals to zero; without the same mode, torch's run time would depend on
        # whether XLA had already set the flag on this thread, and the sigmoid net's tiny gradients
        # make denormals 40-100x slower.
        torch.set_flush_denormal(True)
        torch.ones(8).sum().item()  # one-time library start-up, charged to no row
    jax.config.update("jax_enable_x64", False)  # float32 everywhere, whatever the environment asks
    jnp.ones(8).sum().block_until_ready()  # the CPU client's start-up, charged to no row


def main(argv=None) -> dict:
    if argv is None and sys.argv[1:2] == ["--tta-worker"]:
        row_name, impl, seed = sys.argv[2:5]
        return tta_worker(row_name, impl, int(seed), "--quick" in sys.argv[5:])
    args = parse_args(argv)
    x64 = jax.config.jax_enable_x64
    start_frameworks(args.impls)
    try:
        dataset = load_fashion_mnist(args.quick)
        log = functools.partial(print, file=sys.stderr, flush=True)
        log(
            f"Fashion-MNIST: {len(dataset.train)} train / {len(dataset.test)} test images; "
            f"{', '.join(args.impls)}"
        )
        results = {
            "machine": {**machine_info(args.impls), "matmul_gflops": matmul_gflops(MATMUL_N)},
            "quick": args.quick,
            "seeds": args.seeds,
            "repeats": args.repeats,
            "rows": {},
        }
        for name in args.rows:
            row = quick_row(ROWS[name]) if args.quick else ROWS[name]
            results["rows"][name] = run_row(
                row, dataset, args.impls, args.seeds, args.repeats, log, args.quick
            )
    finally:
        jax.config.update("jax_enable_x64", x64)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
