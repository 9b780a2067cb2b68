"""The trainer's stages: data-parallel equivalence, resume, NaN stop, early termination, configs."""

import dataclasses
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from jaxnet import layers as L
from jaxnet.training import build, trainer
from jaxnet.training import config as config_lib
from jaxnet.training.config import ConfigError, base_config
from jaxnet.training.placement import STRATEGIES, Placement
from jaxnet.training.steps import epoch_plan, run_epoch


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class ToyDataset:
    """Class prototypes plus noise: learnable in a few steps."""

    name: str
    source: str
    train: Split
    validation: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self):
        return self.train.images.shape[1:]


def toy_dataset(seed=0, n_train=1024, shape=(8, 8, 1), classes=4, noise=0.5, n_val=256):
    rng = np.random.default_rng(seed)
    protos = rng.uniform(size=(classes,) + shape).astype(np.float32)

    def split(n):
        y = rng.integers(0, classes, n).astype(np.int32)
        return Split((protos[y] + noise * rng.standard_normal((n,) + shape)).astype(np.float32), y)

    return ToyDataset(
        "toy", "generated in the test", split(n_train), split(n_val), split(256), classes
    )


def small_config(**overrides):
    c = base_config()
    c.model.channels = (4,)
    c.model.hidden = (16,)
    c.batch_size = 64
    c.epochs = 2
    c.steps_per_chunk = 4
    c.optimizer.learning_rate = 0.01
    c.compilation_cache_dir = ""
    c.log_every_seconds = 0.0
    for key, value in overrides.items():
        config_lib.set_value(c, key, value)
    return c


def quiet(config, workdir, dataset, **kwargs):
    return trainer.train_and_evaluate(
        config, str(workdir), dataset=dataset, log=lambda *a: None, progress=False, **kwargs
    )


def _epoch_rows(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "epoch"]


def _state_after(strategy, config, dataset, steps):
    built = build.Built(config, dataset)
    placement = STRATEGIES[strategy](built.model, built.loss_fn, built.optimizer)
    data = placement.put_data(dataset.train.images, dataset.train.labels)
    initial = placement.put_state(built.initial_state())
    plan = epoch_plan(len(dataset.train.labels), config.batch_size, config.steps_per_chunk, 0, 0)
    assert plan.steps == steps
    *_, (state, _) = run_epoch(placement, initial, data, plan)
    host = placement.host_state(state)
    assert int(host.step) == steps
    return host


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_both_data_parallel_styles_equal_one_device_after_50_steps(optimizer):
    assert jax.device_count() == 8
    dataset = toy_dataset(n_train=50 * 64)
    config = small_config(**{"optimizer.name": optimizer, "steps_per_chunk": 5, "epochs": 1})
    single = _state_after("single", config, dataset, 50).params
    for strategy in ("pmap", "sharding"):
        parallel = _state_after(strategy, config, dataset, 50).params
        for a, b in zip(jax.tree_util.tree_leaves(parallel), jax.tree_util.tree_leaves(single)):
            assert np.max(np.abs(np.asarray(a) - np.asarray(b))) < 1e-10  # float64


def test_batch_norm_statistics_are_the_global_batch_s_in_both_data_parallel_styles():
    # 7 steps of 64, the last one of 37 real examples: padding must stay out of the statistics
    dataset = toy_dataset(n_train=6 * 64 + 37)
    specs = ("conv2d(4, 3, padding='same')", "batchnorm", "relu", "flatten", "batchnorm")
    # momentum, not Adam: a conv bias before BatchNorm has gradient 0 up to rounding, which Adam
    # would scale up to steps of ~1e-11 that differ with the order of the sums
    options = {"model.kind": "layers", "model.layers": specs, "optimizer.name": "momentum"}
    config = small_config(**options, steps_per_chunk=1, epochs=1)
    single = _state_after("single", config, dataset, 7)
    assert jax.tree_util.tree_leaves(single.model_state)  # there is a state to compare
    for strategy in ("pmap", "sharding"):
        parallel = _state_after(strategy, config, dataset, 7)
        for part in ("params", "model_state"):
            a, b = getattr(parallel, part), getattr(single, part)
            for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
                assert np.max(np.abs(np.asarray(x) - np.asarray(y))) < 1e-10, (strategy, part)


