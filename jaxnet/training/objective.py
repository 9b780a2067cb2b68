"""The training objective a config names: a per-sample loss of the network's logits and integer labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet import activations, losses

OUTPUT_ACTIVATIONS = {
    "none": lambda z: z,
    "sigmoid": activations.sigmoid,
    "softmax": activations.softmax,
}


def per_sample_loss(loss_name: str, output_activation: str, num_classes: int):
    """l(logits, labels) -> (N,): cross-entropies from logits (stable), quadratic on the output units vs one-hot targets."""
    if loss_name == "cross_entropy":
        return losses.cross_entropy_from_logits
    if (
        loss_name == "binary_cross_entropy"
    ):  # the slides' multi-output cross-entropy of sigmoid units
        return lambda z, y: losses.binary_cross_entropy_from_logits(
            z, jax.nn.one_hot(y, num_classes, dtype=z.dtype)
        )
    if loss_name == "quadratic":
        f = OUTPUT_ACTIVATIONS[output_activation]
        return lambda z, y: losses.quadratic(f(z), jax.nn.one_hot(y, num_classes, dtype=z.dtype))
    raise ValueError(f"unknown loss {loss_name!r}")


def predictions(logits):
    """Class decisions: argmax of the logits (the same under any monotone output activation)."""
    return jnp.argmax(logits, axis=-1)
