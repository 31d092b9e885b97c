"""`cosmicai redrive RUN_ID`: re-run only the ranks of a failed run that have no result.

A script-mode run of world size 2 whose rank 1 fails (every attempt) until a marker object exists
under the run's prefix: the first execution fails, the test leaves the marker in the local store,
and the redrive (a new execution of the same state machine on a fresh local cloud, which gets
the run's objects uploaded) re-runs rank 1 alone and succeeds.
"""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from cosmicai.claims import ClaimedError, claim_body
from cosmicai.cli.main import main
from cosmicai.defaults import RANK_MAX_RETRIES
from cosmicai.errors import CosmicAIError
from cosmicai.local_store import LocalS3Mirror, MirrorClaims
from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.localcloud.session import redrive_local, run_local
from cosmicai.payload import Payload, validate_payload
from cosmicai.pipeline.layout import RunLayout, result_claim_key
from cosmicai.report_html import render_html
from cosmicai.run_cost import cost_of_run
from cosmicai.run_metrics import load_run
from cosmicai.run_store import LocalRuns
from cosmicai.runner import step_functions_can_redrive
from cosmicai.target import Target

BUCKET = "cosmicai-runs"
RESULT_PATH = "results/redrive"
WAITS_FOR_MARKER = """
import json, os, sys
import boto3
rank = int(os.environ["RANK"])
if rank == 1:
    try:
        boto3.client("s3").head_object(
            Bucket=os.environ["BUCKET"], Key="runs/%s/go" % os.environ["RUN_ID"])
    except Exception:
        sys.exit("rank 1 waits for its marker")
json.dump({"rank": rank}, open(os.environ["COSMICAI_RESULT_FILE"], "w"))
"""
FIRST_ATTEMPTS = 1 + RANK_MAX_RETRIES  # rank 1's attempts in the first execution


def _payload(world_size: int = 2, result_path: str = RESULT_PATH) -> Payload:
    return validate_payload(
        {
            "bucket": BUCKET,
            "data_bucket": "cosmicai-data",
            "data_prefix": "parts",
            "result_path": result_path,
            "S3_object_name": "code",
            "script": "job.py",
            "world_size": world_size,
            "team": "redrive",
        }
    )


def _inputs(mirror: LocalS3Mirror, files: int) -> None:
    """`files` partitions (never read in script mode) and the script, in the local store."""
    for i in range(files):
        path = mirror.path("cosmicai-data", f"parts/part-{i:05d}.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not read in script mode")
    code = mirror.path(BUCKET, "code/job.py")
    code.parent.mkdir(parents=True, exist_ok=True)
    code.write_text(WAITS_FOR_MARKER)


def _ranks_started(mirror: LocalS3Mirror, run_id: str) -> list[int]:
    """The rank of every executor invocation of the run, from its saved logs."""
    path = mirror.path(BUCKET, RunLayout(run_id).log_key("cosmicai-executor"))
    messages = [json.loads(line)["message"] for line in path.read_text().splitlines()]
    records = [json.loads(m) for m in messages if m.startswith("{")]
    return sorted(
        r["rank"] for r in records if r.get("message") == "rank started" and r["run_id"] == run_id
    )


@dataclass(frozen=True)
class Failed:
    """The failed run, and a copy of the local store as it left it (for tests to change)."""

    run_id: str
    pristine: Path

    def store(self, tmp_path: Path) -> LocalS3Mirror:
        shutil.copytree(self.pristine, tmp_path / "home")
        return LocalS3Mirror(tmp_path / "home")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def failed(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Failed:
    mirror = LocalS3Mirror(home)
    _inputs(mirror, files=2)
    run = run_local(_payload(), mirror=mirror)
    assert run.execution["status"] == "FAILED"
    assert run.summary is not None and run.summary["status"] == "failed"
    assert _ranks_started(mirror, run.run_id) == [0] + [1] * FIRST_ATTEMPTS
    pristine = tmp_path_factory.mktemp("pristine") / "home"
    shutil.copytree(home, pristine)
    return Failed(run.run_id, pristine)


@dataclass(frozen=True)
class Redriven:
    run_id: str
    mirror: LocalS3Mirror
    exit_code: int
    output: str


@pytest.fixture(scope="module")
def redriven(failed: Failed, home: Path) -> Redriven:
    """The failed run, its marker left, redriven with the CLI (`cosmicai redrive RUN_ID`)."""
    mirror = LocalS3Mirror(home)
    mirror.path(BUCKET, f"runs/{failed.run_id}/go").write_bytes(b"rank 1 may succeed now")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out):
        patch.setenv("COSMICAI_HOME", str(home))
        code = main(["redrive", failed.run_id])
    return Redriven(failed.run_id, mirror, code, out.getvalue())


