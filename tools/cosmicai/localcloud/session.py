"""One run on the local cloud, from payload to results kept on disk.

Starts the local cloud, deploys the platform, uploads the run's inputs from the local S3 mirror
(data partitions, the script folder, a checkpoint), starts and follows the execution with the
same client code as AWS, then keeps the run's objects, its execution record and its Lambda logs
in the mirror so `cosmicai status/results/report` work after the cloud is gone.

A redrive (`redrive_local`) of a failed run also uploads the run's objects (rank records,
items, payload, results) into the fresh emulator, starts the redrive execution with the same
client code as AWS (`cosmicai.runner.start_redrive`), and afterwards merges what the new
execution produced into what the run kept: logs appended, history extended, `executions.json`
listing every execution, `execution.json` the latest one's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosmicai.defaults import FUNCTIONS, FunctionSettings
from cosmicai.errors import CosmicAIError
from cosmicai.local_store import LocalS3Mirror, MirrorClaims
from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.payload import Payload
from cosmicai.pipeline.layout import RunLayout
from cosmicai.pipeline.s3objects import iter_objects
from cosmicai.run_store import LocalRuns, fetch_history, json_ready
from cosmicai.runner import Progress, check_redrive, follow, start_redrive, start_run
from cosmicai.target import Target


@dataclass(frozen=True)
class LocalRun:
    run_id: str
    execution: dict[str, Any]
    summary: dict[str, Any] | None
    mirror: LocalS3Mirror
    bucket: str

    def path(self, key: str) -> Path:
        return self.mirror.path(self.bucket, key)


def _ensure_bucket(s3: Any, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        s3.create_bucket(Bucket=bucket)


def upload_inputs(target: Target, payload: Payload, mirror: LocalS3Mirror) -> None:
    """Copy the run's inputs from the mirror into the emulator's S3."""
    s3 = target.client("s3")
    _ensure_bucket(s3, payload.data_bucket)
    if mirror.upload(s3, payload.data_bucket, payload.data_prefix.rstrip("/") + "/") == 0:
        raise CosmicAIError(
            f"no local data at s3://{payload.data_bucket}/{payload.data_prefix}/ "
            f"({mirror.path(payload.data_bucket, payload.data_prefix)}): create it with "
            f"`cosmicai make-data` then `cosmicai partition FILE --size 25MB --out "
            f"s3://{payload.data_bucket}/{payload.data_prefix}`."
        )
    if payload.mode == "script" and payload.S3_object_name:
        name = payload.S3_object_name.strip("/")
        prefix = name if payload.object_type == "file" else name + "/"
        if mirror.upload(s3, payload.bucket, prefix) == 0:
            raise CosmicAIError(
                f"no local code at s3://{payload.bucket}/{prefix} (S3_object_name): copy your "
                f"script there with `cosmicai upload PATH s3://{payload.bucket}/{name}`."
            )
    if payload.model and not payload.model.startswith("s3://"):
        mirror.upload(s3, payload.bucket, payload.model)


def _kept_list(mirror: LocalS3Mirror, bucket: str, run_id: str, key: str) -> list[Any]:
    """A list the local store keeps for the run (functions, history), or [] when it has none."""
    kept = LocalRuns(mirror, bucket=bucket).read_json(run_id, key)
    return kept if isinstance(kept, list) else []


def _write_json(mirror: LocalS3Mirror, bucket: str, key: str, value: Any) -> None:
    path = mirror.path(bucket, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))


def save_logs(
    target: Target, mirror: LocalS3Mirror, bucket: str, run_id: str, *, merge: bool = False
) -> None:
    """Keep the functions' CloudWatch Logs events as runs/<run_id>/logs/<function>.jsonl, and
    their configuration (role, name, architecture, memory, ephemeral storage) beside them.

    With `merge` (a redrive) the events are appended to those kept from earlier executions, and
    functions of earlier executions that this one lacks stay listed.
    """
    layout = RunLayout(run_id)
    lam = target.client("lambda")
    configurations = []
    for role, function in target.functions.items():
        config = lam.get_function_configuration(FunctionName=function)
        configurations.append(
            {
                "role": role,
                "name": function,
                "architecture": (config.get("Architectures") or ["x86_64"])[0],
                "memory_mb": config["MemorySize"],
                "ephemeral_mb": (config.get("EphemeralStorage") or {}).get("Size", 512),
            }
        )
    if merge:
        names = set(target.functions.values())
        kept = _kept_list(mirror, bucket, run_id, layout.functions_key)
        configurations += [f for f in kept if isinstance(f, dict) and f.get("name") not in names]
    _write_json(mirror, bucket, layout.functions_key, configurations)
    logs = target.client("logs")
    for function in target.functions.values():
        lines = []
        paginator = logs.get_paginator("filter_log_events")
        for page in paginator.paginate(logGroupName=f"/aws/lambda/{function}"):
            lines += [
                json.dumps(
                    {
                        "timestamp": e["timestamp"],
                        "stream": e["logStreamName"],
                        "message": e["message"],
                    }
                )
                for e in page["events"]
            ]
        path = mirror.path(bucket, layout.log_key(function))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a" if merge else "w") as out:
            out.write("".join(line + "\n" for line in lines))


def _run_objects(mirror: LocalS3Mirror, payload: Payload, run_id: str) -> list[str]:
    """Keys of the run's objects in the local store (under its prefix and its result_path),
    less the records only the local store keeps (logs, execution records, claims)."""
    layout = RunLayout(run_id)
    local_only = {
        layout.execution_key,
        layout.executions_key,
        layout.history_key,
        layout.functions_key,
        layout.claim_key,
    }
    keys = (
        key
        for prefix in (layout.prefix, payload.result_prefix + "/")
        for key in mirror.keys(payload.bucket, prefix)
    )
    return [
        key
        for key in dict.fromkeys(keys)
        if key not in local_only and not key.startswith(layout.logs_prefix)
    ]


def upload_run(target: Target, mirror: LocalS3Mirror, payload: Payload, run_id: str) -> list[str]:
    """Copy a run's objects from the local store into the emulator; returns their keys."""
    s3 = target.client("s3")
    keys = _run_objects(mirror, payload, run_id)
    for key in keys:
        s3.upload_file(str(mirror.path(payload.bucket, key)), payload.bucket, key)
    return keys


