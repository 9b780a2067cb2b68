"""Checks a training config: every key known, every value allowed, with errors that say which and what is allowed.

ml_collections already rejects unknown keys given on the command line; `validate` also catches
misspelt keys in config files and values outside their allowed set or range.
"""

from __future__ import annotations

import ml_collections

CHOICES = {
    "dataset.name": ("mnist", "fashion_mnist", "cifar10", "digits", "synthetic"),
    "model.kind": ("mlp", "cnn", "lenet", "cifar_cnn"),
    "model.activation": ("sigmoid", "tanh", "relu", "swish"),
    "model.output_activation": ("none", "sigmoid", "softmax"),
    "model.init": ("glorot", "he", "normal", "nielsen"),
    "loss": ("cross_entropy", "quadratic", "binary_cross_entropy"),
    "optimizer.name": ("sgd", "momentum", "nesterov", "adam"),
    "optimizer.momentum_schedule": ("constant", "sutskever"),
    "schedule.name": ("constant", "step", "cosine", "plateau"),
    "devices.strategy": ("single", "pmap", "sharding"),
}

RANGES = {  # key: (low, high, inclusive-low)
    "optimizer.learning_rate": (0.0, float("inf"), False),
    "optimizer.momentum": (0.0, 1.0, True),
    "optimizer.mu_max": (0.0, 1.0, True),
    "model.dropout": (0.0, 1.0, True),
    "weight_decay.lam": (0.0, float("inf"), True),
    "epochs": (1, float("inf"), True),
    "batch_size": (-1, float("inf"), True),
    "early_stopping.patience": (0, float("inf"), True),
    "checkpoint.keep": (1, float("inf"), True),
}


class ConfigError(ValueError):
    """A config key or value that cannot be used."""


def _get(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def flatten(config, prefix="") -> dict:
    """{"a.b": value} for every leaf of a ConfigDict."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def validate(config, reference) -> None:
    """Raise ConfigError unless config has exactly the keys of `reference` and allowed values."""
    have, known = flatten(config), flatten(reference)
    unknown = sorted(set(have) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
    missing = sorted(set(known) - set(have))
    if missing:
        raise ConfigError(f"config is missing key(s) {missing}")
    for key, allowed in CHOICES.items():
        value = _get(config, key)
        if value not in allowed:
            raise ConfigError(f"config.{key}={value!r} is not allowed; choose one of {allowed}")
    for key, (low, high, inclusive) in RANGES.items():
        value = _get(config, key)
        ok = (low <= value if inclusive else low < value) and value < high
        if not ok:
            bound = f"[{low}, {high})" if inclusive else f"({low}, {high})"
            raise ConfigError(f"config.{key}={value!r} is out of range {bound}")
    compatible = {"cross_entropy": ("none", "softmax"), "binary_cross_entropy": ("none", "sigmoid")}
    if config.model.output_activation not in compatible.get(
        config.loss, CHOICES["model.output_activation"]
    ):
        raise ConfigError(
            f"config.loss={config.loss!r} needs config.model.output_activation in {compatible[config.loss]}, "
            f"got {config.model.output_activation!r}"
        )
    if config.batch_size == 0:
        raise ConfigError(
            "config.batch_size=0 is not allowed: use 1 for online learning, N for mini-batches, -1 for the full batch"
        )
