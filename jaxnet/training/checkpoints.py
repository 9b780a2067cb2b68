"""Checkpoints with orbax in WORKDIR/checkpoints: training state, best parameters, a JSON record.

Each step is a folder <step>/ holding the orbax items state/ and best/ (arrays), record/metadata
(the JSON record) and checksums/metadata: sha256 digests of the state, best and record as saved.
orbax writes a step into <step>.orbax-checkpoint-tmp and renames it when complete, so a crash
mid-save leaves the earlier steps intact; on an object store (gs://), which cannot rename a
folder, it writes <step>/ in place and marks it complete with <step>/commit_success.txt last.
The checksums catch what neither can (a damaged disk, a truncated copy): restore() verifies them
and falls back to the newest intact step.
Saves are asynchronous: save() copies the arrays to host memory and orbax writes them in the
background. Only the last `keep` steps are kept.

Layouts, recorded in checksums/metadata as "layout": 2 (this one) holds in state/ the
TrainState with its model_state (BatchNorm's running statistics) and in best/ the best
Variables (params and model_state). 1 (jaxnet 0.1.0, no "layout" key) held the TrainState
without model_state and the best params alone; it is read into today's layout with the
networks of the time's empty model state, so old workdirs resume and evaluate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxnet import paths

TIMEOUT_S = 600  # orbax's bound on one background write; our waits allow twice that (its barriers)
_ITEMS = ("state", "best", "record", "checksums")
LAYOUT = 2


class _TrainStateLayout1(NamedTuple):
    step: Any
    params: Any
    opt_state: Any
    key: Any


class CheckpointError(RuntimeError):
    """A checkpoint problem the user must act on; str() is one line naming the folder or step."""


class _Mismatch(ValueError):
    """Data that orbax read without complaint but that differs from what was saved."""


class Restored(NamedTuple):
    step: int
    state: Any
    best: Any
    record: dict


class Checkpoints:
    """The checkpoints in `directory`: asynchronous saves, verified restores."""

    def __init__(self, directory: str, keep: int, *, log=print, read_only: bool = False):
        """read_only: only to restore (evaluation), beside a run that may be saving right now."""
        self.directory = paths.shown(directory)
        self.log = log
        self._pending: int | None = None  # the step orbax is writing in the background
        self._damaged: list[int] = []  # steps newer than the restored one, replaced on next save
        if read_only:
            if _not_a_folder(self.directory):
                raise CheckpointError(f"{self.directory} is not a folder: move it away")
        else:
            _prepare(self.directory)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=None if read_only else ocp.checkpoint_managers.LatestN(n=keep),
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(timeout_secs=TIMEOUT_S),
            # what a run killed mid-save left behind; never another run's save in progress
            cleanup_tmp_directories=not read_only,
        )
        try:
            self.manager = ocp.CheckpointManager(
                paths.path(self.directory), options=options, item_names=_ITEMS
            )
        except OSError as error:
            raise CheckpointError(_unusable(self.directory, error)) from error

    def steps(self) -> list[int]:
        """The finalized steps on disk, ascending."""
        directory = paths.path(self.directory)
        try:
            names = [p.name for p in directory.iterdir()]
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit() and _finalized(directory / n))

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state, best, record: dict, *, force: bool = False) -> bool:
        """Start writing `step` in the background; False (skipped) if the previous write is busy."""
        if not force and self._busy():
            return False
        self.wait()
        self._drop_damaged()
        if step in self.manager.all_steps():
            return True
        state, best = _host_copy(state), _host_copy(best)
        text = json.dumps(record, sort_keys=True)
        sums = {"state": _digest(state), "best": _digest(best), "record": _sha256(text)}
        sums["layout"] = LAYOUT
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            best=ocp.args.StandardSave(best),
            record=ocp.args.JsonSave(json.loads(text)),  # a copy: the caller may change its dict
            checksums=ocp.args.JsonSave(sums),
        )
        try:
            self.manager.save(step, args=args, force=True)
        except OSError as error:
            raise self._failed(step, error) from error
        self._pending = step
        return True

    def wait(self) -> None:
        """Wait (bounded) for the background write; CheckpointError if it failed or stalled."""
        if self._pending is None:
            return
        limit = 2 * TIMEOUT_S
        deadline = time.monotonic() + limit
        while self.manager.is_saving_in_progress():
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"saving checkpoint {self._pending} in {self.directory} did not finish in "
                    f"{limit} s; the disk may be stalled: check it, then run the same command "
                    "to resume"
                )
            time.sleep(0.005)
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # whatever the background write raised
            # orbax already forgot the steps this save was to replace; a failing re-read
            # must not hide the save's own error
            with contextlib.suppress(Exception):
                self.manager.reload()
            raise self._failed(step, error) from error

    def restore(self, state_like, best_like) -> Restored | None:
        """The newest intact checkpoint shaped like the templates; None if there is none at all."""
        steps = self.steps()
        if not steps:
            return None
        reasons = {}
        for step in reversed(steps):
            try:
                restored = self._read(step, state_like, best_like)
            except Exception as error:  # any read failure means damage (KeyboardInterrupt is not)
                reasons[step] = _short(error)
                self.log(
                    f"checkpoint {step} in {self.directory} is damaged ({reasons[step]}); "
                    "falling back to an earlier one"
                )
                continue
            self._damaged = sorted(reasons)
            return restored
        listed = "; ".join(f"step {s}: {r}" for s, r in sorted(reasons.items()))
        raise CheckpointError(
            f"no intact checkpoint in {self.directory} ({listed}): start afresh with a new "
            "--workdir (or move this one away)"
        )

    def restore_best(self, best_like) -> Restored | None:
        """The best variables alone (no training state) of the newest intact checkpoint."""
        steps = self.steps()
        reasons = {}
        for step in reversed(steps):
            try:
                return self._read_best(step, best_like)
            except Exception as error:  # any read failure means damage (KeyboardInterrupt is not)
                reasons[step] = _short(error)
        if not reasons:
            return None
        listed = "; ".join(f"step {s}: {r}" for s, r in sorted(reasons.items()))
        raise CheckpointError(f"no intact checkpoint in {self.directory} ({listed})")

    def close(self) -> None:
        """Wait (bounded) for a pending write, then close the manager."""
        try:
            self.wait()
        except CheckpointError:
            if self._pending is None:  # the write failed rather than stalled: orbax can close
                self._close_manager()
            raise
        self._close_manager()

    def _close_manager(self) -> None:
        try:
            self.manager.close()
        except Exception:
            # orbax raises a failed write once in each thread that waits; wait() has reported it
            self.manager.close()

    def _busy(self) -> bool:
        if self._pending is None:
            return False
        busy = self.manager.is_saving_in_progress()
        if jax.process_count() > 1:  # all processes must agree, or orbax's barriers would hang
            busy = bool(multihost_utils.broadcast_one_to_all(np.int32(busy)))
        return busy

    def _read(self, step: int, state_like, best_like) -> Restored:
        layout = self._layout(step)
        state_item, best_item = _layout_templates(layout, state_like, best_like)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(_template(state_item)),
            best=ocp.args.StandardRestore(_template(best_item)),
            record=ocp.args.JsonRestore(),
            checksums=ocp.args.JsonRestore(),
        )
        got = self.manager.restore(step, args=args)
        sums = got.checksums
        record_text = json.dumps(got.record, sort_keys=True)
        for name, digest in (
            ("state", _digest(got.state)),
            ("best", _digest(got.best)),
            ("record", _sha256(record_text)),
        ):
            if digest != sums[name]:
                raise _Mismatch(f"{name} does not match its checksum")
        state, best = _from_layout(layout, got.state, got.best, state_like, best_like)
        return Restored(step, state, best, dict(got.record))

    def _layout(self, step: int) -> int:
        only_sums = ocp.args.Composite(checksums=ocp.args.JsonRestore())
        layout = self.manager.restore(step, args=only_sums).checksums.get("layout", 1)
        if layout not in (1, LAYOUT):
            raise _Mismatch(f"checkpoint layout {layout} is newer than this jaxnet's ({LAYOUT})")
        return layout

    def _read_best(self, step: int, best_like) -> Restored:
        layout = self._layout(step)
        args = ocp.args.Composite(
            best=ocp.args.StandardRestore(),  # as saved: the digest covers the saved dtypes
            record=ocp.args.JsonRestore(),
            checksums=ocp.args.JsonRestore(),
        )
        got = self.manager.restore(step, args=args)
        best = _shaped_like(got.best, best_like if layout == LAYOUT else best_like.params)
        if _digest(best) != got.checksums["best"]:  # in the saved order and dtypes
            raise _Mismatch("best does not match its checksum")
        best = best if layout == LAYOUT else best_like._replace(params=best)
        return Restored(step, None, best, dict(got.record))

    def _drop_damaged(self) -> None:
        """Delete the damaged steps newer than the restored one: training writes them anew."""
        for step in self._damaged:
            if step in self.manager.all_steps():
                try:
                    self.manager.delete(step)
                except OSError as error:
                    raise CheckpointError(
                        f"cannot remove damaged checkpoint {step} in {self.directory} "
                        f"({_short(error)}): remove that folder by hand"
                    ) from error
        self._damaged = []

    def _failed(self, step: int, error: BaseException) -> CheckpointError:
        steps = ", ".join(map(str, self.steps()))
        kept = f"the checkpoints already on disk (steps {steps}) are intact"
        return CheckpointError(
            f"saving checkpoint {step} in {self.directory} failed ({_short(error)}); "
            f"{kept if steps else 'no earlier checkpoint is on disk'}: free space or fix the "
            "disk, then run the same command to resume"
        )


def _layout_templates(layout: int, state_like, best_like) -> tuple:
    """The items' trees as `layout` saved them, from today's templates."""
    if layout == LAYOUT:
        return state_like, best_like
    if jax.tree_util.tree_leaves(state_like.model_state):
        raise _Mismatch(
            "a checkpoint of layout 1 has no model state, but this network has one (BatchNorm)"
        )
    fields = _TrainStateLayout1._fields
    return _TrainStateLayout1(*(getattr(state_like, f) for f in fields)), best_like.params


def _from_layout(layout: int, state, best, state_like, best_like) -> tuple:
    """Restored items in today's layout."""
    if layout == LAYOUT:
        return state, best
    state = state_like._replace(**state._asdict())  # model_state: the template's empty one
    return state, best_like._replace(params=best)


