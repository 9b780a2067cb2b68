"""jaxnet.load and train.py --mode=predict: the trained network back from its workdir."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import jaxnet
from jaxnet.data import load_dataset

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


def test_load_names_what_does_not_fit(tmp_path):
    model = jaxnet.load(_copy(LAYOUT1, tmp_path))
    with pytest.raises(ValueError, match=r"inputs of shape \(2, 8, 8\) do not fit this network"):
        model.predict(np.zeros((2, 8, 8)))
    with pytest.raises(Exception, match="holds no run"):
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
