"""The AstroMAE inference engine: partition files in, one redshift per sample out, plus a record.

The engine streams: it reads one partition at a time (memory-mapped), copies each micro-batch
into one reused input buffer and runs the model under ``torch.inference_mode``, so peak memory
depends on the micro-batch, not on the number or size of the files.

Partitioning invariance: every forward pass has the same shape. Matrix kernels pick different
code paths (and so round differently) for different row counts, e.g. for 1-11 rows, so a
sample's prediction would otherwise depend on which batch of which file it landed in. The last
micro-batch of each file is therefore padded with zero samples to full size, and the padded
rows are dropped (the model has no cross-sample operations in eval mode). The union of per-rank
predictions is then bit-identical to a single-rank run for any split of the data (CPU, fp32).
Padding costs at most ``micro_batch - 1`` samples per file (``padded_samples``).

On CPU the micro-batch defaults to 32 samples: the activations of 32 samples stay in cache, so
this is faster than 512 at a fraction of the memory. With ``threads`` > 1, that many micro-batches
run at once, each on one thread: GEMMs this small scale better across micro-batches than inside
one (about +11% on 2 vCPUs), and a prediction then does not depend on the thread count either.
``batch_size`` is the batch the record reports (``num_batches``, ``execution_time
(seconds/batch)``), as the reference workflow did.

The record keeps every field of the reference workflow, computed honestly: CPU time is process
CPU time (all threads) spent in the model, memory is the process' peak RSS, throughput is bits
of model input (images and magnitudes, as the files store them) per wall-clock second (the
reference's unit: a reference file with float32 images and float64 magnitudes counts 164,160
bits per sample), samples per second are per wall-clock second of the whole run (reading
included).

Partitions may hold float16, float32 or float64 tensors; they are read as float32 (see
`partition_io`), so a float32 file is computed exactly as before and any other file exactly as
its float32 cast. Messages and the record's `files` name each file by its label (the `s3://`
object a rank downloaded, say), not by the temporary path it was read from.

Backends (`backends`): the micro-batches run through PyTorch (``torch``) or through the model's
ONNX export on ONNX Runtime (``onnxruntime``), which spares a rank PyTorch's import; the engine
around them (buffers, padding, threads, the record) is the same code, in NumPy, so this module
imports PyTorch only for the torch backend or a CUDA check.

`files` may be any iterable, such as a generator that downloads each file while the previous one
is computed: the time spent waiting for the next file is left out of `wall_s` (and so of the
rates), which therefore measure the engine alone whether the files were ready or not.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cosmicai.errors import CosmicAIError
from cosmicai.inference.backends import EngineModel, Forward, TorchModel
from cosmicai.inference.metrics import redshift_metrics
from cosmicai.inference.partition_io import Partition, read_partition_arrays
from cosmicai.peak_memory import peak_rss_mb

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from cosmicai.inference.checkpoint import LoadedModel

DEVICES = ("cpu", "cuda")
CPU_MICRO_BATCH = 32
"""Default CPU micro-batch: fastest on a 2-vCPU machine and small activations (see module doc)."""


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), the default thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class EngineConfig:
    """How to run: reported batch size, threads (default: usable CPUs), device, micro-batch.

    `micro_batch` is the number of samples per forward pass (None: 32 on CPU, `batch_size` on
    CUDA), capped at `batch_size`.
    """

    batch_size: int = 512
    threads: int | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    micro_batch: int | None = None

    def resolved_threads(self) -> int:
        return self.threads if self.threads is not None else available_cpus()

    def resolved_micro_batch(self) -> int:
        default = CPU_MICRO_BATCH if self.device == "cpu" else self.batch_size
        return min(self.micro_batch or default, self.batch_size)

    def validate(self) -> None:
        """Raise CosmicAIError naming the setting that cannot work."""
        for name in ("batch_size", "threads", "micro_batch"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise CosmicAIError(
                    f"engine setting {name} must be a positive integer, got {value!r}"
                )
        if self.device not in DEVICES:
            raise CosmicAIError(
                f"engine device {self.device!r} is not supported; use one of {', '.join(DEVICES)}"
            )
        if self.device == "cuda":
            _check_cuda()


def _check_cuda() -> None:
    import torch  # here only: ranks on the onnxruntime backend never import it

    if not torch.cuda.is_available():
        raise CosmicAIError(
            "device 'cuda' was requested but PyTorch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}); use device 'cpu', or run where a GPU and a CUDA "
            "build of PyTorch are available"
        )


@dataclass
class InferenceResult:
    """Predictions in input order, true redshifts when every file is labelled, and the record."""

    predictions: list[float]
    true: list[float] | None
    record: dict[str, Any]


@dataclass
class _Totals:
    """Running sums over the files of one run."""

    samples: int = 0
    padded: int = 0
    batches: int = 0
    input_bytes: int = 0
    load_s: float = 0.0
    compute_s: float = 0.0
    cpu_s: float = 0.0
    input_wait_s: float = 0.0
    predictions: list[float] = field(default_factory=list)
    true: list[float] | None = field(default_factory=list)


class _Runner:
    """Runs micro-batches of fixed shape through `forward`, `workers` at a time.

    Each worker thread reuses its own input buffers; `pool` is None for one worker.
    """

    def __init__(
        self,
        forward: Forward,
        shape: tuple[int, int, int],
        micro_batch: int,
        pool: ThreadPoolExecutor | None,
    ) -> None:
        self.forward = forward
        self.micro_batch = micro_batch
        self.shape = shape
        self.pool = pool
        self._buffers = threading.local()

    def run_file(self, path: Path, label: str, batch_size: int, totals: _Totals) -> None:
        """Read one partition (named `label` in messages), predict every sample, add to
        `totals`; nothing outlives the call."""
        start = time.perf_counter()
        part = read_partition_arrays(path, name=label)
        totals.load_s += time.perf_counter() - start
        count = len(part)
        self._check_shape(part)
        firsts = range(0, count, self.micro_batch)
        start, cpu = time.perf_counter(), time.process_time()
        if self.pool is None:
            chunks = [self._predict(part, first) for first in firsts]
        else:
            chunks = list(self.pool.map(lambda first: self._predict(part, first), firsts))
        totals.cpu_s += time.process_time() - cpu
        totals.compute_s += time.perf_counter() - start
        for chunk in chunks:
            totals.predictions += chunk
        totals.samples += count
        totals.padded += -count % self.micro_batch
        totals.batches += math.ceil(count / batch_size)
        totals.input_bytes += part.input_bytes
        if part.redshifts is None:
            totals.true = None
        elif totals.true is not None:
            totals.true += part.redshifts.tolist()

    def _check_shape(self, part: Partition) -> None:
        if tuple(part.images.shape[1:]) != self.shape:
            raise CosmicAIError(
                f"{part.name}: images are {list(part.images.shape[1:])} per sample but the "
                f"engine expects {list(self.shape)}"
            )

    def _predict(self, part: Partition, first: int) -> list[float]:
        """Predictions of the micro-batch starting at `first` (run in any worker thread)."""
        buffers = self._buffers
        if not hasattr(buffers, "images"):
            buffers.images = np.zeros((self.micro_batch, *self.shape), dtype=np.float32)
            buffers.magnitudes = np.zeros((self.micro_batch, self.shape[0]), dtype=np.float32)
        rows = min(self.micro_batch, len(part) - first)
        buffers.images[:rows] = part.images[first : first + rows]
        buffers.magnitudes[:rows] = part.magnitudes[first : first + rows]
        if rows < self.micro_batch:  # pad the tail: every forward pass has one shape
            buffers.images[rows:] = 0
            buffers.magnitudes[rows:] = 0
        predictions: list[float] = self.forward(buffers.images, buffers.magnitudes)[:rows].tolist()
        return predictions


def _timed(files: Iterable[Path], totals: _Totals) -> Iterator[Path]:
    """`files` as paths, adding the time spent waiting for each to `totals.input_wait_s`."""
    source = iter(files)
    while True:
        start = time.perf_counter()
        path = next(source, None)
        totals.input_wait_s += time.perf_counter() - start
        if path is None:
            return
        yield Path(path)


def _is_engine_model(model: EngineModel | LoadedModel) -> TypeIs[EngineModel]:
    """A backend's model (it opens a forward pass), not a loaded PyTorch model."""
    return hasattr(model, "open")


