"""train_and_evaluate(config, workdir): the whole run train.py starts, callable from tests.

Per epoch: shuffled batches from (seed, epoch), compiled chunks of steps with a progress bar,
then the validation zero-one error, which drives early termination (keeping the best parameters)
and the divide-by-10 plateau schedule. A checkpoint follows every epoch (and every N chunks if
asked), so running the same command again resumes exactly where the last one stopped. SIGTERM
and Ctrl-C save at the next chunk boundary and exit; a NaN or Inf risk stops the run, naming the
step, with the last good checkpoint left in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import shapes
from jaxnet.models import build_model
from jaxnet.training import config as config_lib
from jaxnet.training.checkpoints import Checkpoints
from jaxnet.training.defaults import base_config
from jaxnet.training.loop import Runner, TrainState, epoch_plan, make_evaluate
from jaxnet.training.objective import per_sample_loss
from jaxnet.training.optimizers import build_optimizer
from jaxnet.training.reporting import Report


class NonFiniteLossError(FloatingPointError):
    """The training risk became NaN or Inf."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or Ctrl-C arrived; the state was saved first."""


@contextlib.contextmanager
def _deferred_signals():
    """Turn SIGTERM and SIGINT into a flag checked between chunks, so a save is never cut in half."""
    received = []
    handler = lambda signum, frame: received.append(signum)  # noqa: E731
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _load_data(config, log):
    from jaxnet.data import load_dataset

    d = config.dataset
    size = d.validation_size
    if (
        size >= 1 and float(size).is_integer()
    ):  # ml_collections keeps the field's float type: 5000 arrives as 5000.0
        size = int(size)
    try:
        return load_dataset(
            d.name, data_dir=d.data_dir or None, validation_size=size, seed=config.seed, log=log
        )
    except ValueError as error:
        if str(error).startswith("validation_size"):  # say which config key it is
            raise config_lib.ConfigError(f"config.dataset.{error}") from None
        raise


