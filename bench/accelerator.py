"""Training speed on whatever backend JAX finds: examples/s, compile, time to 92%, share of peak.

    python bench/accelerator.py                 # both rows, full size
    python bench/accelerator.py --quick         # a smoke run on a subset: the figures mean nothing
    python bench/accelerator.py --rows large_cnn --dtype float32 --json out.json

Rows: `default` is configs/default.py as it is (float32 unless --dtype); `large_cnn` is two
conv-conv-pool blocks of 128 and 256 maps, dense 512, batch 1024, in bfloat16: wide enough that
a GPU's time goes to arithmetic rather than to launching kernels. Each row runs the trainer's
own building blocks: `build.Built`, a `placement.Single` on the first device with its chunk
compiled ahead (the compile time), `steps.run_epoch` over the device-resident training set, and
`steps.make_evaluate` on the test split after every epoch. On CPU a chunk is the config's
steps_per_chunk unrolled; elsewhere a `lax.scan` of about 100 steps that divides the epoch
evenly, so that the last chunk pads few weight-0 steps.

- time to target: from the dataset in host memory and the backend started (JAX's caches
  cleared) through building, compiling, training and evaluating, to the first evaluation at
  or above --target (92%) test accuracy. Evaluations are on the clock.
- examples/s: the chunks after each run's first, evaluations excluded.
- FLOP/s: the model's training arithmetic, 2 x (3 x the forward multiply-adds less the first
  layer's input gradient) per example (`shapes.multiply_adds`), times examples/s; as a share of
  the device's dense peak for the compute dtype (PEAKS, matched by device_kind). XLA's own count
  for one step (cost analysis of the lowered step) is reported beside it. On CPU the peak is the
  float32 rate of a 2048 x 2048 matmul measured in the same run.

GPU memory: JAX preallocates 75% of a GPU's memory when it starts; XLA_PYTHON_CLIENT_MEM_FRACTION
sets another share and XLA_PYTHON_CLIENT_PREALLOCATE=false turns it off on a shared GPU. Both
rows need under 2 GB.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import re
import sys
import time
from typing import NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from jaxnet.training import xla_cpu  # noqa: E402

xla_cpu.prefer_xla_convolutions()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ceiling import matmul_flops  # noqa: E402

from configs import default  # noqa: E402
from jaxnet import shapes  # noqa: E402
from jaxnet.data import Split, load_dataset  # noqa: E402
from jaxnet.models import build_model  # noqa: E402
from jaxnet.training import build  # noqa: E402
from jaxnet.training import config as config_lib  # noqa: E402
from jaxnet.training.placement import Single  # noqa: E402
from jaxnet.training.steps import (  # noqa: E402
    Variables,
    abstract_split,
    chunk_mode,
    chunk_shape,
    epoch_plan,
    make_evaluate,
    make_step,
    run_epoch,
)

# Dense peak FLOP/s per chip: (bfloat16, float32 as JAX computes it by default). JAX's default
# matmul precision runs float32 products as TF32 on NVIDIA Ampere and later and as one bfloat16
# pass on TPU, so the float32 column is the TF32 (or bf16) figure there; V100 has neither TF32
# nor bfloat16 units. NVIDIA quotes tensor-core figures "with sparsity": the dense ones, halved,
# are below. Sources: NVIDIA H100 and H200 datasheets (SXM / PCIe / NVL), A100 datasheet
# (SXM4 and PCIe alike), L4 datasheet, V100 datasheet (SXM2; PCIe is 14 TFLOP/s); Google Cloud
# TPU docs, cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} (peak compute per chip, bf16). First
# match of a whole word wins: the more specific names come first. device_kind strings as JAX
# reports them, lower-cased ("nvidia h100 80gb hbm3", "tesla v100-sxm2-16gb", "tpu v5 lite").
PEAKS = (
    ("h100 pcie", 756e12, 378e12),
    ("h100 nvl", 835e12, 417e12),
    ("h100", 989e12, 494e12),  # SXM5: "NVIDIA H100 80GB HBM3"
    ("h200 nvl", 835e12, 417e12),
    ("h200", 989e12, 494e12),  # SXM
    ("gh200", 989e12, 494e12),
    ("a100", 312e12, 156e12),
    ("l4", 121e12, 60e12),
    ("v100-pcie", None, 14e12),
    ("v100", None, 15.7e12),
    ("tpu v4", 275e12, 275e12),
    ("tpu v5 lite", 197e12, 197e12),  # v5e
    ("tpu v5e", 197e12, 197e12),
    ("tpu v5", 459e12, 459e12),  # v5p reports "TPU v5"
    ("tpu v6 lite", 918e12, 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12, 918e12),
)

MATMUL_N = 2048
QUICK = {"train": 512, "test": 500, "epochs": 1}  # 4 steps of each row: 2 chunks
ACCELERATOR_CHUNK = 100  # steps per lax.scan chunk off CPU: its length costs no compile time


def large_cnn_config():
    """The default config's training with a network wide enough to keep a GPU busy."""
    c = default.get_config()
    c.model.kind, c.model.channels, c.model.hidden = "cifar_cnn", (128, 256), (512,)
    c.batch_size, c.epochs, c.dtype = 1024, 10, "bfloat16"
    c.optimizer.learning_rate = 2e-3  # raised with the 8x larger batch; not tuned on a GPU yet
    c.schedule.warmup_epochs = 1
    return c


