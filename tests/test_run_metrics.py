"""Collecting a run's invocations from its logs, and pricing the run, on the real local cloud.

A script-mode payload whose rank 1 fails on its first attempt (it leaves a marker object in S3
and exits non-zero; the retry finds the marker and succeeds) gives a run with a retry.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cosmicai.defaults import FUNCTIONS, RANK_MAX_RETRIES
from cosmicai.lambda_report import ReportLine, parse_report_lines
from cosmicai.local_store import LocalS3Mirror, MirrorClaims
from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.localcloud.session import run_local, save_logs, upload_inputs
from cosmicai.payload import validate_payload
from cosmicai.report_html import render_html
from cosmicai.run_cost import cost_of_run, parent_transitions, template_parent_transitions
from cosmicai.run_metrics import join_events, load_run, number_attempts
from cosmicai.run_store import CloudRuns, LocalRuns, LogEvent, fetch_history
from cosmicai.runner import follow, start_run

# us-east-1 prices, as the AWS pricing pages state them
X86_GB_S = 0.0000166667
REQUEST = 0.20 / 1_000_000
TRANSITION = 0.025 / 1000
PUT = 0.005 / 1000
GET = 0.0004 / 1000
EXPRESS_REQUEST = 1.00 / 1_000_000
EPHEMERAL_GB_S = 0.0000000309  # per GB-second above the free 512 MB
EXPRESS_GB_S = 0.00001667

FAIL_ONCE = """
import json, os, sys
import boto3
rank = int(os.environ["RANK"])
s3 = boto3.client("s3")
marker = "runs/%s/marker-%d" % (os.environ["RUN_ID"], rank)
if rank == 1 and ALWAYS:
    sys.exit("rank 1 always fails")
if rank == 1:
    try:
        s3.head_object(Bucket=os.environ["BUCKET"], Key=marker)
    except Exception:
        s3.put_object(Bucket=os.environ["BUCKET"], Key=marker, Body=b"first attempt")
        sys.exit("rank 1 fails on its first attempt")
json.dump({"rank": rank}, open(os.environ["COSMICAI_RESULT_FILE"], "w"))
"""


def _mirror(root: Path) -> LocalS3Mirror:
    mirror = LocalS3Mirror(root)
    for i in range(2):
        path = mirror.path("cosmicai-data", f"parts/part-{i:05d}.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not read in script mode")
    for name, always in (("code", False), ("code-always", True)):
        code = mirror.path("cosmicai-runs", f"{name}/job.py")
        code.parent.mkdir(parents=True, exist_ok=True)
        code.write_text(f"ALWAYS = {always}\n{FAIL_ONCE}")
    return mirror


def _payload(result_path: str, code: str = "code", world_size: int = 2):
    return validate_payload(
        {
            "bucket": "cosmicai-runs",
            "data_bucket": "cosmicai-data",
            "data_prefix": "parts",
            "result_path": result_path,
            "S3_object_name": code,
            "script": "job.py",
            "world_size": world_size,
            "team": "metrics",
        }
    )


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalS3Mirror, str]:
    mirror = _mirror(tmp_path_factory.mktemp("home"))
    run = run_local(_payload("results/retry"), mirror=mirror)
    assert run.execution["status"] == "SUCCEEDED"
    return mirror, run.run_id


def _saved_reports(mirror: LocalS3Mirror, run_id: str) -> dict[str, list[ReportLine]]:
    """REPORT lines of each function's saved log, parsed independently of the collector."""
    reports = {}
    for path in mirror.path("cosmicai-runs", f"runs/{run_id}/logs").glob("*.jsonl"):
        messages = [json.loads(line)["message"] for line in path.read_text().splitlines()]
        parsed, problems = parse_report_lines(messages)
        assert problems == []
        reports[path.stem] = parsed
    return reports


# -- joining log events ------------------------------------------------------------------------


def _report(request_id: str, billed: int = 100, init: float | None = None) -> str:
    return ReportLine(request_id, billed - 0.5, billed, 1024, 99, init).format()


def _json(run_id: str, request_id: str, rank: int | None = None) -> str:
    fields = {"message": "rank started", "run_id": run_id, "request_id": request_id}
    return json.dumps(fields if rank is None else {**fields, "rank": rank})


