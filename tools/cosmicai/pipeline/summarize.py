"""The summarize step: combine the rank records into the run's results.

Writes `<result_path>/combined_data.json` (the reference's name and format: a list with one
record per rank, in rank order) and `summary.json` beside it (and under the run's prefix), with
aggregate metrics over all samples, totals, a per-rank table, and the ranks that failed or are
missing. A run with failed or missing ranks is reported as partial (within the tolerated
failure setting) or failed, never as succeeded. `samples` is null (unknown) when a rank's record
has no sample count (a script's that reports none; see `cosmicai.reference_results`), and
`samples_unknown_ranks` names those ranks.
"""

from __future__ import annotations

import json
from typing import Any

from cosmicai.inference.metrics import redshift_metrics
from cosmicai.pipeline.layout import RunLayout, combined_key, result_summary_key
from cosmicai.pipeline.s3objects import iter_objects

RANK_TABLE_FIELDS = (
    "rank",
    "samples",
    "wall_s",
    "load_s",
    "compute_s",
    "samples_per_s",
    "peak_rss_mb",
    "download_s",
    "request_id",
)


def _read_json_objects(s3: Any, bucket: str, prefix: str) -> dict[str, Any]:
    """Every JSON object under a prefix, by key."""
    return {
        obj["Key"]: json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
        for obj in iter_objects(s3, bucket, prefix)
    }


def _failures(s3: Any, bucket: str, layout: RunLayout, succeeded: set[int]) -> list[dict[str, Any]]:
    """Final errors of failed ranks, as the state machine's RecordFailure state stored them
    (`failures/<rank>.json` holding the Catch's {"Error", "Cause"})."""
    failures = []
    for key, error in _read_json_objects(s3, bucket, layout.failures_prefix).items():
        rank = layout.failure_rank(key)
        if rank is not None and rank not in succeeded:
            failures.append(
                {"rank": rank, "error": error.get("Error"), "cause": _cause(error.get("Cause"))}
            )
    return sorted(failures, key=lambda f: f["rank"])


def _cause(cause: str | None) -> str | None:
    """A Lambda error's cause is its JSON error body: keep just its message."""
    if cause is None:
        return None
    try:
        message = json.loads(cause)["errorMessage"]
    except (TypeError, ValueError, KeyError):
        return cause
    return message if isinstance(message, str) else cause


def _status(
    world_size: int, unsuccessful: int, tolerated_percentage: float, map_failed: bool
) -> str:
    """succeeded, partial (failures within the tolerated percentage) or failed.

    The threshold is applied here rather than trusted to the Map state alone, so the verdict is
    the same on AWS and on emulators that ignore ToleratedFailurePercentage.
    """
    if unsuccessful == 0 and not map_failed:
        return "succeeded"
    if (
        map_failed
        or unsuccessful == world_size
        or 100 * unsuccessful / world_size > tolerated_percentage
    ):
        return "failed"
    return "partial"


def _metrics(predictions: list[float], truths: list[float]) -> dict[str, Any]:
    """Aggregate metrics, or the reason they cannot be computed (e.g. NaN predictions)."""
    try:
        return redshift_metrics(predictions, truths)
    except ValueError as exc:
        return {"error": str(exc)}


def summarize_run(s3: Any, event: dict[str, Any]) -> dict[str, Any]:
    """Summarize Lambda body; returns the small outcome the state machine branches on."""
    run_id, bucket = event["run_id"], event["bucket"]
    world_size = int(event["world_size"])
    settings = event.get("settings") or {}
    layout = RunLayout(run_id)
    records = sorted(
        _read_json_objects(s3, bucket, layout.ranks_prefix).values(), key=lambda r: r["rank"]
    )
    succeeded = {r["rank"] for r in records}
    failures = _failures(s3, bucket, layout, succeeded)
    failed = {f["rank"] for f in failures}
    missing = [r for r in range(world_size) if r not in succeeded | failed]
    map_error = event.get("map_error")
    status = _status(
        world_size,
        len(failed) + len(missing),
        float(event.get("tolerated_failure_percentage") or 0),
        map_error is not None,
    )

    predictions = [p for r in records for p in r.get("predictions") or []]
    truths = [t for r in records for t in r.get("true_redshift") or []]
    labelled = bool(truths) and len(truths) == len(predictions)
    # a script's rank without a sample count (see cosmicai.reference_results) makes it unknown
    unknown_samples = [r["rank"] for r in records if r.get("samples") is None]
    samples = None if unknown_samples else sum(int(r["samples"]) for r in records)
    walls = [float(r["wall_s"]) for r in records if r.get("wall_s") is not None]
    started = [r["started_at"] for r in records if "started_at" in r]
    ended = [r["ended_at"] for r in records if "ended_at" in r]
    span_s = (max(ended) - min(started)) if started and ended else None

    problems = [f"rank {f['rank']} failed: {f['error']}: {f['cause']}" for f in failures]
    problems += [f"rank {r} is missing (no result and no recorded error)" for r in missing]
    if map_error is not None and not problems:
        problems.append(f"{map_error.get('Error')}: {map_error.get('Cause')}")
    message = (
        "; ".join(problems) if problems else f"{len(succeeded)} of {world_size} ranks succeeded"
    )

    result_prefix = (settings.get("result_path") or layout.results_prefix).strip("/")
    summary = {
        "run_id": run_id,
        "status": status,
        "message": message,
        "team": settings.get("team"),
        "mode": settings.get("mode"),
        "world_size": world_size,
        "ranks_succeeded": len(succeeded),
        "ranks_failed": len(failed),
        "ranks_missing": len(missing),
        "failed_ranks": failures,
        "missing_ranks": missing,
        "samples": samples,
        "samples_unknown_ranks": unknown_samples,
        "metrics": _metrics(predictions, truths) if labelled else None,
        "model_trained": all(r.get("model_trained", True) for r in records) if records else None,
        "model_source": records[0].get("model_source") if records else None,
        "totals": {
            "rank_wall_s_max": max(walls) if walls else None,
            "rank_wall_s_sum": sum(walls),
            "span_s": span_s,
            "samples_per_s": samples / span_s if span_s and samples is not None else None,
        },
        "ranks": [{k: r.get(k) for k in RANK_TABLE_FIELDS} for r in records],
        "combined_key": combined_key(result_prefix),
        "summary_key": result_summary_key(result_prefix),
    }
    for key, body in (
        (summary["combined_key"], records),
        (summary["summary_key"], summary),
        (layout.summary_key, summary),
    ):
        s3.put_object(
            Bucket=bucket, Key=key, Body=json.dumps(body).encode(), ContentType="application/json"
        )
    return {
        "run_id": run_id,
        "status": status,
        "summary_key": summary["summary_key"],
        "combined_key": summary["combined_key"],
        "ranks_failed": len(failed) + len(missing),
        "message": message,
    }
