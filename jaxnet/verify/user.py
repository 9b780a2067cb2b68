"""The user's formulas for jaxnet-verify: module:function targets and a file of CHECKS.

A checks file is Python defining CHECKS, a list of dicts, each with "f", then "jacobian" or
"gradient" (a function of x or an array/pytree), and "x" (a point, or a shape tuple drawn at
random from --seed); optional "name" and any check_jacobian option ("tolerance", "at_kink",
"layout", "finite_differences", "step", "levels", "floor"):

    CHECKS = [
        {"name": "tanh^2", "f": lambda w: jnp.sum(jnp.tanh(w) ** 2),
         "gradient": lambda w: 2 * jnp.tanh(w) * (1 - jnp.tanh(w) ** 2), "x": (3, 4)},
        {"f": jnp.sin, "jacobian": lambda x: jnp.diag(jnp.cos(x)), "x": jnp.array([0.1, 2.0])},
    ]
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import numpy as np

from jaxnet.verify.checks import check_gradient, check_jacobian
from jaxnet.verify.cli import UsageError

_OPTIONS = {
    "tolerance",
    "at_kink",
    "layout",
    "finite_differences",
    "step",
    "levels",
    "floor",
    "jacfwd",
}


def load_module(where: str):
    """A module by dotted name, or a .py file by path."""
    if where.endswith(".py") or os.sep in where or "/" in where:
        if not os.path.isfile(where):
            raise UsageError(f"no such file: {where!r}")
        name = os.path.splitext(os.path.basename(where))[0]
        spec = importlib.util.spec_from_file_location(f"jaxnet_verify_user.{name}", where)
        module = importlib.util.module_from_spec(spec)
        _run(spec.loader.exec_module, module, f"loading {where}")
        return module
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(where)
    except ImportError as error:
        raise UsageError(f"cannot import module {where!r}: {error}") from None
    finally:
        sys.path.remove(os.getcwd())


def _run(action, argument, doing):
    try:
        return action(argument)
    except Exception as error:  # the user's code: one line, not a traceback
        raise UsageError(f"{doing} raised {type(error).__name__}: {error}") from None


def load_function(target: str):
    """The function named by 'module:function' or 'path/file.py:function'."""
    where, colon, name = target.rpartition(":")
    if not colon or not where or not name:
        raise UsageError(f"{target!r}: expected module:function or path/file.py:function")
    module = load_module(where)
    function = getattr(module, name, None)
    if not callable(function):
        raise UsageError(f"{where!r} has no function {name!r}")
    return function


def parse_shape(text: str | None) -> tuple:
    """'3,4' -> (3, 4); '' or None -> () (a scalar)."""
    if not text:
        return ()
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = (-1,)
    if any(d <= 0 for d in shape):
        raise UsageError(
            f"--shape {text!r}: expected positive integers separated by commas, e.g. 3,4"
        )
    return shape


def point(text: str | None, shape: tuple, rng):
    """The input: the numbers given (reshaped to `shape`), or standard normal float64."""
    import jax.numpy as jnp

    if text is None:
        return jnp.asarray(rng.standard_normal(shape))
    try:
        values = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise UsageError(f"--point {text!r}: expected numbers separated by commas") from None
    shape = shape or ((values.size,) if values.size > 1 else ())
    if values.size != int(np.prod(shape)):
        raise UsageError(
            f"--point has {values.size} numbers, --shape {shape} needs {int(np.prod(shape))}"
        )
    return jnp.asarray(values.reshape(shape))


def _options(args) -> dict:
    return {
        "tolerance": args.tolerance,
        "at_kink": args.at_kink,
        "layout": args.layout,
        "finite_differences": not args.no_finite_differences,
    }


def check_target(args):
    """The check the command line describes: f, --jacobian or --gradient, --shape, --point."""
    if not (args.jacobian or args.gradient):
        raise UsageError("give --jacobian module:function or --gradient module:function")
    f = load_function(args.target)
    derivative = load_function(args.jacobian or args.gradient)
    x = point(args.point, parse_shape(args.shape), np.random.default_rng(args.seed))
    check = check_gradient if args.gradient else check_jacobian
    name = f"{args.target} vs {args.jacobian or args.gradient}"
    return _run(lambda _: check(f, derivative, x, name=name, **_options(args)), None, name)


def checks_file(path: str, args):
    """The checks a file's CHECKS lists, validated first, then run one by one (a generator)."""
    module = load_module(path)
    specs = getattr(module, "CHECKS", None)
    if not isinstance(specs, (list, tuple)) or not specs:
        raise UsageError(
            f"{path} defines no CHECKS list (a list of dicts: f, gradient or jacobian, x)"
        )
    rng = np.random.default_rng(args.seed)
    prepared = [_prepare(i, spec, rng, _options(args)) for i, spec in enumerate(specs)]
    return (_run(lambda _: check(**kw), None, kw["name"]) for check, kw in prepared)


def _prepare(i, spec, rng, defaults):
    if not isinstance(spec, dict) or "f" not in spec or "x" not in spec:
        raise UsageError(f"CHECKS[{i}]: expected a dict with 'f', 'x' and 'gradient' or 'jacobian'")
    kinds = [k for k in ("gradient", "jacobian") if k in spec]
    if len(kinds) != 1:
        raise UsageError(f"CHECKS[{i}]: give exactly one of 'gradient' and 'jacobian'")
    unknown = set(spec) - _OPTIONS - {"f", "x", "name", *kinds}
    if unknown:
        raise UsageError(
            f"CHECKS[{i}]: unknown keys {sorted(unknown)}; options: {sorted(_OPTIONS)}"
        )
    x = spec["x"]
    if isinstance(x, tuple) and all(isinstance(d, int) for d in x):
        x = point(None, x, rng)
    options = {**defaults, **{k: v for k, v in spec.items() if k in _OPTIONS}}
    check = check_gradient if kinds[0] == "gradient" else check_jacobian
    name = spec.get("name", f"CHECKS[{i}]")
    return check, {"f": spec["f"], kinds[0]: spec[kinds[0]], "x": x, "name": name, **options}