def _pristine(failed: Failed, key: str) -> bytes:
    return (failed.pristine / "s3" / BUCKET / key).read_bytes()


# -- the redrive ---------------------------------------------------------------------------------


def test_the_cli_redrives_and_prints_the_results_table(redriven: Redriven) -> None:
    assert redriven.exit_code == 0, redriven.output
    assert f"run {redriven.run_id}: SUCCEEDED — 2/2 ranks" in redriven.output
    assert "cost of run" in redriven.output and "report:" in redriven.output


def test_only_the_rank_without_a_result_runs_again(failed: Failed, redriven: Redriven) -> None:
    assert _ranks_started(redriven.mirror, redriven.run_id) == [0] + [1] * (FIRST_ATTEMPTS + 1)
    layout = RunLayout(redriven.run_id)
    items = json.loads(_pristine(failed, layout.items_key))
    redrive_items = redriven.mirror.path(BUCKET, layout.redrive_items_key(1)).read_text()
    assert json.loads(redrive_items) == [items[1]]  # same rank, same files
    # rank 0's record is untouched, rank 1's failure record is gone
    assert redriven.mirror.path(BUCKET, layout.rank_key(0)).read_bytes() == _pristine(
        failed, layout.rank_key(0)
    )
    assert (failed.pristine / "s3" / BUCKET / layout.failure_key(1)).is_file()
    assert not redriven.mirror.exists(BUCKET, layout.failure_key(1))


