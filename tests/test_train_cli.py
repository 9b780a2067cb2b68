"""train.py as users run it: a subprocess, killed with SIGKILL and resumed; config errors; the evaluate mode."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "--config.dataset.name=synthetic",
    "--config.dataset.validation_size=256",
    "--config.model.channels=(4,)",
    "--config.model.hidden=(16,)",
    "--config.epochs=3",
    "--config.batch_size=32",
    "--config.steps_per_chunk=4",
    "--config.checkpoint.every_chunks=1",
    "--config.checkpoint.keep=2",
    "--config.devices.strategy=single",
    "--config.model.dropout=0.3",
    "--config.optimizer.learning_rate=0.01",
]


def train(workdir, *extra, **kwargs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    argv = [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}", *SMALL, *extra]
    return subprocess.Popen(
        argv,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def checkpoint_steps(workdir):
    folder = os.path.join(workdir, "checkpoints")
    return (
        sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []
    )


def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_result(tmp_path):
    straight = train(tmp_path / "straight")
    out, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, out

    killed_dir = tmp_path / "killed"
    run = train(killed_dir)
    deadline = time.time() + 240
    target = random.Random().randint(2, 12)  # kill after this many checkpoints have appeared
    while (
        time.time() < deadline
        and run.poll() is None
        and (not checkpoint_steps(killed_dir) or checkpoint_steps(killed_dir)[-1] < target * 4)
    ):
        time.sleep(0.05)
    assert run.poll() is None, "the run finished before it could be killed; use more epochs"
    time.sleep(random.Random().uniform(0, 0.5))  # anywhere, even in the middle of a save
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    assert checkpoint_steps(killed_dir), "nothing was saved before the kill"

    resumed = train(killed_dir)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resuming from" in out
    a = json.loads((tmp_path / "straight" / "summary.json").read_text())
    b = json.loads((killed_dir / "summary.json").read_text())
    assert (
        b["test_loss"] == a["test_loss"] and b["best_val_error"] == a["best_val_error"]
    )  # bit-identical parameters
    last = lambda d: json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])  # noqa: E731
    assert last(killed_dir)["val_loss"] == last(tmp_path / "straight")["val_loss"]


def test_sigterm_saves_then_exits_and_the_same_command_resumes(tmp_path):
    run = train(tmp_path)
    while not checkpoint_steps(tmp_path):
        time.sleep(0.05)
        assert run.poll() is None
    run.send_signal(signal.SIGTERM)
    out, _ = run.communicate(timeout=120)
    assert (
        run.returncode != 0 and "saved at step" in out and "run the same command to resume" in out
    )
    saved = int(out.split("saved at step ")[1].split(";")[0])
    assert saved in checkpoint_steps(tmp_path)
    resumed = train(tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resuming from {tmp_path / 'checkpoints'} at step {saved}" in out


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.optimizer.nmae=sgd", "nmae"),
        ("--config.optimizer.name=adagrad", "choose one of"),
        ("--config.dataset.name=imagenet", "dataset.name"),
    ],
)
def test_config_errors_name_the_key_and_what_is_allowed(tmp_path, flag, message):
    run = train(tmp_path, flag)
    out, _ = run.communicate(timeout=120)
    assert run.returncode != 0 and message in out


def test_a_missing_dataset_fails_fast_with_instructions(tmp_path):
    tic = time.perf_counter()
    run = train(tmp_path, "--config.dataset.name=mnist", f"--config.dataset.data_dir={tmp_path}")
    out, _ = run.communicate(timeout=120)
    assert run.returncode != 0 and "mnist" in out and "IDX" in out
    assert time.perf_counter() - tic < 60  # the import of jax dominates; no network wait


def test_evaluate_mode_reports_the_best_checkpoint(tmp_path):
    run = train(tmp_path, "--config.epochs=1")
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    summary = json.loads((tmp_path / "summary.json").read_text())
    run = train(tmp_path, "--config.epochs=1", "--mode=evaluate")
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["test_accuracy"] == summary["test_accuracy"]
    assert "confusion matrix" in out
