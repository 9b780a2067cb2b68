"""Compiled training steps over device-resident data, the epoch's batch plan, and evaluation.

An epoch is a fixed grid of index batches: the seed-determined permutation of the training set,
padded with weight-0 entries to whole batches, and with weight-0 steps to whole chunks. One call
runs a chunk of `steps_per_chunk` steps as a `lax.scan` (unrolled on CPU), so Python dispatches
once per chunk and nothing recompiles on the last, partial batch. The environment variable
JAXNET_CHUNK (read by `chunk_mode` when a chunk is traced) chooses: `scan` runs the accelerators'
`lax.scan` on any backend, CPU included, so the tests can run the GPU and TPU code path;
`unrolled` the CPU's; `auto` (or unset) the backend's own. A step whose batch weighs 0
leaves the state as it was. The risk of a batch is sum_n w_n l_n / sum_n w_n over the *global*
batch, so splitting the batch across devices changes nothing but where the sum is computed.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet.layers import apply_stateful


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array  # dropout keys are fold_in(key, step): resuming repeats them exactly
    model_state: Any = ()  # the network's running statistics (BatchNorm); () if it has none


class EpochPlan(NamedTuple):
    indices: np.ndarray  # (chunks, steps_per_chunk, batch) int32
    weights: np.ndarray  # same shape, 1.0 for real examples, 0.0 for padding
    steps: int  # real steps in the epoch

    @property
    def chunk_steps(self) -> int:
        return self.indices.shape[1]

    def real_steps(self, chunk: int) -> int:
        """Steps of `chunk` that see data; the rest pad the last chunk and change nothing."""
        return min(self.chunk_steps, self.steps - chunk * self.chunk_steps)


def chunk_shape(num_examples: int, batch_size: int, steps_per_chunk: int) -> tuple[int, int]:
    """(steps, batch) of every chunk of every epoch: the shape the chunk compiles for."""
    batch = num_examples if batch_size == -1 else batch_size
    return min(steps_per_chunk, math.ceil(num_examples / batch)), batch


def abstract_split(images, labels) -> tuple:
    """A training split's shapes and (canonical) dtypes, as Placement.compile_ahead takes them."""
    return tuple(
        jax.ShapeDtypeStruct(a.shape, jax.dtypes.canonicalize_dtype(a.dtype))
        for a in (images, labels)
    )


