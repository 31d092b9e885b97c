"""`cosmicai bench engine | pipeline | cost`: the engine against the reference loop, the local
pipeline against the engine alone, and a rank's Lambda cost, the reference executor's and ours."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from cosmicai.cli.argtypes import finite_number, positive_int, whole_number
from cosmicai.cli.output import print_json, table
from cosmicai.cost import ARCHES, MEMORY_RANGE_MB
from cosmicai.errors import CosmicAIError
from cosmicai.safe_input import writable_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="performance benchmarks")
    benchmarks = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    engine = benchmarks.add_parser(
        "engine",
        help="engine vs the reference inference loop (speed, peak RSS, cold start, GFLOP/s)",
        description=(
            "Run the reference workflow's inference loop (BytesIO + torch.load of a .pt, "
            "DataLoader, torch.profiler with profile_memory, gc.collect() per batch) and our "
            "engine (.safetensors, streamed) on the same synthetic partition and full-size "
            "model, each in a fresh process with the same threads and batch size."
        ),
    )
    engine.add_argument(
        "--samples",
        type=positive_int,
        default=None,
        metavar="N",
        help="samples in the partition (default: as many as a 100 MiB partition holds)",
    )
    engine.add_argument(
        "--batch-size", type=positive_int, default=512, help="batch size (default: 512)"
    )
    engine.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="T",
        help="torch threads for both phases (default: the CPUs this process may use)",
    )
    _add_output_arguments(engine, "engine")
    engine.add_argument("--model-size", default="full", help=argparse.SUPPRESS)
    engine.set_defaults(func=run_bench_engine)

    pipeline = benchmarks.add_parser(
        "pipeline",
        help="the whole local pipeline vs the engine alone over the same data",
        description=(
            "In one run: the engine alone over the demo's partitions (a fresh process, threads = "
            "CPUs), then the whole local pipeline (the demo's payload on the local cloud) over "
            "the same partitions. Target: demo_s <= 1.15 x engine_alone_s + 3 s."
        ),
    )
    pipeline.add_argument("--samples", type=positive_int, default=2048, metavar="N")
    pipeline.add_argument("--world-size", type=positive_int, default=4, metavar="W")
    pipeline.add_argument("--batch-size", type=positive_int, default=256)
    pipeline.add_argument("--model-size", choices=("full", "tiny"), default="full")
    _add_output_arguments(pipeline, "pipeline")
    pipeline.set_defaults(func=run_bench_pipeline)

    cost = benchmarks.add_parser(
        "cost",
        help="Lambda cost per million samples: one reference rank vs one of ours",
        description=(
            "On one synthetic partition and the full-size model, each in a fresh process, against "
            "a local S3 server: one rank of the reference executor's behaviour and one of our "
            "executor (run_rank) per engine backend. Their measured init, download and compute "
            "are priced as cold Lambda invocations: the reference at 10,240 MB, ours at "
            "--memory-mb or the smallest memory that holds its peak RSS with headroom and one "
            "vCPU, compute scaled to the vCPUs Lambda gives that memory. Target: cost_ratio "
            "(ours / reference) <= 0.5."
        ),
    )
    cost.add_argument(
        "--partition-mb",
        type=_partition_mb,
        default=25.0,
        metavar="MB",
        help="partition size in MiB, as `cosmicai partition --size` makes them (default: 25)",
    )
    cost.add_argument(
        "--memory-mb",
        type=whole_number(*MEMORY_RANGE_MB),
        default=None,
        metavar="M",
        help="ours' Lambda memory (default: the smallest that holds its measured peak RSS with "
        "25%% headroom and at least one full vCPU, 1,769 MB)",
    )
    cost.add_argument("--arch", choices=ARCHES, default="x86_64", help="Lambda architecture")
    cost.add_argument(
        "--backend",
        choices=("torch", "onnxruntime", "all"),
        default="all",
        help="engine backend(s) of ours to measure (default: every available one)",
    )
    _add_output_arguments(cost, "cost")
    cost.add_argument(
        "--model-size", choices=("full", "tiny"), default="full", help=argparse.SUPPRESS
    )
    cost.set_defaults(func=run_bench_cost)


def _partition_mb(text: str) -> float:
    """A partition size in MiB that holds at least one sample."""
    from cosmicai.inference.partitioning import samples_per_file

    size = finite_number(0.0, 10240.0)(text)
    try:
        samples_per_file(size)
    except CosmicAIError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return size


def _add_output_arguments(parser: argparse.ArgumentParser, benchmark: str) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"where to save the JSON result (default: out/bench/{benchmark}-<timestamp>.json)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _result_path(args: argparse.Namespace, benchmark: str) -> Path:
    """Where the result goes, checked writable before minutes of benchmarking, not after."""
    out = args.out or Path("out/bench") / f"{benchmark}-{datetime.now():%Y%m%d-%H%M%S}.json"
    writable_dir(out.parent)
    return out


def run_bench_engine(args: argparse.Namespace) -> int:
    out = _result_path(args, "engine")
    # imported here, not at CLI start-up: it loads PyTorch
    from cosmicai.inference.bench_engine import DEFAULT_SAMPLES, run_benchmark

    result = run_benchmark(
        samples=DEFAULT_SAMPLES if args.samples is None else args.samples,
        batch_size=args.batch_size,
        threads=args.threads,
        model_size=args.model_size,
    )
    return _finish(args, out, result, engine_report)


def run_bench_pipeline(args: argparse.Namespace) -> int:
    out = _result_path(args, "pipeline")
    from cosmicai.bench_pipeline import run_benchmark

    result = run_benchmark(
        samples=args.samples,
        world_size=args.world_size,
        batch_size=args.batch_size,
        model_size=args.model_size,
    )
    return _finish(args, out, result, pipeline_report)


def run_bench_cost(args: argparse.Namespace) -> int:
    out = _result_path(args, "cost")
    from cosmicai.bench_cost import run_benchmark

    result = run_benchmark(
        partition_mb=args.partition_mb,
        memory_mb=args.memory_mb,
        arch=args.arch,
        backend=args.backend,
        model_size=args.model_size,
    )
    return _finish(args, out, result, cost_report)


def _finish(
    args: argparse.Namespace,
    out: Path,
    result: dict[str, Any],
    report: Callable[[dict[str, Any]], str],
) -> int:
    """Save the result, then print it as JSON or as the benchmark's report."""
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print_json(result)
    else:
        print(report(result))
        print(f"saved: {out}")
    return 0


