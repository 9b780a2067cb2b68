"""Run experiments by name, or `all`.

For example `python -m experiments slowdown softmax_exercise --out results/`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from experiments import EXPERIMENTS


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    parser.add_argument(
        "names", nargs="+", help=f"experiments to run: {', '.join(EXPERIMENTS)}, or all"
    )
    parser.add_argument(
        "--out",
        default="experiment_results",
        help="folder for the figures and tables (default: %(default)s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the reduced form the tests run: smaller data, fewer epochs",
    )
    args = parser.parse_args(argv)
    names = list(EXPERIMENTS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        parser.error(
            f"unknown experiment(s) {', '.join(unknown)}; "
            f"choose from {', '.join(EXPERIMENTS)} or all"
        )
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for name in names:
        tic = time.perf_counter()
        results[name] = importlib.import_module(EXPERIMENTS[name]).run(args.out, quick=args.quick)
        # the tables, beside the notes' numbers
        with open(os.path.join(args.out, f"{name}.md")) as f:
            lines = [line for line in f.read().splitlines() if not line.startswith("![")]
        print("\n".join(lines).strip() + "\n", flush=True)
        print(
            f"{name}: {time.perf_counter() - tic:.1f} s -> "
            f"{os.path.join(args.out, name)}.{{md,json,png}}",
            file=sys.stderr,
        )
    return results


if __name__ == "__main__":
    main()
