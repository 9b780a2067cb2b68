"""Compiled training steps over device-resident data, on one device or data-parallel (pmap or jit with shardings).

An epoch is a fixed grid of index batches: the seed-determined permutation of the training set,
padded with weight-0 entries to whole batches, and with weight-0 steps to whole chunks. One call
runs a chunk of `steps_per_chunk` steps as a `lax.scan` (unrolled on CPU), so Python dispatches
once per chunk and nothing recompiles on the last, partial batch. A step whose batch weighs 0 leaves the state as it
was. The risk of a batch is sum_n w_n l_n / sum_n w_n over the *global* batch, so splitting the
batch across devices changes nothing but where the sum is computed.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnet.training.objective import predictions


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array  # dropout keys are fold_in(key, step): resuming repeats them exactly


class EpochPlan(NamedTuple):
    indices: np.ndarray  # (chunks, steps_per_chunk, batch) int32
    weights: np.ndarray  # same shape, 1.0 for real examples, 0.0 for padding
    steps: int  # real steps in the epoch


def epoch_plan(
    num_examples: int, batch_size: int, steps_per_chunk: int, seed: int, epoch: int
) -> EpochPlan:
    """The shuffled, padded batches of one epoch; the order depends only on (seed, epoch)."""
    batch = num_examples if batch_size == -1 else batch_size
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    steps = math.ceil(num_examples / batch)
    chunk = min(steps_per_chunk, steps)
    total = math.ceil(steps / chunk) * chunk * batch
    indices = np.zeros(total, np.int32)
    weights = np.zeros(total, np.float32)
    indices[:num_examples], weights[:num_examples] = order, 1.0
    shape = (total // (chunk * batch), chunk, batch)
    return EpochPlan(indices.reshape(shape), weights.reshape(shape), steps)


def make_chunk_fn(model, loss_fn, optimizer, axis_name: str | None = None, fed: bool = False):
    """The unjitted chunk of steps: (state, data..., weights (K, B)) -> (state, per-step risks (K,)).

    By default the data are the device-resident training set and the (K, B) indices of each step's
    batch: (state, images, labels, indices, weights). With fed=True they are the batches themselves,
    (state, xs (K, B, ...), ys (K, B), weights), as a multi-host run feeds them: each host supplies
    its own slice of every global batch.
    """

    def step_on(state, x, y, w):
        total = jnp.sum(w)
        if axis_name is not None:
            total = jax.lax.psum(total, axis_name)
        key = jax.random.fold_in(state.key, state.step)
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))

        def risk(params):
            per_sample = loss_fn(model.apply(params, x, key=key), y)
            return jnp.sum(per_sample * w.astype(per_sample.dtype)) / jnp.maximum(total, 1.0)

        value, grads = jax.value_and_grad(risk)(state.params)
        if axis_name is not None:  # each device holds part of the sum: add them
            value, grads = jax.lax.psum((value, grads), axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new = TrainState(
            state.step + 1, optax.apply_updates(state.params, updates), opt_state, state.key
        )
        keep = total > 0
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, state)
        return new, jnp.where(keep, value, jnp.nan)

    def scan(step, state, xs, steps):
        if jax.default_backend() != "cpu":
            return jax.lax.scan(step, state, xs)
        # XLA on CPU runs a convolution inside a while loop ~15x slower than outside one (measured:
        # 735 vs 45 ms per step of the default CNN), so there the chunk is unrolled in Python: even
        # lax.scan(unroll=steps) leaves a one-step chunk (batch_size=-1, say) inside a while loop.
        risks = []
        for k in range(steps):
            state, risk = step(state, jax.tree_util.tree_map(lambda a: a[k], xs))
            risks.append(risk)
        return state, jnp.stack(risks)

    if fed:

        def chunk(state, xs, ys, weights):
            return scan(lambda s, b: step_on(s, *b), state, (xs, ys, weights), weights.shape[0])
    else:

        def chunk(state, images, labels, indices, weights):
            step = lambda s, b: step_on(s, images[b[0]], labels[b[0]], b[1])  # noqa: E731
            return scan(step, state, (indices, weights), indices.shape[0])

    return chunk


class Runner:
    """Runs chunks on the devices the strategy names, and hands back host-side views of the state.

    In one process the training set lives on the device(s) and each chunk receives only indices.
    With several processes (`jax.distributed`), every host keeps the training set in its own
    memory and feeds its own contiguous slice of each global batch, which the devices of the
    other hosts never see; the global batch, and so the result, is the one a single device gets.
    """

    def __init__(self, strategy: str, model, loss_fn, optimizer, devices=None):
        self.strategy = strategy
        self.process_count, self.process_index = jax.process_count(), jax.process_index()
        self.multi_process = self.process_count > 1
        if self.multi_process and strategy == "single":
            raise ValueError(
                f"devices.strategy='single' trains on one device, but this job has {self.process_count} processes: "
                "use 'sharding' or 'pmap', or start one process"
            )
        chunk = functools.partial(make_chunk_fn, model, loss_fn, optimizer, fed=self.multi_process)
        if strategy == "sharding" and self.multi_process:
            self.devices = list(devices or jax.devices())  # the mesh spans every host
        else:
            self.devices = list(devices or jax.local_devices())
        if strategy == "single":
            self.devices = self.devices[:1]
            self._chunk = jax.jit(chunk(), donate_argnums=0)
        elif strategy == "pmap":
            arity = 4 if self.multi_process else 5
            self._chunk = jax.pmap(
                chunk(axis_name="data"),
                axis_name="data",
                in_axes=(0,) * arity,
                devices=None if self.multi_process else self.devices,
                donate_argnums=0,
            )
        elif strategy == "sharding":
            self.mesh = Mesh(np.array(self.devices), ("data",))
            replicated = NamedSharding(self.mesh, P())
            by_batch = NamedSharding(self.mesh, P(None, "data"))
            self._replicated, self._by_batch = replicated, by_batch
            # fed: (state, xs, ys, weights), all split by batch; else (state, images, labels, indices, weights)
            data = (
                (by_batch,) * 3
                if self.multi_process
                else (replicated, replicated, by_batch, by_batch)
            )
            self._chunk = jax.jit(
                chunk(),
                in_shardings=(replicated, *data),
                out_shardings=(replicated, replicated),
                donate_argnums=0,
            )
        else:
            raise ValueError(
                f"devices.strategy must be 'single', 'pmap' or 'sharding', got {strategy!r}"
            )

    @property
    def num_devices(self) -> int:
        """Devices the global batch is split over, on every host."""
        if self.strategy == "pmap" and self.multi_process:
            return jax.device_count()
        return len(self.devices)

    def check_batch(self, batch_size: int, num_examples: int) -> None:
        batch = num_examples if batch_size == -1 else batch_size
        if batch % self.num_devices:
            raise ValueError(
                f"config.batch_size={batch} does not split over {self.num_devices} devices ({self.strategy}); "
                f"use a multiple of {self.num_devices} or --config.devices.strategy=single"
            )

    def put_data(self, *arrays):
        if self.multi_process:  # each host gathers its own slice of every batch from host memory
            return tuple(np.asarray(a) for a in arrays)
        if self.strategy == "sharding":
            return tuple(jax.device_put(a, self._replicated) for a in arrays)
        if (
            self.strategy == "pmap"
        ):  # one copy per device, made once: an unmapped argument would be copied every call
            replicate = jax.pmap(lambda a: a, devices=self.devices)
            return tuple(
                replicate(np.broadcast_to(a, (self.num_devices,) + a.shape)) for a in arrays
            )
        return tuple(jax.device_put(a, self.devices[0]) for a in arrays)

    def put_state(self, state: TrainState):
        if (
            self.strategy == "pmap"
        ):  # one copy per local device along a leading axis; pmap places them
            local = jax.local_device_count() if self.multi_process else self.num_devices
            return jax.tree_util.tree_map(
                lambda a: np.broadcast_to(np.asarray(a), (local,) + np.shape(a)), state
            )
        if (
            self.strategy == "sharding" and self.multi_process
        ):  # every host holds the same state: it supplies all of it
            return jax.tree_util.tree_map(
                lambda a: jax.make_array_from_process_local_data(self._replicated, np.asarray(a)),
                state,
            )
        if self.strategy == "sharding":
            return jax.device_put(state, self._replicated)
        return jax.device_put(state, self.devices[0])

    def host_state(self, state) -> TrainState:
        """One copy of the state, as it is on this host's first device (in host memory, for a multi-host job)."""
        if (
            self.multi_process
        ):  # orbax saves host arrays from process 0 only; other hosts' devices are out of reach
            per_device = self.strategy == "pmap"
            return jax.tree_util.tree_map(
                lambda a: np.asarray(a.addressable_data(0)).reshape(a.shape[per_device:]), state
            )
        if self.strategy == "pmap":
            return jax.tree_util.tree_map(lambda a: a[0], state)
        return state

    def run_chunk(self, state, images, labels, indices, weights):
        if self.multi_process:
            return self._run_fed_chunk(state, images, labels, indices, weights)
        if self.strategy == "pmap":
            d = self.num_devices
            split = lambda a: np.moveaxis(a.reshape(a.shape[0], d, -1), 1, 0)  # noqa: E731  (K, B) -> (D, K, B/D)
            state, risks = self._chunk(state, images, labels, split(indices), split(weights))
            return state, risks[0]
        return self._chunk(state, images, labels, indices, weights)

    def _run_fed_chunk(self, state, images, labels, indices, weights):
        """This host's columns of the (K, B) batch grid, gathered here and assembled into global batches."""
        width = indices.shape[1] // self.process_count
        columns = slice(self.process_index * width, (self.process_index + 1) * width)
        idx, w = indices[:, columns], weights[:, columns]
        local = (images[idx], labels[idx], w)
        if self.strategy == "pmap":  # (K, b, ...) -> (local devices, K, b / local devices, ...)
            d = jax.local_device_count()
            split = lambda a: np.moveaxis(a.reshape(a.shape[0], d, -1, *a.shape[2:]), 1, 0)  # noqa: E731
            state, risks = self._chunk(state, *map(split, local))
            return state, risks[0]
        batches = [jax.make_array_from_process_local_data(self._by_batch, a) for a in local]
        state, risks = self._chunk(state, *batches)
        return state, risks.addressable_data(0)


