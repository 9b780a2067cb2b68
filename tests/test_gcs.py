"""A gs:// workdir and data_dir, against a real GCS API served on 127.0.0.1 (gcp-storage-emulator).

train.py runs with a gs:// workdir reading IDX files from a gs:// data_dir, is killed with
SIGKILL once a checkpoint is in the bucket, and the same command resumes it: its final
parameters, metrics and summary equal an uninterrupted run on local folders. --mode=evaluate
works from the bucket alone, and load_dataset reads a gs:// data_dir as it reads a local one.
"""

import gzip
import importlib.util
import json
import os
import signal
import struct
import subprocess
import sys
import time

import gcs_emulator
import numpy as np
import pytest

# gcsfs reads this when first imported, so at collection, before any test can import it
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
for _needed in ("gcp_storage_emulator", "gcsfs"):
    if importlib.util.find_spec(_needed) is None:
        pytest.skip(f"{_needed} is not installed", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = f"gs://{gcs_emulator.BUCKET}"
FASHION = "/usr/share/datasets/fashion-mnist"
RUN = [
    "--config.dataset.name=mnist",
    "--config.dataset.validation_size=64",
    "--config.model.kind=mlp",
    "--config.model.hidden=(32,)",
    "--config.epochs=30",
    "--config.batch_size=32",
    "--config.steps_per_chunk=4",
    "--config.checkpoint.every_steps=8",
    "--config.checkpoint.keep=2",
    "--config.devices.strategy=single",
    "--config.model.dropout=0.2",
    "--config.compilation_cache_dir=",
]


@pytest.fixture(scope="module")
def gcs():
    """The emulator's client settings, also in this process's environment."""
    import fsspec.config

    with gcs_emulator.running() as url, pytest.MonkeyPatch.context() as patch:
        env = gcs_emulator.client_env(url)
        for name, value in env.items():
            patch.setenv(name, value)
        import gcsfs

        assert gcsfs.GCSFileSystem is gcsfs.core.GCSFileSystem, "gcsfs imported too early"
        # fsspec reads FSSPEC_GS when imported; and this process reads what train.py writes,
        # which gcsfs's listing cache would not see
        patch.setitem(fsspec.config.conf, "gs", {"token": "anon", "use_listings_cache": False})
        yield env


def _fs():
    import fsspec

    return fsspec.filesystem("gs")


def _idx(array: np.ndarray, kind: int) -> bytes:
    header = bytes([0, 0, kind, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write_idx_files(folder: str, train: int = 544, test: int = 128) -> None:
    """Small MNIST-format files (gzipped, as shipped) in the local or gs:// `folder`."""
    from jaxnet import paths

    paths.makedirs(folder)
    rng = np.random.default_rng(0)
    labels = {n: rng.integers(0, 10, n, dtype=np.uint8) for n in (train, test)}
    prototypes = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    for prefix, n in (("train", train), ("t10k", test)):
        noise = rng.integers(0, 64, (n, 28, 28), dtype=np.uint8)
        images = (prototypes[labels[n]] // 2 + noise).astype(np.uint8)
        for kind, data in (("images-idx3", _idx(images, 8)), ("labels-idx1", _idx(labels[n], 8))):
            paths.path(folder, f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(data, 1))


def _train(workdir: str, data_dir: str, env: dict, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}"]
    argv += [*RUN, f"--config.dataset.data_dir={data_dir}", *extra]
    env = {**os.environ, **env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finished(run: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = run.communicate(timeout=timeout)
    assert run.returncode == 0, out
    return out


def _committed_steps(workdir: str) -> list[int]:
    """The steps whose checkpoint is complete in the bucket (orbax writes commit_success last)."""
    found = _fs().glob(f"{workdir}/checkpoints/*/commit_success.txt")
    return sorted(int(p.split("/")[-2]) for p in found)


@pytest.fixture(scope="module")
def runs(gcs, tmp_path_factory):
    """(local workdir, gs:// workdir, resumed run's output): the gs:// run killed, then resumed."""
    local = tmp_path_factory.mktemp("gcs")
    _write_idx_files(str(local / "data"))
    _write_idx_files(f"{BUCKET}/data")
    straight = _train(str(local / "run"), str(local / "data"), gcs)
    workdir = f"{BUCKET}/run"
    killed = _train(workdir, f"{BUCKET}/data", gcs)
    deadline = time.monotonic() + 120
    while not _committed_steps(workdir) and killed.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint reached the bucket"
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed: use more epochs"
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert not _fs().exists(f"{workdir}/summary.json")
    _finished(straight)
    resumed = _finished(_train(workdir, f"{BUCKET}/data", gcs))
    return local / "run", workdir, resumed


def _final_checkpoint(workdir) -> dict:
    """The newest checkpoint's state and best parameters, as saved."""
    import orbax.checkpoint as ocp

    from jaxnet import paths

    options = ocp.CheckpointManagerOptions(read_only=True)
    folder = paths.path(workdir, "checkpoints")
    with ocp.CheckpointManager(folder, options=options, item_names=("state", "best")) as manager:
        step = manager.latest_step()
        restore = ocp.args.StandardRestore
        got = manager.restore(step, args=ocp.args.Composite(state=restore(), best=restore()))
    return {"step": step, "state": got.state, "best": got.best}


def _rows(text: str) -> list[dict]:
    """metrics.jsonl without the wall-clock seconds, which no two runs share."""
    rows = [json.loads(line) for line in text.splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_a_killed_and_resumed_gs_run_ends_with_the_parameters_of_a_local_run(runs):
    import jax

    local, remote, resumed = runs
    assert f"resuming from {remote}/checkpoints at step" in resumed
    assert f"{remote} is not locked" in resumed
    a, b = _final_checkpoint(local), _final_checkpoint(remote)
    assert a["step"] == b["step"]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    summary = json.loads(_fs().cat(f"{remote}/summary.json"))
    expected = json.loads((local / "summary.json").read_text())
    for key in ("test_loss", "test_accuracy", "best_val_error", "best_epoch", "step"):
        assert summary[key] == expected[key], key
    rows = _rows(_fs().cat(f"{remote}/metrics.jsonl").decode())
    assert rows == _rows((local / "metrics.jsonl").read_text())  # each step once, none lost
    assert _fs().exists(f"{remote}/learning_curves.png")


def _events(data: bytes) -> list:
    """The events of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    events, at = [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        events.append(event_pb2.Event.FromString(data[at + 12 : at + 12 + length]))
        at += 12 + length + 4
    return events


def test_tensorboard_events_in_the_bucket_purge_what_the_resumed_run_repeats(runs):
    _, remote, resumed = runs
    files = sorted(_fs().glob(f"{remote}/tensorboard/events.out.tfevents.*"))
    assert len(files) == 2  # one a run
    first, second = (_events(_fs().cat(f)) for f in sorted(files, key=lambda f: f[-4:]))
    step = int(resumed.split(f"{remote}/checkpoints at step ")[1].split()[0])
    assert second[1].session_log.status == second[1].session_log.START
    assert second[1].step == step + 1  # hides the killed run's events past the checkpoint
    kept = {e.step for e in first if e.summary.value and e.summary.value[0].tag == "train/loss"}
    assert {s for s in range(4, step + 1, 4)} <= kept  # every chunk up to the checkpoint


def test_evaluate_mode_works_from_the_bucket_alone(runs, gcs):
    _, remote, _ = runs
    env = {**os.environ, **gcs, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    argv = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        f"--workdir={remote}",
        "--mode=evaluate",
    ]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(_fs().cat(f"{remote}/summary.json"))
    evaluation = json.loads(_fs().cat(f"{remote}/evaluation.json"))
    assert evaluation["test_accuracy"] == summary["test_accuracy"]
    assert f"test accuracy {100 * summary['test_accuracy']:.2f}%" in done.stdout


def test_a_gs_data_dir_is_read_as_the_local_folder_is(gcs, tmp_path):
    from jaxnet.data import DatasetNotFoundError, load_dataset

    local = FASHION if os.path.isdir(FASHION) else str(tmp_path)
    if local == str(tmp_path):
        _write_idx_files(local)
    remote = f"{BUCKET}/fashion"
    for name in os.listdir(local):
        _fs().put_file(os.path.join(local, name), f"{remote}/{name}")
    quiet = lambda *args: None
    a = load_dataset("mnist", data_dir=local, validation_size=0.1, log=quiet)
    b = load_dataset("mnist", data_dir=remote, validation_size=0.1, log=quiet)
    assert b.source == f"IDX files in {remote}"
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(a, split).images, getattr(b, split).images)
        np.testing.assert_array_equal(getattr(a, split).labels, getattr(b, split).labels)
    with pytest.raises(DatasetNotFoundError, match=f"IDX files in {BUCKET}/nothing: skipped, no"):
        load_dataset("mnist", data_dir=f"{BUCKET}/nothing", log=quiet)


def test_a_gs_workdir_that_is_a_file_or_in_no_bucket_is_refused_in_one_line(gcs):
    from jaxnet.training import config as config_lib
    from jaxnet.training import trainer
    from jaxnet.training.checkpoints import CheckpointError, Checkpoints

    _fs().pipe(f"{BUCKET}/a-file", b"not a folder")
    with pytest.raises(trainer.WorkdirError, match="a-file is a file, but the workdir must be"):
        trainer.prepare(config_lib.base_config(), f"{BUCKET}/a-file", log=lambda *a: None)
    with pytest.raises(CheckpointError) as error:  # and the bucket is not created
        Checkpoints("gs://no-such-bucket/run/checkpoints", 2, log=lambda *a: None)
    assert str(error.value) == (
        "cannot write checkpoints to gs://no-such-bucket/run/checkpoints: the bucket "
        "gs://no-such-bucket does not exist: create it, or check the --workdir"
    )
    assert not _fs().exists("gs://no-such-bucket")
