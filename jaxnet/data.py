"""Datasets as numpy arrays on the host.

MNIST, Fashion-MNIST, CIFAR-10, scikit-learn's digits, a synthetic problem, and a user's own
arrays: `Dataset.from_arrays(x_train, y_train, x_test, y_test)` in Python, or
`Dataset.from_npz(FILE)` for an npz file holding those arrays (train.py's
--config.dataset.name=npz --config.dataset.path=FILE). Examples may have any shape (N, ...):
vectors (N, d), sequences (N, T, C), images (N, H, W, C).
`load_dataset(name)` tries a fixed list of sources for each name, in order; local data always
comes first, and only `download=True` (train.py's default) reaches for the network:

1. a TFDS dataset already prepared in the array_record format, in `data_dir` or else in TFDS's
   default data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets). It is read with
   `tfds.data_source`, which needs pillow to decode images but not TensorFlow. TFDS is imported
   only once a prepared dataset is found on disk.
2. local files: the four MNIST-format IDX files, gzipped or not, in `data_dir` or
   `data_dir/<name>`, and for fashion_mnist the Debian package's
   /usr/share/datasets/fashion-mnist. For cifar10, the CIFAR-10 binary version
   (data_batch_1.bin ... test_batch.bin) in `data_dir` or `data_dir/cifar-10-batches-bin`.
3. with `download=True`, for mnist, fashion_mnist and cifar10: the official files in the download
   cache (`cache_dir`, else $JAXNET_DATASETS_CACHE, else ~/.cache/jaxnet/datasets), downloaded
   there first if missing, from the official site or `mirror` (see `jaxnet.download`: each file
   is checked against its SHA-256 and renamed into place whole). The host is probed first, so an
   offline machine fails within seconds, saying the host is unreachable.
4. 'digits': scikit-learn's `load_digits`, whose data ships inside the package.
5. 'synthetic': class prototype images plus Gaussian noise, generated from the seed.

If no source has the data, `DatasetNotFoundError` is raised. Its message lists every place
looked (and why the download failed) and says how to get the data. By default the built-in
datasets' images are float32 in [0, 1] (divided by the format's maximum, 255; 16 for digits), in
NHWC layout; labels are int32 in [0, num_classes). The validation split is held out of the
training split with a permutation drawn from `seed`. The test split is never touched.

Standardisation happens in one place, a `Standardization` kept on the Dataset so that new raw
inputs can be prepared the same way (`dataset.standardization.apply(x)`; the trainer saves it in
the workdir): "none" leaves the inputs as they are, "unit" divides them by the training split's
largest absolute value, "standard" subtracts the training split's mean and divides by its
standard deviation, per element of the example shape (a deviation of 0 counts as 1). Statistics
come from the training split only (after the validation split is held out) and are applied to
every split.

Labels are checked where data enters: each source's files (naming the file and the first bad
label), every `Split` (an integer dtype, finite images of a real dtype) and every `Dataset`,
including one a user builds (each split's labels in [0, num_classes)). A bad label raises a
ValueError naming the split, the index and the value, e.g.
"Dataset 'toy': train labels[17] = 12 is out of range: expected integers in [0, 10)".
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from jaxnet import paths
from jaxnet.download import ENV_VAR as _CACHE_ENV_VAR
from jaxnet.download import OFFICIAL as _OFFICIAL
from jaxnet.download import DownloadError as _DownloadError
from jaxnet.download import cache_dir as _cache_dir
from jaxnet.download import fetch as _fetch
from jaxnet.download import source_url as _source_url

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetNotFoundError",
    "FILE_DATASETS",
    "STANDARDIZE",
    "Split",
    "Standardization",
    "describe_dataset",
    "load_dataset",
    "parse_idx",
    "read_idx",
]

DATASETS = ("mnist", "fashion_mnist", "cifar10", "digits", "synthetic")
# Datasets that are a user's file, not a name load_dataset knows: train.py reads them from
# --config.dataset.path.
FILE_DATASETS = ("npz",)

# Directories searched for IDX files after `data_dir` (tests monkeypatch this).
SYSTEM_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}

# The standard MNIST file names; each may also end in .gz, or have '.idx' for '-idx'
# (train-images.idx3-ubyte).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)

# digits has no official test split: a stratified 20% of each class, drawn with a fixed seed, is
# the test split.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0

# The standard deviation of the Gaussian noise added to each pixel of the prototypes.
SYNTHETIC_NOISE = 0.5

_NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "digits": 10}

_IDX_TFDS_HINT = (
    "or, on a machine with network access and TensorFlow, run "
    "`tfds build {name} --file_format=array_record --data_dir=DIR`, copy DIR here and pass "
    "data_dir=DIR the same way (reading it needs `pip install pillow`)"
)
_HOW_TO_GET = {
    "mnist": (
        "put the four MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each gzipped or not) in a directory DIR "
        "and pass data_dir=DIR (--config.dataset.data_dir=DIR); "
        + _IDX_TFDS_HINT.format(name="mnist")
        + ". Offline, --config.dataset.name=fashion_mnist works after "
        "`apt-get install dataset-fashion-mnist`."
    ),
    "fashion_mnist": (
        "run `apt-get install dataset-fashion-mnist` (Debian/Ubuntu: the IDX files in "
        "/usr/share/datasets/fashion-mnist); or put the four Fashion-MNIST IDX files "
        "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz) in a directory DIR and pass data_dir=DIR "
        "(--config.dataset.data_dir=DIR); " + _IDX_TFDS_HINT.format(name="fashion_mnist") + "."
    ),
    "cifar10": (
        "on a machine with network access and TensorFlow, run "
        "`tfds build cifar10 --file_format=array_record --data_dir=DIR`, copy DIR here and pass "
        "data_dir=DIR (--config.dataset.data_dir=DIR; reading it needs `pip install pillow`); "
        "or unpack the CIFAR-10 binary version "
        "(https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz: data_batch_1.bin ... "
        "data_batch_5.bin, test_batch.bin) into DIR and pass data_dir=DIR."
    ),
    "digits": "run `pip install scikit-learn` (load_digits reads data shipped inside the package).",
}
_DOWNLOAD_HINT = (
    " Or, on a machine that reaches {url} (or a mirror: --config.dataset.mirror=URL), let "
    "train.py download it (--config.dataset.download=True, the default; load_dataset(..., "
    "download=True)) into the cache (--config.dataset.cache_dir=DIR or $" + _CACHE_ENV_VAR + ")."
)


class DatasetNotFoundError(FileNotFoundError):
    """No source has the dataset; the message lists every place looked and how to get the data."""


_SPLITS = ("train", "validation", "test")


def _split_images(images, who: str, name: str = "images") -> np.ndarray:
    """Inputs as float32, or ValueError unless they are finite numbers of a real (or bool) dtype."""
    if images.dtype.kind not in "biuf":
        raise ValueError(
            f"{who}{name} have dtype {images.dtype}: expected real numbers (float, int or bool)"
        )
    with np.errstate(over="ignore"):  # a float64 beyond float32's range: reported below
        out = np.asarray(images, np.float32)
    # min and max are NaN or infinite if any value is (a float64 too large for float32 included)
    if images.dtype.kind == "f" and out.size and not np.isfinite([out.min(), out.max()]).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
        raise ValueError(
            f"{who}{name}[{', '.join(map(str, where))}] = {images[where].item()} is not a finite "
            "float32: expected finite real numbers"
        )
    return out


def _split_labels(labels, who: str, expected: str, name: str = "labels") -> np.ndarray:
    """Labels as int32, or ValueError naming the first label if their dtype is not an integer one.

    Integer labels are checked to fit in int32 before the cast; floats and bools are refused,
    even whole numbers, rather than truncated. Empty labels of any real dtype (np.asarray([]) is
    float64) are accepted.
    """
    kind = labels.dtype.kind
    if kind in "iu":
        if not np.can_cast(labels.dtype, np.int32):
            info = np.iinfo(np.int32)
            outside = labels > info.max
            if kind == "i":
                outside |= labels < info.min
            if outside.any():
                i = int(np.argmax(outside))
                raise ValueError(
                    f"{who}{name}[{i}] = {labels[i]} does not fit in int32: expected {expected}"
                )
        return labels.astype(np.int32, copy=False)
    if labels.size == 0:
        if kind in "bf":
            return labels.astype(np.int32)
        raise ValueError(f"{who}{name} have dtype {labels.dtype}: expected {expected}")
    i = 0
    if kind == "f":  # name the first label that is not a whole number, if any is not
        whole = np.isfinite(labels) & (labels == np.round(labels))
        i = int(np.argmax(~whole))
    raise ValueError(
        f"{who}{name}[{i}] = {labels[i].item()!r} has dtype {labels.dtype}: expected {expected}"
    )


def _split_arrays(images, labels, who: str, expected: str) -> tuple[np.ndarray, np.ndarray]:
    """(inputs float32, labels int32) of one split, or ValueError whose message starts with who."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim < 1 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{who}needs examples (N, ...) and labels (N,); got {images.shape} and {labels.shape}"
        )
    return _split_images(images, who), _split_labels(labels, who, expected)


