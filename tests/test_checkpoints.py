"""Checkpoints: asynchronous saves, checksums, falling back past damaged steps, no hangs."""

import errno
import os
import shutil
import threading
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import pytest
from orbax.checkpoint._src.handlers.json_checkpoint_handler import JsonCheckpointHandler

from jaxnet.training import checkpoints
from jaxnet.training.checkpoints import CheckpointError, Checkpoints

STEPS = (10, 20, 30, 40)  # keep=3 leaves 20, 30, 40


class State(NamedTuple):
    step: Any
    params: dict


def make_state(key, step: int) -> State:
    k1, k2 = jax.random.split(jax.random.fold_in(key, step))
    params = {"w": jax.random.normal(k1, (64, 64)), "b": jax.random.normal(k2, (64,))}
    return State(np.asarray(step), jax.tree_util.tree_map(np.array, params))


def zeros_like(tree):
    return jax.tree_util.tree_map(np.zeros_like, tree)


def assert_same(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def within(seconds, fn):
    """fn()'s result or exception, failing the test rather than hanging if it takes longer."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as error:
            out["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not return within {seconds} s"
    return out


@pytest.fixture
def saved(tmp_path, key):
    """(folder, {step: (state, best, record)}): four steps saved with keep=3."""
    folder = str(tmp_path / "checkpoints")
    ckpt, values = Checkpoints(folder, 3, log=lambda line: None), {}
    for step in STEPS:
        state = make_state(key, step)
        values[step] = (state, state.params, {"epoch": step // 10, "loss": 1.0 / step})
        assert ckpt.save(step, *values[step], force=True)
    ckpt.close()
    assert steps(folder) == [20, 30, 40]
    return folder, values


def steps(folder):
    ckpt = Checkpoints(folder, 3)
    ckpt.close()
    return ckpt.steps()


def restore(folder, like):
    """(restored, log lines) from a fresh Checkpoints, as a restarted run sees them."""
    lines = []
    ckpt = Checkpoints(folder, 3, log=lines.append)
    restored = ckpt.restore(zeros_like(like), zeros_like(like.params))
    ckpt.close()
    return restored, lines


def assert_fell_back(folder, values):
    """Step 40 is damaged: restore gives step 30 exactly, logging one line."""
    restored, lines = restore(folder, values[40][0])
    assert restored.step == 30
    state, best, record = values[30]
    assert_same(restored.state, state)
    assert_same(restored.best, best)
    assert restored.record == record
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith(f"checkpoint 40 in {folder} is damaged (")
    assert lines[0].endswith("falling back to an earlier one")
    return lines[0]


def files(folder):
    return [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]


def largest(folder):
    return max(files(folder), key=os.path.getsize)


def write_garbage(path):
    with open(path, "w") as f:
        f.write('{"not": orbax')


def test_restore_gives_the_newest_checkpoint_exactly(saved):
    folder, values = saved
    restored, lines = restore(folder, values[40][0])
    assert restored.step == 40 and lines == []
    assert_same(restored.state, values[40][0])
    assert_same(restored.best, values[40][1])
    assert restored.record == values[40][2]


@pytest.mark.parametrize("item", ["state", "best"])
def test_a_deleted_item_folder_falls_back(saved, item):
    shutil.rmtree(os.path.join(saved[0], "40", item))
    assert_fell_back(*saved)


def test_a_truncated_data_file_falls_back(saved):
    path = largest(os.path.join(saved[0], "40", "state"))
    os.truncate(path, os.path.getsize(path) // 2)
    assert_fell_back(*saved)


def test_flipped_bytes_that_decode_to_garbage_are_caught_by_the_checksum(saved):
    path = largest(os.path.join(saved[0], "40", "state"))
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    open(path, "wb").write(bytes(data))
    assert "state does not match its checksum" in assert_fell_back(*saved)


@pytest.mark.parametrize(
    "names",
    [("state/_METADATA",), ("best/_METADATA",), ("_CHECKPOINT_METADATA", "state/_METADATA")],
)
def test_garbage_in_metadata_files_falls_back(saved, names):
    for name in names:
        write_garbage(os.path.join(saved[0], "40", name))
    assert_fell_back(*saved)


def test_garbage_in_the_step_metadata_alone_is_harmless(saved):
    write_garbage(os.path.join(saved[0], "40", "_CHECKPOINT_METADATA"))  # orbax does not need it
    folder, values = saved
    restored, lines = restore(folder, values[40][0])
    assert restored.step == 40 and lines == []  # and the checksums vouch for the data
    assert_same(restored.state, values[40][0])


def test_an_empty_step_folder_falls_back(saved):
    shutil.rmtree(os.path.join(saved[0], "40"))
    os.mkdir(os.path.join(saved[0], "40"))
    assert_fell_back(*saved)


@pytest.mark.parametrize("item", ["record", "checksums"])
@pytest.mark.parametrize("damage", [os.remove, write_garbage])
def test_a_deleted_or_garbage_json_item_falls_back(saved, item, damage):
    damage(os.path.join(saved[0], "40", item, "metadata"))
    assert_fell_back(*saved)


def test_the_damaged_step_is_replaced_when_training_saves_it_again(saved, key):
    folder, values = saved
    shutil.rmtree(os.path.join(folder, "40", "state"))
    ckpt = Checkpoints(folder, 3, log=lambda line: None)
    assert ckpt.restore(zeros_like(values[40][0]), zeros_like(values[40][1])).step == 30
    again = make_state(jax.random.fold_in(key, 1), 40)
    assert ckpt.save(40, again, again.params, {"epoch": 4}, force=True)
    ckpt.close()
    restored, lines = restore(folder, again)
    assert restored.step == 40 and lines == []
    assert_same(restored.state, again)


def test_all_checkpoints_damaged_is_one_line_saying_start_afresh(saved):
    folder, values = saved
    for step in (20, 30, 40):
        shutil.rmtree(os.path.join(folder, str(step), "best"))
    with pytest.raises(CheckpointError) as raised:
        restore(folder, values[40][0])
    message = str(raised.value)
    assert "\n" not in message and f"no intact checkpoint in {folder}" in message
    assert all(f"step {s}:" in message for s in (20, 30, 40)) and "--workdir" in message


def test_a_file_named_checkpoints_raises_at_once(tmp_path):
    path = tmp_path / "checkpoints"
    path.write_text("not a folder")
    out = within(10, lambda: Checkpoints(str(path), 3))
    assert isinstance(out.get("error"), CheckpointError)
    assert str(out["error"]) == f"{path} is not a folder: move it away or use another --workdir"


def test_a_folder_that_cannot_be_created_or_written_names_the_reason(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    out = within(10, lambda: Checkpoints(str(tmp_path / "file" / "checkpoints"), 3))
    assert isinstance(out.get("error"), CheckpointError)
    assert "Not a directory" in str(out["error"]) and "file/checkpoints" in str(out["error"])

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(checkpoints.paths, "write_text", read_only)
    out = within(10, lambda: Checkpoints(str(tmp_path / "checkpoints"), 3))
    message = str(out["error"])
    assert f"cannot write checkpoints to {tmp_path / 'checkpoints'} (Read-only" in message


def test_a_new_folder_restores_to_none(tmp_path):
    ckpt = Checkpoints(str(tmp_path / "new" / "checkpoints"), 3)
    assert ckpt.restore({"a": np.zeros(2)}, {"a": np.zeros(2)}) is None
    assert ckpt.steps() == [] and ckpt.latest_step() is None
    ckpt.close()


@pytest.fixture
def gate(monkeypatch):
    """Holds every background JSON write until set(): the write in flight, under test control."""
    event, original = threading.Event(), JsonCheckpointHandler._save_fn

    async def held(self, item, directory):
        event.wait(20)
        return await original(self, item, directory)

    monkeypatch.setattr(JsonCheckpointHandler, "_save_fn", held)
    yield event
    event.set()


def test_save_returns_before_the_write_and_skips_while_it_is_busy(tmp_path, key, gate):
    folder = str(tmp_path / "checkpoints")
    ckpt = Checkpoints(folder, 3)
    state = make_state(key, 1)
    start = time.monotonic()
    assert ckpt.save(1, state, state.params, {"epoch": 1})
    assert time.monotonic() - start < 5 and ckpt.steps() == []  # still being written
    assert not ckpt.save(2, state, state.params, {"epoch": 1})  # skipped, not blocked
    gate.set()
    ckpt.wait()
    assert ckpt.steps() == [1]
    assert ckpt.save(1, state, state.params, {"epoch": 1})  # an existing step: a no-op
    ckpt.close()
    restored, _ = restore(folder, state)
    assert restored.step == 1 and restored.record == {"epoch": 1}
    assert_same(restored.state, state)


def test_changing_the_callers_arrays_after_save_changes_nothing_saved(tmp_path, key, gate):
    folder = str(tmp_path / "checkpoints")
    ckpt = Checkpoints(folder, 3)
    state = make_state(key, 1)
    expected = jax.tree_util.tree_map(np.copy, state)
    on_device = jax.tree_util.tree_map(jax.numpy.asarray, state.params)
    record = {"epoch": 1, "history": [1.0]}
    assert ckpt.save(1, state, on_device, record)
    for leaf in jax.tree_util.tree_leaves(state.params):
        leaf[...] = np.nan
    for leaf in jax.tree_util.tree_leaves(on_device):
        leaf.delete()  # as a donated buffer would be
    record["history"].append(2.0)
    gate.set()
    ckpt.close()
    restored, _ = restore(folder, expected)
    assert_same(restored.state, expected)
    assert_same(restored.best, expected.params)
    assert restored.record == {"epoch": 1, "history": [1.0]}


def test_a_write_that_stalls_past_the_timeout_raises(tmp_path, key, gate, monkeypatch):
    monkeypatch.setattr(checkpoints, "TIMEOUT_S", 1)
    ckpt = Checkpoints(str(tmp_path / "checkpoints"), 3)
    state = make_state(key, 1)
    assert ckpt.save(1, state, state.params, {})
    out = within(10, ckpt.wait)
    assert isinstance(out.get("error"), CheckpointError), out
    message = str(out["error"])
    assert "saving checkpoint 1" in message and "no earlier checkpoint is on disk" in message
    gate.set()
    within(10, ckpt.close)


def test_our_own_wait_is_bounded_too(tmp_path, key, monkeypatch):
    monkeypatch.setattr(checkpoints, "TIMEOUT_S", 1)
    ckpt = Checkpoints(str(tmp_path / "checkpoints"), 3)
    state = make_state(key, 1)
    assert ckpt.save(1, state, state.params, {})
    with monkeypatch.context() as patch:
        patch.setattr(ckpt.manager, "is_saving_in_progress", lambda: True)  # a stuck flag
        out = within(10, ckpt.wait)
    assert str(out.get("error")).startswith(f"saving checkpoint 1 in {ckpt.directory} did not")
    ckpt.close()
    assert ckpt.steps() == [1]


@pytest.mark.parametrize("raised_by", ["save", "wait"])
def test_a_full_disk_raises_naming_the_step_and_keeps_earlier_checkpoints(
    saved, key, monkeypatch, raised_by
):
    folder, values = saved

    async def no_space(self, item, directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    ckpt = Checkpoints(folder, 3)
    state = make_state(key, 50)
    with monkeypatch.context() as patch:
        patch.setattr(JsonCheckpointHandler, "_save_fn", no_space)
        assert ckpt.save(50, state, state.params, {"epoch": 5})
        if raised_by == "save":
            out = within(10, lambda: ckpt.save(60, state, state.params, {}, force=True))
        else:
            out = within(10, ckpt.wait)
    message = str(out.get("error"))
    assert isinstance(out.get("error"), CheckpointError), out
    assert "\n" not in message and message.startswith(f"saving checkpoint 50 in {folder} failed")
    assert "No space left on device" in message and "(steps 20, 30, 40) are intact" in message
    ckpt.close()
    assert steps(folder) == [20, 30, 40]  # none was deleted for the failed one
    restored, lines = restore(folder, values[40][0])
    assert restored.step == 40 and lines == []
    assert_same(restored.state, values[40][0])


def test_a_read_only_reader_leaves_a_save_in_progress_alone(saved):
    folder, values = saved
    in_flight = os.path.join(folder, "50.orbax-checkpoint-tmp")  # another run is writing it
    os.makedirs(os.path.join(in_flight, "state"))
    reader = Checkpoints(folder, 3, log=lambda line: None, read_only=True)
    restored = reader.restore(zeros_like(values[40][0]), zeros_like(values[40][1]))
    reader.close()
    assert restored.step == 40
    assert_same(restored.state, values[40][0])
    assert os.path.isdir(in_flight) and steps(folder) == [20, 30, 40]
