"""`cosmicai report | runs | compare | tune`: per-run Lambda metrics, honest cost, HTML report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from cosmicai.cli.argtypes import positive_int
from cosmicai.cli.argtypes import run_id as run_id_arg
from cosmicai.cli.cost import format_table
from cosmicai.cli.output import print_json, summary_text, table
from cosmicai.cli.target_flags import add_target_flags, aws_target
from cosmicai.cost import PRICES_ENV, WORKFLOWS, load_prices
from cosmicai.errors import CosmicAIError
from cosmicai.payload import load_payload
from cosmicai.reference_results import PROFILER_MEMORY_NOTE
from cosmicai.report_html import write_html
from cosmicai.run_cost import RunCost, cost_of_run
from cosmicai.run_metrics import RunData, load_run
from cosmicai.run_store import RunStore, open_store
from cosmicai.tune import (
    ARCH_NOTE,
    LOCAL_NOTE,
    TuneResult,
    parse_batch_sizes,
    parse_memory,
    plot_sweep,
    recommend,
    sweep_aws,
    sweep_local,
)

INVOCATION_COLUMNS = (
    ("role", "role", "s"),
    ("rank", "rank", "d"),
    ("attempt", "attempt", "d"),
    ("outcome", "outcome", "s"),
    ("cold", "cold_start", "s"),
    ("duration ms", "duration_ms", ".2f"),
    ("billed ms", "billed_duration_ms", "d"),
    ("memory MB", "memory_size_mb", "d"),
    ("max used MB", "max_memory_used_mb", "d"),
    ("init ms", "init_duration_ms", ".2f"),
)
RUNS_COLUMNS = (
    ("run id", "run_id", "s"),
    ("started", "started", "s"),
    ("status", "status", "s"),
    ("world size", "world_size", "d"),
    ("samples", "samples", "d"),
    ("duration s", "duration_s", ".1f"),
    ("cost USD", "cost_usd", ".6f"),
)
COMPARE_ROWS = (
    ("status", "status", "s"),
    ("world size", "world_size", "d"),
    ("samples", "samples", "d"),
    ("batch size", "batch_size", "d"),
    ("wall s", "duration_s", ".2f"),
    ("samples/s", "samples_per_s", ".1f"),
    ("executor memory MB", "executor_memory_mb", "d"),
    ("executor max used MB", "executor_max_used_mb", "d"),
    ("invocations", "invocations", "d"),
    ("cold starts", "cold_starts", "d"),
    ("failed attempts", "failed_attempts", "d"),
    ("cost USD", "cost_usd", ".6f"),
    ("model trained", "model_trained", "s"),
    ("max sample_persec (a rank's)", "sample_persec_max", ".1f"),
    ("max total_cpu_time (seconds)", "cpu_time_s_max", ".2f"),
    ("max total_cpu_memory (MB)", "cpu_memory_mb_max", ".1f"),
    ("  measured as", "cpu_memory_measure", "s"),
)
IMPORTED_COLUMNS = (
    ("rank", "rank", "d"),
    ("samples", "samples", "d"),
    ("total_cpu_time (seconds)", "total_cpu_time (seconds)", ".2f"),
    ("execution_time (seconds/batch)", "execution_time (seconds/batch)", ".3f"),
    ("num_batches", "num_batches", "d"),
    ("batch_size", "batch_size", "d"),
    ("sample_persec", "sample_persec", ".1f"),
    ("throughput_bps", "throughput_bps", ".0f"),
    ("total_cpu_memory (MB) [profiler]", "total_cpu_memory (MB)", ".1f"),
    ("device", "device", "s"),
)
IMPORTED_NOTES = (
    PROFILER_MEMORY_NOTE,
    "total_cpu_time (seconds) is the profiler's CPU time summed over operators, not wall-clock "
    "time; execution_time (seconds/batch) is that time per batch; sample_persec and "
    "throughput_bps (bits of images and magnitudes per second) are per second of it.",
    "An imported run has no REPORT lines: no billed duration, memory used or cost.",
)
METRIC_NAMES = ("mae", "mse", "bias", "precision_nmad", "r2", "outlier_fraction")
TUNE_COLUMNS = (
    ("memory MB", "memory_mb", "d"),
    ("batch", "batch_size", "d"),
    ("status", "status", "s"),
    ("wall s", "duration_s", ".2f"),
    ("samples/s", "samples_per_s", ".1f"),
    ("cost USD", "cost_usd", ".6f"),
    ("cost x86_64", "cost_x86_64_usd", ".6f"),
    ("cost arm64", "cost_arm64_usd", ".6f"),
    ("run id", "run_id", "s"),
)


def store_for(args: argparse.Namespace, *, settle_s: float = 90.0) -> RunStore:
    """The runs of the platform the flags name: the local store, or AWS with --aws."""
    return open_store(aws_target(args) if args.aws else None, settle_s=settle_s)


def _load(
    store: RunStore, run_id: str, args: argparse.Namespace | None = None
) -> tuple[RunData, RunCost | None]:
    """The run and its cost (None for an imported run: it left no REPORT lines to price)."""
    if store.kind == "aws" and store.settle_s:
        print("collecting REPORT lines from CloudWatch Logs...", file=sys.stderr, flush=True)
    data = load_run(store, run_id)
    prices = load_prices(getattr(args, "prices", None))
    if data.imported:
        return data, None
    return data, cost_of_run(data, prices, getattr(args, "workflow", None))


def _overview(data: RunData, cost: RunCost | None) -> dict[str, Any]:
    return {**data.overview(), "cost_usd": None if cost is None else cost.total_usd}


def report_dict(data: RunData, cost: RunCost | None) -> dict[str, Any]:
    """Everything `report --json` prints."""
    return {
        "run_id": data.run_id,
        "where": data.kind,
        "overview": _overview(data, cost),
        "message": data.message,
        "execution": data.execution,
        "summary": data.summary,
        "payload": data.payload,
        "invocations": [
            {**inv.to_dict(), "failed": data.attempt_failed(inv)} for inv in data.invocations
        ],
        "cost": None if cost is None else cost.to_dict(),
        "imported": data.imported,
        "notes": list(IMPORTED_NOTES) if data.imported else [],
        "problems": data.problems,
    }


def imported_text(data: RunData) -> str:
    """An imported reference run: its per-rank reference fields and what they measure."""
    imported = data.imported or {}
    samples = data.samples
    lines = [
        f"run {data.run_id}: IMPORTED past reference run ({imported.get('format')}, from "
        f"{imported.get('source')}, imported {imported.get('imported_at')})",
        "",
        table(data.ranks, IMPORTED_COLUMNS),
        "",
        f"{data.world_size} ranks, {'unknown' if samples is None else samples} samples",
    ]
    return "\n".join(lines + [f"note: {note}" for note in IMPORTED_NOTES])


def text_report(data: RunData, cost: RunCost | None) -> str:
    """The run's summary, its invocations and its cost as plain-text tables."""
    if cost is None:
        return imported_text(data)
    head = (
        summary_text(data.summary)
        if data.summary
        else f"run {data.run_id}: {data.status.upper()} — {data.message}"
    )
    invocations = [
        {
            **inv.to_dict(),
            "outcome": "failed" if data.attempt_failed(inv) else "ok",
            "cold_start": "cold" if inv.cold_start else "",
        }
        for inv in data.invocations
    ]
    transitions = " + ".join(f"{n} {k.replace('_', ' ')}" for k, n in cost.transitions.items())
    lines = [
        head,
        "",
        "Lambda invocations (REPORT lines):",
        table(invocations, INVOCATION_COLUMNS),
        "",
        f"cost ({cost.usage.workflow.upper()} Distributed Map children; state transitions: "
        f"{transitions}):",
        format_table(cost.breakdown),
    ]
    lines += [f"warning: {problem}" for problem in data.problems]
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    data, cost = _load(store_for(args), args.run_id, args)
    if args.html:
        path = write_html(data, cost, args.html)
        if not args.json:
            print(f"report: {path}")
    if args.json:
        print_json(report_dict(data, cost))
    elif not args.html:
        print(text_report(data, cost))
    return 0