def _shape_text(shape) -> str:
    """'28x28x1' for an example shape; 'scalar' for ()."""
    return "x".join(map(str, shape)) or "scalar"


# --------------------------------------------------------------------------- standardisation

STANDARDIZE = ("none", "unit", "standard")


def _frozen(value) -> np.ndarray:
    out = np.array(value, np.float32)
    out.flags.writeable = False
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Standardization:
    """x -> (x - shift) / scale in float32, shift and scale of shape () or the example shape.

    `fit(method, x_train)` draws them from a training split; `apply(x)` prepares any inputs,
    a batch (N, ...) or one example, the same way; `save(path)` and `load(path)` keep them in an
    npz file (local or gs://, through jaxnet.paths).
    """

    method: str  # "none", "unit" or "standard": how shift and scale were drawn
    shift: np.ndarray = dataclasses.field(default_factory=lambda: _frozen(0.0))
    scale: np.ndarray = dataclasses.field(default_factory=lambda: _frozen(1.0))

    def __post_init__(self):
        if self.method not in STANDARDIZE:
            raise ValueError(
                f"Standardization method={self.method!r} is not allowed: use one of {STANDARDIZE}"
            )
        shift, scale = _frozen(self.shift), _frozen(self.scale)
        if shift.shape not in ((), scale.shape) or not (
            np.isfinite(shift).all() and np.isfinite(scale).all() and (scale != 0).all()
        ):
            raise ValueError(
                f"Standardization needs finite shift and non-zero finite scale of one shape; "
                f"got shapes {shift.shape} and {scale.shape}"
            )
        object.__setattr__(self, "shift", shift)
        object.__setattr__(self, "scale", scale)

    @classmethod
    def fit(cls, method: str, x_train) -> Standardization:
        """The statistics `method` draws from the training inputs x_train (N, ...).

        unit: scale = max |x| (0 -> 1); standard: shift = the mean and scale = the standard
        deviation over the N examples, per element (computed in float64; 0 -> 1).
        """
        if method not in STANDARDIZE:
            raise ValueError(
                f"standardize={method!r} is not allowed: use one of {', '.join(STANDARDIZE)}"
            )
        x = np.asarray(x_train)
        if method == "none":
            return cls("none")
        if method == "unit":
            # max |x| from the extremes: no copy, and no overflow of abs(int8(-128))
            top = max(abs(float(x.max())), abs(float(x.min()))) if x.size else 0.0
            return cls("unit", 0.0, top or 1.0)
        mean = np.mean(x, axis=0, dtype=np.float64).astype(np.float32)
        deviation = np.std(x, axis=0, dtype=np.float64).astype(np.float32)
        deviation[deviation == 0] = 1  # a constant feature is shifted, not blown up
        return cls("standard", mean, deviation)

    def apply(self, x) -> np.ndarray:
        """(x - shift) / scale in float32; x is a batch (N, *shape) or one example.

        A new array, except that "none" returns x itself when it is float32 already.
        """
        out = np.asarray(x, np.float32) if self.method == "none" else np.array(x, np.float32)
        tail = self.scale.shape
        if out.ndim < len(tail) or out.shape[out.ndim - len(tail) :] != tail:
            raise ValueError(
                f"Standardization ({self.method}) of examples {_shape_text(tail)} cannot take "
                f"inputs of shape {out.shape}"
            )
        if self.method != "none":
            out -= self.shift
            out /= self.scale
        return out

    def describe(self) -> str:
        """What apply does, in words."""
        if self.method == "none":
            return "inputs as given"
        if self.method == "unit":
            return f"inputs divided by {float(self.scale):g}"
        return "inputs standardised per element by the training split's mean and deviation"

    def save(self, path) -> None:
        """The method, shift and scale as an npz file at `path` (local or remote)."""
        buffer = io.BytesIO()
        np.savez(buffer, method=np.array(self.method), shift=self.shift, scale=self.scale)
        paths.path(path).write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path) -> Standardization:
        """The Standardization `save` wrote at `path`; ValueError naming the file if it is not."""
        try:
            with np.load(io.BytesIO(paths.path(path).read_bytes()), allow_pickle=False) as saved:
                return cls(str(saved["method"]), saved["shift"], saved["scale"])
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
            problem = " ".join(str(error).split())
            raise ValueError(f"{path}: not a saved Standardization: {problem}") from None


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Examples (N, ...) float32 and labels (N,) int32.

    The examples (`images`, whatever their shape: (N, d), (N, T, C), (N, H, W, C)) of any real
    or bool dtype are cast to float32; other dtypes, and float values that are NaN or infinite,
    raise ValueError. Labels must have an integer dtype, and are cast to int32 once checked to
    fit: float or bool labels raise ValueError rather than being truncated. Whether they are in
    [0, num_classes) is checked by `Dataset`.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        images, labels = _split_arrays(self.images, self.labels, "Split ", "integer class indices")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset's train / validation / test splits, where it came from, what was tried before.

    Building one checks every split's labels are in [0, num_classes), or raises ValueError naming
    the split and the first bad label: "Dataset 'toy': train labels[17] = 12 is out of range:
    expected integers in [0, 10)". A split may be a `Split` or any object with `images` and
    `labels`, which becomes a Split (its errors then name the split too). `standardization` is
    what was applied to the splits' inputs (apply it to new raw inputs); `file` is the file the
    arrays were read from, if one was (`from_npz`).
    """

    name: str
    source: str
    tried: tuple[str, ...]
    train: Split
    validation: Split
    test: Split
    num_classes: int
    standardization: Standardization = dataclasses.field(
        default_factory=lambda: Standardization("none")
    )
    file: str | None = None

    def __post_init__(self):
        k = self.num_classes
        if not (_is_count(k) and k >= 1):
            raise ValueError(
                f"Dataset {self.name!r}: num_classes={k!r} is not allowed: use an int >= 1"
            )
        if not isinstance(self.standardization, Standardization):
            raise TypeError(
                f"Dataset {self.name!r}: standardization is a "
                f"{type(self.standardization).__name__}: expected a Standardization"
            )
        expected = f"integers in [0, {k})"
        for split in _SPLITS:
            value, who = getattr(self, split), f"Dataset {self.name!r}: {split} "
            if not isinstance(value, Split):
                if not (hasattr(value, "images") and hasattr(value, "labels")):
                    raise TypeError(
                        f"{who}is a {type(value).__name__}: expected a Split(images, labels)"
                    )
                value = Split(*_split_arrays(value.images, value.labels, who, expected))
                object.__setattr__(self, split, value)
            outside = (value.labels < 0) | (value.labels >= k)
            if outside.any():
                i = int(np.argmax(outside))
                raise ValueError(
                    f"{who}labels[{i}] = {value.labels[i]} is out of range: expected {expected}"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example: (d,), (T, C), (H, W, C), ..."""
        return tuple(int(d) for d in self.train.images.shape[1:])

    def describe(self) -> dict:
        """What the dataset is, as JSON-ready values (summary.json's "dataset")."""
        return describe_dataset(self)

    @classmethod
    def from_arrays(
        cls,
        x_train,
        y_train,
        x_test,
        y_test,
        *,
        x_val=None,
        y_val=None,
        validation_size: int | float = 0.1,
        num_classes: int | None = None,
        standardize: str | Standardization = "none",
        seed: int = 0,
        name: str = "arrays",
    ) -> Dataset:
        """A Dataset of a user's arrays: inputs x (N, ...) of a real dtype, labels y (N,) ints.

        Without x_val and y_val, `validation_size` of the training split (a fraction 0 <= f < 1,
        or a count; 0 holds nothing out) is held out with a permutation drawn from `seed`, as
        `load_dataset` does; with them, validation_size is not used. num_classes defaults to the
        largest label of any split + 1. `standardize` ("none", "unit", "standard", or a
        Standardization to reuse) is fitted on the training split only and applied to every
        split. Bad arrays raise ValueError naming the argument (x_train, y_val, ...).
        """
        _check_user_options(validation_size, num_classes, standardize, seed)
        given = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        if x_val is not None or y_val is not None:
            given.update(x_val=x_val, y_val=y_val)
        parts = _user_arrays(given, "Dataset.from_arrays: ", validation_size, num_classes, seed)
        return _user_dataset(
            parts, standardize, name, "numpy arrays passed to Dataset.from_arrays", None
        )

    @classmethod
    def from_npz(
        cls,
        path,
        *,
        validation_size: int | float = 0.1,
        num_classes: int | None = None,
        standardize: str | Standardization = "none",
        seed: int = 0,
        log=None,
    ) -> Dataset:
        """The Dataset of the arrays in the npz file `path` (local or gs://; np.savez's output).

        The file holds x_train, y_train, x_test, y_test and optionally x_val, y_val, as the
        arguments of `from_arrays` (which the rest of the arguments go to). It is read with
        allow_pickle=False. A missing file raises DatasetNotFoundError, any other problem a
        ValueError naming the file and the array; `log` gets one line on what was read.
        """
        _check_user_options(validation_size, num_classes, standardize, seed)
        shown = paths.shown(path)
        given = _read_npz(os.fspath(path))
        parts = _user_arrays(given, f"{shown}: ", validation_size, num_classes, seed)
        dataset = _user_dataset(parts, standardize, "npz", f"the npz file {shown}", shown)
        held = "x_val in the file" if "x_val" in given else f"held out of x_train, seed {seed}"
        (log or (lambda *_: None))(
            f"npz: read {shown}: {len(dataset.train)} train + {len(dataset.validation)} "
            f"validation ({held}), {len(dataset.test)} test; "
            f"examples {_shape_text(dataset.input_shape)}, {dataset.num_classes} classes; "
            f"{dataset.standardization.describe()}"
        )
        return dataset


