"""The inference engine: record fields, predictions, partitioning invariance, streaming."""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import cosmicai.inference.engine as engine
from cosmicai.errors import CosmicAIError, DataFormatError
from cosmicai.inference.checkpoint import LoadedModel, load_model
from cosmicai.inference.engine import EngineConfig, run_inference
from cosmicai.inference.model import AstroMAEConfig, count_parameters
from cosmicai.inference.partition_io import write_partition

REFERENCE_FIELDS = (
    "total_cpu_time (seconds)",
    "total_cpu_memory (MB)",
    "execution_time (seconds/batch)",
    "num_batches",
    "batch_size",
    "device",
    "throughput_bps",
    "sample_persec",
    "result_path",
    "data_path",
)
OUR_FIELDS = (
    "load_s",
    "compute_s",
    "wall_s",
    "samples",
    "samples_per_s",
    "peak_rss_mb",
    "model_parameters",
    "model_trained",
    "model_source",
    "threads",
    "files",
    "metrics",
)
INPUT_BYTES_PER_SAMPLE = (5 * 32 * 32 + 5) * 4  # images and magnitudes, float32


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model(None, config=AstroMAEConfig.tiny(), seed=0)


def make_tensors(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 5, 32, 32, generator=g)
    magnitudes = 18 + 2 * torch.randn(n, 5, generator=g)
    redshifts = 0.6 * torch.rand(n, generator=g)
    return images, magnitudes, redshifts


def write_split(
    directory: Path, tensors: tuple[torch.Tensor, ...], sizes: list[int], labelled: bool = True
) -> list[Path]:
    """Write consecutive slices of `tensors` with the given sizes; return the files in order."""
    assert sum(sizes) == len(tensors[0])
    directory.mkdir(parents=True, exist_ok=True)
    files, start = [], 0
    for i, size in enumerate(sizes):
        part = [t[start : start + size] for t in (tensors if labelled else tensors[:2])]
        path = directory / f"part-{i:05d}.safetensors"
        write_partition(path, *part)
        files.append(path)
        start += size
    return files


def assign(files: list[Path], world_size: int) -> list[list[Path]]:
    """The reference Init's assignment: each rank takes ceil(remaining files / remaining ranks)."""
    ranks, start = [], 0
    for rank in range(world_size):
        take = math.ceil((len(files) - start) / (world_size - rank))
        ranks.append(files[start : start + take])
        start += take
    return ranks


def test_record_has_every_reference_field_and_honest_figures(
    tmp_path: Path, tiny: LoadedModel
) -> None:
    tensors = make_tensors(115)
    files = write_split(tmp_path, tensors, [70, 45])
    threads_before = torch.get_num_threads()
    result = run_inference(
        tiny,
        files,
        EngineConfig(batch_size=32, threads=1),
        data_path_label="s3://bucket/data",
        result_path="results/run-1",
    )
    record = result.record
    assert set(REFERENCE_FIELDS + OUR_FIELDS) <= set(record)
    assert torch.get_num_threads() == threads_before  # the engine restores the thread setting
    assert record["num_batches"] == 3 + 2  # ceil(70/32) + ceil(45/32): batches never span files
    assert record["batch_size"] == 32 and record["device"] == "cpu" and record["threads"] == 1
    assert record["data_path"] == "s3://bucket/data" and record["result_path"] == "results/run-1"
    assert record["samples"] == 115 and record["files"] == [str(f) for f in files]
    assert record["micro_batch"] == 32 and record["padded_samples"] == (32 - 6) + (32 - 13)
    assert record["sample_persec"] == record["samples_per_s"]
    assert record["samples_per_s"] == pytest.approx(115 / record["wall_s"])
    bits_per_s = 8 * 115 * INPUT_BYTES_PER_SAMPLE / record["wall_s"]
    assert record["throughput_bps"] == pytest.approx(bits_per_s)  # the reference's unit
    assert record["execution_time (seconds/batch)"] == pytest.approx(record["compute_s"] / 5)
    assert record["load_s"] > 0 and 0 < record["compute_s"] <= record["wall_s"]
    assert record["total_cpu_time (seconds)"] > 0
    assert record["total_cpu_memory (MB)"] == record["peak_rss_mb"] > 50
    assert record["model_trained"] is False and record["model_source"] == "random-init(seed=0)"
    assert record["model_parameters"] == count_parameters(tiny.model)

    images, magnitudes, redshifts = tensors
    with torch.no_grad():
        eager = tiny.model(images, magnitudes)
    assert len(result.predictions) == 115
    assert torch.allclose(torch.tensor(result.predictions), eager, rtol=1e-5, atol=1e-6)
    assert result.true == redshifts.tolist()
    metrics = record["metrics"]
    errors = torch.tensor(result.predictions, dtype=torch.float64) - redshifts.double()
    assert metrics["samples"] == 115
    assert metrics["mae"] == pytest.approx(errors.abs().mean().item())
    assert metrics["mse"] == pytest.approx((errors**2).mean().item())


