"""BatchNorm's derivative rule against the autodiff of its weighted sums, in one process.

    python bench/batchnorm_rule.py [--repeats 7]

Times jax.grad of training-mode BatchNorm alone (a 128x26x26x32 batch, as after the default
CNN's first convolution) and whole training steps of configs/fast.py's and configs/resnet.py's
networks, built once with `jaxnet.layers.BatchNorm` (the closed-form rule) and once with the same
layer whose standardisation is differentiated sum by sum. Repeats are interleaved; the table
gives medians and the ratio plain / rule (above 1: the rule is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxnet.training import xla_cpu  # noqa: E402

xla_cpu.prefer_xla_convolutions()  # as train.py runs

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxnet import layers as L  # noqa: E402
from jaxnet import models  # noqa: E402
from jaxnet.layers import normalization  # noqa: E402
from jaxnet.training import build, steps  # noqa: E402


def _config_layers(name: str) -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.get_config().model.layers) + ("dense(10)",)


def _plain_standardise(x, weights, eps, axis_name=None):
    """batch_standardise without its rule: JAX differentiates every weighted sum."""
    mean, var, count = normalization._moments(x, weights, axis_name)
    column = lambda v: normalization.per_channel(v, x.ndim)
    xhat, _ = normalization.standardise(x, column(mean), column(var), eps)
    return xhat, mean, var, count


def _traced(fn, plain: bool):
    """fn jitted; with plain=True, traced while batch_standardise is the plain function."""
    jitted = jax.jit(fn)

    def call(*args):
        rule = normalization.batch_standardise
        if plain:
            normalization.batch_standardise = _plain_standardise
        try:
            return jitted(*args)
        finally:
            normalization.batch_standardise = rule

    return call


def _layer_case(plain: bool):
    layer = L.BatchNorm()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((128, 26, 26, 32)), jnp.float32)
    _, params = layer.init(None, x.shape[1:])
    state, mask = L.init_state(layer, x.shape[1:]), jnp.ones(128, jnp.float32)

    def loss(params, x):
        y, _ = layer.stateful.apply(params, state, x, train=True, mask=mask)
        return jnp.sum(y * y)

    grad = _traced(jax.grad(loss, argnums=(0, 1)), plain)
    return lambda: jax.block_until_ready(grad(params, x))


def _step_case(name: str, plain: bool):
    network = L.serial(*[models.parse_layer(s) for s in _config_layers(name)])
    optimizer = build.build_optimizer(_adam_config(), 100, None)
    state = build.initial_state(network, optimizer, 0, (28, 28, 1))
    loss = build.per_sample_loss("cross_entropy", "softmax", 10, 0.1)
    step = _traced(steps.make_step(network, loss, optimizer), plain)
    rng = np.random.default_rng(1)
    batch = (
        jnp.asarray(rng.random((128, 28, 28, 1)), jnp.float32),
        jnp.asarray(rng.integers(0, 10, 128)),
        jnp.ones(128, jnp.float32),
    )
    return lambda: jax.block_until_ready(step(state, batch))


def _adam_config():
    from jaxnet.training.config import base_config

    config = base_config()
    config.optimizer.name = "adam"
    return config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    cases = {
        "BatchNorm alone, grad": _layer_case,
        "configs/fast.py step": lambda plain: _step_case("fast", plain),
        "configs/resnet.py step": lambda plain: _step_case("resnet", plain),
    }
    print(f"{'case':24s} {'plain ms':>9s} {'rule ms':>8s} {'plain / rule':>12s}")
    for name, make in cases.items():
        runs = {plain: make(plain) for plain in (True, False)}
        times = {True: [], False: []}
        for run in runs.values():
            run()  # compile
        for _ in range(args.repeats):
            for plain, run in runs.items():
                start = time.perf_counter()
                for _ in range(5):
                    run()
                times[plain].append((time.perf_counter() - start) / 5)
        plain_ms, rule_ms = (1e3 * float(np.median(times[p])) for p in (True, False))
        print(f"{name:24s} {plain_ms:9.1f} {rule_ms:8.1f} {plain_ms / rule_ms:12.2f}", flush=True)


if __name__ == "__main__":
    main()
