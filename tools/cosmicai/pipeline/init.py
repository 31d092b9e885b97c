"""The init step: validate the run's payload, assign partition files to ranks, write the items.

Its return value is a small pointer (a few hundred bytes whatever the world size): the items
themselves go to `runs/<run_id>/items.json`, which the Distributed Map reads with an ItemReader.

A redrive (input `"redrive": true, "redrive_number": n`, see `cosmicai.runner.start_redrive`)
plans only the ranks of the run that have no successful record: it writes them, with the same
rank numbers, files and world size, to `runs/<run_id>/items-redrive-<n>.json`, removes their old
failure records, and returns the same pointer, so the Map runs just those ranks and Summarize
combines every rank's record, old and new.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cosmicai.errors import CosmicAIError
from cosmicai.payload import Payload, PayloadError, Problem, validate_payload
from cosmicai.pipeline.layout import RunLayout
from cosmicai.pipeline.s3objects import iter_objects

PARTITION_SUFFIXES = (".safetensors", ".pt")
_QUALIFIER = re.compile(r"^(\$LATEST|[A-Za-z0-9_-]{1,128})$")  # a Lambda version or alias

# Payload keys each rank needs; carried once in the state, not repeated per item.
EXECUTOR_SETTINGS = (
    "mode",
    "batch_size",
    "device",
    "threads",
    "backend",
    "model",
    "model_size",
    "trust_pickle",
    "script",
    "S3_object_name",
    "object_type",
    "result_path",
    "data_bucket",
    "data_prefix",
    "communication",
    "team",
)


class NoDataError(CosmicAIError):
    """The data prefix holds no partition files, or too few for the world size."""


class NothingToRedrive(CosmicAIError):
    """Every rank of the run has a successful record."""


def assign_files(keys: list[str], world_size: int) -> list[list[str]]:
    """Balanced, deterministic, order-preserving assignment of files to ranks.

    Rank r gets the contiguous block keys[floor(r*n/w) : floor((r+1)*n/w)], so block sizes differ
    by at most one and concatenating the ranks' outputs in rank order gives the file order.
    """
    n = len(keys)
    if world_size > n:
        raise NoDataError(
            f"world_size {world_size} is larger than the number of partition files ({n}): "
            f"every rank needs at least one file. Lower world_size to at most {n}, or "
            f"re-partition the data into smaller files (cosmicai partition --size ...)."
        )
    return [keys[r * n // world_size : (r + 1) * n // world_size] for r in range(world_size)]


def list_partitions(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Partition files under s3://bucket/prefix, sorted by key (manifests and others skipped)."""
    found = [
        {"key": obj["Key"], "size": obj["Size"]}
        for obj in iter_objects(s3, bucket, prefix.rstrip("/") + "/")
        if obj["Key"].endswith(PARTITION_SUFFIXES)
    ]
    return sorted(found, key=lambda o: o["key"])


def plan_run(s3: Any, run_id: str, bucket: str, payload: Payload) -> dict[str, Any]:
    """List and assign the files, write items.json, and return the pointer for the state."""
    files = list_partitions(s3, payload.data_bucket, payload.data_prefix)
    if payload.file_limit is not None:
        files = files[: payload.file_limit]
    if not files:
        raise NoDataError(
            f"no partition files ({', '.join(PARTITION_SUFFIXES)}) under "
            f"s3://{payload.data_bucket}/{payload.data_prefix}/: check data_bucket and "
            f"data_prefix, or upload data with `cosmicai partition ... --out s3://...`."
        )
    world_size = payload.world_size or len(files)
    by_key = {f["key"]: f for f in files}
    blocks = assign_files([f["key"] for f in files], world_size)
    items = [
        {
            "rank": rank,
            "files": [{"bucket": payload.data_bucket, **by_key[key]} for key in block],
        }
        for rank, block in enumerate(blocks)
    ]
    layout = RunLayout(run_id)
    _put_items(s3, bucket, layout.items_key, items)
    return _pointer(run_id, bucket, payload, layout.items_key, items)


