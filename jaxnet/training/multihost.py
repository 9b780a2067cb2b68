"""Multi-host start-up: jax.distributed on TPU pods and clusters, a no-op on one machine.

On a Cloud TPU pod slice (or under SLURM / Open MPI) JAX finds the coordinator and the process
ids itself. Anywhere else, set them in the environment of every process:
    JAX_COORDINATOR_ADDRESS=host:port  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i  (0 <= i < N)
"""

import os

import jax

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _int_env(name: str):
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be an integer") from None


def initialize() -> bool:
    """Join the other hosts of a multi-host job; alone, do nothing.

    Returns whether a job was joined.
    """
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    on_tpu_pod = os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
    if not (explicit or on_tpu_pod):
        return False
    num_processes, process_id = _int_env("JAX_NUM_PROCESSES"), _int_env("JAX_PROCESS_ID")
    if explicit and not on_tpu_pod and (num_processes is None or process_id is None):
        raise ValueError(
            f"JAX_COORDINATOR_ADDRESS={explicit} is set, so this is one process of a multi-host "
            f"job, but JAX_NUM_PROCESSES={os.environ.get('JAX_NUM_PROCESSES')} and "
            f"JAX_PROCESS_ID={os.environ.get('JAX_PROCESS_ID')}: "
            "set both (or unset JAX_COORDINATOR_ADDRESS to train on this machine alone)"
        )
    # CPU hosts exchange gradients through gloo; accelerators ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(num_processes=num_processes, process_id=process_id)
    return True
