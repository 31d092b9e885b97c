"""Memory and batch-size tuning, in the spirit of AWS Lambda Power Tuning.

The same payload runs once per (executor memory, batch size), each run with its own run id and
result path. Locally each run gets a fresh local cloud whose executor has that memory (the
local runtime gives a worker the vCPUs Lambda gives the memory, about 1 per 1,769 MB, capped by
this machine, so local figures are indicative). On AWS the shared executor's $LATEST, which
other teams' runs invoke, is left alone: the sweep publishes a version of the executor per
memory setting (each one a MemorySize update of $LATEST then PublishVersion, back to back, and
$LATEST is restored before any run; only for those few seconds does $LATEST carry a tuning
memory), starts its runs with that version as their executor_qualifier, and deletes the
versions it published at the end, also on error or Ctrl-C. Every run is then priced from
its REPORT lines (`cosmicai.run_cost`), and the sweep recommends the cheapest, the fastest and
a balanced configuration (the smallest cost x time). Each run is also priced with the executor
at x86_64 and at arm64 (20% less per GB-second), for the same measured durations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosmicai.cost import MEMORY_RANGE_MB, CostError
from cosmicai.errors import CosmicAIError
from cosmicai.local_store import LocalS3Mirror
from cosmicai.payload import Payload, validate_payload
from cosmicai.pipeline.layout import new_run_id
from cosmicai.run_cost import cost_of_run
from cosmicai.run_metrics import RunData, load_run
from cosmicai.run_store import FunctionInfo, RunStore
from cosmicai.target import Target

ARCH_NOTE = (
    "cost x86_64 / cost arm64: the run priced with the executor on each architecture; the "
    "arm64 figure assumes the same durations as measured (arm64 is 20% cheaper per GB-second, "
    'but may run slower or faster: measure it with executor_architecture = "arm64").'
)
LOCAL_NOTE = (
    "Local figures are indicative: each local worker gets the vCPUs its memory would get on "
    "Lambda (about 1 per 1,769 MB), capped by this machine's {cpus} CPUs, and costs are what "
    "AWS would bill for the measured durations."
)


@dataclass(frozen=True)
class TuneResult:
    """One configuration of the sweep and how its run went."""

    memory_mb: int
    batch_size: int
    run_id: str
    status: str
    duration_s: float | None
    cost_usd: float
    samples: int
    samples_per_s: float | None
    cost_x86_64_usd: float | None = None
    cost_arm64_usd: float | None = None

    @property
    def label(self) -> str:
        return f"{self.memory_mb} MB / batch {self.batch_size}"


def parse_sizes(text: str, name: str, low: int, high: int | None = None) -> list[int]:
    """A comma-separated list of whole numbers within [low, high], duplicates removed."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise CostError(
                f"{name}: {part!r} is not a whole number; give a comma-separated list such as "
                f"{low},{2 * low}"
            ) from None
        if value < low or (high is not None and value > high):
            bound = f"{low} to {high}" if high is not None else f"at least {low}"
            raise CostError(f"{name}: {value} is out of range; use values {bound}")
        if value not in values:
            values.append(value)
    return values


def parse_memory(text: str) -> list[int]:
    return parse_sizes(text, "--memory (Lambda memory in MB)", *MEMORY_RANGE_MB)


def parse_batch_sizes(text: str) -> list[int]:
    return parse_sizes(text, "--batch-size", 1)


def config_payload(payload: Payload, batch_size: int, run_id: str) -> Payload:
    """The payload of one configuration: its batch size and a result path of its own."""
    settings = payload.to_dict()
    settings.update(batch_size=batch_size, result_path=f"{payload.result_path}/tune/{run_id}")
    return validate_payload(settings)


def cost_at(data: RunData, arch: str) -> float:
    """The run's cost had its executor run on `arch` for the same billed durations."""
    unlisted = {i.function for i in data.role("executor")} - {fn.name for fn in data.functions}
    listed = [*data.functions, *(FunctionInfo("executor", name) for name in sorted(unlisted))]
    functions = [
        dataclasses.replace(fn, arch=arch) if fn.role == "executor" else fn for fn in listed
    ]
    return cost_of_run(dataclasses.replace(data, functions=functions)).total_usd


def result_of(store: RunStore, run_id: str, memory_mb: int, batch_size: int) -> TuneResult:
    data = load_run(store, run_id)
    overview = data.overview()
    return TuneResult(
        memory_mb=memory_mb,
        batch_size=batch_size,
        run_id=run_id,
        status=data.status,
        duration_s=data.duration_s,
        cost_usd=cost_of_run(data).total_usd,
        samples=data.samples,
        samples_per_s=overview["samples_per_s"],
        cost_x86_64_usd=cost_at(data, "x86_64"),
        cost_arm64_usd=cost_at(data, "arm64"),
    )


Progress = Callable[[str], None]