def finish_run(args: argparse.Namespace, run_id: str, html: Path) -> None:
    """After `run`/`demo`: print the run's cost table and write its HTML report.

    Never raises for an expected error: the run itself is over, so a missing log only costs
    the cost table (a warning says why).
    """
    try:
        data, cost = _load(store_for(args), run_id)
        path = write_html(data, cost, html)
    except CosmicAIError as err:
        print(f"warning: no cost or report for run {run_id}: {err}", file=sys.stderr)
        return
    print(f"\ncost of run {run_id} on AWS ({cost.usage.workflow.upper()} Map children):")
    print(format_table(cost.breakdown))
    print(f"report: {path}")


def cmd_runs(args: argparse.Namespace) -> int:
    store = store_for(args, settle_s=0)
    load_prices(args.prices)  # a bad price table is one error, not one per run
    rows = []
    for run_id in store.run_ids(args.limit):
        try:
            rows.append(_overview(*_load(store, run_id, args)))
        except CosmicAIError as err:  # a damaged run is reported, the others still listed
            reason = str(err).removeprefix("unreadable: ")
            rows.append({"run_id": run_id, "status": f"unreadable: {reason}"})
    if args.json:
        print_json(rows)
    elif rows:
        print(table(rows, RUNS_COLUMNS))
        if any(row.get("imported") for row in rows):
            print(
                f"imported-*: past reference runs, no cost (no REPORT lines). {IMPORTED_NOTES[0]}"
            )
    else:
        print("no runs yet: start one with `cosmicai demo` or `cosmicai run PAYLOAD`")
    return 0


def compare_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure, the two runs' values side by side."""
    rows = [
        {"figure": label, "a": a.get(key), "b": b.get(key), "spec": spec}
        for label, key, spec in COMPARE_ROWS
    ]
    for name in METRIC_NAMES:
        rows.append(
            {
                "figure": name,
                "a": (a.get("metrics") or {}).get(name),
                "b": (b.get("metrics") or {}).get(name),
                "spec": ".4f",
            }
        )
    return rows