def pipeline_report(result: dict[str, Any]) -> str:
    target = result["target"]
    return (
        f"pipeline benchmark: {result['samples']} samples, world size {result['world_size']}, "
        f"{result['model_size']} model, {result['cores']} CPUs\n"
        f"engine alone {result['engine_alone_s']:.2f} s, local pipeline {result['demo_s']:.2f} s: "
        f"overhead ratio {result['overhead_ratio']:.2f} (target demo_s <= "
        f"{target['demo_s_max']:.2f} s: {'met' if target['met'] else 'NOT met'})"
    )


def engine_report(result: dict[str, Any]) -> str:
    """The benchmark as a table plus one line per derived figure."""
    phases = {
        "reference": "reference",
        "engine": "engine (torch)",
        "engine_onnxruntime": "engine (onnxruntime)",
    }
    rows = [{**result[key], "phase": label} for key, label in phases.items()]
    columns = (
        ("phase", "phase", "s"),
        ("samples/s", "samples_per_s", ".1f"),
        ("wall s", "wall_s", ".2f"),
        ("peak RSS MB", "peak_rss_mb", ".0f"),
        ("cold start s", "cold_start_s", ".2f"),
        ("load avg", "load_average_1min", ".1f"),
    )
    targets, gflops, machine = result["targets"], result["gflops"], result["machine"]
    return "\n".join(
        [
            f"engine benchmark: {result['samples']} samples, batch {result['batch_size']}, "
            f"{result['threads']} threads, {result['model_size']} model "
            f"({result['flops_per_sample'] / 1e9:.3f} GFLOP/sample)",
            table(rows, columns),
            f"speedup {result['speedup']:.2f}x (target >= {targets['speedup_min']}x), "
            f"peak RSS ratio {result['rss_ratio']:.2f} (target <= {targets['rss_ratio_max']}); "
            f"targets met: {'yes' if targets['met'] else 'NO'}",
            "predictions identical to eager fp32 (the reference loop): "
            + _predictions_text(result["predictions"]),
            f"onnxruntime: ready in {result['cold_start_s']['onnxruntime']:.2f} s against torch's "
            f"{result['cold_start_s']['torch']:.2f} s (target <= "
            f"{targets['onnxruntime_cold_start_max_s']} s), predictions within "
            f"{result['engine_onnxruntime']['max_abs_diff_vs_torch']:.1e} of torch's (target <= "
            f"{targets['onnxruntime_max_abs_diff']:.0e})",
            f"GFLOP/s: model {gflops['model']:.1f}, fp32 matmul {gflops['matmul']:.1f} "
            f"({gflops['fraction']:.0%} of matmul)",
            f"machine: {machine['cpu_model']}, {machine['cores']} CPUs, torch "
            f"{machine['torch_version']}",
        ]
    )


