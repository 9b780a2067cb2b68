"""Losses, risks and information measures, each with its derivative beside it.

From notes 000, 002 and 004, and slides 003.

Conventions, the same as optax's:
- Arguments are (prediction, target). The notes write l(y, p) with the label first; jaxnet
  writes `binary_cross_entropy(p, y)` for the same number.
- A loss returns one value per sample: shape (N,), summed over every non-batch axis. The risk
  L_T = (1/N) sum_n l_n is `risk(loss, prediction, target)`, the mean over the batch.
- `*_derivative(prediction, target)` is d l_n / d prediction_n with the prediction's shape: the
  starting row vector g of back-propagation, equation (4).
- Labels of multi-class losses are integer class indices of shape (N,) or one-hot (or any
  probability) rows of shape (N, K): the notes' q.
- An integer label outside [0, K) makes that sample's value NaN, for every function here that
  takes class indices (the cross-entropies and their derivatives, `as_distribution`,
  `zero_one_loss`, `error_rate`, `top_k_error`), eagerly and under jit alike: JAX cannot raise
  on a traced value, and NaN is what a trainer's non-finite check catches. The other samples
  keep their values and finite gradients. Without this, one_hot would make an all-zero row (a
  silent loss of 0 and a zero gradient), and take_along_axis would wrap -1 round to the last
  class and fill NaN above K - 1. `jaxnet.data` refuses such labels when a dataset is built.
- `unit='nats'` (natural log, the default) or `unit='bits'` (log base 2, as in Appendix A).
  Wherever q = 0, the term q log p is taken as 0 (the limit in Appendix A.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnet.activations import log_softmax, sigmoid, softmax


def _log_base(unit: str) -> float:
    if unit == "nats":
        return 1.0
    if unit == "bits":
        return math.log(2.0)
    raise ValueError(f"unit must be 'nats' or 'bits', got {unit!r}")


def _sum_per_sample(values):
    return jnp.sum(values.reshape(values.shape[0], -1), axis=1) if values.ndim > 1 else values


def _xlogy(x, y):
    """x log y with 0 log y = 0, whose gradient is finite (0) wherever x = 0.

    jax.scipy's xlogy gives a NaN gradient there.
    """
    positive = x != 0
    return jnp.where(positive, x * jnp.log(jnp.where(positive, y, 1)), 0)


def _xlog1m(x, y):
    """x log(1 - y), 0 where x = 0: log1p(-y) for y < 1/4, where 1 - y would round.

    Not beyond: XLA's log1p is up to 118 ulps off on [-0.414, -0.355], and 1 - y costs at most
    an ulp from y = 1/4 on.
    """
    positive = x != 0
    y = jnp.where(positive, y, 0)
    return jnp.where(positive, x * jnp.where(y < 0.25, jnp.log1p(-y), jnp.log(1 - y)), 0)


@jax.custom_jvp
def _softplus(x):
    """log(1 + e^x) without overflow; jax.grad uses its derivative sigma(x) = `sigmoid`.

    JAX's own derivative of logaddexp(0, x), exp(x - logaddexp(0, x)), rounds the difference
    (11 ulps at x = -30 and x = 30), and a loss built on it would not differentiate exactly.
    """
    return jnp.logaddexp(0.0, x)


@_softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return _softplus(x), sigmoid(x) * dx


def _in_range(labels, num_classes: int):
    """True where a class index is in [0, num_classes); traceable, so it works under jit."""
    below = labels < num_classes
    if jnp.issubdtype(labels.dtype, jnp.integer) and num_classes > jnp.iinfo(labels.dtype).max:
        below = jnp.ones(labels.shape, bool)  # every value of the dtype is below num_classes
    return (labels >= 0) & below


def as_distribution(labels, scores):
    """Labels as the notes' q: integer classes (N,) become one-hot rows; (N, K) rows pass through.

    An integer label outside [0, K) becomes a row of NaN (one_hot alone would give a row of
    zeros), so every loss computed from it is NaN for that sample.
    """
    labels = jnp.asarray(labels)
    if labels.shape == scores.shape:
        return labels.astype(scores.dtype)
    if labels.shape == scores.shape[:-1] and jnp.issubdtype(labels.dtype, jnp.integer):
        k = scores.shape[-1]
        q = jax.nn.one_hot(labels, k, dtype=scores.dtype)
        return jnp.where(_in_range(labels, k)[..., None], q, jnp.nan)
    raise ValueError(
        f"labels of shape {labels.shape} and dtype {labels.dtype} do not fit predictions of "
        f"shape {scores.shape}: expected integer classes of shape {scores.shape[:-1]} or one-hot "
        f"rows of shape {scores.shape}"
    )


def smooth_labels(labels, scores, epsilon: float):
    """q = (1 - epsilon) q + epsilon / K: label smoothing (Szegedy et al. 2016) of `labels`.

    Integer classes or distributions, as `as_distribution` reads them; NaN rows stay NaN.
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon!r}")
    q = as_distribution(labels, scores)
    return (1.0 - epsilon) * q + epsilon / scores.shape[-1]


