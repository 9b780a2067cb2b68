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

From a chain to a graph. The notes' network is a chain, x^(k) = f^(k)(x^(k-1), w^(k)), and g
carries dl/dx^(k) down it. A network with branches and skips (`jaxnet.layers.combinators`) is
a directed acyclic graph of layers in which a node's output may feed several consumers. Its
output then affects l through each of them, so the chain rule sums over the consumers:

    g_v = dl/dx_v = sum over the consumers c of v of  g_c dx_c/dx_v,

and a node's parameters get g_v dx_v/dw_v as in (2). Taken in reverse topological order,
every consumer's g is complete before its producers need it. jaxnet writes such a graph as a
`serial` chain whose activations may be tuples of branches, which is any DAG in topological
order (each stage carries the tuple of the values still needed). Then

- a tuple-valued layer's J is a block matrix, J[i][j] = dy_i/dx_j, and (3) is taken leafwise:
  g_new[j] = sum_i g[i] J[i][j] (`jaxnet.layers.contract`);
- FanOut(n), x -> (x, ..., x), is where the sums over consumers happen: its J is (I, ..., I),
  so g_x = sum_i g[i]; FanInSum copies g to each input; FanInConcat splits it; parallel
  applies each branch's J to its own g[i];
- Residual, y = x + f(x), is FanOut(2), parallel(identity, f), FanInSum in one node:
  J = I + J_f, so g_x = g + g J_f.

Batch coupling. The chain is per sample only while sample n's output depends on x_n alone.
Below a layer that couples the batch (BatchNorm in training, `couples_batch`), l_n depends on
every x_m, so Algorithm 1's g becomes a row over the whole batch, dl_n/dx_m^(k) for every m:
the coupled layer's J_x (out_shape + x.shape) maps sample n's g to all of them, and each layer
below takes g_m J^(k)(m) for each m, adding the parameter gradients over m
(`jaxnet.layers.pull_back`). Without such a layer the algorithm runs as printed. The batched
form needs nothing new: a vjp is already taken over the whole batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet.layers.base import (
    Layer,
    backward,
    batch_size,
    forward_with_activations,
    layer_keys,
    pull_back,
    sample,
)
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
        # for k = K, ..., 1: grad_k = g dx^(k)/dw^(k) (2), then g <- g dx^(k)/dx^(k-1) (3)
        grads, _ = pull_back(layers, params, xs, keys, sample(g_out, n), n, to_input=False)
        return grads

    def accumulate(n, mean):
        grad_n = sample_gradient(n)
        count = (n + 1).astype(g_out.dtype)  # the notes' 1-based n
        return jax.tree_util.tree_map(lambda m, gn: ((count - 1) * m + gn) / count, mean, grad_n)

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return unwrap(jax.lax.fori_loop(0, batch_size(x), accumulate, zeros))


def backprop_batched(network: Layer, params, x, targets, loss: Loss, *, key=None):
    """The same gradient from one backward pass over the whole batch.

    Each layer's closed-form vjp carries the whole batch of row vectors back.
    """
    _check_loss(loss)
    layers, params, unwrap = _as_layer_list(network, params)
    xs = forward_with_activations(layers, params, x, key)
    g = loss.derivative(xs[-1], targets) / batch_size(x)  # d L_T / d p_n = (1/N) dl_n / dp_n
    grads, _ = backward(layers, params, xs, g, layer_keys(key, len(layers)))
    return unwrap(grads)
