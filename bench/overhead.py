"""The trainer's overhead: train.py's whole run against the same steps with nothing else.

    python bench/overhead.py                 # both rows
    python bench/overhead.py --rows digits   # the small-data row only (about half a minute)
    python bench/overhead.py --rows default --repeats 1   # about 17 minutes

For each row, `trainer.train_and_evaluate` runs in a fresh workdir (validation every epoch,
checkpoints, progress lines, metrics.jsonl, TensorBoard, the test split, the plot). Then the
same config's steps run alone: the same initial state, placement and `steps.run_epoch` chunks
for as many epochs as the trainer ran, and nothing else. Every run compiles from scratch (JAX's
caches cleared, the persistent compilation cache off), with the dataset already in memory and
the libraries imported (one unmeasured run of each comes first). The two alternate `--repeats`
times and the medians are compared: wall / pure is the trainer's overhead; the target is at
most 1.15.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from jaxnet.training import xla_cpu  # noqa: E402

xla_cpu.prefer_xla_convolutions()

import jax  # noqa: E402

from configs import default  # noqa: E402
from jaxnet.data import load_dataset  # noqa: E402
from jaxnet.training import build, trainer  # noqa: E402
from jaxnet.training.config import base_config  # noqa: E402
from jaxnet.training.placement import STRATEGIES  # noqa: E402
from jaxnet.training.steps import epoch_plan, run_epoch  # noqa: E402


def digits_config():
    """An MLP on scikit-learn's 8x8 digits for 100 epochs: many short epochs."""
    c = base_config()
    c.dataset.name, c.dataset.validation_size = "digits", 0.1
    c.model.kind, c.model.hidden = "mlp", (64,)
    c.batch_size, c.epochs, c.steps_per_chunk = 32, 100, 10
    c.devices.strategy = "single"
    return c


ROWS = {"digits": digits_config, "default": default.get_config}


def _load(config):
    d = config.dataset
    size = int(d.validation_size) if d.validation_size >= 1 else d.validation_size
    return load_dataset(d.name, validation_size=size, seed=config.seed, log=None)


def pure_training(config, dataset, epochs: int) -> float:
    """Seconds for the trainer's steps alone: build, place, compile and run every chunk."""
    tic = time.perf_counter()
    built = build.Built(config, dataset)
    placement = STRATEGIES[config.devices.strategy](built.model, built.loss_fn, built.optimizer)
    data = placement.put_data(dataset.train.images, dataset.train.labels)
    state = placement.put_state(built.initial_state())
    n = len(dataset.train.labels)
    for epoch in range(epochs):
        plan = epoch_plan(n, config.batch_size, config.steps_per_chunk, config.seed, epoch)
        *_, (state, _) = run_epoch(placement, state, data, plan)
    jax.block_until_ready(state)
    return time.perf_counter() - tic


def whole_run(config, dataset) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as workdir:
        tic = time.perf_counter()
        summary = trainer.train_and_evaluate(
            config, workdir, dataset=dataset, log=lambda *a: None, progress=True
        )
        return time.perf_counter() - tic, summary


def measure(name: str, repeats: int) -> dict:
    config = ROWS[name]()
    config.compilation_cache_dir = ""  # both cold: compilation counts in both
    dataset = _load(config)
    walls, pures = [], []
    for i in range(repeats + 1):  # the first of each only imports what it needs
        jax.clear_caches()
        wall, summary = whole_run(config, dataset)
        jax.clear_caches()
        pure = pure_training(config, dataset, summary["epochs_run"])
        if i:
            walls.append(wall)
            pures.append(pure)
    wall, pure = statistics.median(walls), statistics.median(pures)
    return {
        "row": name,
        "epochs": summary["epochs_run"],
        "wall_s": wall,
        "pure_s": pure,
        "ratio": wall / pure,
        "walls_s": walls,
        "pures_s": pures,
        "test_accuracy": summary["test_accuracy"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated: {list(ROWS)}")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs of each")
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args(argv)
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {unknown}; choose from {list(ROWS)}")
    results = []
    print("row        epochs   whole run   steps alone   ratio   test accuracy")
    for name in names:
        r = measure(name, args.repeats)
        results.append(r)
        print(
            f"{name:<10} {r['epochs']:>6} {r['wall_s']:>10.1f} s {r['pure_s']:>11.1f} s"
            f" {r['ratio']:>7.3f}   {100 * r['test_accuracy']:.2f}%",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