def describe_dataset(dataset) -> dict:
    """Name, source, file, standardisation, example shape, classes and split sizes, for JSON.

    `dataset` is a Dataset or any object with its name, source, splits, num_classes and
    input_shape (a missing standardization counts as "none", a missing file as None).
    """
    standardization = getattr(dataset, "standardization", None)
    return {
        "name": dataset.name,
        "source": dataset.source,
        "file": getattr(dataset, "file", None),
        "standardize": standardization.method if standardization is not None else "none",
        "input_shape": [int(d) for d in dataset.input_shape],
        "num_classes": int(dataset.num_classes),
        "examples": {split: len(getattr(dataset, split).labels) for split in _SPLITS},
    }


# ----------------------------------------------------------------------------- a user's arrays

# (split, inputs, labels) as from_arrays and the npz file name them
_USER_SPLITS = (("train", "x_train", "y_train"), ("validation", "x_val", "y_val"))
_USER_SPLITS += (("test", "x_test", "y_test"),)
_NPZ_REQUIRED = ("x_train", "y_train", "x_test", "y_test")
_NPZ_EXPECTED = "x_train, y_train, x_test, y_test and optionally x_val, y_val"


class _UserSplits(NamedTuple):
    splits: dict  # split -> (inputs float32, labels int32), the validation split held out
    num_classes: int


