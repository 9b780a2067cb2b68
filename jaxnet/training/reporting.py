"""What the user sees and keeps: a progress bar per epoch, a table row per epoch, JSON lines, TensorBoard, plots."""

from __future__ import annotations

import json
import math
import os
import sys
import time

COLUMNS = (
    ("epoch", "{:>5}"),
    ("train risk", "{:>10.4f}"),
    ("val loss", "{:>9.4f}"),
    ("val error", "{:>9.2%}"),
    ("lr", "{:>9.3g}"),
    ("momentum", "{:>8.3g}"),
    ("seconds", "{:>7.1f}"),
)


class Report:
    def __init__(self, workdir: str, progress: bool = True, log=print, write_files: bool = True):
        self.workdir, self.log, self.write_files = workdir, log, write_files
        self.progress = progress and sys.stderr.isatty()
        self.compile_seconds = None
        self._bar = None
        self._header_done = False
        self._metrics = self._tb = None
        if not write_files:  # another host of a multi-host job writes them
            return
        self._metrics = open(os.path.join(workdir, "metrics.jsonl"), "a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:  # TensorBoard logs are optional
            self._tb = None

    def start_epoch(self, epoch: int, epochs: int, examples: int) -> None:
        if not self._header_done:
            self.log("  ".join(name.rjust(len(fmt.format(0.0))) for name, fmt in COLUMNS))
            self._header_done = True
        self._seen, self._tic = 0, time.perf_counter()
        if self.progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=examples,
                desc=f"epoch {epoch}/{epochs}",
                unit="ex",
                leave=False,
                dynamic_ncols=True,
            )

    def advance(self, examples: int, running_risk: float) -> None:
        self._seen += examples
        if self._bar is not None:
            self._bar.update(examples)
            self._bar.set_postfix(risk=f"{running_risk:.4f}")

    def end_epoch(self, row: dict) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        values = (
            row["epoch"],
            row["train_risk"],
            row["val_loss"],
            row["val_error"],
            row["learning_rate"],
            row["momentum"],
            row["seconds"],
        )
        line = "  ".join(
            fmt.format(v)
            if not (isinstance(v, float) and math.isnan(v))
            else "n/a".rjust(len(name))
            for (name, fmt), v in zip(COLUMNS, values)
        )
        if row["epoch"] == 1 and self.compile_seconds is not None:
            line += f"   (first chunk incl. compilation: {self.compile_seconds:.1f} s)"
        self.log(line)
        if self._metrics is not None:
            self._metrics.write(json.dumps(row) + "\n")
            self._metrics.flush()
        if self._tb is not None:
            for key in ("train_risk", "val_loss", "val_error", "learning_rate", "momentum"):
                self._tb.add_scalar(key, row[key], row["step"])
            self._tb.flush()

    def finish(self, summary: dict, history: list) -> None:
        if not self.write_files:
            self.close()
            return
        with open(os.path.join(self.workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        plot_learning_curves(history, os.path.join(self.workdir, "learning_curves.png"))
        self.log(
            f"test accuracy {100 * summary['test_accuracy']:.2f}% (best epoch {summary['best_epoch']}, {summary['stopped']}); "
            f"results in {os.path.abspath(self.workdir)}: summary.json, metrics.jsonl, learning_curves.png, tensorboard/, checkpoints/"
        )
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._metrics is not None:
            self._metrics.close()
        if self._tb is not None:
            self._tb.close()


def plot_learning_curves(history: list, path: str) -> None:
    """Training risk and validation zero-one error against epoch, the best epoch marked."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_risk, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    ax_risk.plot(epochs, [r["train_risk"] for r in history], marker="o", label="training risk")
    ax_risk.plot(epochs, [r["val_loss"] for r in history], marker="o", label="validation loss")
    ax_risk.set_xlabel("epoch")
    ax_risk.set_ylabel("loss")
    ax_risk.legend()
    errors = [100 * r["val_error"] for r in history]
    ax_err.plot(epochs, errors, marker="o", color="tab:red", label="validation zero-one error")
    best = min(range(len(errors)), key=lambda i: errors[i])
    ax_err.axvline(epochs[best], color="gray", linestyle="--", label=f"best: epoch {epochs[best]}")
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("error (%)")
    ax_err.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
