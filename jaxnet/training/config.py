"""Every training config key: its default, what it may be, whether it may change on resume.

`KEYS` is the one table. `base_config()` builds the defaults from it, `validate` checks a config
against it (names, types, ranges, the registries' names), `describe` lists it for
`train.py --mode=keys`, and `resume_changes` compares a resumed run's config with the saved one.
Errors are `ConfigError`s: one line naming the key, what was given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable
from typing import Any

import ml_collections

from jaxnet import data, download, models
from jaxnet.training import build, placement, steps

LIST_KEYS = "python train.py --mode=keys"


class ConfigError(ValueError):
    """A config key or value that cannot be used; str() is one line."""


# ------------------------------------------------------------------------------------- checks


@dataclasses.dataclass(frozen=True)
class Check:
    """What a value may be: `problem(value)` says why not (or None); `allowed` says it in words."""

    allowed: str
    problem: Callable[[Any], str | None]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(
        value
    )


def choice(names) -> Check:
    names = tuple(names)
    return Check(" | ".join(names), lambda v: None if v in names else f"choose one of {names}")


def number(low=None, high=None, *, low_open=False, high_open=False, integer=False) -> Check:
    """A finite number in the interval; integer=True also requires an int."""
    left = "(" if low_open else "["
    right = ")" if high_open or high is None else "]"
    interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    kind = "an integer" if integer else "a number"

    def problem(v):
        if not (_is_int(v) if integer else _is_real(v)):
            return f"expected {kind} in {interval}"
        too_low = low is not None and (v <= low if low_open else v < low)
        too_high = high is not None and (v >= high if high_open else v > high)
        return f"out of range {interval}" if too_low or too_high else None

    return Check(f"{kind} in {interval}", problem)


def widths(*, nonempty: bool) -> Check:
    """A tuple of layer widths, each an integer >= 1."""

    def problem(v):
        if not isinstance(v, (tuple, list)) or not all(_is_int(w) and w >= 1 for w in v):
            return "expected a tuple of integers >= 1, such as (128,)"
        return "expected at least one entry" if nonempty and not v else None

    return Check("a tuple of integers >= 1" + (", not empty" if nonempty else ""), problem)


def _validation_size(v):
    if not _is_real(v) or v < 0:
        return "expected a fraction in [0, 1) or a whole count >= 1"
    if v >= 1 and not float(v).is_integer():
        return "a count must be a whole number"
    return None


def _mirror(v):
    if isinstance(v, str) and (v == "" or v.startswith(("http://", "https://"))):
        return None
    return "expected '' or a URL starting with http:// or https://"


def _layer_specs(v):
    if not isinstance(v, (tuple, list)) or not all(isinstance(spec, str) for spec in v):
        return "expected a tuple of layer-spec strings, such as ('flatten', 'dense(128)', 'relu')"
    return None


LAYER_SPECS = Check(
    f"a tuple of specs such as 'conv2d(32, 3, padding=\"same\")' of: {', '.join(models.LAYERS)}",
    _layer_specs,
)
BOOLEAN = Check("True | False", lambda v: None if isinstance(v, bool) else "expected True/False")
TEXT = Check("a string", lambda v: None if isinstance(v, str) else "expected a string")
MIRROR = Check("'' (the official sites) or an http:// or https:// URL", _mirror)
BATCH = Check(
    "an integer >= 1, or -1 for the full batch",
    lambda v: None if _is_int(v) and (v >= 1 or v == -1) else "use 1 (online), N, or -1 (full)",
)


# --------------------------------------------------------------------------------------- keys


@dataclasses.dataclass(frozen=True)
class Key:
    default: Any
    check: Check
    help: str
    on_resume: bool = False  # may differ from the saved config when resuming (a note is printed)


_UNIT = number(0.0, 1.0, high_open=True)
_COUNT = number(1, integer=True)
_FACTOR = number(0.0, 1.0, low_open=True, high_open=True)


def _data_and_model_keys() -> dict[str, Key]:
    return {
        "seed": Key(0, number(0, integer=True), "seeds the parameters, dropout and batch order"),
        "dataset.name": Key(
            "fashion_mnist",
            choice(data.DATASETS + data.FILE_DATASETS),
            "the dataset; npz = your arrays in the file dataset.path",
        ),
        "dataset.path": Key(
            "",
            TEXT,
            "name=npz: an npz file (local or gs://) of x_train, y_train, x_test, y_test "
            "[, x_val, y_val]",
        ),
        "dataset.data_dir": Key(
            "", TEXT, "a prepared TFDS dir or a folder of IDX files; '' = defaults", True
        ),
        "dataset.download": Key(
            True,
            BOOLEAN,
            "if no local source has mnist, fashion_mnist or cifar10: fetch its official files "
            "into cache_dir",
            True,
        ),
        "dataset.cache_dir": Key(
            "",
            TEXT,
            f"where downloads are kept; '' = ${download.ENV_VAR}, else {download.DEFAULT_CACHE}",
            True,
        ),
        "dataset.mirror": Key(
            "",
            MIRROR,
            "a URL holding NAME/FILE for each official file; '' = the official sites",
            True,
        ),
        "dataset.validation_size": Key(
            0.1,
            Check("a fraction in [0, 1) or a count >= 1", _validation_size),
            "held out of the training split (unless the npz file has x_val, y_val)",
        ),
        "dataset.standardize": Key(
            "auto",
            choice(("auto", *data.STANDARDIZE)),
            "auto: pixels in [0, 1] for the built-in datasets, none for npz; unit: / max |x| "
            "of the training split; standard: its per-element mean and deviation",
        ),
        "model.kind": Key(
            "cnn", choice(models.KINDS), "the network: a fixed kind, model.layers or model.builder"
        ),
        "model.layers": Key(
            (),
            LAYER_SPECS,
            "kind=layers: the layers as Python calls, nested for combinators; the output "
            "dense(num_classes) (and model.dropout) is appended",
        ),
        "model.builder": Key(
            "",
            TEXT,
            "kind=builder: 'module.path:function' or 'path/file.py:function', called as "
            "function(model_config, num_classes) -> the whole network (a Layer)",
        ),
        "model.hidden": Key((128,), widths(nonempty=False), "widths of the dense hidden layers"),
        "model.channels": Key((32, 64), widths(nonempty=False), "maps per conv block (cnn)"),
        "model.activation": Key("relu", choice(models.ACTIVATIONS), "hidden activation"),
        "model.output_activation": Key(
            "none", choice(build.OUTPUT_ACTIVATIONS), "for the quadratic loss; none = logits"
        ),
        "model.dropout": Key(0.0, _UNIT, "drop probability before the output layer"),
        "model.init": Key("glorot", choice(models.INITIALIZERS), "weight initialisation"),
        "model.init_std": Key(0.01, number(0.0, low_open=True), "std of init=normal"),
    }


def _objective_keys() -> dict[str, Key]:
    return {
        "loss": Key("cross_entropy", choice(build.LOSSES), "the per-sample loss"),
        "label_smoothing": Key(
            0.0, _UNIT, "epsilon: targets (1 - epsilon) one-hot + epsilon / K (cross_entropy)"
        ),
        "optimizer.name": Key("adam", choice(build.UPDATE_RULES), "the update rule"),
        "optimizer.learning_rate": Key(1e-3, number(0.0, low_open=True), "eta"),
        "optimizer.momentum": Key(0.9, _UNIT, "mu of momentum / nesterov (constant schedule)"),
        "optimizer.momentum_schedule": Key(
            "constant", choice(build.MOMENTUM_SCHEDULES), "sutskever: the notes' Figure 4"
        ),
        "optimizer.mu_max": Key(0.99, _UNIT, "cap of the sutskever schedule"),
        "optimizer.b1": Key(0.9, _UNIT, "Adam's beta1"),
        "optimizer.b2": Key(0.999, _UNIT, "Adam's beta2"),
        "optimizer.eps": Key(1e-8, number(0.0, low_open=True), "Adam's epsilon"),
        "weight_decay.lam": Key(0.0, number(0.0), "(lambda / 2) sum w^2 over weights"),
        "weight_decay.decoupled": Key(False, BOOLEAN, "True: AdamW-style, outside the gradient"),
        "schedule.name": Key("constant", choice(build.SCHEDULES), "learning-rate schedule"),
        "schedule.warmup_epochs": Key(0, number(0, integer=True), "cosine: linear warm-up"),
        "schedule.step_epochs": Key(10, _COUNT, "step: multiply by step_factor this often"),
        "schedule.step_factor": Key(0.1, _FACTOR, "step"),
        "schedule.plateau_patience": Key(2, _COUNT, "plateau: epochs without progress", True),
        "schedule.plateau_factor": Key(0.1, _FACTOR, "plateau: rate multiplier"),
    }


def _run_keys() -> dict[str, Key]:
    """Keys of how the run proceeds; most may change when it resumes."""
    return {
        "batch_size": Key(128, BATCH, "1 = online learning; -1 = the full training set"),
        "epochs": Key(10, _COUNT, "epochs to train", True),
        "early_stopping.patience": Key(
            0, number(0, integer=True), "epochs without a better val error; 0 = off", True
        ),
        "devices.strategy": Key(
            "sharding", choice(placement.STRATEGIES), "one device, pmap, or jit over a mesh", True
        ),
        "dtype": Key(
            "float32",
            choice(build.COMPUTE_DTYPES),
            "compute dtype; bfloat16 = mixed precision (float32 params, optimizer, loss)",
            True,
        ),
        "checkpoint.keep": Key(3, _COUNT, "checkpoints kept in WORKDIR/checkpoints", True),
        "checkpoint.every_steps": Key(
            0, number(0, integer=True), "also save every N steps; 0 = by time only", True
        ),
        "checkpoint.every_seconds": Key(
            60.0, number(0.0), "save at a chunk end once this long since the last; 0 = off", True
        ),
        "steps_per_chunk": Key(10, _COUNT, "compiled steps per dispatch (unrolled on CPU)", True),
        "log_every_seconds": Key(
            5.0, number(0.0), "a progress line this often when stderr is no terminal", True
        ),
        "compilation_cache_dir": Key(
            "~/.cache/jaxnet/xla", TEXT, "JAX's persistent compilation cache; '' = off", True
        ),
    }


def _keys() -> dict[str, Key]:
    return {**_data_and_model_keys(), **_objective_keys(), **_run_keys()}


KEYS = _keys()


def base_config() -> ml_collections.ConfigDict:
    """Every key at its default: configs/*.py start from this and change what they need."""
    config = ml_collections.ConfigDict()
    for dotted, key in KEYS.items():
        *groups, leaf = dotted.split(".")
        node = config
        for group in groups:
            if group not in node:
                node[group] = ml_collections.ConfigDict()
            node = node[group]
        node[leaf] = key.default
    return config


# ---------------------------------------------------------------------------------- validation


def flatten(config, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf of a ConfigDict (or a nested dict)."""
    out = {}
    for name, value in config.items():
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            out.update(flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def unknown_key_message(name: str, where: str = "") -> str:
    """One line: the unknown key, the closest known keys, and how to list them all."""
    close = difflib.get_close_matches(name, KEYS, n=3, cutoff=0.6)
    leaf_matches = [k for k in KEYS if k.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]]
    close = list(dict.fromkeys(close + leaf_matches))[:3]
    hint = f"; did you mean {' or '.join(f'config.{k}' for k in close)}?" if close else ""
    return f"unknown config key config.{name}{where}{hint} (list them: {LIST_KEYS})"


def validate(config) -> None:
    """Raise ConfigError unless `config` has exactly the known keys, each with an allowed value
    (and JAXNET_CHUNK, if set, names a chunk mode)."""
    have = flatten(config)
    for name in have:
        if name not in KEYS:
            raise ConfigError(unknown_key_message(name))
    missing = [name for name in KEYS if name not in have]
    if missing:
        raise ConfigError(
            f"the config lacks key(s) {', '.join(missing)} (start from base_config())"
        )
    for name, key in KEYS.items():
        problem = key.check.problem(have[name])
        if problem:
            raise ConfigError(f"config.{name}={have[name]!r}: {problem}")
    _check_combinations(config)
    try:  # the one setting outside the config, checked here so a bad one fails before any write
        steps.chunk_mode()
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_dataset(d) -> None:
    if d.name in data.FILE_DATASETS and not d.path:
        raise ConfigError(
            f"config.dataset.name={d.name!r} needs config.dataset.path=FILE.{d.name}, the file "
            "of x_train, y_train, x_test, y_test"
        )
    if d.path and d.name not in data.FILE_DATASETS:
        raise ConfigError(
            f"config.dataset.path={d.path!r} is only read with config.dataset.name='npz', not "
            f"{d.name!r}: drop it, or set --config.dataset.name=npz"
        )


def _check_combinations(config) -> None:
    _check_dataset(config.dataset)
    outputs = build.LOSS_OUTPUTS.get(config.loss)
    if outputs and config.model.output_activation not in outputs:
        raise ConfigError(
            f"config.loss={config.loss!r} needs config.model.output_activation in {outputs}, "
            f"got {config.model.output_activation!r}"
        )
    if config.label_smoothing > 0 and config.loss not in build.SMOOTHED_LOSSES:
        raise ConfigError(
            f"config.label_smoothing={config.label_smoothing} applies to config.loss in "
            f"{build.SMOOTHED_LOSSES}, not {config.loss!r}: set it to 0 or change the loss"
        )
    _check_model(config.model)
    s = config.schedule
    if s.name == "cosine" and s.warmup_epochs >= config.epochs:
        raise ConfigError(
            f"config.schedule.warmup_epochs={s.warmup_epochs} leaves no epoch of cosine decay "
            f"in config.epochs={config.epochs}: use fewer warm-up epochs"
        )


def _check_model(m) -> None:
    """The model keys together; layer specs are parsed and a builder imported (no data needed)."""
    if m.kind in models.CONV_BLOCK_KINDS and not m.channels:
        raise ConfigError(
            f"config.model.channels=() gives model.kind={m.kind!r} no conv block: "
            "give at least one width, or use model.kind='mlp'"
        )
    for kind in ("layers", "builder"):  # each key is used by the kind of its name only
        if m[kind] and m.kind != kind:
            raise ConfigError(
                f"config.model.{kind} is set, but config.model.kind={m.kind!r}: set "
                f"model.kind={kind!r} to use it, or clear model.{kind}"
            )
    if m.kind == "layers" and not m.layers:
        raise ConfigError(
            "config.model.kind='layers' needs config.model.layers, such as "
            "('flatten', 'dense(128)', 'relu')"
        )
    if m.kind == "builder" and not m.builder:
        raise ConfigError(
            "config.model.kind='builder' needs config.model.builder='module.path:function'"
        )
    try:
        if m.kind == "layers":
            models.spec_layers(m)
        if m.kind == "builder":
            models.builder_function(m.builder)
    except models.SpecError as error:
        raise ConfigError(str(error)) from None


def describe(config=None) -> str:
    """Every key: its value in `config` (or the default), what is allowed, and what it does."""
    values = flatten(config) if config is not None else {}
    lines = ["config keys (* may change when resuming a workdir):"]
    for name, key in KEYS.items():
        value = values.get(name, key.default)
        star = "*" if key.on_resume else " "
        lines.append(f" {star} {name} = {value!r}    [{key.check.allowed}]  {key.help}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- saved configs


# config.json's entry of what the run found rather than chose (the dataset it read): not a key
RECORDED = "recorded"


def to_json(config, recorded: dict | None = None) -> str:
    """The config as flat JSON; `recorded` goes under RECORDED, which from_json skips."""
    return json.dumps({**flatten(config), **({RECORDED: recorded} if recorded else {})}, indent=2)


def from_json(text: str, where: str = "config.json") -> ml_collections.ConfigDict:
    """The config saved as JSON (flat or nested), on top of the defaults; lists become tuples."""
    try:
        loaded = json.loads(text)
        if isinstance(loaded, dict):
            loaded.pop(RECORDED, None)
        saved = flatten(loaded)
    except (json.JSONDecodeError, AttributeError) as error:
        raise ConfigError(f"{where} is not a saved config: {error}") from None
    config = base_config()
    for name, value in saved.items():
        if name not in KEYS:
            raise ConfigError(unknown_key_message(name, f" in {where}"))
        set_value(config, name, tuple(value) if isinstance(value, list) else value)
    return config


def set_value(config, name: str, value) -> None:
    *groups, leaf = name.split(".")
    node = config
    for group in groups:
        node = node[group]
    with node.ignore_type():
        node[leaf] = value


def resume_changes(saved, requested) -> tuple[list[str], list[str]]:
    """(allowed, refused) differences 'key: saved -> requested' between two configs."""
    old, new = flatten(saved), flatten(requested)
    allowed, refused = [], []
    for name, key in KEYS.items():
        a, b = old.get(name), new.get(name)
        if _same(a, b):
            continue
        (allowed if key.on_resume else refused).append(f"{name}: {a!r} -> {b!r}")
    return allowed, refused


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    if _is_real(a) and _is_real(b):
        return float(a) == float(b)
    return a == b
