"""train.py as users run it: killed with SIGKILL and resumed, signalled at any moment, evaluated."""

import json
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "--config.dataset.name=synthetic",
    "--config.dataset.validation_size=256",
    "--config.model.channels=(4,)",
    "--config.model.hidden=(16,)",
    "--config.epochs=3",
    "--config.batch_size=32",
    "--config.steps_per_chunk=4",
    "--config.checkpoint.every_steps=4",
    "--config.checkpoint.keep=2",
    "--config.devices.strategy=single",
    "--config.model.dropout=0.3",
    "--config.optimizer.learning_rate=0.01",
    "--config.compilation_cache_dir=",
]


def train(workdir, *extra, **kwargs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    argv = [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}", *SMALL, *extra]
    kwargs.setdefault("stderr", subprocess.STDOUT)
    return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True, **kwargs)


def wait_for_signal_handlers(run, timeout=60.0):
    """Until train.py catches SIGTERM (Linux: SigCgt in /proc): a signal before the interpreter
    runs train.py kills it as any process, which is no moment of train.py's to test."""
    deadline = time.time() + timeout
    while time.time() < deadline and run.poll() is None:
        with open(f"/proc/{run.pid}/status") as status:
            caught = next(line for line in status if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.005)


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
    assert b["test_loss"] == a["test_loss"] and b["best_val_error"] == a["best_val_error"]
    # the whole history too: no row lost or repeated, every epoch's risk over all its steps
    assert metrics(killed_dir) == metrics(tmp_path / "straight")


def metrics(workdir):
    """metrics.jsonl without the wall-clock seconds, which no two runs share."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


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


def test_a_signal_at_any_moment_gives_one_line_and_loses_nothing(tmp_path):
    reference = train(tmp_path / "reference")
    reference.communicate(timeout=300)
    rng = random.Random()
    runs = []
    for i in range(3):  # three random moments: start-up, training or the final evaluation
        run = train(tmp_path / f"run{i}", stderr=subprocess.PIPE)
        wait_for_signal_handlers(run)
        runs.append((run, rng.uniform(0.0, 8.0), rng.choice([signal.SIGINT, signal.SIGTERM])))
    started = time.time()
    for run, delay, sig in sorted(runs, key=lambda r: r[1]):
        time.sleep(max(0.0, started + delay - time.time()))
        run.send_signal(sig)
    for i, (run, delay, _) in enumerate(runs):
        out, err = run.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert "Traceback" not in out + err, err
        assert run.returncode in (0, 130), (delay, err)
        if run.returncode == 130:
            assert len(lines) == 1 and lines[0].startswith("stopped: "), (delay, err)
            resumed = train(tmp_path / f"run{i}")
            out, _ = resumed.communicate(timeout=300)
            assert resumed.returncode == 0, out
        assert metrics(tmp_path / f"run{i}") == metrics(tmp_path / "reference"), delay


def test_evaluate_mode_reports_the_best_checkpoint(tmp_path):
    run = train(tmp_path, "--config.epochs=1")
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    summary = json.loads((tmp_path / "summary.json").read_text())
    run = subprocess.run(  # the workdir alone: its saved config rebuilds the run
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            f"--workdir={tmp_path}",
            "--mode=evaluate",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["test_accuracy"] == summary["test_accuracy"]
    assert "confusion matrix" in out


def test_a_second_run_of_a_config_compiles_nothing_it_cached(tmp_path):
    cache = tmp_path / "xla-cache"
    flags = ("--config.epochs=1", f"--config.compilation_cache_dir={cache}")
    first = train(tmp_path / "first", *flags)
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    cached = sorted(os.listdir(cache))
    assert cached, "the first run cached no program"
    second = train(tmp_path / "second", *flags)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    assert sorted(os.listdir(cache)) == cached  # every program it needed was found there