def make_evaluate(model, loss_fn, num_classes: int, batch_size: int = 1000):
    """evaluate(params, images, labels) -> (mean loss, error rate, confusion matrix [true, predicted]) in fixed-size batches."""

    @jax.jit
    def batch_stats(params, x, y, w):
        logits = model.apply(params, x)
        loss = jnp.sum(loss_fn(logits, y) * w)
        pred = predictions(logits)
        confusion = jnp.einsum(
            "n,ni,nj->ij",
            w,
            jax.nn.one_hot(y, num_classes, dtype=w.dtype),
            jax.nn.one_hot(pred, num_classes, dtype=w.dtype),
        )
        return loss, confusion

    def evaluate(params, images, labels):
        n = len(labels)
        if n == 0:
            return float("nan"), float("nan"), np.zeros((num_classes, num_classes), np.int64)
        total_loss, confusion = 0.0, np.zeros((num_classes, num_classes))
        for start in range(0, n, batch_size):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
            pad = batch_size - len(y) if n > batch_size else 0
            w = np.concatenate([np.ones(len(y), np.float32), np.zeros(pad, np.float32)])
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
            y = np.concatenate([y, np.zeros(pad, y.dtype)]) if pad else y
            loss, conf = batch_stats(params, x, y, w)
            total_loss += float(loss)
            confusion += np.asarray(conf)
        errors = n - np.trace(confusion)
        return total_loss / n, float(errors / n), np.rint(confusion).astype(np.int64)

    return evaluate
