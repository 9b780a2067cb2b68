"""jaxnet.data: real Fashion-MNIST, files written here, digits, synthetic, and the label checks.

Fashion-MNIST comes from the Debian package; the IDX, CIFAR-10 and TFDS files are written here.
"""

import gzip
import json
import os
import re
import socket
import time
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from jaxnet import data
from jaxnet.data import (
    DATASETS,
    Dataset,
    DatasetNotFoundError,
    Split,
    load_dataset,
    parse_idx,
    read_idx,
)

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
APT_HINT = "apt-get install dataset-fashion-mnist (CI installs it)"
_IDX_CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype("i2"): 0x0B,
    np.dtype("i4"): 0x0C,
    np.dtype("f4"): 0x0D,
    np.dtype("f8"): 0x0E,
}


def seed_from(key) -> int:
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def idx_bytes(array) -> bytes:
    array = np.asarray(array)
    header = (
        bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
        + np.asarray(array.shape, ">u4").tobytes()
    )
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array):
    raw = idx_bytes(array)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(raw)
    return path


def tiny_mnist(rng, n_train=12, n_test=5, shape=(4, 3)):
    """Distinct uint8 images (the first pixel is the index) with labels 0..9."""

    def split(n, offset):
        images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        images[:, 0, 0] = np.arange(offset, offset + n)
        return images, (np.arange(n) % 10).astype(np.uint8)

    return split(n_train, 0), split(n_test, 100)


def write_mnist_dir(
    directory,
    train,
    test,
    names=(
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ),
):
    os.makedirs(directory, exist_ok=True)
    for name, array in zip(names, (*train, *test)):
        write_idx(os.path.join(directory, name), array)
    return str(directory)


def rows(split, scale=255):
    """Each example as one byte string (label, then pixels), sorted.

    A Split (or uint8 images, labels) as a multiset.
    """
    images, labels = (
        (np.rint(split.images * scale), split.labels) if isinstance(split, Split) else split
    )
    pixels = np.asarray(images, np.uint8).reshape(len(labels), -1)
    table = np.ascontiguousarray(
        np.concatenate([np.asarray(labels, np.uint8)[:, None], pixels], axis=1)
    )
    return np.sort(table.view(f"V{table.shape[1]}").ravel())


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a name fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def empty_tfds_dir(tmp_path, monkeypatch):
    """TFDS's default data dir points at an empty folder, whatever the machine has prepared."""
    folder = tmp_path / "tfds_default"
    folder.mkdir()
    monkeypatch.setenv("TFDS_DATA_DIR", str(folder))
    return str(folder)


# --------------------------------------------------------------------- real Fashion-MNIST (Debian)


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if not os.path.isdir(DEBIAN_DIR):
        pytest.skip(f"no {DEBIAN_DIR}: {APT_HINT}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TFDS_DATA_DIR", str(tmp_path_factory.mktemp("empty_tfds")))
        start = time.perf_counter()
        dataset = load_dataset("fashion_mnist", log=None)
        return dataset, time.perf_counter() - start


def test_fashion_mnist_from_the_debian_package(fashion):
    d, seconds = fashion
    print(f"Fashion-MNIST loaded in {seconds:.2f} s")
    assert seconds < 5
    assert d.name == "fashion_mnist" and d.num_classes == 10 and d.input_shape == (28, 28, 1)
    assert d.source == f"IDX files in {DEBIAN_DIR}"
    assert d.train.images.shape == (54000, 28, 28, 1) and d.validation.images.shape == (
        6000,
        28,
        28,
        1,
    )
    assert d.test.images.shape == (10000, 28, 28, 1) and d.test.labels.shape == (10000,)
    for split in (d.train, d.validation, d.test):
        assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
        assert split.images.min() == 0.0 and split.images.max() == 1.0
        assert set(np.unique(np.rint(split.images[:50] * 255) / 255 - split.images[:50])) <= {
            0.0
        }  # k / 255 exactly
    full_train = np.bincount(np.concatenate([d.train.labels, d.validation.labels]), minlength=10)
    assert full_train.tolist() == [6000] * 10 and np.bincount(d.test.labels).tolist() == [1000] * 10
    assert d.test.labels[:10].tolist() == [
        9,
        2,
        1,
        1,
        6,
        1,
        4,
        6,
        5,
        7,
    ]  # the test split, in file order