def _path_names(tree) -> list[str]:
    """Each leaf's path as "params/1/W", whether its containers are named tuples or dicts."""
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = (getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))) for k in path)
        names.append("/".join(map(str, parts)))
    return names


def _shaped_like(saved, like):
    """The leaves of a tree restored without a template, in the template's structure."""
    by_name = dict(zip(_path_names(saved), jax.tree_util.tree_leaves(saved)))
    leaves = []
    for name, leaf in zip(_path_names(like), jax.tree_util.tree_leaves(like)):
        if name not in by_name or np.shape(by_name[name]) != np.shape(leaf):
            got = np.shape(by_name[name]) if name in by_name else "nothing"
            raise _Mismatch(f"{name} holds {got}, expected shape {np.shape(leaf)}")
        leaves.append(by_name[name])
    if len(leaves) != len(by_name):
        raise _Mismatch(f"it holds {len(by_name)} arrays, this network has {len(leaves)}")
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


def _finalized(step) -> bool:
    """Whether orbax completed the step folder `step`."""
    if not paths.is_remote(step):  # orbax names a local step folder by its number once complete
        return step.is_dir()
    return ocp.path.step.is_path_finalized(step)  # remotely: once commit_success.txt is there


def _not_a_folder(directory: str) -> bool:
    if paths.is_remote(directory):
        path = paths.path(directory)
        return path.exists() and not path.is_dir()
    return os.path.lexists(directory) and not os.path.isdir(directory)


