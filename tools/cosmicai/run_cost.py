"""What one run costs on AWS: its usage counted from its logs, history and layout, then priced.

- **Lambda**: one request per REPORT line, each billed for its `Billed Duration` (which already
  includes billed Init) at its `Memory Size`, per function (init, every executor attempt,
  summarize), at the function's architecture and ephemeral storage.
- **Step Functions**, by AWS's published rule: a state transition each time a step of the
  workflow is executed, retries included, plus one per child execution a Distributed Map starts.
  Counted here as
  - the parent: every `...StateEntered` event of its execution history, plus each Task retry
    (`TaskScheduled` events beyond one per Task state entered). Without a kept history (local
    runs of older versions) the same count follows from the state machine's one path:
    Init attempts, then Ranks, Summarize attempts, Outcome and the end state;
  - the Distributed Map: one per child execution (one per rank);
  - STANDARD children: per rank, its Execute attempts (executor invocations), plus
    RecordFailure and RankFailed for a rank that finally failed. EXPRESS children instead bill
    one request per child and its duration (first attempt's Init to last attempt's end,
    rounded up to 100 ms) at 64 MB (their state data is small).
- **S3**, from what each step does with the run's layout (LIST and PUT at the PUT price, GET and
  HEAD at the GET price): after 3 HEADs (result paths free?) the client claims the run id and
  the result_path (two conditional PUTs) and uploads the payload;
  init GETs the payload, LISTs the data prefix (per 1,000 keys) and PUTs items.json; the Map
  GETs items.json and PUTs its result manifest and one result file per outcome; each executor
  attempt downloads its files (boto3: a HEAD, then one GET per 8 MiB) and its code (a LIST and
  HEAD+GET per object) or checkpoint (cold starts only, HEAD+GET), and a succeeded rank PUTs its
  record; RecordFailure PUTs one object per failed rank; summarize LISTs and GETs the rank
  records and failures and PUTs three objects. The client's polling while it follows a run is
  not counted (two LISTs a second).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cosmicai.cost import (
    WORKFLOWS,
    CostBreakdown,
    CostError,
    RunUsage,
    price_run,
    usage_from_reports,
)
from cosmicai.run_metrics import Invocation, RunData
from cosmicai.run_store import FunctionInfo

DOWNLOAD_CHUNK_BYTES = 8 * 2**20  # boto3's download_file: ranged GETs of 8 MiB
LIST_PAGE_KEYS = 1000
EXPRESS_CHILD_MEMORY_MB = 64
EXPRESS_ROUND_MS = 100


@dataclass(frozen=True)
class S3Count:
    """S3 requests of one step: `puts` at the PUT/LIST price, `gets` at the GET/HEAD price."""

    step: str
    puts: int
    gets: int


@dataclass(frozen=True)
class RunCost:
    """A run's usage, its priced breakdown, and the counts behind them."""

    usage: RunUsage
    breakdown: CostBreakdown
    transitions: dict[str, int]
    s3: tuple[S3Count, ...]

    @property
    def total_usd(self) -> float:
        return self.breakdown.total_usd

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.breakdown.to_dict(),
            "workflow": self.usage.workflow,
            "state_transitions": self.transitions,
            "s3_requests": [vars(count) for count in self.s3],
        }


def parent_transitions(history: Iterable[Mapping[str, Any]]) -> int:
    """Steps the parent execution ran: states entered plus Task retries."""
    types = [str(event.get("type", "")) for event in history]
    entered = sum(t.endswith("StateEntered") for t in types)
    extra_attempts = sum(t == "TaskScheduled" for t in types) - types.count("TaskStateEntered")
    return entered + max(0, extra_attempts)


def template_parent_transitions(data: RunData) -> int:
    """The parent's steps from the state machine's one path, when no history was kept."""
    init = max(1, len(data.role("init")))
    summarize = len(data.role("summarize"))
    if not summarize:
        return init if not data.items else init + 1
    return init + 1 + summarize + (2 if data.summary else 0)


def _ranks_failed(data: RunData) -> set[int]:
    return set(data.failures) - {int(r["rank"]) for r in data.ranks if "rank" in r}


def _attempts(invocations: Iterable[Invocation], role: str = "executor") -> dict[int, int]:
    counts: dict[int, int] = {}
    for inv in invocations:
        if inv.role == role and inv.rank is not None:
            counts[inv.rank] = counts.get(inv.rank, 0) + 1
    return counts


def _express_child_ms(invocations: list[Invocation]) -> int:
    """Billed duration of one rank's EXPRESS child: first Init to last end, in 100 ms units."""
    first = min(
        (inv.start_s or inv.end_s - inv.report.duration_ms / 1000)
        - (inv.report.init_duration_ms or 0) / 1000
        for inv in invocations
    )
    last = max(inv.end_s for inv in invocations)
    return math.ceil((last - first) * 1000 / EXPRESS_ROUND_MS) * EXPRESS_ROUND_MS


