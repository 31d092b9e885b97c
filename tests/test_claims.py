"""Runs claim their run id and result_path atomically: of concurrent starts exactly one wins.

The S3 claims run against a real moto server (conditional writes), the local store's claims
against real files, from threads and from separate processes. Executions start on a state
machine that waits an hour, so a run stays RUNNING until the test stops it.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from cosmicai.claims import STARTING_GRACE_S, ClaimedError, Claims, S3Claims
from cosmicai.errors import CosmicAIError
from cosmicai.local_store import LocalS3Mirror, MirrorClaims
from cosmicai.localcloud.session import run_local
from cosmicai.payload import Payload, validate_payload
from cosmicai.pipeline.layout import RunLayout, result_claim_key
from cosmicai.pipeline.s3objects import iter_objects
from cosmicai.runner import start_run
from cosmicai.target import Target

BUCKET = "claims-runs"
WAIT_AN_HOUR = {
    "StartAt": "Wait",
    "States": {"Wait": {"Type": "Wait", "Seconds": 3600, "End": True}},
}


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    bare = Target(
        kind="aws",
        region="us-east-1",
        runs_bucket=BUCKET,
        state_machine_arn="",
        functions={},
        endpoint_url=f"http://{host}:{port}",
        credentials={"aws_access_key_id": "testing", "aws_secret_access_key": "testing"},
    )
    bare.client("s3").create_bucket(Bucket=BUCKET)
    machine = bare.client("stepfunctions").create_state_machine(
        name="claims-run",
        definition=json.dumps(WAIT_AN_HOUR),
        roleArn="arn:aws:iam::123456789012:role/claims",
    )
    yield dataclasses.replace(bare, state_machine_arn=machine["stateMachineArn"])
    server.stop()


@pytest.fixture
def mirror(tmp_path: Path) -> LocalS3Mirror:
    return LocalS3Mirror(tmp_path / "home")


@pytest.fixture(params=["s3", "mirror"])
def claims(request: pytest.FixtureRequest, target: Target, mirror: LocalS3Mirror) -> Claims:
    return S3Claims(target) if request.param == "s3" else MirrorClaims(mirror)


def payload(result_path: str, **extra: Any) -> Payload:
    return validate_payload(
        {
            "bucket": BUCKET,
            "data_bucket": "claims-data",
            "data_prefix": "parts",
            "result_path": result_path,
            "S3_object_name": "code",
            "script": "job.py",
            "team": "claims",
            **extra,
        }
    )


def body(run_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "team": "t",
        "created": datetime.now(UTC).isoformat(),
        "execution_arn": f"arn:aws:states:us-east-1:123456789012:execution:claims-run:{run_id}",
        **extra,
    }


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released at the same moment; their results or exceptions."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[Any] = [None] * len(calls)

    def go(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = calls[i]()
        except Exception as err:  # the outcome under test
            outcomes[i] = err

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def stored_keys(target: Target, claims: Claims, prefix: str) -> list[str]:
    """Keys under a prefix where the run's objects (and, locally, its claims) would be."""
    keys = [o["Key"] for o in iter_objects(target.client("s3"), BUCKET, prefix)]
    if isinstance(claims, MirrorClaims):
        keys += list(claims.mirror.keys(BUCKET, prefix))
    return keys


def execution_names(target: Target) -> set[str]:
    sfn = target.client("stepfunctions")
    listed = sfn.list_executions(stateMachineArn=target.state_machine_arn)["executions"]
    return {e["name"] for e in listed}


def finish(target: Target, claims: Claims, run_id: str, arn: str) -> None:
    """End a run: stop its execution and, locally, keep its record as `run_local` does."""
    sfn = target.client("stepfunctions")
    sfn.stop_execution(executionArn=arn)
    if isinstance(claims, MirrorClaims):
        record = sfn.describe_execution(executionArn=arn)
        record = {k: str(v) for k, v in record.items() if k != "ResponseMetadata"}
        path = claims.mirror.path(BUCKET, RunLayout(run_id).execution_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))


# -- the claim itself -------------------------------------------------------------------------


def test_one_of_many_concurrent_claimers_wins(claims: Claims) -> None:
    key = "claims/result_paths/results/race.claim"
    outcomes = together([lambda i=i: claims.claim(BUCKET, key, body(f"run-{i}")) for i in range(8)])
    (winner,) = [f"run-{i}" for i, held in enumerate(outcomes) if held is None]
    assert all(held.run_id == winner for held in outcomes if held is not None)
    assert claims.read(BUCKET, key).run_id == winner


def _claim_in_process(root: str, i: int, barrier: Any, results: Any) -> None:
    claims = MirrorClaims(LocalS3Mirror(Path(root)))
    barrier.wait()
    held = claims.claim(BUCKET, "runs/shared/claim.json", body(f"proc-{i}"))
    results.put((i, None if held is None else held.run_id))


