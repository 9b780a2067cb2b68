"""train_and_evaluate(config, workdir): the run train.py starts, as stages a test can call.

    prepare      validate the config, the workdir and the data; build; nothing is written
                 before every check has passed
    restore      the newest intact checkpoint, or step 0
    train_epoch  compiled chunks of steps (`steps.run_epoch`), then the validation error, which
                 drives early termination (keeping the best parameters) and the plateau schedule
    finish       the test split with the best parameters, summary.json and the plots

The run's state between stages is a `Run`. Checkpoints are written in the background at chunk
ends (by steps or by time, and always at the end), so running the same command again resumes
exactly where the last one stopped. SIGTERM and Ctrl-C save at the next chunk boundary and exit;
a NaN or Inf risk stops the run, naming the step.

The workdir may be local or remote (gs://bucket/run): every file goes through `jaxnet.paths`. A
local workdir is locked (flock on WORKDIR/.lock) for the run's lifetime; a remote one cannot be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import sys
import time
from typing import Any

import jax
import numpy as np

from jaxnet import paths, shapes
from jaxnet.training import build
from jaxnet.training import config as config_lib
from jaxnet.training.checkpoints import Checkpoints
from jaxnet.training.config import ConfigError
from jaxnet.training.placement import STRATEGIES
from jaxnet.training.reporting import Report
from jaxnet.training.steps import (
    EpochPlan,
    Variables,
    abstract_split,
    chunk_shape,
    epoch_plan,
    make_evaluate,
    run_epoch,
)


class NonFiniteLossError(FloatingPointError):
    """The training risk became NaN or Inf."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or Ctrl-C arrived; str() says what was saved."""


class WorkdirError(RuntimeError):
    """The workdir cannot be used (a file, in use by another run, not writable)."""


# ------------------------------------------------------------------------------------- records


@dataclasses.dataclass
class Progress:
    """Where the run is, saved as JSON with every checkpoint."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0
    risk_sum: float = 0.0  # this epoch's step risks so far, added in step order
    risk_steps: int = 0
    best_error: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped: str | None = None
    history: list = dataclasses.field(default_factory=list)

    @classmethod
    def from_record(cls, record: dict) -> Progress:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in fields})


@dataclasses.dataclass
class Run:
    """Everything the stages share."""

    config: Any
    workdir: str
    dataset: Any
    built: build.Built
    placement: Any
    checkpoints: Checkpoints
    report: Report
    log: Any
    signals: _Signals
    primary: bool
    validation_rule: str | None = None  # how an empty validation split is handled
    progress: Progress = dataclasses.field(default_factory=Progress)
    state: Any = None  # on the devices
    step: int = 0  # state.step, counted on the host: reading it from the devices waits for them
    best: Any = None  # host copy of the best Variables (parameters and model state)
    data: Any = None
    last_save: tuple[int, float] = (0, 0.0)  # (step, time)
    resumed_from: int | None = None
    evaluate: Any = None
    lock: Any = None  # the open WORKDIR/.lock

    @property
    def done(self) -> bool:
        return self.progress.stopped is not None or self.progress.epoch >= self.config.epochs

    def plan(self) -> EpochPlan:
        c = self.config
        n = len(self.dataset.train.labels)
        return epoch_plan(n, c.batch_size, c.steps_per_chunk, c.seed, self.progress.epoch)


# ------------------------------------------------------------------------------------- signals


class _Signals:
    """SIGTERM / SIGINT: wait for a chunk end while training; otherwise stop at once.

    Stopping at once raises Interrupted, or with exit_at_once (train.py) prints one line and
    ends the process: an exception raised from a signal handler can land inside a library
    callback, which swallows it.
    """

    def __init__(self, exit_at_once: bool = False):
        self.received: list[int] = []
        self.deferred = False
        self.exit_at_once = exit_at_once
        self.context = "during start-up; nothing was saved"

    def __call__(self, signum, frame):
        if self.deferred:
            self.received.append(signum)
            return
        message = f"signal {signum} {self.context}"
        if self.exit_at_once:
            print(f"stopped: {message}", file=sys.stderr, flush=True)
            os._exit(130)
        raise Interrupted(message)

    @contextlib.contextmanager
    def installed(self):
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                previous[sig] = signal.signal(sig, self)
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


# ------------------------------------------------------------------------------------- prepare


def _load_data(config, log):
    from jaxnet.data import Dataset, load_dataset

    d = config.dataset
    size = d.validation_size
    if size >= 1:  # ml_collections keeps the field's float type: 5000 arrives as 5000.0
        size = int(size)
    try:
        if d.name == "npz":
            standardize = "none" if d.standardize == "auto" else d.standardize
            return Dataset.from_npz(
                d.path, validation_size=size, standardize=standardize, seed=config.seed, log=log
            )
        return load_dataset(
            d.name,
            data_dir=d.data_dir or None,
            validation_size=size,
            seed=config.seed,
            download=d.download,
            cache_dir=d.cache_dir or None,
            mirror=d.mirror or None,
            standardize=d.standardize,
            log=log,
        )
    except ValueError as error:
        if str(error).startswith("validation_size"):  # say which config key it is
            raise ConfigError(f"config.dataset.{error}") from None
        raise


# The Standardization the run applied to its inputs, for predictions on new raw inputs.
STANDARDIZATION_FILE = "standardization.npz"


def saved_standardization(workdir: str):
    """The `jaxnet.data.Standardization` a workdir's run applied to its inputs, or None."""
    from jaxnet.data import Standardization

    path = paths.join(workdir, STANDARDIZATION_FILE)
    return Standardization.load(path) if paths.path(path).is_file() else None


