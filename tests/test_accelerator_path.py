"""The GPU and TPU code path on CPU: JAXNET_CHUNK=scan runs the chunk as a lax.scan.

With the state donated and the shardings of every placement as on an accelerator, it must give
the parameters the unrolled CPU chunk gives, weight-0 padding steps included.
"""

import jax
import numpy as np
import pytest

from jaxnet.data import load_dataset
from jaxnet.layers import conv
from jaxnet.training import build, steps, trainer
from jaxnet.training import config as config_lib
from jaxnet.training.config import ConfigError, base_config
from jaxnet.training.placement import STRATEGIES

STEPS = 10  # 640 examples in batches of 64, chunks of 4: the third chunk pads 2 weight-0 steps


def _dataset():
    return load_dataset(
        "synthetic",
        validation_size=0,
        synthetic_shape=(8, 8, 1),
        synthetic_classes=4,
        synthetic_size=(64 * STEPS, 64),
        log=None,
    )


def _config():
    c = base_config()
    c.model.channels, c.model.hidden, c.model.dropout = (4,), (16,), 0.3  # dropout: keys per step
    c.batch_size, c.steps_per_chunk, c.epochs = 64, 4, 1
    c.optimizer.learning_rate = 0.01
    return c


def _placed(strategy, config, dataset):
    built = build.Built(config, dataset)
    placement = STRATEGIES[strategy](built.model, built.loss_fn, built.optimizer)
    data = placement.put_data(dataset.train.images, dataset.train.labels)
    return placement, data, placement.put_state(built.initial_state())


def _train(strategy, mode, monkeypatch):
    """Host state after each chunk of one epoch, with the chunk built in `mode`."""
    monkeypatch.setenv(steps.CHUNK_ENV, mode)
    dataset, config = _dataset(), _config()
    placement, data, state = _placed(strategy, config, dataset)
    plan = steps.epoch_plan(len(dataset.train), 64, config.steps_per_chunk, config.seed, 0)
    chunks = steps.run_epoch(placement, state, data, plan)
    return [jax.tree_util.tree_map(np.array, placement.host_state(s)) for s, _ in chunks]


def test_the_switch_reads_the_environment_and_names_a_bad_value(monkeypatch):
    monkeypatch.delenv(steps.CHUNK_ENV, raising=False)
    assert steps.chunk_mode() == ("unrolled" if jax.default_backend() == "cpu" else "scan")
    for mode in ("scan", "unrolled"):
        monkeypatch.setenv(steps.CHUNK_ENV, mode)
        assert steps.chunk_mode() == mode
    monkeypatch.setenv(steps.CHUNK_ENV, "rolled")
    with pytest.raises(ValueError, match=r"JAXNET_CHUNK='rolled' is not a chunk mode: use one of"):
        steps.chunk_mode()
    with pytest.raises(ConfigError, match="JAXNET_CHUNK='rolled'"):  # before a workdir is made
        config_lib.validate(_config())


def test_the_trainer_runs_the_scan_path_to_the_unrolled_result(tmp_path, monkeypatch):
    results = {}
    for mode in ("scan", "unrolled"):
        monkeypatch.setenv(steps.CHUNK_ENV, mode)
        config = _config()
        config.compilation_cache_dir, config.checkpoint.every_steps = "", 4
        results[mode] = trainer.train_and_evaluate(
            config, str(tmp_path / mode), dataset=_dataset(), log=lambda *a: None, progress=False
        )
    assert results["scan"]["epochs_run"] == results["unrolled"]["epochs_run"] == 1
    assert results["scan"]["test_loss"] == pytest.approx(results["unrolled"]["test_loss"], rel=1e-6)


def _lowered_chunk(mode, monkeypatch) -> str:
    monkeypatch.setenv(steps.CHUNK_ENV, mode)
    built = build.Built(_config(), _dataset())
    chunk = steps.make_chunk_fn(built.model, built.loss_fn, built.optimizer)
    train = built.dataset.train
    index = jax.ShapeDtypeStruct((4, 64), np.int32)
    weight = jax.ShapeDtypeStruct((4, 64), np.float32)
    lowered = jax.jit(chunk).lower(
        built.abstract_state(), train.images, train.labels, index, weight
    )
    return lowered.as_text()


def test_the_scan_chunk_traces_one_step_and_the_unrolled_one_each_step(monkeypatch):
    scan, unrolled = (_lowered_chunk(mode, monkeypatch) for mode in ("scan", "unrolled"))
    convolutions = lambda text: text.count("stablehlo.convolution")  # noqa: E731
    # a step has the forward convolution and the kernel's gradient (the input's is not needed),
    # once in the loop body or once per step; on CPU the 3x3x1 kernel's forward is a stencil
    kernel = build.Built(_config(), _dataset()).abstract_params()[0]["W"]
    per_step = 1 + (not conv.uses_stencil(kernel, 64 * 8 * 8))
    assert convolutions(scan) == per_step and convolutions(unrolled) == 4 * per_step
    assert scan.count("stablehlo.while") > unrolled.count("stablehlo.while")


@pytest.mark.parametrize("strategy", ["single", "pmap", "sharding"])
def test_scan_and_unrolled_chunks_give_the_same_parameters(strategy, monkeypatch):
    # float32 as users train, in full float32 products wherever a GPU would take TF32 ones
    with jax.enable_x64(False), jax.default_matmul_precision("float32"):
        scan = _train(strategy, "scan", monkeypatch)
        unrolled = _train(strategy, "unrolled", monkeypatch)
    assert [int(s.step) for s in scan] == [int(s.step) for s in unrolled] == [4, 8, STEPS]
    for a, b in zip(scan, unrolled):
        leaves = jax.tree_util.tree_leaves((a.params, a.opt_state))
        assert all(leaf.dtype != np.float64 for leaf in leaves)
        for x, y in zip(leaves, jax.tree_util.tree_leaves((b.params, b.opt_state))):
            # Not bit-equal: XLA fuses a while loop's body apart from unrolled steps, so a few
            # sums round differently. Measured (jaxlib 0.10.2, XLA:CPU): at most 6e-8 apart, one
            # float32 ulp at 1.0, in any leaf of params or Adam's moments, after every chunk and
            # for every placement. 1e-6 leaves 16x room for other CPUs' kernels and for Adam's
            # division by sqrt(nu), which can scale a rounding up; a lost step or a wrong dropout
            # key moves parameters by about the learning rate, 1e-2.
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["single", "pmap", "sharding"])
def test_the_scan_chunk_donates_the_state_it_is_given(strategy, monkeypatch):
    monkeypatch.setenv(steps.CHUNK_ENV, "scan")
    dataset, config = _dataset(), _config()
    placement, data, state = _placed(strategy, config, dataset)
    plan = steps.epoch_plan(len(dataset.train), 64, 4, 0, 0)
    first, _ = placement.run_chunk(state, data, plan.indices[0], plan.weights[0])
    second, _ = placement.run_chunk(first, data, plan.indices[1], plan.weights[1])
    assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(first))
    assert not any(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(second))
    before = jax.tree_util.tree_map(np.array, placement.host_state(second))
    padding = np.zeros_like(plan.weights[2])  # a chunk of weight-0 steps only: nothing changes
    third, risks = placement.run_chunk(second, data, plan.indices[2], padding)
    assert np.isnan(np.asarray(risks)).all()
    after = placement.host_state(third)
    for x, y in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
        np.testing.assert_array_equal(x, y)
