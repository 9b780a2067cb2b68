"""jaxnet.load and train.py --mode=predict: the trained network back from its workdir."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxnet
from jaxnet.data import Dataset, load_dataset
from jaxnet.training import config as config_lib
from jaxnet.training import trainer
from jaxnet.training.config import base_config
from jaxnet.training.steps import Variables, infer
from jaxnet.training.trained import LoadError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT1 = os.path.join(ROOT, "tests", "data", "workdir_layout1")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", validation_size=0.1, log=None)


def _copy(workdir, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(workdir, target)
    return str(target)


def test_load_reads_a_workdir_of_checkpoint_layout_1(digits, tmp_path):
    model = jaxnet.load(_copy(LAYOUT1, tmp_path))
    summary = json.load(open(os.path.join(LAYOUT1, "summary.json")))
    raw = digits.test.images * 16.0  # load_digits' pixels, before the run divided them by 16
    labels = model.predict(raw)
    assert np.mean(labels == digits.test.labels) == pytest.approx(summary["test_accuracy"])
    assert (model.step, model.best_epoch) == (summary["step"], summary["best_epoch"])
    assert model.predict(raw[3]) == labels[3]  # one example, without a batch axis
    p = model.probabilities(raw[:5])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(p.argmax(axis=1), labels[:5])


def _arrays(seed, shape=(5, 3), classes=3):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-2, 2, (classes, *shape))
    y = [np.arange(n) % classes for n in (300, 90)]
    # raw inputs far from standard: load must standardise new inputs as training did
    x = [50.0 + 10.0 * (centres[y_] + 0.3 * rng.standard_normal((len(y_), *shape))) for y_ in y]
    return x[0], y[0], x[1], y[1]


def test_load_gives_back_a_batch_norm_network_trained_on_users_arrays(tmp_path, key):
    x_train, y_train, x_test, y_test = _arrays(int(np.asarray(key)[-1]))
    dataset = Dataset.from_arrays(x_train, y_train, x_test, y_test, standardize="standard")
    config = base_config()
    layers = ("batchnorm", "flatten", "dense(16)", "batchnorm", "relu")
    overrides = {
        "model.kind": "layers",
        "model.layers": layers,
        "batch_size": 32,
        "epochs": 2,
        "devices.strategy": "single",
        "compilation_cache_dir": "",
        "dataset.validation_size": 0.1,
    }
    for name, value in overrides.items():
        config_lib.set_value(config, name, value)
    summary = trainer.train_and_evaluate(
        config, str(tmp_path), dataset=dataset, log=lambda *a: None, progress=False
    )
    model = jaxnet.load(str(tmp_path))
    state = model.variables.model_state
    assert len(jax.tree_util.tree_leaves(state)) == 4  # two BatchNorms: mean and var each
    assert not np.allclose(state[0]["mean"], 0.0)  # running averages were trained and saved
    labels = model.predict(x_test)  # raw inputs: load standardises them
    assert np.mean(labels == y_test) == pytest.approx(summary["test_accuracy"])
    expected = infer(model.network, Variables(*model.variables), dataset.test.images)
    np.testing.assert_allclose(model.logits(x_test), expected, rtol=1e-6, atol=1e-6)


def test_load_names_what_does_not_fit(tmp_path):
    model = jaxnet.load(_copy(LAYOUT1, tmp_path))
    with pytest.raises(ValueError, match=r"inputs of shape \(2, 8, 8\) do not fit this network"):
        model.predict(np.zeros((2, 8, 8)))
    with pytest.raises(LoadError, match="holds no run"):
        jaxnet.load(str(tmp_path / "nothing"))


def _train_py(*args, cwd=ROOT):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_predict_mode_writes_labels_probabilities_and_logits(digits, tmp_path):
    workdir = _copy(LAYOUT1, tmp_path)
    inputs, output = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inputs, x=digits.test.images[:50] * 16.0)
    done = _train_py(
        "--mode=predict", f"--workdir={workdir}", f"--input={inputs}", f"--output={output}"
    )
    assert done.returncode == 0, done.stderr
    assert "predicted 50 examples" in done.stdout
    got = np.load(output)
    expected = jaxnet.load(workdir).logits(digits.test.images[:50] * 16.0)
    np.testing.assert_allclose(got["logits"], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["labels"], expected.argmax(axis=1))
    assert got["probabilities"].shape == (50, 10)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode=predict"], "--mode=predict needs --workdir DIR"),
        (["--mode=predict", "--workdir=WORKDIR"], "--mode=predict needs --input FILE.npz"),
        (["--mode=predict", "--workdir=WORKDIR", "--input=MISSING"], "missing.npz: no such file"),
        (["--mode=predict", "--workdir=WORKDIR", "--input=WRONG"], "has no array 'x'"),
        (["--mode=predict", "--workdir=WORKDIR", "--input=SHAPE"], "do not fit this network"),
        (["--mode=evaluate", "--workdir=WORKDIR", "--input=WRONG"], "are for --mode=predict"),
    ],
)
def test_predict_mode_bad_inputs_give_one_line(args, message, tmp_path):
    workdir = _copy(LAYOUT1, tmp_path)
    np.savez(tmp_path / "wrong.npz", images=np.zeros((2, 8, 8, 1)))
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 64)))
    names = {
        "WORKDIR": workdir,
        "MISSING": str(tmp_path / "missing.npz"),
        "WRONG": str(tmp_path / "wrong.npz"),
        "SHAPE": str(tmp_path / "shape.npz"),
    }
    for name, value in names.items():
        args = [a.replace(name, value) for a in args]
    done = _train_py(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_the_launch_check_leaves_an_npz_network_to_be_checked_with_its_file():
    from jaxnet.training import cli

    default = os.path.join(ROOT, "configs", "default.py")
    args = ["--config", default, "--config.dataset.name=npz", "--config.dataset.path=x.npz"]
    config = cli.validate_argv(args, default)
    assert (config.dataset.name, config.dataset.path) == ("npz", "x.npz")
    too_deep = ["--config.dataset.name=digits", "--config.model.channels=(4, 4, 4, 4)"]
    with pytest.raises(config_lib.ConfigError, match="model.kind='cnn'"):  # built-ins still are
        cli.validate_argv(["--config", default, *too_deep], default)