def _describe_dataset(dataset) -> dict:
    """The dataset's own name, source, file, standardisation, shapes: what the workdir records."""
    from jaxnet.data import describe_dataset

    return describe_dataset(dataset)


def _record_dataset(workdir: str, config, dataset) -> None:
    """config.json, recording the dataset read, and standardization.npz: once per workdir."""
    from jaxnet.data import Standardization

    if saved_config(workdir) is None:
        recorded = {"dataset": _describe_dataset(dataset)}
        paths.write_text(paths.join(workdir, "config.json"), config_lib.to_json(config, recorded))
    path = paths.join(workdir, STANDARDIZATION_FILE)
    if not paths.path(path).exists():
        standardization = getattr(dataset, "standardization", None) or Standardization("none")
        standardization.save(path)


def _check_same_dataset(workdir: str, dataset) -> None:
    """Stop if the workdir's run was started on another dataset (name, example shape, classes)."""
    path = paths.join(workdir, "config.json")
    if not paths.path(path).is_file():
        return
    try:
        recorded = json.loads(paths.path(path).read_text())[config_lib.RECORDED]["dataset"]
    except (ValueError, KeyError, TypeError):  # none recorded; a damaged file is check_resume's
        return
    now = _describe_dataset(dataset)
    changed = [
        f"{key}: {recorded.get(key)!r} -> {now[key]!r}"
        for key in ("name", "input_shape", "num_classes")
        if recorded.get(key) != now[key]
    ]
    if changed:
        raise ConfigError(
            f"{workdir} holds a run on another dataset ({'; '.join(changed)}): give it the "
            "dataset it started with (train_and_evaluate(..., dataset=...) for arrays given in "
            "Python), or start a new run with another --workdir"
        )


def saved_config(workdir: str):
    path = paths.join(workdir, "config.json")
    if not paths.path(path).is_file():
        return None
    return config_lib.from_json(paths.path(path).read_text(), where=path)


