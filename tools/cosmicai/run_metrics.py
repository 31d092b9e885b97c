"""A run's Lambda invocations, from its CloudWatch Logs, joined to its ranks; and its objects.

Every invocation writes `START RequestId: <id>`, its own output and a `REPORT RequestId: <id>`
line to `/aws/lambda/<function>`. Our handlers print JSON lines carrying `run_id` and
`request_id` (the executor also `rank`), so an invocation belongs to a run when one of its
JSON lines names the run: that keeps runs apart when several share a log group. Retried ranks
have one invocation (and one REPORT) per attempt. A run has one execution, plus one per redrive
(`cosmicai redrive`): a rank's attempts are numbered across all of them, so a redriven rank's
attempts follow those of the run's first execution.

Where the logs and objects come from is a `RunStore`:
- `LocalRuns`: the local mirror a local run leaves behind (`runs/<run_id>/execution.json`,
  `executions.json`, `history.json` when kept, and `logs/<function>.jsonl`, every execution's);
- `CloudRuns`: a deployed platform reached with boto3 (AWS, or a live local cloud), reading
  CloudWatch Logs with `filter_log_events` over the run's time window, again until every
  invocation of the run has its REPORT or a deadline passes (logs arrive late on AWS).
The parsing and joining is the same code for both.
"""

from __future__ import annotations

import json
import re
import time
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from cosmicai.errors import CosmicAIError
from cosmicai.lambda_report import ReportLine, ReportParseError, parse_report_line
from cosmicai.localcloud.mirror import LocalS3Mirror
from cosmicai.pipeline.layout import RunLayout
from cosmicai.pipeline.s3objects import iter_objects
from cosmicai.safe_input import (
    MAX_LOG_BYTES,
    MAX_RECORD_BYTES,
    UnreadableInput,
    json_object,
    parse_json,
    parse_json_bytes,
    read_json_file,
    read_text,
)
from cosmicai.target import FUNCTION_ROLES, Target

_START = re.compile(r"^START RequestId: (\S+)")
_RERUN_SUFFIX = re.compile(r"^(.+)-\d{10}$")  # `<run_id>-<epoch>`: an --overwrite re-run
_REDRIVE_SUFFIX = re.compile(r"^(.+)-redrive-\d+$")  # `<run_id>-redrive-<n>`: a redrive
_STEP_MODULE = re.compile(r"cosmicai/pipeline/(\w+)\.py")  # a pipeline step's frame in a trace
HISTORY_FILE = "history.json"
EXECUTION_FILE = "execution.json"
SUMMARY_KEYS = ("run_id", "status", "world_size", "ranks_succeeded", "samples", "message")


@dataclass(frozen=True)
class LogEvent:
    """One CloudWatch Logs event."""

    timestamp_ms: int
    stream: str
    message: str


@dataclass(frozen=True)
class FunctionInfo:
    """A function of the run's platform, with what its price depends on besides memory."""

    role: str
    name: str
    arch: str = "x86_64"
    ephemeral_mb: int = 512


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


class RunStore(Protocol):
    """Where runs' executions, objects and logs are read from."""

    kind: str
    settle_s: float  # how long after an execution stops its logs may still be arriving
    map_execution_type: str  # "standard" or "express": the Distributed Map's child type

    def run_ids(self, limit: int | None = None) -> list[str]: ...
    def execution(self, run_id: str) -> dict[str, Any]: ...
    # the run's executions, oldest first (the first, then each redrive): the last is execution()
    def executions(self, run_id: str) -> list[dict[str, Any]]: ...
    def history(self, run_id: str) -> list[dict[str, Any]] | None: ...
    def read_json(self, run_id: str, key: str) -> Any: ...
    def keys(self, run_id: str, prefix: str) -> list[str]: ...
    def functions(self, run_id: str) -> list[FunctionInfo]: ...
    def log_events(
        self, run_id: str, function: str, start_ms: int, end_ms: int
    ) -> list[LogEvent]: ...


def _epoch_ms(value: Any) -> int | None:
    """A describe_execution date (datetime, ISO text, or epoch seconds) in epoch ms."""
    if value is None:
        return None
    try:
        if isinstance(value, int | float):
            return int(value * 1000)
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return int(value.timestamp() * 1000)
    except (ValueError, TypeError, AttributeError, OverflowError):
        raise CosmicAIError(f"execution record date {value!r} is not a date") from None


