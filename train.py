"""Train a jaxnet network: python train.py [--config FILE] [--workdir DIR] [--config.KEY=VALUE ...].

With no flags it trains configs/default.py into a fresh folder under runs/. The same --workdir
again resumes from its newest intact checkpoint, with the config saved there: flags may change
only the keys marked * in `--mode=keys`. --mode=evaluate reports a workdir's best parameters on
the test split, from the workdir alone. --mode=keys lists every config key, its value, default
range and meaning. Bad input stops with one line on stderr and exit status 2 (1 for a failed run,
130 for a signal); nothing already saved is lost.
"""

import os
import signal
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(_HERE, "configs", "default.py")


def _stop_at_once(signum, frame):
    print(f"stopped: signal {signum} during start-up; nothing was saved", file=sys.stderr)
    sys.stderr.flush()
    os._exit(130)


def _fail(message: str, status: int) -> None:
    if status != 130:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(status)
    print(f"stopped: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # A signal can land while XLA or orbax threads are mid-work; what had to be saved is saved,
    # and tearing the interpreter down under those threads can crash it, so leave at once.
    os._exit(status)


def define_flags(argv):
    """The flags, after a check of the config file and keys: ml_collections reads them here."""
    from jaxnet.training import cli

    try:
        cli.check_argv(argv[1:])
        return cli.define_flags(DEFAULT_CONFIG)
    except cli.ConfigError as error:
        _fail(str(error), 2)
    except Exception as error:  # noqa: BLE001  (ml_collections' own errors, in one line)
        _fail(cli.flag_error_line(error), 2)


def parse_flags(argv):
    """absl's parse, with every bad flag or value reported in one line."""
    from jaxnet.training import cli

    try:
        return FLAGS(argv)
    except Exception as error:  # noqa: BLE001  (absl's and ml_collections' errors alike)
        _fail(cli.flag_error_line(error), 2)


def main(argv):
    from absl import logging

    from jaxnet.training import cli

    problem = cli.unexpected_arguments(argv)
    if problem:
        _fail(problem, 2)
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO: keep the table readable
        logging.set_verbosity(logging.WARNING)
        # orbax also logs its failures with tracebacks; the trainer reports each in one line
        logging.get_absl_handler().addFilter(lambda record: "/orbax/" not in record.pathname)
    status, message = cli.run(FLAGS)
    if message:
        _fail(message, status)


if __name__ == "__main__":
    for sig in (signal.SIGTERM, signal.SIGINT):  # one line, not a traceback or a silent death
        signal.signal(sig, _stop_at_once)
    try:
        sys.path.insert(0, _HERE)  # configs import each other (configs/tpu.py uses cifar10.py)
        from jaxnet.training import xla_cpu

        xla_cpu.prefer_xla_convolutions()  # before JAX starts: see jaxnet/training/xla_cpu.py
        from absl import app

        FLAGS = define_flags(sys.argv)
        app.run(main, flags_parser=parse_flags)
    except KeyboardInterrupt as interrupt:
        _fail(str(interrupt) or "interrupted during start-up; nothing was saved", 130)
