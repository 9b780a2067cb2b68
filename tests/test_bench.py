"""bench/compare.py in its --quick form: all rows run.

The implementations build the same network and all learn.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from jaxnet.data import DatasetNotFoundError, load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_benchmark_compares_the_same_network_across_implementations(tmp_path):
    try:
        load_dataset("fashion_mnist", validation_size=0, log=lambda *a: None)
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST is not on this machine (apt-get install dataset-fashion-mnist)")
    impls = ["jaxnet", "flax"] + (["torch"] if importlib.util.find_spec("torch") else [])
    out = tmp_path / "bench.json"
    env = {
        k: v for k, v in os.environ.items() if k != "XLA_FLAGS"
    }  # one device, float32: as a user runs it
    result = subprocess.run(
        [
            sys.executable,
            "bench/compare.py",
            "--quick",
            "--impls",
            ",".join(impls),
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert sorted(rows) == ["cnn", "nielsen", "wide_mlp"]
    for name, row in rows.items():
        runs = row["implementations"]
        assert sorted(runs) == sorted(impls)
        counts = {impl: r["parameters"] for impl, r in runs.items()}
        assert len(set(counts.values())) == 1, (
            name,
            counts,
        )  # the same network, whichever framework built it
        for impl, r in runs.items():
            assert r["examples_per_s_median"] > 0
            assert r["tta"][0]["final_accuracy"] > 0.15, (
                name,
                impl,
            )  # 4 steps: above the 10% of chance (1,000 test images)
        for pair, ratio in row["speedups"].items():
            peer = pair.split("/")[1]
            assert ratio["throughput"] == pytest.approx(
                runs["jaxnet"]["examples_per_s_median"] / runs[peer]["examples_per_s_median"]
            )
        assert name in result.stdout
    assert (
        rows["nielsen"]["implementations"]["jaxnet"]["parameters"] == 784 * 30 + 30 + 30 * 10 + 10
    )
    # training arithmetic per example: 3x the forward multiply-adds, less the first layer's
    # unneeded input gradient, x 2
    nielsen = [784 * 30, 30 * 10]
    cnn = [
        28 * 28 * 9 * 1 * 32,
        14 * 14 * 9 * 32 * 64,
        7 * 7 * 64 * 128,
        128 * 10,
    ]  # 3x3 'same' convs, 2x2 pools
    for name, macs in (("nielsen", nielsen), ("cnn", cnn)):
        assert rows[name]["training_flops_per_example"] == 2 * (3 * sum(macs) - macs[0])
    for row in rows.values():
        for r in row["implementations"].values():
            assert r["gflops"] == pytest.approx(
                r["examples_per_s_median"] * row["training_flops_per_example"] / 1e9
            )
    assert "GFLOP/s" in result.stdout


def test_missing_torch_is_named_with_the_command_that_installs_it():
    if importlib.util.find_spec("torch"):
        pytest.skip("torch is installed")
    result = subprocess.run(
        [sys.executable, "bench/compare.py", "--quick", "--impls", "torch"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "pip install torch==2.13.0" in result.stdout + result.stderr
