"""Where the training runs: one device, pmap over devices, or jit with shardings over a mesh.

Every placement has the same interface: put the data and the state on its devices, run a chunk
of steps, and hand back a host-side view of the state. Whether the job spans several processes
(`jax.distributed`) is a property of the placement: then every host keeps the training set in
its own memory and feeds its own contiguous columns of each global batch, which the devices of
the other hosts never see. The global batch, and so the result, is the one a single device gets.
"""

from __future__ import annotations

import concurrent.futures

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnet.training.steps import TrainState, make_chunk_fn


class Placement:
    """The common part: the data feed, the chunk call and agreement between processes."""

    name = ""
    axis_name: str | None = None
    _can_compile_ahead = True  # abstract shapes describe the arguments fully

    def __init__(self, model, loss_fn, optimizer, devices=None):
        self.multi_process = jax.process_count() > 1
        self.devices = self._choose_devices(devices)
        chunk = make_chunk_fn(model, loss_fn, optimizer, self.axis_name, fed=self.multi_process)
        self._chunk = self._compile(chunk)
        self._ahead = None  # a chunk being compiled in the background (compile_ahead)
        self.compiled = False  # until the first chunk has run: its time includes compilation

    @property
    def num_devices(self) -> int:
        """Devices the global batch is split over, on every host."""
        return len(self.devices)

    def batch_problem(self, batch: int) -> str | None:
        """Why a global batch of `batch` examples cannot be split here, or None."""
        if batch % self.num_devices:
            return (
                f"{batch} examples do not split over {self.num_devices} devices ({self.name}): "
                f"use a multiple of {self.num_devices} or devices.strategy=single"
            )
        return None

    def put_data(self, images, labels):
        if self.multi_process:  # each host gathers its own columns of every batch from host memory
            return np.asarray(images), np.asarray(labels)
        return self._put_replicated(images), self._put_replicated(labels)

    def compile_ahead(self, state_shapes, data_shapes, chunk_shape: tuple[int, int]) -> None:
        """Start compiling the chunk for these shapes on a thread; the first run_chunk waits.

        Tracing holds the GIL, so it happens here; XLA compiles with the GIL released, so the
        trainer's own start-up (the initial state, the evaluation program, its logs) proceeds
        meanwhile on the other cores.
        """
        if self.multi_process or not self._can_compile_ahead:
            return
        index = jax.ShapeDtypeStruct(chunk_shape, np.int32)
        weight = jax.ShapeDtypeStruct(chunk_shape, np.float32)
        args = (state_shapes, *data_shapes, index, weight)
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile-chunk")
        self._ahead = pool.submit(self._chunk.lower(*args).compile)
        pool.shutdown(wait=False)

    def compiled_chunk(self):
        """The program compile_ahead started, once compiled (None without one): what the chunks
        run, for a benchmark to time its compilation and read its cost analysis."""
        return None if self._ahead is None else self._ahead.result()

    def run_chunk(self, state, data, indices, weights):
        """One compiled chunk: (state, per-step risks of this host's first device)."""
        if self.multi_process:
            fixed, batched = (), self._host_columns(data, indices, weights)
        else:
            fixed, batched = data, (indices, weights)
        call = self._chunk if self._ahead is None else self._ahead.result()
        state, risks = call(state, *fixed, *(self._lay_out(b) for b in batched))
        self.compiled = True
        return state, self._first_copy(risks)

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag true on any process, so all processes take the same branch (a save, a stop)."""
        if not self.multi_process:
            return tuple(bool(f) for f in flags)
        gathered = multihost_utils.process_allgather(np.array(flags, np.int32))
        return tuple(bool(f) for f in np.asarray(gathered).reshape(-1, len(flags)).any(axis=0))

    def _host_columns(self, data, indices, weights):
        """This host's columns of the (K, B) batch grid, gathered from its copy of the data."""
        count, index = jax.process_count(), jax.process_index()
        width = indices.shape[1] // count
        columns = slice(index * width, (index + 1) * width)
        images, labels = data
        idx = indices[:, columns]
        return images[idx], labels[idx], weights[:, columns]

    # What each strategy defines.
    def _choose_devices(self, devices) -> list:
        raise NotImplementedError

    def _compile(self, chunk):
        raise NotImplementedError

    def _put_replicated(self, array):
        raise NotImplementedError

    def _lay_out(self, batched):
        """A (K, B, ...) array as the compiled chunk takes it."""
        return batched

    def _first_copy(self, replicated):
        return replicated

    def put_state(self, state: TrainState):
        raise NotImplementedError

    def host_state(self, state) -> TrainState:
        """One copy of the state, as on this host's first device (host memory if multi-process)."""
        raise NotImplementedError


