"""What the user sees and keeps of a run: progress, a table row per epoch, metrics.jsonl,
TensorBoard, summary.json and learning_curves.png.

Progress: when stderr is a terminal, a tqdm bar per epoch on stderr; otherwise (a log file, nohup,
CI, ssh without a terminal, Jupyter) a plain line through `log`, every `log_every_seconds`, e.g.

    epoch 3/15  41% 22,528/54,976 ex  1,234 ex/s  ETA 0:26 (epoch) 3:40 (run)  risk 0.3121

The rate and both ETAs count only training chunks that did not include compilation (the trainer
marks those `compiled=True`), and no evaluation time; "risk" is the mean of this epoch's step risks
so far. The bar shows the same figures in its postfix, not tqdm's own rate. The epoch table, the
progress lines and the final line all go through `log` (default: print to stdout).

metrics.jsonl holds one JSON object a line, flushed as written:
    {"kind": "chunk", "step", "epoch", "train/loss", "train/learning_rate"}  after every chunk
    {"kind": "epoch", "epoch", "step", "train_risk", "val_loss", "val_error", "val_accuracy",
     "learning_rate", "momentum", "seconds"}                                   after every epoch
    {"kind": "test", "step", "test/loss", "test/error", "test/accuracy"}     once, at the end
A run resumed from the checkpoint of step S first keeps only the rows of steps <= S (no test row),
and its TensorBoard event file starts by purging the events of steps > S (a SessionLog START at
step S + 1, as tensorboardX's purge_step writes), so re-run steps appear once; a fresh run
(resume_step=None) starts both over. Rows are flushed as written; TensorBoard events at `flush`,
which the trainer calls before each checkpoint, so a checkpoint never lacks them.

The workdir may be remote (gs://...; see jaxnet.paths). An object store cannot append, so there
metrics.jsonl is kept in memory and the event file in a local staging folder, and each flush
uploads the whole object: what the bucket holds at a checkpoint is as complete as a local disk's.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from jaxnet import paths

COLUMNS = (  # header, row key, width, format spec
    ("epoch", "epoch", 5, ""),
    ("train risk", "train_risk", 10, ".4f"),
    ("val loss", "val_loss", 9, ".4f"),
    ("val error", "val_error", 9, ".2%"),
    ("val acc", "val_accuracy", 9, ".2%"),
    ("lr", "learning_rate", 9, ".3g"),
    ("momentum", "momentum", 8, ".3g"),
    ("seconds", "seconds", 7, ".1f"),
)
EPOCH_SCALARS = {  # TensorBoard tag: epoch row key
    "train/risk": "train_risk",
    "train/momentum": "momentum",
    "val/loss": "val_loss",
    "val/error": "val_error",
    "val/accuracy": "val_accuracy",
}
BAR_SECONDS = 0.1  # between redraws of the bar
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} ex{postfix}"


@dataclass
class _Epoch:
    """Progress through one epoch; `run_left` counts the examples left in the whole run."""

    epoch: int
    epochs: int
    examples: int
    done: int
    risk_sum: float
    risk_steps: int
    run_left: int | None

    def advance(self, examples: int, losses: Sequence[float]) -> None:
        self.done += examples
        self.risk_sum += math.fsum(float(x) for x in losses)
        self.risk_steps += len(losses)
        if self.run_left is not None:
            self.run_left = max(self.run_left - examples, 0)

    @property
    def left(self) -> int:
        return max(self.examples - self.done, 0)

    @property
    def risk(self) -> float:
        return self.risk_sum / self.risk_steps if self.risk_steps else math.nan


class Report:
    """Progress, the epoch table and the files of one run; see the module docstring.

    progress=False shows neither bar nor progress lines; write_files=False writes no files (another
    host of a multi-host job writes them); log_every_seconds=0 shows no progress lines, only the
    table; resume_step is the step of the checkpoint the run resumed from (None: a fresh run).
    """

    def __init__(
        self,
        workdir: str,
        *,
        progress: bool = True,
        log=print,
        write_files: bool = True,
        log_every_seconds: float = 5.0,
        resume_step: int | None = None,
        clock=time.monotonic,
    ):
        self.workdir, self.log, self.write_files = workdir, log, write_files
        self.clock, self.log_every_seconds = clock, log_every_seconds
        tty = sys.stderr.isatty()
        self._bar_wanted = progress and tty
        self._lines_wanted = progress and not tty and log_every_seconds > 0
        self._step = resume_step or 0
        self._timed_examples, self._timed_seconds = 0, 0.0  # chunks without compilation
        self._compile_measured = None
        self._ep: _Epoch | None = None
        self._bar, self._drawn = None, -math.inf
        self._mark = self._last_line = clock()
        self._header_done = self._note_done = False
        self._metrics = self._tb = None
        if write_files:
            self._metrics = _open_metrics(paths.join(workdir, "metrics.jsonl"), resume_step)
            self._tb = _open_tensorboard(paths.join(workdir, "tensorboard"), resume_step)
            # matplotlib takes ~0.5 s to import: do it while the run compiles, not at its end
            threading.Thread(target=_import_plotting, daemon=True).start()

    @property
    def compile_seconds(self) -> float | None:
        """Seconds of the chunks marked compiled: the first of a run includes compilation."""
        return self._compile_measured

    def log_config(self, config_json: str) -> None:
        """The run's configuration as TensorBoard text "config" (a JSON code block)."""
        if self._tb is not None:
            self._tb.add_text("config", f"```json\n{config_json}\n```", self._step)
            self._tb.flush()

    def start_epoch(
        self,
        epoch: int,
        epochs: int,
        examples: int,
        done: int = 0,
        risk_sum: float = 0.0,
        risk_steps: int = 0,
        run_examples_left: int | None = None,
    ) -> None:
        """Epoch `epoch` of `epochs`, of `examples` examples, `done` of them (with `risk_steps`
        step risks summing to `risk_sum`) before a resume; `run_examples_left` counts the examples
        left in the run from here, this epoch's included (None: no run ETA)."""
        self._print_header()
        self._ep = _Epoch(epoch, epochs, examples, done, risk_sum, risk_steps, run_examples_left)
        self._mark = self._last_line = self.clock()
        if self._bar_wanted:
            from tqdm import tqdm

            self._bar = tqdm(
                total=examples,
                initial=done,
                desc=f"epoch {epoch}/{epochs}",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
                bar_format=BAR_FORMAT,
                mininterval=math.inf,  # redrawn by _show_progress, on self.clock
            )
            self._drawn = -math.inf

    def chunk(
        self,
        *,
        step: int,
        epoch: int,
        examples: int,
        losses: Sequence[float],
        learning_rate: float,
        compiled: bool = False,
    ) -> None:
        """A chunk of training steps ending at `step`: `examples` examples, `losses` the step
        risks of its real steps; `compiled` when its time included compilation (then it is left
        out of the rate)."""
        now = self.clock()
        seconds, self._mark = now - self._mark, now
        if compiled:
            self._compile_measured = (self._compile_measured or 0.0) + seconds
        else:
            self._timed_examples += examples
            self._timed_seconds += seconds
        self._step = step
        loss = math.fsum(float(x) for x in losses) / len(losses) if len(losses) else math.nan
        lr = float(learning_rate)
        row = {"kind": "chunk", "step": step, "epoch": epoch, "train/loss": loss}
        # chunk rows reach the file at the epoch's end, a checkpoint or a progress line
        self._write_row({**row, "train/learning_rate": lr}, flush=False)
        self._scalars(step, {"train/loss": loss, "train/learning_rate": lr})
        if self._ep is not None:
            self._ep.advance(examples, losses)
            self._show_progress(now, examples)

    def rate(self) -> float | None:
        """Training examples per second, compilation excluded; None before any timed chunk."""
        if self._timed_examples and self._timed_seconds > 0:
            return self._timed_examples / self._timed_seconds
        return None

    def progress_line(self) -> str:
        """E.g. "epoch 3/15  41% 22,528/54,976 ex  1,234 ex/s  ETA 0:26 (epoch) 3:40 (run)  risk
        0.3121"."""
        ep = self._ep
        percent = 100 * ep.done / ep.examples if ep.examples else 100.0
        head = f"epoch {ep.epoch}/{ep.epochs}  {percent:.0f}% {ep.done:,}/{ep.examples:,} ex"
        return f"{head}  {self._status()}"

    def end_epoch(self, row: dict) -> None:
        """The epoch's row (see the module docstring): the table, metrics.jsonl, TensorBoard."""
        self._close_bar()
        self._print_header()
        row = {**row, "kind": "epoch"}
        row.setdefault("val_accuracy", 1.0 - row["val_error"])
        self._step = row["step"]
        line = table_row(row)
        if not self._note_done and self.compile_seconds is not None:
            line += f"   (first chunk incl. compilation: {self.compile_seconds:.1f} s)"
            self._note_done = True
        self.log(line)
        self._write_row(row)
        self._scalars(row["step"], {tag: row[key] for tag, key in EPOCH_SCALARS.items()})
        self._ep = None

    def finish(self, summary: dict, history: list) -> None:
        """summary.json, the test row and test/* scalars, learning_curves.png, the final line."""
        self._close_bar()
        if self.write_files:
            text = json.dumps(summary, indent=2)
            paths.write_text(paths.join(self.workdir, "summary.json"), text)
            test = {
                "test/loss": summary["test_loss"],
                "test/error": summary["test_error"],
                "test/accuracy": summary.get("test_accuracy", 1.0 - summary["test_error"]),
            }
            self._write_row({"kind": "test", "step": self._step, **test})
            self._scalars(self._step, test)
            plot_learning_curves(history, paths.join(self.workdir, "learning_curves.png"))
            self.log(
                f"test accuracy {100 * test['test/accuracy']:.2f}% (best epoch "
                f"{summary['best_epoch']}, {summary['stopped']}); results in "
                f"{paths.shown(self.workdir)}: summary.json, metrics.jsonl, "
                "learning_curves.png, tensorboard/, checkpoints/"
            )
        self.close()

    def close(self) -> None:
        """Close the bar and the files; safe to call more than once."""
        self._close_bar()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _status(self) -> str:
        ep, rate = self._ep, self.rate()
        if rate is None:
            speed, eta = "-- ex/s", "ETA --"
        else:
            speed, eta = f"{rate:,.0f} ex/s", f"ETA {_duration(ep.left / rate)} (epoch)"
            if ep.run_left is not None:
                eta += f" {_duration(ep.run_left / rate)} (run)"
        risk = f"risk {ep.risk:.4f}" if ep.risk_steps else "risk n/a"
        return f"{speed}  {eta}  {risk}"

    def _show_progress(self, now: float, examples: int) -> None:
        if self._bar is not None:
            self._bar.update(examples)
            if now - self._drawn >= BAR_SECONDS:
                self._drawn = now
                self._bar.set_postfix_str(self._status())  # and redraws
        elif self._lines_wanted and now - self._last_line >= self.log_every_seconds:
            self._last_line = now
            self.log(self.progress_line())
            if self._metrics is not None:
                self._metrics.flush()

    def _print_header(self) -> None:
        if not self._header_done:
            self.log("  ".join(name.rjust(width) for name, _, width, _ in COLUMNS))
            self._header_done = True

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write_row(self, row: dict, flush: bool = True) -> None:
        if self._metrics is not None:
            self._metrics.write(json.dumps(row) + "\n")
            if flush:
                self._metrics.flush()

    def _scalars(self, step: int, values: dict) -> None:
        """TensorBoard scalars; NaN (an empty split) and None are left out."""
        if self._tb is None:
            return
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                self._tb.add_scalar(tag, float(value), step)

    def flush(self) -> None:
        """Everything written so far onto the disk: the trainer calls it before each checkpoint.

        TensorBoard's writer syncs the file at each flush, so per chunk it would cost more than
        a small model's steps; before a checkpoint it keeps a resumed run's events complete.
        """
        if self._metrics is not None:
            self._metrics.flush()
        if self._tb is not None:
            self._tb.flush()


