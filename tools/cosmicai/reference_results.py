"""Per-rank records in the CosmicAI reference format, and importing a past reference run.

A reference script writes one record per rank (`<result_path>/<rank>.json`) and the reference
summarize concatenates them into `combined_data.json`. Its fields mean what they meant there:
`total_cpu_time (seconds)` and `total_cpu_memory (MB)` come from torch.profiler, run with
`profile_memory=True`; `execution_time (seconds/batch)` is that CPU time per batch.

`cosmicai import-results` stores such a file in the local store as a run (`imported-<name>`):
an execution record marked `imported`, one rank record per entry and a summary, so `runs`,
`compare` and `report` show it beside ours. It has no REPORT lines, so no billed cost.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosmicai.errors import CosmicAIError
from cosmicai.pipeline.layout import RunLayout, check_run_id
from cosmicai.safe_input import MAX_RECORD_BYTES, read_json_file

if TYPE_CHECKING:  # the executor imports this module; it has no local cloud
    from cosmicai.local_store import LocalS3Mirror

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
NUMERIC_FIELDS = REFERENCE_FIELDS[:5] + REFERENCE_FIELDS[6:8]
PROFILER_MEMORY_NOTE = (
    "total_cpu_memory (MB) of a reference run is torch.profiler's memory figure (memory its "
    "operators allocated, summed over the run), not the process's peak memory: it can exceed "
    "the Lambda's memory size. Our runs report peak RSS there and the REPORT lines' Max Memory "
    "Used beside it."
)
IMPORTED_BUCKET = "cosmicai-runs"  # the local runs bucket, where `cosmicai runs` looks first
_COUNT_FIELDS = ("samples", "num_samples", "total_samples")


class ReferenceImportError(CosmicAIError):
    """A combined_data.json that cannot be imported as a reference run."""

    exit_code = 2


def reference_samples(record: dict[str, Any]) -> tuple[int | None, str | None]:
    """A reference record's sample count and where it comes from, or (None, None).

    An explicit count wins. Otherwise `sample_persec x total_cpu_time (seconds)`: the reference
    computes sample_persec as samples / that time, so the product is the count (rounded); it is
    kept only if it fits the record's batches ((num_batches - 1) x batch_size, num_batches x
    batch_size]. `num_batches x batch_size` alone overcounts a short last batch: never used.
    """
    for name in _COUNT_FIELDS:
        value = record.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value, name
    rate, cpu_s = record.get("sample_persec"), record.get("total_cpu_time (seconds)")
    if not all(_finite(v) for v in (rate, cpu_s)):
        return None, None
    derived = round(rate * cpu_s)
    batches, size = record.get("num_batches"), record.get("batch_size")
    if _finite(batches) and _finite(size) and not (batches - 1) * size < derived <= batches * size:
        return None, None
    return derived, "sample_persec x total_cpu_time (seconds)"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_records(data: Any, source: str) -> list[dict[str, Any]]:
    """The combined_data.json's records; ReferenceImportError naming every problem."""
    if not isinstance(data, list) or not data:
        raise ReferenceImportError(
            f"{source}: expected a non-empty JSON list of per-rank records (the reference's "
            f"combined_data.json), got {type(data).__name__}"
        )
    problems = []
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            problems.append(f"entry {index} is {type(record).__name__}, not an object")
            continue
        if not any(field in record for field in REFERENCE_FIELDS):
            problems.append(f"entry {index} has none of the reference fields")
        problems += [
            f"entry {index}: {field!r} must be a number, got {record[field]!r}"
            for field in NUMERIC_FIELDS
            if record.get(field) is not None and not _finite(record[field])
        ]
    if problems:
        fields = ", ".join(REFERENCE_FIELDS)
        raise ReferenceImportError(f"{source}: {'; '.join(problems)} (expected fields: {fields})")
    return data


def slug(text: str) -> str:
    """Lowercase letters, digits and single hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def imported_run_id(name: str) -> str:
    """`imported-<name>`, checked like every run id."""
    try:
        return check_run_id(f"imported-{name}"[:80].rstrip("-"))
    except CosmicAIError:
        hint = f' (e.g. --name "{slug(name)}")' if slug(name) else ""
        raise ReferenceImportError(
            f"--name {name!r} cannot name a run: use lowercase letters, digits and hyphens{hint}"
        ) from None


def rank_records(records: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """Our rank records for the reference's: its fields kept, rank and samples added."""
    ranks = []
    for index, record in enumerate(records):
        samples, source = reference_samples(record)
        rank = record.get("rank") if isinstance(record.get("rank"), int) else index
        ranks.append(
            {
                **record,
                "rank": rank,
                "run_id": run_id,
                "status": "succeeded",
                "samples": samples,
                "samples_source": source,
            }
        )
    return ranks


def imported_summary(run_id: str, ranks: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """A summary built from the records (same keys as summarize's where they are known)."""
    unknown = [r["rank"] for r in ranks if r["samples"] is None]
    samples = None if unknown else sum(r["samples"] for r in ranks)
    return {
        "run_id": run_id,
        "status": "succeeded",
        "message": f"imported from {source}: {len(ranks)} ranks (a past reference run)",
        "mode": "imported",
        "world_size": len(ranks),
        "ranks_succeeded": len(ranks),
        "ranks_failed": 0,
        "ranks_missing": 0,
        "failed_ranks": [],
        "missing_ranks": [],
        "samples": samples,
        "samples_unknown_ranks": unknown,
        "metrics": None,
        "model_trained": None,
        "totals": {"samples_per_s": None},
        "ranks": [
            {"rank": r["rank"], "samples": r["samples"], "samples_per_s": r.get("sample_persec")}
            for r in ranks
        ],
        "memory_note": PROFILER_MEMORY_NOTE,
    }


def import_results(
    path: Path, name: str | None = None, mirror: LocalS3Mirror | None = None
) -> dict[str, Any]:
    """Store a reference combined_data.json as the run `imported-<name>`; returns its summary.

    `name` defaults to the file's folder name (e.g. "run 1" -> "run-1").
    """
    from cosmicai.local_store import LocalS3Mirror

    mirror = mirror or LocalS3Mirror()
    records = check_records(read_json_file(path, max_bytes=MAX_RECORD_BYTES), str(path))
    run_id = imported_run_id(name if name is not None else slug(path.resolve().parent.name))
    layout = RunLayout(run_id)
    if any(mirror.root.glob(f"*/{layout.execution_key}")):
        raise ReferenceImportError(
            f"run {run_id} already exists in {mirror.root}: choose another --name"
        )
    ranks = rank_records(records, run_id)
    now = datetime.now(UTC).isoformat()
    execution = {
        "name": run_id,
        "status": "SUCCEEDED",
        "startDate": now,
        "stopDate": now,
        "imported": {
            "source": str(path.resolve()),
            "format": "reference combined_data.json",
            "imported_at": now,
        },
    }
    summary = imported_summary(run_id, ranks, path.name)
    objects = {layout.rank_key(r["rank"]): r for r in ranks}
    objects |= {layout.summary_key: summary, layout.execution_key: execution}
    for key, body in objects.items():  # the execution record last: it makes the run visible
        target = mirror.path(IMPORTED_BUCKET, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(body, indent=1), encoding="utf-8")
    return summary
