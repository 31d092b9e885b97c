"""Benchmark: our engine against the reference workflow's inference loop, same data and model.

One synthetic partition (default: 100 MiB worth of samples) is written twice, as `.pt` (the
reference format) and `.safetensors` (ours), next to a checkpoint of a seeded model. Each phase
then runs in a fresh Python process, so peak RSS is per phase and the cold start (interpreter,
imports, model load) is real; both use the same threads and batch size:

* reference: `reference_loop.run_reference` (BytesIO + torch.load + DataLoader + torch.profiler
  with profile_memory + gc.collect() per batch, as the reference executor does);
* engine: `engine.run_inference` on the `.safetensors` partition.

Wall time covers reading the data and inference (not the cold start, reported apart). The
model's achieved GFLOP/s (analytic FLOPs per sample x samples/s) is set against fp32 matmul
GFLOP/s measured in the same run with the same threads.

A third phase runs the engine on the onnxruntime backend (the model's ONNX export, made once
before the phase as `cosmicai model import` would): its cold start (process start to a first
forward pass, which imports no torch) is set against the torch engine's, and its predictions
against the torch engine's (target: within 1e-6, ready within 1.0 s). Each phase is
`bench_phase` in a fresh interpreter.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from cosmicai.errors import CosmicAIError
from cosmicai.inference.backends import onnx_model
from cosmicai.inference.bench_phase import run_phase
from cosmicai.inference.checkpoint import save_checkpoint
from cosmicai.inference.engine import EngineConfig, available_cpus
from cosmicai.inference.model import AstroMAEConfig, build_model, flops_per_sample
from cosmicai.inference.partition_io import read_partition, write_partition
from cosmicai.inference.partitioning import samples_per_file
from cosmicai.inference.synthetic import make_data

DEFAULT_SAMPLES = samples_per_file(100.0)  # what `cosmicai partition --size 100MB` puts in a file
MODEL_SIZES: dict[str, Callable[[], AstroMAEConfig]] = {
    "full": AstroMAEConfig,
    "tiny": AstroMAEConfig.tiny,
}
TARGETS = {
    "speedup_min": 1.3,
    "rss_ratio_max": 0.5,
    "onnxruntime_cold_start_max_s": 1.0,
    "onnxruntime_max_abs_diff": 1e-6,
}
MATMUL_SIZE = 2048


def run_benchmark(
    *,
    samples: int = DEFAULT_SAMPLES,
    batch_size: int = 512,
    threads: int | None = None,
    model_size: str = "full",
    seed: int = 0,
) -> dict[str, Any]:
    """Run both phases and the matmul probe; return the result (see `cosmicai bench engine`)."""
    if samples < 1 or batch_size < 1 or (threads is not None and threads < 1):
        raise CosmicAIError(
            f"samples, batch size and threads must be at least 1, got {samples}, {batch_size} "
            f"and {threads}"
        )
    if model_size not in MODEL_SIZES:
        raise CosmicAIError(f"unknown model size {model_size!r}; use one of {sorted(MODEL_SIZES)}")
    threads = threads or available_cpus()
    config = MODEL_SIZES[model_size]()
    with tempfile.TemporaryDirectory(prefix="cosmicai-bench-") as tmp:
        work = Path(tmp)
        ours = make_data(samples, work / "data.safetensors", seed=seed)
        part = read_partition(ours)
        write_partition(work / "data.pt", part.images, part.magnitudes, part.redshifts)
        del part
        model = save_checkpoint(build_model(config, seed), work / "model.safetensors")
        micro_batch = EngineConfig(batch_size=batch_size).resolved_micro_batch()
        onnx_model(model, micro_batch)  # the export a deployment prepares once
        phases = {
            name: _run_phase(name, work, data, model, batch_size, threads)
            for name, data in (
                ("reference", work / "data.pt"),
                ("engine", ours),
                ("engine-onnxruntime", ours),
            )
        }
    reference, engine, onnx = phases["reference"], phases["engine"], phases["engine-onnxruntime"]
    torch_predictions = engine.pop("predictions")
    onnx_diff = max(
        abs(a - b) for a, b in zip(onnx.pop("predictions"), torch_predictions, strict=True)
    )
    predictions = compare_predictions(torch_predictions, reference.pop("predictions"), batch_size)
    model_flops = flops_per_sample(config) * engine["samples_per_s"] / 1e9
    matmul = matmul_gflops(threads)
    speedup = engine["samples_per_s"] / reference["samples_per_s"]
    rss_ratio = engine["peak_rss_mb"] / reference["peak_rss_mb"]
    met = {
        "speedup": speedup >= TARGETS["speedup_min"],
        "rss_ratio": rss_ratio <= TARGETS["rss_ratio_max"],
        "predictions": predictions["identical_in_full_batches"],
        "onnxruntime_cold_start": onnx["cold_start_s"] <= TARGETS["onnxruntime_cold_start_max_s"],
        "onnxruntime_predictions": onnx_diff <= TARGETS["onnxruntime_max_abs_diff"],
    }
    return {
        "benchmark": "engine",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "samples": samples,
        "batch_size": batch_size,
        "threads": threads,
        "model_size": model_size,
        "flops_per_sample": flops_per_sample(config),
        "reference": reference,
        "engine": engine,
        "engine_onnxruntime": {**onnx, "max_abs_diff_vs_torch": onnx_diff},
        "cold_start_s": {"torch": engine["cold_start_s"], "onnxruntime": onnx["cold_start_s"]},
        "speedup": speedup,
        "rss_ratio": rss_ratio,
        "gflops": {"model": model_flops, "matmul": matmul, "fraction": model_flops / matmul},
        "predictions_identical": predictions["identical"],
        "predictions": predictions,
        "targets": {
            **TARGETS,
            **{f"{name}_met": ok for name, ok in met.items()},
            "met": all(met.values()),
        },
        "machine": machine_info(threads),
    }


def compare_predictions(engine: list[float], eager: list[float], batch_size: int) -> dict[str, Any]:
    """Bitwise comparison of the engine with eager fp32 (the reference loop).

    Eager fp32 is itself not batch-shape invariant: in a batch whose row count is not a multiple
    of the GEMM tile, the leftover rows go through an edge kernel that rounds differently. The
    engine runs only full, fixed-shape micro-batches, so it can differ from eager only in the
    reference's partial last batch; `identical_in_full_batches` checks everything before it.
    """
    if len(engine) != len(eager):
        raise CosmicAIError(
            f"benchmark phases disagree on the sample count: engine {len(engine)}, reference "
            f"{len(eager)}"
        )
    differing = [i for i, (a, b) in enumerate(zip(engine, eager, strict=True)) if a != b]
    full = len(eager) - len(eager) % batch_size
    return {
        "identical": not differing,
        "identical_in_full_batches": all(i >= full for i in differing),
        "compared": len(eager),
        "differing": len(differing),
        "first_differing": differing[:10],
        "max_abs_diff": max((abs(engine[i] - eager[i]) for i in differing), default=0.0),
    }


def _run_phase(
    phase: str, work: Path, data: Path, model: Path, batch_size: int, threads: int
) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; add its cold start (spawn to a first forward
    pass)."""
    out = work / f"{phase}.json"
    command = [
        sys.executable,
        "-m",
        "cosmicai.inference.bench_phase",
        phase,
        "--data",
        str(data),
        "--model",
        str(model),
        "--batch-size",
        str(batch_size),
        "--threads",
        str(threads),
        "--out",
        str(out),
    ]
    result, spawned, _ = run_phase(phase, command, out)
    result["cold_start_s"] = result.pop("ready_at") - spawned
    return result


def matmul_gflops(threads: int, size: int = MATMUL_SIZE, repeats: int = 3) -> float:
    """Best fp32 GFLOP/s of `size`^3 matmuls with `threads` threads (the machine's GEMM peak)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator)
        b = torch.randn(size, size, generator=generator)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / best / 1e9


def machine_info(threads: int) -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cores": available_cpus(),
        "threads": threads,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
