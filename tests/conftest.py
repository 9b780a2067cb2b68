"""Strict test settings: float64 everywhere, rank promotion raising, 8 fake CPU devices, fresh keys.

XLA_FLAGS must be set before jax is imported, so it is done here at collection time.
Every test that takes `key` gets a fresh random key; its seed is printed, and the whole run
can be repeated with JAXNET_TEST_SEED=<seed> pytest ...
"""

import os
import secrets
import zlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jaxnet.training import xla_cpu  # noqa: E402

# the XLA:CPU setting train.py uses, so the tests run what users run
xla_cpu.prefer_xla_convolutions()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

_BASE_SEED = int(os.environ.get("JAXNET_TEST_SEED", secrets.randbits(31)))


def pytest_report_header(config):
    return (
        f"jaxnet test seed: JAXNET_TEST_SEED={_BASE_SEED} "
        f"(jax {jax.__version__}, {jax.device_count()} devices)"
    )


@pytest.fixture
def key(request):
    """A fresh PRNG key per test, derived from the run's seed and the test's name."""
    seed = (_BASE_SEED + zlib.crc32(request.node.nodeid.encode())) % (2**31)
    print(f"key seed {seed} (JAXNET_TEST_SEED={_BASE_SEED})")
    return jax.random.PRNGKey(seed)


# The slowest files first: run over two workers (pytest -n 2 --dist loadfile), the suite then
# ends with short files on both, instead of one worker finishing the verify suite alone.
SLOW_FIRST = (
    "test_verify.py",
    "test_train_bad_inputs.py",
    "test_bench.py",
    "test_train_cli.py",
    "test_experiments.py",
    "test_layers.py",
    "test_gcs.py",
    "test_training.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