def _put_items(s3: Any, bucket: str, key: str, items: list[dict[str, Any]]) -> None:
    s3.put_object(
        Bucket=bucket, Key=key, Body=json.dumps(items).encode(), ContentType="application/json"
    )


def _pointer(
    run_id: str, bucket: str, payload: Payload, items_key: str, items: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the state carries: where the items are, the world size, the ranks' settings."""
    world_size = len(items)
    settings = payload.to_dict()
    return {
        "run_id": run_id,
        "bucket": bucket,
        "items_key": items_key,
        "world_size": world_size,
        "files": sum(len(item["files"]) for item in items),
        "max_concurrency": min(payload.max_concurrency or world_size, world_size),
        "tolerated_failure_percentage": payload.tolerated_failure_percentage,
        "settings": {key: settings.get(key) for key in EXECUTOR_SETTINGS},
    }


def _read_json(s3: Any, bucket: str, key: str) -> Any:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def succeeded_ranks(s3: Any, bucket: str, run_id: str) -> set[int]:
    """Ranks whose record (`ranks/<rank>.json`, written by the executor) says succeeded."""
    layout = RunLayout(run_id)
    done = set()
    for obj in iter_objects(s3, bucket, layout.ranks_prefix):
        record = _read_json(s3, bucket, obj["Key"])
        rank = record.get("rank") if isinstance(record, dict) else None
        if (
            isinstance(rank, int)
            and obj["Key"] == layout.rank_key(rank)
            and record.get("status") == "succeeded"
        ):
            done.add(rank)
    return done


def plan_redrive(
    s3: Any, run_id: str, bucket: str, payload: Payload, number: int
) -> dict[str, Any]:
    """Items of the ranks without a successful record; their old failure records removed.

    A run that never planned (it failed in Init) is planned afresh: all its ranks are missing.
    """
    layout = RunLayout(run_id)
    try:
        items = _read_json(s3, bucket, layout.items_key)
    except s3.exceptions.NoSuchKey:
        return plan_run(s3, run_id, bucket, payload)
    done = succeeded_ranks(s3, bucket, run_id)
    todo = [item for item in items if item["rank"] not in done]
    if not todo:
        raise NothingToRedrive(
            f"run {run_id}: all {len(items)} ranks have a successful record, nothing to redrive"
        )
    for item in todo:
        s3.delete_object(Bucket=bucket, Key=layout.failure_key(item["rank"]))
    key = layout.redrive_items_key(number)
    _put_items(s3, bucket, key, todo)
    return _pointer(run_id, bucket, payload, key, items)


def run_init(s3: Any, event: dict[str, Any]) -> dict[str, Any]:
    """Init Lambda body: read and re-validate the payload the client uploaded, then plan (all
    ranks, or for a redrive those without a successful record)."""
    run_id, bucket = event["run_id"], event["bucket"]
    body = s3.get_object(Bucket=bucket, Key=RunLayout(run_id).payload_key)["Body"].read()
    payload = validate_payload(json.loads(body))
    if event.get("redrive"):
        pointer = plan_redrive(s3, run_id, bucket, payload, int(event["redrive_number"]))
    else:
        pointer = plan_run(s3, run_id, bucket, payload)
    return {**pointer, "executor_qualifier": executor_qualifier(event)}


def executor_qualifier(event: dict[str, Any]) -> str:
    """The executor version or alias the ranks invoke: the execution input's, else $LATEST."""
    qualifier = event.get("executor_qualifier") or "$LATEST"
    if not isinstance(qualifier, str) or not _QUALIFIER.match(qualifier):
        raise PayloadError(
            [
                Problem(
                    "executor_qualifier",
                    f"{qualifier!r} is not a Lambda version or alias name: start the execution "
                    f"without it (the ranks then invoke $LATEST) or with a published one",
                )
            ]
        )
    return qualifier
