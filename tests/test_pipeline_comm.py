"""Collectives between ranks on the local cloud: FMI scripts run unchanged; a dead rendezvous
fails fast with host and port instead of running into the Lambda timeout."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import time
from pathlib import Path

import pytest

from cosmicai.local_store import LocalS3Mirror
from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.localcloud.session import upload_inputs
from cosmicai.payload import load_payload
from cosmicai.rendezvous.probe import RendezvousError
from cosmicai.runner import follow, read_json, start_run

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fmi_benchmark"


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> LocalS3Mirror:
    mirror = LocalS3Mirror(tmp_path_factory.mktemp("home"))
    for i in range(4):
        path = mirror.path("cosmicai-data", f"partitions/25MB/part-{i:05d}.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"unused by the benchmark")
    shutil.copytree(EXAMPLE, mirror.path("cosmicai-runs", "scripts/fmi_benchmark"))
    return mirror


@pytest.fixture(scope="module")
def cloud():
    with LocalCloud(communication=True) as cloud:
        yield cloud


def example_payload(**changes):
    payload = load_payload(EXAMPLE / "payload.json")
    return payload.model_copy(update=changes)


def test_fmi_script_runs_unchanged_at_world_size_4(
    cloud: LocalCloud, mirror: LocalS3Mirror
) -> None:
    target = cloud.deploy(environment={"FMI_BENCH_REPS": "2", "FMI_BENCH_S3_REPS": "1"})
    payload = example_payload(world_size=4, file_limit=4, max_concurrency=4)
    upload_inputs(target, payload, mirror)
    run_id, arn = start_run(target, payload)
    execution = follow(target, run_id, arn, payload.bucket, poll_s=1, timeout_s=400)
    summary = read_json(target.client("s3"), payload.bucket, f"runs/{run_id}/summary.json")
    assert execution["status"] == "SUCCEEDED", summary["message"]
    assert summary["ranks_succeeded"] == 4
    combined = read_json(target.client("s3"), payload.bucket, summary["combined_key"])
    result = combined[0]["script_result"]
    assert result["world_size"] == 4 and result["fmi_module"].endswith("fmi.py")  # the local shim
    ops = {(row["transport"], row["op"]) for row in result["rows"]}
    for op in ("barrier", "send_recv", "bcast", "gather", "allreduce"):
        assert ("fmi", op) in ops and ("s3", op) in ops
    assert json.dumps(result)  # plain JSON for the run summary


def test_run_is_refused_when_the_rendezvous_is_down(
    cloud: LocalCloud, mirror: LocalS3Mirror
) -> None:
    target = dataclasses.replace(
        cloud.deploy(prefix="refuse"), rendezvous=f"127.0.0.1:{dead_port()}"
    )
    started = time.monotonic()
    with pytest.raises(RendezvousError, match=r"rendezvous server at 127\.0\.0\.1:\d+"):
        start_run(target, example_payload(result_path="results/refused"))
    assert time.monotonic() - started < 10


def test_rank_gives_up_on_a_dead_rendezvous_within_the_deadline(
    cloud: LocalCloud, mirror: LocalS3Mirror
) -> None:
    port = dead_port()
    target = cloud.deploy(
        prefix="dead", environment={"RENDEZVOUS_PORT": str(port), "RENDEZVOUS_DEADLINE_S": "2"}
    )
    live = dataclasses.replace(
        target, rendezvous=f"127.0.0.1:{cloud.services['rendezvous']['port']}"
    )
    payload = example_payload(result_path="results/dead-rendezvous")
    upload_inputs(live, payload, mirror)
    run_id, arn = start_run(live, payload)
    follow(live, run_id, arn, payload.bucket, poll_s=1, timeout_s=120)
    summary = read_json(live.client("s3"), payload.bucket, f"runs/{run_id}/summary.json")
    assert summary["status"] == "failed"
    failure = summary["failed_ranks"][0]
    assert failure["error"] == "RendezvousError"
    assert f"127.0.0.1:{port}" in failure["cause"]
