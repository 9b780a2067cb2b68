"""Element-by-element comparison of a given Jacobian with autodiff and finite differences.

Against autodiff the test is componentwise: |given - jax| <= tol max(|given|, |jax|) + floor,
the floor being 1e-4 tol times the largest entry (rounding in a formula that sums large terms).
A wrong sign in a component 1e-9 of the others fails. Against finite differences each entry
also gets Ridders' error estimate (times 2) as allowance: a small component that finite
differences cannot resolve does not fail a right formula.

Where the left and right one-sided differences disagree beyond their error estimates, f has a
kink: the entry is judged against the side(s) `at_kink` names ("either" by default, "left",
"right", or "fail" to refuse any kink), for autodiff as well: JAX's ReLU'(0) = 0 is one
convention, the notes' 1 another. Where jax's derivative is not finite (sqrt(x)^4 at 0: NaN),
finite differences alone judge.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxnet.verify.finite_diff import find_kinks

AT_KINK = ("either", "left", "right", "fail")
_FLOOR = 1e-4  # times tolerance times the largest entry
_FD_SAFETY = 2.0  # Ridders' estimate is an estimate


def relative_error(a, b) -> float:
    """max |a - b| / max(max |a|, max |b|).

    0 when both are all zero; inf on a shape mismatch or NaN.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(b), initial=0.0))
    if not np.isfinite(scale) or np.isnan(a).any() or np.isnan(b).any():
        return float("inf")
    return 0.0 if scale == 0 else float(np.max(np.abs(a - b)) / scale)


@dataclasses.dataclass
class Comparison:
    """The verdict on each entry and the worst one."""

    passed: bool
    error_vs_autodiff: float
    error_vs_finite_differences: float
    worst: tuple | None  # (row, col) of the largest excess over the allowance
    worst_relative_error: float
    worst_values: dict
    kinks: list  # (row, col, left, right, given)
    autodiff_not_finite: list  # (row, col): judged by finite differences alone


def _excess(given, reference, allowance):
    """|given - reference| / allowance (> 1 fails), 0 where both agree exactly; NaN -> inf."""
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.abs(given - reference)
        ratio = np.where(gap == 0, 0.0, gap / allowance)
    return np.where(np.isnan(ratio), np.inf, ratio)


def _allowance(given, reference, tolerance, floor, error=0.0):
    return tolerance * np.maximum(np.abs(given), np.abs(reference)) + floor + _FD_SAFETY * error


def _kink_excess(given, fd, at_kink, tolerance, floor):
    """Per entry: how far `given` is from the nearest side `at_kink` allows."""
    sides = {"left": [(fd.left, fd.left_error)], "right": [(fd.right, fd.right_error)]}
    sides["either"] = sides["left"] + sides["right"]
    options = sides.get(at_kink, [])
    if not options:
        return np.full(given.shape, np.inf)
    return np.minimum.reduce(
        [_excess(given, d, _allowance(given, d, tolerance, floor, e)) for d, e in options]
    )


def compare(given, autodiff, fd, tolerance, at_kink="either") -> Comparison:
    """Judge the (out, in) matrix `given` against jax's and finite differences' (or None)."""
    if at_kink not in AT_KINK:
        raise ValueError(f"at_kink must be one of {AT_KINK}, got {at_kink!r}")
    references = [a for a in autodiff if a is not None]
    scale = max(np.max(np.abs(a), initial=0.0) for a in [given, *references])
    floor = _FLOOR * tolerance * (scale if np.isfinite(scale) else 0.0)
    excess = np.zeros(given.shape)
    blind = np.zeros(given.shape, bool)  # where jax's derivative is not finite (sqrt'(0) * 0)
    for a in references:
        blind |= ~np.isfinite(a) & (fd is not None)
        ad_excess = _excess(given, a, _allowance(given, a, tolerance, floor))
        excess = np.maximum(excess, np.where(blind, 0.0, ad_excess))
    kinks = np.zeros(given.shape, bool)
    resolved = np.zeros(given.shape, bool)
    if fd is not None:
        resolved = np.isfinite(fd.estimate) & np.isfinite(fd.error)
        allowance = _allowance(given, fd.estimate, tolerance, floor, fd.error)
        fd_excess = np.where(resolved, _excess(given, fd.estimate, allowance), 0.0)
        kinks = find_kinks(fd, scale if np.isfinite(scale) else 0.0)
        excess = np.where(
            kinks, _kink_excess(given, fd, at_kink, tolerance, floor), np.maximum(excess, fd_excess)
        )
    return _verdict(given, references, fd, excess, kinks, resolved, blind)


def _verdict(given, references, fd, excess, kinks, resolved, blind):
    smooth = ~kinks & ~blind
    vs_ad = max(
        (relative_error(np.where(smooth, given, 0), np.where(smooth, a, 0)) for a in references),
        default=float("nan"),
    )
    vs_fd = float("nan")
    if fd is not None:
        keep = smooth & resolved
        vs_fd = relative_error(np.where(keep, given, 0), np.where(keep, fd.estimate, 0))
    worst = (
        tuple(int(i) for i in np.unravel_index(np.argmax(excess), excess.shape))
        if excess.size
        else None
    )
    values = {}
    rel = 0.0
    if worst is not None:
        values["given"] = float(given[worst])
        if references:
            values["jax"] = float(references[0][worst])
        if fd is not None:
            values.update(
                finite_differences=float(fd.estimate[worst]), fd_error=float(fd.error[worst])
            )
        ref = values.get("jax", values.get("finite_differences", 0.0))
        rel = relative_error(given[worst], ref)
    kink_list = [
        (int(r), int(c), float(fd.left[r, c]), float(fd.right[r, c]), float(given[r, c]))
        for r, c in zip(*np.nonzero(kinks))
    ]
    passed = bool(np.all(excess <= 1.0))
    blind_list = [(int(r), int(c)) for r, c in zip(*np.nonzero(blind))]
    return Comparison(passed, vs_ad, vs_fd, worst, rel, values, kink_list, blind_list)