def test_unlabelled_data_has_no_truth_and_no_metrics(tmp_path: Path, tiny: LoadedModel) -> None:
    files = write_split(tmp_path, make_tensors(20), [12, 8], labelled=False)
    result = run_inference(tiny, files, EngineConfig(batch_size=8, threads=1))
    assert result.true is None and result.record["metrics"] is None
    assert len(result.predictions) == 20
    assert result.record["data_path"] == [str(f) for f in files]


def test_one_unlabelled_file_drops_the_truth(tmp_path: Path, tiny: LoadedModel) -> None:
    tensors = make_tensors(20)
    files = write_split(tmp_path / "a", tuple(t[:12] for t in tensors), [12])
    files += write_split(tmp_path / "b", tuple(t[12:] for t in tensors), [8], labelled=False)
    result = run_inference(tiny, files, EngineConfig(batch_size=8, threads=1))
    assert result.true is None and result.record["metrics"] is None


def check_invariance(
    loaded: LoadedModel, tmp_path: Path, sizes: list[int], batch_size: int, threads: int
) -> None:
    """Split the data into files of `sizes`; every world size 1-5 must match one whole file."""
    n = sum(sizes)
    tensors = make_tensors(n, seed=1)
    config = EngineConfig(batch_size=batch_size, threads=threads)
    (whole,) = write_split(tmp_path / "whole", tensors, [n])
    single = run_inference(loaded, [whole], config)
    files = write_split(tmp_path / "split", tensors, sizes)
    for world_size in range(1, 6):
        union: list[float] = []
        for rank_files in assign(files, world_size):
            union += run_inference(loaded, rank_files, config).predictions
        assert union == single.predictions, f"world size {world_size}"  # bit for bit


def test_predictions_do_not_depend_on_the_split(tmp_path: Path, tiny: LoadedModel) -> None:
    # Uneven files: tails of 1, 2, 3, 5... rows, where matrix kernels take other code paths.
    check_invariance(tiny, tmp_path, [1, 2, 3, 5, 7, 9, 13], batch_size=8, threads=2)


@pytest.mark.slow
def test_predictions_do_not_depend_on_the_split_full_size_model(tmp_path: Path) -> None:
    # One thread: two OpenMP threads crawl when the test machine's cores are busy.
    check_invariance(load_model(None), tmp_path, [1, 2, 5, 3, 1], batch_size=4, threads=1)


def test_predictions_do_not_depend_on_the_thread_count(tmp_path: Path) -> None:
    # Each micro-batch runs on one thread, whatever `threads` is: same bits at 1, 2 and 3.
    loaded = load_model(None)
    (path,) = write_split(tmp_path, make_tensors(70, seed=2), [70])
    runs = [
        run_inference(loaded, [path], EngineConfig(batch_size=16, threads=t)).predictions
        for t in (1, 2, 3)
    ]
    assert runs[0] == runs[1] == runs[2]


