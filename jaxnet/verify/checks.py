"""check_jacobian, check_gradient and their pytest forms assert_jacobian, assert_gradient."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import numpy as np

from jaxnet.verify import finite_diff as fdiff
from jaxnet.verify.compare import compare
from jaxnet.verify.flat import flat, jit_once, require_x64, shape_str
from jaxnet.verify.structure import as_matrix, element_name, structure_mismatch

DEFAULT_TOLERANCE = 1e-7


@dataclasses.dataclass
class CheckResult:
    """One comparison of a hand-written derivative with autodiff and finite differences.

    The errors are max-norm relative errors (NaN where not computed); `passed` is the
    element-by-element verdict (jaxnet.verify.compare), `worst_element` its worst entry,
    `message` says why it failed (structure, worst element) and notes kinks.
    """

    name: str
    shapes: str
    error_vs_autodiff: float
    error_vs_finite_differences: float
    tolerance: float
    passed: bool | None = None
    worst_element: str = ""
    worst_relative_error: float = 0.0
    message: str = ""
    kinks: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.passed is None:
            errors = (self.error_vs_autodiff, self.error_vs_finite_differences)
            self.passed = all(e is None or math.isnan(e) or e <= self.tolerance for e in errors)

    def as_dict(self) -> dict:
        """The fields as JSON values (NaN as None)."""
        clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v
        return {k: clean(v) for k, v in dataclasses.asdict(self).items()}


def _programs(f_flat, n, finite_differences, forward):
    """One compiled program: jacrev, jacfwd if `forward`, and the finite-difference probes."""
    autodiff = lambda v: (jax.jacrev(f_flat)(v), jax.jacfwd(f_flat)(v) if forward else ())
    if not finite_differences:
        return jit_once(autodiff), None
    probes = fdiff.probe_program(f_flat, n)
    both = jit_once(lambda v, values: (probes(v, values), autodiff(v)))
    seen = {}

    def program(v, values):
        out, ad = both(v, values)
        seen.setdefault("autodiff", ad)
        return out

    return (lambda v: seen["autodiff"]), program


def _derivatives(f, x, finite_differences, fd_options, forward):
    f_flat, x_flat = flat(f, x)
    autodiff, program = _programs(f_flat, x_flat.size, finite_differences, forward)
    fd = fdiff.estimate(f_flat, x_flat, program, **fd_options) if finite_differences else None
    return [np.asarray(a, np.float64) for a in autodiff(x_flat) if np.size(a)], fd


def _check(f, given, x, name, tolerance, layout, at_kink, finite_differences, fd_options, what):
    out = jax.eval_shape(f, x)
    shapes = f"{shape_str(x)} -> {shape_str(out)}"
    mismatch = structure_mismatch(given, out, x, layout, what)
    if mismatch:
        inf = float("inf")
        return CheckResult(name, shapes, inf, inf, tolerance, False, message=mismatch)
    matrix = as_matrix(given, out, x, layout)
    options = {k: v for k, v in fd_options.items() if k != "jacfwd"}
    autodiff, fd = _derivatives(f, x, finite_differences, options, fd_options["jacfwd"])
    verdict = compare(matrix, autodiff, fd, tolerance, at_kink)
    where = lambda r, c: element_name(out, x, r, c)
    kinks = [
        f"not differentiable at element {where(r, c)}: "
        f"left {lft:.6g}, right {rgt:.6g}, given {d:.6g}"
        for r, c, lft, rgt, d in verdict.kinks
    ]
    notes = _first(kinks)
    if verdict.autodiff_not_finite:
        first = where(*verdict.autodiff_not_finite[0])
        count = len(verdict.autodiff_not_finite)
        notes.append(
            f"jax's derivative is not finite at {count} element(s) ({first}, ...): "
            "judged by finite differences alone"
        )
    worst = where(*verdict.worst) if verdict.worst else ""
    message = "" if verdict.passed else _failure_line(worst, verdict, tolerance)
    return CheckResult(
        name,
        shapes,
        verdict.error_vs_autodiff,
        verdict.error_vs_finite_differences,
        tolerance,
        verdict.passed,
        worst,
        verdict.worst_relative_error,
        "; ".join(filter(None, [message, *notes])),
        kinks,
    )


def _first(kinks, shown=3):
    more = len(kinks) - shown
    return kinks[:shown] + ([f"and {more} more such elements"] if more > 0 else [])


def _failure_line(worst, verdict, tolerance):
    values = ", ".join(f"{k} {v:.10g}" for k, v in verdict.worst_values.items())
    return (
        f"worst element {worst}: {values}; relative error {verdict.worst_relative_error:.1e} "
        f"(tolerance {tolerance:g})"
    )


def check_jacobian(
    f: Callable,
    jacobian,
    x,
    *,
    name: str = "jacobian",
    tolerance: float = DEFAULT_TOLERANCE,
    layout: str = "jacrev",
    at_kink: str = "either",
    finite_differences: bool = True,
    step: float = fdiff.STEP,
    levels: int = fdiff.LEVELS,
    floor: float = fdiff.FLOOR,
    jacfwd: bool = False,
) -> CheckResult:
    """Compare `jacobian` (an array/pytree, or a function of x) with jax.jacrev (and
    jax.jacfwd too if `jacfwd`) and finite differences of f at x.

    layout="jacrev": jax.jacrev's pytree, out_shape + in_shape per leaf; layout="matrix": one
    (out size, in size) array. A structure or shape mismatch fails with a message naming the
    leaf. at_kink: which one-sided derivative a kink may take ("either", "left", "right",
    "fail"). step, levels, floor: the finite differences' (jaxnet.verify.finite_diff).
    """
    require_x64()
    given = jacobian(x) if callable(jacobian) else jacobian
    fd_options = {"step": step, "levels": levels, "floor": floor, "jacfwd": jacfwd}
    return _check(
        f, given, x, name, tolerance, layout, at_kink, finite_differences, fd_options, "Jacobian"
    )


def check_gradient(
    f: Callable,
    gradient,
    x,
    *,
    name: str = "gradient",
    tolerance: float = DEFAULT_TOLERANCE,
    layout: str = "jacrev",
    at_kink: str = "either",
    finite_differences: bool = True,
    step: float = fdiff.STEP,
    levels: int = fdiff.LEVELS,
    floor: float = fdiff.FLOOR,
    jacfwd: bool = False,
) -> CheckResult:
    """Compare `gradient` of the scalar f (a pytree like x, or a function of x) with jax's and
    finite differences; options as check_jacobian's (layout="matrix": one flat vector)."""
    require_x64()
    flat(f, x)  # validates the dtype before jax's less specific error
    out = jax.eval_shape(f, x)
    if not hasattr(out, "shape") or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"check_gradient needs a scalar function; f returns shape {shape}: use check_jacobian"
        )
    given = gradient(x) if callable(gradient) else gradient
    fd_options = {"step": step, "levels": levels, "floor": floor, "jacfwd": jacfwd}
    return _check(
        f, given, x, name, tolerance, layout, at_kink, finite_differences, fd_options, "gradient"
    )


def _raise_unless_passed(result):
    if not result.passed:
        from jaxnet.verify.table import format_table

        raise AssertionError(f"{format_table([result])}\n{result.message}")
    return result


def assert_jacobian(f: Callable, jacobian, x, **options) -> CheckResult:
    """check_jacobian, raising AssertionError (the table row, then why) unless it passes."""
    return _raise_unless_passed(check_jacobian(f, jacobian, x, **options))


def assert_gradient(f: Callable, gradient, x, **options) -> CheckResult:
    """check_gradient, raising AssertionError (the table row, then why) unless it passes."""
    return _raise_unless_passed(check_gradient(f, gradient, x, **options))