def test_join_keeps_only_the_runs_request_ids_and_numbers_attempts() -> None:
    events = [
        LogEvent(1000, "s1", "START RequestId: a1 Version: $LATEST"),
        LogEvent(1001, "s1", _json("run-a", "a1", rank=0)),
        LogEvent(1002, "s1", "[ERROR] ScriptError: boom"),
        LogEvent(1500, "s1", _report("a1", init=12.5)),
        LogEvent(1100, "s2", "START RequestId: b1 Version: $LATEST"),
        LogEvent(1101, "s2", _json("run-b", "b1", rank=0)),
        LogEvent(1600, "s2", _report("b1")),
        LogEvent(2000, "s1", "START RequestId: a2 Version: $LATEST"),
        LogEvent(2001, "s1", _json("run-a", "a2", rank=0)),
        LogEvent(2500, "s1", _report("a2")),
        LogEvent(2600, "s3", "START RequestId: a3 Version: $LATEST"),
        LogEvent(2601, "s3", _json("run-a", "a3", rank=1)),  # its REPORT has not arrived yet
        LogEvent(2700, "s3", "REPORT RequestId: zz\tDuration: lots"),
    ]
    found, pending, problems = join_events("executor", "fn-executor", events, "run-a")
    invocations = number_attempts(found)
    assert [(i.request_id, i.rank, i.attempt) for i in invocations] == [
        ("a1", 0, 1),
        ("a2", 0, 2),
    ]
    first = invocations[0]
    assert (first.start_s, first.end_s, first.cold_start) == (1.0, 1.5, True)
    assert first.report.billed_duration_ms == 100 and first.report.init_duration_ms == 12.5
    assert pending == {"a3"}
    assert len(problems) == 1 and "fn-executor" in problems[0] and "Duration" in problems[0]


# -- a local run with a retried rank -----------------------------------------------------------


def test_one_invocation_per_report_line_retries_included(local_run) -> None:
    mirror, run_id = local_run
    data = load_run(LocalRuns(mirror), run_id)
    reports = _saved_reports(mirror, run_id)
    assert data.problems == []
    assert sorted(i.request_id for i in data.invocations) == sorted(
        r.request_id for lines in reports.values() for r in lines
    )
    assert [(i.role, i.rank, i.attempt) for i in data.invocations if i.role != "executor"] == [
        ("init", None, 1),
        ("summarize", None, 1),
    ]
    executor = sorted((i.rank, i.attempt) for i in data.role("executor"))
    assert executor == [(0, 1), (1, 1), (1, 2)]
    # the rank records name the request id of each rank's successful attempt
    by_rank = {r["rank"]: r["request_id"] for r in data.ranks}
    for inv in data.role("executor"):
        assert data.attempt_failed(inv) == (by_rank[inv.rank] != inv.request_id)
    assert sum(data.attempt_failed(i) for i in data.invocations) == 1
    for inv in data.invocations:
        assert inv.start_s is not None and inv.start_s <= inv.end_s
        assert inv.report.memory_size_mb == FUNCTIONS[inv.role].memory_mb
    assert data.overview()["failed_attempts"] == 1


def test_cost_equals_a_hand_computation_from_the_report_lines(local_run) -> None:
    mirror, run_id = local_run
    data = load_run(LocalRuns(mirror), run_id)
    cost = cost_of_run(data)
    ephemeral_gb = {
        f"cosmicai-{role}": (f.ephemeral_storage_mb - 512) / 1024 for role, f in FUNCTIONS.items()
    }
    lambda_usd = sum(
        r.billed_duration_ms / 1000 * r.memory_size_mb / 1024 * X86_GB_S
        + r.billed_duration_ms / 1000 * ephemeral_gb[function] * EPHEMERAL_GB_S
        + REQUEST
        for function, lines in _saved_reports(mirror, run_id).items()
        for r in lines
    )
    # parent: Init, Ranks, Summarize, Outcome, RunSucceeded; the Map starts 2 children;
    # children: rank 0 Execute once, rank 1 Execute twice (one retry)
    transitions = 5 + 2 + (1 + 2)
    # client 3 PUTs (2 claims, payload) + 3 HEAD; init 1 GET, 1 LIST, 1 PUT; Map 1 GET,
    # manifest + results PUTs;
    # 3 executor attempts: (HEAD+GET data, LIST code, HEAD+GET code) each, 2 rank records;
    # summarize 2 LISTs, 2 GETs, 3 PUTs
    puts = 3 + 2 + 2 + (3 + 2) + 5
    gets = 3 + 1 + 1 + 3 * 4 + 2
    expected = lambda_usd + transitions * TRANSITION + puts * PUT + gets * GET
    assert cost.transitions == {"parent": 5, "map_children_started": 2, "children": 3}
    assert (cost.usage.s3_puts, cost.usage.s3_gets) == (puts, gets)
    assert cost.total_usd == pytest.approx(expected, rel=1e-9)
    assert cost.breakdown.by_service()["lambda"] == pytest.approx(lambda_usd, rel=1e-9)


