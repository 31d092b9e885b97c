"""A run's Lambda invocations, from its CloudWatch Logs, joined to its ranks; and its figures.

Every invocation writes `START RequestId: <id>`, its own output and a `REPORT RequestId: <id>`
line to `/aws/lambda/<function>`. Our handlers print JSON lines carrying `run_id` and
`request_id` (the executor also `rank`), so an invocation belongs to a run when one of its
JSON lines names the run: that keeps runs apart when several share a log group. Retried ranks
have one invocation (and one REPORT) per attempt. A run has one execution, plus one per redrive
(`cosmicai redrive`): a rank's attempts are numbered across all of them, so a redriven rank's
attempts follow those of the run's first execution.

Where the logs and objects come from is a `cosmicai.run_store.RunStore` (the local store, or a
deployed platform); the parsing and joining here is the same code for both.
"""

from __future__ import annotations

import json
import re
import time
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from cosmicai.lambda_report import ReportLine, ReportParseError, parse_report_line
from cosmicai.run_store import (
    FunctionInfo,
    LogEvent,
    RunStore,
    execution_failure,
    execution_window_ms,
)

_START = re.compile(r"^START RequestId: (\S+)")


@dataclass(frozen=True)
class Invocation:
    """One Lambda invocation of a run: its REPORT line, joined to its role and rank."""

    role: str
    function: str
    rank: int | None
    request_id: str
    report: ReportLine
    start_s: float | None  # START event time (epoch s); None when the START line was not seen
    end_s: float  # REPORT event time (epoch s)
    attempt: int = 1  # 1 for the first invocation of a (role, rank), 2 for its first retry...
    execution: int = 1  # which of the run's executions it ran in: 1 the first, 2 a redrive...

    @property
    def cold_start(self) -> bool:
        return self.report.cold_start

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "function": self.function,
            "rank": self.rank,
            "attempt": self.attempt,
            "execution": self.execution,
            "cold_start": self.cold_start,
            "start_s": self.start_s,
            "end_s": self.end_s,
            **self.report.to_dict(),
        }


@dataclass
class _Seen:
    """What the log events of one request id say."""

    start_ms: int | None = None
    report: ReportLine | None = None
    report_ms: int = 0
    run_ids: set[str] = field(default_factory=set)
    rank: int | None = None


def join_events(
    role: str, function: str, events: Iterable[LogEvent], run_id: str
) -> tuple[list[Invocation], set[str], list[str]]:
    """Invocations of `run_id` in one function's log events.

    Returns (invocations with a REPORT, request ids of the run still without a REPORT,
    problems such as malformed REPORT lines). Attempts are not numbered here.
    """
    seen: dict[str, _Seen] = {}
    problems: list[str] = []
    for event in sorted(events, key=lambda e: e.timestamp_ms):
        text = event.message.strip()
        if match := _START.match(text):
            seen.setdefault(match.group(1), _Seen()).start_ms = event.timestamp_ms
        elif text.startswith("REPORT"):
            try:
                report = parse_report_line(text)
            except ReportParseError as err:
                problems.append(f"{function} ({event.stream}): {err}")
                continue
            entry = seen.setdefault(report.request_id, _Seen())
            entry.report, entry.report_ms = report, event.timestamp_ms
        elif text.startswith("{"):
            _note_json_line(text, seen)
    invocations, pending = [], set()
    for request_id, entry in seen.items():
        if run_id not in entry.run_ids:
            continue
        if entry.report is None:
            pending.add(request_id)
            continue
        invocations.append(
            Invocation(
                role=role,
                function=function,
                rank=entry.rank,
                request_id=request_id,
                report=entry.report,
                start_s=None if entry.start_ms is None else entry.start_ms / 1000,
                end_s=entry.report_ms / 1000,
            )
        )
    return invocations, pending, problems


def _note_json_line(text: str, seen: dict[str, _Seen]) -> None:
    try:
        record = json.loads(text)
    except ValueError:
        return
    if not isinstance(record, dict) or not isinstance(record.get("request_id"), str):
        return
    entry = seen.setdefault(record["request_id"], _Seen())
    if isinstance(record.get("run_id"), str):
        entry.run_ids.add(record["run_id"])
    if isinstance(record.get("rank"), int):
        entry.rank = record["rank"]