def test_fashion_mnist_splits_reassemble_the_files(fashion):
    d, _ = fashion
    images = read_idx(f"{DEBIAN_DIR}/train-images-idx3-ubyte.gz")
    labels = read_idx(f"{DEBIAN_DIR}/train-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and labels[:10].tolist() == [
        9,
        0,
        0,
        3,
        0,
        2,
        7,
        2,
        5,
        5,
    ]
    both = Split(
        np.concatenate([d.train.images, d.validation.images]),
        np.concatenate([d.train.labels, d.validation.labels]),
    )
    assert (rows(both) == rows((images, labels))).all()
    test_images = read_idx(f"{DEBIAN_DIR}/t10k-images-idx3-ubyte.gz")
    assert (
        d.test.images[..., 0] == test_images.astype(np.float32) / 255
    ).all()  # untouched, in order


def test_fashion_mnist_split_depends_on_the_seed_only(fashion, empty_tfds_dir):
    d, _ = fashion
    again = load_dataset("fashion_mnist", seed=0, log=None)
    assert (again.validation.images == d.validation.images).all() and (
        again.train.labels == d.train.labels
    ).all()
    other = load_dataset("fashion_mnist", seed=1, validation_size=6000, log=None)
    assert len(other.validation) == 6000 and (other.test.images == d.test.images).all()
    assert (rows(other.validation) != rows(d.validation)).any()


# --------------------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_returns_the_written_array(tmp_path, key, suffix):
    rng = np.random.default_rng(seed_from(key))
    for dtype in ("u1", "i1", "i2", "i4", "f4", "f8"):
        array = (rng.standard_normal((3, 2, 4)) * 100).astype(dtype)
        got = read_idx(write_idx(tmp_path / f"a-{dtype}{suffix}", array))
        assert got.dtype == np.dtype(dtype) and got.shape == (3, 2, 4) and (got == array).all()
    labels = read_idx(write_idx(tmp_path / f"labels{suffix}", np.array([0, 9, 5], np.uint8)))
    assert labels.tolist() == [0, 9, 5]
    assert parse_idx(bytes.fromhex("00000801 00000002 0703")).tolist() == [7, 3]


def test_malformed_idx_files_are_named_in_the_error(tmp_path):
    good = idx_bytes(np.zeros((2, 3, 3), np.uint8))
    cases = {
        "bad-magic": b"\x00\x00\x07\x03" + good[4:],  # 0x07 is no IDX type
        "png": b"\x89PNG\r\n\x1a\n" + good,
        "truncated": good[:-1],
        "trailing": good + b"\x00",
        "short-header": good[:9],
        "empty": b"",
    }
    for name, raw in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        with pytest.raises(ValueError, match=str(path)):
            read_idx(path)
    with pytest.raises(ValueError, match="truncated IDX file"):
        read_idx(tmp_path / "truncated")
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(ValueError, match=f"{cut}: corrupt gzip"):
        read_idx(cut)


def test_mnist_from_a_user_data_dir(tmp_path, key, no_network):
    rng = np.random.default_rng(seed_from(key))
    train, test = tiny_mnist(rng)
    folder = write_mnist_dir(tmp_path / "idx", train, test)
    lines = []
    d = load_dataset("mnist", data_dir=folder, validation_size=3, log=lines.append)
    assert (
        d.source == f"IDX files in {folder}" and d.input_shape == (4, 3, 1) and d.num_classes == 10
    )
    assert (len(d.train), len(d.validation), len(d.test)) == (9, 3, 5)
    assert (d.test.images[..., 0] == test[0] / np.float32(255)).all() and (
        d.test.labels == test[1]
    ).all()
    assert (
        rows(
            Split(
                np.concatenate([d.train.images, d.validation.images]),
                np.concatenate([d.train.labels, d.validation.labels]),
            )
        )
        == rows(train)
    ).all()
    # order: the prepared TFDS data in data_dir first, then the IDX files; the second line names
    # the one used
    assert d.tried == (
        f"TFDS prepared data in {folder}: skipped, "
        "no prepared mnist (no mnist/<version>/dataset_info.json)",
        f"IDX files in {folder}: used",
    )
    assert lines[0] == (
        f"mnist: sources in order: 1) TFDS prepared data in {folder}; 2) IDX files in {folder}; "
        f"3) IDX files in {folder}/mnist"
    )
    assert len(lines) == 2 and lines[1].startswith(
        f"mnist: using IDX files in {folder}: 9 train + 3 validation"
    )


