"""A trained network back from its workdir: `load(workdir)`, and predictions for new inputs.

    model = jaxnet.load("runs/default")        # the config, the network, the best variables
    labels = model.predict(x)                  # class indices for raw inputs (N, ...) or one
    p = model.probabilities(x)                 # the outputs the loss saw, as probabilities

Inputs are taken as the training data came, before the run's standardisation (pixels in
0..255 for the built-in image datasets, the npz file's own values): `load` applies the same
transformation, read from the workdir. Only the best checkpoint's variables are read (no
optimizer state), verified against their checksums, from any checkpoint layout.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import models, paths
from jaxnet.layers import Layer, init_state
from jaxnet.training import build, trainer
from jaxnet.training import config as config_lib
from jaxnet.training.checkpoints import Checkpoints
from jaxnet.training.steps import Variables, infer

# What jaxnet 0.1.0 workdirs (no dataset.json) trained on: example shape, classes, and the
# maximum their pixels were divided by.
_BUILT_IN = {
    "mnist": ((28, 28, 1), 10, 255.0),
    "fashion_mnist": ((28, 28, 1), 10, 255.0),
    "cifar10": ((32, 32, 3), 10, 255.0),
    "digits": ((8, 8, 1), 10, 16.0),
}


class LoadError(RuntimeError):
    """The workdir cannot give a trained network; str() is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class Facts:
    """What a run's network was built for: the example shape, the classes, the input scale."""

    input_shape: tuple[int, ...]
    num_classes: int
    dataset: str
    standardization: Any  # the jaxnet.data.Standardization of raw inputs


@dataclasses.dataclass(frozen=True)
class Trained:
    """A network with its best variables and the config that trained it, ready to call."""

    network: Layer
    variables: Variables
    config: Any
    facts: Facts
    step: int
    best_epoch: int | None

    def __post_init__(self):
        object.__setattr__(self, "_logits", jax.jit(lambda v, x: infer(self.network, v, x)))

    def logits(self, x) -> np.ndarray:
        """The network's outputs for raw inputs: a batch (N, ...) or one example."""
        batch, single = self._batch(x)
        return np.asarray(self._logits(self.variables, batch))[0 if single else slice(None)]

    __call__ = logits

    def probabilities(self, x) -> np.ndarray:
        """Class probabilities: the soft-max of the logits (the sigmoids for sigmoid outputs)."""
        return self.to_probabilities(self.logits(x))

    def to_probabilities(self, logits) -> np.ndarray:
        c = self.config
        sigmoid = c.loss == "binary_cross_entropy" or c.model.output_activation == "sigmoid"
        z = jnp.asarray(logits)
        return np.asarray(jax.nn.sigmoid(z) if sigmoid else jax.nn.softmax(z, axis=-1))

    def predict(self, x) -> np.ndarray:
        """Class indices: argmax of the logits."""
        return np.argmax(self.logits(x), axis=-1)

    def _batch(self, x):
        x = np.asarray(x)
        shape = self.facts.input_shape
        if x.shape == shape:
            return self._prepare(x[None]), True
        if x.shape[1:] != shape:
            raise ValueError(
                f"inputs of shape {x.shape} do not fit this network: it takes examples of shape "
                f"{shape}, one or a batch (N, {', '.join(map(str, shape))})"
            )
        return self._prepare(x), False

    def _prepare(self, x):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"inputs must be numbers, got dtype {x.dtype}")
        return jnp.asarray(self.facts.standardization.apply(x.astype(np.float32)), jnp.float32)


