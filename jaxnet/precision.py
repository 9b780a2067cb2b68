"""Mixed precision: a network that computes in a narrow dtype around parameters kept in float32.

`mixed(network, jnp.bfloat16)` has the network's init, so its parameters (and so the optimizer
state) stay as initialised, float32. Its apply casts the floating parameters and the input to
bfloat16, runs every layer in bfloat16, and returns the logits in float32, so the loss and its
soft-max are computed in float32. The derivative of a cast is the cast back, so the gradients
reach the float32 parameters in float32 and the updates are applied in full precision: the
policy of mixed-precision training on GPUs and TPUs (Micikevicius et al. 2018, with bfloat16,
whose float32 exponent range needs no loss scaling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet.layers.base import Layer, Stateful


def cast_floating(tree, dtype):
    """Every floating-point leaf of `tree` as `dtype`; integer and boolean leaves unchanged."""

    def cast(leaf):
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree_util.tree_map(cast, tree)


def mixed(network: Layer, compute_dtype, output_dtype=jnp.float32) -> Layer:
    """`network` computing in `compute_dtype` (params and input cast), output in `output_dtype`."""

    def apply(params, x, *, key=None):
        y = network.apply(
            cast_floating(params, compute_dtype), cast_floating(x, compute_dtype), key=key
        )
        return y.astype(output_dtype)

    spec = {"network": network, "compute_dtype": jnp.dtype(compute_dtype).name}
    # no hand-written derivatives: jax.grad differentiates through the casts
    return Layer(
        "mixed_precision",
        network.init,
        apply,
        None,
        None,
        spec,
        _mixed_stateful(network, compute_dtype, output_dtype),
    )


def _mixed_stateful(network: Layer, compute_dtype, output_dtype) -> Stateful | None:
    """The network's state threaded as it was: running statistics stay in their own dtype."""
    if network.stateful is None:
        return None

    def apply(params, state, x, **options):
        y, new = network.stateful.apply(
            cast_floating(params, compute_dtype), state, cast_floating(x, compute_dtype), **options
        )
        new = jax.tree_util.tree_map(lambda a, old: a.astype(old.dtype), new, state)
        return y.astype(output_dtype), new

    return Stateful(network.stateful.init_state, apply)