def test_express_children_are_priced_per_request_and_duration(local_run) -> None:
    mirror, run_id = local_run
    data = load_run(LocalRuns(mirror), run_id)
    cost = cost_of_run(data, workflow="express")
    child_ms = 0
    for rank in (0, 1):
        attempts = [i for i in data.role("executor") if i.rank == rank]
        first = min(i.start_s - (i.report.init_duration_ms or 0) / 1000 for i in attempts)
        last = max(i.end_s for i in attempts)
        child_ms += math.ceil((last - first) * 10) * 100
    assert cost.transitions == {"parent": 5, "map_children_started": 2, "children": 0}
    by_label = {item.component: item.cost_usd for item in cost.breakdown.items}
    assert by_label["standard state transitions"] == pytest.approx(7 * TRANSITION)
    assert by_label["express requests"] == pytest.approx(2 * EXPRESS_REQUEST)
    assert by_label["express duration (64 MB)"] == pytest.approx(
        child_ms / 1000 * 64 / 1024 * EXPRESS_GB_S
    )


def test_a_rank_that_fails_for_good_costs_its_failure_states(tmp_path: Path) -> None:
    mirror = _mirror(tmp_path)
    run = run_local(_payload("results/always", code="code-always"), mirror=mirror)
    data = load_run(LocalRuns(mirror), run.run_id)
    assert data.status == "failed" and "rank 1 failed: ScriptError" in data.message
    assert sorted(data.failures) == [1]
    attempts = 1 + RANK_MAX_RETRIES
    assert sorted((i.rank, i.attempt, data.attempt_failed(i)) for i in data.role("executor")) == [
        (0, 1, False),
        *((1, attempt, True) for attempt in range(1, attempts + 1)),
    ]
    cost = cost_of_run(data)
    # children: rank 0 Execute; rank 1 Execute at every attempt, then RecordFailure, RankFailed
    assert cost.transitions == {
        "parent": 5,
        "map_children_started": 2,
        "children": 1 + attempts + 2,
    }
    # as the successful run with one LIST per executor attempt and one rank record, plus a
    # FAILED result file and the failure; GETs: client 3, init 2, executor attempts 4 each,
    # summarize 2
    puts = 3 + 2 + 2 + ((1 + attempts) + 1) + 5 + 1 + 1
    gets = 3 + 2 + (1 + attempts) * 4 + 2
    assert (cost.usage.s3_puts, cost.usage.s3_gets) == (puts, gets)


def test_a_run_that_fails_in_init_still_reports(tmp_path: Path) -> None:
    mirror = _mirror(tmp_path)
    run = run_local(_payload("results/too-many", world_size=8), mirror=mirror)
    data = load_run(LocalRuns(mirror), run.run_id)
    assert data.status == "failed" and data.summary is None and data.items == []
    assert data.message.startswith("init failed: NoDataError: world_size 8 is larger")
    assert "stackTrace" not in data.message and "File " not in data.message
    cost = cost_of_run(data)
    assert cost.transitions == {"parent": 1, "map_children_started": 0, "children": 0}
    html = render_html(data, cost)
    assert "FAILED" in html and "world_size 8 is larger than the number" in html


# -- a platform read with boto3 (the AWS code path), with runs sharing log groups --------------


def _mirror_run(target, mirror: LocalS3Mirror, run_id: str, execution: dict) -> None:
    """Keep a run as `run_local` keeps it (objects, logs, execution record)."""
    mirror.download(target.client("s3"), "cosmicai-runs", f"runs/{run_id}/")
    save_logs(target, mirror, "cosmicai-runs", run_id)
    record = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in execution.items()}
    record.pop("ResponseMetadata", None)
    mirror.path("cosmicai-runs", f"runs/{run_id}/execution.json").write_text(json.dumps(record))


def test_cloud_store_reads_the_same_invocations_and_history_confirms_the_count(
    tmp_path: Path,
) -> None:
    mirror = _mirror(tmp_path / "home")
    with LocalCloud() as cloud:
        target = cloud.deploy()
        runs = []
        for name in ("results/one", "results/two"):
            payload = _payload(name)
            upload_inputs(target, payload, mirror)
            run_id, arn = start_run(target, payload, claims=MirrorClaims(mirror))
            runs.append((run_id, follow(target, run_id, arn, payload.bucket, timeout_s=180)))
        store = CloudRuns(target, settle_s=0)
        for run_id, execution in runs:
            assert execution["status"] == "SUCCEEDED"
            data = load_run(store, run_id)
            _mirror_run(target, mirror, run_id, execution)
            local = load_run(LocalRuns(mirror), run_id)
            # both runs logged to the same groups: each keeps its own 5 invocations
            assert len(data.invocations) == 5
            assert data.invocations == local.invocations
            assert data.history == fetch_history(
                target.client("stepfunctions"), execution["executionArn"]
            )
            # the parent's count from its history equals the state machine path's count
            assert parent_transitions(data.history) == template_parent_transitions(local) == 5
            assert data.map_execution_type == "standard"
            assert cost_of_run(data).total_usd == pytest.approx(cost_of_run(local).total_usd)
        all_ids = {i.request_id for run_id, _ in runs for i in load_run(store, run_id).invocations}
        assert len(all_ids) == 10
        assert store.run_ids() == [run_id for run_id, _ in reversed(runs)]
