"""A user's own arrays as a dataset: Dataset.from_arrays, Dataset.from_npz, train.py's npz route,
and the one Standardization (none, unit, standard) fitted on the training split only."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxnet.data import Dataset, DatasetNotFoundError, Standardization
from jaxnet.training import config as config_lib
from jaxnet.training import trainer
from jaxnet.training.config import ConfigError, base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seed_from(key) -> int:
    return int(np.asarray(key)[-1])


def prototypes(rng, sizes, shape, classes, noise=0.3):
    """[(x, y) for each size]: class prototypes plus Gaussian noise, learnable in a few steps."""
    centres = rng.uniform(-2, 2, (classes, *shape))
    labels = [np.arange(n) % classes for n in sizes]
    return [(centres[y] + noise * rng.standard_normal((len(y), *shape)), y) for y in labels]


def tiny_config(**overrides):
    c = base_config()
    c.model.kind = "mlp"
    c.model.hidden = (16,)
    c.batch_size = 32
    c.epochs = 2
    c.steps_per_chunk = 4
    c.optimizer.learning_rate = 0.03
    c.devices.strategy = "single"
    c.compilation_cache_dir = ""
    c.log_every_seconds = 0.0
    for key, value in overrides.items():
        config_lib.set_value(c, key, value)
    return c


def train(config, workdir, dataset):
    return trainer.train_and_evaluate(
        config, str(workdir), dataset=dataset, log=lambda *a: None, progress=False
    )


def assert_same_standardization(a: Standardization, b: Standardization):
    assert a.method == b.method
    np.testing.assert_array_equal(a.shift, b.shift)
    np.testing.assert_array_equal(a.scale, b.scale)


# ------------------------------------------------------------------------------------ training


@pytest.mark.parametrize(
    "shape, standardize",
    [((6,), "standard"), ((5, 3), "unit"), ((4, 4, 1), "none")],
    ids=["flat", "sequence", "image"],
)
def test_from_arrays_trains_end_to_end_and_the_workdir_records_it(
    tmp_path, key, shape, standardize
):
    rng = np.random.default_rng(seed_from(key))
    (x_train, y_train), (x_test, y_test) = prototypes(rng, (192, 60), shape, 3)
    d = Dataset.from_arrays(
        x_train, y_train, x_test, y_test, standardize=standardize, seed=1, name="mine"
    )
    assert (
        d.input_shape == shape
        and d.num_classes == 3
        and d.source == "numpy arrays passed to Dataset.from_arrays"
    )
    assert (len(d.train), len(d.validation), len(d.test)) == (173, 19, 60)
    summary = train(tiny_config(), tmp_path, d)  # config.dataset.name stays fashion_mnist
    assert summary["test_accuracy"] > 0.9, summary["test_accuracy"]
    recorded = {
        "name": "mine",
        "source": "numpy arrays passed to Dataset.from_arrays",
        "file": None,
        "standardize": standardize,
        "input_shape": list(shape),
        "num_classes": 3,
        "examples": {"train": 173, "validation": 19, "test": 60},
    }
    assert summary["dataset"] == recorded
    assert json.loads((tmp_path / "summary.json").read_text())["dataset"] == recorded
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["recorded"] == {"dataset": recorded}
    config = config_lib.from_json((tmp_path / "config.json").read_text())  # "recorded" skipped
    assert config_lib.resume_changes(config, tiny_config()) == ([], [])
    assert_same_standardization(trainer.saved_standardization(str(tmp_path)), d.standardization)
    other = Dataset.from_arrays(
        x_train[:, :1], y_train, x_test[:, :1], y_test, name="mine"
    )  # another example shape in the same workdir
    with pytest.raises(ConfigError, match=r"holds a run on another dataset \(input_shape: "):
        train(tiny_config(epochs=3), tmp_path, other)


# ----------------------------------------------------------------------------- standardisation


def test_each_standardization_is_numpy_exactly_with_training_statistics_only(key):
    rng = np.random.default_rng(seed_from(key))
    shape = (int(rng.integers(1, 5)), int(rng.integers(1, 4)))
    x_train = rng.normal(3, 5, (40, *shape))
    x_train[:, 0, 0] = 7.25  # a constant feature: deviation 0 counts as 1
    x_val = rng.normal(-50, 100, (9, *shape))  # other statistics than train's: must not count
    x_test = rng.normal(80, 0.1, (11, *shape))

    def y(n):
        return rng.integers(0, 4, n)

    arrays = (x_train, y(40), x_test, y(11))
    x32 = {s: x.astype(np.float32) for s, x in [("train", x_train), ("validation", x_val)]}
    x32["test"] = x_test.astype(np.float32)
    train64 = x32["train"].astype(np.float64)
    deviation = train64.std(axis=0).astype(np.float32)
    assert deviation[0, 0] == 0
    deviation[deviation == 0] = 1
    expected = {
        "none": (np.float32(0), np.float32(1)),
        "unit": (np.float32(0), np.float32(np.abs(x32["train"]).max())),
        "standard": (train64.mean(axis=0).astype(np.float32), deviation),
    }
    for method, (shift, scale) in expected.items():
        d = Dataset.from_arrays(*arrays, x_val=x_val, y_val=y(9), standardize=method)
        fitted = d.standardization
        assert fitted.method == method and fitted.shift.dtype == fitted.scale.dtype == np.float32
        np.testing.assert_array_equal(fitted.shift, shift)
        np.testing.assert_array_equal(fitted.scale, scale)
        for split in ("train", "validation", "test"):
            images = getattr(d, split).images
            assert images.dtype == np.float32
            np.testing.assert_array_equal(images, (x32[split] - shift) / scale)
        np.testing.assert_array_equal(fitted.apply(x_test[0]), d.test.images[0])  # one example
    standard = Dataset.from_arrays(*arrays, standardize="standard").train.images
    np.testing.assert_allclose(standard.mean(0), 0, atol=1e-5)


def test_statistics_come_from_the_training_split_left_after_the_hold_out(key):
    rng = np.random.default_rng(seed_from(key))
    x, y = rng.normal(0, 1, (50, 3)), rng.integers(0, 5, 50)
    x[int(rng.integers(50))] = 1e4  # the largest |x|: counts for "unit" only if it is trained on
    seed = int(rng.integers(1000))
    for size in (0.2, 13, 0):
        raw = Dataset.from_arrays(x, y, x[:4], y[:4], validation_size=size, seed=seed)
        assert len(raw.validation) == (round(0.2 * 50) if size == 0.2 else size)
        for method in ("unit", "standard"):
            d = Dataset.from_arrays(
                x, y, x[:4], y[:4], validation_size=size, seed=seed, standardize=method
            )
            np.testing.assert_array_equal(d.train.labels, raw.train.labels)
            assert_same_standardization(
                d.standardization, Standardization.fit(method, raw.train.images)
            )
            np.testing.assert_array_equal(
                d.validation.images, d.standardization.apply(raw.validation.images)
            )
    reused = Dataset.from_arrays(x, y, x, y, standardize=d.standardization)  # kept as it is
    assert reused.standardization is d.standardization
    np.testing.assert_array_equal(reused.test.images, d.standardization.apply(x))


def test_inputs_of_any_real_dtype_become_float32_and_classes_default_to_the_largest_label(key):
    rng = np.random.default_rng(seed_from(key))
    x = rng.integers(0, 256, (30, 4)).astype(np.uint8)
    arrays = (x, np.full(30, 2), x > 100, np.array([0] * 29 + [6]))  # bool test inputs
    d = Dataset.from_arrays(*arrays, standardize="unit")
    raw = Dataset.from_arrays(*arrays)
    assert d.num_classes == raw.num_classes == 7
    assert d.train.images.dtype == raw.test.images.dtype == np.float32
    assert d.standardization.scale == raw.train.images.max()  # the training split's, held out
    np.testing.assert_array_equal(raw.test.images, (x > 100).astype(np.float32))
    np.testing.assert_array_equal(d.test.images, raw.test.images / d.standardization.scale)
    zeros = Dataset.from_arrays(
        np.zeros((5, 2)), [0] * 5, np.ones((2, 2)), [0, 0], validation_size=0, standardize="unit"
    )
    assert zeros.standardization.scale == 1 and (zeros.test.images == 1).all()  # max 0 -> 1
    assert Dataset.from_arrays(x, [0] * 30, x, [1] * 30, num_classes=10).num_classes == 10


def test_a_saved_standardization_reads_back_equal_and_checks_its_inputs(tmp_path, key):
    rng = np.random.default_rng(seed_from(key))
    fitted = Standardization.fit("standard", rng.normal(2, 3, (20, 3, 2)))
    path = tmp_path / "standardization.npz"
    fitted.save(path)
    assert_same_standardization(Standardization.load(path), fitted)
    x = rng.normal(size=(4, 3, 2))
    np.testing.assert_array_equal(Standardization.load(str(path)).apply(x), fitted.apply(x))
    with pytest.raises(ValueError, match=r"Standardization \(standard\) of examples 3x2 cannot"):
        fitted.apply(np.zeros((4, 2, 3)))
    (tmp_path / "bad.npz").write_text("not an npz")
    with pytest.raises(ValueError, match="bad.npz: not a saved Standardization"):
        Standardization.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="standardize='zscore' is not allowed"):
        Standardization.fit("zscore", x)


# ---------------------------------------------------------------------------------- bad arrays


def test_bad_arrays_raise_one_line_naming_the_argument(key):
    rng = np.random.default_rng(seed_from(key))
    x, y = rng.normal(size=(10, 3)), rng.integers(0, 3, 10)
    nan = x.copy()
    nan[4, 2] = np.nan
    negative = y.copy()
    negative[7] = -2
    cases = [
        ((x, y[:9], x, y), {}, "x_train has 10 examples but y_train has 9 labels"),
        ((x, y, x[:, :2], y), {}, r"x_test examples have shape \(2,\), x_train's \(3,\)"),
        ((x, y + 0.5, x, y), {}, r"y_train\[0\] = .* has dtype float64"),
        ((x, y, x, negative), {}, r"y_test\[7\] = -2 is negative"),
        ((x, y, nan, y), {}, r"x_test\[4, 2\] = nan is not a finite float32"),
        ((x, y, x, y), {"x_val": x}, "x_val without y_val: give both, or neither"),
        (
            (x, y, x, y),
            {"num_classes": 2},
            r"y_train\[\d+\] = 2 is out of range: expected integers in \[0, 2\) \(num_",
        ),
        ((x[:0], y[:0], x, y), {}, "x_train has no examples"),
        ((x, y[:, None], x, y), {}, r"y_train has shape \(10, 1\): expected labels \(N,\)"),
    ]
    for arrays, options, message in cases:
        with pytest.raises(ValueError, match=f"^Dataset.from_arrays: {message}") as error:
            Dataset.from_arrays(*arrays, **options)
        assert "\n" not in str(error.value)
    # the options' errors name the option alone, as load_dataset's do
    with pytest.raises(ValueError, match=r"^validation_size=10 is not allowed"):
        Dataset.from_arrays(x, y, x, y, validation_size=10)
    with pytest.raises(ValueError, match=r"^standardize='z' is not allowed: use one of none, "):
        Dataset.from_arrays(x, y, x, y, standardize="z")
    with pytest.raises(ValueError, match=r"^num_classes=0 is not allowed"):
        Dataset.from_arrays(x, y, x, y, num_classes=0)


def test_bad_npz_files_name_the_file_and_the_array(tmp_path, key):
    rng = np.random.default_rng(seed_from(key))
    x, y = rng.normal(size=(8, 2)), rng.integers(0, 2, 8)
    good = {"x_train": x, "y_train": y, "x_test": x, "y_test": y}
    np.savez(tmp_path / "no_test.npz", x_train=x, y_train=y, x_test=x)
    np.savez(tmp_path / "typo.npz", **good, x_va1=x)
    np.savez(tmp_path / "objects.npz", **{**good, "y_test": np.array([1, None], dtype=object)})
    np.save(tmp_path / "one.npy", x)
    (tmp_path / "text.npz").write_text("x_train = 1")
    cases = [
        ("missing.npz", DatasetNotFoundError, "no such file: expected an npz file"),
        ("text.npz", ValueError, r"not an npz file \(not a zip archive of .npy arrays\)"),
        ("one.npy", ValueError, "holds a single .npy array, not an npz file"),
        ("no_test.npz", ValueError, r"no array 'y_test' \(it has x_train, y_train, x_test\)"),
        ("typo.npz", ValueError, "unexpected array 'x_va1': expected only x_train, y_train"),
        ("objects.npz", ValueError, "y_test cannot be read: it holds Python objects"),
    ]
    for name, kind, message in cases:
        with pytest.raises(kind, match=f"^{tmp_path / name}: {message}"):
            Dataset.from_npz(tmp_path / name)
    np.savez(tmp_path / "good.npz", **good, x_val=x[:3], y_val=y[:3])
    lines = []
    d = Dataset.from_npz(tmp_path / "good.npz", validation_size=0.5, log=lines.append)
    assert (len(d.train), len(d.validation), d.name, d.file) == (
        8,
        3,
        "npz",
        str(tmp_path / "good.npz"),
    )
    assert d.source == f"the npz file {tmp_path / 'good.npz'}" and "x_val in the file" in lines[0]


# ------------------------------------------------------------------------------------ train.py


def test_train_py_reads_an_npz_file_and_records_it(tmp_path, key):
    rng = np.random.default_rng(seed_from(key))
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = prototypes(rng, (96, 16, 24), (5,), 2)
    path = tmp_path / "mine.npz"
    np.savez(
        path,
        x_train=x_train * 100,
        y_train=y_train,
        x_val=x_val * 100,
        y_val=y_val,
        x_test=x_test * 100,
        y_test=y_test.astype(np.uint8),
    )
    workdir = tmp_path / "run"
    argv = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        f"--workdir={workdir}",
        "--config.dataset.name=npz",
        f"--config.dataset.path={path}",
        "--config.dataset.standardize=standard",
        "--config.model.kind=mlp",
        "--config.model.hidden=(8,)",
        "--config.epochs=1",
        "--config.batch_size=16",
        "--config.devices.strategy=single",
        "--config.compilation_cache_dir=",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"npz: read {path}: 96 train + 16 validation (x_val in the file), 24 test" in done.stdout
    recorded = {
        "name": "npz",
        "source": f"the npz file {path}",
        "file": str(path),
        "standardize": "standard",
        "input_shape": [5],
        "num_classes": 2,
        "examples": {"train": 96, "validation": 16, "test": 24},
    }
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["dataset"] == recorded and summary["source"] == recorded["source"]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["recorded"] == {"dataset": recorded}
    assert saved["dataset.path"] == str(path) and saved["dataset.standardize"] == "standard"
    expected = Dataset.from_npz(path, standardize="standard").standardization
    assert_same_standardization(trainer.saved_standardization(str(workdir)), expected)
    train64 = (x_train * 100).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(expected.shift, train64.mean(axis=0).astype(np.float32))