def test_idx_files_in_data_dir_subfolder_with_dotted_names(tmp_path, key):
    train, test = tiny_mnist(np.random.default_rng(seed_from(key)))
    names = (
        "train-images.idx3-ubyte",
        "train-labels.idx1-ubyte",
        "t10k-images.idx3-ubyte.gz",
        "t10k-labels.idx1-ubyte.gz",
    )
    write_mnist_dir(tmp_path / "mnist", train, test, names)
    d = load_dataset("mnist", data_dir=str(tmp_path), validation_size=0, log=None)
    assert (
        d.source == f"IDX files in {tmp_path}/mnist"
        and len(d.validation) == 0
        and d.validation.images.shape == (0, 4, 3, 1)
    )
    assert [t.rsplit(": ", 1)[1] for t in d.tried] == [
        "skipped, no prepared mnist (no mnist/<version>/dataset_info.json)",
        "skipped, no IDX files there",
        "used",
    ]
    assert (d.train.labels == train[1]).all()  # validation_size=0: the training split in file order


def test_inconsistent_idx_files_raise_naming_the_file(tmp_path, key):
    rng = np.random.default_rng(seed_from(key))
    train, test = tiny_mnist(rng)
    labels = test[1].copy()
    first, value = int(rng.integers(len(labels))), int(rng.integers(10, 256))
    labels[first], labels[first:][1:] = value, rng.integers(10, 256, len(labels) - first - 1)
    folder = write_mnist_dir(tmp_path / "labels", train, (test[0], labels))
    with pytest.raises(ValueError) as error:
        load_dataset("mnist", data_dir=folder, log=None)
    assert str(error.value) == (
        f"{folder}/t10k-labels-idx1-ubyte: labels[{first}] = {value} is out of range: "
        "expected integers in [0, 10)"
    )
    folder = write_mnist_dir(tmp_path / "counts", train, (test[0], test[1][:4]))
    with pytest.raises(
        ValueError,
        match="t10k-images-idx3-ubyte has 5 images but .*t10k-labels-idx1-ubyte has 4 labels",
    ):
        load_dataset("mnist", data_dir=folder, log=None)
    folder = write_mnist_dir(tmp_path / "swapped", (train[1], train[0]), test)
    with pytest.raises(ValueError, match=f"{folder}/train-images-idx3-ubyte.gz: expected images"):
        load_dataset("mnist", data_dir=folder, log=None)


def test_missing_mnist_fails_fast_without_network(tmp_path, empty_tfds_dir, no_network):
    train, test = tiny_mnist(np.random.default_rng(0))
    partial = write_mnist_dir(tmp_path / "partial", train, test)
    os.remove(os.path.join(partial, "t10k-labels-idx1-ubyte"))
    for data_dir, places in [
        (None, [f"TFDS prepared data in {empty_tfds_dir}"]),
        (
            partial,
            [
                f"TFDS prepared data in {partial}",
                f"IDX files in {partial}: skipped, incomplete: t10k-labels-idx1-ubyte[.gz] missing",
                f"IDX files in {partial}/mnist: skipped, no such directory",
            ],
        ),
    ]:
        start = time.perf_counter()
        with pytest.raises(DatasetNotFoundError) as error:
            load_dataset("mnist", data_dir=data_dir, log=None)
        assert time.perf_counter() - start < 10
        message = str(error.value)
        assert isinstance(error.value, FileNotFoundError) and message.startswith(
            "dataset 'mnist' not found"
        )
        assert all(place in message for place in places), message
        for hint in (
            "train-images-idx3-ubyte",
            "--config.dataset.data_dir=DIR",
            "tfds build mnist --file_format=array_record",
        ):
            assert hint in message