def setup(config, log=print, dataset=None):
    """Validated config, dataset, model, loss, optimizer and initial state."""
    config_lib.validate(config, base_config())
    dataset = dataset if dataset is not None else _load_data(config, log)
    model = build_model(config.model, dataset.num_classes)
    loss_fn = per_sample_loss(config.loss, config.model.output_activation, dataset.num_classes)
    n = len(dataset.train.labels)
    batch = n if config.batch_size == -1 else config.batch_size
    if batch > n:
        raise config_lib.ConfigError(
            f"config.batch_size={batch} exceeds the {n} training examples; use -1 for the full batch"
        )
    steps_per_epoch = -(-n // batch)
    abstract_params = jax.eval_shape(
        lambda key: model.init(key, dataset.input_shape)[1], jax.random.PRNGKey(0)
    )
    optimizer = build_optimizer(config, steps_per_epoch, abstract_params)
    state = initial_state(model, optimizer, config.seed, dataset.input_shape)
    return dataset, model, loss_fn, optimizer, state


# Run once, so a fast compile beats fast code: with LLVM's costly passes off, the default CNN's
# setup took 0.67 s, against 2.62 s with eager initialisers each compiled alone (the initialisers
# alone: 0.54 s against 2.35 s). Values differ from eager ones by an ulp or so.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def initial_state(model, optimizer, seed: int, input_shape) -> TrainState:
    """Step 0: parameters from the first half of PRNGKey(seed), the dropout key the second half."""

    def init(key):
        init_key, dropout_key = jax.random.split(key)
        _, params = model.init(init_key, input_shape)
        return TrainState(jnp.zeros([], jnp.int32), params, optimizer.init(params), dropout_key)

    compiler_options = _FAST_COMPILE if jax.default_backend() == "cpu" else None
    return jax.jit(init, compiler_options=compiler_options)(jax.random.PRNGKey(seed))


def _stop(received, host_state, report, checkpoints):
    report.close()
    checkpoints.close()
    raise Interrupted(
        f"signal {received[0]}: saved at step {int(host_state.step)}; run the same command to resume"
    )


def _copy(tree):
    # numpy stays numpy: a multi-host run checkpoints host arrays, which orbax writes once from process 0
    return jax.tree_util.tree_map(
        lambda a: np.array(a) if isinstance(a, np.ndarray) else jnp.array(a, copy=True), tree
    )


def _hyperparams(state, optimizer_config) -> tuple[float, float]:
    """The learning rate and momentum in use: mu for momentum and Nesterov, beta1 for Adam, 0 for SGD."""
    hp = state.opt_state.hyperparams
    momentum = {"sgd": 0.0, "adam": optimizer_config.b1}.get(optimizer_config.name, hp["momentum"])
    return float(hp["learning_rate"]), float(momentum)


def _set_learning_rate(state, value):
    hp = dict(state.opt_state.hyperparams)
    hp["learning_rate"] = jnp.asarray(value, hp["learning_rate"].dtype)
    return state._replace(opt_state=state.opt_state._replace(hyperparams=hp))


def train_and_evaluate(
    config, workdir: str, *, log=print, dataset=None, devices=None, progress: bool = True
) -> dict:
    """Train config in workdir (resuming if it holds checkpoints); returns the summary also written to summary.json."""
    os.makedirs(workdir, exist_ok=True)
    primary = (
        jax.process_index() == 0
    )  # in a multi-host job the hosts share the workdir; one writes the reports
    if not primary:
        log = lambda *args, **kwargs: None  # noqa: E731
    dataset, model, loss_fn, optimizer, state = setup(config, log, dataset)
    runner = Runner(config.devices.strategy, model, loss_fn, optimizer, devices)
    if runner.multi_process:
        state = jax.tree_util.tree_map(np.asarray, state)
    train, val = dataset.train, dataset.validation
    runner.check_batch(config.batch_size, len(train.labels))
    evaluate = make_evaluate(model, loss_fn, dataset.num_classes)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), config.checkpoint.keep)
    report = Report(workdir, progress=progress and primary, log=log, write_files=primary)

    record = {
        "epoch": 0,
        "step_in_epoch": 0,
        "best_error": None,
        "best_epoch": None,
        "bad_epochs": 0,
        "history": [],
        "stopped": None,
    }
    best_params = _copy(state.params)
    if checkpoints.latest_step() is not None:
        state, best_params, record = checkpoints.restore(state, best_params)
        log(
            f"resuming from {checkpoints.directory} at step {int(state.step)} (epoch {record['epoch'] + 1}, step {record['step_in_epoch']} of it)"
        )
    elif primary:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    log(
        f"jaxnet: {config.model.kind} ({shapes.param_count(state.params):,} parameters) on {dataset.name} from {dataset.source}; "
        f"{len(train.labels)} train / {len(val.labels)} validation / {len(dataset.test.labels)} test; "
        f"{config.devices.strategy} over {runner.num_devices} {jax.default_backend()} device(s); workdir {os.path.abspath(workdir)}"
    )

    images, labels = runner.put_data(train.images, train.labels)
    device_state = runner.put_state(state)
    n = len(train.labels)

    def save(host_state, record):
        checkpoints.save(int(host_state.step), host_state, best_params, record)

    with _deferred_signals() as received:
        epoch = record["epoch"]
        while epoch < config.epochs and record["stopped"] is None:
            plan = epoch_plan(n, config.batch_size, config.steps_per_chunk, config.seed, epoch)
            chunk_steps = plan.indices.shape[1]
            first_chunk, offset = divmod(record["step_in_epoch"], chunk_steps)
            if offset:
                raise config_lib.ConfigError(
                    f"the checkpoint stopped {record['step_in_epoch']} steps into epoch {epoch + 1}, not a multiple of "
                    f"config.steps_per_chunk={config.steps_per_chunk}: resume with the steps_per_chunk of the interrupted run"
                )
            report.start_epoch(epoch + 1, config.epochs, n)
            started, risks = time.perf_counter(), []
            for c in range(first_chunk, plan.indices.shape[0]):
                tic = time.perf_counter()
                device_state, chunk_risks = runner.run_chunk(
                    device_state, images, labels, plan.indices[c], plan.weights[c]
                )
                real = min(chunk_steps, plan.steps - c * chunk_steps)
                chunk_risks = np.asarray(chunk_risks)[
                    :real
                ]  # waiting here also keeps fake devices in step
                if epoch == record["epoch"] and c == first_chunk:
                    report.compile_seconds = time.perf_counter() - tic
                if not np.all(np.isfinite(chunk_risks)):
                    bad = int(np.argmin(np.isfinite(chunk_risks)))
                    step = epoch * plan.steps + c * chunk_steps + bad + 1
                    report.close()
                    checkpoints.close()
                    raise NonFiniteLossError(
                        f"the training risk is {chunk_risks[bad]} at step {step} (epoch {epoch + 1}); "
                        f"the last good checkpoint is kept in {checkpoints.directory}. Try a smaller learning rate."
                    )
                risks.extend(chunk_risks.tolist())
                report.advance(int(plan.weights[c, :real].sum()), float(np.mean(chunk_risks)))
                every = config.checkpoint.every_chunks
                last_chunk = (
                    c + 1 == plan.indices.shape[0]
                )  # a signal here waits for the epoch's own save
                if not last_chunk and (received or (every and (c + 1) % every == 0)):
                    save(
                        runner.host_state(device_state),
                        {**record, "epoch": epoch, "step_in_epoch": (c + 1) * chunk_steps},
                    )
                if received and not last_chunk:
                    _stop(received, runner.host_state(device_state), report, checkpoints)

            host = runner.host_state(device_state)
            val_loss, val_error, _ = evaluate(host.params, val.images, val.labels)
            lr, mu = _hyperparams(host, config.optimizer)
            row = {
                "epoch": epoch + 1,
                "step": int(host.step),
                "train_risk": float(np.mean(risks)) if risks else float("nan"),
                "val_loss": val_loss,
                "val_error": val_error,
                "learning_rate": lr,
                "momentum": mu,
                "seconds": time.perf_counter() - started,
            }
            record["history"].append(row)
            improved = record["best_error"] is None or (
                np.isfinite(val_error) and val_error < record["best_error"]
            )
            if improved:
                record["best_error"], record["best_epoch"], record["bad_epochs"] = (
                    val_error,
                    epoch + 1,
                    0,
                )
                best_params = _copy(
                    host.params
                )  # its own buffers: the running state's are donated each chunk
            else:
                record["bad_epochs"] += 1
            patience = config.early_stopping.patience
            if patience and record["bad_epochs"] >= patience:
                record["stopped"] = (
                    f"early termination: no better validation error for {patience} epochs"
                )
            if (
                config.schedule.name == "plateau"
                and record["bad_epochs"]
                and record["bad_epochs"] % config.schedule.plateau_patience == 0
            ):
                host = _set_learning_rate(host, lr * config.schedule.plateau_factor)
                device_state = runner.put_state(host)
            report.end_epoch(row)
            epoch += 1
            record.update(epoch=epoch, step_in_epoch=0)
            save(host, record)
            if received and epoch < config.epochs and record["stopped"] is None:
                _stop(received, host, report, checkpoints)

    test_loss, test_error, confusion = evaluate(
        best_params, dataset.test.images, dataset.test.labels
    )
    summary = {
        "dataset": dataset.name,
        "source": dataset.source,
        "model": config.model.kind,
        "parameters": shapes.param_count(best_params),
        "devices": f"{config.devices.strategy} x{runner.num_devices}",
        "epochs_run": len(record["history"]),
        "best_epoch": record["best_epoch"],
        "best_val_error": record["best_error"],
        "stopped": record["stopped"] or "completed all epochs",
        "test_loss": test_loss,
        "test_accuracy": 1.0 - test_error,
        "test_error": test_error,
        "confusion_matrix": confusion.tolist(),
        "compile_seconds": report.compile_seconds,
        "train_seconds": float(sum(r["seconds"] for r in record["history"])),
    }
    report.finish(summary, record["history"])
    checkpoints.close()
    return summary