def _check_same_shape(name, prediction, target):
    if jnp.shape(prediction) != jnp.shape(target):
        raise ValueError(
            f"{name}: prediction shape {jnp.shape(prediction)} differs from "
            f"target shape {jnp.shape(target)}"
        )


# ---------------------------------------------------------------------------------- regression


def quadratic(prediction, target, scale: float = 0.5):
    """scale ||y' - y||^2 per sample.

    scale=0.5 is the slides' and 004's (1/2) sum (t - z)^2; notes 000 use scale=1.
    """
    _check_same_shape("quadratic", prediction, target)
    return scale * _sum_per_sample((prediction - target) ** 2)


def quadratic_derivative(prediction, target, scale: float = 0.5):
    """d/dy' of scale ||y' - y||^2 = 2 scale (y' - y)."""
    return 2 * scale * (prediction - target)


# ---------------------------------------------------------------------------------- two-class


def binary_cross_entropy(p, y, unit: str = "nats"):
    """l(y, p) = -y log p - (1 - y) log(1 - p) (notes 000, Sec. 2.1).

    Summed over outputs if p is (N, e): on (N, e) sigmoid outputs this is the slides' multi-output
    binary cross-entropy.
    """
    _check_same_shape("binary_cross_entropy", p, y)
    return _sum_per_sample(-(_xlogy(y, p) + _xlog1m(1 - y, p))) / _log_base(unit)


def binary_cross_entropy_derivative(p, y, unit: str = "nats"):
    """dl/dp = -y / p + (1 - y) / (1 - p) = (p - y) / (p (1 - p)) (notes 004).

    Computed as (p - y) / (p (1 - p)): p - y is exact where p ~ y (Sterbenz), whereas the two
    terms of the sum cancel there (1e9 ulps off at y = 0.3, p = y + 1e-10). Below 2^-500, p and
    y are scaled by 2^500 (exactly) first, so that p - y does not flush to zero. For y = 1 and
    y = 0 the single terms -1/p and 1/(1 - p), also exact, are finite at p = 1 and p = 0.
    """
    soft = (y != 0) & (y != 1)
    scale = jnp.where(p < 2.0**-500, 2.0**500, 1.0)
    ratio = (p * scale - y * scale) / jnp.where(soft, p * scale * (1 - p), 1)
    hard = jnp.where(y == 1, -1 / jnp.where(y == 1, p, 1), 1 / jnp.where(y == 0, 1 - p, 1))
    return jnp.where(soft, ratio, hard) / _log_base(unit)


def binary_cross_entropy_from_logits(z, y, unit: str = "nats"):
    """The same loss of p = sigma(z), as y log(1 + e^-z) + (1 - y) log(1 + e^z).

    Finite for |z| = 1e4 and beyond. The equal form log(1 + e^z) - y z cancels when the loss is
    small (1e-12 relative at z = 8, y = 1). Under jax.grad, log(1 + e^x) differentiates to
    sigma(x), so the gradient is (1 - y) sigma(z) - y sigma(-z): exact for 0/1 labels.
    """
    _check_same_shape("binary_cross_entropy_from_logits", z, y)
    return _sum_per_sample(y * _softplus(-z) + (1 - y) * _softplus(z)) / _log_base(unit)


def binary_cross_entropy_from_logits_derivative(z, y, unit: str = "nats"):
    """dl/dz = sigma(z) - y: the sigmoid's derivative cancels (notes 004, slides 003).

    sigma(z) - y = (1 - y) sigma(z) - y sigma(-z), as 1 - sigma(z) = sigma(-z). It is evaluated
    as sigma(z) - y for z <= 0 and as (1 - y) - sigma(-z) for z > 0, where sigma(z) would round
    to 1 (sigma(40) - 1 = 0 instead of -4.25e-18): exact to a few ulps for 0/1 labels at every
    z. For a soft label y in (0, 1) the cancellation where sigma(z) ~ y is inherent (sigma(z)
    carries a rounding of its own); the error is then a few ulps of min(sigma(z), sigma(-z)),
    never more than that of sigma(z) - y.
    """
    direct = sigmoid(z) - y
    complement = (1 - y) - sigmoid(-z)
    return jnp.where(z > 0, complement, direct) / _log_base(unit)