def _check_user_options(validation_size, num_classes, standardize, seed) -> None:
    _validation_count(validation_size)
    if not (_is_count(seed) and seed >= 0):
        raise ValueError(f"seed={seed!r} is not allowed: use an int >= 0")
    if num_classes is not None and not (_is_count(num_classes) and num_classes >= 1):
        raise ValueError(f"num_classes={num_classes!r} is not allowed: use None or an int >= 1")
    if not isinstance(standardize, Standardization) and standardize not in STANDARDIZE:
        raise ValueError(
            f"standardize={standardize!r} is not allowed: use one of {', '.join(STANDARDIZE)} "
            "or a Standardization"
        )


def _user_pair(x, y, names: tuple[str, str], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(inputs float32, labels int32) of one split, or ValueError naming `where` and the array."""
    x_name, y_name = names
    try:
        x, y = np.asarray(x), np.asarray(y)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{where}{x_name} or {y_name} is not an array: {error}") from None
    if x.ndim < 1:
        raise ValueError(f"{where}{x_name} is a single number: expected examples (N, ...)")
    if y.ndim != 1:
        raise ValueError(f"{where}{y_name} has shape {y.shape}: expected labels (N,)")
    if len(x) != len(y):
        raise ValueError(f"{where}{x_name} has {len(x)} examples but {y_name} has {len(y)} labels")
    x = _split_images(x, where, x_name)
    y = _split_labels(y, where, "integer class indices >= 0", y_name)
    if (y < 0).any():
        i = int(np.argmax(y < 0))
        raise ValueError(f"{where}{y_name}[{i}] = {y[i]} is negative: expected class indices >= 0")
    return x, y


def _class_count(pairs: dict, num_classes: int | None, where: str) -> int:
    """num_classes, checked against every label; by default the largest label + 1."""
    if num_classes is None:
        return int(max(y.max() for _, y in pairs.values() if y.size)) + 1
    for split, _, y_name in _USER_SPLITS:
        y = pairs[split][1] if split in pairs else np.zeros(0, np.int32)
        if (y >= num_classes).any():
            i = int(np.argmax(y >= num_classes))
            raise ValueError(
                f"{where}{y_name}[{i}] = {y[i]} is out of range: expected integers in "
                f"[0, {num_classes}) (num_classes={num_classes})"
            )
    return int(num_classes)


def _user_arrays(given: dict, where: str, validation_size, num_classes, seed) -> _UserSplits:
    """Every split of `given` (x_train, ... by name) checked; validation held out if not given."""
    val = [name for name in ("x_val", "y_val") if given.get(name) is not None]
    if len(val) == 1:
        other = "y_val" if val == ["x_val"] else "x_val"
        raise ValueError(f"{where}{val[0]} without {other}: give both, or neither")
    pairs = {
        split: _user_pair(given[x], given[y], (x, y), where)
        for split, x, y in _USER_SPLITS
        if given.get(x) is not None
    }
    if not len(pairs["train"][1]):
        raise ValueError(f"{where}x_train has no examples: expected at least one")
    shape = pairs["train"][0].shape[1:]
    for split, x_name, _ in _USER_SPLITS[1:]:
        if split in pairs and pairs[split][0].shape[1:] != shape:
            raise ValueError(
                f"{where}{x_name} examples have shape {pairs[split][0].shape[1:]}, x_train's "
                f"{shape}: every split needs examples of one shape"
            )
    k = _class_count(pairs, num_classes, where)
    if "validation" not in pairs:
        x, y = pairs["train"]
        train, validation = _holdout(len(y), validation_size, seed)
        pairs["train"], pairs["validation"] = (x[train], y[train]), (x[validation], y[validation])
    return _UserSplits(pairs, k)


def _user_dataset(parts: _UserSplits, standardize, name: str, source: str, file) -> Dataset:
    """The Dataset of checked splits, standardised by the training split's statistics."""
    if isinstance(standardize, Standardization):
        fitted = standardize
    else:
        fitted = Standardization.fit(standardize, parts.splits["train"][0])
    splits = {s: Split(fitted.apply(x), y) for s, (x, y) in parts.splits.items()}
    return Dataset(
        name, source, (), num_classes=parts.num_classes, standardization=fitted, file=file, **splits
    )


def _read_npz(path: str) -> dict:
    """The arrays of the npz file `path` by name; one-line errors naming the file and array."""
    shown, found = paths.shown(path), paths.path(path)
    if not found.exists():
        raise DatasetNotFoundError(
            f"{shown}: no such file: expected an npz file (np.savez) of {_NPZ_EXPECTED}"
        )
    if found.is_dir():
        raise ValueError(f"{shown}: is a folder: expected an npz file (np.savez)")
    local = not paths.is_remote(path)
    try:
        npz = np.load(
            os.fspath(found) if local else io.BytesIO(found.read_bytes()), allow_pickle=False
        )
    except OSError as error:
        raise ValueError(f"{shown}: cannot be read: {paths.reason(error)}") from None
    except (ValueError, EOFError, zipfile.BadZipFile) as error:
        reason = "empty" if isinstance(error, EOFError) else "not a zip archive of .npy arrays"
        raise ValueError(
            f"{shown}: not an npz file ({reason}): save one with np.savez(FILE, "
            "x_train=..., y_train=..., x_test=..., y_test=...)"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{shown}: holds a single .npy array, not an npz file of named arrays: save one with "
            "np.savez(FILE, x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    with npz:
        return _npz_arrays(npz, shown)


def _npz_arrays(npz, shown: str) -> dict:
    names = list(npz.files)
    for name in _NPZ_REQUIRED:
        if name not in names:
            have = ", ".join(names) or "no arrays"
            raise ValueError(
                f"{shown}: no array {name!r} (it has {have}): expected {_NPZ_EXPECTED}"
            )
    known = {name for _, x, y in _USER_SPLITS for name in (x, y)}
    for name in names:
        if name not in known:
            raise ValueError(f"{shown}: unexpected array {name!r}: expected only {_NPZ_EXPECTED}")
    arrays = {}
    for name in names:
        try:
            arrays[name] = npz[name]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            problem = " ".join(str(error).split())
            if "allow_pickle" in problem:
                problem = "it holds Python objects (dtype object): expected numbers"
            raise ValueError(f"{shown}: {name} cannot be read: {problem}") from None
    return arrays


class _Skip(Exception):
    """A source that does not have the data; the message says why."""


class _Arrays(NamedTuple):
    # (N, H, W, C), any real dtype: divided by `maximum` once the splits are drawn
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    maximum: float


class _Source(NamedTuple):
    description: str
    load: Callable[[], _Arrays]


# --------------------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array in the bytes of an IDX file.

    ValueError naming `name` if the magic number or the size is wrong.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{name}: not an IDX file: magic number {raw[:4].hex() or 'missing'}, expected "
            f"0000TTNN with type TT in {', '.join(f'{t:02x}' for t in _IDX_DTYPES)} and NN "
            "dimensions (MNIST images: 00000803)"
        )
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(
            f"{name}: truncated IDX header: {len(raw)} bytes, {header} needed for {ndim} dimensions"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected, found = math.prod(shape) * dtype.itemsize, len(raw) - header
    if found != expected:
        problem = "truncated IDX file" if found < expected else "IDX file with trailing bytes"
        raise ValueError(
            f"{name}: {problem}: the header says {dtype} of shape {shape} ({expected} bytes), "
            f"the file has {found}"
        )
    return (
        np.frombuffer(raw, dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="), copy=False)
    )


def read_idx(path) -> np.ndarray:
    """The array in an IDX file, gzipped (detected by content) or not.

    ValueError naming the file if it is malformed.
    """
    path = os.fspath(path)
    raw = paths.path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip data: {e}") from None
    return parse_idx(raw, path)


def _find_idx(directory: str, stem: str) -> str | None:
    for variant in (stem, stem.replace("-idx", ".idx")):
        for suffix in (".gz", ""):
            path = paths.join(directory, variant + suffix)
            if paths.path(path).is_file():
                return path
    return None


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """A source's labels as int32, or ValueError naming `where` and the first one not in range."""
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        i = int(np.argmax(outside))
        raise ValueError(
            f"{where}: labels[{i}] = {labels[i]} is out of range: "
            f"expected integers in [0, {num_classes})"
        )
    return labels.astype(np.int32)


def _idx_pair(images_path: str, labels_path: str, num_classes: int):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{images_path}: expected images: unsigned bytes (N, H, W), magic 00000803; "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(
            f"{labels_path}: expected labels: unsigned bytes (N,), magic 00000801; "
            f"got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images[..., None], _check_labels(labels, num_classes, labels_path)


def _idx_source(directory: str, num_classes: int) -> _Source:
    def load():
        if not paths.path(directory).is_dir():
            raise _Skip("no such directory")
        found = [_find_idx(directory, stem) for stem in IDX_FILES]
        missing = [stem + "[.gz]" for stem, path in zip(IDX_FILES, found) if path is None]
        if len(missing) == len(IDX_FILES):
            raise _Skip("no IDX files there")
        if missing:
            raise _Skip(f"incomplete: {', '.join(missing)} missing")
        return _Arrays(
            *_idx_pair(found[0], found[1], num_classes),
            *_idx_pair(found[2], found[3], num_classes),
            255,
        )

    return _Source(f"IDX files in {directory}", load)


# --------------------------------------------------------------------------- CIFAR-10 binary files


def _read_cifar10_bin(path: str):
    raw = np.frombuffer(paths.path(path).read_bytes(), np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise ValueError(
            f"{path}: not a CIFAR-10 binary batch: {raw.size} bytes is not a positive multiple "
            "of 3073 (1 label + 32x32x3)"
        )
    records = raw.reshape(-1, 3073)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, _check_labels(records[:, 0], 10, path)


def _cifar10_bin_source(directory: str) -> _Source:
    def load():
        if not paths.path(directory).is_dir():
            raise _Skip("no such directory")
        missing = [f for f in CIFAR10_FILES if not paths.path(directory).joinpath(f).is_file()]
        if len(missing) == len(CIFAR10_FILES):
            raise _Skip("no CIFAR-10 binary batches there")
        if missing:
            raise _Skip(f"incomplete: {', '.join(missing)} missing")
        batches = [_read_cifar10_bin(paths.join(directory, f)) for f in CIFAR10_FILES]
        train = [np.concatenate(parts) for parts in zip(*batches[:-1])]
        return _Arrays(*train, *batches[-1], 255)

    return _Source(f"CIFAR-10 binary batches in {directory}", load)


# -------------------------------------------------------------------------------------------- TFDS


def _default_tfds_data_dir() -> str:
    """TFDS's default data dir: $TFDS_DATA_DIR, or else ~/tensorflow_datasets (as tfds has it)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets"
    )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _tfds_source(name: str, root: str) -> _Source:
    def load():
        folder = paths.join(root, name)
        found = paths.path(folder)
        names = [p.name for p in found.iterdir()] if found.is_dir() else []
        versions = [v for v in names if re.fullmatch(r"\d+\.\d+\.\d+", v)]
        versions = [v for v in versions if (found / v / "dataset_info.json").is_file()]
        if not versions:
            raise _Skip(f"no prepared {name} (no {name}/<version>/dataset_info.json)")
        version = max(versions, key=_version_key)
        try:
            # tfds decodes images with pillow when TensorFlow is absent
            import PIL.Image  # noqa: F401
        except ImportError:
            raise _Skip(
                f"{name}/{version} is prepared, but reading it needs `pip install pillow`"
            ) from None
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(f"{name}:{version}", data_dir=root)
        except Exception as e:  # noqa: BLE001
            # a broken prepared dir is a skipped source, with the reason
            raise _Skip(f"{name}/{version} is unreadable: {type(e).__name__}: {e}") from None
        file_format = (
            getattr(builder.info.file_format, "value", builder.info.file_format) or "tfrecord"
        )
        if not builder.is_prepared():
            raise _Skip(f"{name}/{version} is not completely prepared")
        if file_format not in ("array_record", "parquet"):
            raise _Skip(
                f"{name}/{version} is prepared as {file_format}, which needs TensorFlow; "
                "prepare it with --file_format=array_record"
            )
        num_classes = builder.info.features["label"].num_classes
        arrays = []
        splits = ["train", "test"]
        for split, source in zip(splits, builder.as_data_source(split=splits)):
            examples = source.__getitems__(range(len(source)))
            images = np.stack([e["image"] for e in examples])
            labels = np.array([e["label"] for e in examples], np.int64)
            where = f"{folder}/{version} ({split} split)"
            arrays += [images, _check_labels(labels, num_classes, where)]
        return _Arrays(*arrays, 255)

    return _Source(f"TFDS prepared data in {root}", load)


# ---------------------------------------------------------------------------- digits and synthetic


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of round(fraction * count) examples of each class, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        picked.append(rng.choice(members, round(fraction * len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def _digits_source() -> _Source:
    def load():
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise _Skip("scikit-learn is not installed (pip install scikit-learn)") from None
        digits = load_digits()
        images, labels = digits.images[..., None], digits.target.astype(np.int32)
        is_test = np.zeros(len(labels), bool)
        is_test[_stratified_holdout(labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)] = True
        return _Arrays(images[~is_test], labels[~is_test], images[is_test], labels[is_test], 16)

    fraction = f"{DIGITS_TEST_FRACTION:.0%}"
    return _Source(
        f"scikit-learn load_digits (test: a stratified {fraction} of each class, "
        f"seed {DIGITS_TEST_SEED})",
        load,
    )


def _synthetic_source(
    shape: tuple[int, ...], classes: int, sizes: tuple[int, int], seed: int
) -> _Source:
    def load():
        rng = np.random.default_rng([seed, 1])  # a stream apart from the validation permutation
        prototypes = rng.random((classes, *shape), dtype=np.float32)

        def draw(n):
            labels = rng.permutation(np.arange(n) % classes).astype(np.int32)
            noise = rng.standard_normal((n, *shape), dtype=np.float32)
            return np.clip(prototypes[labels] + np.float32(SYNTHETIC_NOISE) * noise, 0, 1), labels

        return _Arrays(*draw(sizes[0]), *draw(sizes[1]), 1)

    where = (
        f"synthetic: {classes} random prototypes of shape {shape} plus "
        f"N(0, {SYNTHETIC_NOISE}^2) noise, clipped to [0, 1]"
    )
    return _Source(f"{where}, seed {seed}", load)


# ----------------------------------------------------------------------------------------- loading


def _sources(
    name: str, data_dir: str | None, synthetic: tuple, seed: int, download: tuple | None
) -> list[_Source]:
    """The sources of `name` in order; `download` = (cache, what chose it, mirror, log) or None."""
    if name == "digits":
        return [_digits_source()]
    if name == "synthetic":
        return [_synthetic_source(*synthetic, seed)]
    sources = [_tfds_source(name, data_dir or _default_tfds_data_dir())]
    if name == "cifar10":
        dirs = [data_dir, os.path.join(data_dir, "cifar-10-batches-bin")] if data_dir else []
        sources += [_cifar10_bin_source(d) for d in dirs]
    else:
        dirs = [data_dir, os.path.join(data_dir, name)] if data_dir else []
        sources += [
            _idx_source(d, _NUM_CLASSES[name]) for d in dirs + list(SYSTEM_DIRS.get(name, ()))
        ]
    # last, so that prepared or local data always wins and is read without any network access
    return sources + ([_download_source(name, *download)] if download else [])


def _download_source(name: str, cache: str, chosen_by: str, mirror: str | None, log) -> _Source:
    """The official files in CACHE/NAME, downloaded there first if missing."""

    def load():
        log(f"{name}: download cache {cache} ({chosen_by})")
        try:
            folder = _fetch(name, cache, mirror, log)
        except _DownloadError as error:
            raise _Skip(str(error)) from None
        if name == "cifar10":
            return _cifar10_bin_source(folder).load()
        return _idx_source(folder, _NUM_CLASSES[name]).load()

    where = os.path.join(cache, name)
    return _Source(
        f"official files in {where}, downloaded from {_source_url(name, mirror)} if missing", load
    )


def _is_count(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _bad_validation_size(value, n: int | None = None) -> ValueError:
    count = f"a count 0 <= n < {n} (the training split's size)" if n else "a count n >= 0 (an int)"
    return ValueError(
        f"validation_size={value!r} is not allowed: use a fraction 0 <= f < 1 of the training "
        f"split, or {count}"
    )


def _validation_count(value, n: int | None = None) -> int:
    """The number of held-out examples for `validation_size` of a training split of n.

    n=None checks the type only.
    """
    if _is_count(value):
        count = int(value)
    elif isinstance(value, (float, np.floating)) and 0 <= value < 1:
        count = round(float(value) * n) if n else 0
    else:
        raise _bad_validation_size(value, n)
    if count < 0 or (n is not None and count >= n):
        raise _bad_validation_size(value, n)
    return count


def _holdout(n: int, validation_size, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) sorted indices: validation_size of n held out, drawn with `seed`."""
    held_out = _validation_count(validation_size, n)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def _check_synthetic(shape, classes, sizes) -> tuple:
    shape, sizes = tuple(shape), tuple(sizes)
    if len(shape) != 3 or not all(_is_count(d) and d > 0 for d in shape):
        raise ValueError(
            f"synthetic_shape={shape!r} is not allowed: use (H, W, C), three positive ints"
        )
    if not (_is_count(classes) and classes >= 2):
        raise ValueError(f"synthetic_classes={classes!r} is not allowed: use an int >= 2")
    if len(sizes) != 2 or not all(_is_count(s) and s > 0 for s in sizes):
        raise ValueError(
            f"synthetic_size={sizes!r} is not allowed: use (train, test), two positive ints"
        )
    return shape, int(classes), sizes


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    validation_size: int | float = 0.1,
    seed: int = 0,
    synthetic_shape=(28, 28, 1),
    synthetic_classes=10,
    synthetic_size=(2048, 512),
    download: bool = False,
    cache_dir: str | None = None,
    mirror: str | None = None,
    standardize: str = "auto",
    log=print,
) -> Dataset:
    """Load `name` from the first source that has it, holding out a validation split.

    `validation_size` of the training split is held out with a permutation drawn from `seed`.
    Each source is tried in a fixed order (see the module docstring); `log` gets one line with
    that order and one with the source used. `validation_size` is a fraction 0 <= f < 1 of the
    training split, or a count; 0 holds nothing out. 'synthetic' generates `synthetic_size` =
    (train, test) examples of `synthetic_shape` (H, W, C) in `synthetic_classes` classes from
    `seed`; its validation split comes out of the train part. `download=True` adds, last for
    mnist, fashion_mnist and cifar10, the official files in the download cache (`cache_dir`, else
    $JAXNET_DATASETS_CACHE, else ~/.cache/jaxnet/datasets), fetched there first if missing, from
    `mirror` (a URL holding NAME/FILE) or else the official site; `log` then also gets the cache
    folder and what chose it. Raises DatasetNotFoundError (a FileNotFoundError) if no source has
    the data, saying why the download failed if one was tried, and ValueError naming the file if
    a source's labels are out of range. `standardize` is "auto" (the images divided by their
    format's maximum, 255 or 16 for digits: pixels in [0, 1]), or one of "none", "unit",
    "standard" (see the module docstring), fitted on the training split once it is held out.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    if standardize not in ("auto", *STANDARDIZE):
        raise ValueError(
            f"standardize={standardize!r} is not allowed: use one of auto, {', '.join(STANDARDIZE)}"
        )
    _validation_count(validation_size)
    if not (_is_count(seed) and seed >= 0):
        raise ValueError(f"seed={seed!r} is not allowed: use an int >= 0")
    data_dir = os.fspath(os.path.expanduser(data_dir)) if data_dir else None
    synthetic = (
        _check_synthetic(synthetic_shape, synthetic_classes, synthetic_size)
        if name == "synthetic"
        else ()
    )
    log = log or (lambda *_: None)

    downloads = download and name in _OFFICIAL
    fetching = (*_cache_dir(cache_dir), mirror or None, log) if downloads else None
    sources = _sources(name, data_dir, synthetic, seed, fetching)
    log(
        f"{name}: sources in order: "
        + "; ".join(f"{i}) {s.description}" for i, s in enumerate(sources, 1))
    )
    tried, why = [], "nothing is downloaded"
    for source in sources:
        try:
            arrays = source.load()
        except _Skip as skip:
            tried.append(f"{source.description}: skipped, {skip}")
            why = f"its download failed: {skip}" if downloads else why  # the download is last
            continue
        tried.append(f"{source.description}: used")
        break
    else:
        looked = "\n".join(f"  {i}. {t}" for i, t in enumerate(tried, 1))
        how = _HOW_TO_GET[name]
        if name in _OFFICIAL:
            how += _DOWNLOAD_HINT.format(url=_source_url(name, mirror or None))
        raise DatasetNotFoundError(
            f"dataset {name!r} not found ({why}). Looked in, in order:\n{looked}\nTo get it: {how}"
        )

    n = len(arrays.train_labels)
    train, validation = _holdout(n, validation_size, seed)
    num_classes = synthetic[1] if name == "synthetic" else _NUM_CLASSES[name]
    fitted = (
        Standardization("unit", 0.0, arrays.maximum)
        if standardize == "auto"
        else Standardization.fit(standardize, arrays.train_images[train])
    )
    dataset = Dataset(
        name=name,
        source=source.description,
        tried=tuple(tried),
        train=Split(fitted.apply(arrays.train_images[train]), arrays.train_labels[train]),
        validation=Split(
            fitted.apply(arrays.train_images[validation]), arrays.train_labels[validation]
        ),
        test=Split(fitted.apply(arrays.test_images), arrays.test_labels),
        num_classes=num_classes,
        standardization=fitted,
    )
    log(
        f"{name}: using {source.description}: {len(train)} train + {len(validation)} validation "
        f"(seed {seed}) of {n}, {len(dataset.test)} test; examples "
        f"{_shape_text(dataset.input_shape)}, {num_classes} classes; {fitted.describe()}"
    )
    return dataset