def test_one_of_many_processes_wins_a_local_claim(mirror: LocalS3Mirror) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [
        context.Process(
            target=_claim_in_process, args=(str(mirror.root.parent), i, barrier, results)
        )
        for i in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    (winner,) = [i for i, other in outcomes.items() if other is None]
    assert set(outcomes.values()) == {None, f"proc-{winner}"}
    held = MirrorClaims(mirror).read(BUCKET, "runs/shared/claim.json")
    assert held is not None and held.run_id == f"proc-{winner}"
    assert held.body["pid"] == processes[winner].pid
    assert held.body["hostname"] == socket.gethostname()
    assert list(mirror.keys(BUCKET, "runs/")) == ["runs/shared/claim.json"]  # no temp files left


def test_a_replace_loses_to_an_earlier_replace(claims: Claims) -> None:
    key = "claims/result_paths/results/replaced.claim"
    assert claims.claim(BUCKET, key, body("first")) is None
    first = claims.read(BUCKET, key)
    outcomes = together(
        [lambda i=i: claims.replace(BUCKET, key, first, body(f"next-{i}")) for i in range(4)]
    )
    (winner,) = [f"next-{i}" for i, held in enumerate(outcomes) if held is None]
    assert all(held.run_id == winner for held in outcomes if held is not None)


# -- start_run: one code path for S3 and the local store --------------------------------------


def test_concurrent_runs_sharing_a_result_path_start_one_execution(
    target: Target, claims: Claims, request: pytest.FixtureRequest
) -> None:
    tag = request.node.callspec.id
    shared = payload(f"results/shared-{tag}")
    run_ids = [f"{tag}-path-{i}" for i in range(3)]
    outcomes = together(
        [lambda r=r: start_run(target, shared, run_id=r, claims=claims) for r in run_ids]
    )
    ((winner, arn),) = [o for o in outcomes if isinstance(o, tuple)]
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(errors) == 2 and all(isinstance(e, ClaimedError) for e in errors)
    for error in errors:
        assert f"result_path 'results/shared-{tag}' is claimed by run {winner}" in str(error)
        assert "choose another result_path, or wait for that run and pass --overwrite" in str(error)
    assert arn.endswith(f":{winner}") and winner in execution_names(target)
    for loser in set(run_ids) - {winner}:
        assert stored_keys(target, claims, f"runs/{loser}/") == []
        assert loser not in execution_names(target)
    held = claims.read(BUCKET, result_claim_key(shared.result_prefix))
    assert held.run_id == winner and held.body["execution_arn"] == arn


def test_concurrent_runs_sharing_a_run_id_start_one_execution(
    target: Target, claims: Claims, request: pytest.FixtureRequest
) -> None:
    tag = request.node.callspec.id
    run_id = f"{tag}-shared-id"
    paths = [f"results/{tag}-id-{i}" for i in range(3)]
    outcomes = together(
        [lambda p=p: start_run(target, payload(p), run_id=run_id, claims=claims) for p in paths]
    )
    (won,) = [paths[i] for i, o in enumerate(outcomes) if isinstance(o, tuple)]
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(errors) == 2
    assert all(f"run id '{run_id}' is claimed by run {run_id}" in str(e) for e in errors)
    stored = json.loads(
        target.client("s3")
        .get_object(Bucket=BUCKET, Key=RunLayout(run_id).payload_key)["Body"]
        .read()
    )
    assert stored["result_path"] == won
    for lost in set(paths) - {won}:
        assert not claims.exists(BUCKET, result_claim_key(lost))
    assert run_id in execution_names(target)


def test_overwrite_replaces_only_a_finished_run(target: Target, claims: Claims) -> None:
    tag = "ow-s3" if isinstance(claims, S3Claims) else "ow-mirror"
    p = payload(f"results/{tag}")
    first, arn = start_run(target, p, run_id=f"{tag}-first", claims=claims)
    with pytest.raises(ClaimedError, match=f"claimed by run {first} .*, which is still running"):
        start_run(target, p, run_id=f"{tag}-second", overwrite=True, claims=claims)
    with pytest.raises(ClaimedError, match=f"run id '{first}' is claimed .* still running"):
        start_run(target, p, run_id=first, overwrite=True, claims=claims)
    finish(target, claims, first, arn)
    with pytest.raises(ClaimedError, match="or wait for that run and pass --overwrite"):
        start_run(target, p, run_id=f"{tag}-second", claims=claims)  # no --overwrite
    again, rerun_arn = start_run(target, p, run_id=first, overwrite=True, claims=claims)
    assert again == first and rerun_arn.split(":")[-1].startswith(f"{first}-")
    with pytest.raises(ClaimedError, match=f"claimed by run {first} .*still running"):
        start_run(target, p, run_id=f"{tag}-second", overwrite=True, claims=claims)
    assert stored_keys(target, claims, f"runs/{tag}-second/") == []
    finish(target, claims, first, rerun_arn)
    second, _ = start_run(target, p, run_id=f"{tag}-second", overwrite=True, claims=claims)
    held = claims.read(BUCKET, result_claim_key(p.result_prefix))
    assert held.run_id == second


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def _leave_claim(mirror: LocalS3Mirror, p: Payload, run_id: str, **process: Any) -> None:
    """A claim as a `cosmicai run` leaves it when its process dies before the run's end."""
    path = mirror.path(BUCKET, result_claim_key(p.result_prefix))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body(run_id, **process)))


