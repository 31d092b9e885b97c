"""Script mode keeps the reference executor's contract, on the local cloud.

A reference-style script finds its code at `<tmp>/<S3_object_name>/` (Lambda's /tmp), reads the
reference's eleven variables, and writes its own record to DATA_BUCKET/RESULT_PATH/<rank>.json
with put_object; that record becomes the rank's entry in combined_data.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from cosmicai.defaults import FunctionSettings
from cosmicai.inference.partition_io import write_partition
from cosmicai.local_store import LocalS3Mirror
from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.localcloud.session import upload_inputs
from cosmicai.payload import validate_payload
from cosmicai.runner import follow, read_json, start_run
from cosmicai.target import Target

EXAMPLE = Path(__file__).parents[1] / "examples" / "reference_script"
CODE = "scripts/Anomaly Detection"  # the reference's folder name, space included
REFERENCE_VARIABLES = (
    "S3_BUCKET",
    "S3_OBJECT_NAME",
    "SCRIPT",
    "S3_OBJECT_TYPE",
    "WORLD_SIZE",
    "RANK",
    "DATA_BUCKET",
    "DATA_PREFIX",
    "DATA_PATH",
    "RESULT_PATH",
    "BATCH_SIZE",
)
# In the reference's style: everything from the environment, the record written by the script.
REFERENCE_SCRIPT = (
    f"VARIABLES = {REFERENCE_VARIABLES!r}\n"
    + """