def test_batch_norm_running_averages_in_training_leave_out_the_padding():
    dataset = toy_dataset(n_train=2 * 64 + 37)  # the third batch: 37 examples, 27 padding
    options = {"model.kind": "layers", "model.layers": ("batchnorm", "flatten")}
    config = small_config(**options, steps_per_chunk=1, epochs=1)
    state = _state_after("single", config, dataset, 3)
    plan = epoch_plan(len(dataset.train.labels), 64, 1, config.seed, 0)
    mean, var = np.zeros(1), np.ones(1)
    for indices, weights in zip(plan.indices[:, 0], plan.weights[:, 0]):
        values = dataset.train.images[indices[weights > 0]].reshape(-1, 1)
        mean = 0.9 * mean + 0.1 * values.mean(axis=0)
        var = 0.9 * var + 0.1 * values.var(axis=0, ddof=1)  # unbiased, as PyTorch keeps it
    running = state.model_state[0]  # from float32 images: float32's rounding
    np.testing.assert_allclose(running["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(running["var"], var, rtol=1e-6)


def test_last_partial_batch_counts_every_example_once():
    plan = epoch_plan(1000, 64, 5, seed=3, epoch=2)
    assert plan.steps == 16 and plan.indices.shape == (4, 5, 64)
    real = plan.indices[plan.weights > 0]
    assert sorted(real.tolist()) == list(range(1000))
    assert (plan.weights.sum(axis=2) > 0).sum() == 16  # 16 real steps, 4 that change nothing
    assert [plan.real_steps(c) for c in range(4)] == [5, 5, 5, 1]
    assert not np.array_equal(epoch_plan(1000, 64, 5, 3, 1).indices, plan.indices)
    np.testing.assert_array_equal(epoch_plan(1000, 64, 5, 3, 2).indices, plan.indices)
    full = epoch_plan(1000, -1, 50, 0, 0)
    assert full.steps == 1 and full.indices.shape == (1, 1, 1000)


def test_one_epoch_smoke_run_learns_and_writes_its_results(tmp_path):
    lines = []
    summary = trainer.train_and_evaluate(
        small_config(epochs=3),
        str(tmp_path),
        dataset=toy_dataset(),
        log=lines.append,
        progress=False,
    )
    assert summary["test_accuracy"] > 0.9
    assert summary["epochs_run"] == 3 and summary["stopped"] == "completed all epochs"
    for name in ("summary.json", "metrics.jsonl", "learning_curves.png", "config.json"):
        assert (tmp_path / name).exists(), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    rows = _epoch_rows(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["train_risk"] < rows[0][
        "train_risk"
    ]
    assert all(r["val_accuracy"] == pytest.approx(1 - r["val_error"]) for r in rows)
    assert any("train risk" in line and "val acc" in line for line in lines)  # the table header
    confusion = np.array(summary["confusion_matrix"])
    assert confusion.sum() == 256 and np.isclose(
        np.trace(confusion) / 256, summary["test_accuracy"]
    )
    saved = config_lib.from_json((tmp_path / "config.json").read_text())
    assert config_lib.resume_changes(saved, small_config(epochs=3)) == ([], [])


def test_chunk_rows_cover_every_step_and_average_to_the_epoch_risk(tmp_path):
    quiet(small_config(epochs=2), tmp_path, toy_dataset())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    chunks = [r for r in rows if r["kind"] == "chunk"]
    assert [r["step"] for r in chunks] == list(range(4, 33, 4))  # 16 steps an epoch, chunks of 4
    for epoch_row in _epoch_rows(tmp_path):
        mine = [r["train/loss"] for r in chunks if r["epoch"] == epoch_row["epoch"]]
        assert np.mean(mine) == pytest.approx(epoch_row["train_risk"], rel=1e-12)
        assert all(r["train/learning_rate"] == pytest.approx(0.01) for r in chunks)


def test_rerunning_a_finished_workdir_resumes_instead_of_retraining(tmp_path):
    dataset = toy_dataset()
    first = quiet(small_config(), tmp_path, dataset)
    lines = []
    second = trainer.train_and_evaluate(
        small_config(), str(tmp_path), dataset=dataset, log=lines.append, progress=False
    )
    assert any(line.startswith("resuming from") for line in lines)
    assert second["test_accuracy"] == first["test_accuracy"]
    assert second["epochs_run"] == first["epochs_run"]
    assert len(_epoch_rows(tmp_path)) == 2  # no duplicated rows


def _signal_at(monkeypatch, chunk_number):
    calls = {"n": 0}
    real = Placement.run_chunk

    def run_then_signal(self, *args):
        calls["n"] += 1
        if calls["n"] == chunk_number:
            os.kill(os.getpid(), 15)
        return real(self, *args)

    monkeypatch.setattr(Placement, "run_chunk", run_then_signal)
    return lambda: monkeypatch.setattr(Placement, "run_chunk", real)


@pytest.mark.parametrize("signal_at_chunk", [7, 4])  # 4 chunks an epoch: mid-epoch 2, epoch 1's end
def test_interrupted_run_resumes_to_the_same_parameters_and_metrics(
    signal_at_chunk, tmp_path, monkeypatch
):
    dataset = toy_dataset()
    config = small_config(**{"epochs": 3, "checkpoint.every_steps": 4, "model.dropout": 0.3})
    reference = quiet(config, tmp_path / "straight", dataset)
    restore_run_chunk = _signal_at(monkeypatch, signal_at_chunk)
    with pytest.raises(trainer.Interrupted, match="saved at step"):
        quiet(config, tmp_path / "resumed", dataset)
    restore_run_chunk()
    resumed = quiet(config, tmp_path / "resumed", dataset)
    assert resumed["test_loss"] == reference["test_loss"]  # bit-identical parameters
    timeless = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    # every row, the mid-epoch risk sums included, equals the uninterrupted run's exactly
    assert timeless(_epoch_rows(tmp_path / "resumed")) == timeless(
        _epoch_rows(tmp_path / "straight")
    )
    read = lambda d: (d / "metrics.jsonl").read_text().splitlines()
    chunk_rows = lambda d: [r for r in map(json.loads, read(d)) if r["kind"] == "chunk"]
    assert chunk_rows(tmp_path / "resumed") == chunk_rows(tmp_path / "straight")


def test_nan_stops_the_run_naming_the_step_and_whether_a_checkpoint_exists(tmp_path):
    dataset = toy_dataset()
    plan = epoch_plan(1024, 64, 4, 0, 0)
    position = 10 * 64 + 5  # step 11 of epoch 1 (1-based), after the checkpoint at step 8
    dataset.train.images[plan.indices.reshape(-1)[position]] = np.inf
    config = small_config(**{"checkpoint.every_steps": 8})
    with pytest.raises(
        trainer.NonFiniteLossError, match=r"at step 11 \(epoch 1\).*step 8\) is kept"
    ):
        quiet(config, tmp_path / "a", dataset)
    assert (tmp_path / "a" / "checkpoints" / "8").is_dir()
    config = small_config(**{"checkpoint.every_steps": 0, "checkpoint.every_seconds": 0.0})
    with pytest.raises(trainer.NonFiniteLossError, match="no checkpoint had been saved yet"):
        quiet(config, tmp_path / "b", dataset)


def test_early_termination_keeps_the_best_parameters_and_evaluate_needs_only_the_workdir(tmp_path):
    dataset = toy_dataset()
    config = small_config(
        **{
            "epochs": 8,
            "early_stopping.patience": 2,
            "optimizer.name": "sgd",
            "optimizer.learning_rate": 0.5,
        }
    )
    summary = quiet(config, tmp_path, dataset)
    errors = [r["val_error"] for r in _epoch_rows(tmp_path)]
    assert summary["best_epoch"] == 1 + int(np.argmin(errors))
    if summary["epochs_run"] < 8:
        assert summary["stopped"].startswith("early termination")
        assert len(errors) - summary["best_epoch"] == 2
    evaluated = trainer.evaluate_workdir(str(tmp_path), dataset=dataset, log=lambda s: None)
    assert evaluated["test_accuracy"] == summary["test_accuracy"]
    assert evaluated["best_epoch"] == summary["best_epoch"]


def test_an_empty_validation_split_keeps_the_last_epoch_and_says_so(tmp_path):
    dataset = toy_dataset(n_val=0)
    lines = []
    config = small_config(**{"epochs": 3, "early_stopping.patience": 1, "schedule.name": "plateau"})
    summary = trainer.train_and_evaluate(
        config, str(tmp_path), dataset=dataset, log=lines.append, progress=False
    )
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 3
    assert "no validation split" in summary["validation"]
    assert any("no validation split" in line for line in lines)
    assert all(r["learning_rate"] == pytest.approx(0.01) for r in _epoch_rows(tmp_path))


def _bad(config, key, value):
    config.unlock()
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node[part]
    node[last] = value
    return config


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optimizer.name", "adagrad", r"config.optimizer.name='adagrad': choose one of \('sgd'"),
        ("devices.strategy", "tpu", "config.devices.strategy='tpu'"),
        ("optimizer.learning_rate", -1.0, r"out of range \(0.0, inf\)"),
        ("optimizer.learning_rate", float("nan"), "expected a number"),
        ("optimizer.b1", 1.0, r"config.optimizer.b1=1.0: out of range \[0.0, 1.0\)"),
        ("optimizer.eps", 0.0, "config.optimizer.eps"),
        ("batch_size", 0, "batch_size=0"),
        ("steps_per_chunk", 0, "config.steps_per_chunk=0"),
        ("schedule.plateau_patience", 0, "plateau_patience=0"),
        ("schedule.step_factor", 1.5, "step_factor=1.5"),
        ("checkpoint.every_steps", -1, "every_steps=-1"),
        ("model.hidden", (0,), r"config.model.hidden=\(0,\): expected a tuple of integers >= 1"),
        ("model.dropout", 1.0, "model.dropout=1.0"),
        ("loss", "cross_entropy_typo", "config.loss"),
        ("label_smoothing", 1.0, r"config.label_smoothing=1.0: out of range \[0.0, 1.0\)"),
    ],
)
def test_bad_config_values_are_named_with_what_is_allowed(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(_bad(small_config(), key, value))


def test_unknown_keys_suggest_the_closest_and_mismatched_losses_are_rejected():
    config = small_config()
    config.unlock()
    config.optimizer.learnng_rate = 0.1
    with pytest.raises(ConfigError, match=r"optimizer.learnng_rate; did you mean config.optimizer"):
        config_lib.validate(config)
    config = small_config(**{"loss": "cross_entropy", "model.output_activation": "sigmoid"})
    with pytest.raises(ConfigError, match="output_activation"):
        config_lib.validate(config)
    config = small_config(**{"loss": "quadratic", "label_smoothing": 0.1})
    with pytest.raises(ConfigError, match="label_smoothing=0.1 applies to config.loss in"):
        config_lib.validate(config)


def test_every_key_is_described_with_its_default_and_allowed_values():
    text = config_lib.describe()
    for name, key in config_lib.KEYS.items():
        line = next(line for line in text.splitlines() if f" {name} = " in line)
        assert repr(key.default) in line and key.check.allowed in line
    assert "sgd | momentum | nesterov | adam" in text  # read from the registry


def test_a_failed_start_names_the_problem_and_leaves_no_workdir(tmp_path):
    workdir = tmp_path / "run"
    config = small_config(**{"batch_size": 60, "devices.strategy": "sharding"})
    with pytest.raises(ConfigError, match="batch_size=60: 60 examples do not split over 8 devices"):
        quiet(config, workdir, toy_dataset())
    assert not workdir.exists()
    config = small_config(**{"model.channels": (4, 4, 4, 4), "devices.strategy": "single"})
    with pytest.raises(ConfigError, match=r"model.channels=\(4, 4, 4, 4\) does not fit 8x8x1"):
        quiet(config, workdir, toy_dataset())
    assert not workdir.exists()


def test_resume_refuses_other_settings_and_notes_the_allowed_ones(tmp_path):
    dataset = toy_dataset()
    quiet(small_config(**{"epochs": 1}), tmp_path, dataset)
    for key, value in (
        ("optimizer.learning_rate", 0.1),
        ("batch_size", 32),
        ("model.hidden", (8,)),
    ):
        with pytest.raises(ConfigError, match=f"another config \\({key}: "):
            quiet(small_config(**{"epochs": 1, key: value}), tmp_path, dataset)
    lines = []
    summary = trainer.train_and_evaluate(
        small_config(**{"epochs": 2, "early_stopping.patience": 5}),
        str(tmp_path),
        dataset=dataset,
        log=lines.append,
        progress=False,
    )
    assert any(
        "changed settings: epochs: 1 -> 2; early_stopping.patience: 0 -> 5" in ln for ln in lines
    )
    assert summary["epochs_run"] == 2


def test_resuming_with_another_chunk_size_is_refused_if_it_would_misplace_the_data(
    tmp_path, monkeypatch
):
    dataset = toy_dataset()
    restore_run_chunk = _signal_at(monkeypatch, 2)  # after 2 chunks of 4 steps: 8 steps in
    with pytest.raises(trainer.Interrupted):
        quiet(small_config(), tmp_path, dataset)
    restore_run_chunk()
    with pytest.raises(ConfigError, match="8 steps into epoch 1, not a multiple of config.steps_"):
        quiet(small_config(steps_per_chunk=3), tmp_path, dataset)
    lines = []  # a chunk size that divides the position resumes
    trainer.train_and_evaluate(
        small_config(steps_per_chunk=2),
        str(tmp_path),
        dataset=dataset,
        log=lines.append,
        progress=False,
    )
    assert any("(epoch 1, step 8 of it)" in line for line in lines)


def test_a_workdir_in_use_by_another_run_is_refused(tmp_path):
    import fcntl

    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242")
        held.flush()
        with pytest.raises(trainer.WorkdirError, match="in use by another run"):
            quiet(small_config(), tmp_path, toy_dataset())


SHIPPED_CONFIGS = sorted(
    p.stem
    for p in pathlib.Path(__file__).parent.parent.joinpath("configs").glob("*.py")
    if p.stem != "__init__"
)


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_every_shipped_config_is_valid_and_builds(name):
    import importlib
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
    config = importlib.import_module(f"configs.{name}").get_config()
    config_lib.validate(config)
    from jaxnet.models import build_model

    model = build_model(config.model, 10)
    shape = (32, 32, 3) if config.dataset.name == "cifar10" else (28, 28, 1)
    assert L.output_shape(model, shape) == (10,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_initial_state_compiled_in_one_cheap_program_equals_the_eager_initialisers(dtype, key):
    from jaxnet.models import build_model

    config = base_config()
    config.model.kind, config.model.channels, config.model.hidden = "cnn", (4, 8), (16,)
    model = build_model(config.model, 10)
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    with jax.enable_x64(dtype == "float64"):
        init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
        _, params = model.init(init_key, (12, 12, 1))
        optimizer = build.build_optimizer(config, 10, params)
        state = build.initial_state(model, optimizer, seed, (12, 12, 1))
        expected = optimizer.init(params)
    assert int(state.step) == 0
    np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(dropout_key))
    eps = np.finfo(dtype).eps
    for ours, eager in zip(
        jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(params), strict=True
    ):
        assert ours.dtype == eager.dtype == dtype and ours.shape == eager.shape
        # the same random bits; only the float transform to normals may round differently
        np.testing.assert_allclose(
            ours, eager, rtol=8 * eps, atol=8 * eps * float(np.max(np.abs(eager)))
        )
    assert jax.tree_util.tree_structure(state.opt_state) == jax.tree_util.tree_structure(expected)
    for ours, eager in zip(
        jax.tree_util.tree_leaves(state.opt_state), jax.tree_util.tree_leaves(expected), strict=True
    ):
        np.testing.assert_array_equal(ours, eager)


def test_step_cosine_and_momentum_schedules_reach_the_optimizer(tmp_path):
    import optax

    from jaxnet import optim

    S = 16  # steps per epoch: 1024 / 64
    step = {
        "epochs": 4,
        "schedule.name": "step",
        "schedule.step_epochs": 1,
        "schedule.step_factor": 0.5,
    }
    quiet(small_config(**step), tmp_path / "step", toy_dataset())
    rows = _epoch_rows(tmp_path / "step")
    # Each row shows the rate of the epoch's last update, made at count e S - 1.
    expected = [0.01 * 0.5 ** ((e * S - 1) // S) for e in (1, 2, 3, 4)]
    assert [r["learning_rate"] for r in rows] == pytest.approx(expected, rel=1e-6)
    cosine = {"epochs": 4, "schedule.name": "cosine", "schedule.warmup_epochs": 1}
    quiet(small_config(**cosine), tmp_path / "cosine", toy_dataset())
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.01, S, 4 * S)
    expected = [float(schedule(e * S - 1)) for e in (1, 2, 3, 4)]
    rows = _epoch_rows(tmp_path / "cosine")
    assert [r["learning_rate"] for r in rows] == pytest.approx(expected, rel=1e-5, abs=1e-9)
    mu = {
        "epochs": 3,
        "optimizer.name": "momentum",
        "optimizer.momentum_schedule": "sutskever",
        "steps_per_chunk": 8,
    }
    quiet(small_config(**mu), tmp_path / "mu", toy_dataset())
    expected = [float(optim.sutskever_momentum(e * S - 1)) for e in (1, 2, 3)]
    assert [r["momentum"] for r in _epoch_rows(tmp_path / "mu")] == pytest.approx(
        expected, rel=1e-6
    )


def test_plateau_divides_the_learning_rate_after_epochs_without_progress(tmp_path):
    dataset = toy_dataset(noise=3.0)  # so noisy that the validation error stalls and wanders
    config = small_config(
        **{"epochs": 6, "schedule.name": "plateau", "schedule.plateau_patience": 1}
    )
    quiet(config, tmp_path, dataset)
    best, lr = float("inf"), 0.01
    rows = _epoch_rows(tmp_path)
    for row in rows:
        assert row["learning_rate"] == pytest.approx(lr, rel=1e-6)
        if row["val_error"] < best:
            best = row["val_error"]
        else:
            lr *= 0.1  # the epoch without progress divides the next epoch's rate by 10
    assert any(r["learning_rate"] < 0.01 for r in rows), "the run never stalled: make it noisier"


def test_momentum_column_is_mu_beta1_or_zero_as_the_optimizer_uses(tmp_path):
    for name, expected in (("sgd", 0.0), ("momentum", 0.7), ("nesterov", 0.7), ("adam", 0.8)):
        config = small_config(
            **{"epochs": 1, "optimizer.momentum": 0.7, "optimizer.b1": 0.8, "optimizer.name": name}
        )
        quiet(config, tmp_path / name, toy_dataset())
        assert _epoch_rows(tmp_path / name)[0]["momentum"] == pytest.approx(expected)


def test_a_validation_size_larger_than_the_data_names_the_config_key(tmp_path):
    config = small_config(**{"dataset.name": "digits", "dataset.validation_size": 5000.0})
    with pytest.raises(
        ConfigError, match=r"config.dataset.validation_size=5000 is not allowed.*1438"
    ):
        trainer.prepare(config, str(tmp_path / "w"), log=lambda *a: None)
    assert not (tmp_path / "w").exists()


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_every_earlier_checkpoint(
    tmp_path, monkeypatch
):
    import errno
    import re

    from orbax.checkpoint import JsonCheckpointHandler

    from jaxnet.training.checkpoints import CheckpointError

    dataset = toy_dataset()
    config = small_config(**{"epochs": 2, "checkpoint.every_steps": 4})
    reference = quiet(config, tmp_path / "straight", dataset)
    real_save = JsonCheckpointHandler._save_fn

    async def full_after_step_4(self, item, directory):
        step = int(re.search(r"checkpoints/(\d+)", str(directory)).group(1))
        if step > 4:  # the disk fills up after the first checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real_save(self, item, directory)

    monkeypatch.setattr(JsonCheckpointHandler, "_save_fn", full_after_step_4)
    with pytest.raises(CheckpointError, match="No space left on device") as error:
        quiet(config, tmp_path / "full", dataset)
    assert "\n" not in str(error.value)
    monkeypatch.setattr(JsonCheckpointHandler, "_save_fn", real_save)
    steps = sorted(int(d) for d in os.listdir(tmp_path / "full" / "checkpoints") if d.isdigit())
    assert steps == [4]  # the one written before is intact, and the run resumes from it
    assert quiet(config, tmp_path / "full", dataset)["test_loss"] == reference["test_loss"]


def test_a_damaged_saved_config_is_named_in_one_line(tmp_path):
    quiet(small_config(epochs=1), tmp_path, toy_dataset())
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json is not a saved config"):
        trainer.evaluate_workdir(str(tmp_path), dataset=toy_dataset(), log=lambda *a: None)
    (tmp_path / "config.json").write_text('{"optimizer": {"lerning_rate": 0.1}}')
    with pytest.raises(ConfigError, match="lerning_rate in .*config.json; did you mean"):
        quiet(small_config(epochs=1), tmp_path, toy_dataset())


def test_evaluation_compiled_ahead_counts_what_numpy_counts():
    """The program compile_ahead builds, given float32 or float64 inputs, against numpy."""
    from jaxnet.training.steps import Variables, make_evaluate

    seed = int(np.random.default_rng().integers(1 << 30))
    data = toy_dataset(seed, n_val=1234)  # two batches of 1000, the second padded
    built = build.Built(small_config(), data)
    state = built.initial_state()
    params, variables = state.params, Variables.of(state)
    evaluate = make_evaluate(built.model, built.loss_fn, data.num_classes)
    evaluate.compile_ahead(built.abstract_variables(), data.input_shape, np.float32)
    val = data.validation
    ahead = evaluate(variables, val.images, val.labels)
    other_dtype = evaluate(variables, val.images.astype(np.float64), val.labels.astype(np.int64))
    logits = np.asarray(built.model.apply(params, val.images))
    predicted = logits.argmax(axis=1)
    expected = np.zeros((data.num_classes, data.num_classes), np.int64)
    np.add.at(expected, (val.labels, predicted), 1)
    loss = float(np.mean(built.loss_fn(logits, val.labels)))
    for result in (ahead, other_dtype):
        np.testing.assert_array_equal(result.confusion, expected)
        assert result.error == pytest.approx(np.mean(predicted != val.labels))
        assert result.loss == pytest.approx(loss, rel=1e-5)