def check_resume(config, workdir: str, log) -> None:
    """Stop if `config` differs from the workdir's saved config in a key that may not change."""
    saved = saved_config(workdir)
    if saved is None:
        return
    allowed, refused = config_lib.resume_changes(saved, config)
    if refused:
        raise ConfigError(
            f"{workdir} holds a run with another config ({'; '.join(refused)}): resume with "
            "the saved config (omit those flags) or start a new run with another --workdir"
        )
    if allowed:
        note = "; ".join(allowed)
        if saved.schedule.name == "cosine" and saved.epochs != config.epochs:
            note += f" (the cosine schedule now decays over {config.epochs} epochs)"
        log(f"resuming with changed settings: {note}")


def _check_workdir_paths(workdir: str) -> None:
    for path, what in ((workdir, "the workdir"), (paths.join(workdir, "checkpoints"), "")):
        if paths.path(path).exists() and not paths.path(path).is_dir():
            where = what or "the checkpoint folder"
            raise WorkdirError(f"{path} is a file, but {where} must be a folder: move it away")


def _check_data_fits(config, dataset, placement) -> None:
    n = len(dataset.train.labels)
    if n == 0:
        raise ConfigError(f"dataset {dataset.name!r} has no training examples")
    batch = n if config.batch_size == -1 else config.batch_size
    if batch > n:
        raise ConfigError(
            f"config.batch_size={batch} exceeds the {n} training examples; "
            "use -1 for the full batch"
        )
    problem = placement.batch_problem(batch)
    if problem:
        raise ConfigError(f"config.batch_size={batch}: {problem}")