def multi_output_binary_cross_entropy(a, y, unit: str = "nats"):
    """Slides 003: C_n = -sum_j [y_j ln a_j + (1 - y_j) ln(1 - a_j)].

    For (N, e) independent sigmoid outputs a.
    """
    if jnp.ndim(a) != 2:
        raise ValueError(
            f"multi_output_binary_cross_entropy expects (N, e) outputs, got shape {jnp.shape(a)}"
        )
    return binary_cross_entropy(a, y, unit)


# ---------------------------------------------------------------------------------- multi-class


def cross_entropy(probs, labels, unit: str = "nats"):
    """l(y, p) = -log p_y = -sum_k q_k log p_k (notes 000, Sec. 2.2) on soft-max outputs p.

    NaN for a sample whose integer label is outside [0, K), also under jit.
    """
    q = as_distribution(labels, probs)
    return -jnp.sum(_xlogy(q, probs), axis=-1) / _log_base(unit)


def cross_entropy_derivative(probs, labels, unit: str = "nats"):
    """dl/dp_k = -q_k / p_k (0 where q_k = 0); a row of NaN for an integer label outside [0, K)."""
    q = as_distribution(labels, probs)
    return -jnp.where(q != 0, q / jnp.where(q != 0, probs, 1), 0) / _log_base(unit)


def cross_entropy_from_logits(logits, labels, unit: str = "nats"):
    """-log Prob(y) with Prob = softmax(logits), via log-soft-max: finite for logits of +-1e4.

    NaN for a sample whose integer label is outside [0, K), eagerly and under jit (JAX cannot
    raise there), so a trainer's non-finite check stops on it; the other samples keep their
    values, and their gradients stay finite.
    """
    q = as_distribution(labels, logits)
    return -jnp.sum(q * log_softmax(logits), axis=-1) / _log_base(unit)


def _rest_of_mass(q):
    """Q - q_i = sum_{j != i} q_j for each i of the rows q (Q = sum_j q_j).

    Summed directly for the largest q_i, where Q - q_i would keep the rounding of Q (30 ulps at
    q = (0.99, 0.01)); elsewhere q_i <= Q / 2 and Q - q_i does not cancel.
    """
    largest = jnp.argmax(q, axis=-1, keepdims=True)
    is_largest = jax.lax.broadcasted_iota(largest.dtype, q.shape, q.ndim - 1) == largest
    others = jnp.sum(jnp.where(is_largest, 0, q), axis=-1, keepdims=True)
    return jnp.where(is_largest, others, jnp.sum(q, axis=-1, keepdims=True) - q)


def cross_entropy_from_logits_derivative(logits, labels, unit: str = "nats"):
    """dl/dz_i = Prob(i) sum_k q_k - q_i, i.e. p - q when q sums to 1.

    Notes 004: d log Prob(k)/dz_i = delta_ik - Prob(i), so dl/dz_i = -sum_k q_k (delta_ik -
    Prob(i)). Written Q = sum_k q_k, this is Prob(i) (Q - q_i) + q_i (Prob(i) - 1), as
    Prob(i) Q - Prob(i) q_i + q_i Prob(i) - q_i = Prob(i) Q - q_i, for any q. Here
    Q - q_i = sum_{j != i} q_j and Prob(i) - 1 = expm1(log Prob(i)) from the log-soft-max, so it
    is exact for one-hot q even at Prob(i) = 1 - 1e-13, where Prob(i) - 1 rounds (6e-4 off).
    For soft q the cancellation of the two terms where Prob(i) ~ q_i is inherent. A row of NaN
    for an integer label outside [0, K).
    """
    q = as_distribution(labels, logits)
    log_p, p = log_softmax(logits), softmax(logits)
    return (p * _rest_of_mass(q) + q * jnp.expm1(log_p)) / _log_base(unit)


# ------------------------------------------------------------------------------ zero-one and top-k


def zero_one_loss(scores, labels):
    """1 where argmax(scores) != y, else 0 (ties: the first maximal class is the prediction).

    NaN for a sample whose label is outside [0, K) (otherwise it would count as an error).
    """
    labels = jnp.asarray(labels)
    if labels.shape == scores.shape:
        labels = jnp.argmax(labels, axis=-1)
    if labels.shape != scores.shape[:-1]:
        raise ValueError(
            f"labels of shape {labels.shape} do not fit scores of shape {scores.shape}"
        )
    wrong = (jnp.argmax(scores, axis=-1) != labels).astype(scores.dtype)
    return jnp.where(_in_range(labels, scores.shape[-1]), wrong, jnp.nan)


def error_rate(scores, labels):
    """The zero-one risk: the fraction of samples misclassified; NaN if a label is out of range."""
    return jnp.mean(zero_one_loss(scores, labels))