def test_missing_fashion_mnist_and_cifar10_say_how_to_get_them(
    tmp_path, monkeypatch, empty_tfds_dir, no_network
):
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion_mnist", (str(tmp_path / "no-package"),))
    with pytest.raises(
        DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"
    ) as error:
        load_dataset("fashion_mnist", log=None)
    assert f"IDX files in {tmp_path}/no-package: skipped, no such directory" in str(error.value)
    with pytest.raises(
        DatasetNotFoundError, match="tfds build cifar10 --file_format=array_record"
    ) as error:
        load_dataset("cifar10", data_dir=str(tmp_path), log=None)
    assert (
        f"CIFAR-10 binary batches in {tmp_path}/cifar-10-batches-bin: skipped, no such directory"
        in str(error.value)
    )


# ------------------------------------------------------------------------------- CIFAR-10 and TFDS


def test_cifar10_binary_batches(tmp_path, key):
    rng = np.random.default_rng(seed_from(key))
    records = {f: rng.integers(0, 256, (2, 3073), dtype=np.uint8) for f in data.CIFAR10_FILES}
    for f, r in records.items():
        r[:, 0] %= 10
        (tmp_path / f).write_bytes(r.tobytes())
    d = load_dataset("cifar10", data_dir=str(tmp_path), validation_size=0, log=None)
    assert d.source == f"CIFAR-10 binary batches in {tmp_path}" and d.input_shape == (32, 32, 3)
    assert (len(d.train), len(d.test)) == (10, 2)
    first = records["data_batch_1.bin"][0]
    assert d.train.labels[0] == first[0]
    row_0_column_1 = first[[1 + 1, 1 + 1024 + 1, 1 + 2048 + 1]]  # R, G, B
    assert (d.train.images[0, 0, 1] * 255 == row_0_column_1).all()
    assert (d.test.labels == records["test_batch.bin"][:, 0]).all()
    name = str(rng.choice(data.CIFAR10_FILES))
    index, value = int(rng.integers(2)), int(rng.integers(10, 256))
    records[name][index, 0] = value
    (tmp_path / name).write_bytes(records[name].tobytes())
    with pytest.raises(ValueError) as error:
        load_dataset("cifar10", data_dir=str(tmp_path), log=None)
    assert str(error.value) == (
        f"{tmp_path}/{name}: labels[{index}] = {value} is out of range: "
        "expected integers in [0, 10)"
    )
    records[name][index, 0] = 0  # mended, so that only the truncated file below is wrong
    (tmp_path / name).write_bytes(records[name].tobytes())
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(ValueError, match=f"{tmp_path}/test_batch.bin: not a CIFAR-10 binary batch"):
        load_dataset("cifar10", data_dir=str(tmp_path), log=None)


