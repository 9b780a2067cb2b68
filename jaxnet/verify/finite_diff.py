"""Finite differences that respect f's domain and scale, refined by Ridders' extrapolation.

Steps are relative: h_i = step * clip(|x_i|, floor, 1), so -log p at p = 1e-2 is probed within
its domain, while a logit of 1e4 is not probed with steps of 1e3 (its scale is that of the
function, not of x), and x_i = 0 not with steps so small that f's rounding drowns them.
Where f is not finite at a probe (NaN or Inf: a domain boundary), the step
of that input shrinks by 4 until both probes are finite, then once more for a margin. An input
whose probes never both become finite (x on the boundary, as sqrt at 0) keeps the one finite
side: one-sided differences.

From the same probes f(x + h), f(x), f(x - h) come three estimates, each refined over the steps
h / 2^k (k < levels) in a Richardson table, keeping per entry the estimate whose change between
table neighbours is smallest, and that change as its error: the central difference, and the
one-sided left and right differences (they tell a kink from a smooth point).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.verify.flat import flat, jit_once, require_x64

STEP, LEVELS, FLOOR = 0.1, 10, 1e-2
_EPS = np.finfo(np.float64).eps
_SHRINK, _MAX_SHRINKS = 4.0, 30
_KINK, _REFINES = 1e-6, 2


@dataclasses.dataclass
class FiniteDifferences:
    """Estimates of the (out, in) Jacobian and Ridders' error estimate of each entry.

    `estimate` is central where both sides are in f's domain, else one-sided; `left` and
    `right` are the one-sided estimates (NaN where that side is outside the domain).
    """

    estimate: np.ndarray
    error: np.ndarray
    left: np.ndarray
    left_error: np.ndarray
    right: np.ndarray
    right_error: np.ndarray
    steps: np.ndarray


def ridders(table, order: int, noise=None):
    """The best entry of a Richardson table over steps h / 2^k, and its error estimate.

    `table` is (levels, ...); `order` is 2 for central differences (error in h^2, h^4, ...)
    and 1 for one-sided ones (h, h^2, ...). NaN entries (outside f's domain) are skipped.
    `noise` (like table) bounds each error below: the rounding of f divided by the step, which
    the change between neighbours misses where it is quantized to the same few ulps.
    """
    noise = np.zeros(table.shape) if noise is None else noise
    best, error = table[0], np.full(table.shape[1:], np.inf)
    previous = [table[0]]
    with np.errstate(invalid="ignore", over="ignore"):
        for i in range(1, len(table)):
            row, factor = [table[i]], 2.0**order
            for j in range(1, i + 1):
                row.append((factor * row[j - 1] - previous[j - 1]) / (factor - 1))
                factor *= 2.0**order
                change = np.maximum(np.abs(row[j] - row[j - 1]), np.abs(row[j] - previous[j - 1]))
                change = np.maximum(change, noise[i])
                better = change < error  # False where NaN
                best, error = np.where(better, row[j], best), np.where(better, change, error)
            previous = row
    return best, error


def probe_program(f_flat, n: int):
    """The jitted map (x, values) -> (f(x), f at x with x_i = values[k, i]), shape (k, n, m)."""
    index = jnp.arange(n)

    def probes(x, values):
        at = lambda i, v: f_flat(jnp.where(index == i, v, x))
        return f_flat(x), jax.vmap(lambda row: jax.vmap(at)(index, row))(values)

    return probes


def _first_steps(x, step, floor):
    return step * np.clip(np.abs(x), floor, 1.0)


def _evaluate(program, x, h, levels):
    """f(x), and the probes and actual steps (levels, n) on both sides of x."""
    scales = 2.0 ** -np.arange(levels)[:, None]
    up, down = x + scales * h, x - scales * h
    f0, values = program(x, np.concatenate([up, down]))
    values = np.asarray(values)
    return np.asarray(f0), values[:levels], values[levels:], up - x, x - down


def _finite_sides(plus, minus):
    """Per input: whether f is finite at its largest step on the + and - side."""
    return np.isfinite(plus[0]).all(axis=-1), np.isfinite(minus[0]).all(axis=-1)


def _domain_steps(program, x, h, levels):
    """Shrink each input's step until both of its largest probes are finite, plus a margin."""
    first = h
    shrunk = np.zeros(h.shape, bool)
    for _ in range(_MAX_SHRINKS):
        # all levels: the program keeps its one compiled shape
        up_ok, down_ok = _finite_sides(*_evaluate(program, x, h, levels)[1:3])
        outside = ~(up_ok & down_ok)
        if not outside.any():
            break
        shrunk |= outside
        h = np.where(outside, h / _SHRINK, h)
    # never both finite: back to the first step, one-sided
    h = np.where(outside, first, np.where(shrunk, h / _SHRINK, h))
    return h


def estimate(f_flat, x, program=None, *, step=STEP, levels=LEVELS, floor=FLOOR):
    """Finite differences of the flat map f_flat at the flat point x (a FiniteDifferences)."""
    if levels < 2:
        raise ValueError(f"levels must be at least 2 (Ridders' table), got {levels}")
    if not step > 0 or not floor > 0:
        raise ValueError(f"step and floor must be positive, got step={step}, floor={floor}")
    program = program or jit_once(probe_program(f_flat, x.size))
    h = _first_steps(x, step, floor)
    f0, plus, minus, h_up, h_down = _evaluate(program, x, h, levels)
    if not np.all(np.logical_and(*_finite_sides(plus, minus))):
        h = _domain_steps(program, x, h, levels)
        f0, plus, minus, h_up, h_down = _evaluate(program, x, h, levels)
    fd = _combine(f0, plus, minus, h_up, h_down, h)
    return _refine_kinks(program, x, fd, levels)


def find_kinks(fd, scale):
    """Entries whose left and right differences disagree beyond their error estimates.

    And by more than 1e-6 relative: one-sided estimates are coarser than central ones, and a
    kink is no subtle thing.
    """
    both = np.isfinite(fd.left) & np.isfinite(fd.right)
    with np.errstate(invalid="ignore"):
        gap = np.abs(fd.left - fd.right)
        size = np.maximum(np.abs(fd.left), np.abs(fd.right)) + 1e-3 * scale
        allowed = _KINK * size + 4 * (fd.left_error + fd.right_error)
        return both & (gap > allowed)


def _refine_kinks(program, x, fd, levels):
    """Probe again, 2^levels times closer, where the sides disagree: a kink near x (a ReLU
    whose input is 1e-5 from 0) is crossed by every step of the first table, not by these.

    Entries still kinked keep the first estimates: closer steps only add rounding there.
    """
    scale = np.max(np.abs(np.nan_to_num(fd.estimate, posinf=0, neginf=0)), initial=0.0)
    kinks, h = find_kinks(fd, scale), fd.steps
    for _ in range(_REFINES):
        if not kinks.any():
            break
        h = np.where(kinks.any(axis=0), h * 2.0**-levels, h)
        closer = _combine(*_evaluate(program, x, h, levels), h)
        resolved = kinks & ~find_kinks(closer, scale)
        merged = (np.where(resolved, new, old) for new, old in zip(_fields(closer), _fields(fd)))
        fd = FiniteDifferences(*merged, fd.steps)
        kinks &= ~resolved
    return fd


def _fields(fd):
    return fd.estimate, fd.error, fd.left, fd.left_error, fd.right, fd.right_error


def _combine(f0, plus, minus, h_up, h_down, h):
    """The three Ridders estimates from the probes, transposed to (out, in)."""
    swap = lambda a: np.swapaxes(a, -1, -2)  # (levels, in, out) -> (levels, out, in)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        plus, minus = (
            np.where(np.isfinite(plus), plus, np.nan),
            np.where(np.isfinite(minus), minus, np.nan),
        )
        size = lambda *fs: 4 * _EPS * sum(np.abs(f) for f in fs)  # rounding, amplified
        right = swap((plus - f0) / h_up[..., None])
        right_noise = swap(size(plus, f0) / h_up[..., None])
        left = swap((f0 - minus) / h_down[..., None])
        left_noise = swap(size(minus, f0) / h_down[..., None])
        central = swap((plus - minus) / (h_up + h_down)[..., None])
        central_noise = swap(size(plus, minus) / (h_up + h_down)[..., None])
    right, right_error = ridders(right, 1, right_noise)
    left, left_error = ridders(left, 1, left_noise)
    central, central_error = ridders(central, 2, central_noise)
    use_central = np.isfinite(central_error)
    one_side = np.where(np.isfinite(right_error), right, left)
    one_side_error = np.where(np.isfinite(right_error), right_error, left_error)
    return FiniteDifferences(
        np.where(use_central, central, one_side),
        np.where(use_central, central_error, one_side_error),
        left,
        left_error,
        right,
        right_error,
        h,
    )


def finite_differences(f, x, *, step=STEP, levels=LEVELS, floor=FLOOR) -> FiniteDifferences:
    """Finite differences of f at the pytree x, as (out, in) matrices with error estimates."""
    require_x64()
    f_flat, x_flat = flat(f, x)
    return estimate(f_flat, x_flat, step=step, levels=levels, floor=floor)


def finite_difference_jacobian(f, x, step: float = STEP, levels: int = LEVELS, floor=FLOOR):
    """The (out, in) Jacobian of f at x by finite differences (see the module's docstring)."""
    return finite_differences(f, x, step=step, levels=levels, floor=floor).estimate
