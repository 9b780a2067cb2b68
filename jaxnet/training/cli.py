"""What train.py does with its flags: load the config, choose the run's config, report errors.

Every failure a user can cause (a flag, a key, a config file, a workdir, the data, a damaged
checkpoint) comes back as (exit status, one line); train.py prints it. Status 2 is bad input,
1 a run that failed, 130 a signal.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import time
import traceback

import ml_collections

from jaxnet.training import config as config_lib
from jaxnet.training.config import ConfigError

__all__ = [
    "ConfigError",
    "check_argv",
    "define_flags",
    "flag_error_line",
    "load_config_file",
    "run",
    "validate_argv",
]

# The example shape and classes of each built-in dataset as train.py loads it, for the checks made
# before any data is read (tests/test_tpu_scripts.py checks them against load_dataset).
INPUTS = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "digits": ((8, 8, 1), 10),
    "synthetic": ((28, 28, 1), 10),
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _line_of(error: BaseException, path: str) -> str:
    """' (line N)' of the innermost frame in `path`, where the error was raised."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
    return f" (line {frames[-1].lineno})" if frames else ""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """get_config() of the file `spec` names ('path' or 'path:argument'), or one ConfigError."""
    path, *argument = spec.split(":", 1)
    where = f"config file {path}"
    if not os.path.exists(path):
        raise ConfigError(f"{where} does not exist")
    if not os.path.isfile(path):
        raise ConfigError(f"{where} is not a file")
    path = os.path.abspath(path)
    try:
        loader = importlib.machinery.SourceFileLoader("jaxnet_user_config", path)
        spec = importlib.util.spec_from_file_location(loader.name, path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except SyntaxError as error:
        raise ConfigError(f"{where} line {error.lineno}: {error.msg}") from None
    except Exception as error:  # noqa: BLE001  (whatever the file raises is its problem)
        problem = f"{type(error).__name__}: {_one_line(error)}"
        raise ConfigError(f"{where} failed to load{_line_of(error, path)}: {problem}") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{where} defines no get_config() function")
    try:
        config = module.get_config(*argument)
    except Exception as error:  # noqa: BLE001
        problem = f"{type(error).__name__}: {_one_line(error)}"
        raise ConfigError(
            f"{where}: get_config() raised{_line_of(error, path)} {problem}"
        ) from None
    if not isinstance(config, ml_collections.ConfigDict):
        kind = type(config).__name__
        raise ConfigError(
            f"{where}: get_config() returned a {kind}, not an ml_collections.ConfigDict"
        )
    return config


def _config_spec(args) -> str | None:
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def check_argv(args) -> None:
    """ConfigError for a config file that does not load or a --config.KEY that does not exist."""
    spec = _config_spec(args)
    if spec is not None:
        load_config_file(spec)
    groups = {name.rsplit(".", 1)[0] for name in config_lib.KEYS if "." in name}
    for arg in args:
        if not arg.startswith("--config."):
            continue
        name = arg[len("--config.") :].split("=", 1)[0]
        if name in groups:
            example = next(k for k in config_lib.KEYS if k.startswith(name + "."))
            raise ConfigError(
                f"config.{name} is a group of keys: set one of them, e.g. --config.{example}=..."
                f" (list them: {config_lib.LIST_KEYS})"
            )
        if name not in config_lib.KEYS:
            raise ConfigError(config_lib.unknown_key_message(name))


def define_flags(default_config: str, flag_values=None, sys_argv=None):
    """train.py's flags (--config FILE with its --config.KEY=VALUE, --workdir, --mode).

    On `flag_values` (absl's FLAGS if None); `sys_argv` is the argv the config overrides are
    read from (sys.argv if None).
    """
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FLAGS if flag_values is None else flag_values
    config_flags.DEFINE_config_file(
        "config", default_config, "Training config file.", flag_values=fv, sys_argv=sys_argv
    )
    flags.DEFINE_string(
        "workdir", None, "Run folder; default: a fresh runs/<config>-<time>.", flag_values=fv
    )
    flags.DEFINE_enum(
        "mode",
        "train",
        ["train", "evaluate", "predict", "keys"],
        "train (and resume); evaluate a workdir's best checkpoint; predict: labels for --input "
        "with a workdir's best checkpoint; keys: list the config keys.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "input", None, "--mode=predict: an .npz file with the inputs as array x.", flag_values=fv
    )
    flags.DEFINE_string(
        "output",
        None,
        "--mode=predict: where to write labels, probabilities and logits (.npz); "
        "default WORKDIR/predictions.npz.",
        flag_values=fv,
    )
    return fv


def unexpected_arguments(rest) -> str | None:
    """Why train.py refuses the positional arguments absl left over (rest[0] is the program)."""
    if len(rest) > 1:
        return f"unexpected arguments {list(rest[1:])}; settings go in --config.KEY=VALUE"
    return None


def validate_argv(args, default_config: str):
    """The config train.py would run for `args` (its argv without the program), checked.

    train.py's own checks before it reads data, in its order: the config file and keys
    (`check_argv`), absl's parse of the flags, no stray arguments, `config.validate`, and the
    network against the dataset's input shape (`build.network_problem`). Raises ConfigError
    with train.py's one line.
    """
    from absl import flags

    from jaxnet.training import build

    argv = ["train.py", *args]
    check_argv(args)
    fv = flags.FlagValues()
    try:
        define_flags(default_config, fv, sys_argv=argv)
        rest = fv(argv)
    except Exception as error:  # noqa: BLE001  (absl's and ml_collections' errors alike)
        raise ConfigError(flag_error_line(error)) from None
    problem = unexpected_arguments(rest)
    if problem:
        raise ConfigError(problem)
    config = fv.config
    config_lib.validate(config)
    if config.dataset.name not in INPUTS:  # a user's file: its shapes are read with its data
        return config
    shape, classes = INPUTS[config.dataset.name]
    problem = build.network_problem(config, _Inputs(shape, classes))
    if problem:
        raise ConfigError(problem)
    return config


class _Inputs:
    """What network_problem reads of a dataset: its input shape and number of classes."""

    def __init__(self, input_shape, num_classes):
        self.input_shape, self.num_classes = input_shape, num_classes


def flag_error_line(error) -> str:
    """absl's flag error in one line, without the parser's traceback text."""
    text = str(error)
    if "Traceback" in text:  # ml_collections pastes a traceback into TypeErrors and ValueErrors
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = text.split(":", 1)[0] + ": " + last
    return _one_line(text)


def run_config(flags, workdir: str):
    """The run's config: the workdir's saved one (with the flags' overrides), unless --config."""
    from ml_collections import config_flags

    from jaxnet import paths
    from jaxnet.training import trainer

    saved_path = paths.join(workdir, "config.json")
    if flags["config"].present or not paths.path(saved_path).is_file():
        return flags.config, False
    saved = trainer.saved_config(workdir)
    for name, value in config_flags.get_override_values(flags["config"]).items():
        config_lib.set_value(saved, name, value)
    return saved, True


def _default_workdir(flags) -> str:
    from ml_collections import config_flags

    path = config_flags.get_config_filename(flags["config"])
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def run(flags) -> tuple[int, str | None]:
    """Carry out --mode on the flags' config; (exit status, message or None)."""
    if flags.mode == "keys":
        print(config_lib.describe(flags.config))
        return 0, None
    if flags.mode in ("evaluate", "predict") and not flags.workdir:
        return 2, f"--mode={flags.mode} needs --workdir DIR, the folder of a run"
    if flags.mode == "predict":
        if not flags.input:
            return 2, "--mode=predict needs --input FILE.npz, the inputs as array x"
        return _guarded(lambda: _predict(flags.workdir, flags.input, flags.output))
    if flags.input or flags.output:
        return 2, f"--input and --output are for --mode=predict, not --mode={flags.mode}"
    workdir = flags.workdir or _default_workdir(flags)
    return _guarded(lambda: _carry_out(flags, workdir))


def _predict(workdir: str, input_path: str, output: str | None) -> None:
    from jaxnet import paths
    from jaxnet.training import trained

    model = trained.load(workdir)
    output = output or paths.join(workdir, "predictions.npz")
    count = trained.write_predictions(model, trained.read_inputs(input_path), output)
    print(
        f"predicted {count} examples with the variables of epoch {model.best_epoch} (step "
        f"{model.step}): labels, probabilities and logits in {paths.shown(output)}"
    )


def _carry_out(flags, workdir: str) -> None:
    from jaxnet.training import multihost, trainer

    multihost.initialize()
    config, from_workdir = run_config(flags, workdir)
    if flags.mode == "evaluate":
        trainer.evaluate_workdir(workdir, None if from_workdir else config)
    else:
        trainer.train_and_evaluate(config, workdir, exit_on_signal=True)


def jax_runtime_error() -> type:
    import jax

    return jax.errors.JaxRuntimeError


def _guarded(action) -> tuple[int, str | None]:
    from jaxnet import paths
    from jaxnet.data import DatasetNotFoundError
    from jaxnet.training import trainer
    from jaxnet.training.checkpoints import CheckpointError
    from jaxnet.training.trained import LoadError

    try:
        action()
    except trainer.Interrupted as stop:
        return 130, _one_line(stop)
    except (ConfigError, trainer.WorkdirError, DatasetNotFoundError, LoadError) as error:
        return 2, _one_line(error)
    except (CheckpointError, trainer.NonFiniteLossError) as error:
        return 1, _one_line(error)
    except jax_runtime_error() as error:  # the devices ran out of memory, or XLA failed
        return 1, f"the computation failed on the device: {_one_line(error)[:300]}"
    except OSError as error:  # a disk that is full or read-only, a file that vanished
        where = f"{error.filename}: " if error.filename else ""
        return 1, f"{where}{error.strerror or _one_line(error)}"
    except ValueError as error:  # bad data (labels, shapes) or environment settings
        return 2, _one_line(error)
    except Exception as error:  # a remote store's client: refused credentials, an HTTP error
        if not paths.is_storage_error(error):
            raise
        return 1, f"the storage service failed: {_one_line(error)[:300]}"
    return 0, None
