"""The trainer: data-parallel equivalence, a one-epoch smoke run, checkpoints, resume, NaN stop, early termination, configs."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from jaxnet.training import config as config_lib
from jaxnet.training import trainer
from jaxnet.training.defaults import base_config
from jaxnet.training.loop import Runner, epoch_plan


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


def toy_dataset(seed=0, n_train=1024, shape=(8, 8, 1), classes=4, noise=0.5):
    rng = np.random.default_rng(seed)
    protos = rng.uniform(size=(classes,) + shape).astype(np.float32)

    def split(n):
        y = rng.integers(0, classes, n).astype(np.int32)
        return Split((protos[y] + noise * rng.standard_normal((n,) + shape)).astype(np.float32), y)

    return ToyDataset(
        "toy", "generated in the test", split(n_train), split(256), split(256), classes
    )


def small_config(**overrides):
    c = base_config()
    c.model.channels = (4,)
    c.model.hidden = (16,)
    c.batch_size = 64
    c.epochs = 2
    c.steps_per_chunk = 4
    c.optimizer.learning_rate = 0.01
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return c


def _params_after(strategy, config, dataset, steps):
    _, model, loss_fn, optimizer, state = trainer.setup(config, dataset=dataset)
    runner = Runner(strategy, model, loss_fn, optimizer)
    images, labels = runner.put_data(dataset.train.images, dataset.train.labels)
    device_state = runner.put_state(state)
    plan = epoch_plan(
        len(dataset.train.labels), config.batch_size, config.steps_per_chunk, config.seed, 0
    )
    assert plan.steps == steps
    for c in range(plan.indices.shape[0]):
        device_state, risks = runner.run_chunk(
            device_state, images, labels, plan.indices[c], plan.weights[c]
        )
        np.asarray(risks)  # wait each chunk, as the trainer does
    host = runner.host_state(device_state)
    assert int(host.step) == steps
    return host.params


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_both_data_parallel_styles_equal_one_device_after_50_steps(optimizer):
    assert jax.device_count() == 8
    dataset = toy_dataset(n_train=50 * 64)
    config = small_config(
        **{
            "optimizer.name": optimizer,
            "optimizer.learning_rate": 0.01,
            "steps_per_chunk": 10,
            "epochs": 1,
        }
    )
    single = _params_after("single", config, dataset, 50)
    for strategy in ("pmap", "sharding"):
        parallel = _params_after(strategy, config, dataset, 50)
        for a, b in zip(jax.tree_util.tree_leaves(parallel), jax.tree_util.tree_leaves(single)):
            np.testing.assert_allclose(
                a, b, rtol=1e-5, atol=1e-6
            )  # float32 tolerance (here float64: far tighter)
            assert np.max(np.abs(np.asarray(a) - np.asarray(b))) < 1e-10


def test_last_partial_batch_counts_every_example_once():
    plan = epoch_plan(1000, 64, 5, seed=3, epoch=2)
    assert plan.steps == 16 and plan.indices.shape == (4, 5, 64)
    real = plan.indices[plan.weights > 0]
    assert sorted(real.tolist()) == list(range(1000))
    assert (
        plan.weights.sum(axis=2) > 0
    ).sum() == 16  # 16 real steps, 4 padding steps that change nothing
    assert not np.array_equal(
        epoch_plan(1000, 64, 5, 3, 2).indices, epoch_plan(1000, 64, 5, 3, 1).indices
    )
    np.testing.assert_array_equal(
        epoch_plan(1000, 64, 5, 3, 2).indices, plan.indices
    )  # deterministic from (seed, epoch)
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
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["train_risk"] < rows[0][
        "train_risk"
    ]
    assert any("train risk" in line and "val error" in line for line in lines)  # the table header
    assert any("first chunk incl. compilation" in line for line in lines)
    confusion = np.array(summary["confusion_matrix"])
    assert confusion.sum() == 256 and np.isclose(
        np.trace(confusion) / 256, summary["test_accuracy"]
    )


def test_rerunning_a_finished_workdir_resumes_instead_of_retraining(tmp_path):
    dataset = toy_dataset()
    first = trainer.train_and_evaluate(
        small_config(), str(tmp_path), dataset=dataset, log=lambda s: None, progress=False
    )
    lines = []
    second = trainer.train_and_evaluate(
        small_config(), str(tmp_path), dataset=dataset, log=lines.append, progress=False
    )
    assert any(line.startswith("resuming from") for line in lines)
    assert (
        second["test_accuracy"] == first["test_accuracy"]
        and second["epochs_run"] == first["epochs_run"]
    )


@pytest.mark.parametrize(
    "signal_at_chunk", [7, 4]
)  # 4 chunks per epoch: mid-epoch 2, and epoch 1's last chunk
def test_interrupted_run_resumes_to_the_same_parameters(signal_at_chunk, tmp_path, monkeypatch):
    dataset = toy_dataset()
    config = small_config(**{"epochs": 3, "checkpoint.every_chunks": 1, "model.dropout": 0.3})
    reference = trainer.train_and_evaluate(
        config, str(tmp_path / "straight"), dataset=dataset, log=lambda s: None, progress=False
    )

    # Interrupt in the middle of epoch 2, as SIGTERM would: the trainer saves and raises.
    calls = {"n": 0}
    real_run_chunk = Runner.run_chunk

    def run_then_signal(self, *args):
        calls["n"] += 1
        if calls["n"] == signal_at_chunk:
            os.kill(os.getpid(), 15)
        return real_run_chunk(self, *args)

    monkeypatch.setattr(Runner, "run_chunk", run_then_signal)
    with pytest.raises(trainer.Interrupted, match="saved at step"):
        trainer.train_and_evaluate(
            config, str(tmp_path / "resumed"), dataset=dataset, log=lambda s: None, progress=False
        )
    monkeypatch.setattr(Runner, "run_chunk", real_run_chunk)
    resumed = trainer.train_and_evaluate(
        config, str(tmp_path / "resumed"), dataset=dataset, log=lambda s: None, progress=False
    )
    assert (
        resumed["test_loss"] == reference["test_loss"]
    )  # bit-identical parameters give bit-identical losses
    assert [r["train_risk"] for r in _history(tmp_path / "resumed")][-1] == [
        r["train_risk"] for r in _history(tmp_path / "straight")
    ][-1]
    assert all(
        np.isfinite(r["train_risk"]) for r in _history(tmp_path / "resumed")
    )  # no epoch lost its risks


def _history(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from jaxnet.training.checkpoints import Checkpoints

    dataset = toy_dataset()
    # A step schedule that multiplies the learning rate by 1e30 after epoch 1: epoch 2 diverges.
    config = small_config(
        **{
            "optimizer.name": "sgd",
            "schedule.name": "step",
            "schedule.step_epochs": 1,
            "schedule.step_factor": 1e30,
            "epochs": 3,
        }
    )
    with pytest.raises(
        trainer.NonFiniteLossError,
        match=r"at step (1[7-9]|2\d|3[0-2]) \(epoch 2\).*last good checkpoint",
    ):
        trainer.train_and_evaluate(
            config, str(tmp_path), dataset=dataset, log=lambda s: None, progress=False
        )
    checkpoints = Checkpoints(str(tmp_path / "checkpoints"), 3)
    assert checkpoints.latest_step() == 16  # the end of epoch 1 (1024 examples / 64)
    _, _, _, _, template = trainer.setup(config, dataset=dataset)
    state, _, record = checkpoints.restore(template, template.params)
    assert record["epoch"] == 1 and all(
        np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(state.params)
    )
    checkpoints.close()


def test_early_termination_keeps_the_best_parameters(tmp_path):
    # A learning rate that makes the validation error rise after the first epoch.
    dataset = toy_dataset()
    config = small_config(
        **{
            "epochs": 8,
            "early_stopping.patience": 2,
            "optimizer.name": "sgd",
            "optimizer.learning_rate": 0.5,
        }
    )
    summary = trainer.train_and_evaluate(
        config, str(tmp_path), dataset=dataset, log=lambda s: None, progress=False
    )
    history = _history(tmp_path)
    errors = [r["val_error"] for r in history]
    assert summary["best_epoch"] == 1 + int(np.argmin(errors))
    if summary["epochs_run"] < 8:
        assert summary["stopped"].startswith("early termination")
        assert len(history) - summary["best_epoch"] == 2
    evaluated = trainer.evaluate_workdir(config, str(tmp_path), dataset=dataset, log=lambda s: None)
    assert (
        evaluated["test_accuracy"] == summary["test_accuracy"]
        and evaluated["best_epoch"] == summary["best_epoch"]
    )


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "optimizer.name",
            "adagrad",
            r"config.optimizer.name='adagrad' is not allowed; choose one of \('sgd'",
        ),
        ("devices.strategy", "tpu", "devices.strategy"),
        ("optimizer.learning_rate", -1.0, "out of range"),
        ("batch_size", 0, "batch_size=0"),
        ("loss", "cross_entropy_typo", "config.loss"),
    ],
)
def test_bad_config_values_are_named_with_what_is_allowed(key, value, message):
    config = small_config()
    config.unlock()
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node[part]
    node[last] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(config, base_config())


def test_unknown_config_keys_and_mismatched_losses_are_rejected():
    config = small_config()
    config.unlock()
    config.optimizer.learnng_rate = 0.1
    with pytest.raises(
        config_lib.ConfigError, match=r"unknown config key\(s\) \['optimizer.learnng_rate'\]"
    ):
        config_lib.validate(config, base_config())
    config = small_config(**{"loss": "cross_entropy", "model.output_activation": "sigmoid"})
    with pytest.raises(config_lib.ConfigError, match="output_activation"):
        config_lib.validate(config, base_config())


def test_batch_that_does_not_split_over_the_devices_is_an_error(tmp_path):
    config = small_config(**{"batch_size": 60, "devices.strategy": "sharding"})
    with pytest.raises(ValueError, match="batch_size=60 does not split over 8 devices"):
        trainer.train_and_evaluate(
            config, str(tmp_path), dataset=toy_dataset(), log=lambda s: None, progress=False
        )


@pytest.mark.parametrize("name", ["default", "nielsen", "lenet", "cifar10", "tpu"])
def test_every_shipped_config_is_valid_and_builds(name):
    import importlib
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
    config = importlib.import_module(f"configs.{name}").get_config()
    config_lib.validate(config, base_config())
    from jaxnet.models import build_model

    model = build_model(config.model, 10)
    shape = {"cifar10": (32, 32, 3), "tpu": (32, 32, 3)}.get(name, (28, 28, 1))
    out, _ = model.init(jax.random.PRNGKey(0), shape)
    assert out == (10,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_initial_state_compiled_in_one_cheap_program_equals_the_eager_initialisers(dtype, key):
    from jaxnet.models import build_model
    from jaxnet.training.optimizers import build_optimizer

    config = base_config()
    config.model.kind, config.model.channels, config.model.hidden = "cnn", (4, 8), (16,)
    model = build_model(config.model, 10)
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    with jax.enable_x64(dtype == "float64"):
        init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
        _, params = model.init(init_key, (12, 12, 1))
        optimizer = build_optimizer(config, 10, params)
        state = trainer.initial_state(model, optimizer, seed, (12, 12, 1))
        expected = optimizer.init(params)
    assert int(state.step) == 0
    np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(dropout_key))
    eps = np.finfo(dtype).eps
    for ours, eager in zip(
        jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(params), strict=True
    ):
        assert ours.dtype == eager.dtype == dtype and ours.shape == eager.shape
        # the same random bits; only the float transform to normals may round differently (an ulp or so)
        np.testing.assert_allclose(
            ours, eager, rtol=8 * eps, atol=8 * eps * float(np.max(np.abs(eager)))
        )
    assert jax.tree_util.tree_structure(state.opt_state) == jax.tree_util.tree_structure(expected)
    for ours, eager in zip(
        jax.tree_util.tree_leaves(state.opt_state), jax.tree_util.tree_leaves(expected), strict=True
    ):
        np.testing.assert_array_equal(ours, eager)


def test_resuming_with_another_chunk_size_is_refused_if_it_would_misplace_the_data(
    tmp_path, monkeypatch
):
    dataset = toy_dataset()
    config = small_config(**{"checkpoint.every_chunks": 1})
    calls = {"n": 0}
    real_run_chunk = Runner.run_chunk

    def run_then_signal(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:  # after 2 chunks of 4 steps: 8 steps into epoch 1
            os.kill(os.getpid(), 15)
        return real_run_chunk(self, *args)

    monkeypatch.setattr(Runner, "run_chunk", run_then_signal)
    with pytest.raises(trainer.Interrupted):
        trainer.train_and_evaluate(
            config, str(tmp_path), dataset=dataset, log=lambda s: None, progress=False
        )
    monkeypatch.setattr(Runner, "run_chunk", real_run_chunk)
    with pytest.raises(
        config_lib.ConfigError,
        match="8 steps into epoch 1, not a multiple of config.steps_per_chunk=3",
    ):
        trainer.train_and_evaluate(
            small_config(**{"steps_per_chunk": 3}),
            str(tmp_path),
            dataset=dataset,
            log=lambda s: None,
            progress=False,
        )
    lines = []  # a chunk size that divides the position resumes
    trainer.train_and_evaluate(
        small_config(**{"steps_per_chunk": 2}),
        str(tmp_path),
        dataset=dataset,
        log=lines.append,
        progress=False,
    )
    assert any("(epoch 1, step 8 of it)" in line for line in lines)


def _rows(config, tmp_path, dataset=None):
    trainer.train_and_evaluate(
        config, str(tmp_path), dataset=dataset or toy_dataset(), log=lambda s: None, progress=False
    )
    return _history(tmp_path)


def test_step_cosine_and_momentum_schedules_reach_the_optimizer(tmp_path):
    import optax

    from jaxnet import optim

    S = 16  # steps per epoch: 1024 / 64
    rows = _rows(
        small_config(
            **{
                "epochs": 4,
                "schedule.name": "step",
                "schedule.step_epochs": 1,
                "schedule.step_factor": 0.5,
            }
        ),
        tmp_path / "step",
    )
    # Each row shows the rate of the epoch's last update, made at count e S - 1.
    assert [r["learning_rate"] for r in rows] == pytest.approx(
        [0.01 * 0.5 ** ((e * S - 1) // S) for e in (1, 2, 3, 4)], rel=1e-6
    )
    rows = _rows(
        small_config(**{"epochs": 4, "schedule.name": "cosine", "schedule.warmup_epochs": 1}),
        tmp_path / "cosine",
    )
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.01, S, 4 * S)
    assert [r["learning_rate"] for r in rows] == pytest.approx(
        [float(schedule(e * S - 1)) for e in (1, 2, 3, 4)], rel=1e-5, abs=1e-9
    )
    rows = _rows(
        small_config(
            **{
                "epochs": 3,
                "optimizer.name": "momentum",
                "optimizer.momentum_schedule": "sutskever",
                "steps_per_chunk": 8,
            }
        ),
        tmp_path / "mu",
    )
    assert [r["momentum"] for r in rows] == pytest.approx(
        [float(optim.sutskever_momentum(e * S - 1)) for e in (1, 2, 3)], rel=1e-6
    )


def test_plateau_divides_the_learning_rate_after_epochs_without_progress(tmp_path):
    dataset = toy_dataset(noise=3.0)  # so noisy that the validation error stalls and wanders
    rows = _rows(
        small_config(**{"epochs": 6, "schedule.name": "plateau", "schedule.plateau_patience": 1}),
        tmp_path,
        dataset,
    )
    best, lr = float("inf"), 0.01
    for row in rows:
        assert row["learning_rate"] == pytest.approx(lr, rel=1e-6)
        if row["val_error"] < best:
            best = row["val_error"]
        else:
            lr *= 0.1  # the epoch without progress divides the next epoch's rate by 10
    assert any(r["learning_rate"] < 0.01 for r in rows), (
        "the run never stalled: make the data noisier"
    )


def test_momentum_column_is_mu_beta1_or_zero_as_the_optimizer_uses(tmp_path):
    config = small_config(**{"epochs": 1, "optimizer.momentum": 0.7, "optimizer.b1": 0.8})
    for name, expected in (("sgd", 0.0), ("momentum", 0.7), ("nesterov", 0.7), ("adam", 0.8)):
        config.optimizer.name = name
        assert _rows(config, tmp_path / name)[0]["momentum"] == pytest.approx(expected)


def test_a_validation_size_larger_than_the_data_names_the_config_key():
    config = small_config(**{"dataset.name": "digits", "dataset.validation_size": 5000.0})
    with pytest.raises(
        config_lib.ConfigError, match=r"config.dataset.validation_size=5000 is not allowed.*< 1438"
    ):
        trainer.setup(config, log=lambda s: None)