def cmd_compare(args: argparse.Namespace) -> int:
    store = store_for(args)
    a, b = (_overview(*_load(store, run_id, args)) for run_id in (args.run_a, args.run_b))
    if args.json:
        print_json({"a": a, "b": b})
        return 0
    rows = compare_rows(a, b)
    cells = [
        {
            "figure": row["figure"],
            **{k: _formatted(row[k], row["spec"]) for k in ("a", "b")},
        }
        for row in rows
    ]
    print(table(cells, (("", "figure", "s"), (args.run_a, "a", "s"), (args.run_b, "b", "s"))))
    if a.get("imported") or b.get("imported"):
        print("\n".join(f"note: {note}" for note in IMPORTED_NOTES))
    return 0


def _formatted(value: Any, spec: str) -> str | None:
    if value is None:
        return None
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def cmd_tune(args: argparse.Namespace) -> int:
    memories = parse_memory(args.memory)
    batch_sizes = parse_batch_sizes(args.batch_size)
    payload = load_payload(args.payload)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.aws:
        results = sweep_aws(aws_target(args), payload, memories, batch_sizes, on_progress=progress)
        note = None
    else:
        results = sweep_local(payload, memories, batch_sizes, on_progress=progress)
        note = LOCAL_NOTE.format(cpus=len(os.sched_getaffinity(0)))
    picks = recommend(results)
    plot = plot_sweep(results, picks, args.plot) if args.plot else None
    if args.json:
        print_json(
            {
                "configs": [vars(r) for r in results],
                "recommendations": {name: vars(r) for name, r in picks.items()},
                "indicative": note is not None,
                "architecture_note": ARCH_NOTE,
                "note": note,
                "plot": str(plot) if plot else None,
            }
        )
        return 0
    print(tune_text(results, picks, note, plot))
    return 0


def tune_text(
    results: list[TuneResult], picks: dict[str, TuneResult], note: str | None, plot: Path | None
) -> str:
    """The sweep's table, its recommendations, the local caveat and the plot's path."""
    lines = [table([vars(r) for r in results], TUNE_COLUMNS), ""]
    lines += [
        f"{name:>9}: {pick.label}  ({pick.duration_s:.1f} s, ${pick.cost_usd:.6f}, "
        f"run {pick.run_id})"
        for name, pick in picks.items()
    ]
    lines += ["", f"note: {ARCH_NOTE}"]
    if note:
        lines.append(f"note: {note}")
    if plot:
        lines.append(f"plot: {plot}")
    return "\n".join(lines)


def _cost_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prices", metavar="FILE", help=f"price table (or ${PRICES_ENV})")
    parser.add_argument(
        "--workflow",
        choices=WORKFLOWS,
        help="price the Distributed Map children as this type (default: what the platform ran)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        help="a run's per-invocation Lambda metrics, cost and HTML report",
        description=(
            "Collect a run's REPORT lines (init, every executor attempt, summarize), price the "
            "run, and print a summary, or write one self-contained HTML file with --html."
        ),
    )
    report.add_argument("run_id", type=run_id_arg)
    report.add_argument("--html", type=Path, metavar="FILE", help="write the HTML report here")
    report.add_argument("--json", action="store_true", help="print everything as JSON")
    _cost_flags(report)
    add_target_flags(report)
    report.set_defaults(func=cmd_report)

    runs = subparsers.add_parser("runs", help="list past runs, newest first, with their cost")
    runs.add_argument(
        "--limit", type=positive_int, default=20, help="at most this many runs (default 20)"
    )
    runs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _cost_flags(runs)
    add_target_flags(runs)
    runs.set_defaults(func=cmd_runs)

    compare = subparsers.add_parser("compare", help="two runs side by side")
    compare.add_argument("run_a", type=run_id_arg)
    compare.add_argument("run_b", type=run_id_arg)
    compare.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _cost_flags(compare)
    add_target_flags(compare)
    compare.set_defaults(func=cmd_compare)

    tune = subparsers.add_parser(
        "tune",
        help="sweep executor memory and batch size; recommend the cheapest, fastest, balanced",
        description=(
            "Run PAYLOAD once per (memory, batch size) and recommend the cheapest, the fastest "
            "and a balanced configuration (smallest cost x time), like AWS Lambda Power Tuning."
        ),
    )
    tune.add_argument("payload", type=Path, help="payload.json")
    tune.add_argument(
        "--memory",
        required=True,
        metavar="MB,MB,...",
        help="executor memory sizes, 128-10240 MB, e.g. 2048,4096,10240",
    )
    tune.add_argument(
        "--batch-size", required=True, metavar="N,N,...", help="batch sizes, e.g. 128,512"
    )
    tune.add_argument("--plot", type=Path, metavar="FILE", help="write a cost-vs-time PNG here")
    tune.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_target_flags(tune)
    tune.set_defaults(func=cmd_tune)