def test_the_summary_combines_every_rank(redriven: Redriven) -> None:
    mirror, run_id = redriven.mirror, redriven.run_id
    summary = json.loads(mirror.path(BUCKET, f"{RESULT_PATH}/summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["ranks_succeeded"] == 2
    assert summary["failed_ranks"] == [] and summary["world_size"] == 2
    combined = json.loads(mirror.path(BUCKET, f"{RESULT_PATH}/combined_data.json").read_text())
    assert [r["rank"] for r in combined] == [0, 1]
    assert all(r["run_id"] == run_id for r in combined)
    assert mirror.path(BUCKET, RunLayout(run_id).summary_key).read_text() == json.dumps(summary)


def test_records_keep_every_execution(failed: Failed, redriven: Redriven) -> None:
    mirror, layout = redriven.mirror, RunLayout(redriven.run_id)
    executions = json.loads(mirror.path(BUCKET, layout.executions_key).read_text())
    assert [(e["name"], e["status"]) for e in executions] == [
        (redriven.run_id, "FAILED"),
        (f"{redriven.run_id}-redrive-1", "SUCCEEDED"),
    ]
    assert json.loads(mirror.path(BUCKET, layout.execution_key).read_text()) == executions[-1]
    old_history = json.loads(_pristine(failed, layout.history_key))
    history = json.loads(mirror.path(BUCKET, layout.history_key).read_text())
    assert history[: len(old_history)] == old_history
    assert [e["type"] for e in history].count("ExecutionStarted") == 2
    # the local emulator has no RedriveExecution: the redrive is a new execution
    assert "redriveStatus" not in executions[0]


def test_the_report_numbers_attempts_across_executions(redriven: Redriven) -> None:
    data = load_run(LocalRuns(redriven.mirror), redriven.run_id)
    assert data.problems == [] and data.status == "succeeded"
    executor = sorted(
        (i.rank, i.attempt, i.execution, data.attempt_failed(i)) for i in data.role("executor")
    )
    assert executor == [
        (0, 1, 1, False),
        *((1, attempt, 1, True) for attempt in range(1, FIRST_ATTEMPTS + 1)),
        (1, FIRST_ATTEMPTS + 1, 2, False),
    ]
    # init and summarize ran once in each execution: neither attempt failed
    for role in ("init", "summarize"):
        assert [(i.attempt, i.execution, data.attempt_failed(i)) for i in data.role(role)] == [
            (1, 1, False),
            (1, 2, False),
        ]
    assert data.overview()["failed_attempts"] == FIRST_ATTEMPTS
    cost = cost_of_run(data)
    assert cost.transitions["parent"] == 2 * 5  # both executions' parent steps
    assert "<th>execution</th>" in render_html(data, cost)


# -- refusals ------------------------------------------------------------------------------------


def test_a_succeeded_run_is_refused(redriven: Redriven) -> None:
    with pytest.raises(CosmicAIError, match=f"run {redriven.run_id} succeeded: nothing to redrive"):
        redrive_local(redriven.run_id, mirror=redriven.mirror)


def test_an_unknown_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CosmicAIError, match="no local run redrive-20260101-000000-abcdef"):
        redrive_local("redrive-20260101-000000-abcdef", mirror=LocalS3Mirror(tmp_path))


def test_a_running_run_is_refused(failed: Failed, tmp_path: Path) -> None:
    """A redrive in progress: the run's claim names a live process and an execution that has no
    record yet (as a running local run's claim does)."""
    mirror = failed.store(tmp_path)
    claims, key = MirrorClaims(mirror), RunLayout(failed.run_id).claim_key
    held = claims.read(BUCKET, key)
    busy = claim_body(_payload(), failed.run_id, held.body["execution_arn"] + "-redrive-1")
    assert claims.replace(BUCKET, key, held, busy) is None
    with pytest.raises(CosmicAIError, match=f"run {failed.run_id} is still running: wait for it"):
        redrive_local(failed.run_id, mirror=mirror)


def test_a_result_path_claimed_since_by_another_run_is_refused(
    failed: Failed, tmp_path: Path
) -> None:
    mirror = failed.store(tmp_path)
    claims, key = MirrorClaims(mirror), result_claim_key(_payload().result_prefix)
    other = claim_body(_payload(), "other-20260101-000000-abcdef", "arn:other")
    assert claims.replace(BUCKET, key, claims.read(BUCKET, key), other) is None
    own = claims.read(BUCKET, RunLayout(failed.run_id).claim_key)
    with pytest.raises(ClaimedError, match=f"'{RESULT_PATH}' is claimed by run other-2026"):
        redrive_local(failed.run_id, mirror=mirror)
    assert claims.read(BUCKET, RunLayout(failed.run_id).claim_key) == own


def test_the_redrive_took_the_runs_own_claims_over(failed: Failed, redriven: Redriven) -> None:
    """The redrive took its own claims over: they name its execution now."""
    claims = MirrorClaims(redriven.mirror)
    arn = json.loads(
        redriven.mirror.path(BUCKET, RunLayout(redriven.run_id).execution_key).read_text()
    )["executionArn"]
    for key in (RunLayout(redriven.run_id).claim_key, result_claim_key(RESULT_PATH)):
        held = claims.read(BUCKET, key)
        assert held.run_id == redriven.run_id and held.body["execution_arn"] == arn
        assert claims.finished(BUCKET, held)


def test_a_run_that_failed_in_init_is_planned_afresh(tmp_path: Path) -> None:
    """Init failed (too few files for the world size): once the data is there, the redrive plans
    and runs every rank."""
    mirror = LocalS3Mirror(tmp_path)
    _inputs(mirror, files=2)
    first = run_local(_payload(world_size=3, result_path="results/init"), mirror=mirror)
    assert first.summary is None and first.execution["status"] == "FAILED"
    _inputs(mirror, files=3)
    mirror.path(BUCKET, f"runs/{first.run_id}/go").write_bytes(b"go")
    run = redrive_local(first.run_id, mirror=mirror)
    assert run.summary is not None and run.summary["status"] == "succeeded"
    assert run.summary["ranks_succeeded"] == 3
    assert _ranks_started(mirror, first.run_id) == [0, 1, 2]
    items = json.loads(mirror.path(BUCKET, RunLayout(first.run_id).items_key).read_text())
    assert [item["rank"] for item in items] == [0, 1, 2]


# -- the AWS code path, with a live local cloud standing in for AWS -----------------------------


def test_aws_code_path_redrives_with_a_new_execution(
    tmp_path: Path, aws_standin: tuple[LocalCloud, Target], capsys: pytest.CaptureFixture[str]
) -> None:
    """`run/redrive/status/report --aws`: one state machine, S3 claims, CloudWatch Logs."""
    cloud, target = aws_standin
    s3 = target.client("s3")
    for i in range(2):
        s3.put_object(Bucket="cosmicai-data", Key=f"parts/part-{i}.safetensors", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="code/job.py", Body=WAITS_FOR_MARKER.encode())
    (tmp_path / "payload.json").write_text(json.dumps(_payload().to_dict()))
    flags = ["--aws", "--state-machine-arn", target.state_machine_arn,
             "--bucket", BUCKET, "--region", cloud.region]  # fmt: skip
    assert main(["run", str(tmp_path / "payload.json"), *flags, "--json"]) == 1
    out = capsys.readouterr().out
    run_id = json.loads(out[out.index("{") :])["summary"]["run_id"]
    s3.put_object(Bucket=BUCKET, Key=f"runs/{run_id}/go", Body=b"go")
    assert main(["resume", run_id, *flags, "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{") :])
    assert result["execution"]["name"] == f"{run_id}-redrive-1"
    assert result["summary"]["status"] == "succeeded"
    assert main(["status", run_id, *flags, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["execution_status"] == "SUCCEEDED"
    assert main(["report", run_id, *flags, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["redrive", run_id, *flags]) == 1
    assert "succeeded: nothing to redrive" in capsys.readouterr().err
    executor = sorted(
        (i["rank"], i["attempt"], i["execution"], i["failed"])
        for i in report["invocations"]
        if i["role"] == "executor"
    )
    assert executor == [
        (0, 1, 1, False),
        *((1, attempt, 1, True) for attempt in range(1, FIRST_ATTEMPTS + 1)),
        (1, FIRST_ATTEMPTS + 1, 2, False),
    ]
    assert report["cost"]["state_transitions"]["parent"] == 2 * 5


# -- when Step Functions' own RedriveExecution applies (AWS) -------------------------------------


def test_redrive_execution_applies_only_to_a_run_stopped_before_summarize(failed: Failed) -> None:
    layout = RunLayout(failed.run_id)
    history = json.loads(_pristine(failed, layout.history_key))
    record = json.loads(_pristine(failed, layout.execution_key))
    redrivable = {**record, "redriveStatus": "REDRIVABLE"}  # what AWS's describe_execution adds
    # it failed in the final RunFailed state: Summarize ran, so a redrive-mode execution is due
    assert not step_functions_can_redrive(redrivable, reversed(history))
    entered = [e.get("stateEnteredEventDetails", {}).get("name") for e in history]
    in_ranks = history[: entered.index("Summarize")]  # as if it had failed in the Map
    assert step_functions_can_redrive(redrivable, reversed(in_ranks))
    for status in ("TIMED_OUT", "ABORTED"):
        assert step_functions_can_redrive({**redrivable, "status": status}, [])
    assert not step_functions_can_redrive({**record, "status": "ABORTED"}, [])
    not_redrivable = {**redrivable, "redriveStatus": "NOT_REDRIVABLE"}
    assert not step_functions_can_redrive(not_redrivable, reversed(in_ranks))