def run_usage(
    invocations: list[Invocation],
    parent_steps: int,
    world_size: int,
    *,
    map_ran: bool,
    failed_ranks: Iterable[int] = (),
    workflow: str = "standard",
    functions: Iterable[FunctionInfo] = (),
    s3: Iterable[S3Count] = (),
) -> tuple[RunUsage, dict[str, int]]:
    """The run's billable usage (see the module docstring), and its transition counts.

    `parent_steps` is the parent execution's transition count (`parent_transitions` of its
    history); `map_ran` whether its Distributed Map started children (one per rank).
    """
    if workflow not in WORKFLOWS:
        raise CostError(f"workflow must be one of {', '.join(WORKFLOWS)}; got {workflow!r}")
    info = {fn.name: fn for fn in functions}
    groups: dict[tuple[str, int], list[Invocation]] = {}
    for inv in invocations:
        groups.setdefault((inv.function, inv.report.memory_size_mb), []).append(inv)
    lambdas = []
    for (name, _memory), group in sorted(groups.items()):
        fn = info.get(name, FunctionInfo(group[0].role, name))
        lambdas.append(
            usage_from_reports(name, [i.report for i in group], fn.arch, fn.ephemeral_mb)
        )
    children = world_size if map_ran else 0
    attempts = _attempts(invocations)
    failed = set(failed_ranks)
    transitions = {"parent": parent_steps, "map_children_started": children, "children": 0}
    express: dict[str, int] = {}
    if workflow == "standard":
        transitions["children"] = sum(
            max(1, attempts.get(rank, 0)) + (2 if rank in failed else 0) for rank in range(children)
        )
    else:
        by_rank: dict[int, list[Invocation]] = {}
        for inv in invocations:
            if inv.role == "executor" and inv.rank is not None:
                by_rank.setdefault(inv.rank, []).append(inv)
        express = {
            "express_requests": children,
            "express_billed_ms_total": sum(_express_child_ms(v) for v in by_rank.values()),
            "express_memory_mb": EXPRESS_CHILD_MEMORY_MB,
        }
    s3 = list(s3)
    usage = RunUsage(
        lambdas=lambdas,
        workflow=workflow,
        state_transitions=sum(transitions.values()),
        s3_puts=sum(c.puts for c in s3),
        s3_gets=sum(c.gets for c in s3),
        **express,
    )
    return usage, transitions


def _lists(keys: int) -> int:
    return max(1, math.ceil(keys / LIST_PAGE_KEYS))


def _download_gets(files: Iterable[Mapping[str, Any]]) -> int:
    return sum(1 + max(1, math.ceil(int(f.get("size") or 0) / DOWNLOAD_CHUNK_BYTES)) for f in files)


def s3_requests(data: RunData) -> list[S3Count]:
    """The run's S3 requests, step by step, from its layout (see the module docstring)."""
    payload = data.payload or {}
    files_of = {int(item["rank"]): item.get("files", []) for item in data.items}
    listed = sum(len(files) for files in files_of.values())
    counts = [S3Count("client: check result paths, claim, upload payload", puts=3, gets=3)]
    if data.role("init") or data.items:
        counts.append(
            S3Count("init: read payload, list data, write items", 1 + _lists(listed), gets=1)
        )
    if not data.items:
        return counts
    succeeded = {int(r["rank"]) for r in data.ranks if "rank" in r}
    failed = _ranks_failed(data)
    counts.append(
        S3Count("map: read items, write result manifest", 1 + bool(succeeded) + bool(failed), 1)
    )
    script = payload.get("mode") == "script"
    folder = payload.get("object_type") != "file"
    code_lists = int(script and folder)
    code_gets = 2 * data.code_objects if script else 0
    puts, gets = len(succeeded), 0
    for inv in data.role("executor"):
        gets += _download_gets(files_of.get(inv.rank, [])) + code_gets
        puts += code_lists
        if payload.get("model") and not script and inv.cold_start:
            gets += 2
    counts.append(S3Count("executor: download data and code, write rank records", puts, gets))
    if failed:
        counts.append(S3Count("map: record failed ranks", len(failed), 0))
    if data.role("summarize"):
        records = len(data.ranks) + len(data.failures)
        counts.append(
            S3Count(
                "summarize: read rank records, write results",
                _lists(len(data.ranks)) + _lists(len(data.failures)) + 3,
                records,
            )
        )
    return counts


def cost_of_run(
    data: RunData, prices: Mapping[str, Any] | None = None, workflow: str | None = None
) -> RunCost:
    """Price a run. `workflow` overrides the child type the platform ran (what-if)."""
    parent = (
        parent_transitions(data.history)
        if data.history is not None
        else template_parent_transitions(data)
    )
    s3 = s3_requests(data)
    usage, transitions = run_usage(
        data.invocations,
        parent,
        data.world_size or 0,
        map_ran=bool(data.items),
        failed_ranks=_ranks_failed(data),
        workflow=workflow or data.map_execution_type,
        functions=data.functions,
        s3=s3,
    )
    return RunCost(usage, price_run(usage, prices), transitions, tuple(s3))