def table_row(row: dict) -> str:
    """An epoch row in the table's columns; NaN and None print as n/a."""
    cells = []
    for _, key, width, spec in COLUMNS:
        value = row.get(key)
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        cells.append(("n/a" if missing else format(value, spec)).rjust(width))
    return "  ".join(cells)


def _duration(seconds: float) -> str:
    """0:26, 3:40, 1:02:03."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _open_metrics(path: str, resume_step: int | None):
    """metrics.jsonl for appending, first rewritten (atomically) to its rows of steps <=
    resume_step, test rows dropped; a fresh run (None) keeps none."""
    lines = []
    if paths.path(path).exists():
        lines = paths.path(path).read_text().splitlines()
    kept = [line for line in lines if _kept(line, resume_step)]
    if paths.is_remote(path):
        return _WholeObject(path, [line + "\n" for line in kept])
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(line + "\n" for line in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return open(path, "a")


class _WholeObject:
    """A remote text file that grows: its lines in memory, the whole object uploaded at each
    flush that follows a write (an object store has no append; one upload replaces an object
    atomically)."""

    def __init__(self, path: str, lines: list[str]):
        self._path, self._lines, self._written = path, lines, True
        self.flush()  # the rows past the resumed step are gone at once, as locally

    def write(self, text: str) -> None:
        self._lines.append(text)
        self._written = True

    def flush(self) -> None:
        if self._written:
            paths.path(self._path).write_text("".join(self._lines))
            self._written = False

    def close(self) -> None:
        self.flush()


def _kept(line: str, resume_step: int | None) -> bool:
    if resume_step is None:
        return False
    try:
        row = json.loads(line)
    except ValueError:  # the last line of a run killed while writing it
        return False
    if not isinstance(row, dict) or row.get("kind") == "test":
        return False  # the test row is written again when the resumed run ends
    step = row.get("step")
    return isinstance(step, int) and step <= resume_step


def _open_tensorboard(logdir: str, resume_step: int | None):
    """An event file whose first event hides the earlier events of steps > resume_step (all of
    them for a fresh run), as SummaryWriter(purge_step=resume_step + 1) does; None without
    tensorboardX."""
    try:
        return _Events(logdir, purge_step=0 if resume_step is None else resume_step + 1)
    except ImportError:  # TensorBoard logs are optional
        return None


class _Events:
    """TensorBoard events written at once, in this thread: tensorboardX's SummaryWriter hands
    them to a writer thread, so its flush does not promise they are on disk when a checkpoint is
    saved next. Each run gets its own file: the writer truncates an existing file of the same
    name, and names differ only by the second the file was opened in.

    A remote logdir gets the file written in a local staging folder and uploaded whole at each
    flush, by the client every other file goes through (tensorboardX's own gs:// writer needs
    google-cloud-storage and its credentials, and uploads again when garbage-collected)."""

    def __init__(self, logdir: str, purge_step: int):
        from tensorboardX import summary
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import event_pb2, summary_pb2

        self._summary, self._pb, self._summary_pb = summary, event_pb2, summary_pb2
        self._logdir, self._stage = logdir, None
        if paths.is_remote(logdir):
            self._stage = tempfile.mkdtemp(prefix="jaxnet-events-")
        else:
            os.makedirs(logdir, exist_ok=True)
        earlier = sum(name.startswith("events.out.tfevents") for name in _names(logdir))
        folder = self._stage or logdir
        self._writer = EventsWriter(os.path.join(folder, "events"), f".{earlier:04d}")
        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self._write(event_pb2.Event(step=purge_step, session_log=start))
        self.flush()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        # the protobuf directly: tensorboardX's summary.scalar converts through numpy first
        scalar = self._summary_pb.Summary.Value(tag=tag, simple_value=value)
        self._write(self._pb.Event(step=step, summary=self._summary_pb.Summary(value=[scalar])))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._write(self._pb.Event(step=step, summary=self._summary.text(tag, text)))

    def _write(self, event) -> None:
        event.wall_time = time.time()
        self._writer.write_event(event)

    def flush(self) -> None:
        self._writer.flush()
        self._upload()

    def close(self) -> None:
        self._writer.close()
        self._upload()
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None

    def _upload(self) -> None:
        """The staged event file, whole, over its remote copy."""
        if self._stage is None:
            return
        for name in os.listdir(self._stage):  # the one file the writer made
            with open(os.path.join(self._stage, name), "rb") as f:
                paths.path(self._logdir).joinpath(name).write_bytes(f.read())


def _names(folder: str) -> list[str]:
    """The names in `folder`; none if it does not exist (a remote prefix not yet written)."""
    try:
        return [p.name for p in paths.path(folder).iterdir()]
    except FileNotFoundError:
        return []


def _import_plotting() -> None:
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401


def plot_learning_curves(history: list, path: str) -> None:
    """Training risk and validation loss, and the validation zero-one error with the best epoch
    marked, against epoch; the validation curves are left out where they are all NaN (an empty
    validation split)."""
    if not history:
        return
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(10, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.96, wspace=0.22)  # tight_layout
    # would compute these margins at a quarter of the plot's cost
    ax_risk, ax_err = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    _curve(ax_risk, epochs, [r["train_risk"] for r in history], label="training risk")
    _curve(ax_risk, epochs, [r["val_loss"] for r in history], label="validation loss")
    ax_risk.set(xlabel="epoch", ylabel="loss")
    errors = [100 * r["val_error"] for r in history]
    label = "validation zero-one error"
    if _curve(ax_err, epochs, errors, color="tab:red", label=label):
        best = min((e, i) for i, e in enumerate(errors) if not math.isnan(e))[1]
        ax_err.axvline(
            epochs[best], color="gray", linestyle="--", label=f"best: epoch {epochs[best]}"
        )
    else:
        ax_err.text(0.5, 0.5, "no validation data", ha="center", transform=ax_err.transAxes)
    ax_err.set(xlabel="epoch", ylabel="error (%)")
    for ax in (ax_risk, ax_err):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if paths.is_remote(path):  # matplotlib writes local files only
        with paths.path(path).open("wb") as f:
            fig.savefig(f, format=os.path.splitext(path)[1][1:] or "png", dpi=100)
    else:
        fig.savefig(path, dpi=100)


def _curve(ax, epochs: list, values: list, **style) -> bool:
    """Plot values against epoch unless they are all NaN; whether it was plotted."""
    if all(math.isnan(v) for v in values):
        return False
    ax.plot(epochs, values, marker="o", **style)
    return True
