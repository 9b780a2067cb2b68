"""Experiment 8, overfitting and its cures.

Notes 000/001: dropout, weight decay, early termination.

A 784-512-512-10 ReLU network (669,706 parameters) is trained on 1,000 Fashion-MNIST images for
60 epochs by SGD with momentum (alpha = 0.05, mu = 0.9, batch 100): enough capacity to memorise
them. Four runs from the same initial weights and batches: plain, dropout (p = 0.5 before the
output layer), weight decay (the notes' (lambda/2) sum w^2 added to the risk, lambda = 0.01, on the
weights), and both. Memorising shows in the validation loss, which climbs once the training risk
nears 0; the regularisers hold it down. Each curve of validation zero-one error (5,000 held-out
images) is marked where it bottoms out: the epoch early termination returns to, whose parameters
give the test accuracy.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from experiments import report
from jaxnet.data import Split, load_dataset
from jaxnet.training import trainer
from jaxnet.training.config import base_config

LAMBDA, DROPOUT = 1e-2, 0.5
VARIANTS = {
    "plain": (0.0, 0.0),
    "dropout": (DROPOUT, 0.0),
    "weight decay": (0.0, LAMBDA),
    "dropout + weight decay": (DROPOUT, LAMBDA),
}


def config_for(dropout: float, lam: float, epochs: int, seed: int):
    c = base_config()
    c.model.kind, c.model.hidden, c.model.activation, c.model.dropout = (
        "mlp",
        (512, 512),
        "relu",
        dropout,
    )
    c.weight_decay.lam = lam
    c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = "momentum", 0.05, 0.9
    c.batch_size, c.epochs, c.seed, c.steps_per_chunk = 100, epochs, seed, 10
    c.devices.strategy = "single"
    return c


def run(out_dir: str, quick: bool = False, seed: int = 0) -> dict:
    n_train, epochs = (500, 8) if quick else (1000, 60)
    full = load_dataset("fashion_mnist", validation_size=5000, seed=seed, log=lambda *a: None)
    data = dataclasses.replace(
        full, train=Split(full.train.images[:n_train], full.train.labels[:n_train])
    )
    rows, histories = [], {}
    for name, (dropout, lam) in VARIANTS.items():
        workdir = os.path.join(
            out_dir,
            "runs",
            "overfitting",
            f"{name.replace(' ', '_').replace('+', 'and')}-n{n_train}-seed{seed}-{epochs}ep",
        )
        summary = trainer.train_and_evaluate(
            config_for(dropout, lam, epochs, seed),
            workdir,
            dataset=data,
            log=lambda *a, **k: None,
            progress=False,
        )
        history = report.read_history(workdir)
        histories[name] = history
        rows.append(
            {
                "regulariser": name,
                "final train risk": history[-1]["train_risk"],
                "lowest validation loss": min(h["val_loss"] for h in history),
                "final validation loss": history[-1]["val_loss"],
                "final validation error": history[-1]["val_error"],
                "best validation error": summary["best_val_error"],
                "at epoch": summary["best_epoch"],
                "test accuracy at that epoch": summary["test_accuracy"],
            }
        )
    fig, axes = report.figure(ncols=3, width=4.4)
    for name, history in histories.items():
        epoch = np.array([h["epoch"] for h in history])
        (line,) = axes[0, 0].plot(epoch, [h["train_risk"] for h in history], label=name)
        axes[0, 1].plot(epoch, [h["val_loss"] for h in history], color=line.get_color(), label=name)
        err = np.array([h["val_error"] for h in history])
        axes[0, 2].plot(epoch, 100 * err, color=line.get_color(), label=name)
        best = int(np.argmin(err))
        axes[0, 2].plot(epoch[best], 100 * err[best], "v", color=line.get_color(), ms=9)
    axes[0, 0].set(
        xlabel="epoch",
        ylabel="training risk",
        yscale="log",
        title=f"{n_train} training images, 784-512-512-10",
    )
    axes[0, 1].set(xlabel="epoch", ylabel="validation cross-entropy", title="Validation loss")
    axes[0, 2].set(
        xlabel="epoch",
        ylabel="validation zero-one error (%)",
        title="Validation error; v = early termination's epoch",
    )
    axes[0, 0].legend(fontsize=8)
    figure = report.save_figure(fig, out_dir, "overfitting")
    return report.write_results(
        out_dir,
        "overfitting",
        "Overfitting: dropout, weight decay and early termination",
        rows,
        [figure],
        {
            "train_examples": n_train,
            "epochs": epochs,
            "lambda": LAMBDA,
            "dropout": DROPOUT,
            "seed": seed,
        },
    )
