"""Experiment 7, the slides' MNIST MLP (003).

784-30-10 and 784-100-10 sigmoid networks, mini-batch 10, eta = 0.5, 30 epochs, the cross-entropy
against the quadratic cost, trained by `train.py`'s trainer with configs/nielsen.py.

The slides report 95.49% / 96.82% (cross-entropy) and 95.42% / 96.59% (quadratic) on MNIST. MNIST
is used when a prepared TFDS copy or IDX files are on the machine; otherwise Fashion-MNIST, a
harder problem with the same shapes, and the table says which. Each run keeps its workdir, so
running the experiment again reuses finished runs instead of retraining them.
"""

from __future__ import annotations

import os
import sys

from experiments import report
from jaxnet.data import DatasetNotFoundError, load_dataset
from jaxnet.training import trainer

sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # configs/ at the repository root

SLIDES = {
    ("binary_cross_entropy", 30): 0.9549,
    ("binary_cross_entropy", 100): 0.9682,
    ("quadratic", 30): 0.9542,
    ("quadratic", 100): 0.9659,
}
COST_NAMES = {"binary_cross_entropy": "cross-entropy", "quadratic": "quadratic"}


def pick_dataset() -> str:
    """mnist if this machine has it (never downloading), else fashion_mnist."""
    try:
        load_dataset("mnist", validation_size=0, log=lambda *a: None)
        return "mnist"
    except DatasetNotFoundError:
        return "fashion_mnist"


def run(out_dir: str, quick: bool = False, seed: int = 0) -> dict:
    from configs import nielsen

    dataset_name = "digits" if quick else pick_dataset()
    rows, histories = [], {}
    for (loss, width), slides in SLIDES.items():
        config = nielsen.get_config()
        config.dataset.name = dataset_name
        config.loss, config.model.hidden, config.seed = loss, (width,), seed
        if quick:  # scikit-learn's 8x8 digits, a few epochs: every code path in seconds
            config.dataset.validation_size, config.epochs = 300, 3
        name = f"{COST_NAMES[loss]} {64 if quick else 784}-{width}-10"
        workdir = os.path.join(
            out_dir,
            "runs",
            "nielsen_mlp",
            f"{dataset_name}-{loss}-{width}-seed{seed}-{config.epochs}ep",
        )
        summary = trainer.train_and_evaluate(
            config, workdir, log=lambda *a, **k: None, progress=False
        )
        rows.append(
            {
                "network and cost": name,
                "dataset": dataset_name,
                "test accuracy": summary["test_accuracy"],
                "slides (MNIST)": slides,
                "epochs": summary["epochs_run"],
                "train seconds": summary["train_seconds"],
            }
        )
        histories[name] = report.read_history(workdir)
    fig, axes = report.figure()
    for name, history in histories.items():
        axes[0, 0].plot(
            [h["epoch"] for h in history], [100 * (1 - h["val_error"]) for h in history], label=name
        )
    axes[0, 0].set(
        xlabel="epoch",
        ylabel="validation accuracy (%)",
        title=f"Nielsen's MLP on {dataset_name}, batch 10, eta 0.5",
    )
    axes[0, 0].legend(fontsize=8)
    figure = report.save_figure(fig, out_dir, "nielsen_mlp")
    return report.write_results(
        out_dir,
        "nielsen_mlp",
        f"The slides' MLP on {dataset_name} beside their MNIST accuracies",
        rows,
        [figure],
        {"seed": seed},
    )
