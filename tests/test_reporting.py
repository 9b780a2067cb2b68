"""The run report: progress lines and bar, the epoch table, metrics.jsonl, TensorBoard, resumes."""

import io
import json
import os
import re
import struct
import sys

import pytest

from jaxnet.training.reporting import Report, plot_learning_curves

NAN = float("nan")
LINE = re.compile(
    r"epoch (\d+)/(\d+)  (\d+)% ([\d,]+)/([\d,]+) ex  ([\d,]+|--) ex/s  "
    r"ETA (?:(\S+) \(epoch\)(?: (\S+) \(run\))?|--)  risk (\S+)$"
)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def no_tty(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())


def _seconds(text):
    """ "1:02:03" or "3:40" as seconds."""
    total = 0
    for part in text.split(":"):
        total = 60 * total + int(part)
    return total


def _progress_lines(lines):
    return [LINE.match(line) for line in lines if re.match(r"epoch \d+/\d+ ", line)]


def _epoch_row(epoch, step, val_error=0.025, **extra):
    return {
        "epoch": epoch,
        "step": step,
        "train_risk": 0.5 / epoch,
        "val_loss": 0.3,
        "val_error": val_error,
        "learning_rate": 0.1,
        "momentum": 0.9,
        "seconds": 12.5,
        **extra,
    }


def _three_chunks(report, clock):
    """A compiled chunk of 30 s, then 200 examples in 2 s and 200 in 3 s: 80 ex/s."""
    report.start_epoch(1, 2, 1000, run_examples_left=2000)
    for seconds, examples, compiled, step in (
        (30, 100, True, 1),
        (2, 200, False, 2),
        (3, 200, False, 3),
    ):
        clock.now += seconds
        losses = [1.0, 0.5] if step == 1 else [0.25, 0.25]
        report.chunk(
            step=step,
            epoch=1,
            examples=examples,
            losses=losses,
            learning_rate=0.1,
            compiled=compiled,
        )


def test_progress_lines_without_a_terminal_leave_compilation_out_of_the_rate(tmp_path, no_tty):
    clock, lines = FakeClock(), []
    report = Report(str(tmp_path), log=lines.append, clock=clock, write_files=False)
    _three_chunks(report, clock)
    first, second = _progress_lines(lines)
    # After the compiled chunk (30 s >= 5 s) a line, but no rate yet; the 2 s chunk makes none.
    assert first is not None and first.group(6) == "--" and first.group(3) == "10"
    assert second is not None, lines
    epoch, epochs, percent, done, total, rate, eta_epoch, eta_run, risk = second.groups()
    assert (int(epoch), int(epochs), int(percent)) == (1, 2, 50)
    assert (done, total) == ("500", "1,000")
    assert int(rate.replace(",", "")) == 400 / 5  # 400 examples in 5 s; the 30 s left out
    assert _seconds(eta_epoch) == round(500 / 80) and _seconds(eta_run) == round(1500 / 80)
    assert float(risk) == pytest.approx((1.0 + 0.5 + 4 * 0.25) / 6, abs=1e-4)
    assert report.compile_seconds == 30
    report.close()


def test_progress_line_formats_hours_and_a_resumed_epoch(tmp_path, no_tty):
    clock, lines = FakeClock(), []
    report = Report(str(tmp_path), log=lines.append, clock=clock, write_files=False)
    report.start_epoch(
        3, 15, 54_976, done=20_000, risk_sum=3.0, risk_steps=10, run_examples_left=800_000
    )
    clock.now += 10
    report.chunk(step=99, epoch=3, examples=2_000, losses=[0.2] * 10, learning_rate=0.1)
    (match,) = _progress_lines(lines)
    assert match.group(4) == "22,000" and match.group(6) == "200"  # 2,000 ex in 10 s
    assert match.group(7) == "2:45" and match.group(8) == "1:06:30"  # 32,976 and 798,000 at 200/s
    assert float(match.group(9)) == pytest.approx(5.0 / 20)