def test_a_stale_local_claim_counts_as_finished(target: Target, mirror: LocalS3Mirror) -> None:
    claims, p = MirrorClaims(mirror), payload("results/stale")
    _leave_claim(mirror, p, "crashed-run", pid=_dead_pid(), hostname="elsewhere")
    with pytest.raises(ClaimedError, match=r"crashed-run .*still running"):  # cannot tell there
        start_run(target, p, run_id="stale-1", overwrite=True, claims=claims)
    _leave_claim(mirror, p, "crashed-run", pid=_dead_pid(), hostname=socket.gethostname())
    with pytest.raises(ClaimedError, match="is claimed by run crashed-run"):
        start_run(target, p, run_id="stale-1", claims=claims)
    run_id, _ = start_run(target, p, run_id="stale-1", overwrite=True, claims=claims)
    assert claims.read(BUCKET, result_claim_key(p.result_prefix)).run_id == run_id


def test_an_s3_claim_without_execution_is_starting_then_abandoned(target: Target) -> None:
    claims, p = S3Claims(target), payload("results/abandoned")
    arn = target.state_machine_arn.replace(":stateMachine:", ":execution:") + ":never-ran"
    key = result_claim_key(p.result_prefix)
    assert claims.claim(BUCKET, key, body("never-ran", execution_arn=arn)) is None
    with pytest.raises(ClaimedError, match=r"claimed by run never-ran .*still running"):
        start_run(target, p, run_id="abandoned-1", overwrite=True, claims=claims)
    long_ago = (datetime.now(UTC) - timedelta(seconds=STARTING_GRACE_S + 1)).isoformat()
    claims.release(BUCKET, key)
    assert claims.claim(BUCKET, key, body("never-ran", execution_arn=arn, created=long_ago)) is None
    run_id, _ = start_run(target, p, run_id="abandoned-1", overwrite=True, claims=claims)
    assert claims.read(BUCKET, key).run_id == run_id


def test_a_damaged_claim_is_an_actionable_error(target: Target, claims: Claims) -> None:
    p = payload("results/damaged")
    key = result_claim_key(p.result_prefix)
    assert claims.claim(BUCKET, key, {"run_id": "half"}) is None  # written by hand
    with pytest.raises(CosmicAIError, match=r"the claim .*damaged.claim is damaged: delete it"):
        start_run(target, p, run_id="damaged-1", claims=claims)
    assert not claims.exists(BUCKET, RunLayout("damaged-1").claim_key)


def test_a_run_that_cannot_start_releases_its_claims(target: Target, claims: Claims) -> None:
    gone = dataclasses.replace(target, state_machine_arn=target.state_machine_arn + "-gone")
    p = payload("results/never-started")
    with pytest.raises(ClientError) as raised:
        start_run(gone, p, run_id="never-started", claims=claims)
    assert raised.value.response["Error"]["Code"] == "StateMachineDoesNotExist"
    assert not claims.exists(BUCKET, RunLayout("never-started").claim_key)
    assert not claims.exists(BUCKET, result_claim_key(p.result_prefix))


# -- end to end: `cosmicai run` on the local cloud claims in the local store ------------------


def test_local_run_is_refused_by_a_running_claim_and_replaces_a_stale_one(tmp_path: Path) -> None:
    mirror = LocalS3Mirror(tmp_path / "home")
    data = mirror.path("claims-data", "parts/part-00000.safetensors")
    data.parent.mkdir(parents=True)
    data.write_bytes(b"unused in script mode")
    code = mirror.path(BUCKET, "code/job.py")
    code.parent.mkdir(parents=True)
    code.write_text(
        "import json, os\njson.dump({}, open(os.environ['COSMICAI_RESULT_FILE'], 'w'))\n"
    )
    p = payload("results/e2e", world_size=1)
    _leave_claim(mirror, p, "busy-run", pid=os.getpid(), hostname=socket.gethostname())
    with pytest.raises(ClaimedError, match="'results/e2e' is claimed by run busy-run"):
        run_local(p, run_id="e2e-run", mirror=mirror)
    assert list(mirror.keys(BUCKET, "runs/")) == []
    _leave_claim(mirror, p, "busy-run", pid=_dead_pid(), hostname=socket.gethostname())
    run = run_local(p, run_id="e2e-run", overwrite=True, mirror=mirror)
    assert run.summary is not None and run.summary["status"] == "succeeded"
    claims = MirrorClaims(mirror)
    for key in (RunLayout(run.run_id).claim_key, result_claim_key(p.result_prefix)):
        held = claims.read(BUCKET, key)
        assert held is not None and held.run_id == "e2e-run"
        assert held.body["execution_arn"] == run.execution["executionArn"]
        assert claims.finished(BUCKET, held)  # its execution record says it ended