def _device_memory() -> int | None:
    """Bytes one device can hold: its own limit on accelerators, the host's memory on CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def _check_state_fits(config, built) -> None:
    """The state, and the best variables beside it, must fit on one device."""
    state = jax.tree_util.tree_leaves(built.abstract_state())
    best = jax.tree_util.tree_leaves(built.abstract_variables())
    need = sum(x.size * x.dtype.itemsize for x in state + best)
    have = _device_memory()
    if have is not None and need > have:
        m = config.model
        raise ConfigError(
            f"config.model.hidden={tuple(m.hidden)}, model.channels={tuple(m.channels)} give a "
            f"training state of {need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB "
            "of one device: use smaller layers"
        )


def _empty_validation_rule(config, dataset, log) -> str | None:
    if len(dataset.validation.labels):
        return None
    rule = (
        "no validation split: the best parameters are the last epoch's; "
        "early termination and the plateau schedule are off"
    )
    log(f"note: {rule}")
    return rule


def _enable_compilation_cache(path: str, log) -> None:
    if not path or jax.config.jax_compilation_cache_dir:  # off, or the user set one already
        return
    path = path if paths.is_remote(path) else os.path.expanduser(path)  # JAX writes URLs itself
    try:
        paths.makedirs(path)
    except OSError as error:
        log(f"note: no compilation cache ({path}: {paths.reason(error)})")
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def prepare(config, workdir: str, *, log=print, dataset=None, devices=None, progress=True) -> Run:
    """Every check, then the workdir, the checkpoints and the report: a Run at step 0."""
    config_lib.validate(config)
    _check_workdir_paths(workdir)
    check_resume(config, workdir, log)
    primary = jax.process_index() == 0  # the hosts of a multi-host job share the workdir
    dataset = dataset if dataset is not None else _load_data(config, log)
    _check_same_dataset(workdir, dataset)
    problem = build.network_problem(config, dataset)
    if problem:
        raise ConfigError(problem)
    built = build.Built(config, dataset)
    _check_state_fits(config, built)
    try:
        placement = STRATEGIES[config.devices.strategy](
            built.model, built.loss_fn, built.optimizer, devices
        )
    except ValueError as error:
        raise ConfigError(f"config.devices.strategy={config.devices.strategy!r}: {error}") from None
    _check_data_fits(config, dataset, placement)
    rule = _empty_validation_rule(config, dataset, log)
    _enable_compilation_cache(config.compilation_cache_dir, log)
    with _removed_on_failure(workdir):
        lock = _lock(workdir, log) if primary else None  # before orbax clears unfinished saves
        try:
            checkpoints = Checkpoints(
                paths.join(workdir, "checkpoints"), config.checkpoint.keep, log=log
            )
            if primary:
                _record_dataset(workdir, config, dataset)
        except BaseException:
            if lock is not None:
                lock.close()
            raise
    evaluate = make_evaluate(built.model, built.loss_fn, dataset.num_classes)
    return Run(
        config,
        workdir,
        dataset,
        built,
        placement,
        checkpoints,
        report=None,
        log=log,
        signals=None,
        primary=primary,
        validation_rule=rule,
        evaluate=evaluate,
        lock=lock,
    )


@contextlib.contextmanager
def _removed_on_failure(workdir: str):
    """Create the workdir; if the start fails before anything is saved, remove what it made."""
    existed = paths.path(workdir).is_dir()
    try:
        paths.makedirs(workdir)
        yield
    except OSError as error:
        _remove_if_new(workdir, existed)
        raise WorkdirError(f"cannot write the workdir {workdir}: {paths.reason(error)}") from None
    except BaseException:
        _remove_if_new(workdir, existed)
        raise


def _remove_if_new(workdir: str, existed: bool) -> None:
    if existed or not paths.path(workdir).is_dir():
        return
    if not paths.is_remote(workdir):
        shutil.rmtree(paths.path(workdir), ignore_errors=True)
        return
    with contextlib.suppress(Exception):  # as ignore_errors: the start's own error is reported
        paths.path(workdir).rmtree()


def _lock(workdir: str, log):
    """An exclusive lock on WORKDIR/.lock for the run's lifetime: two runs never share one.

    An object store has no locks (an object written as a guard would outlive a killed run and
    block its resume), so a remote workdir is left unlocked, with a note.
    """
    if paths.is_remote(workdir):
        log(f"note: {workdir} is not locked (object stores have no locks): start one run at a time")
        return None
    handle = open(paths.join(workdir, ".lock"), "a+")  # noqa: SIM115  (held until the run ends)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise WorkdirError(
            f"{workdir} is in use by another run (process {owner}): wait for it to end, "
            "or use another --workdir"
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


# ------------------------------------------------------------------------------------- restore


def _host_copy(tree):
    return jax.tree_util.tree_map(lambda a: np.array(a, copy=True), tree)


def _compile_ahead(run: Run) -> None:
    train, c = run.dataset.train, run.config
    data = abstract_split(train.images, train.labels)
    shape = chunk_shape(len(train.labels), c.batch_size, c.steps_per_chunk)
    run.placement.compile_ahead(run.built.abstract_state(), data, shape)
    run.evaluate.compile_ahead(
        run.built.abstract_variables(), run.dataset.input_shape, data[0].dtype
    )


def restore(run: Run) -> None:
    """The newest intact checkpoint (falling back past damaged ones), or the initial state.

    A fresh run compiles its chunk meanwhile; a resumed one once it knows there is work left.
    """
    fresh = not run.checkpoints.steps()
    if fresh:
        _compile_ahead(run)
    state = run.built.initial_state()
    if run.placement.multi_process:
        state = jax.tree_util.tree_map(np.asarray, state)
    best = _host_copy(Variables.of(state))
    restored = run.checkpoints.restore(state, best)
    if restored is not None:
        state, best = restored.state, restored.best
        run.progress = Progress.from_record(restored.record)
        run.resumed_from = restored.step
        run.last_save = (restored.step, time.monotonic())
        _check_chunk_position(run)
        p = run.progress
        run.log(
            f"resuming from {run.checkpoints.directory} at step {restored.step} "
            f"(epoch {p.epoch + 1}, step {p.step_in_epoch} of it)"
        )
    else:
        run.last_save = (0, time.monotonic())
    if not fresh and not run.done:
        _compile_ahead(run)
    run.best = best
    run.step = int(np.asarray(state.step))
    run.state = run.placement.put_state(state)
    train = run.dataset.train
    run.data = run.placement.put_data(train.images, train.labels)


def _check_chunk_position(run: Run) -> None:
    p, c = run.progress, run.config
    k = c.steps_per_chunk
    if p.step_in_epoch % chunk_shape(len(run.dataset.train.labels), c.batch_size, k)[0]:
        raise ConfigError(
            f"the checkpoint stopped {p.step_in_epoch} steps into epoch {p.epoch + 1}, not a "
            f"multiple of config.steps_per_chunk={k}: resume with the steps_per_chunk of the "
            "interrupted run"
        )


def _open_report(run: Run, progress: bool) -> None:
    c = run.config
    run.report = Report(
        run.workdir,
        progress=progress and run.primary,
        log=run.log,
        write_files=run.primary,
        log_every_seconds=c.log_every_seconds,
        resume_step=run.resumed_from,
    )
    if run.resumed_from is None:
        run.report.log_config(config_lib.to_json(c))


def describe_run(run: Run) -> str:
    d, c = run.dataset, run.config
    params = shapes.param_count(run.best.params)
    return (
        f"jaxnet: {c.model.kind} ({params:,} parameters) on {d.name} from {d.source}; "
        f"{len(d.train.labels)} train / {len(d.validation.labels)} validation / "
        f"{len(d.test.labels)} test; {c.devices.strategy} over {run.placement.num_devices} "
        f"{jax.default_backend()} device(s); workdir {paths.shown(run.workdir)}"
    )


# ----------------------------------------------------------------------------------- training


def train_epoch(run: Run) -> None:
    """The rest of the current epoch, chunk by chunk, then its end."""
    plan, p = run.plan(), run.progress
    first = p.step_in_epoch // plan.chunk_steps
    n = len(run.dataset.train.labels)
    done = int(plan.weights[:first].sum())
    left = (run.config.epochs - p.epoch) * n - done
    run.report.start_epoch(
        p.epoch + 1, run.config.epochs, n, done, p.risk_sum, p.risk_steps, run_examples_left=left
    )
    started = time.perf_counter()
    last_chunk = plan.indices.shape[0] - 1
    for state, result in run_epoch(run.placement, run.state, run.data, plan, first):
        run.state = state
        _after_chunk(run, plan, result)
        if result.chunk == last_chunk:
            break
        save_due, stop = run.placement.agree(_save_due(run), bool(run.signals.received))
        if save_due or stop:
            save(run, force=stop)
        if stop:
            _stop(run)
    _end_epoch(run, time.perf_counter() - started)


def _after_chunk(run: Run, plan: EpochPlan, result) -> None:
    p = run.progress
    if not np.all(np.isfinite(result.risks)):
        _non_finite(run, plan, result)
    for risk in result.risks.tolist():  # in step order, so a resumed epoch adds up the same
        p.risk_sum += risk
    p.risk_steps += len(result.risks)
    run.step += len(result.risks)  # only padding steps leave the state as it was
    p.step_in_epoch = (result.chunk + 1) * plan.chunk_steps
    lr = _learning_rate(run)
    run.report.chunk(
        step=run.step,
        epoch=p.epoch + 1,
        examples=result.examples,
        losses=result.risks.tolist(),
        learning_rate=lr,
        compiled=result.compiled,
    )


def _non_finite(run: Run, plan: EpochPlan, result) -> None:
    bad = int(np.argmin(np.isfinite(result.risks)))
    p = run.progress
    step = p.epoch * plan.steps + result.chunk * plan.chunk_steps + bad + 1
    run.checkpoints.wait()  # a save in flight holds good parameters: let it land first
    latest = run.checkpoints.latest_step()
    kept = (
        f"the last good checkpoint (step {latest}) is kept in {run.checkpoints.directory}"
        if latest is not None
        else "no checkpoint had been saved yet"
    )
    raise NonFiniteLossError(
        f"the training risk is {result.risks[bad]} at step {step} (epoch {p.epoch + 1}); "
        f"{kept}. Try a smaller learning rate."
    )


def _learning_rate(run: Run) -> float:
    host = run.placement.host_state(run.state)
    return float(host.opt_state.hyperparams["learning_rate"])


def _save_due(run: Run) -> bool:
    c = run.config.checkpoint
    step, at = run.last_save
    by_steps = c.every_steps and run.step - step >= c.every_steps
    by_time = c.every_seconds and time.monotonic() - at >= c.every_seconds
    return bool(by_steps or by_time)


def save(run: Run, force: bool = False) -> None:
    """A background checkpoint of the state, the best parameters and the progress."""
    host = run.placement.host_state(run.state)
    step = int(np.asarray(host.step))
    record = dataclasses.asdict(run.progress)
    run.report.flush()
    if run.checkpoints.save(step, host, run.best, record, force=force):
        run.last_save = (step, time.monotonic())


def _stop(run: Run) -> None:
    run.checkpoints.wait()
    step = run.last_save[0]
    raise Interrupted(
        f"signal {run.signals.received[0]}: saved at step {step}; run the same command to resume"
    )


def _end_epoch(run: Run, seconds: float) -> None:
    """Validation, the best parameters, early termination and the plateau rule; then maybe save."""
    host = run.placement.host_state(run.state)
    val = run.dataset.validation
    result = run.evaluate(Variables.of(host), val.images, val.labels)
    lr, mu = build.hyperparameters(host.opt_state, run.config.optimizer)
    p = run.progress
    row = {
        "epoch": p.epoch + 1,
        "step": int(np.asarray(host.step)),
        "train_risk": p.risk_sum / p.risk_steps if p.risk_steps else float("nan"),
        "val_loss": result.loss,
        "val_error": result.error,
        "val_accuracy": result.accuracy,
        "learning_rate": lr,
        "momentum": mu,
        "seconds": seconds,
    }
    p.history.append(row)
    _track_best(run, Variables.of(host), result.error)
    if _plateau_due(run):
        run.state = run.placement.put_state(
            build.with_learning_rate(host, lr * run.config.schedule.plateau_factor)
        )
    run.report.end_epoch(row)
    p.epoch, p.step_in_epoch, p.risk_sum, p.risk_steps = p.epoch + 1, 0, 0.0, 0
    last = run.done
    stop, due = run.placement.agree(bool(run.signals.received), _save_due(run))
    if last or stop or due:
        save(run, force=last or stop)
    if stop and not last:
        _stop(run)


def _track_best(run: Run, variables: Variables, error: float) -> None:
    p = run.progress
    if run.validation_rule is not None:  # no validation split: the last epoch is the best
        p.best_epoch, run.best = p.epoch + 1, _host_copy(variables)
        return
    if p.best_error is None or (np.isfinite(error) and error < p.best_error):
        p.best_error, p.best_epoch, p.bad_epochs = error, p.epoch + 1, 0
        run.best = _host_copy(variables)  # its own buffers: the state's are donated
        return
    p.bad_epochs += 1
    patience = run.config.early_stopping.patience
    if patience and p.bad_epochs >= patience:
        p.stopped = f"early termination: no better validation error for {patience} epochs"


def _plateau_due(run: Run) -> bool:
    s, bad = run.config.schedule, run.progress.bad_epochs
    on = s.name == "plateau" and run.validation_rule is None
    return on and bad > 0 and bad % s.plateau_patience == 0


# ------------------------------------------------------------------------------------- finish


def finish(run: Run) -> dict:
    """Test accuracy of the best parameters; summary.json, the curves and the final line."""
    run.checkpoints.wait()
    run.signals.context = (
        f"during the final evaluation: training is complete and saved at step {run.last_save[0]}"
        "; run the same command to evaluate again"
    )
    test = run.dataset.test
    result = run.evaluate(run.best, test.images, test.labels)
    p, c = run.progress, run.config
    summary = {
        "dataset": _describe_dataset(run.dataset),
        "source": run.dataset.source,
        "model": c.model.kind,
        "parameters": shapes.param_count(run.best.params),
        "devices": f"{c.devices.strategy} x{run.placement.num_devices}",
        "epochs_run": len(p.history),
        "best_epoch": p.best_epoch,
        "best_val_error": p.best_error,
        "validation": run.validation_rule or "best validation zero-one error",
        "stopped": p.stopped or "completed all epochs",
        "test_loss": result.loss,
        "test_accuracy": result.accuracy,
        "test_error": result.error,
        "confusion_matrix": result.confusion.tolist(),
        "compile_seconds": run.report.compile_seconds,
        "train_seconds": float(sum(r["seconds"] for r in p.history)),
        "step": run.last_save[0],
    }
    run.report.finish(summary, p.history)
    return summary


def close(run: Run) -> None:
    if run.report is not None:
        run.report.close()
    run.checkpoints.close()
    lock = getattr(run, "lock", None)
    if lock is not None:
        lock.close()


def train_and_evaluate(
    config,
    workdir: str,
    *,
    log=print,
    dataset=None,
    devices=None,
    progress: bool = True,
    exit_on_signal: bool = False,
) -> dict:
    """Train `config` in `workdir` (resuming its checkpoints); the summary, as in summary.json.

    A signal during training saves at the next chunk end and raises Interrupted; at other
    times it raises at once, or with exit_on_signal prints one line and ends the process.
    """
    quiet = (lambda *args, **kwargs: None) if jax.process_index() else log
    with _Signals(exit_on_signal).installed() as signals:
        run = prepare(
            config, workdir, log=quiet, dataset=dataset, devices=devices, progress=progress
        )
        run.signals = signals
        try:
            restore(run)
            _open_report(run, progress)
            quiet(describe_run(run))
            signals.deferred = True
            while not run.done:
                train_epoch(run)
            signals.deferred = False
            return finish(run)
        finally:
            signals.deferred = False
            close(run)


# ----------------------------------------------------------------------------------- evaluate


def evaluate_workdir(workdir: str, config=None, *, log=print, dataset=None) -> dict:
    """Test accuracy and confusion matrix of a workdir's best parameters, from its saved config."""
    saved = saved_config(workdir)
    if saved is None:
        raise WorkdirError(f"{workdir} holds no run (no config.json): train first with it")
    if config is not None:
        check_resume(config, workdir, log)
    config = saved if config is None else config
    config_lib.validate(config)
    dataset = dataset if dataset is not None else _load_data(config, log)
    _check_same_dataset(workdir, dataset)
    problem = build.network_problem(config, dataset)
    if problem:
        raise ConfigError(problem)
    built = build.Built(config, dataset)
    folder = paths.join(workdir, "checkpoints")
    checkpoints = Checkpoints(folder, config.checkpoint.keep, log=log, read_only=True)
    try:
        state = built.initial_state()
        restored = checkpoints.restore(state, _host_copy(Variables.of(state)))
    finally:
        checkpoints.close()
    if restored is None:
        raise WorkdirError(
            f"no checkpoint in {checkpoints.directory}: train first with this workdir"
        )
    evaluate = make_evaluate(built.model, built.loss_fn, dataset.num_classes)
    result = evaluate(restored.best, dataset.test.images, dataset.test.labels)
    best_epoch = restored.record.get("best_epoch")
    summary = {
        "best_epoch": best_epoch,
        "step": restored.step,
        "test_loss": result.loss,
        "test_accuracy": result.accuracy,
        "confusion_matrix": result.confusion.tolist(),
    }
    paths.write_text(paths.join(workdir, "evaluation.json"), json.dumps(summary, indent=2))
    _log_evaluation(log, result, best_epoch)
    return summary


def _log_evaluation(log, result, best_epoch) -> None:
    log(
        f"test accuracy {100 * result.accuracy:.2f}% (loss {result.loss:.4f}) with the parameters "
        f"of epoch {best_epoch}"
    )
    rows = "\n".join(" ".join(f"{v:5d}" for v in row) for row in result.confusion)
    log("confusion matrix (rows: true class, columns: predicted):\n" + rows)
