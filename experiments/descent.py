"""Full-batch training for the small experiments.

`steps` optimizer updates of risk(params, *data) as one lax.scan.
"""

from __future__ import annotations

import functools

import jax
import optax


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def descend(risk, optimizer, steps: int, params, state, *data):
    """(params, optimizer state) after `steps` updates.

    risk and optimizer are static arguments, so reusing them reuses the compiled function.
    """

    def step(carry, _):
        params, state = carry
        updates, state = optimizer.update(jax.grad(risk)(params, *data), state, params)
        return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, state), None, length=steps)[0]
