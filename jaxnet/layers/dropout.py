"""Dropout (notes 000, Sec. 5) with an explicit PRNG key.

The notes turn each unit off with probability 1 - p during training and, after training,
multiply by p ("all the weights in the network are multiplied by p"; notes 004: "the activation
of each node is multiplied by the same percentage"). Both keep E[output] the same in training
and testing. jaxnet offers both placements of the factor:

- scale_at='train' (default, "inverted dropout"): training output mask * x / p, testing x.
  Test-time networks need no change, which is why every modern library does this.
- scale_at='test' (the notes' literal rule): training output mask * x, testing p x.

`rate` is the drop probability 1 - p. A `key` turns dropout on (training); without one the
layer applies its test-time rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet.layers.base import Layer
from jaxnet.layers.elementwise import diagonal_jacobian


def dropout_mask(key, keep: float, shape):
    """Bernoulli(keep) mask: 1 keeps a unit, 0 drops it."""
    return jax.random.bernoulli(key, keep, shape)


def Dropout(rate: float = 0.5, scale_at: str = "train") -> Layer:
    """Drop each unit with probability `rate` when called with a key.

    See the module doc for `scale_at`.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(
            f"Dropout rate is the drop probability and must be in [0, 1), got {rate!r}"
        )
    if scale_at not in ("train", "test"):
        raise ValueError(
            "Dropout scale_at must be 'train' (inverted dropout) or 'test' (the notes' rule), "
            f"got {scale_at!r}"
        )
    keep = 1.0 - rate

    def factor(x, key):
        """The multiplier of x: a mask (training) or a constant (testing), x's shape and dtype."""
        if key is None:
            return jnp.full_like(x, keep if scale_at == "test" else 1.0)
        mask = dropout_mask(key, keep, x.shape).astype(x.dtype)
        return mask / keep if scale_at == "train" else mask

    def init(rng, input_shape):
        return tuple(input_shape), ()

    def apply(params, x, *, key=None):
        return x * factor(x, key)

    def jacobians(params, x, n, *, key=None):
        return (), diagonal_jacobian(factor(x, key)[n])

    def vjp(params, x, g, *, key=None):
        return (), g * factor(x, key)

    return Layer("dropout", init, apply, jacobians, vjp, {"rate": rate, "scale_at": scale_at})
