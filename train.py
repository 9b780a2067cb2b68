"""Train a jaxnet network: python train.py [--config configs/NAME.py] [--workdir DIR] [--config.key=value ...].

With no flags it trains configs/default.py into a fresh folder under runs/. Running the same
command with the same --workdir resumes from its last checkpoint. --mode=evaluate loads the
workdir's best parameters and reports test accuracy and the confusion matrix.
"""

import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(
    0, _HERE
)  # so configs can import each other (configs/tpu.py builds on configs/cifar10.py)

from jaxnet.training import xla_cpu  # noqa: E402

xla_cpu.prefer_xla_convolutions()  # before JAX starts: see jaxnet/training/xla_cpu.py

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file(
    "config", os.path.join(_HERE, "configs", "default.py"), "Training config file."
)
flags.DEFINE_string(
    "workdir",
    None,
    "Run folder: checkpoints, metrics, plots. Default: a fresh runs/<config>-<time>.",
)
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "evaluate"],
    "Train (and resume), or evaluate a workdir's best checkpoint.",
)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.key=value")
    if not FLAGS[
        "verbosity"
    ].present:  # orbax and jax log every save at INFO: keep the table readable
        logging.set_verbosity(logging.WARNING)
    from jaxnet.training import multihost, trainer

    multihost.initialize()
    workdir = FLAGS.workdir
    if workdir is None:
        name = os.path.splitext(
            os.path.basename(config_flags.get_config_filename(FLAGS["config"]))
        )[0]
        workdir = os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    from jaxnet.data import DatasetNotFoundError
    from jaxnet.training.config import ConfigError

    try:
        if FLAGS.mode == "evaluate":
            trainer.evaluate_workdir(FLAGS.config, workdir)
        else:
            trainer.train_and_evaluate(FLAGS.config, workdir)
    except trainer.Interrupted as stop:  # expected stops get one clear line, not a traceback
        print(f"stopped: {stop}", file=sys.stderr)
        sys.exit(130)
    except (ConfigError, DatasetNotFoundError, trainer.NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