def run_inference(
    model: EngineModel | LoadedModel,
    files: Iterable[Path],
    config: EngineConfig,
    *,
    labels: Sequence[str] | None = None,
    data_path_label: str | None = None,
    result_path: str | None = None,
) -> InferenceResult:
    """Predict a redshift for every sample of `files` (in order) and describe the run.

    `model` is a backend's model (`backends.load_engine_model`) or a loaded PyTorch model (run
    on the torch backend). `files` is consumed one file at a time, each only once the previous
    one is computed.
    `labels` name the files in messages and the record's `files` (default: their paths);
    `data_path_label` is recorded as `data_path` (default: the label, or the list of labels);
    `result_path` is recorded as given. Raises CosmicAIError for bad settings or data.
    """
    config.validate()
    engine_model = model if _is_engine_model(model) else TorchModel(model)
    if isinstance(files, Sequence) and labels is not None and len(labels) != len(files):
        raise ValueError(f"{len(labels)} labels for {len(files)} files")
    threads, micro_batch = config.resolved_threads(), config.resolved_micro_batch()
    # CPU: `threads` micro-batches at once, one thread each; CUDA: one stream of micro-batches.
    workers = threads if config.device == "cpu" else 1
    totals = _Totals()
    names: list[str] = []
    start = time.perf_counter()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="engine") if workers > 1 else None
    try:
        with engine_model.open(micro_batch, threads, workers, config.device) as forward:
            runner = _Runner(forward, engine_model.sample_shape, micro_batch, pool)
            paths = _timed(files, totals)
            named = (
                ((p, str(p)) for p in paths) if labels is None else zip(paths, labels, strict=True)
            )
            for path, name in named:
                runner.run_file(path, name, config.batch_size, totals)
                names.append(name)
    finally:
        if pool is not None:
            pool.shutdown()
    wall_s = time.perf_counter() - start - totals.input_wait_s
    if not names:
        raise CosmicAIError("no partition files to run inference on; give at least one file")
    label = data_path_label or (names[0] if len(names) == 1 else names)
    record = _record(totals, wall_s, config, engine_model, names, threads, micro_batch)
    record.update(result_path=result_path, data_path=label)
    return InferenceResult(totals.predictions, totals.true, record)