import json, os, tempfile, boto3
name = os.environ["S3_OBJECT_NAME"]
folder = os.path.join(tempfile.gettempdir(), name)
view = "/tmp/" + name
rank = int(os.environ["RANK"])
record = {
    "total_cpu_time (seconds)": 2.0,
    "total_cpu_memory (MB)": 14320.25,
    "execution_time (seconds/batch)": 1.0,
    "num_batches": 4,
    "batch_size": int(os.environ["BATCH_SIZE"]),
    "device": "cpu",
    "throughput_bps": 28910559.6,
    "sample_persec": 50.0 + rank,
    "result_path": os.environ["RESULT_PATH"],
    "data_path": os.environ["DATA_PATH"],
    "seen": {k: os.environ.get(k) for k in VARIABLES},
    "cwd": os.getcwd(),
    "folder": folder,
    "helper_found": os.path.isfile(os.path.join(folder, "Plots", "helper.txt")),
    "tmp_view_same": os.path.samefile(view, folder) if os.path.exists(view) else None,
}
boto3.client("s3").put_object(
    Bucket=os.environ["DATA_BUCKET"],
    Key=os.environ["RESULT_PATH"] + "/" + str(rank) + ".json",
    Body=json.dumps(record),
    ContentType="application/json",
)
"""
)
BACKGROUND_SCRIPT = """
import os
os.system("sleep 600 &")  # a child that keeps the script's stdout and stderr open
print("started a background sleep")
"""


PICKLE_SCRIPT = """
import json, os, torch
torch.save(torch.nn.Linear(2, 1), "whole_model.pt")  # like the published whole-model pickle
model = torch.load("whole_model.pt")  # the reference's call, without weights_only
json.dump({"loaded": type(model).__name__}, open(os.environ["COSMICAI_RESULT_FILE"], "w"))
"""


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> LocalS3Mirror:
    mirror = LocalS3Mirror(tmp_path_factory.mktemp("home"))
    for i in range(4):
        path = mirror.path("cosmicai-data", f"parts/part-{i:05d}.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not read by these scripts %d" % i)
    for key, text in (
        (f"{CODE}/Inference/inference.py", REFERENCE_SCRIPT),
        (f"{CODE}/Plots/helper.txt", "a file beside the script\n"),
        ("scripts/background/job.py", BACKGROUND_SCRIPT),
        ("scripts/pickle/job.py", PICKLE_SCRIPT),
    ):
        path = mirror.path("cosmicai-runs", key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    generator = torch.Generator().manual_seed(0)
    for i, n in enumerate((5, 4)):
        write_partition(
            mirror.path("cosmicai-data", f"small/part-{i:05d}.safetensors"),
            torch.rand(n, 5, 32, 32, generator=generator),
            torch.rand(n, 5, generator=generator) * 5 + 18,
            torch.rand(n, generator=generator),
        )
    example = mirror.path("cosmicai-runs", "scripts/example/Inference/inference.py")
    example.parent.mkdir(parents=True)
    example.write_text((EXAMPLE / "Inference" / "inference.py").read_text())
    return mirror


def _run(target: Target, mirror: LocalS3Mirror, **settings) -> tuple[str, dict, list]:
    payload = validate_payload(
        {
            "bucket": "cosmicai-runs",
            "data_bucket": "cosmicai-data",
            "data_prefix": "parts",
            "team": "ref",
            "batch_size": "32",
            **settings,
        }
    )
    upload_inputs(target, payload, mirror)
    run_id, arn = start_run(target, payload)
    execution = follow(target, run_id, arn, payload.bucket, payload.world_size, poll_s=0.5)
    s3 = target.client("s3")
    summary = read_json(s3, payload.bucket, f"runs/{run_id}/summary.json")
    assert execution["status"] == "SUCCEEDED", json.dumps(summary or execution, default=str)
    combined = read_json(s3, payload.bucket, f"{payload.result_path}/combined_data.json")
    return run_id, summary, combined


def test_reference_script_sees_the_reference_contract(
    target: Target, mirror: LocalS3Mirror
) -> None:
    _, summary, combined = _run(
        target,
        mirror,
        world_size=3,
        result_path="results/reference",
        S3_object_name=CODE,
        script=f"/tmp/{CODE}/Inference/inference.py",  # the reference payload's form
    )
    assert [r["rank"] for r in combined] == [0, 1, 2]
    # 4 files over 3 ranks: ranks 0 and 1 have one key, rank 2 a JSON list of two
    keys = [["parts/part-00000.safetensors"], ["parts/part-00001.safetensors"]]
    keys.append(["parts/part-00002.safetensors", "parts/part-00003.safetensors"])
    for rank, entry in enumerate(combined):
        seen = entry["seen"]
        folder = entry["folder"]
        assert folder.endswith(f"/{CODE}") and entry["cwd"] == folder and entry["helper_found"]
        assert entry["tmp_view_same"] in (True, None)  # /tmp/<name> is that folder when shown
        assert seen["SCRIPT"] == f"{folder}/Inference/inference.py"
        data_path = keys[rank][0] if rank < 2 else json.dumps(keys[rank])
        assert seen == {
            "S3_BUCKET": "cosmicai-runs",
            "S3_OBJECT_NAME": CODE,
            "SCRIPT": seen["SCRIPT"],
            "S3_OBJECT_TYPE": "folder",
            "WORLD_SIZE": "3",
            "RANK": str(rank),
            "DATA_BUCKET": "cosmicai-data",
            "DATA_PREFIX": "parts",
            "DATA_PATH": data_path,
            "RESULT_PATH": "results/reference",
            "BATCH_SIZE": "32",
        }
        # the script's record is the rank's entry: reference fields at the top level
        assert entry["total_cpu_memory (MB)"] == 14320.25
        assert entry["sample_persec"] == 50.0 + rank and entry["num_batches"] == 4
        assert entry["data_path"] == data_path and entry["result_path"] == "results/reference"
        assert entry["samples"] == round((50 + rank) * 2.0)  # sample_persec x CPU time
        assert entry["status"] == "succeeded" and entry["script"] == "Inference/inference.py"
    assert summary["samples"] == 100 + 102 + 104 and summary["samples_unknown_ranks"] == []


def test_background_child_does_not_hold_the_rank(cloud: LocalCloud, mirror: LocalS3Mirror) -> None:
    target = cloud.deploy(
        prefix="bg", functions={"executor": FunctionSettings(memory_mb=1024, timeout_s=30)}
    )
    started = time.monotonic()
    _, summary, combined = _run(
        target,
        mirror,
        world_size=1,
        result_path="results/background",
        S3_object_name="scripts/background",
        script="job.py",
    )
    assert summary["status"] == "succeeded" and combined[0]["wall_s"] < 10
    assert time.monotonic() - started < 25  # a held rank would time out after 30 s
    # no reference record and no sample count: unknown, not 0
    assert summary["samples"] is None and summary["samples_unknown_ranks"] == [0]


def test_the_worked_example_runs_unchanged(target: Target, mirror: LocalS3Mirror) -> None:
    settings = json.loads((EXAMPLE / "payload.json").read_text())
    settings.update(
        S3_object_name="scripts/example",
        script="/tmp/scripts/example/Inference/inference.py",
        data_prefix="small",
        file_limit=2,
        world_size=1,  # one rank, two files: DATA_PATH is a JSON list
        batch_size=4,
        result_path="results/example",
    )
    _, summary, (entry,) = _run(target, mirror, **settings)
    assert entry["num_samples"] == 9 and entry["num_batches"] == 3 and entry["samples"] == 9
    assert entry["data_path"] == json.dumps(
        ["small/part-00000.safetensors", "small/part-00001.safetensors"]
    )
    assert entry["sample_persec"] > 0 and entry["model_trained"] is False
    assert summary["samples"] == 9


def test_a_script_s_torch_load_of_a_whole_model_needs_trust_pickle(
    target: Target, mirror: LocalS3Mirror
) -> None:
    settings = {"world_size": 1, "S3_object_name": "scripts/pickle", "script": "job.py"}
    _, summary, combined = _run(
        target, mirror, result_path="results/pickle-trusted", trust_pickle=True, **settings
    )
    assert combined[0]["script_result"] == {"loaded": "Linear"}
    payload = validate_payload(
        {"bucket": "cosmicai-runs", "data_bucket": "cosmicai-data", "data_prefix": "parts",
         "result_path": "results/pickle-untrusted", **settings}
    )  # fmt: skip
    upload_inputs(target, payload, mirror)
    run_id, arn = start_run(target, payload)
    execution = follow(target, run_id, arn, payload.bucket, 1, poll_s=0.5)
    summary = read_json(target.client("s3"), payload.bucket, f"runs/{run_id}/summary.json")
    assert execution["status"] == "FAILED"
    assert "default value of the `weights_only`" in summary["failed_ranks"][0]["cause"]
