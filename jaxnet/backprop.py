"""Back-propagation written out, with hand-written local Jacobians.

Algorithm 1 of the notes (000/002, Sec. 3).

Two forms, both returning the gradient of the risk L_T = (1/N) sum_n l_n with exactly the
pytree structure `jax.grad` gives for the same network:

- `backprop`: the algorithm as printed. Forward propagation stores every x^(k); then for each
  sample n the row vector g = dl_n/dp (4) is carried back through the layers, taking
  g dx^(k)/dw^(k) for the layer's gradient (2) and g dx^(k)/dx^(k-1) for the next g (3), with
  the local Jacobian *matrices* of each layer; the per-sample gradients are averaged with the
  running update grad L <- ((n - 1) grad L + grad l_n) / n. Memory grows with the Jacobians'
  size: meant for checking and teaching, on small networks.
- `backprop_batched`: the same recursion on all samples at once, with each layer's closed-form
  vector-Jacobian product instead of explicit matrices (the "correlations and explicit loops
  over appropriate indices" the notes say are used in practice).

Note on the extracted Algorithm 1: its loop reads "for k = K, ..., 2", which would skip the
first layer's parameters. Equation (2) holds for k = K, ..., 1 and the recursion (3) for
k = K, ..., 2, so here every layer's gradient is taken and g stops being propagated at layer 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet.layers.base import Layer, backward, forward_with_activations, layer_keys
from jaxnet.losses import Loss


def _as_layer_list(network: Layer, params):
    if not isinstance(network, Layer):
        raise TypeError(
            f"network must be a jaxnet Layer (e.g. from serial), got {type(network).__name__}"
        )
    if network.name == "serial":
        return network.spec["layers"], tuple(params), lambda grads: grads
    return (network,), (params,), lambda grads: grads[0]


def _check_loss(loss):
    if not isinstance(loss, Loss):
        raise TypeError(
            "loss must be a jaxnet.losses.Loss (value and derivative), "
            f"e.g. losses.CROSS_ENTROPY_FROM_LOGITS; got {loss!r}"
        )


def backprop(network: Layer, params, x, targets, loss: Loss, *, key=None):
    """Algorithm 1: per-sample back-propagation with explicit local Jacobian matrices.

    Returns grad L_T.
    """
    _check_loss(loss)
    layers, params, unwrap = _as_layer_list(network, params)
    for layer in layers:
        if layer.jacobians is None:
            raise ValueError(f"layer {layer.name!r} has no hand-written Jacobians")
    keys = layer_keys(key, len(layers))
    xs = forward_with_activations(layers, params, x, key)
    g_out = loss.derivative(xs[-1], targets)

    def sample_gradient(n):
        g = g_out[n]
        grads = [None] * len(layers)
        for k in reversed(range(len(layers))):
            J_w, J_x = layers[k].jacobians(params[k], xs[k], n, key=keys[k])
            grads[k] = jax.tree_util.tree_map(
                lambda J: jnp.tensordot(g, J, axes=g.ndim), J_w
            )  # (2)
            if k > 0:
                g = jnp.tensordot(g, J_x, axes=g.ndim)  # (3)
        return tuple(grads)

    def accumulate(n, mean):
        grad_n = sample_gradient(n)
        count = (n + 1).astype(g_out.dtype)  # the notes' 1-based n
        return jax.tree_util.tree_map(lambda m, gn: ((count - 1) * m + gn) / count, mean, grad_n)

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return unwrap(jax.lax.fori_loop(0, x.shape[0], accumulate, zeros))


def backprop_batched(network: Layer, params, x, targets, loss: Loss, *, key=None):
    """The same gradient from one backward pass over the whole batch.

    Each layer's closed-form vjp carries the whole batch of row vectors back.
    """
    _check_loss(loss)
    layers, params, unwrap = _as_layer_list(network, params)
    xs = forward_with_activations(layers, params, x, key)
    g = loss.derivative(xs[-1], targets) / x.shape[0]  # d L_T / d p_n = (1/N) dl_n / dp_n
    grads, _ = backward(layers, params, xs, g, layer_keys(key, len(layers)))
    return unwrap(grads)
