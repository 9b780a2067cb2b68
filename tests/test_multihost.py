"""Two local processes joined by jax.distributed on CPU train exactly as one device does.

Also: train.py runs multi-host.
"""

import json
import os
import socket
import subprocess
import sys

import multihost_worker
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_two(commands, env_extra=(), timeout=240):
    """Start both processes, wait for both.

    A failure in one kills the other, so nothing waits on a dead peer.
    """
    procs = []
    for i, cmd in enumerate(commands):
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
        env.update(dict(env_extra[i]) if env_extra else {})
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


@pytest.mark.parametrize("strategy", ["sharding", "pmap"])
def test_two_processes_equal_one_device_after_50_steps(strategy, tmp_path):
    seed = int(np.random.default_rng().integers(1 << 30))
    out, port = tmp_path / "params.npz", _free_port()
    worker = os.path.join(ROOT, "tests", "multihost_worker.py")
    _run_two(
        [
            [sys.executable, worker, str(port), str(i), strategy, str(seed), str(out)]
            for i in range(2)
        ]
    )
    config, dataset = multihost_worker.make_case(seed)
    single = multihost_worker.params_after_steps("single", config, dataset)
    initial = multihost_worker.params_after_steps("single", config, dataset, steps=0)
    with np.load(out) as saved:
        both = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    assert len(both) == len(single) == 4
    for a, b in zip(both, single):
        assert a.shape == b.shape
        assert np.max(np.abs(a - b)) < 1e-10  # float64: only the order of the gradient sum differs
    assert (
        max(np.max(np.abs(b - i)) for b, i in zip(single, initial)) > 1e-3
    )  # 50 steps of training moved them


def test_train_py_on_two_hosts_shares_one_workdir_and_matches_one_process(tmp_path):
    port = _free_port()
    args = [
        "--config.dataset.name=digits",
        "--config.dataset.validation_size=0.1",
        "--config.model.kind=mlp",
        "--config.model.hidden=(32,)",
        "--config.model.dropout=0.25",
        "--config.batch_size=32",
        "--config.epochs=2",
    ]
    train = [sys.executable, os.path.join(ROOT, "train.py"), *args]
    env = [
        {
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(i),
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "JAX_PLATFORMS": "cpu",
        }
        for i in range(2)
    ]
    logs = _run_two([train + [f"--workdir={tmp_path / 'two'}"]] * 2, env)
    assert "sharding over 4 cpu device(s)" in logs[0] and "test accuracy" in logs[0]
    assert "epoch" not in logs[1]  # only process 0 prints the table and writes the reports
    one = subprocess.run(
        train + [f"--workdir={tmp_path / 'one'}", "--config.devices.strategy=single"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"},
        timeout=240,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two_rows, one_rows = (_epoch_rows(tmp_path / name) for name in ("two", "one"))
    assert len(two_rows) == len(one_rows) == 2
    for a, b in zip(
        two_rows, one_rows
    ):  # float32 runs: the same dropout masks, sums in another order
        assert a["train_risk"] == pytest.approx(b["train_risk"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["devices"] == "sharding x4"
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == sorted(
        os.listdir(tmp_path / "one" / "checkpoints")
    )


def _epoch_rows(workdir):
    rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "epoch"]


def test_initialize_is_a_no_op_alone_and_names_missing_variables(monkeypatch):
    from jaxnet.training import multihost

    for name in (
        "JAX_COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID",
        "TPU_WORKER_HOSTNAMES",
    ):
        monkeypatch.delenv(name, raising=False)
    assert multihost.initialize() is False
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES=None"):
        multihost.initialize()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' must be an integer"):
        multihost.initialize()


def test_single_strategy_is_refused_in_a_multi_process_job(monkeypatch):
    import jax

    from jaxnet.training.placement import Single

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="strategy='single'.*2 processes"):
        Single(None, None, None)
