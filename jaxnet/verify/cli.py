"""The jaxnet-verify command: the built-in suite, or the user's own formulas.

    jaxnet-verify                                   # every derivative of jaxnet (streamed table)
    jaxnet-verify my_module:f --gradient my_module:grad_f --shape 3,4
    jaxnet-verify path/to/file.py:f --jacobian path/to/file.py:jac_f --point 0.5,1e-6
    jaxnet-verify --checks my_checks.py             # a file defining CHECKS (see checks_file)

Exit status: 0 if every check passes, 1 if one fails, 2 on bad usage (one line on stderr).
Random inputs are float64 standard normal from --seed unless --point gives the point.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax

from jaxnet.verify import table
from jaxnet.verify.checks import DEFAULT_TOLERANCE
from jaxnet.verify.compare import AT_KINK
from jaxnet.verify.structure import LAYOUTS


class UsageError(Exception):
    """Bad usage: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _parser():
    parser = _Parser(prog="jaxnet-verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", nargs="?", help="f as module:function or file.py:function")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--jacobian", help="the hand-written Jacobian of f, module:function")
    what.add_argument("--gradient", help="the hand-written gradient of the scalar f")
    parser.add_argument("--shape", help="the shape of f's input, e.g. 3,4 (default: scalar)")
    parser.add_argument("--point", help="the input, comma-separated numbers (default: random)")
    parser.add_argument("--checks", help="a .py file defining CHECKS, a list of dicts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (0)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    parser.add_argument("--at-kink", choices=AT_KINK, default="either")
    parser.add_argument("--layout", choices=LAYOUTS, default="jacrev")
    parser.add_argument("--no-finite-differences", action="store_true")
    return parser


def _report(results, args, start) -> int:
    """Print the table (streamed) or the JSON document; the exit status."""
    done = []
    if not args.json:
        print(table.header(), flush=True)
    for result in results:
        done.append(result)
        if not args.json:
            print(table.row(result), flush=True)
    failures = [r for r in done if not r.passed]
    if args.json:
        document = {
            "seed": args.seed,
            "tolerance": args.tolerance,
            "passed": not failures,
            "checks": [r.as_dict() for r in done],
        }
        print(json.dumps(document, indent=2))
    else:
        notes = table.notes(done)
        print(f"\n{notes}" if notes else "", end="\n" if notes else "")
        print(
            f"\n{len(done) - len(failures)} passed, {len(failures)} failed "
            f"(relative error tolerance {args.tolerance:g}, float64, seed {args.seed}, "
            f"{time.perf_counter() - start:.1f} s)"
        )
    return 1 if failures else 0


def _results(args):
    from jaxnet.verify import suite, user

    if args.checks:
        if args.target:
            raise UsageError("give either a target or --checks, not both")
        return user.checks_file(args.checks, args)
    if args.target:
        return [user.check_target(args)]
    if args.jacobian or args.gradient or args.shape or args.point:
        raise UsageError("--jacobian/--gradient/--shape/--point need a target f: module:function")
    return suite.iter_checks(args.seed)


def main(argv=None) -> int:
    """jaxnet-verify's entry point; returns the exit status."""
    jax.config.update("jax_enable_x64", True)
    start = time.perf_counter()
    try:
        args = _parser().parse_args(argv)
        results = _results(args)
        return _report(results, args, start)
    except UsageError as error:
        print(f"jaxnet-verify: error: {error}", file=sys.stderr)
        return 2
