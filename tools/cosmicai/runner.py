"""Start a run, follow it, and read its results: the same boto3 calls for AWS and the local cloud.

A run is one Step Functions execution named after its run id, with its payload at
`runs/<run_id>/payload.json` in the runs bucket (never a shared key, so concurrent runs of
different teams cannot clobber each other). Before anything else is written a run claims its
run id and its result_path (`cosmicai.claims`), so of runs started at the same moment with the
same run id or result_path exactly one starts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cosmicai.claims import Claims, S3Claims, claim_run, execution_arn
from cosmicai.inference.errors import CosmicAIError
from cosmicai.payload import Payload
from cosmicai.pipeline.layout import RunLayout, check_run_id, new_run_id
from cosmicai.pipeline.s3objects import iter_objects
from cosmicai.rendezvous.probe import require_rendezvous
from cosmicai.run_metrics import execution_failure
from cosmicai.safe_input import MAX_RECORD_BYTES, parse_json_bytes
from cosmicai.target import Target

Exists = Callable[[str, str], bool]
"""exists(bucket, key): whether an object is already stored (S3, or the local store)."""


class RunFailed(CosmicAIError):
    """The run ended failed or partial; the message names the failing ranks and errors."""

    exit_code = 1


@dataclass(frozen=True)
class Progress:
    """What `follow` reports while a run is under way."""

    status: str
    ranks_done: int
    ranks_failed: int
    world_size: int | None
    elapsed_s: float


def check_fresh(payload: Payload, run_id: str, exists: Exists, overwrite: bool) -> None:
    """Refuse to reuse a completed run id or an existing result_path unless told to overwrite."""
    if overwrite:
        return
    if exists(payload.bucket, RunLayout(run_id).summary_key):
        raise CosmicAIError(
            f"run {run_id} already completed (s3://{payload.bucket}/runs/{run_id}/): use a new run "
            f"id, or pass --overwrite to run it again."
        )
    for name in ("summary.json", "combined_data.json"):
        key = f"{payload.result_prefix}/{name}"
        if exists(payload.bucket, key):
            raise CosmicAIError(
                f"result_path {payload.result_prefix!r} already holds results "
                f"(s3://{payload.bucket}/{key}): choose another result_path in the payload, or "
                f"pass --overwrite to replace them."
            )


def start_run(
    target: Target,
    payload: Payload,
    *,
    run_id: str | None = None,
    overwrite: bool = False,
    claims: Claims | None = None,
) -> tuple[str, str]:
    """Claim a unique run id and the result_path, upload the payload and start the execution.

    Returns (run id, execution ARN). `claims` is where concurrent runs meet: S3 by default, the
    local store for local runs (each has its own emulator).
    """
    if target.kind == "aws" and payload.bucket != target.runs_bucket:
        raise CosmicAIError(
            f"payload bucket {payload.bucket!r} is not the platform's runs bucket "
            f'{target.runs_bucket!r} (Terraform output runs_bucket): set "bucket" in the payload.'
        )
    rerun = overwrite and run_id is not None
    run_id = check_run_id(run_id) if run_id else new_run_id(payload.team)
    if payload.communication:
        if not target.rendezvous:
            raise CosmicAIError(
                "the payload asks for communication but the platform has no rendezvous server "
                "(Terraform output rendezvous_address is empty)"
            )
        require_rendezvous(target.rendezvous, protocol=target.rendezvous_protocol, timeout_s=5)
    claims = claims or S3Claims(target)
    check_fresh(payload, run_id, claims.exists, overwrite)
    # Execution names are unique per state machine: a re-run of a run id gets a suffix.
    execution_name = f"{run_id}-{int(time.time())}" if rerun else run_id
    arn = execution_arn(target.state_machine_arn, execution_name)
    claimed = claim_run(claims, payload, run_id, arn, overwrite)
    try:
        return run_id, _upload_and_start(target, payload, run_id, execution_name, overwrite)
    except BaseException:
        for key in claimed:
            claims.release(payload.bucket, key)
        raise


def _upload_and_start(
    target: Target, payload: Payload, run_id: str, execution_name: str, overwrite: bool
) -> str:
    """Upload the payload (a re-run first clears its old rank results), start; returns the ARN."""
    s3 = target.client("s3")
    layout = RunLayout(run_id)
    if overwrite:
        for prefix in (layout.ranks_prefix, layout.failures_prefix):
            for obj in list(iter_objects(s3, payload.bucket, prefix)):
                s3.delete_object(Bucket=payload.bucket, Key=obj["Key"])
    s3.put_object(
        Bucket=payload.bucket,
        Key=layout.payload_key,
        Body=json.dumps(payload.to_dict(), indent=2).encode(),
        ContentType="application/json",
    )
    execution = target.client("stepfunctions").start_execution(
        stateMachineArn=target.state_machine_arn,
        name=execution_name,
        input=json.dumps({"run_id": run_id, "bucket": payload.bucket}),
    )
    return execution["executionArn"]


def _count(s3: Any, bucket: str, prefix: str) -> int:
    return sum(1 for _ in iter_objects(s3, bucket, prefix))


def follow(
    target: Target,
    run_id: str,
    execution_arn: str,
    bucket: str,
    world_size: int | None = None,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Poll the execution (and the rank results it has written) until it ends."""
    sfn, s3 = target.client("stepfunctions"), target.client("s3")
    layout = RunLayout(run_id)
    started = time.monotonic()
    while True:
        execution = sfn.describe_execution(executionArn=execution_arn)
        if on_progress:
            on_progress(
                Progress(
                    status=execution["status"],
                    ranks_done=_count(s3, bucket, layout.ranks_prefix),
                    ranks_failed=_count(s3, bucket, layout.failures_prefix),
                    world_size=world_size,
                    elapsed_s=time.monotonic() - started,
                )
            )
        if execution["status"] != "RUNNING":
            return execution
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise CosmicAIError(
                f"run {run_id} is still running after {timeout_s:.0f} s; follow it with "
                f"`cosmicai status {run_id}`."
            )
        time.sleep(poll_s)


def read_json(s3: Any, bucket: str, key: str) -> Any:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read(MAX_RECORD_BYTES + 1)
    return parse_json_bytes(body, f"s3://{bucket}/{key}", max_bytes=MAX_RECORD_BYTES)


def outcome_error(summary: dict[str, Any] | None, execution: dict[str, Any]) -> RunFailed | None:
    """The error to raise for a run that did not fully succeed (by its summary or execution)."""
    if (
        execution.get("status") == "SUCCEEDED"
        and summary is not None
        and summary["status"] == "succeeded"
    ):
        return None
    if summary is not None and summary["status"] != "succeeded":
        return RunFailed(f"run {summary['run_id']} {summary['status']}: {summary['message']}")
    return RunFailed(
        f"execution {execution.get('name', '')} ended {execution.get('status')}: "
        f"{execution_failure(execution)}".strip()
    )