def top_k_error(scores, labels, k: int = 5):
    """Fraction of samples whose label is not among the k highest scores.

    ImageNet's top-5 error (notes 002). Ties count in the label's favour: it is in the top k when
    fewer than k classes score strictly higher. NaN if a label is outside [0, K) (take_along_axis
    alone would wrap -1 round to the last class and fill NaN above K - 1, which counts as a hit).
    """
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(
            f"top_k_error needs 1 <= k <= number of classes ({scores.shape[-1]}), got k={k}"
        )
    labels = jnp.asarray(labels)
    if labels.shape == scores.shape:
        labels = jnp.argmax(labels, axis=-1)
    valid = _in_range(labels, scores.shape[-1])
    label_score = jnp.take_along_axis(scores, jnp.where(valid, labels, 0)[..., None], axis=-1)
    missed = (jnp.sum(scores > label_score, axis=-1) >= k).astype(scores.dtype)
    return jnp.mean(jnp.where(valid, missed, jnp.nan))


# ---------------------------------------------------------------------------------- weight decay


def l2_penalty(params, lam: float, mask=None):
    """(lambda / 2) sum_j w_j^2 over the parameters (notes 004).

    mask: a pytree of bools choosing the leaves (e.g. no biases).
    """
    leaves = jax.tree_util.tree_leaves(params)
    if mask is not None:
        flags = jax.tree_util.tree_leaves(mask)
        if len(flags) != len(leaves):
            raise ValueError(
                f"l2_penalty mask has {len(flags)} leaves but params have {len(leaves)}"
            )
        leaves = [leaf for leaf, keep in zip(leaves, flags) if keep]
    return 0.5 * lam * sum(jnp.sum(leaf**2) for leaf in leaves)


def l2_penalty_derivative(params, lam: float, mask=None):
    """d/dw of (lambda / 2) sum w^2 = lambda w (0 for leaves the mask leaves out)."""
    if mask is None:
        return jax.tree_util.tree_map(lambda w: lam * w, params)
    return jax.tree_util.tree_map(
        lambda w, keep: lam * w if keep else jnp.zeros_like(w), params, mask
    )


# ---------------------------------------------------------------------------------- information


def entropy(q, unit: str = "bits", axis: int = -1):
    """H(q) = -sum_i q_i log q_i over `axis` (Appendix A.2-A.3), with 0 log 0 = 0."""
    return -jnp.sum(_xlogy(q, q), axis=axis) / _log_base(unit)


def binary_entropy(q, unit: str = "bits"):
    """H(q) = -q log q - (1 - q) log(1 - q) of a Bernoulli(q) source.

    1 bit at q = 1/2, 0 at q = 0 and 1.
    """
    return -(_xlogy(q, q) + _xlog1m(1 - q, q)) / _log_base(unit)


def cross_entropy_between(p, q, unit: str = "bits", axis: int = -1):
    """H(q, p) = -sum_i q_i log p_i of estimate p against truth q (Appendix A.3); >= H(q)."""
    return -jnp.sum(_xlogy(q, p), axis=axis) / _log_base(unit)


def kl_divergence(p, q, unit: str = "bits", axis: int = -1):
    """D(q || p) = H(q, p) - H(q) = sum_i q_i log(q_i / p_i): the extra cost of coding q with p."""
    return cross_entropy_between(p, q, unit, axis) - entropy(q, unit, axis)


# ---------------------------------------------------------------------------------- bundles


class Loss(NamedTuple):
    """A per-sample loss l(prediction, target) -> (N,) and its derivative d l_n / d prediction_n."""

    name: str
    value: Callable
    derivative: Callable


def risk(loss, prediction, target):
    """L_T = (1/N) sum_n l_n: the batch mean of a per-sample loss (a function or a `Loss`)."""
    value = loss.value if isinstance(loss, Loss) else loss
    return jnp.mean(value(prediction, target))


QUADRATIC = Loss("quadratic", quadratic, quadratic_derivative)
BINARY_CROSS_ENTROPY = Loss(
    "binary_cross_entropy", binary_cross_entropy, binary_cross_entropy_derivative
)
BINARY_CROSS_ENTROPY_FROM_LOGITS = Loss(
    "binary_cross_entropy_from_logits",
    binary_cross_entropy_from_logits,
    binary_cross_entropy_from_logits_derivative,
)
CROSS_ENTROPY = Loss("cross_entropy", cross_entropy, cross_entropy_derivative)
CROSS_ENTROPY_FROM_LOGITS = Loss(
    "cross_entropy_from_logits", cross_entropy_from_logits, cross_entropy_from_logits_derivative
)

LOSSES = {
    loss.name: loss
    for loss in (
        QUADRATIC,
        BINARY_CROSS_ENTROPY,
        BINARY_CROSS_ENTROPY_FROM_LOGITS,
        CROSS_ENTROPY,
        CROSS_ENTROPY_FROM_LOGITS,
    )
}
"""Every differentiable loss by name, for back-propagation and configs."""