def number_attempts(
    invocations: Iterable[Invocation], execution_starts_s: Sequence[float] = ()
) -> list[Invocation]:
    """Sort by start time and number the attempts of each (role, rank) from 1.

    `execution_starts_s` are the start times of the run's executions, oldest first: each
    invocation gets the number of the execution it started in. A rank's attempts are numbered
    across executions (a redrive's follow the first execution's); those of init and summarize,
    which every execution runs once, within their execution.
    """
    ordered = sorted(invocations, key=lambda i: (i.start_s or i.end_s, i.end_s))
    counts: dict[tuple[str, int | None, int | None], int] = {}
    numbered = []
    for inv in ordered:
        execution = max(1, bisect_right(execution_starts_s, inv.start_s or inv.end_s))
        key = (inv.role, inv.rank, execution if inv.rank is None else None)
        counts[key] = counts.get(key, 0) + 1
        numbered.append(replace(inv, attempt=counts[key], execution=execution))
    return numbered


def collect_invocations(
    store: RunStore,
    run_id: str,
    *,
    poll_s: float = 5.0,
    ranks: list[dict[str, Any]] | None = None,
) -> tuple[list[Invocation], list[str]]:
    """Every invocation of the run (init, each executor attempt, summarize), with problems.

    Logs are read over the window of the run's executions, from the first one's start to the
    latest one's stop (a minute of margin either side). While any
    invocation of the run lacks its REPORT (a request id that logged the run id without one,
    or one a rank record names), they are read again every `poll_s` until `store.settle_s`
    after the execution stopped; what is still missing then is named in the problems.
    `ranks` are the run's rank records when the caller has read them already.
    """
    executions = [execution_window_ms(e) for e in store.executions(run_id)]
    start_ms, stop_ms = executions[0][0], executions[-1][1]
    functions = store.functions(run_id)
    records = store.rank_records(run_id) if ranks is None else ranks
    expected = {r["request_id"] for r in records if isinstance(r.get("request_id"), str)}
    while True:
        end_ms = (stop_ms or int(time.time() * 1000)) + 60_000
        invocations: list[Invocation] = []
        pending: set[str] = set()
        problems: list[str] = []
        for fn in functions:
            events = store.log_events(run_id, fn.name, start_ms - 60_000, end_ms)
            found, waiting, bad = join_events(fn.role, fn.name, events, run_id)
            invocations += found
            pending |= waiting
            problems += bad
        pending |= expected - {inv.request_id for inv in invocations}
        settled = stop_ms is not None and time.time() * 1000 >= stop_ms + store.settle_s * 1000
        if not pending or settled or stop_ms is None:
            break
        time.sleep(poll_s)
    problems += [f"no REPORT line (yet) for request {rid}" for rid in sorted(pending)]
    return number_attempts(invocations, [start / 1000 for start, _ in executions]), problems


