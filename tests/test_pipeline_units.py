"""Parts of the pipeline steps: file assignment, the run verdict, an executor rank on S3."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch
from moto import mock_aws
from torch.utils.data import TensorDataset

from cosmicai.asl import render_state_machine, template_variables
from cosmicai.inference.errors import CosmicAIError, DataFormatError
from cosmicai.pipeline.executor import run_rank
from cosmicai.pipeline.init import NoDataError, assign_files
from cosmicai.pipeline.layout import check_run_id, new_run_id
from cosmicai.pipeline.summarize import _status


@pytest.mark.parametrize("n", [1, 2, 5, 7, 12, 130])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_assignment_is_balanced_ordered_and_complete(n: int, world: int) -> None:
    keys = [f"part-{i:05d}" for i in range(n)]
    if world > n:
        with pytest.raises(NoDataError, match=f"world_size {world} is larger"):
            assign_files(keys, world)
        return
    blocks = assign_files(keys, world)
    assert len(blocks) == world
    assert [k for block in blocks for k in block] == keys  # every file once, in order
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert assign_files(keys, world) == blocks  # deterministic


@pytest.mark.parametrize(
    ("unsuccessful", "tolerated", "map_failed", "expected"),
    [
        (0, 0, False, "succeeded"),
        (1, 0, False, "failed"),
        (1, 25, False, "partial"),
        (2, 25, False, "failed"),
        (4, 100, False, "failed"),
        (0, 0, True, "failed"),
    ],
)
def test_verdict(unsuccessful: int, tolerated: float, map_failed: bool, expected: str) -> None:
    assert _status(4, unsuccessful, tolerated, map_failed) == expected


def test_run_ids() -> None:
    run_id = new_run_id("team-a")
    assert check_run_id(run_id) == run_id and run_id.startswith("team-a-")
    assert new_run_id("team-a") != run_id
    for bad in ("", "UPPER", "../x", "a" * 90):
        with pytest.raises(CosmicAIError, match="not valid"):
            check_run_id(bad)


# --- the executor names each data file by its S3 object, never the rank's temporary copy -----


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real (in-process moto) S3 with the data and runs buckets."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        for bucket in ("cosmicai-data", "cosmicai-runs"):
            client.create_bucket(Bucket=bucket)
        yield client


def reference_file(s3: Any, tmp_path: Path, key: str, n: int, nan_at: tuple[int, ...] = ()) -> None:
    """Upload a reference partition: float32 images, float64 magnitudes and redshifts."""
    gen = torch.Generator().manual_seed(len(key))
    magnitudes = 18 + torch.randn(n, 5, generator=gen, dtype=torch.float64)
    magnitudes[list(nan_at), 1] = float("nan")
    dataset = TensorDataset(
        torch.randn(n, 5, 32, 32, generator=gen),
        magnitudes,
        torch.rand(n, generator=gen, dtype=torch.float64),
    )
    local = tmp_path / Path(key).name
    torch.save(dataset, local)
    s3.upload_file(str(local), "cosmicai-data", key)


def rank_event(keys: list[str]) -> dict[str, Any]:
    files = [{"bucket": "cosmicai-data", "key": key} for key in keys]
    return {
        "run_id": "team-a-units",
        "bucket": "cosmicai-runs",
        "world_size": 1,
        "item": {"rank": 0, "files": files},
        "settings": {"model_size": "tiny", "batch_size": 8, "threads": 1},
    }


def retried_never(template_json: Any) -> set[str]:
    """Errors some Retry rule of the state machine gives MaxAttempts 0."""
    found: set[str] = set()
    if isinstance(template_json, dict):
        for rule in template_json.get("Retry", []):
            if rule["MaxAttempts"] == 0:
                found.update(rule["ErrorEquals"])
        for value in template_json.values():
            found |= retried_never(value)
    elif isinstance(template_json, list):
        for value in template_json:
            found |= retried_never(value)
    return found


def test_rank_reads_float64_reference_files_and_records_their_objects(
    s3: Any, tmp_path: Path
) -> None:
    keys = ["parts/part-00000.pt", "parts/part-00001.pt"]
    for key in keys:
        reference_file(s3, tmp_path, key, 10)
    pointer = run_rank(s3, rank_event(keys), request_id="r-1", log=lambda *a, **k: None)
    record = json.loads(
        s3.get_object(Bucket="cosmicai-runs", Key=pointer["result_key"])["Body"].read()
    )
    uris = [f"s3://cosmicai-data/{key}" for key in keys]
    assert record["files"] == uris and record["data_files"] == uris
    assert record["samples"] == 20 and len(record["predictions"]) == 20
    # Bits of input as the files store them: the reference's 164,160 per sample.
    assert record["throughput_bps"] * record["wall_s"] / 20 == pytest.approx(164_160)


def test_rank_data_error_names_the_s3_object_and_is_never_retried(s3: Any, tmp_path: Path) -> None:
    keys = ["parts/part-00002.pt", "parts/part-00003.pt"]
    reference_file(s3, tmp_path, keys[0], 4)
    reference_file(s3, tmp_path, keys[1], 9, nan_at=(2, 7))
    with pytest.raises(DataFormatError) as err:
        run_rank(s3, rank_event(keys), request_id="r-2", log=lambda *a, **k: None)
    assert str(err.value).startswith(
        "s3://cosmicai-data/parts/part-00003.pt: magnitudes contain NaN or inf (or values beyond "
        "float32's range) in 2 sample(s), first at sample 2;"
    )
    assert tempfile.gettempdir() not in str(err.value)
    variables = {name: 1 if name == "rank_max_retries" else "x" for name in template_variables()}
    never = retried_never(json.loads(render_state_machine(variables)))
    assert type(err.value).__name__ in never