def execution_failure(execution: dict[str, Any]) -> str:
    """Why an execution failed, in one line: "init failed: <errorType>: <errorMessage>" for a
    Lambda error (its stack trace left out), else its error and cause; "" if it did not fail."""
    error, cause = execution.get("error"), execution.get("cause")
    try:
        body = json.loads(cause) if isinstance(cause, str) else None
    except ValueError:
        body = None
    if isinstance(body, dict) and "errorMessage" in body:
        trace = " ".join(str(frame) for frame in body.get("stackTrace") or [])
        step = match.group(1) if (match := _STEP_MODULE.search(trace)) else "lambda"
        kind = body.get("errorType") or error or "Error"
        return f"{step} failed: {kind}: {body['errorMessage']}"
    return ": ".join(str(part) for part in (error, cause) if part)


def execution_window_ms(execution: dict[str, Any]) -> tuple[int, int | None]:
    """(start, stop) of an execution in epoch ms; stop is None while it runs."""
    start = _epoch_ms(execution.get("startDate"))
    if start is None:
        raise CosmicAIError(f"execution record {execution.get('name')!r} has no startDate")
    return start, _epoch_ms(execution.get("stopDate"))


def _rank_records(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    records = [
        store.read_json(run_id, k) for k in store.keys(run_id, RunLayout(run_id).ranks_prefix)
    ]
    return sorted((r for r in records if isinstance(r, dict)), key=lambda r: r.get("rank", 0))


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
    records = _rank_records(store, run_id) if ranks is None else ranks
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
    layout = RunLayout(run_id)
    execution = store.execution(run_id)
    ranks = _rank_records(store, run_id)
    invocations, problems = collect_invocations(store, run_id, poll_s=poll_s, ranks=ranks)
    failures = {
        int(name): store.read_json(run_id, key) or {}
        for key in store.keys(run_id, layout.failures_prefix)
        if (name := key.rsplit("/", 1)[1].removesuffix(".json")).isdigit()
    }
    payload = store.read_json(run_id, layout.payload_key)
    if payload is not None:
        payload = json_object(payload, layout.payload_key)
    summary = store.read_json(run_id, layout.summary_key)
    if summary is not None:
        summary = json_object(summary, layout.summary_key, SUMMARY_KEYS)
    items = store.read_json(run_id, layout.items_key)
    if not isinstance(items, list | None):
        raise UnreadableInput(layout.items_key, "holds no list of items")
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


def _json_ready(value: Any) -> Any:
    """datetimes as ISO text, recursively (boto3 answers carry datetimes)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def fetch_history(sfn: Any, execution_arn: str) -> list[dict[str, Any]]:
    """All events of an execution's history (paginated), JSON-ready."""
    events: list[dict[str, Any]] = []
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
        events += _json_ready(page["events"])
    return events


def _role_of(function: str) -> str | None:
    return next((role for role in FUNCTION_ROLES if function.endswith(f"-{role}")), None)


class LocalRuns:
    """Runs that local `cosmicai run/demo` left in the local mirror (`<home>/s3/<bucket>/`)."""

    kind = "local"
    settle_s = 0.0
    # the local cloud runs the Distributed Map's children as STANDARD executions (see
    # localcloud/cloud.py); cost_of_run can price them as AWS's default EXPRESS instead
    map_execution_type = "standard"

    def __init__(self, mirror: LocalS3Mirror | None = None) -> None:
        self.mirror = mirror or LocalS3Mirror()
        self._buckets: dict[str, str] = {}

    def _scan(self) -> dict[str, str]:
        """run id -> bucket, for every run with an execution record."""
        if self.mirror.root.is_dir():
            for record in sorted(self.mirror.root.glob(f"*/runs/*/{EXECUTION_FILE}")):
                self._buckets.setdefault(record.parent.name, record.parents[2].name)
        return self._buckets

    def bucket(self, run_id: str) -> str:
        bucket = self._buckets.get(run_id) or self._scan().get(run_id)
        if bucket is None:
            raise CosmicAIError(
                f"no local run {run_id} under {self.mirror.root}: check the run id with "
                f"`cosmicai runs`, or pass --aws for a run on AWS."
            )
        return bucket

    def _started_ms(self, run_id: str) -> int:
        try:
            return execution_window_ms(self.execution(run_id))[0]
        except CosmicAIError:  # a damaged record: listed last, and reported when loaded
            return 0

    def run_ids(self, limit: int | None = None) -> list[str]:
        """Run ids, newest first."""
        runs = sorted(self._scan(), key=self._started_ms, reverse=True)
        return runs[:limit] if limit else runs

    def read_json(self, run_id: str, key: str) -> Any:
        path = self.mirror.path(self.bucket(run_id), key)
        return read_json_file(path, max_bytes=MAX_RECORD_BYTES, missing_ok=True)

    def keys(self, run_id: str, prefix: str) -> list[str]:
        return list(self.mirror.keys(self.bucket(run_id), prefix))

    def execution(self, run_id: str) -> dict[str, Any]:
        path = self.mirror.path(self.bucket(run_id), f"runs/{run_id}/{EXECUTION_FILE}")
        return json_object(read_json_file(path), path, ("startDate",))

    def executions(self, run_id: str) -> list[dict[str, Any]]:
        """`executions.json` (kept since redrives exist), else the one execution record."""
        key = RunLayout(run_id).executions_key
        records = self.read_json(run_id, key)
        if records is None:
            return [self.execution(run_id)]
        if not isinstance(records, list) or not records:
            raise UnreadableInput(key, "holds no list of execution records")
        return [json_object(record, key, ("startDate",)) for record in records]

    def history(self, run_id: str) -> list[dict[str, Any]] | None:
        return self.read_json(run_id, f"runs/{run_id}/{HISTORY_FILE}")

    def _log_files(self, run_id: str) -> dict[str, str]:
        """function name -> key of its saved log events."""
        prefix = f"runs/{run_id}/logs/"
        return {key[len(prefix) :].removesuffix(".jsonl"): key for key in self.keys(run_id, prefix)}

    def functions(self, run_id: str) -> list[FunctionInfo]:
        saved = self.read_json(run_id, RunLayout(run_id).functions_key)
        if isinstance(saved, list):  # what the run's functions were configured with
            return [
                FunctionInfo(f["role"], f["name"], f["architecture"], int(f["ephemeral_mb"]))
                for f in saved
            ]
        return [
            FunctionInfo(role, name)
            for name in sorted(self._log_files(run_id))
            if (role := _role_of(name)) is not None
        ]

    def log_events(self, run_id: str, function: str, start_ms: int, end_ms: int) -> list[LogEvent]:
        key = self._log_files(run_id).get(function)
        if key is None:
            return []
        path = self.mirror.path(self.bucket(run_id), key)
        lines = read_text(path, max_bytes=MAX_LOG_BYTES).splitlines()
        events = (_log_event(line, f"{path} line {n}") for n, line in enumerate(lines, 1) if line)
        return [e for e in events if start_ms <= e.timestamp_ms <= end_ms]


def _log_event(line: str, source: str) -> LogEvent:
    """One saved log event ({"timestamp", "stream", "message"} per line)."""
    event = json_object(parse_json(line, source), source, ("timestamp", "stream", "message"))
    if not isinstance(event["timestamp"], int) or not isinstance(event["message"], str):
        raise UnreadableInput(source, "timestamp must be a whole number and message a string")
    return LogEvent(event["timestamp"], str(event["stream"]), event["message"])


class CloudRuns:
    """Runs of a deployed platform (AWS, or a live local cloud), read with boto3."""

    def __init__(self, target: Target, *, settle_s: float = 90.0) -> None:
        self.target = target
        self.kind = target.kind
        self.settle_s = settle_s
        self._sfn = target.client("stepfunctions")
        self._s3 = target.client("s3")
        self._logs = target.client("logs")
        self._executions: dict[str, dict[str, Any]] = {}
        self._map_type: str | None = None

    @property
    def map_execution_type(self) -> str:
        if self._map_type is None:
            machine = self._sfn.describe_state_machine(
                stateMachineArn=self.target.state_machine_arn
            )
            self._map_type = _distributed_map_type(json.loads(machine["definition"]))
        return self._map_type

    def _list_executions(self) -> Iterable[dict[str, Any]]:
        pages = self._sfn.get_paginator("list_executions").paginate(
            stateMachineArn=self.target.state_machine_arn
        )
        for page in pages:
            yield from page["executions"]

    def run_ids(self, limit: int | None = None) -> list[str]:
        """Run ids, newest first (an --overwrite re-run or a redrive counts as its run id)."""
        found: list[str] = []
        for execution in self._list_executions():
            run_id = _run_id_of(execution["name"])
            if run_id not in found:
                found.append(run_id)
            if limit and len(found) >= limit:
                break
        return found

    def execution(self, run_id: str) -> dict[str, Any]:
        """The latest execution of the run."""
        return self.executions(run_id)[-1]

    def executions(self, run_id: str) -> list[dict[str, Any]]:
        """The run's latest start (named after the run id, or `<run_id>-<epoch>` for an
        --overwrite re-run) and the redrives after it (`<run_id>-redrive-<n>`), oldest first."""
        if run_id not in self._executions:
            lineage = []
            for listed in self._list_executions():  # newest first
                name = listed["name"]
                if name != run_id and _run_id_of(name) != run_id:
                    continue
                lineage.append(listed)
                if name == run_id or not _REDRIVE_SUFFIX.match(name):
                    break
            if not lineage:
                raise CosmicAIError(
                    f"no execution for run {run_id} on {self.target.state_machine_arn}: check the "
                    f"run id with `cosmicai runs --aws`."
                )
            self._executions[run_id] = [
                _json_ready(self._sfn.describe_execution(executionArn=e["executionArn"]))
                for e in reversed(lineage)
            ]
        return self._executions[run_id]

    def history(self, run_id: str) -> list[dict[str, Any]] | None:
        """Every event of every execution of the run, execution after execution."""
        return [
            event
            for execution in self.executions(run_id)
            for event in fetch_history(self._sfn, execution["executionArn"])
        ]

    def read_json(self, run_id: str, key: str) -> Any:
        try:
            stream = self._s3.get_object(Bucket=self.target.runs_bucket, Key=key)["Body"]
        except self._s3.exceptions.NoSuchKey:
            return None
        source = f"s3://{self.target.runs_bucket}/{key}"
        body = stream.read(MAX_RECORD_BYTES + 1)
        return parse_json_bytes(body, source, max_bytes=MAX_RECORD_BYTES)

    def keys(self, run_id: str, prefix: str) -> list[str]:
        return [obj["Key"] for obj in iter_objects(self._s3, self.target.runs_bucket, prefix)]

    def functions(self, run_id: str) -> list[FunctionInfo]:
        lam = self.target.client("lambda")
        infos = []
        for role, name in self.target.functions.items():
            config = lam.get_function_configuration(FunctionName=name)
            infos.append(
                FunctionInfo(
                    role,
                    name,
                    (config.get("Architectures") or ["x86_64"])[0],
                    int((config.get("EphemeralStorage") or {}).get("Size", 512)),
                )
            )
        return infos

    def log_events(self, run_id: str, function: str, start_ms: int, end_ms: int) -> list[LogEvent]:
        pages = self._logs.get_paginator("filter_log_events").paginate(
            logGroupName=f"/aws/lambda/{function}", startTime=start_ms, endTime=end_ms
        )
        return [
            LogEvent(e["timestamp"], e["logStreamName"], e["message"])
            for page in pages
            for e in page.get("events", [])
        ]


def _run_id_of(execution_name: str) -> str:
    """The run an execution belongs to: its name less a re-run's or a redrive's suffix."""
    for suffix in (_REDRIVE_SUFFIX, _RERUN_SUFFIX):
        if match := suffix.match(execution_name):
            return match.group(1)
    return execution_name


def _distributed_map_type(definition: dict[str, Any]) -> str:
    """The child execution type of the definition's Distributed Map ("standard" or "express")."""
    for state in definition.get("States", {}).values():
        config = (state.get("ItemProcessor") or {}).get("ProcessorConfig") or {}
        if config.get("Mode") == "DISTRIBUTED":
            return str(config.get("ExecutionType", "STANDARD")).lower()
    return "standard"
