"""Multi-host start-up: jax.distributed on TPU pods and clusters, a no-op on one machine."""

import os

import jax


def initialize() -> None:
    """Join the other hosts of a multi-host job (TPU pod slices, or JAX_COORDINATOR_ADDRESS set); alone, do nothing."""
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    on_tpu_pod = os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
    if explicit or on_tpu_pod:
        jax.distributed.initialize()  # reads the coordinator, process count and id from the environment