def read_facts(workdir: str, config, recorded: dict | None) -> Facts:
    """The run's Facts from what config.json recorded, or for a 0.1.0 workdir from its dataset."""
    from jaxnet.data import Standardization

    standardization = trainer.saved_standardization(workdir)
    if recorded is not None:
        shape, classes = tuple(recorded["input_shape"]), int(recorded["num_classes"])
        standardization = standardization or Standardization("none")
        return Facts(shape, classes, recorded["name"], standardization)
    name, d = config.dataset.name, config.dataset
    if name == "synthetic":
        shape, classes = tuple(d.synthetic_shape), int(d.synthetic_classes)
        return Facts(shape, classes, name, Standardization("none"))
    if name not in _BUILT_IN:
        raise LoadError(
            f"{paths.shown(workdir)}/config.json does not record the dataset's example shape"
        )
    shape, classes, maximum = _BUILT_IN[name]
    return Facts(shape, classes, name, Standardization("unit", 0.0, maximum))


def load(workdir: str, *, log=None) -> Trained:
    """The network of the run in `workdir` with its best variables, ready to call."""
    config, recorded = _config(workdir)
    facts = read_facts(workdir, config, recorded)
    network = build.COMPUTE_DTYPES[config.dtype](
        models.build_model(config.model, facts.num_classes)
    )
    folder = paths.join(workdir, "checkpoints")
    quiet = log or (lambda *_: None)
    checkpoints = Checkpoints(folder, config.checkpoint.keep, log=quiet, read_only=True)
    try:
        restored = checkpoints.restore_best(_variables_like(network, facts.input_shape))
    finally:
        checkpoints.close()
    if restored is None:
        raise LoadError(f"no checkpoint in {paths.shown(folder)}: train first with this workdir")
    best_epoch = restored.record.get("best_epoch")
    return Trained(network, restored.best, config, facts, restored.step, best_epoch)


def _config(workdir: str) -> tuple:
    """The saved config, and the dataset it recorded (None before jaxnet recorded it)."""
    path = paths.join(workdir, "config.json")
    if not paths.path(path).is_file():
        raise LoadError(f"{paths.shown(workdir)} holds no run (no config.json): train first")
    text = paths.path(path).read_text()
    config = config_lib.from_json(text, where=path)
    config_lib.validate(config)
    recorded = json.loads(text).get(config_lib.RECORDED, {}).get("dataset")
    return config, recorded


def _variables_like(network: Layer, input_shape) -> Variables:
    """Zero arrays shaped as the network's variables: what the checkpoint is read into."""
    abstract = jax.eval_shape(lambda k: network.init(k, input_shape)[1], jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), abstract)
    model_state = jax.tree_util.tree_map(np.asarray, init_state(network, input_shape))
    return Variables(params, model_state)


# ------------------------------------------------------------------------------------ predict

INPUT_KEYS = ("x", "x_test")


def read_inputs(path: str) -> np.ndarray:
    """The array `x` (or else `x_test`) of an npz file, raw as the training data were."""
    try:
        with paths.path(path).open("rb") as f, np.load(f, allow_pickle=False) as arrays:
            for name in INPUT_KEYS:
                if name in arrays.files:
                    return np.asarray(arrays[name])
            held = ", ".join(arrays.files) or "nothing"
    except FileNotFoundError:
        raise LoadError(f"--input {path}: no such file") from None
    except (ValueError, OSError) as error:  # not an npz, or a damaged one
        raise LoadError(f"--input {path} is not a readable .npz file ({error})") from None
    raise LoadError(f"--input {path} has no array 'x' (nor 'x_test'); it holds: {held}")


def write_predictions(model: Trained, inputs: np.ndarray, output: str, batch: int = 1000) -> int:
    """Labels, probabilities and logits for `inputs`, saved to the npz file `output`."""
    inputs = np.asarray(inputs)
    if inputs.shape == model.facts.input_shape:
        inputs = inputs[None]
    chunks = [model.logits(inputs[i : i + batch]) for i in range(0, len(inputs), batch)]
    logits = np.concatenate(chunks) if chunks else np.zeros((0, model.facts.num_classes))
    with paths.path(output).open("wb") as f:
        np.savez(
            f,
            labels=logits.argmax(axis=-1),
            probabilities=model.to_probabilities(logits),
            logits=logits,
        )
    return len(inputs)