class Single(Placement):
    """jit on one device."""

    name = "single"

    def _choose_devices(self, devices):
        if self.multi_process:
            raise ValueError(
                f"devices.strategy='single' trains on one device, but this job has "
                f"{jax.process_count()} processes: use 'sharding' or 'pmap', or start one process"
            )
        return list(devices or jax.local_devices())[:1]

    def _compile(self, chunk):
        return jax.jit(chunk, donate_argnums=0)

    def _put_replicated(self, array):
        return jax.device_put(array, self.devices[0])

    def put_state(self, state):
        return jax.device_put(state, self.devices[0])

    def host_state(self, state):
        return state


class Pmap(Placement):
    """pmap over this host's devices, gradients added with an explicit psum."""

    name = "pmap"
    axis_name = "data"
    _can_compile_ahead = False  # its arguments carry a device axis the shapes do not

    def _choose_devices(self, devices):
        return list(devices or jax.local_devices())

    @property
    def num_devices(self) -> int:
        return jax.device_count() if self.multi_process else len(self.devices)

    def _compile(self, chunk):
        arity = 4 if self.multi_process else 5
        devices = None if self.multi_process else self.devices
        return jax.pmap(chunk, "data", in_axes=(0,) * arity, devices=devices, donate_argnums=0)

    def _put_replicated(self, array):
        # one copy per device, made once: an unmapped argument would be copied at every call
        replicate = jax.pmap(lambda a: a, devices=self.devices)
        return replicate(np.broadcast_to(array, (len(self.devices),) + array.shape))

    def _lay_out(self, batched):  # (K, B, ...) -> (local devices, K, B / local devices, ...)
        d = len(jax.local_devices()) if self.multi_process else len(self.devices)
        a = np.asarray(batched)
        return np.moveaxis(a.reshape(a.shape[0], d, -1, *a.shape[2:]), 1, 0)

    def _first_copy(self, replicated):
        return replicated[0]

    def put_state(self, state):  # one copy per local device along a leading axis
        local = jax.local_device_count() if self.multi_process else len(self.devices)
        return jax.tree_util.tree_map(
            lambda a: np.broadcast_to(np.asarray(a), (local,) + np.shape(a)), state
        )

    def host_state(self, state):
        if self.multi_process:
            return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0))[0], state)
        return jax.tree_util.tree_map(lambda a: a[0], state)


class Sharding(Placement):
    """jit with a NamedSharding over a one-axis mesh of every device of every host."""

    name = "sharding"

    def _choose_devices(self, devices):
        devices = list(devices or (jax.devices() if self.multi_process else jax.local_devices()))
        self.mesh = Mesh(np.array(devices), ("data",))
        self._replicated = NamedSharding(self.mesh, P())
        self._by_batch = NamedSharding(self.mesh, P(None, "data"))
        return devices

    def _compile(self, chunk):
        r, b = self._replicated, self._by_batch
        # fed: (state, xs, ys, weights); else (state, images, labels, indices, weights)
        data = (b, b, b) if self.multi_process else (r, r, b, b)
        return jax.jit(chunk, in_shardings=(r, *data), out_shardings=(r, r), donate_argnums=0)

    def _put_replicated(self, array):
        return jax.device_put(array, self._replicated)

    def _lay_out(self, batched):
        if self.multi_process:  # this host's columns become its part of one global array
            return jax.make_array_from_process_local_data(self._by_batch, batched)
        return batched

    def _first_copy(self, replicated):
        return replicated.addressable_data(0) if self.multi_process else replicated

    def put_state(self, state):
        if self.multi_process:  # every host holds the same state: it supplies all of it
            put = lambda a: jax.make_array_from_process_local_data(self._replicated, np.asarray(a))
            return jax.tree_util.tree_map(put, state)
        return jax.device_put(state, self._replicated)

    def host_state(self, state):
        if self.multi_process:  # orbax saves host arrays; other hosts' devices are out of reach
            return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), state)
        return state


STRATEGIES = {"single": Single, "pmap": Pmap, "sharding": Sharding}
