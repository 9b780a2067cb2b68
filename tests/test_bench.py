"""bench/compare.py and bench/accelerator.py in their --quick forms: all rows run.

The implementations build the same network and all learn; the accelerator bench reports every
figure, its arithmetic agreeing with XLA's count.
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
            "--rows",
            "nielsen,cnn",  # wide_mlp is nielsen's code path with other sizes
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
    assert sorted(rows) == ["cnn", "nielsen"]
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


def test_accelerator_bench_quick_mode_reports_every_figure(tmp_path):
    try:
        load_dataset("fashion_mnist", validation_size=0, log=lambda *a: None)
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST is not on this machine (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "accelerator.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as users run it
    result = subprocess.run(
        [sys.executable, "bench/accelerator.py", "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    machine = results["machine"]
    assert machine["backend"] == "cpu" and machine["matmul_float32_flops"] > 0
    assert sorted(results["rows"]) == ["default", "large_cnn"]
    for name, r in results["rows"].items():
        assert r["compile_s"] > 0 and r["examples_per_s"] > 0, name
        assert r["final_accuracy"] > 0.15, name  # a few steps: above the 10% of chance
        assert r["peak_flops_per_s"] == machine["matmul_float32_flops"]  # CPU: the measured rate
        assert r["model_flops_per_s"] == pytest.approx(
            r["examples_per_s"] * r["model_flops_per_example"]
        )
        assert r["fraction_of_peak"] == pytest.approx(
            r["model_flops_per_s"] / r["peak_flops_per_s"]
        )
        # XLA's count of one step agrees with the model's arithmetic to within the elementwise work
        per_example = r["xla_flops_per_step"] / r["batch"]
        assert 0.8 < per_example / r["model_flops_per_example"] < 1.2, (name, per_example)
    assert results["rows"]["large_cnn"]["dtype"] == "bfloat16"
    assert "examples/s" in result.stdout and "of peak" in result.stdout


def test_the_accelerator_bench_matches_device_kinds_to_their_own_peaks():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import accelerator

    class Device:
        platform = "gpu"

        def __init__(self, kind):
            self.device_kind = kind

    peak = lambda kind, dtype="bfloat16": accelerator.device_peak(Device(kind), dtype, 1.0)[0]  # noqa: E731
    assert peak("NVIDIA H100 80GB HBM3") == 989e12 and peak("NVIDIA H100 PCIe") == 756e12
    assert peak("NVIDIA H100 80GB HBM3", "float32") == 494e12  # TF32, JAX's default on GPUs
    assert peak("NVIDIA H200") == 989e12 and peak("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak("TPU v5 lite") == 197e12 and peak("TPU v5") == 459e12  # v5e, v5p
    assert peak("NVIDIA L4") == 121e12 and peak("NVIDIA L40S") is None  # whole words only
    assert peak("Tesla V100-SXM2-16GB") is None  # no bfloat16 units
    assert accelerator.accelerator_chunk(430) == 86  # 5 chunks, no weight-0 step
