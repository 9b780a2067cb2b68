"""Results as text: an aligned table, or rows printed one by one as checks finish."""

from __future__ import annotations

HEADER = ("check", "shapes", "vs jax autodiff", "vs finite diff", "result")
# Streamed rows cannot be measured in advance: the built-in suite's widest names fit.
STREAM_WIDTHS = (72, 40, 15, 14, 6)


def _cells(result):
    fmt = lambda e: "n/a" if e is None or e != e else f"{e:.1e}"
    verdict = "pass" if result.passed else "FAIL"
    if result.passed and result.message:
        verdict = "pass*"  # a kink or a note, printed below the table
    return (
        result.name,
        result.shapes,
        fmt(result.error_vs_autodiff),
        fmt(result.error_vs_finite_differences),
        verdict,
    )


def _line(row, widths):
    return "  ".join(
        str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))
    )


def header(widths=STREAM_WIDTHS) -> str:
    """The header and its rule."""
    return "\n".join([_line(HEADER, widths), "  ".join("-" * w for w in widths)])


def row(result, widths=STREAM_WIDTHS) -> str:
    """One result as a table row."""
    return _line(_cells(result), widths)


def format_table(results) -> str:
    """The results as an aligned text table."""
    rows = [_cells(r) for r in results]
    widths = [max(len(str(r[i])) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    return "\n".join([header(widths), *(_line(r, widths) for r in rows)])


def notes(results) -> str:
    """The messages of failed checks and the kinks of passed ones, one per line."""
    return "\n".join(f"{r.name}: {r.message}" for r in results if r.message)
