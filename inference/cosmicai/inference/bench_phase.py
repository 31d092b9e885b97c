"""One phase of `cosmicai bench engine`, in its own fresh process (see `bench_engine`).

This module imports nothing heavy at the top, so a phase's cold start is what that phase
imports: the reference and torch phases PyTorch, the onnxruntime phase only ONNX Runtime and
NumPy. The phase marks itself ready after its first forward pass (one zero micro-batch), so
`cold_start_s` is process start to a model that has run once.

Run a phase by hand: `python -m cosmicai.inference.bench_phase PHASE --data FILE --model FILE
--batch-size B --threads T --out RESULT.json`. `run_phase` is how every benchmark (engine, cost,
pipeline) runs its phases.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cosmicai.errors import CosmicAIError

PHASES = ("reference", "engine", "engine-onnxruntime")
BACKEND_OF_PHASE = {"engine": "torch", "engine-onnxruntime": "onnxruntime"}


def run_phase(
    phase: str, command: list[str], out: Path, env: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], float, float]:
    """Run a benchmark phase's `command` in a fresh process; it writes its JSON result to `out`.

    Returns (the result, spawn time, exit time; both seconds since the epoch, comparable with a
    child's own `time.time()`). A failed phase is a CosmicAIError with the end of its stderr.
    """
    spawned = time.time()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    exited = time.time()
    if done.returncode != 0:
        raise CosmicAIError(
            f"benchmark phase {phase!r} failed (exit {done.returncode}):\n"
            f"{done.stderr.strip()[-2000:]}"
        )
    result: dict[str, Any] = json.loads(out.read_text())
    return result, spawned, exited


Outcome = tuple[list[float], int, dict[str, Any], float, float]
"""predictions, samples, details, ready_at (epoch seconds), wall_s (data and inference)."""


def _reference(args: argparse.Namespace) -> Outcome:
    import torch

    from cosmicai.inference.checkpoint import load_model
    from cosmicai.inference.reference_loop import run_reference

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    config = loaded.config
    with torch.no_grad():
        loaded.model(
            torch.zeros(1, config.in_chans, config.img_size, config.img_size),
            torch.zeros(1, config.in_chans),
        )
    ready_at, start = time.time(), time.perf_counter()
    run = run_reference(loaded.model, args.data, args.batch_size)
    wall_s = time.perf_counter() - start
    details = {"num_batches": run.num_batches, "reported": run.reported}
    return run.predictions, run.samples, details, ready_at, wall_s


def _engine(args: argparse.Namespace) -> Outcome:
    import numpy as np

    from cosmicai.inference.backends import load_engine_model
    from cosmicai.inference.engine import EngineConfig, run_inference

    config = EngineConfig(batch_size=args.batch_size, threads=args.threads)
    micro_batch = config.resolved_micro_batch()
    model = load_engine_model(
        args.model, backend=BACKEND_OF_PHASE[args.phase], micro_batch=micro_batch
    )
    workers = args.threads
    with model.open(micro_batch, args.threads, workers, "cpu") as forward:
        forward(
            np.zeros((micro_batch, *model.sample_shape), dtype=np.float32),
            np.zeros((micro_batch, model.sample_shape[0]), dtype=np.float32),
        )
    ready_at, start = time.time(), time.perf_counter()
    result = run_inference(model, [args.data], config)
    wall_s = time.perf_counter() - start
    keys = ("num_batches", "micro_batch", "padded_samples", "load_s", "compute_s", "backend")
    details = {key: result.record[key] for key in keys}
    return result.predictions, result.record["samples"], details, ready_at, wall_s


def main(argv: list[str] | None = None) -> None:
    """Load the model, run it once (ready), run the phase, write the result JSON."""
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("phase", choices=PHASES)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    run = _reference if args.phase == "reference" else _engine
    predictions, samples, details, ready_at, wall_s = run(args)
    from cosmicai.peak_memory import peak_rss_mb

    summary = {
        "samples_per_s": samples / wall_s,
        "wall_s": wall_s,
        "peak_rss_mb": peak_rss_mb(),
        "ready_at": ready_at,
        "samples": samples,
        "load_average_1min": os.getloadavg()[0],  # other work on the machine skews the timings
        **details,
        "predictions": predictions,
    }
    args.out.write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