def _keep_run(
    target: Target,
    mirror: LocalS3Mirror,
    payload: Payload,
    run_id: str,
    execution_arn: str,
    on_progress: Callable[[Progress], None] | None,
    *,
    earlier: list[dict[str, Any]] | None = None,
    uploaded: Iterable[str] = (),
) -> LocalRun:
    """Follow the execution, then keep the run's objects, logs, history and execution records
    in the local store. `earlier` are a redrive's earlier executions, `uploaded` the objects it
    brought into the emulator (those the redrive removed, such as old failure records, go)."""
    execution = follow(
        target, run_id, execution_arn, payload.bucket, payload.world_size, on_progress=on_progress
    )
    history = fetch_history(target.client("stepfunctions"), execution_arn)
    s3, bucket, layout = target.client("s3"), payload.bucket, RunLayout(run_id)
    prefixes = (layout.prefix, payload.result_prefix + "/")
    for prefix in prefixes:
        mirror.download(s3, bucket, prefix)
    present = {obj["Key"] for prefix in prefixes for obj in iter_objects(s3, bucket, prefix)}
    for key in set(uploaded) - present:
        mirror.path(bucket, key).unlink(missing_ok=True)
    redrive = earlier is not None
    save_logs(target, mirror, bucket, run_id, merge=redrive)
    if redrive:
        history = _kept_list(mirror, bucket, run_id, layout.history_key) + history
    mirror.path(bucket, layout.history_key).write_text(json.dumps(history))
    record = json_ready(execution)
    _write_json(mirror, bucket, layout.executions_key, [*(earlier or []), record])
    _write_json(mirror, bucket, layout.execution_key, record)
    summary = LocalRuns(mirror, bucket=bucket).summary(run_id)
    return LocalRun(run_id, record, summary, mirror, bucket)


def run_local(
    payload: Payload,
    *,
    run_id: str | None = None,
    overwrite: bool = False,
    mirror: LocalS3Mirror | None = None,
    functions: dict[str, FunctionSettings] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_started: Callable[[str], None] | None = None,
) -> LocalRun:
    """Run a payload on a fresh local cloud and keep everything it produced in the mirror."""
    mirror = mirror or LocalS3Mirror()
    with LocalCloud(communication=payload.communication) as cloud:
        target = cloud.deploy(runs_bucket=payload.bucket, functions=functions)
        upload_inputs(target, payload, mirror)
        run_id, execution_arn = start_run(
            target,
            payload,
            run_id=run_id,
            overwrite=overwrite,
            claims=MirrorClaims(mirror),  # concurrent local runs share only the local store
        )
        if on_started:
            on_started(run_id)
        return _keep_run(target, mirror, payload, run_id, execution_arn, on_progress)


def _saved_functions(store: LocalRuns, run_id: str) -> dict[str, FunctionSettings]:
    """The memory and ephemeral storage the run's functions had (what its price depends on)."""
    return {
        f.role: FunctionSettings(
            memory_mb=f.memory_mb,
            timeout_s=FUNCTIONS[f.role].timeout_s,
            ephemeral_storage_mb=f.ephemeral_mb,
        )
        for f in store.functions(run_id)
        if f.role in FUNCTIONS and f.memory_mb is not None
    }


def redrive_local(
    run_id: str,
    *,
    mirror: LocalS3Mirror | None = None,
    functions: dict[str, FunctionSettings] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_started: Callable[[str], None] | None = None,
) -> LocalRun:
    """Re-run, on a fresh local cloud, the ranks of a finished, unsuccessful local run that have
    no successful record, and keep the outcome merged with what the run kept before."""
    mirror = mirror or LocalS3Mirror()
    claims, store = MirrorClaims(mirror), LocalRuns(mirror)
    redrive = check_redrive(store, claims, store.bucket(run_id), run_id)
    payload = redrive.payload
    with LocalCloud(communication=payload.communication) as cloud:
        target = cloud.deploy(
            runs_bucket=payload.bucket,
            functions=functions or _saved_functions(store, run_id),
        )
        upload_inputs(target, payload, mirror)
        uploaded = upload_run(target, mirror, payload, run_id)
        execution_arn = start_redrive(target, redrive, claims)
        if on_started:
            on_started(run_id)
        return _keep_run(
            target,
            mirror,
            payload,
            run_id,
            execution_arn,
            on_progress,
            earlier=redrive.executions,
            uploaded=uploaded,
        )
