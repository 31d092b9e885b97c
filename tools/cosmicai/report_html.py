"""One self-contained HTML report of a run: plots inline (PNG data URIs), every text escaped.

Sections (each an element with the id in brackets): status and headline figures [status],
per-rank timeline with cold starts and retries [timeline], samples/s and memory per rank
[ranks], cost breakdown [cost], predicted vs true redshift with residuals and metrics
[predictions], every invocation's REPORT figures [invocations], and the payload [payload].
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import Any

from cosmicai.run_cost import RunCost
from cosmicai.run_metrics import Invocation, RunData

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
img { max-width: 100%; }
.badge { display: inline-block; padding: 0.2em 0.7em; border-radius: 0.3em; color: #fff; }
.succeeded { background: #2e7d32; } .partial { background: #ef6c00; }
.failed, .aborted, .timed_out { background: #c62828; } .running { background: #1565c0; }
.warning { background: #fff3cd; border: 2px solid #c62828; padding: 0.6em 1em;
  font-weight: bold; color: #c62828; font-size: 1.2em; }
.note { color: #555; }
"""
_OK, _FAILED, _INIT = "#2e7d32", "#c62828", "#90a4ae"


def _png(figure: Any) -> str:
    """An <img> holding the figure as a PNG data URI (and the figure closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _table(header: list[str], rows: list[list[Any]], text_columns: int = 1) -> str:
    """An HTML table; the first `text_columns` columns are left-aligned."""

    def cell(tag: str, i: int, value: Any) -> str:
        css = ' class="text"' if i < text_columns else ""
        return f"<{tag}{css}>{escape(_fmt(value))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _row_label(inv: Invocation) -> str:
    return f"rank {inv.rank}" if inv.rank is not None else inv.role


def _start_s(inv: Invocation) -> float:
    """When the handler started: the START event, or the REPORT's time less its duration."""
    return inv.start_s if inv.start_s is not None else inv.end_s - inv.report.duration_ms / 1e3


def timeline_figure(data: RunData) -> Any:
    """One row per rank (plus init and summarize): each attempt from start to end, its Init
    phase hatched before it on cold starts, failed attempts red."""
    plt = _pyplot()
    labels = ["init"]
    labels += [f"rank {r}" for r in range(data.world_size or 0)]
    labels += sorted({_row_label(i) for i in data.invocations} - {*labels, "summarize"})
    labels.append("summarize")
    row = {label: index for index, label in enumerate(labels)}
    t0 = min(_start_s(i) - (i.report.init_duration_ms or 0) / 1e3 for i in data.invocations)
    figure, axes = plt.subplots(figsize=(11, min(1.2 + 0.35 * len(labels), 18)))
    for inv in data.invocations:
        y = row[_row_label(inv)]
        start, end = _start_s(inv) - t0, inv.end_s - t0
        color = _FAILED if data.attempt_failed(inv) else _OK
        axes.barh(y, end - start, left=start, height=0.6, color=color)
        if inv.cold_start:
            init = (inv.report.init_duration_ms or 0) / 1e3
            axes.barh(y, init, left=start - init, height=0.6, color=_INIT, hatch="///")
        if inv.attempt > 1 or inv.execution > 1:
            where = f" (execution {inv.execution})" if inv.execution > 1 else ""
            axes.text(end, y, f" attempt {inv.attempt}{where}", va="center", fontsize=8)
    step = max(1, len(labels) // 50)  # at most about 50 row labels, whatever the world size
    axes.set_yticks(range(0, len(labels), step), labels[::step], fontsize=8 if step == 1 else 6)
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the run's first invocation began")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=_OK),
        plt.Rectangle((0, 0), 1, 1, color=_FAILED),
        plt.Rectangle((0, 0), 1, 1, color=_INIT, hatch="///"),
    ]
    axes.legend(
        handles,
        ["succeeded", "failed (retried or final)", "cold start: Init phase"],
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=3,
    )
    axes.grid(axis="x", alpha=0.3)
    return figure


