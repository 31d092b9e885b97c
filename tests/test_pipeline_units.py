"""Parts of the pipeline steps: file assignment, the run verdict, an executor rank on S3."""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import torch
from moto import mock_aws
from torch.utils.data import TensorDataset

from cosmicai.asl import render_state_machine, template_variables
from cosmicai.errors import CosmicAIError, DataFormatError
from cosmicai.inference import engine
from cosmicai.inference.engine import EngineConfig, run_inference
from cosmicai.pipeline import executor
from cosmicai.pipeline.executor import EphemeralStorageFull, run_rank
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


# --- an engine rank streams its partitions: next one downloaded while this one is computed ----


def quiet(*args: object, **kwargs: object) -> None:
    """A log that drops everything."""


def rank_record(s3: Any, pointer: dict[str, Any]) -> dict[str, Any]:
    body = s3.get_object(Bucket="cosmicai-runs", Key=pointer["result_key"])["Body"].read()
    return json.loads(body)


def test_rank_prefetches_the_next_partition_and_holds_at_most_two(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """File i+1 starts downloading before file i is computed; each file is deleted once used;
    the predictions are those of the engine over the same files downloaded beforehand."""
    keys = [f"parts/stream-{i}.pt" for i in range(4)]
    for i, key in enumerate(keys):
        reference_file(s3, tmp_path, key, 5 + 3 * i)
    uris = [f"s3://cosmicai-data/{key}" for key in keys]
    events: list[tuple[str, str]] = []
    download_started = {key: threading.Event() for key in keys}
    overlapped: list[bool] = []
    held: list[int] = []
    download, read = s3.download_file, engine.read_partition_arrays

    def tracking_download(bucket: str, key: str, filename: str) -> None:
        events.append(("download", key))
        folder = Path(filename).parent
        held.append(sum(1 for p in folder.iterdir() if "-stream-" in p.name))
        download_started[key].set()
        download(bucket, key, filename)
        held.append(sum(1 for p in folder.iterdir() if "-stream-" in p.name))

    def tracking_read(path: Path, *, name: str) -> Any:
        index = uris.index(name)
        if index > 0:
            assert not any(Path(path).parent.glob(f"{index - 1:05d}-*")), "previous file kept"
        events.append(("read", name))
        if index + 1 < len(keys):  # the next download starts before this file is computed
            overlapped.append(download_started[keys[index + 1]].wait(timeout=5))
        return read(path, name=name)

    monkeypatch.setattr(s3, "download_file", tracking_download)
    monkeypatch.setattr(engine, "read_partition_arrays", tracking_read)
    record = rank_record(s3, run_rank(s3, rank_event(keys), request_id="r-s", log=quiet))

    assert [k for kind, k in events if kind == "download"] == keys
    assert [n for kind, n in events if kind == "read"] == uris
    assert overlapped == [True] * (len(keys) - 1)
    assert max(held) <= 2
    assert record["download_total_s"] > 0 and record["download_s"] > 0
    local = [tmp_path / f"local-{i}.pt" for i in range(len(keys))]
    for key, path in zip(keys, local, strict=True):
        download("cosmicai-data", key, str(path))
    loaded = executor._cached_model(None, "tiny", False, "cpu", "torch", 8)
    expected = run_inference(loaded, local, EngineConfig(batch_size=8, threads=1), labels=uris)
    assert record["predictions"] == expected.predictions
    assert record["samples"] == expected.record["samples"] and record["files"] == uris


def test_stream_deletes_every_file_after_use(s3: Any, tmp_path: Path) -> None:
    keys = ["parts/del-0.pt", "parts/del-1.pt"]
    for key in keys:
        reference_file(s3, tmp_path, key, 3)
    folder = tmp_path / "rank"
    folder.mkdir()
    files = [{"bucket": "cosmicai-data", "key": key} for key in keys]
    stream = executor.PartitionStream(s3, files, folder)
    seen = [path.name for path in stream if path.exists()]
    assert seen == ["00000-del-0.pt", "00001-del-1.pt"]
    assert list(folder.iterdir()) == []


def test_rank_refuses_partitions_larger_than_free_tmp_before_downloading(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = ["parts/big-0.pt", "parts/big-1.pt", "parts/big-2.pt"]
    for key, n in zip(keys, (4, 12, 9), strict=True):
        reference_file(s3, tmp_path, key, n)
    sizes = [s3.head_object(Bucket="cosmicai-data", Key=k)["ContentLength"] for k in keys]
    event = rank_event(keys)
    event["item"]["files"][2]["size"] = sizes[2]  # as init records it; the others are HEADed
    free = sizes[1] + sizes[2] - 1  # every file fits, but not the largest consecutive pair
    usage = shutil.disk_usage(tempfile.gettempdir())
    monkeypatch.setattr(executor.shutil, "disk_usage", lambda path: usage._replace(free=free))
    downloads: list[str] = []
    monkeypatch.setattr(s3, "download_file", lambda b, key, f: downloads.append(key))
    with pytest.raises(EphemeralStorageFull) as err:
        run_rank(s3, event, request_id="r-f", log=quiet)
    mb = [f"{size / 2**20:.1f} MB" for size in sizes]
    assert (
        f"s3://cosmicai-data/{keys[1]} ({mb[1]}) with s3://cosmicai-data/{keys[2]} ({mb[2]}), "
        f"prefetched while the other is computed, need {(sizes[1] + sizes[2]) / 2**20:.1f} MB"
    ) in str(err.value)
    assert f"({free / 2**20:.1f} MB free)" in str(err.value)
    assert "executor_ephemeral_storage_mb" in str(err.value)
    assert downloads == []
    variables = {name: 1 if name == "rank_max_retries" else "x" for name in template_variables()}
    assert "EphemeralStorageFull" in retried_never(json.loads(render_state_machine(variables)))


def test_a_full_tmp_while_downloading_names_the_object(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = ["parts/full-0.pt", "parts/full-1.pt"]
    for key in keys:
        reference_file(s3, tmp_path, key, 3)
    download = s3.download_file

    def full_on_second(bucket: str, key: str, filename: str) -> None:
        if key == keys[1]:  # the disk filled up meanwhile (fault injection on boto3)
            raise OSError(errno.ENOSPC, "No space left on device")
        download(bucket, key, filename)

    monkeypatch.setattr(s3, "download_file", full_on_second)
    with pytest.raises(EphemeralStorageFull, match=(
        "^no space left in the rank's temporary storage while downloading "
        f"s3://cosmicai-data/{keys[1]}: "
    )):  # fmt: skip
        run_rank(s3, rank_event(keys), request_id="r-n", log=quiet)


def test_an_onnxruntime_rank_runs_the_export_uploaded_beside_its_checkpoint(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rank downloads `<checkpoint>.mb32.onnx` and its sidecar with the checkpoint and runs
    them as found; without them it would export (which a broken exporter here would reveal)."""
    pytest.importorskip("onnxruntime")
    from cosmicai.inference import backends
    from cosmicai.inference.checkpoint import save_checkpoint
    from cosmicai.inference.model import AstroMAEConfig, build_model

    local = tmp_path / "model" / "m.safetensors"
    save_checkpoint(build_model(AstroMAEConfig.tiny(), seed=3), local)
    export = backends.onnx_model(local, 8).path
    for path in (local, export, export.with_name(export.name + ".json")):
        s3.upload_file(str(path), "cosmicai-runs", f"models/{path.name}")
    reference_file(s3, tmp_path, "parts/onnx-0.pt", 11)

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the rank exported instead of using the uploaded export")

    monkeypatch.setattr(backends, "export_onnx", no_export)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "lambda-tmp"))
    (tmp_path / "lambda-tmp").mkdir()
    event = rank_event(["parts/onnx-0.pt"])
    event["settings"].update(model="models/m.safetensors", backend="onnxruntime")
    record = rank_record(s3, run_rank(s3, event, request_id="r-onnx", log=quiet))
    assert record["backend"] == "onnxruntime" and record["model_trained"] is True
    assert record["model_source"].endswith("cosmicai-models/cosmicai-runs/models/m.safetensors")
    assert record["samples"] == 11
