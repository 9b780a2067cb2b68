"""The notes' update rules written out, each an `optax.GradientTransformation`.

Chain them, and use them in any optax loop.

optax's convention: `update` turns gradients into updates u, and `optax.apply_updates` does
w <- w + u. So plain gradient descent's update is u = -alpha grad.

- `sgd`: w <- w - alpha grad.
- `momentum`: v <- mu_t v - alpha grad, w <- w + v (notes 000 Sec. 4, 004), with mu_t a constant
  or a schedule such as `sutskever_momentum` (the notes' Figure 4); `nesterov=True` evaluates
  the gradient at the look-ahead point w + mu v (Sutskever et al. 2013), in the form that needs
  no second gradient.
- `adam`: notes 004's equations with bias correction, eps outside the square root.
- weight decay in the loss, (lambda/2) sum w^2: `l2_regularization` adds lambda w to the
  gradient before the optimizer; decoupled: `decoupled_weight_decay` adds -alpha lambda w to the
  update after it (AdamW).

Learning rates and mu may be floats or schedules t -> value (optax schedules work), evaluated at
the step count t = 0, 1, 2, ... of the update being made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = float | Callable[[Any], Any]


def _at(value: ScalarOrSchedule, count):
    return value(count) if callable(value) else value


def _tree_zeros(params):
    return jax.tree_util.tree_map(jnp.zeros_like, params)


def _need_params(name, params):
    if params is None:
        raise ValueError(f"{name} needs the parameters: call update(grads, state, params)")


def sutskever_momentum(t, mu_max: float = 0.99, period: int = 250):
    """mu_t = min(1 - 2^(-1 - log2(floor(t / period) + 1)), mu_max) (notes' Figure 4).

    0.5, 0.75, 0.833, 0.875, ... Since 2^(-1 - log2 m) = 1 / (2 m), this is
    min(1 - 1 / (2 floor(t / 250) + 2), mu_max).
    """
    m = jnp.floor_divide(t, period) + 1
    return jnp.minimum(1 - 2.0 ** (-1 - jnp.log2(m.astype(jnp.result_type(float)))), mu_max)


class CountState(NamedTuple):
    count: jax.Array


class MomentumState(NamedTuple):
    count: jax.Array
    velocity: Any


class AdamState(NamedTuple):
    count: jax.Array
    m: Any
    v: Any


def sgd(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
    """w <- w - alpha_t grad."""

    def init(params):
        return CountState(jnp.zeros([], jnp.int32))

    def update(grads, state, params=None):
        alpha = _at(learning_rate, state.count)
        return jax.tree_util.tree_map(lambda g: -alpha * g, grads), CountState(state.count + 1)

    return optax.GradientTransformation(init, update)


def momentum(
    learning_rate: ScalarOrSchedule, mu: ScalarOrSchedule = 0.9, nesterov: bool = False
) -> optax.GradientTransformation:
    """v <- mu_t v - alpha_t grad;  w <- w + v.

    With nesterov=True: w <- w + mu_t v - alpha_t grad.
    """

    def init(params):
        return MomentumState(jnp.zeros([], jnp.int32), _tree_zeros(params))

    def update(grads, state, params=None):
        alpha, mu_t = _at(learning_rate, state.count), _at(mu, state.count)
        velocity = jax.tree_util.tree_map(lambda v, g: mu_t * v - alpha * g, state.velocity, grads)
        if nesterov:
            updates = jax.tree_util.tree_map(lambda v, g: mu_t * v - alpha * g, velocity, grads)
        else:
            updates = velocity
        return updates, MomentumState(state.count + 1, velocity)

    return optax.GradientTransformation(init, update)


def adam(
    learning_rate: ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam (notes 004), with bias correction and eps outside the square root.

    m_t = b1 m + (1-b1) g, v_t = b2 v + (1-b2) g^2, w_t = w - eta m^_t / (sqrt(v^_t) + eps).
    """

    def init(params):
        return AdamState(jnp.zeros([], jnp.int32), _tree_zeros(params), _tree_zeros(params))

    def update(grads, state, params=None):
        t = state.count + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.m, grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g**2, state.v, grads)
        eta = _at(learning_rate, state.count)
        c1, c2 = 1 - b1**t, 1 - b2**t  # bias corrections: m^_t = m_t / c1, v^_t = v_t / c2
        updates = jax.tree_util.tree_map(
            lambda m, v: -eta * (m / c1) / (jnp.sqrt(v / c2) + eps), m, v
        )
        return updates, AdamState(t, m, v)

    return optax.GradientTransformation(init, update)


def _masked_decay(lam, params, mask, scale):
    # scale * (lam * w), not (scale * lam) * w: optax schedules return float32 scalars, and their
    # product would be rounded to float32 before meeting float64 weights.
    if mask is None:
        return jax.tree_util.tree_map(lambda w: scale * (lam * w), params)
    return jax.tree_util.tree_map(
        lambda w, keep: scale * (lam * w) if keep else jnp.zeros_like(w), params, mask
    )


def l2_regularization(lam: float, mask=None) -> optax.GradientTransformation:
    """grad <- grad + lambda w: the gradient of (lambda/2) sum w^2 added to the loss.

    Put it before the optimizer.

    mask: a pytree of bools like params choosing the decayed leaves (e.g. False for biases).
    """

    def update(grads, state, params=None):
        _need_params("l2_regularization", params)
        decay = _masked_decay(lam, params, mask, 1.0)
        return jax.tree_util.tree_map(jnp.add, grads, decay), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def decoupled_weight_decay(
    lam: float, learning_rate: ScalarOrSchedule, mask=None
) -> optax.GradientTransformation:
    """update <- update - alpha_t lambda w, outside the optimizer's rescaling.

    Decoupled weight decay (Loshchilov and Hutter): put it after the optimizer.

    mask: a pytree of bools like params choosing the decayed leaves (e.g. False for biases).
    """

    def init(params):
        return CountState(jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        _need_params("decoupled_weight_decay", params)
        decay = _masked_decay(lam, params, mask, -_at(learning_rate, state.count))
        return jax.tree_util.tree_map(jnp.add, updates, decay), CountState(state.count + 1)

    return optax.GradientTransformation(init, update)


def adamw(
    learning_rate: ScalarOrSchedule = 1e-3, weight_decay: float = 1e-4, mask=None, **adam_kwargs
) -> optax.GradientTransformation:
    """Adam with decoupled weight decay."""
    return optax.chain(
        adam(learning_rate, **adam_kwargs),
        decoupled_weight_decay(weight_decay, learning_rate, mask),
    )