def ranks_figure(data: RunData) -> Any:
    """Samples/s per rank, and memory used (each attempt's REPORT) vs the configured size."""
    plt = _pyplot()
    figure, (speed, memory) = plt.subplots(1, 2, figsize=(11, 3.6))
    ranks = [r for r in data.ranks if r.get("samples_per_s") is not None]
    if ranks:
        speed.bar([str(r["rank"]) for r in ranks], [r["samples_per_s"] for r in ranks], color=_OK)
        speed.set_xlabel("rank")
        speed.set_ylabel("samples/s")
        speed.set_title("throughput per rank")
    else:
        speed.axis("off")
        speed.text(0.5, 0.5, "no samples/s recorded\n(script mode)", ha="center", va="center")
    executor = sorted(data.role("executor"), key=lambda inv: (inv.rank or 0, inv.attempt))
    xs = [f"{inv.rank}#{inv.attempt}" for inv in executor]
    memory.bar(
        xs,
        [inv.report.memory_size_mb for inv in executor],
        color="#d0d7de",
        label="configured (Memory Size)",
    )
    memory.bar(
        xs,
        [inv.report.max_memory_used_mb for inv in executor],
        width=0.5,
        color="#1565c0",
        label="used (Max Memory Used)",
    )
    memory.set_xlabel("rank#attempt")
    memory.set_ylabel("MB")
    memory.set_title("Max Memory Used vs Memory Size")
    if executor:
        memory.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
        if len(xs) > 16:
            memory.tick_params(axis="x", labelrotation=90, labelsize=6)
    figure.tight_layout()
    return figure


def cost_figure(cost: RunCost) -> Any:
    plt = _pyplot()
    items = sorted(cost.breakdown.items, key=lambda item: item.cost_usd)
    figure, axes = plt.subplots(figsize=(11, 0.8 + 0.32 * len(items)))
    axes.barh([item.label for item in items], [item.cost_usd for item in items], color="#6a1b9a")
    axes.set_xlabel("USD")
    axes.set_title(f"total ${cost.total_usd:.6f}")
    return figure


def predictions_figure(predicted: list[float], true: list[float], untrained: bool) -> Any:
    """Predicted vs true redshift with the y = x line, and the histogram of residuals."""
    plt = _pyplot()
    figure, (scatter, histogram) = plt.subplots(1, 2, figsize=(11, 4.2))
    scatter.scatter(true, predicted, s=6, alpha=0.6)
    low, high = min(true + predicted), max(true + predicted)
    scatter.plot([low, high], [low, high], color=_FAILED, label="y = x")
    scatter.set_xlabel("true redshift")
    scatter.set_ylabel("predicted redshift")
    scatter.legend()
    title = "predicted vs true" + (" (UNTRAINED model)" if untrained else "")
    scatter.set_title(title)
    histogram.hist([p - t for p, t in zip(predicted, true, strict=True)], bins=40, color="#1565c0")
    histogram.set_xlabel("residual: predicted - true")
    histogram.set_ylabel("samples")
    figure.tight_layout()
    return figure


def _status_section(data: RunData, cost: RunCost | None) -> str:
    overview = data.overview()
    status = data.status
    facts = [
        ["run id", data.run_id],
        ["where", data.kind],
        ["run status", status],
        ["execution", data.execution.get("status")],
        ["message", data.message],
        ["started", overview["started"]],
        ["duration (s)", overview["duration_s"]],
        ["world size", overview["world_size"]],
        ["samples", overview["samples"]],
        ["samples/s", overview["samples_per_s"]],
        ["invocations (cold starts)", f"{overview['invocations']} ({overview['cold_starts']})"],
        ["failed attempts", overview["failed_attempts"]],
        ["cost (USD)", None if cost is None else f"{cost.total_usd:.6f}"],
    ]
    problems = "".join(f"<li>{escape(p)}</li>" for p in data.problems)
    return (
        f'<section id="status"><h1>CosmicAI run {escape(data.run_id)} '
        f'<span class="badge {escape(status)}">{escape(status.upper())}</span></h1>'
        + _untrained_warning(data)
        + _table(["figure", "value"], facts, text_columns=2)
        + (f"<p>Collection problems:</p><ul>{problems}</ul>" if problems else "")
        + "</section>"
    )


def _untrained_warning(data: RunData) -> str:
    if (data.summary or {}).get("model_trained") is False:
        return (
            '<p class="warning">UNTRAINED model: the predictions come from random weights; '
            'the redshift metrics say nothing about AstroMAE. Set "model" in the payload to a '
            "trained checkpoint.</p>"
        )
    return ""


def _timeline_section(data: RunData) -> str:
    body = (
        _png(timeline_figure(data))
        if data.invocations
        else '<p class="note">No invocations were found in the logs.</p>'
    )
    return f'<section id="timeline"><h2>Timeline</h2>{body}</section>'