def _prepare(directory: str) -> None:
    """Create `directory` and prove it writable: orbax hung on a file named like it."""
    if _not_a_folder(directory):
        raise CheckpointError(f"{directory} is not a folder: move it away or use another --workdir")
    probe = paths.join(directory, f".write-test-{socket.gethostname()}-{os.getpid()}")
    try:
        paths.makedirs(directory)
        paths.write_text(probe, "ok")
        paths.path(probe).unlink()
    except FileNotFoundError as error:
        if paths.is_remote(directory):  # an object store refuses a new object only so
            raise CheckpointError(
                f"cannot write checkpoints to {directory}: the bucket {paths.store(directory)} "
                "does not exist: create it, or check the --workdir"
            ) from error
        raise CheckpointError(_unusable(directory, error)) from error
    except OSError as error:
        raise CheckpointError(_unusable(directory, error)) from error


def _unusable(directory: str, error: OSError) -> str:
    return (
        f"cannot write checkpoints to {directory} ({paths.reason(error)}): free space, fix "
        "its permissions or use another --workdir"
    )


def _host_copy(tree):
    """Private host copies, so the caller may donate or overwrite its buffers at once."""
    return jax.tree_util.tree_map(lambda leaf: np.array(leaf, copy=True), tree)


def _template(tree):
    """Scalars as 0-d arrays, as they were saved: orbax cannot restore into a numpy scalar."""
    as_array = lambda x: x if isinstance(x, jax.Array | np.ndarray) else np.asarray(x)
    return jax.tree_util.tree_map(as_array, tree)


def _digest(tree) -> str:
    """sha256 over every leaf's dtype, shape and bytes, in tree order."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        array = np.asarray(leaf)
        h.update(f"{array.dtype.str}{array.shape};".encode())
        h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _short(error: BaseException) -> str:
    """The error on one short line."""
    if isinstance(error, _Mismatch):
        text = str(error)
    elif isinstance(error, OSError) and error.strerror:
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    else:
        text = f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= 120 else text[:117] + "..."