def sweep_local(
    payload: Payload,
    memories: list[int],
    batch_sizes: list[int],
    *,
    on_progress: Progress = lambda _: None,
    mirror: LocalS3Mirror | None = None,
) -> list[TuneResult]:
    """Run every configuration on a fresh local cloud whose executor has that memory."""
    from cosmicai.defaults import FUNCTIONS
    from cosmicai.localcloud.session import run_local
    from cosmicai.run_store import LocalRuns

    mirror = mirror or LocalS3Mirror()
    store = LocalRuns(mirror)
    results = []
    for memory in memories:
        executor = dataclasses.replace(FUNCTIONS["executor"], memory_mb=memory)
        for batch in batch_sizes:
            run_id = new_run_id(payload.team)
            on_progress(f"run {run_id}: executor {memory} MB, batch size {batch}")
            run_local(
                config_payload(payload, batch, run_id),
                run_id=run_id,
                mirror=mirror,
                functions={"executor": executor},
            )
            results.append(result_of(store, run_id, memory, batch))
    return results


def sweep_aws(
    target: Target,
    payload: Payload,
    memories: list[int],
    batch_sizes: list[int],
    *,
    on_progress: Progress = lambda _: None,
) -> list[TuneResult]:
    """Run the batch sizes on a version of the executor per memory; $LATEST stays as it is."""
    from cosmicai.run_store import CloudRuns
    from cosmicai.runner import follow, start_run

    runs: list[tuple[str, int, int]] = []
    with tuning_versions(target.client("lambda"), target.functions["executor"], memories) as found:
        for memory in memories:
            tuned = dataclasses.replace(target, executor_qualifier=found[memory])
            for batch in batch_sizes:
                run_id = new_run_id(payload.team)
                on_progress(
                    f"run {run_id}: executor {memory} MB (version {found[memory]}), "
                    f"batch size {batch}"
                )
                config = config_payload(payload, batch, run_id)
                _, arn = start_run(tuned, config, run_id=run_id)
                follow(tuned, run_id, arn, config.bucket, config.world_size)
                runs.append((run_id, memory, batch))
    on_progress("collecting REPORT lines (CloudWatch Logs can take a minute)")
    store = CloudRuns(target)
    return [result_of(store, run_id, memory, batch) for run_id, memory, batch in runs]


@contextmanager
def tuning_versions(lam: Any, function: str, memories: list[int]) -> Iterator[dict[int, str]]:
    """{memory: version} of `function`, published back to back with $LATEST restored right
    after; on leaving, the versions this published are deleted (ones that existed are kept:
    PublishVersion returns the latest version when $LATEST is unchanged since)."""
    existing = set(_versions(lam, function))
    original = lam.get_function_configuration(FunctionName=function)["MemorySize"]
    published: dict[int, str] = {}
    try:
        try:
            for memory in memories:
                _set_memory(lam, function, memory)
                published[memory] = lam.publish_version(
                    FunctionName=function, Description=f"cosmicai tune: executor at {memory} MB"
                )["Version"]
        finally:
            _set_memory(lam, function, original)
        yield published
    finally:
        for version in sorted(set(published.values()) - existing):
            lam.delete_function(FunctionName=function, Qualifier=version)


def _versions(lam: Any, function: str) -> Iterator[str]:
    for page in lam.get_paginator("list_versions_by_function").paginate(FunctionName=function):
        yield from (v["Version"] for v in page["Versions"])


def _set_memory(lam: Any, function: str, memory_mb: int) -> None:
    lam.update_function_configuration(FunctionName=function, MemorySize=memory_mb)
    lam.get_waiter("function_updated").wait(FunctionName=function)


def recommend(results: list[TuneResult]) -> dict[str, TuneResult]:
    """Cheapest, fastest and balanced (smallest cost x time) among the succeeded runs."""
    done = [r for r in results if r.status == "succeeded" and r.duration_s is not None]
    if not done:
        raise CosmicAIError(
            "no configuration of the sweep succeeded, so there is nothing to recommend: see each "
            "run with `cosmicai report RUN_ID` (too little memory for the model?)"
        )
    return {
        "cheapest": min(done, key=lambda r: (r.cost_usd, r.duration_s)),
        "fastest": min(done, key=lambda r: (r.duration_s, r.cost_usd)),
        "balanced": min(done, key=lambda r: (r.cost_usd * r.duration_s, r.duration_s)),
    }


def plot_sweep(results: list[TuneResult], picks: dict[str, TuneResult], path: Path) -> Path:
    """Cost vs time per configuration, the recommendations ringed; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for r in results:
        if r.duration_s is None:
            continue
        failed = r.status != "succeeded"
        axes.scatter(r.duration_s, r.cost_usd, color="#c62828" if failed else "#1565c0")
        axes.annotate(
            r.label + (" (failed)" if failed else ""),
            (r.duration_s, r.cost_usd),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    for (name, pick), marker in zip(picks.items(), ("o", "s", "D"), strict=True):
        axes.scatter(
            pick.duration_s,
            pick.cost_usd,
            s=220,
            facecolors="none",
            edgecolors="#2e7d32",
            marker=marker,
            label=f"{name}: {pick.label}",
        )
    axes.set_xlabel("run wall time (s)")
    axes.set_ylabel("run cost (USD)")
    axes.set_title("cost vs time per configuration")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path