def evaluate_workdir(config, workdir: str, *, log=print, dataset=None) -> dict:
    """Load a workdir's best parameters and report test accuracy and the confusion matrix."""
    dataset, model, loss_fn, _, state = setup(config, log, dataset)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), config.checkpoint.keep)
    if checkpoints.latest_step() is None:
        raise FileNotFoundError(
            f"no checkpoint in {checkpoints.directory}: train first with the same --workdir"
        )
    _, best, record = checkpoints.restore(state, state.params)
    checkpoints.close()
    loss, error, confusion = make_evaluate(model, loss_fn, dataset.num_classes)(
        best, dataset.test.images, dataset.test.labels
    )
    result = {
        "best_epoch": record["best_epoch"],
        "test_loss": loss,
        "test_accuracy": 1 - error,
        "confusion_matrix": confusion.tolist(),
    }
    with open(os.path.join(workdir, "evaluation.json"), "w") as f:
        json.dump(result, f, indent=2)
    log(
        f"test accuracy {100 * (1 - error):.2f}% (loss {loss:.4f}) with the parameters of epoch {record['best_epoch']}"
    )
    log(
        "confusion matrix (rows: true class, columns: predicted):\n"
        + "\n".join(" ".join(f"{v:5d}" for v in row) for row in confusion)
    )
    return result