def _record(
    totals: _Totals,
    wall_s: float,
    config: EngineConfig,
    model: EngineModel,
    files: list[str],
    threads: int,
    micro_batch: int,
) -> dict[str, Any]:
    """The run's record; `result_path` and `data_path` are left for the caller to fill."""
    per_s = totals.samples / wall_s if wall_s > 0 else 0.0
    peak = peak_rss_mb()
    metrics = (
        redshift_metrics(totals.predictions, totals.true)
        if totals.true and totals.samples
        else None
    )
    return {
        # the reference workflow's fields, same names
        "total_cpu_time (seconds)": totals.cpu_s,
        "total_cpu_memory (MB)": peak,
        "execution_time (seconds/batch)": totals.compute_s / totals.batches
        if totals.batches
        else 0.0,
        "num_batches": totals.batches,
        "batch_size": config.batch_size,
        "device": config.device,
        # bits of model input (as stored) per second, as the reference computes it (not bytes)
        "throughput_bps": 8 * totals.input_bytes / wall_s if wall_s > 0 else 0.0,
        "sample_persec": per_s,
        "result_path": None,
        "data_path": None,
        # ours
        "load_s": totals.load_s,
        "compute_s": totals.compute_s,
        "wall_s": wall_s,
        "samples": totals.samples,
        "samples_per_s": per_s,
        "peak_rss_mb": peak,
        "micro_batch": micro_batch,
        "padded_samples": totals.padded,
        "model_parameters": model.parameters,
        "model_trained": model.trained,
        "model_source": model.source,
        "backend": model.backend,
        "threads": threads,
        "files": files,
        "metrics": metrics,
    }