def quick_large_cnn_config():
    c = large_cnn_config()
    c.model.channels, c.model.hidden, c.batch_size = (8, 16), (32,), 128
    return c


ROWS = {"default": default.get_config, "large_cnn": large_cnn_config}
QUICK_ROWS = {"default": default.get_config, "large_cnn": quick_large_cnn_config}


def device_peak(device, dtype: str, measured_cpu: float) -> tuple[float | None, str]:
    """(peak FLOP/s for `dtype` on `device`, where the figure comes from); None if unknown."""
    if device.platform == "cpu":
        return measured_cpu, f"measured {MATMUL_N}x{MATMUL_N} float32 matmul"
    kind = device.device_kind.lower()
    for name, bf16, fp32 in PEAKS:
        if re.search(rf"\b{re.escape(name)}\b", kind):  # "l4" is not "l40s"
            peak = bf16 if dtype == "bfloat16" else fp32
            return peak, f"datasheet ({name}, {dtype})" if peak else f"{name}: no {dtype} units"
    return None, f"no peak known for {device.device_kind!r}"


def accelerator_chunk(steps_per_epoch: int) -> int:
    """About ACCELERATOR_CHUNK steps, the epoch split into chunks of equal length (+- 1 step)."""
    chunks = math.ceil(steps_per_epoch / ACCELERATOR_CHUNK)
    return math.ceil(steps_per_epoch / chunks)


def model_flops_per_example(config, dataset) -> int:
    """Training multiply-adds x 2 of one example: forward, weight and input gradients (not the
    first layer's input gradient, which nothing needs)."""
    macs = shapes.multiply_adds(build_model(config.model, dataset.num_classes), dataset.input_shape)
    return 2 * (3 * sum(macs) - next(m for m in macs if m))


