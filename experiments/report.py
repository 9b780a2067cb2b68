"""What every experiment writes.

PNG figures, and its numbers as JSON and as a Markdown table beside the notes' numbers.
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")  # files only: experiments run on headless machines and in tests

import matplotlib.pyplot as plt  # noqa: E402


def figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.8):
    """A new figure with a grid of axes, sized per panel."""
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)


def save_figure(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(rows: list[dict]) -> str:
    """Rows of equal keys as a Markdown table; floats to 4 significant figures."""
    if not rows:
        return ""
    keys = list(rows[0])
    cell = lambda v: f"{v + 0.0:.4g}" if isinstance(v, float) else str(v)  # noqa: E731  (+ 0.0: no "-0")
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    out_dir: str,
    name: str,
    title: str,
    rows: list[dict],
    figures: list[str],
    extra: dict | None = None,
    more_tables: dict | None = None,
) -> dict:
    """Write {name}.json and {name}.md in out_dir.

    The JSON has the rows, more tables, figures and extra; the Markdown the title, the tables and
    links to the figures.
    """
    more_tables = more_tables or {}
    result = {
        "name": name,
        "title": title,
        "rows": rows,
        "more_tables": more_tables,
        "figures": [os.path.basename(f) for f in figures],
        **(extra or {}),
    }
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    md = [f"# {title}", "", markdown_table(rows), ""]
    for caption, table in more_tables.items():
        md += [f"## {caption}", "", markdown_table(table), ""]
    md += [f"![{os.path.basename(f)}]({os.path.basename(f)})" for f in figures]
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return result


def read_history(workdir: str) -> list[dict]:
    """The per-epoch rows a `train.py` run wrote to WORKDIR/metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [row for row in map(json.loads, f) if "val_error" in row]
