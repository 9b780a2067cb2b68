"""The optimizer a config names: jaxnet.optim's update rules, learning-rate schedules, and weight decay.

The whole chain is wrapped in `optax.inject_hyperparams`, so the current learning rate and
momentum are in the optimizer state (the training table prints them) and the plateau rule can
divide the learning rate by 10 between epochs.
"""

from __future__ import annotations

import jax
import optax

from jaxnet import optim


def learning_rate_schedule(config, steps_per_epoch: int):
    """A float, or an optax schedule of the step count, for config.schedule."""
    lr, s = config.optimizer.learning_rate, config.schedule
    if s.name in ("constant", "plateau"):
        return lr
    if s.name == "step":
        return optax.exponential_decay(
            lr, s.step_epochs * steps_per_epoch, s.step_factor, staircase=True
        )
    total = config.epochs * steps_per_epoch
    if s.warmup_epochs == 0:
        return optax.cosine_decay_schedule(lr, total)
    return optax.warmup_cosine_decay_schedule(0.0, lr, s.warmup_epochs * steps_per_epoch, total)


def decay_mask(params):
    """Weight decay applies to weights, not biases (1-D leaves), as is usual in practice."""
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def build_optimizer(config, steps_per_epoch: int, params) -> optax.GradientTransformation:
    o, wd = config.optimizer, config.weight_decay
    mask = decay_mask(params)

    def make(learning_rate, momentum):
        parts = []
        if wd.lam > 0 and not wd.decoupled:
            parts.append(optim.l2_regularization(wd.lam, mask))
        if o.name == "sgd":
            parts.append(optim.sgd(learning_rate))
        elif o.name in ("momentum", "nesterov"):
            parts.append(optim.momentum(learning_rate, momentum, nesterov=o.name == "nesterov"))
        else:
            parts.append(optim.adam(learning_rate, o.b1, o.b2, o.eps))
        if wd.lam > 0 and wd.decoupled:
            parts.append(optim.decoupled_weight_decay(wd.lam, learning_rate, mask))
        return optax.chain(*parts)

    if o.momentum_schedule == "sutskever":
        mu = lambda t: optim.sutskever_momentum(t, o.mu_max)  # noqa: E731
    else:
        mu = o.momentum
    return optax.inject_hyperparams(make)(
        learning_rate=learning_rate_schedule(config, steps_per_epoch), momentum=mu
    )