def test_streams_one_file_at_a_time(
    tmp_path: Path, tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine holds at most one partition: each read finds the previous one released."""
    files = write_split(tmp_path, make_tensors(40), [10, 10, 10, 10])
    held: list[weakref.ref] = []
    read = engine.read_partition_arrays

    def tracking_read(path: Path, **kwargs: object) -> object:
        alive = [ref for ref in held if ref() is not None]
        assert not alive, f"{len(alive)} earlier partition tensor(s) still alive"
        part = read(path, **kwargs)
        held.extend(weakref.ref(t) for t in (part.images, part.magnitudes, part.redshifts))
        calls.append(path)
        return part

    calls: list[Path] = []
    monkeypatch.setattr(engine, "read_partition_arrays", tracking_read)
    result = run_inference(tiny, files, EngineConfig(batch_size=4, threads=1))
    assert calls == files
    assert all(ref() is None for ref in held)
    assert len(result.predictions) == 40


@pytest.mark.parametrize(
    ("dtypes", "bits_per_sample"),
    [
        ((torch.float32, torch.float64, torch.float64), 164_160),  # the reference's own figure
        ((torch.float16, torch.float64, torch.float32), 8 * (5 * 32 * 32 * 2 + 5 * 8)),
    ],
    ids=["reference", "float16-images"],
)
def test_reference_files_with_other_dtypes_predict_as_their_float32_cast(
    tmp_path: Path, tiny: LoadedModel, dtypes: tuple[torch.dtype, ...], bits_per_sample: int
) -> None:
    stored = [t.to(d) for t, d in zip(make_tensors(45, seed=3), dtypes, strict=True)]
    reference = tmp_path / "reference.pt"
    torch.save(TensorDataset(*stored), reference)  # as the course's files are written
    (cast,) = write_split(tmp_path / "cast", tuple(t.float() for t in stored), [45])
    config = EngineConfig(batch_size=16, threads=1)
    got = run_inference(tiny, [reference], config)
    want = run_inference(tiny, [cast], config)
    assert got.predictions == want.predictions  # bit for bit
    assert got.true == want.true == stored[2].float().tolist()
    record = got.record
    assert record["throughput_bps"] == pytest.approx(bits_per_sample * 45 / record["wall_s"])


def test_labels_name_the_files_in_errors_and_the_record(tmp_path: Path, tiny: LoadedModel) -> None:
    images, magnitudes, redshifts = make_tensors(12)
    files = write_split(tmp_path, (images, magnitudes, redshifts), [6, 6])
    labels = ["s3://cosmicai-data/parts/part-00000.safetensors", "s3://cosmicai-data/p/x.pt"]
    record = run_inference(tiny, files, EngineConfig(threads=1), labels=labels).record
    assert record["files"] == labels and record["data_path"] == labels
    bad = tmp_path / "00001-x.pt"
    torch.save(TensorDataset(images, magnitudes.int(), redshifts), bad)
    with pytest.raises(DataFormatError, match=f"^{labels[1]}: magnitudes has dtype torch.int32"):
        run_inference(tiny, [files[0], bad], EngineConfig(threads=1), labels=labels)


def test_micro_batch_settings() -> None:
    assert EngineConfig().resolved_micro_batch() == engine.CPU_MICRO_BATCH
    assert EngineConfig(batch_size=8).resolved_micro_batch() == 8
    assert EngineConfig(batch_size=64, micro_batch=16).resolved_micro_batch() == 16
    assert EngineConfig(batch_size=64, device="cuda").resolved_micro_batch() == 64
    assert EngineConfig().resolved_threads() == engine.available_cpus()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (EngineConfig(batch_size=0), "batch_size must be a positive integer"),
        (EngineConfig(threads=0), "threads must be a positive integer"),
        (EngineConfig(micro_batch=-1), "micro_batch must be a positive integer"),
        (EngineConfig(device="tpu"), "device 'tpu' is not supported"),  # type: ignore[arg-type]
    ],
)
def test_bad_settings_are_actionable_errors(
    tmp_path: Path, tiny: LoadedModel, config: EngineConfig, message: str
) -> None:
    files = write_split(tmp_path, make_tensors(4), [4])
    with pytest.raises(CosmicAIError, match=message):
        run_inference(tiny, files, config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_an_actionable_error(tmp_path: Path, tiny: LoadedModel) -> None:
    files = write_split(tmp_path, make_tensors(4), [4])
    with pytest.raises(CosmicAIError, match="no CUDA GPU"):
        run_inference(tiny, files, EngineConfig(device="cuda"))


def test_no_files_is_an_actionable_error(tiny: LoadedModel) -> None:
    with pytest.raises(CosmicAIError, match="no partition files"):
        run_inference(tiny, [], EngineConfig())


def test_files_may_arrive_one_by_one_and_waiting_for_them_is_not_engine_time(
    tmp_path: Path, tiny: LoadedModel
) -> None:
    """A generator of paths (a rank's prefetching downloads): each file is asked for only once
    the previous one is computed, predictions are those of the list, and the time spent waiting
    for files stays out of `wall_s` and the rates."""
    files = write_split(tmp_path, make_tensors(12), [5, 7])
    labels = ["s3://b/part-0.safetensors", "s3://b/part-1.safetensors"]
    config = EngineConfig(batch_size=4, threads=1)
    asked: list[int] = []

    def arriving() -> Iterator[Path]:
        for path in files:
            asked.append(len(asked))
            time.sleep(0.3)  # the download
            yield path

    started = time.perf_counter()
    streamed = run_inference(tiny, arriving(), config, labels=labels)
    elapsed = time.perf_counter() - started
    listed = run_inference(tiny, files, config, labels=labels)
    assert asked == [0, 1]
    assert streamed.predictions == listed.predictions and streamed.true == listed.true
    assert streamed.record["files"] == labels and streamed.record["samples"] == 12
    assert 0 < streamed.record["wall_s"] <= elapsed - 2 * 0.3
    assert streamed.record["sample_persec"] == pytest.approx(12 / streamed.record["wall_s"])


def test_no_files_from_a_generator_is_an_actionable_error(tiny: LoadedModel) -> None:
    with pytest.raises(CosmicAIError, match="no partition files"):
        run_inference(tiny, iter([]), EngineConfig())
