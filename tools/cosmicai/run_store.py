"""Where runs are read from: one client, two backends (the local store, or a deployed platform).

A run is its executions (the first, named after the run id or `<run_id>-<epoch>` for an
`--overwrite` re-run, then one per redrive), its objects under `runs/<run_id>/` in the runs
bucket (`RunLayout`), and its functions' CloudWatch Logs. `RunStore` reads them with one code
path (the latest execution, the summary, payload, items, rank and failure records); its two
backends differ only in where they read:
- `LocalRuns`: what local `cosmicai run/demo` left in the local store (`<home>/s3/<bucket>/`):
  `runs/<run_id>/execution.json`, `executions.json`, `history.json` and `logs/<function>.jsonl`;
- `CloudRuns`: a deployed platform reached with boto3 (AWS, or a live local cloud): Step
  Functions' executions, the runs bucket, and `filter_log_events` (logs arrive late on AWS:
  `settle_s`).
Nothing here writes: runs are written by the pipeline and, locally, by `cosmicai.localcloud`.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cosmicai.errors import CosmicAIError
from cosmicai.local_store import LocalS3Mirror
from cosmicai.pipeline.layout import RunLayout, check_run_id, execution_run_id, is_redrive
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

_STEP_MODULE = re.compile(r"cosmicai/pipeline/(\w+)\.py")  # a pipeline step's frame in a trace
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
    memory_mb: int | None = None  # as configured (None when unknown); REPORT lines also say


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


def execution_window_ms(execution: dict[str, Any]) -> tuple[int, int | None]:
    """(start, stop) of an execution in epoch ms; stop is None while it runs."""
    start = _epoch_ms(execution.get("startDate"))
    if start is None:
        raise CosmicAIError(f"execution record {execution.get('name')!r} has no startDate")
    return start, _epoch_ms(execution.get("stopDate"))


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


def json_ready(value: Any) -> Any:
    """datetimes as ISO text, recursively, less boto3's ResponseMetadata."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


def fetch_history(sfn: Any, execution_arn: str) -> list[dict[str, Any]]:
    """All events of an execution's history (paginated), JSON-ready."""
    events: list[dict[str, Any]] = []
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
        events += json_ready(page["events"])
    return events


class RunStore(ABC):
    """Runs' executions, objects and logs: what every reader of a run reads them through."""

    kind: str
    settle_s: float  # how long after an execution stops its logs may still be arriving
    map_execution_type: str  # "standard" or "express": the Distributed Map's child type

    # -- what a backend reads ------------------------------------------------------------------

    @abstractmethod
    def run_ids(self, limit: int | None = None) -> list[str]:
        """Run ids, newest first."""

    @abstractmethod
    def executions(self, run_id: str) -> list[dict[str, Any]]:
        """The run's executions, oldest first (the first, then each redrive); refuses an
        unknown run id."""

    @abstractmethod
    def history(self, run_id: str) -> list[dict[str, Any]] | None:
        """Every event of every execution of the run, in order (None if none was kept)."""

    @abstractmethod
    def read_json(self, run_id: str, key: str) -> Any:
        """The JSON object at `key` of the run's bucket; None if there is none."""

    @abstractmethod
    def keys(self, run_id: str, prefix: str) -> list[str]:
        """Keys under `prefix` in the run's bucket."""

    @abstractmethod
    def functions(self, run_id: str) -> list[FunctionInfo]:
        """The functions the run ran on."""

    @abstractmethod
    def log_events(self, run_id: str, function: str, start_ms: int, end_ms: int) -> list[LogEvent]:
        """The function's log events between two times."""

    # -- one client code path ------------------------------------------------------------------

    def execution(self, run_id: str) -> dict[str, Any]:
        """The run's latest execution (an --overwrite re-run's or the latest redrive's)."""
        return self.executions(run_id)[-1]

    def summary(self, run_id: str) -> dict[str, Any] | None:
        """What Summarize wrote, or None (the run failed before Summarize, or still runs)."""
        key = RunLayout(run_id).summary_key
        summary = self.read_json(run_id, key)
        return None if summary is None else json_object(summary, key, SUMMARY_KEYS)

    def payload(self, run_id: str) -> dict[str, Any] | None:
        key = RunLayout(run_id).payload_key
        payload = self.read_json(run_id, key)
        return None if payload is None else json_object(payload, key)

    def items(self, run_id: str) -> list[Any] | None:
        """The ranks Init planned (None before Init ran)."""
        key = RunLayout(run_id).items_key
        items = self.read_json(run_id, key)
        if not isinstance(items, list | None):
            raise UnreadableInput(key, "holds no list of items")
        return items

    def rank_records(self, run_id: str) -> list[dict[str, Any]]:
        """The ranks' records (`ranks/<rank>.json`), in rank order."""
        keys = self.keys(run_id, RunLayout(run_id).ranks_prefix)
        records = [self.read_json(run_id, key) for key in keys]
        return sorted((r for r in records if isinstance(r, dict)), key=lambda r: r.get("rank", 0))

    def failures(self, run_id: str) -> dict[int, dict[str, Any]]:
        """rank -> its final error, as the state machine's RecordFailure state stored it."""
        layout = RunLayout(run_id)
        return {
            rank: self.read_json(run_id, key) or {}
            for key in self.keys(run_id, layout.failures_prefix)
            if (rank := layout.failure_rank(key)) is not None
        }