@dataclass
class RunData:
    """Everything known about one run: execution, objects, invocations."""

    run_id: str
    kind: str
    execution: dict[str, Any]
    history: list[dict[str, Any]] | None
    payload: dict[str, Any] | None
    items: list[dict[str, Any]]
    summary: dict[str, Any] | None
    ranks: list[dict[str, Any]]
    failures: dict[int, dict[str, Any]]
    functions: list[FunctionInfo]
    invocations: list[Invocation]
    code_objects: int
    map_execution_type: str
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The run's verdict (succeeded/partial/failed) or, without a summary, the execution's."""
        if self.summary:
            return str(self.summary["status"])
        return str(self.execution.get("status", "unknown")).lower()

    @property
    def message(self) -> str:
        if self.summary:
            return str(self.summary.get("message") or "")
        return execution_failure(self.execution)

    @property
    def world_size(self) -> int | None:
        if self.summary:
            return int(self.summary["world_size"])
        if self.payload and self.payload.get("world_size"):
            return int(self.payload["world_size"])
        return len(self.items) or None

    @property
    def imported(self) -> dict[str, Any] | None:
        """Where an imported past run came from (`cosmicai import-results`), else None."""
        imported = self.execution.get("imported")
        return imported if isinstance(imported, dict) else None

    @property
    def samples(self) -> int | None:
        """Samples over the ranks; None (unknown) if a rank's record has no count."""
        if any("samples" in r and r["samples"] is None for r in self.ranks):
            return None
        return sum(int(r.get("samples") or 0) for r in self.ranks)

    @property
    def duration_s(self) -> float | None:
        """Execution wall time, start to stop (None while running, or unknown: imported)."""
        start, stop = execution_window_ms(self.execution)
        return None if stop is None or self.imported else (stop - start) / 1000

    def reference_figure(self, field: str) -> float | None:
        """The largest value of a reference field over the ranks (None if none has it)."""
        values = [r[field] for r in self.ranks if isinstance(r.get(field), int | float)]
        return max(values, default=None)

    @property
    def started(self) -> str:
        start, _ = execution_window_ms(self.execution)
        return datetime.fromtimestamp(start / 1000).isoformat(timespec="seconds")

    def role(self, role: str) -> list[Invocation]:
        return [inv for inv in self.invocations if inv.role == role]

    def attempt_failed(self, inv: Invocation) -> bool:
        """Whether an invocation failed (a handled error leaves its REPORT looking fine).

        An executor attempt succeeded when its rank record names its request id; another
        invocation when its REPORT says so and no later attempt of its role followed in the
        same execution.
        """
        if inv.role == "executor" and inv.rank is not None:
            record = next((r for r in self.ranks if r.get("rank") == inv.rank), None)
            return record is None or record.get("request_id") != inv.request_id
        later = any(
            o.attempt > inv.attempt and o.execution == inv.execution for o in self.role(inv.role)
        )
        return later or inv.report.status != "success"

    def overview(self) -> dict[str, Any]:
        """The run's headline figures (cost is added by the caller)."""
        executor = self.role("executor")
        totals = (self.summary or {}).get("totals") or {}
        duration = self.duration_s
        per_s = totals.get("samples_per_s") or (
            self.samples / duration if duration and self.samples else None
        )
        metrics = (self.summary or {}).get("metrics") or {}
        return {
            "run_id": self.run_id,
            "status": self.status,
            "started": self.started,
            "world_size": self.world_size,
            "samples": self.samples,
            "duration_s": duration,
            "samples_per_s": per_s,
            "batch_size": (self.payload or {}).get("batch_size")
            or self.reference_figure("batch_size"),
            "executor_memory_mb": max((i.report.memory_size_mb for i in executor), default=None),
            "executor_max_used_mb": max(
                (i.report.max_memory_used_mb for i in executor), default=None
            ),
            "invocations": len(self.invocations),
            "cold_starts": sum(i.cold_start for i in self.invocations),
            "failed_attempts": sum(self.attempt_failed(i) for i in self.invocations),
            "model_trained": (self.summary or {}).get("model_trained"),
            "metrics": {k: v for k, v in metrics.items() if k != "samples"} or None,
            "imported": self.imported is not None,
            "sample_persec_max": self.reference_figure("sample_persec"),
            "cpu_time_s_max": self.reference_figure("total_cpu_time (seconds)"),
            "cpu_memory_mb_max": self.reference_figure("total_cpu_memory (MB)"),
            "cpu_memory_measure": self.cpu_memory_measure,
        }

    @property
    def cpu_memory_measure(self) -> str:
        """What the ranks' `total_cpu_memory (MB)` measures."""
        if self.imported:
            return "memory profiler (reference run)"
        if (self.payload or {}).get("mode") == "script":
            return "what the script reported"
        return "peak RSS"


def load_run(store: RunStore, run_id: str, *, poll_s: float = 5.0) -> RunData:
    """Read a run's execution, objects and invocations from a store."""
    execution = store.execution(run_id)
    ranks = store.rank_records(run_id)
    invocations, problems = collect_invocations(store, run_id, poll_s=poll_s, ranks=ranks)
    failures = store.failures(run_id)
    payload = store.payload(run_id)
    summary = store.summary(run_id)
    items = store.items(run_id)
    code_objects = 0
    if payload and payload.get("mode") == "script" and payload.get("S3_object_name"):
        name = payload["S3_object_name"].strip("/")
        code_objects = len(
            store.keys(run_id, name if payload.get("object_type") == "file" else name + "/")
        )
    return RunData(
        run_id=run_id,
        kind=store.kind,
        execution=execution,
        history=store.history(run_id),
        payload=payload,
        items=items or [],
        summary=summary,
        ranks=ranks,
        failures=failures,
        functions=store.functions(run_id),
        invocations=invocations,
        code_objects=code_objects,
        map_execution_type=store.map_execution_type,
        problems=problems,
    )
