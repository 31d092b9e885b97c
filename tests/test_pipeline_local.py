"""The state machine, the three functions and the run client, executed on the local cloud.

Script-mode payloads keep these fast (no model); engine mode is covered by the demo test.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from cosmicai.defaults import RANK_MAX_RETRIES, FunctionSettings
from cosmicai.errors import CosmicAIError
from cosmicai.local_store import LocalS3Mirror
from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.localcloud.session import upload_inputs
from cosmicai.payload import validate_payload
from cosmicai.runner import check_fresh, follow, outcome_error, read_json, start_run
from cosmicai.target import Target

SCRIPT = """
import json, os, sys, time
rank = int(os.environ["RANK"])
mode = BEHAVIOUR.get(rank, "ok")
if mode == "fail":
    sys.exit("rank %d cannot read its data" % rank)
if mode == "slow":
    time.sleep(30)
paths = os.environ["DATA_PATHS"].split(os.pathsep)
json.dump({"rank": rank, "world_size": int(os.environ["WORLD_SIZE"]),
           "files": [os.path.basename(p) for p in paths], "batch": int(os.environ["BATCH_SIZE"])},
          open(os.environ["COSMICAI_RESULT_FILE"], "w"))
"""


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> LocalS3Mirror:
    mirror = LocalS3Mirror(tmp_path_factory.mktemp("home"))
    for i in range(4):
        path = mirror.path("cosmicai-data", f"parts/part-{i:05d}.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not read in script mode %d" % i)
    for name, behaviour in (
        ("code-alpha", {}),
        ("code-beta", {}),
        ("code-gamma", {1: "fail"}),
        ("code-slow", {0: "slow"}),
    ):
        code = mirror.path("cosmicai-runs", f"{name}/job.py")
        code.parent.mkdir(parents=True, exist_ok=True)
        code.write_text(f"BEHAVIOUR = {behaviour!r}\n{SCRIPT}")
    return mirror


def payload(team: str, code: str | None = None, **extra):
    return validate_payload(
        {
            "bucket": "cosmicai-runs",
            "data_bucket": "cosmicai-data",
            "data_prefix": "parts",
            "result_path": f"results/{team}",
            "S3_object_name": code or f"code-{team}",
            "script": "job.py",
            "team": team,
            "batch_size": "64",
            **extra,
        }
    )


def run(target: Target, mirror: LocalS3Mirror, p, **kwargs) -> tuple[str, dict, dict | None]:
    upload_inputs(target, p, mirror)
    run_id, arn = start_run(target, p, **kwargs)
    execution = follow(target, run_id, arn, p.bucket, p.world_size, poll_s=0.5, timeout_s=240)
    s3 = target.client("s3")
    summary = read_json(s3, p.bucket, f"runs/{run_id}/summary.json")
    return run_id, execution, summary


def test_two_concurrent_runs_of_different_teams_do_not_touch_each_other(
    target: Target, mirror: LocalS3Mirror
) -> None:
    results: dict[str, tuple] = {}

    def go(team: str) -> None:
        results[team] = run(target, mirror, payload(team, world_size=2))

    threads = [threading.Thread(target=go, args=(team,)) for team in ("alpha", "beta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s3 = target.client("s3")
    for team in ("alpha", "beta"):
        run_id, execution, summary = results[team]
        assert execution["status"] == "SUCCEEDED"
        assert summary["status"] == "succeeded" and summary["ranks_succeeded"] == 2
        assert summary["team"] == team
        combined = read_json(s3, "cosmicai-runs", f"results/{team}/combined_data.json")
        assert [r["rank"] for r in combined] == [0, 1]
        assert all(r["run_id"] == run_id for r in combined)
        # balanced, order-preserving assignment: rank 0 has files 0-1, rank 1 has files 2-3
        assert [r["script_result"]["files"] for r in combined] == [
            ["00000-part-00000.safetensors", "00001-part-00001.safetensors"],
            ["00000-part-00002.safetensors", "00001-part-00003.safetensors"],
        ]
        assert combined[0]["script_result"]["batch"] == 64
        keys = [
            o["Key"]
            for o in s3.list_objects_v2(Bucket="cosmicai-runs", Prefix=f"runs/{run_id}/")[
                "Contents"
            ]
        ]
        assert all(k.startswith(f"runs/{run_id}/") for k in keys)
    assert results["alpha"][0] != results["beta"][0]


def test_failing_rank_is_retried_then_named(target: Target, mirror: LocalS3Mirror) -> None:
    run_id, execution, summary = run(target, mirror, payload("gamma", world_size=2))
    assert execution["status"] == "FAILED"
    assert summary["status"] == "failed"
    assert summary["ranks_succeeded"] == 1 and summary["ranks_failed"] == 1
    assert summary["failed_ranks"][0]["rank"] == 1
    assert summary["failed_ranks"][0]["error"] == "ScriptError"
    assert "rank 1 cannot read its data" in summary["failed_ranks"][0]["cause"]
    error = outcome_error(summary, execution)
    assert error is not None and "rank 1 failed: ScriptError" in str(error)
    # rank 1 ran once plus the platform's retries, rank 0 once
    logs = target.client("logs").filter_log_events(
        logGroupName="/aws/lambda/cosmicai-executor", filterPattern=f'"{run_id}"'
    )["events"]
    ranks_started = [
        json.loads(e["message"])["rank"] for e in logs if '"rank started"' in e["message"]
    ]
    assert sorted(ranks_started) == [0] + [1] * (1 + RANK_MAX_RETRIES)


def test_failure_within_tolerance_is_partial(target: Target, mirror: LocalS3Mirror) -> None:
    p = payload(
        "gamma",
        code="code-gamma",
        world_size=2,
        tolerated_failure_percentage=50,
        result_path="results/gamma-tolerant",
    )
    _, _, summary = run(target, mirror, p)
    assert summary["status"] == "partial"


def test_rank_timeout_is_reported(cloud: LocalCloud, mirror: LocalS3Mirror) -> None:
    short = cloud.deploy(
        prefix="short", functions={"executor": FunctionSettings(memory_mb=1024, timeout_s=3)}
    )
    _, _execution, summary = run(short, mirror, payload("slow", world_size=2))
    assert summary["status"] == "failed"
    (failure,) = summary["failed_ranks"]
    assert failure["rank"] == 0 and failure["error"] == "Sandbox.Timedout"
    assert "Task timed out after 3.00 seconds" in failure["cause"]


def test_completed_run_id_and_result_path_are_not_reused(
    target: Target, mirror: LocalS3Mirror
) -> None:
    p = payload("alpha", world_size=1, result_path="results/once")
    run_id, execution, _ = run(target, mirror, p)
    assert execution["status"] == "SUCCEEDED"
    exists = _s3_exists(target)
    with pytest.raises(CosmicAIError, match="already completed"):
        check_fresh(p, run_id, exists, overwrite=False)
    with pytest.raises(CosmicAIError, match="already holds results"):
        start_run(target, p)
    again, execution, summary = run(target, mirror, p, run_id=run_id, overwrite=True)
    assert (
        again == run_id and execution["status"] == "SUCCEEDED" and summary["status"] == "succeeded"
    )


def _s3_exists(target: Target):
    from cosmicai.claims import S3Claims

    return S3Claims(target).exists


def test_world_size_above_file_count_fails_in_init(target: Target, mirror: LocalS3Mirror) -> None:
    p = payload("alpha", world_size=8, result_path="results/too-many")
    upload_inputs(target, p, mirror)
    run_id, arn = start_run(target, p)
    execution = follow(target, run_id, arn, p.bucket, poll_s=0.5, timeout_s=120)
    assert execution["status"] == "FAILED"
    assert execution["error"] == "NoDataError"
    assert "world_size 8 is larger than the number of partition files (4)" in execution["cause"]


def test_missing_local_data_is_an_actionable_error(target: Target, tmp_path: Path) -> None:
    with pytest.raises(CosmicAIError, match="no local data at s3://cosmicai-data/parts/"):
        upload_inputs(target, payload("alpha"), LocalS3Mirror(tmp_path))
