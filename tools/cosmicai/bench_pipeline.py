"""Benchmark: the whole local pipeline against the engine alone, on the same data in one run.

* engine alone: one fresh process (interpreter start, imports, model build included) runs the
  engine over every partition with as many threads as this machine has CPUs;
* pipeline: `run_local` with the demo's payload over the same partitions: the local cloud's
  start, deployment, Init, the Distributed Map's executor ranks (queued on the machine's CPUs),
  Summarize, and the download of the results.

`overhead_ratio = demo_s / engine_alone_s`; the target is `demo_s <= 1.15 x engine_alone_s + 3 s`.

Run the engine phase by hand: `python -m cosmicai.bench_pipeline FILE... --model-size full
--batch-size 256 --out RESULT.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cosmicai.demo import demo_payload, prepare_demo_data
from cosmicai.errors import CosmicAIError
from cosmicai.inference.bench_phase import run_phase
from cosmicai.local_store import LocalS3Mirror
from cosmicai.pipeline.layout import new_run_id

TARGET = {"ratio": 1.15, "slack_s": 3.0}


def run_benchmark(
    *, samples: int = 2048, world_size: int = 4, batch_size: int = 256, model_size: str = "full"
) -> dict[str, Any]:
    """Run both phases over the same synthetic partitions; returns the figures."""
    from cosmicai.localcloud.session import run_local

    if samples < world_size:
        raise CosmicAIError(f"--samples {samples} must be at least --world-size {world_size}")
    with tempfile.TemporaryDirectory(prefix="cosmicai-bench-pipeline-") as tmp:
        work = Path(tmp)
        mirror = LocalS3Mirror(work / "home")
        files = prepare_demo_data(samples, world_size, work, seed=0, mirror=mirror)
        engine = _engine_alone(files, model_size, batch_size, work / "engine.json")
        run_id = new_run_id("bench")
        started = time.perf_counter()
        local = run_local(demo_payload(run_id, world_size, batch_size, model_size), mirror=mirror)
        demo_s = time.perf_counter() - started
    summary = local.summary or {}
    if local.execution.get("status") != "SUCCEEDED" or summary.get("status") != "succeeded":
        raise CosmicAIError(
            f"the pipeline run {run_id} did not succeed: {summary.get('message', local.execution)}"
        )
    bound = TARGET["ratio"] * engine["wall_s"] + TARGET["slack_s"]
    return {
        "benchmark": "pipeline",
        "samples": samples,
        "world_size": world_size,
        "batch_size": batch_size,
        "model_size": model_size,
        "cores": len(os.sched_getaffinity(0)),
        "engine_alone_s": round(engine["wall_s"], 3),
        "engine_threads": engine["threads"],
        "demo_s": round(demo_s, 3),
        "overhead_ratio": round(demo_s / engine["wall_s"], 3),
        "ranks": [
            {k: rank.get(k) for k in ("rank", "samples", "wall_s", "compute_s", "download_s")}
            for rank in summary.get("ranks", [])
        ],
        "target": {**TARGET, "demo_s_max": round(bound, 3), "met": demo_s <= bound},
    }


def _engine_alone(files: list[Path], model_size: str, batch_size: int, out: Path) -> dict[str, Any]:
    """The engine over `files` in a fresh process; wall time from spawn to exit."""
    command = [
        sys.executable, "-m", __name__, *map(str, files), "--model-size", model_size,
        "--batch-size", str(batch_size), "--out", str(out),
    ]  # fmt: skip
    result, spawned, exited = run_phase("engine alone", command, out)
    return {**result, "wall_s": exited - spawned}


def _engine_main(argv: list[str] | None = None) -> None:
    """Child process: build the model, run the engine over the files with every CPU."""
    from cosmicai.inference.checkpoint import load_model
    from cosmicai.inference.engine import EngineConfig, available_cpus, run_inference
    from cosmicai.inference.model import AstroMAEConfig

    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--model-size", choices=("full", "tiny"), required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    config = AstroMAEConfig.tiny() if args.model_size == "tiny" else AstroMAEConfig()
    threads = available_cpus()
    result = run_inference(
        load_model(None, config=config), args.files, EngineConfig(args.batch_size, threads)
    )
    args.out.write_text(json.dumps({"samples": result.record["samples"], "threads": threads}))


if __name__ == "__main__":
    _engine_main()