def prepare_tfds_mnist(data_dir, train, test):
    """A tiny 'mnist' prepared by TFDS in the array_record format.

    Without TensorFlow or network access.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    image_lib = pytest.importorskip(
        "PIL.Image", reason="pip install pillow: TFDS decodes images with it"
    )
    import io

    from tensorflow_datasets.image_classification.mnist import MNIST

    def png(image):
        buffer = io.BytesIO()
        image_lib.fromarray(image[..., 0]).save(buffer, format="png")
        return buffer.getvalue()

    class TinyMnist(MNIST, skip_registration=True):
        name = "mnist"

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(*train),
                "test": self._generate_examples(*test),
            }

        def _generate_examples(self, images, labels):
            for i, (x, y) in enumerate(zip(images, labels)):
                yield i, {"image": png(x), "label": int(y)}

    tfds.disable_progress_bar()
    TinyMnist(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def test_prepared_tfds_data_comes_first(tmp_path, key, no_network):
    train, test = tiny_mnist(np.random.default_rng(seed_from(key)), shape=(28, 28))
    prepare_tfds_mnist(tmp_path, (train[0][..., None], train[1]), (test[0][..., None], test[1]))
    write_mnist_dir(
        tmp_path, tiny_mnist(np.random.default_rng(1))[0], test
    )  # also IDX files: TFDS wins
    d = load_dataset("mnist", data_dir=str(tmp_path), validation_size=0.25, log=None)
    assert d.source == f"TFDS prepared data in {tmp_path}" and d.tried == (
        f"TFDS prepared data in {tmp_path}: used",
    )
    assert d.input_shape == (28, 28, 1) and (len(d.train), len(d.validation), len(d.test)) == (
        9,
        3,
        5,
    )
    both = Split(
        np.concatenate([d.train.images, d.validation.images]),
        np.concatenate([d.train.labels, d.validation.labels]),
    )
    assert (rows(both) == rows(train)).all() and (rows(d.test) == rows(test)).all()

    info = (
        tmp_path / "mnist" / "3.0.1" / "dataset_info.json"
    )  # as if prepared by tfds.load: TFRecord needs TensorFlow
    info.write_text(json.dumps({**json.loads(info.read_text()), "fileFormat": "tfrecord"}))
    d = load_dataset("mnist", data_dir=str(tmp_path), log=None)
    assert d.source == f"IDX files in {tmp_path}"
    assert (
        "prepared as tfrecord, which needs TensorFlow; prepare it with --file_format=array_record"
        in d.tried[0]
    )


# ---------------------------------------------------------------------------- digits and synthetic


def test_digits_from_scikit_learn(key):
    datasets = pytest.importorskip("sklearn.datasets", reason="pip install scikit-learn")
    seed = seed_from(key)
    d = load_dataset("digits", seed=seed, log=None)
    assert (
        d.input_shape == (8, 8, 1)
        and d.num_classes == 10
        and d.source.startswith("scikit-learn load_digits")
    )
    assert len(d.train) + len(d.validation) + len(d.test) == 1797
    assert len(d.test) == 359 and len(d.validation) == round(0.1 * 1438)
    everything = Split(
        np.concatenate([d.train.images, d.validation.images, d.test.images]),
        np.concatenate([d.train.labels, d.validation.labels, d.test.labels]),
    )
    digits = datasets.load_digits()
    assert (rows(everything, 16) == rows((digits.images, digits.target))).all()
    assert everything.images.min() == 0 and everything.images.max() == 1
    per_class = np.bincount(digits.target)
    assert (np.bincount(d.test.labels) == np.round(0.2 * per_class)).all()  # stratified
    other = load_dataset("digits", seed=seed + 1, log=None)
    assert (other.test.images == d.test.images).all() and (
        other.test.labels == d.test.labels
    ).all()  # fixed test split
    assert (rows(other.validation, 16) != rows(d.validation, 16)).any()


def test_synthetic_is_deterministic_shaped_and_learnable(key):
    seed = seed_from(key)
    d = load_dataset(
        "synthetic",
        seed=seed,
        validation_size=0.2,
        synthetic_shape=(6, 5, 2),
        synthetic_classes=3,
        synthetic_size=(300, 90),
        log=None,
    )
    assert d.input_shape == (6, 5, 2) and d.num_classes == 3 and d.source.endswith(f"seed {seed}")
    assert (len(d.train), len(d.validation), len(d.test)) == (240, 60, 90)
    assert np.bincount(d.test.labels).tolist() == [30, 30, 30]
    assert np.bincount(np.concatenate([d.train.labels, d.validation.labels])).tolist() == [
        100,
        100,
        100,
    ]
    again = load_dataset(
        "synthetic",
        seed=seed,
        validation_size=0.2,
        synthetic_shape=[6, 5, 2],
        synthetic_classes=3,
        synthetic_size=(300, 90),
        log=None,
    )
    for a, b in [(d.train, again.train), (d.validation, again.validation), (d.test, again.test)]:
        assert (a.images == b.images).all() and (a.labels == b.labels).all()
    other = load_dataset(
        "synthetic",
        seed=seed + 1,
        validation_size=0.2,
        synthetic_shape=(6, 5, 2),
        synthetic_classes=3,
        synthetic_size=(300, 90),
        log=None,
    )
    assert not (other.test.images == d.test.images).all()

    d = load_dataset(
        "synthetic", seed=seed, log=None
    )  # the defaults: 28x28x1, 10 classes, 2048 / 512
    assert d.input_shape == (28, 28, 1) and (len(d.train) + len(d.validation), len(d.test)) == (
        2048,
        512,
    )
    assert 0 <= d.train.images.min() and d.train.images.max() <= 1
    x, t = d.train.images.reshape(len(d.train), -1), d.test.images.reshape(len(d.test), -1)
    means = np.stack([x[d.train.labels == c].mean(0) for c in range(10)])
    predicted = np.argmin(((t[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == d.test.labels).mean() > 0.9  # nearest class mean


# ----------------------------------------------------------------------------------- bad arguments


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(
        ValueError,
        match="unknown dataset 'imagenet': "
        "use one of mnist, fashion_mnist, cifar10, digits, synthetic",
    ):
        load_dataset("imagenet")
    assert DATASETS == ("mnist", "fashion_mnist", "cifar10", "digits", "synthetic")
    small = dict(synthetic_size=(100, 10), log=None)
    for bad in (1.5, -1, 1.0, -0.1, float("nan"), True, "0.1", None):
        with pytest.raises(
            ValueError, match=r"validation_size=.* is not allowed: use a fraction 0 <= f < 1"
        ):
            load_dataset("synthetic", validation_size=bad, **small)
    for too_many in (100, 1000, 0.999):
        with pytest.raises(
            ValueError,
            match=rf"validation_size={too_many} .* "
            r"a count 0 <= n < 100 \(the training split's size\)",
        ):
            load_dataset("synthetic", validation_size=too_many, **small)
    assert len(load_dataset("synthetic", validation_size=99, **small).train) == 1
    assert len(load_dataset("synthetic", validation_size=0.0, **small).validation) == 0
    with pytest.raises(ValueError, match="seed=-1 is not allowed"):
        load_dataset("synthetic", seed=-1, **small)
    with pytest.raises(
        ValueError, match=r"synthetic_shape=\(28, 28\) is not allowed: use \(H, W, C\)"
    ):
        load_dataset("synthetic", synthetic_shape=(28, 28), **small)
    with pytest.raises(ValueError, match="synthetic_classes=1 is not allowed"):
        load_dataset("synthetic", synthetic_classes=1, **small)
    with pytest.raises(ValueError, match=r"Split needs examples \(N, \.\.\.\) and labels \(N,\)"):
        Split(np.zeros((3, 2, 2, 1)), np.zeros(2))
    split = Split(np.zeros((3, 2, 2, 1)), [0, 1, 2])
    assert split.images.dtype == np.float32 and split.labels.dtype == np.int32 and len(split) == 3


# ------------------------------------------------------------------------ labels where data enters


def toy_splits(rng, k, shape=(3, 2, 1)):
    """Train, validation and test Splits of random sizes with labels in [0, k)."""

    def split(n):
        return Split(rng.random((n, *shape)), rng.integers(0, k, n))

    return {name: split(int(rng.integers(3, 40))) for name in data._SPLITS}


def out_of_range(rng, k, kind):
    return {
        "num_classes": k,
        "minus_one": -1,
        "far_above": int(rng.integers(k + 1, 2**31 - 1)),
        "far_below": -int(rng.integers(2, 2**31)),
    }[kind]


@pytest.mark.parametrize("kind", ["num_classes", "minus_one", "far_above", "far_below"])
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_a_dataset_refuses_labels_out_of_range(key, split, kind):
    rng = np.random.default_rng(seed_from(key))
    k = int(rng.integers(2, 12))
    splits = toy_splits(rng, k)
    labels = splits[split].labels.copy()
    index = int(rng.integers(len(labels)))
    value = out_of_range(rng, k, kind)
    labels[index] = value
    labels[index + 1 :] = rng.integers(k, 2 * k + 1, len(labels) - index - 1)  # later bad ones
    splits[split] = Split(splits[split].images, labels)  # a Split does not know k: it accepts them
    with pytest.raises(ValueError) as error:
        Dataset("toy", "built in the test", (), num_classes=k, **splits)
    assert str(error.value) == (
        f"Dataset 'toy': {split} labels[{index}] = {value} is out of range: "
        f"expected integers in [0, {k})"
    )


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_float_and_bool_labels_are_refused_not_truncated(key, split):
    rng = np.random.default_rng(seed_from(key))
    k = int(rng.integers(2, 12))
    splits = toy_splits(rng, k)
    images, labels = splits[split].images, splits[split].labels
    floats = labels.astype(np.float64)
    index = int(rng.integers(len(labels)))
    floats[index] += float(rng.uniform(0.05, 0.95))  # 1.7 would have become 1
    floats[index + 1 :] += 0.5
    with pytest.raises(ValueError) as error:
        Split(images, floats)
    assert str(error.value) == (
        f"Split labels[{index}] = {floats[index].item()!r} has dtype float64: "
        "expected integer class indices"
    )
    whole = labels.astype(np.float32)  # whole numbers too: the dtype says these are not classes
    with pytest.raises(
        ValueError, match=re.escape(f"Split labels[0] = {whole[0].item()!r} has dtype float32")
    ):
        Split(images, whole)
    bools = rng.integers(0, 2, len(labels)).astype(bool)
    with pytest.raises(ValueError) as error:
        Split(images, bools)
    assert str(error.value) == (
        f"Split labels[0] = {bool(bools[0])} has dtype bool: expected integer class indices"
    )
    # a split given as any object with images and labels becomes a Split, and its errors name it
    for bad, first in [(floats, index), (bools, 0)]:
        splits[split] = SimpleNamespace(images=images, labels=bad)
        with pytest.raises(ValueError) as error:
            Dataset("toy", "built in the test", (), num_classes=k, **splits)
        assert str(error.value) == (
            f"Dataset 'toy': {split} labels[{first}] = {bad[first].item()!r} has dtype "
            f"{bad.dtype}: expected integers in [0, {k})"
        )
    splits[split] = SimpleNamespace(images=images, labels=labels.astype(np.uint8))
    d = Dataset("toy", "built in the test", (), num_classes=k, **splits)
    assert isinstance(getattr(d, split), Split) and getattr(d, split).labels.dtype == np.int32


def test_integer_labels_are_cast_to_int32_once_they_fit(key):
    rng = np.random.default_rng(seed_from(key))
    images = rng.random((int(rng.integers(3, 30)), 2, 2, 1))
    labels = rng.integers(0, 10, len(images))
    for dtype in ("i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8"):
        split = Split(images, labels.astype(dtype))
        assert split.labels.dtype == np.int32 and (split.labels == labels).all()
    index = int(rng.integers(len(images)))
    for value, dtype in [(2**31, "i8"), (-(2**31) - 1, "i8"), (2**32 + 3, "u8"), (2**31, "u4")]:
        wide = labels.astype(dtype)
        wide[index] = value  # int32 would wrap it round into range
        with pytest.raises(ValueError) as error:
            Split(images, wide)
        assert str(error.value) == (
            f"Split labels[{index}] = {value} does not fit in int32: expected integer class indices"
        )


def test_images_must_be_finite_real_numbers(key):
    rng = np.random.default_rng(seed_from(key))
    images = rng.random((int(rng.integers(2, 20)), 3, 4, 2))
    labels = np.zeros(len(images), np.int32)
    where = tuple(int(rng.integers(n)) for n in images.shape)
    for value in (np.nan, np.inf, -np.inf, 1e39):  # 1e39 is beyond float32
        bad = images.copy()
        bad[where] = value
        with pytest.raises(ValueError) as error:
            Split(bad, labels)
        assert str(error.value) == (
            f"Split images[{', '.join(map(str, where))}] = {value} is not a finite float32: "
            "expected finite real numbers"
        )
    for bad in (images.astype(complex), images.astype(str), images.astype(object)):
        with pytest.raises(
            ValueError, match=f"Split images have dtype {re.escape(str(bad.dtype))}"
        ):
            Split(bad, labels)
    split = Split((images * 255).astype(np.uint8), labels)  # any real dtype is cast to float32
    assert split.images.dtype == np.float32
    assert Split(np.zeros((0, 2, 2, 1)), []).labels.dtype == np.int32  # np.asarray([]): float64


def test_loaded_datasets_pass_the_checks_and_bad_num_classes_is_refused(key):
    d = load_dataset(
        "synthetic", seed=seed_from(key), synthetic_classes=3, synthetic_size=(60, 9), log=None
    )
    for split in (d.train, d.validation, d.test):
        assert split.labels.dtype == np.int32 and 0 <= split.labels.min() <= split.labels.max() < 3
    for bad in (0, -1, 2.0, True, "10"):
        with pytest.raises(ValueError, match=rf"Dataset 'synthetic': num_classes={bad!r} is not"):
            Dataset(d.name, d.source, d.tried, d.train, d.validation, d.test, bad)
    with pytest.raises(TypeError, match="Dataset 'synthetic': test is a tuple: expected a Split"):
        Dataset(d.name, d.source, d.tried, d.train, d.validation, (d.test.images, d.test.labels), 3)
