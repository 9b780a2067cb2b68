"""One process of a two-process jax.distributed job on CPU; tests/test_multihost.py starts two.

    python tests/multihost_worker.py PORT PROCESS_ID STRATEGY SEED OUT.npz

Each process has 2 fake CPU devices, so the job's mesh has 4. Both processes train the same
toy problem for STEPS steps, each feeding only its own half of every global batch; process 0
writes the parameters. The test compares them with one device in its own process.
"""

import os
import sys

import numpy as np

STEPS = 50


def make_case(seed: int):
    """(config, dataset): a small MLP with Adam on a learnable toy problem, batch 32."""
    from jaxnet.data import Dataset, Split
    from jaxnet.training.config import base_config

    rng = np.random.default_rng(seed)
    protos = rng.uniform(size=(4, 6, 6, 1)).astype(np.float32)

    def split(n):
        y = rng.integers(0, 4, n).astype(np.int32)
        return Split((protos[y] + 0.5 * rng.standard_normal((n, 6, 6, 1))).astype(np.float32), y)

    dataset = Dataset("toy", "generated", (), split(1000), split(64), split(64), 4)
    config = base_config()
    config.model.kind, config.model.hidden = "mlp", (16,)
    config.batch_size, config.steps_per_chunk = (
        32,
        2,
    )  # 1000 = 31 batches of 32 + a partial one: step 32 ends epoch 1
    config.optimizer.learning_rate = 0.01
    return config, dataset


def params_after_steps(strategy: str, config, dataset, steps: int = STEPS):
    """Host numpy parameters after `steps` steps of the trainer's own epochs."""
    import jax

    from jaxnet.training import build
    from jaxnet.training import steps as steps_lib
    from jaxnet.training.placement import STRATEGIES

    built = build.Built(config, dataset)
    placement = STRATEGIES[strategy](built.model, built.loss_fn, built.optimizer)
    state = built.initial_state()
    if placement.multi_process:
        state = jax.tree_util.tree_map(np.asarray, state)
    data = placement.put_data(dataset.train.images, dataset.train.labels)
    device_state = placement.put_state(state)
    done, epoch = 0, 0
    while done < steps:
        plan = steps_lib.epoch_plan(
            len(dataset.train.labels), config.batch_size, config.steps_per_chunk, config.seed, epoch
        )
        chunks = steps_lib.run_epoch(placement, device_state, data, plan)
        for state, result in chunks:
            device_state = state
            done += len(result.risks)
            if done >= steps:
                break
        epoch += 1
    host = placement.host_state(device_state)
    assert int(np.asarray(host.step)) == steps, int(np.asarray(host.step))
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(host.params)]


def main(port: str, process_id: str, strategy: str, seed: str, out: str) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        f"localhost:{port}", num_processes=2, process_id=int(process_id), initialization_timeout=60
    )
    assert jax.process_count() == 2 and jax.device_count() == 4
    config, dataset = make_case(int(seed))
    leaves = params_after_steps(strategy, config, dataset)
    if jax.process_index() == 0:
        np.savez(out, *leaves)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(*sys.argv[1:])