def _predictions_text(predictions: dict[str, Any]) -> str:
    differing, diff = predictions["differing"], predictions["max_abs_diff"]
    if predictions["identical"]:
        return "yes"
    if predictions["identical_in_full_batches"]:
        return (
            f"in every full batch; {differing} sample(s) of the reference's partial last batch "
            f"differ by <= {diff:.2g} (eager GEMM edge-tile rounding)"
        )
    return f"NO: {differing} sample(s) differ, max |diff| {diff:.3g}"


def cost_report(result: dict[str, Any]) -> str:
    """Measured phases, the Lambda model of each side, the ratio, and what it assumes."""
    sides = [
        {"side": "reference", **result["reference"], "backend": "-"},
        *({"side": "ours", **side} for side in result["ours_by_backend"].values()),
    ]
    measured = (
        ("side", "side", "s"),
        ("backend", "backend", "s"),
        ("init s", "init_s", ".2f"),
        ("download s", "download_s", ".3f"),
        ("compute s", "compute_s", ".2f"),
        ("total s", "total_s", ".2f"),
        ("samples", "samples", "d"),
        ("threads", "threads", "d"),
        ("peak RSS MB", "peak_rss_mb", ".0f"),
        ("load avg", "load_average_after", ".1f"),
    )
    modelled = (
        ("side", "side", "s"),
        ("backend", "backend", "s"),
        ("memory MB", "memory_mb", "d"),
        ("vCPUs", "vcpus", ".2f"),
        ("compute s", "lambda_compute_s", ".2f"),
        ("billed s", "billed_s", ".2f"),
        ("GB-s", "gb_s", ".2f"),
        ("$/invocation", "usd_per_invocation", ".7f"),
        ("$/M samples", "usd_per_million_samples", ".3f"),
    )
    for side in sides:
        lam = side["lambda"]
        side.update(lambda_compute_s=lam["compute_s"], billed_s=lam["billed_s"],
                    gb_s=lam["gb_s"], usd_per_invocation=lam["usd_per_invocation"])  # fmt: skip
    ours, targets, machine = result["ours"], result["targets"], result["machine"]
    lines = [
        f"cost benchmark: one {result['partition_mb']:g} MB partition ({result['samples']} "
        f"samples), {result['model_size']} model, batch {result['batch_size']}, "
        f"{result['arch']}, prices {result['prices_version']} ({result['region']})",
        f"measured here ({machine['cpu_model']}, {machine['cores']} CPUs, load average "
        + "/".join(f"{load:.1f}" for load in machine["load_average"])
        + " over 1/5/15 min):",
        table(sides, measured),
        "modelled on Lambda (cold invocation, Init billed):",
        table(sides, modelled),
        f"cost ratio ours/reference {result['cost_ratio']:.3f} (target <= "
        f"{targets['cost_ratio_max']}): {'met' if targets['met'] else 'NOT met'}; "
        f"recommended backend: {result['recommended_backend']}",
        f"ours' memory: {ours['memory_mb']} MB, {ours['memory_choice']}",
    ]
    lines += [
        f"WARNING: {side['side']} ({side['backend']}) peaked at {side['peak_rss_mb']:.0f} MB, "
        f"more than its {side['memory_mb']} MB: Lambda would end it"
        for side in sides
        if not side["memory_fits"]
    ]
    lines.append("assumptions:")
    lines += [f"- {assumption}" for assumption in result["assumptions"]]
    return "\n".join(lines)