def _role_of(function: str) -> str | None:
    return next((role for role in FUNCTION_ROLES if function.endswith(f"-{role}")), None)


def _log_event(line: str, source: str) -> LogEvent:
    """One saved log event ({"timestamp", "stream", "message"} per line)."""
    event = json_object(parse_json(line, source), source, ("timestamp", "stream", "message"))
    if not isinstance(event["timestamp"], int) or not isinstance(event["message"], str):
        raise UnreadableInput(source, "timestamp must be a whole number and message a string")
    return LogEvent(event["timestamp"], str(event["stream"]), event["message"])


class LocalRuns(RunStore):
    """Runs that local `cosmicai run/demo` left in the local store (`<home>/s3/<bucket>/`)."""

    kind = "local"
    settle_s = 0.0
    # the local cloud runs the Distributed Map's children as STANDARD executions (see
    # localcloud/cloud.py); cost_of_run can price them as AWS's default EXPRESS instead
    map_execution_type = "standard"

    def __init__(self, mirror: LocalS3Mirror | None = None, *, bucket: str | None = None) -> None:
        """`bucket`: the runs bucket to read; by default, the one that holds the run."""
        self.mirror = mirror or LocalS3Mirror()
        self._bucket = bucket
        self._buckets: dict[str, str] = {}

    def _scan(self) -> dict[str, str]:
        """run id -> bucket, for every run with an execution record (a finished local run)."""
        if self.mirror.root.is_dir():
            pattern = f"*/{RunLayout('*').execution_key}"
            for record in sorted(self.mirror.root.glob(pattern)):
                self._buckets.setdefault(record.parent.name, record.parents[2].name)
        return self._buckets

    def bucket(self, run_id: str) -> str:
        """The bucket that holds the run: finished, or still running (it has objects, such as
        its claim, but no execution record yet)."""
        if self._bucket:
            return self._bucket
        bucket = self._buckets.get(run_id) or self._scan().get(run_id)
        if bucket is None and self.mirror.root.is_dir():
            prefix = RunLayout(check_run_id(run_id)).prefix
            held = (b.name for b in sorted(self.mirror.root.iterdir()) if (b / prefix).is_dir())
            bucket = next(held, None)
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
        runs = sorted(self._scan(), key=self._started_ms, reverse=True)
        return runs[:limit] if limit else runs

    def read_json(self, run_id: str, key: str) -> Any:
        path = self.mirror.path(self.bucket(run_id), key)
        return read_json_file(path, max_bytes=MAX_RECORD_BYTES, missing_ok=True)

    def keys(self, run_id: str, prefix: str) -> list[str]:
        return list(self.mirror.keys(self.bucket(run_id), prefix))

    def executions(self, run_id: str) -> list[dict[str, Any]]:
        """`executions.json` (kept since redrives exist), else the one `execution.json`."""
        layout = RunLayout(run_id)
        records = self.read_json(run_id, layout.executions_key)
        if records is None:
            path = self.mirror.path(self.bucket(run_id), layout.execution_key)
            return [json_object(read_json_file(path), path, ("startDate",))]
        if not isinstance(records, list) or not records:
            raise UnreadableInput(layout.executions_key, "holds no list of execution records")
        return [json_object(record, layout.executions_key, ("startDate",)) for record in records]

    def history(self, run_id: str) -> list[dict[str, Any]] | None:
        return self.read_json(run_id, RunLayout(run_id).history_key)

    def _log_files(self, run_id: str) -> dict[str, str]:
        """function name -> key of its saved log events."""
        layout = RunLayout(run_id)
        return {
            function: key
            for key in self.keys(run_id, layout.logs_prefix)
            if (function := layout.log_function(key)) is not None
        }

    def functions(self, run_id: str) -> list[FunctionInfo]:
        saved = self.read_json(run_id, RunLayout(run_id).functions_key)
        if isinstance(saved, list):  # what the run's functions were configured with
            return [
                FunctionInfo(
                    f["role"],
                    f["name"],
                    f["architecture"],
                    int(f["ephemeral_mb"]),
                    int(f["memory_mb"]) if "memory_mb" in f else None,
                )
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


class CloudRuns(RunStore):
    """Runs of a deployed platform (AWS, or a live local cloud), read with boto3."""

    def __init__(self, target: Target, *, settle_s: float = 90.0) -> None:
        self.target = target
        self.kind = target.kind
        self.settle_s = settle_s
        self._sfn = target.client("stepfunctions")
        self._s3 = target.client("s3")
        self._logs = target.client("logs")
        self._executions: dict[str, list[dict[str, Any]]] = {}
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
            run_id = execution_run_id(execution["name"])
            if run_id not in found:
                found.append(run_id)
            if limit and len(found) >= limit:
                break
        return found

    def executions(self, run_id: str) -> list[dict[str, Any]]:
        """The run's latest start (named after the run id, or `<run_id>-<epoch>` for an
        --overwrite re-run) and the redrives after it (`<run_id>-redrive-<n>`), oldest first."""
        if run_id not in self._executions:
            lineage = []
            for listed in self._list_executions():  # newest first
                name = listed["name"]
                if execution_run_id(name) != run_id and name != run_id:
                    continue
                lineage.append(listed)
                if name == run_id or not is_redrive(name):
                    break
            if not lineage:
                raise CosmicAIError(
                    f"no execution for run {run_id} on {self.target.state_machine_arn}: check the "
                    f"run id with `cosmicai runs --aws`."
                )
            self._executions[run_id] = [
                json_ready(self._sfn.describe_execution(executionArn=e["executionArn"]))
                for e in reversed(lineage)
            ]
        return self._executions[run_id]

    def history(self, run_id: str) -> list[dict[str, Any]] | None:
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
                    config.get("MemorySize"),
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


def _distributed_map_type(definition: dict[str, Any]) -> str:
    """The child execution type of the definition's Distributed Map ("standard" or "express")."""
    for state in definition.get("States", {}).values():
        config = (state.get("ItemProcessor") or {}).get("ProcessorConfig") or {}
        if config.get("Mode") == "DISTRIBUTED":
            return str(config.get("ExecutionType", "STANDARD")).lower()
    return "standard"


def open_store(target: Target | None, *, settle_s: float = 90.0) -> RunStore:
    """The runs of a deployed platform (`target`), or of the local store when it is None."""
    return LocalRuns() if target is None else CloudRuns(target, settle_s=settle_s)