def _ranks_section(data: RunData) -> str:
    columns = ["rank", "samples", "wall_s", "load_s", "compute_s", "samples_per_s", "peak_rss_mb"]
    rows = [[r.get(c) for c in columns] for r in data.ranks]
    failures = [
        [rank, (f or {}).get("Error"), str((f or {}).get("Cause"))[:300]]
        for rank, f in sorted(data.failures.items())
    ]
    return (
        '<section id="ranks"><h2>Ranks</h2>'
        + (_png(ranks_figure(data)) if data.invocations or data.ranks else "")
        + _table(columns, rows, text_columns=0)
        + (_table(["failed rank", "error", "cause"], failures, 0) if failures else "")
        + "</section>"
    )


def _cost_section(cost: RunCost | None) -> str:
    if cost is None:
        return '<section id="cost"><h2>Cost</h2><p class="note">unavailable</p></section>'
    rows = [
        [item.label, item.quantity, item.unit, item.unit_price_usd, f"{item.cost_usd:.8f}"]
        for item in cost.breakdown.items
    ]
    rows.append(["total", None, None, None, f"{cost.total_usd:.8f}"])
    transitions = [[name, count] for name, count in cost.transitions.items()]
    s3 = [[c.step, c.puts, c.gets] for c in cost.s3]
    return (
        '<section id="cost"><h2>Cost (what AWS bills for this run)</h2>'
        + _png(cost_figure(cost))
        + _table(["item", "quantity", "unit", "unit price USD", "cost USD"], rows, 1)
        + f'<p class="note">Prices: {escape(cost.breakdown.region)}, table version '
        f"{escape(cost.breakdown.prices_version)}; Distributed Map children: "
        f"{escape(cost.usage.workflow.upper())}.</p>"
        + _table(["state transitions", "count"], transitions)
        + _table(["S3 requests by step", "PUT/LIST", "GET/HEAD"], s3)
        + "</section>"
    )


def _predictions_section(data: RunData) -> str:
    predicted = [float(p) for r in data.ranks for p in r.get("predictions") or []]
    true = [float(t) for r in data.ranks for t in r.get("true_redshift") or []]
    summary = data.summary or {}
    if not predicted or len(true) != len(predicted):
        body = '<p class="note">No labelled predictions in this run (script mode?).</p>'
    else:
        untrained = summary.get("model_trained") is False
        metrics = summary.get("metrics") or {}
        body = (
            _untrained_warning(data)
            + _png(predictions_figure(predicted, true, untrained))
            + _table(["metric", "value"], [[k, v] for k, v in metrics.items()])
            + f'<p class="note">Model: {escape(str(summary.get("model_source")))}</p>'
        )
    return f'<section id="predictions"><h2>Predicted vs true redshift</h2>{body}</section>'


def _invocations_section(data: RunData) -> str:
    header = [
        "role",
        "rank",
        "attempt",
        "execution",
        "outcome",
        "request id",
        "duration ms",
        "billed ms",
        "memory MB",
        "max used MB",
        "init ms",
        "status",
    ]
    rows = [
        [
            inv.role,
            inv.rank,
            inv.attempt,
            inv.execution,
            "failed" if data.attempt_failed(inv) else "ok",
            inv.request_id,
            inv.report.duration_ms,
            inv.report.billed_duration_ms,
            inv.report.memory_size_mb,
            inv.report.max_memory_used_mb,
            inv.report.init_duration_ms,
            inv.report.status,
        ]
        for inv in data.invocations
    ]
    return (
        '<section id="invocations"><h2>Invocations (REPORT lines)</h2>'
        + _table(header, rows, text_columns=1)
        + "</section>"
    )


def _payload_section(data: RunData) -> str:
    text = json.dumps(data.payload, indent=2) if data.payload else "(no payload.json found)"
    return f'<section id="payload"><h2>Payload</h2><pre>{escape(text)}</pre></section>'


def render_html(data: RunData, cost: RunCost | None) -> str:
    """The whole report as one HTML document."""
    sections = [
        _status_section(data, cost),
        _timeline_section(data),
        _ranks_section(data),
        _cost_section(cost),
        _predictions_section(data),
        _invocations_section(data),
        _payload_section(data),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>CosmicAI run {escape(data.run_id)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )


def write_html(data: RunData, cost: RunCost | None, path: Path) -> Path:
    """Write the report to `path` (folders created); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(data, cost), encoding="utf-8")
    return path
