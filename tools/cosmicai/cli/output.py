"""Plain-text tables and progress lines for the CLI (figures also come as JSON with --json)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from cosmicai.runner import Progress

Column = tuple[str, str, str]
"""(header, key, format spec), e.g. ("samples/s", "samples_per_s", ".1f")."""

RANK_COLUMNS: Sequence[Column] = (
    ("rank", "rank", "d"),
    ("samples", "samples", "d"),
    ("wall s", "wall_s", ".2f"),
    ("compute s", "compute_s", ".2f"),
    ("samples/s", "samples_per_s", ".1f"),
    ("peak RSS MB", "peak_rss_mb", ".0f"),
    ("request id", "request_id", "s"),
)


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    cells = [[header for header, _, _ in columns]]
    cells += [[_cell(row.get(key), spec) for _, key, spec in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def summary_text(summary: dict[str, Any]) -> str:
    """The per-rank table and the aggregate figures of a run summary."""
    lines = [table(summary.get("ranks") or [], RANK_COLUMNS), ""]
    totals = summary.get("totals") or {}
    samples = "unknown" if summary["samples"] is None else summary["samples"]
    lines.append(
        f"run {summary['run_id']}: {summary['status'].upper()} — {summary['ranks_succeeded']}/"
        f"{summary['world_size']} ranks, {samples} samples"
        + (
            f", {totals['samples_per_s']:.1f} samples/s overall"
            if totals.get("samples_per_s")
            else ""
        )
    )
    if summary.get("status") != "succeeded":
        lines.append(f"problems: {summary['message']}")
    metrics = summary.get("metrics")
    if metrics and "error" in metrics:
        lines.append(f"redshift metrics unavailable: {metrics['error']}")
    elif metrics:
        untrained = "" if summary.get("model_trained") else "  [UNTRAINED model: random weights]"
        lines.append(
            f"redshift metrics: MAE {metrics['mae']:.4f}  MSE {metrics['mse']:.4f}  bias "
            f"{metrics['bias']:+.4f}  NMAD {metrics['precision_nmad']:.4f}  "
            f"R² {metrics['r2']:.3f}  outliers {metrics['outlier_fraction']:.1%}{untrained}"
        )
    return "\n".join(lines)


class ProgressPrinter:
    """One status line per change on stderr (rewritten in place on a terminal)."""

    def __init__(self) -> None:
        self._last = ""
        self._tty = sys.stderr.isatty()

    def __call__(self, progress: Progress) -> None:
        total = f"/{progress.world_size}" if progress.world_size else ""
        line = (
            f"{progress.status.lower():>9}  ranks done {progress.ranks_done}{total}"
            f"  failed {progress.ranks_failed}  {progress.elapsed_s:5.0f} s"
        )
        if line[:-8] == self._last[:-8] and not self._tty:
            return
        self._last = line
        print(
            ("\r" if self._tty else "") + line,
            end="" if self._tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self._tty and self._last:
            print(file=sys.stderr)