def epoch_plan(
    num_examples: int, batch_size: int, steps_per_chunk: int, seed: int, epoch: int
) -> EpochPlan:
    """The shuffled, padded batches of one epoch; the order depends only on (seed, epoch)."""
    chunk, batch = chunk_shape(num_examples, batch_size, steps_per_chunk)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    steps = math.ceil(num_examples / batch)
    total = math.ceil(steps / chunk) * chunk * batch
    indices = np.zeros(total, np.int32)
    weights = np.zeros(total, np.float32)
    indices[:num_examples], weights[:num_examples] = order, 1.0
    shape = (total // (chunk * batch), chunk, batch)
    return EpochPlan(indices.reshape(shape), weights.reshape(shape), steps)


def predictions(logits):
    """Class decisions: argmax of the logits (the same under any monotone output activation)."""
    return jnp.argmax(logits, axis=-1)


CHUNK_ENV = "JAXNET_CHUNK"
CHUNK_MODES = ("auto", "scan", "unrolled")


def chunk_mode() -> str:
    """'scan' or 'unrolled': JAXNET_CHUNK if set, else unrolled on CPU and scan elsewhere."""
    mode = os.environ.get(CHUNK_ENV, "") or "auto"
    if mode not in CHUNK_MODES:
        raise ValueError(f"{CHUNK_ENV}={mode!r} is not a chunk mode: use one of {CHUNK_MODES}")
    if mode == "auto":
        return "unrolled" if jax.default_backend() == "cpu" else "scan"
    return mode


def _unrolled_scan(step, state, xs, steps: int):
    # XLA on CPU runs a convolution inside a while loop ~15x slower than outside one (measured:
    # 735 vs 45 ms per step of the default CNN), so there the chunk is unrolled in Python: even
    # lax.scan(unroll=steps) leaves a one-step chunk (batch_size=-1, say) inside a while loop.
    risks = []
    for k in range(steps):
        state, risk = step(state, jax.tree_util.tree_map(lambda a: a[k], xs))
        risks.append(risk)
    return state, jnp.stack(risks)


def _scan(step, state, xs, steps: int):
    if chunk_mode() == "unrolled":
        return _unrolled_scan(step, state, xs, steps)
    return jax.lax.scan(step, state, xs)


def make_step(model, loss_fn, optimizer, axis_name: str | None = None):
    """One step (state, (x, y, w)) -> (state, risk); a batch of weight 0 changes nothing."""

    def step(state, batch):
        x, y, w = batch
        total = jnp.sum(w)
        key = jax.random.fold_in(state.key, state.step)
        if axis_name is not None:
            total = jax.lax.psum(total, axis_name)
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        # padding examples (weight 0) stay out of batch statistics too
        training = {"key": key, "train": True, "mask": w, "axis_name": axis_name}

        def risk(params):
            logits, model_state = apply_stateful(model, params, state.model_state, x, **training)
            per_sample = loss_fn(logits, y)
            weighted = jnp.sum(per_sample * w.astype(per_sample.dtype))
            return weighted / jnp.maximum(total, 1.0), model_state

        (value, model_state), grads = jax.value_and_grad(risk, has_aux=True)(state.params)
        if axis_name is not None:  # each device holds part of the sum: add them
            value, grads = jax.lax.psum((value, grads), axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(state.step + 1, params, opt_state, state.key, model_state)
        keep = total > 0
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, state)
        return new, jnp.where(keep, value, jnp.nan)

    return step


def make_chunk_fn(model, loss_fn, optimizer, axis_name: str | None = None, fed: bool = False):
    """The unjitted chunk of steps: (state, data..., weights (K, B)) -> (state, risks (K,)).

    By default the data are the device-resident training set and the (K, B) indices of each
    step's batch: (state, images, labels, indices, weights). With fed=True they are the batches
    themselves, (state, xs (K, B, ...), ys (K, B), weights), as a multi-host run feeds them: each
    host supplies its own slice of every global batch.
    """
    step = make_step(model, loss_fn, optimizer, axis_name)
    if fed:

        def fed_chunk(state, xs, ys, weights):
            return _scan(step, state, (xs, ys, weights), weights.shape[0])

        return fed_chunk

    def chunk(state, images, labels, indices, weights):
        gather = lambda s, b: step(s, (images[b[0]], labels[b[0]], b[1]))
        return _scan(gather, state, (indices, weights), indices.shape[0])

    return chunk


class ChunkResult(NamedTuple):
    chunk: int  # index in the epoch's plan
    examples: int  # real examples in it
    risks: np.ndarray  # the per-step risks of its real steps
    compiled: bool  # whether its time includes compilation


def run_epoch(
    placement, state, data, plan: EpochPlan, first_chunk: int = 0
) -> Iterator[tuple[Any, ChunkResult]]:
    """Run `plan` from `first_chunk` on `placement`, yielding (device state, ChunkResult) per chunk.

    Each chunk's risks are fetched before the next is dispatched: the NaN check needs them, and
    fake CPU devices abort if too many collective steps are queued.
    """
    for c in range(first_chunk, plan.indices.shape[0]):
        compiled = not placement.compiled
        state, risks = placement.run_chunk(state, data, plan.indices[c], plan.weights[c])
        real = plan.real_steps(c)
        risks = np.asarray(risks)[:real]
        examples = int(plan.weights[c, :real].sum())
        yield state, ChunkResult(c, examples, risks, compiled)


class Variables(NamedTuple):
    """What evaluation and prediction need: the parameters and the network's running statistics."""

    params: Any
    model_state: Any = ()

    @classmethod
    def of(cls, state: TrainState) -> Variables:
        return cls(state.params, state.model_state)


def infer(model, variables: Variables, x):
    """The network's outputs in evaluation mode: no dropout, running statistics."""
    logits, _ = apply_stateful(model, variables.params, variables.model_state, x)
    return logits


class Evaluation(NamedTuple):
    loss: float
    error: float
    confusion: np.ndarray  # [true, predicted] counts

    @property
    def accuracy(self) -> float:
        return 1.0 - self.error


def make_evaluate(model, loss_fn, num_classes: int, batch_size: int = 1000) -> Callable:
    """evaluate(variables, images, labels) -> Evaluation, in batches of one size (one compilation).

    `variables` are `Variables(params, model_state)`.
    """

    @jax.jit
    def batch_stats(variables, x, y, w):
        logits = infer(model, variables, x)
        loss = jnp.sum(loss_fn(logits, y) * w)
        true = jax.nn.one_hot(y, num_classes, dtype=w.dtype)
        predicted = jax.nn.one_hot(predictions(logits), num_classes, dtype=w.dtype)
        return loss, jnp.einsum("n,ni,nj->ij", w, true, predicted)

    ahead = []  # the program compile_ahead started, once there is one

    def compile_ahead(variable_shapes, input_shape, dtype=np.float32) -> None:
        """Start compiling the evaluation program for these shapes on a thread, as
        Placement.compile_ahead does the chunk's; the first evaluation waits for it."""
        x = jax.ShapeDtypeStruct((batch_size, *input_shape), dtype)
        y = jax.ShapeDtypeStruct((batch_size,), np.int32)
        w = jax.ShapeDtypeStruct((batch_size,), np.float32)
        lowered = batch_stats.lower(variable_shapes, x, y, w)
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile-evaluation")
        ahead[:] = [pool.submit(lowered.compile)]
        pool.shutdown(wait=False)

    def stats(variables, x, y, w):
        if ahead:
            try:
                return ahead[0].result()(variables, x, y, w)
            except TypeError:  # other shapes or dtypes than compiled ahead: jit's own program
                pass
        return batch_stats(variables, x, y, w)

    def evaluate(variables, images, labels) -> Evaluation:
        n = len(labels)
        if n == 0:
            empty = np.zeros((num_classes, num_classes), np.int64)
            return Evaluation(float("nan"), float("nan"), empty)
        # on one device, from wherever they are: the state's and the best copy's parameters
        # then compile one program, not one per placement
        variables = jax.device_put(variables, jax.local_devices()[0])
        total_loss, confusion = 0.0, np.zeros((num_classes, num_classes))
        for start in range(0, n, batch_size):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
            pad = batch_size - len(y)  # every batch one shape: one compilation for all splits
            w = np.concatenate([np.ones(len(y), np.float32), np.zeros(pad, np.float32)])
            if pad:
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                y = np.concatenate([y, np.zeros(pad, y.dtype)])
            loss, conf = stats(variables, x, y.astype(np.int32), w)
            total_loss += float(loss)
            confusion += np.asarray(conf)
        errors = n - np.trace(confusion)
        return Evaluation(total_loss / n, float(errors / n), np.rint(confusion).astype(np.int64))

    evaluate.compile_ahead = compile_ahead
    return evaluate
