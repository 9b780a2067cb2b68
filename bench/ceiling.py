"""The machine's ceiling for the benches' arithmetic: one large matrix product in XLA."""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp


def matmul_flops(n: int, dtype=jnp.float32, repeats: int = 5) -> float:
    """FLOP/s of one n x n matrix product in XLA on the default device (best of `repeats`)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    product = jax.jit(lambda a: a @ a)
    product(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        tic = time.perf_counter()
        for _ in range(3):
            out = product(a)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - tic) / 3)
    return 2 * n**3 / best