def xla_flops_per_step(built, batch: int) -> float | None:
    """XLA's cost-analysis count of one training step on a full batch, or None if not given."""
    x = jax.ShapeDtypeStruct((batch, *built.dataset.input_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    w = jax.ShapeDtypeStruct((batch,), jnp.float32)
    step = jax.jit(make_step(built.model, built.loss_fn, built.optimizer))
    try:
        cost = step.lower(built.abstract_state(), (x, y, w)).cost_analysis()
    except Exception:  # noqa: BLE001  (a backend without cost analysis leaves the column empty)
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def row_config(make, args, num_train: int):
    """A row's config with the command line's overrides, on one device, chunked for the backend."""
    c = make()
    c.devices.strategy, c.compilation_cache_dir = "single", ""
    if args.dtype:
        c.dtype = args.dtype
    if args.epochs:
        c.epochs = args.epochs
    c.schedule.warmup_epochs = min(c.schedule.warmup_epochs, c.epochs - 1)
    if args.steps_per_chunk:
        c.steps_per_chunk = args.steps_per_chunk
    elif jax.default_backend() != "cpu":
        c.steps_per_chunk = accelerator_chunk(build.steps_per_epoch(c, num_train))
    config_lib.validate(c)
    return c


class Setup(NamedTuple):
    built: build.Built
    placement: Single
    data: tuple
    state: object
    evaluate: object
    compile_s: float


def set_up(config, dataset) -> Setup:
    """What the trainer builds before its first step; the chunk's compilation timed alone."""
    built = build.Built(config, dataset)
    placement = Single(built.model, built.loss_fn, built.optimizer)
    train = dataset.train
    data = placement.put_data(train.images, train.labels)
    tic = time.perf_counter()  # trace, lower and compile the chunk
    shape = chunk_shape(len(train), config.batch_size, config.steps_per_chunk)
    data_shapes = abstract_split(*data)
    placement.compile_ahead(built.abstract_state(), data_shapes, shape)
    placement.compiled_chunk()
    compile_s = time.perf_counter() - tic
    evaluate = make_evaluate(built.model, built.loss_fn, dataset.num_classes)
    evaluate.compile_ahead(built.abstract_variables(), dataset.input_shape)
    state = placement.put_state(built.initial_state())
    return Setup(built, placement, data, state, evaluate, compile_s)


def train_row(config, dataset, target: float, log) -> dict:
    """Train from nothing until `target` test accuracy or config.epochs; times and accuracies."""
    jax.clear_caches()  # cold, as a fresh process: nothing compiled by an earlier row
    tic = time.perf_counter()
    s = set_up(config, dataset)
    state, n, test = s.state, len(dataset.train), dataset.test
    history, reached, timed_s, timed_examples, warm = [], None, 0.0, 0, False
    for epoch in range(config.epochs):
        plan = epoch_plan(n, config.batch_size, config.steps_per_chunk, config.seed, epoch)
        last = time.perf_counter()
        for chunk_state, result in run_epoch(s.placement, state, s.data, plan):
            state, now = chunk_state, time.perf_counter()
            if warm:  # the run's first chunk is its warm-up
                timed_s, timed_examples = timed_s + now - last, timed_examples + result.examples
            warm, last = True, now
        accuracy = s.evaluate(Variables.of(state), test.images, test.labels).accuracy
        history.append(
            {"epoch": epoch + 1, "seconds": time.perf_counter() - tic, "accuracy": accuracy}
        )
        log(f"  epoch {epoch + 1}: test accuracy {accuracy:.4f} at {history[-1]['seconds']:.1f} s")
        if accuracy >= target:
            reached = history[-1]
            break
    params = jax.tree_util.tree_leaves(s.built.abstract_params())
    return {
        "compile_s": s.compile_s,
        "examples_per_s": timed_examples / timed_s if timed_s else None,
        "time_to_target_s": reached["seconds"] if reached else None,
        "target_epoch": reached["epoch"] if reached else None,
        "final_accuracy": history[-1]["accuracy"],
        "history": history,
        "xla_flops_per_step": xla_flops_per_step(s.built, config.batch_size),
        "parameters": sum(math.prod(p.shape) for p in params),
    }


def run_row(name: str, config, dataset, target: float, peak_cpu: float, log) -> dict:
    """One row: its training run, its arithmetic, and that arithmetic's share of the peak."""
    log(
        f"{name}: {config.model.kind} {tuple(config.model.channels)}, batch {config.batch_size}, "
        f"{config.dtype}, {config.steps_per_chunk}-step {chunk_mode()} chunks"
    )
    r = train_row(config, dataset, target, log)
    flops = model_flops_per_example(config, dataset)
    peak, peak_source = device_peak(jax.devices()[0], config.dtype, peak_cpu)
    rate = flops * r["examples_per_s"] if r["examples_per_s"] else None
    return {
        "row": name,
        "dtype": config.dtype,
        "batch": config.batch_size,
        "steps_per_chunk": config.steps_per_chunk,
        "chunk_mode": chunk_mode(),
        "epochs_max": config.epochs,
        "target_accuracy": target,
        **r,
        "model_flops_per_example": flops,
        "model_flops_per_s": rate,
        "peak_flops_per_s": peak,
        "peak_source": peak_source,
        "fraction_of_peak": rate / peak if rate and peak else None,
    }


def cpu_model() -> str:
    """The processor's name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor()


def machine_info(peak_cpu: float) -> dict:
    """The backend, the device and the versions the figures depend on."""
    device = jax.devices()[0]
    info = {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", ""),
        "matmul_float32_flops": peak_cpu,
        "matmul_n": MATMUL_N,
    }
    if device.platform != "cpu":  # what the tensor cores / MXUs give, beside the datasheet peak
        info["matmul_bfloat16_flops_8192"] = matmul_flops(8192, jnp.bfloat16)
    return info


def _figure(value, scale=1.0, digits=1, unit="", missing="n/a"):
    return missing if value is None else f"{value / scale:,.{digits}f}{unit}"


def format_table(results: dict) -> str:
    """One line per row: throughput, compile time, time to target, FLOP/s and share of peak."""
    m = results["machine"]
    lines = [
        f"{m['backend']} / {m['cpu_model'] if m['backend'] == 'cpu' else m['device_kind']} "
        f"(jax {m['jax']}, {m['cpus']} cores); "
        f"{m['matmul_n']}^2 float32 matmul: {m['matmul_float32_flops'] / 1e12:.3f} TFLOP/s",
        f"{'row':<10} {'dtype':<9} {'batch':>5} {'examples/s':>11} {'compile':>8} "
        f"{'to target':>10} {'accuracy':>8} {'TFLOP/s':>8} {'of peak':>8}",
    ]
    for r in results["rows"].values():
        lines.append(
            f"{r['row']:<10} {r['dtype']:<9} {r['batch']:>5} "
            f"{_figure(r['examples_per_s'], digits=0):>11} {_figure(r['compile_s'], unit=' s'):>8} "
            f"{_figure(r['time_to_target_s'], unit=' s', missing='not reached'):>10} "
            f"{100 * r['final_accuracy']:>7.2f}% {_figure(r['model_flops_per_s'], 1e12, 3):>8} "
            f"{_figure(r['fraction_of_peak'], 0.01, 1, '%'):>8}"
        )
    target = next(iter(results["rows"].values()))["target_accuracy"] if results["rows"] else 0
    lines.append(
        f"target {target:.0%} test accuracy, compilation and evaluations on the clock; "
        f"peak: {', '.join(sorted({r['peak_source'] for r in results['rows'].values()}))}"
    )
    return "\n".join(lines)


def load_fashion_mnist(quick: bool, train_size: int, data_dir: str | None):
    """Fashion-MNIST with 5,000 training images held out, as configs/default.py holds them."""
    dataset = load_dataset(
        "fashion_mnist", data_dir=data_dir, validation_size=5000, seed=0, log=lambda *a: None
    )
    train = train_size or (QUICK["train"] if quick else 0)
    test = QUICK["test"] if quick else 0
    first = lambda split, k: Split(split.images[:k], split.labels[:k]) if k else split  # noqa: E731
    return dataclasses.replace(
        dataset, train=first(dataset.train, train), test=first(dataset.test, test)
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated of {list(ROWS)}")
    parser.add_argument(
        "--epochs", type=int, default=0, help="at most this many (default: the row's)"
    )
    parser.add_argument(
        "--dtype", choices=tuple(build.COMPUTE_DTYPES), help="compute dtype of every row"
    )
    parser.add_argument("--target", type=float, default=0.92, help="test accuracy to reach")
    parser.add_argument(
        "--train-size", type=int, default=0, help="first N training images; 0 = all"
    )
    parser.add_argument("--steps-per-chunk", type=int, default=0, help="0: the backend's choice")
    parser.add_argument("--data-dir", help="a folder of the Fashion-MNIST IDX files")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one epoch: a smoke run")
    parser.add_argument("--json", metavar="OUT", help="also write every measurement to OUT")
    args = parser.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown or not args.rows:
        parser.error(f"unknown row(s) {unknown or args.rows}; choose from {', '.join(ROWS)}")
    if args.quick and not args.epochs:
        args.epochs = QUICK["epochs"]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    jax.config.update("jax_enable_x64", False)  # float32 parameters, whatever the environment asks
    log = functools.partial(print, file=sys.stderr, flush=True)
    dataset = load_fashion_mnist(args.quick, args.train_size, args.data_dir)
    peak_cpu = matmul_flops(MATMUL_N)  # also starts the backend, charged to no row
    results = {"machine": machine_info(peak_cpu), "quick": args.quick, "rows": {}}
    log(
        f"{results['machine']['backend']}: {results['machine']['device_kind']}; "
        f"{len(dataset.train)} train / {len(dataset.test)} test images"
    )
    makers = QUICK_ROWS if args.quick else ROWS
    for name in args.rows:
        config = row_config(makers[name], args, len(dataset.train))
        results["rows"][name] = run_row(name, config, dataset, args.target, peak_cpu, log)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
