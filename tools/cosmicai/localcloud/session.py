"""One run on the local cloud, from payload to results kept on disk.

Starts the local cloud, deploys the platform, uploads the run's inputs from the local S3 mirror
(data partitions, the script folder, a checkpoint), starts and follows the execution with the
same client code as AWS, then keeps the run's objects, its execution record and its Lambda logs
in the mirror so `cosmicai status/results/report` work after the cloud is gone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosmicai.defaults import FunctionSettings
from cosmicai.inference.errors import CosmicAIError
from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.localcloud.mirror import LocalS3Mirror, MirrorClaims
from cosmicai.payload import Payload
from cosmicai.pipeline.layout import RunLayout
from cosmicai.run_metrics import HISTORY_FILE, fetch_history
from cosmicai.runner import Progress, follow, start_run
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


def save_logs(target: Target, mirror: LocalS3Mirror, bucket: str, run_id: str) -> None:
    """Keep the functions' CloudWatch Logs events as runs/<run_id>/logs/<function>.jsonl, and
    their configuration (role, name, architecture, memory, ephemeral storage) beside them."""
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
    path = mirror.path(bucket, RunLayout(run_id).functions_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(configurations, indent=2))
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
        path = mirror.path(bucket, f"runs/{run_id}/logs/{function}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines))


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
        execution = follow(
            target,
            run_id,
            execution_arn,
            payload.bucket,
            payload.world_size,
            on_progress=on_progress,
        )
        history = fetch_history(target.client("stepfunctions"), execution_arn)
        s3 = target.client("s3")
        mirror.download(s3, payload.bucket, f"runs/{run_id}/")
        mirror.download(s3, payload.bucket, payload.result_prefix + "/")
        save_logs(target, mirror, payload.bucket, run_id)
    mirror.path(payload.bucket, f"runs/{run_id}/{HISTORY_FILE}").write_text(json.dumps(history))
    record = {
        k: (v.isoformat() if hasattr(v, "isoformat") else v)
        for k, v in execution.items()
        if k != "ResponseMetadata"
    }
    record_path = mirror.path(payload.bucket, f"runs/{run_id}/execution.json")
    record_path.write_text(json.dumps(record, indent=2))
    summary_path = mirror.path(payload.bucket, f"runs/{run_id}/summary.json")
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return LocalRun(run_id, record, summary, mirror, payload.bucket)