@pytest.mark.parametrize("kwargs", [{"log_every_seconds": 0}, {"progress": False}])
def test_no_progress_lines_when_switched_off(kwargs, tmp_path, no_tty):
    clock, lines = FakeClock(), []
    report = Report(str(tmp_path), log=lines.append, clock=clock, write_files=False, **kwargs)
    _three_chunks(report, clock)
    report.end_epoch(_epoch_row(1, 3))
    assert not _progress_lines(lines) and len(lines) == 2  # the header and the row


def test_a_terminal_gets_a_bar_with_the_same_rate_and_no_lines(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    clock, lines = FakeClock(), []
    report = Report(str(tmp_path), log=lines.append, clock=clock, write_files=False)
    _three_chunks(report, clock)
    report.close()
    assert not _progress_lines(lines)
    bar = terminal.getvalue()
    assert "epoch 1/2" in bar and "80 ex/s" in bar and "risk 0.4167" in bar


def test_the_table_has_an_accuracy_column_and_prints_nan_as_n_a(tmp_path):
    lines = []
    report = Report(str(tmp_path), log=lines.append, progress=False, write_files=False)
    report.start_epoch(1, 2, 100)
    report.end_epoch(_epoch_row(1, 4))
    report.end_epoch(_epoch_row(2, 8, val_error=NAN, val_loss=NAN))
    header, first, second = lines
    assert (
        header.split() == "epoch train risk val loss val error val acc lr momentum seconds".split()
    )
    assert first.split()[3:5] == ["2.50%", "97.50%"]
    assert second.split()[2:5] == ["n/a"] * 3
    assert all(len(line) == len(header) for line in lines)


def _run(workdir, steps, *, resume_step=None, finish=True):
    """Chunks of 2 steps ending at `steps`, 2 chunks an epoch (epochs end at multiples of 4);
    returns the epoch rows."""
    clock, history = FakeClock(), []
    report = Report(
        str(workdir), progress=False, log=lambda s: None, resume_step=resume_step, clock=clock
    )
    report.log_config(json.dumps({"epochs": 2}))
    for step in steps:
        epoch = (step - 1) // 4 + 1
        if step % 4 == 2:
            report.start_epoch(epoch, 2, 64)
        clock.now += 1.0
        report.chunk(
            step=step,
            epoch=epoch,
            examples=32,
            losses=[1.0 / step],
            learning_rate=0.1,
            compiled=step == steps[0],
        )
        if step % 4 == 0:
            history.append(_epoch_row(epoch, step))
            report.end_epoch(history[-1])
    if finish:
        summary = {
            "test_loss": 0.2,
            "test_error": 0.05,
            "test_accuracy": 0.95,
            "best_epoch": 1,
            "stopped": "completed all epochs",
        }
        report.finish(summary, history)
    else:
        report.close()
    return history


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_metrics_jsonl_has_chunk_epoch_and_test_rows(tmp_path):
    _run(tmp_path, [2, 4, 6, 8])
    rows = _rows(tmp_path)
    assert [r["kind"] for r in rows] == ["chunk", "chunk", "epoch"] * 2 + ["test"]
    chunk_keys = {"kind", "step", "epoch", "train/loss", "train/learning_rate"}
    assert all(set(r) == chunk_keys for r in rows if r["kind"] == "chunk")
    epoch_keys = {
        "kind",
        "epoch",
        "step",
        "train_risk",
        "val_loss",
        "val_error",
        "val_accuracy",
        "learning_rate",
        "momentum",
        "seconds",
    }
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert all(set(r) == epoch_keys for r in epochs) and epochs[0]["val_accuracy"] == 0.975
    assert rows[-1] == {
        "kind": "test",
        "step": 8,
        "test/loss": 0.2,
        "test/error": 0.05,
        "test/accuracy": 0.95,
    }
    assert rows[0]["train/loss"] == 0.5 and rows[0]["train/learning_rate"] == 0.1
    # experiments/report.py's read_history keeps the rows with "val_error": the epoch rows
    assert [r["epoch"] for r in rows if "val_error" in r] == [1, 2]
    for name in ("summary.json", "learning_curves.png"):
        assert (tmp_path / name).exists()


def _events(logdir):
    """{tag: [(step, value)]} from the event files, as TensorBoard reads them: files in name
    order, a SessionLog START at step S hiding the earlier events of steps >= S."""
    from tensorboardX.proto import event_pb2

    events = []
    for name in sorted(os.listdir(logdir)):
        data, pos = (logdir / name).read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            if event.session_log.status == event_pb2.SessionLog.START:
                events = [e for e in events if e.step < event.step]
            elif event.HasField("summary"):
                events.append(event)
    tags = {}
    for event in events:
        for v in event.summary.value:
            value = v.tensor.string_val[0].decode() if v.tensor.string_val else v.simple_value
            tags.setdefault(v.tag, []).append((event.step, value))
    return tags


def test_tensorboard_has_the_grouped_tags_and_the_config(tmp_path):
    _run(tmp_path, [2, 4, 6, 8])
    tags = _events(tmp_path / "tensorboard")
    assert [step for step, _ in tags["train/loss"]] == [2, 4, 6, 8]
    assert tags["train/loss"][0][1] == pytest.approx(0.5)
    assert [step for step, _ in tags["train/learning_rate"]] == [2, 4, 6, 8]
    for tag in ("train/risk", "train/momentum", "val/loss", "val/error", "val/accuracy"):
        assert [step for step, _ in tags[tag]] == [4, 8], tag
    assert tags["val/accuracy"][0][1] == pytest.approx(0.975)
    for tag, value in (("test/loss", 0.2), ("test/error", 0.05), ("test/accuracy", 0.95)):
        assert tags[tag] == [(8, pytest.approx(value))]
    ((_, config),) = tags["config/text_summary"]
    assert config == '```json\n{"epochs": 2}\n```'


def test_a_resumed_run_keeps_each_step_once(tmp_path):
    _run(tmp_path, [2, 4, 6], finish=False)  # killed after step 6; the last checkpoint is step 4
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "chu')  # a row cut short by the kill
    report = Report(str(tmp_path), progress=False, resume_step=4)
    report.close()
    assert [r["step"] for r in _rows(tmp_path)] == [2, 4, 4]
    _run(tmp_path, [6, 8], resume_step=4)
    rows = _rows(tmp_path)
    assert [(r["kind"], r["step"]) for r in rows] == [
        ("chunk", 2),
        ("chunk", 4),
        ("epoch", 4),
        ("chunk", 6),
        ("chunk", 8),
        ("epoch", 8),
        ("test", 8),
    ]
    tags = _events(tmp_path / "tensorboard")
    assert [step for step, _ in tags["train/loss"]] == [2, 4, 6, 8]
    assert [step for step, _ in tags["val/error"]] == [4, 8]
    # Re-running a finished workdir resumes from its last step: the test row is not repeated.
    _run(tmp_path, [], resume_step=8)
    assert [(r["kind"], r["step"]) for r in _rows(tmp_path)] == [
        (r["kind"], r["step"]) for r in rows
    ]


def test_a_fresh_run_starts_the_files_over(tmp_path):
    _run(tmp_path, [2, 4])
    _run(tmp_path, [2, 4])
    assert [r["step"] for r in _rows(tmp_path)] == [2, 4, 4, 4]
    assert [step for step, _ in _events(tmp_path / "tensorboard")["train/loss"]] == [2, 4]


def test_learning_curves_without_validation_data(tmp_path):
    history = [_epoch_row(e, 4 * e, val_error=NAN, val_loss=NAN) for e in (1, 2, 3)]
    plot_learning_curves(history, str(tmp_path / "nan.png"))
    assert (tmp_path / "nan.png").stat().st_size > 0
    history[1]["val_error"] = 0.1  # one finite error among NaN ones: its epoch is the best
    plot_learning_curves(history, str(tmp_path / "partial.png"))
    plot_learning_curves([_epoch_row(e, 4 * e) for e in (1, 2)], str(tmp_path / "full.png"))
    assert all((tmp_path / n).exists() for n in ("partial.png", "full.png"))
