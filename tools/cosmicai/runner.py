"""Start a run, follow it, and read its results: the same boto3 calls for AWS and the local cloud.

A run is one Step Functions execution named after its run id, with its payload at
`runs/<run_id>/payload.json` in the runs bucket (never a shared key, so concurrent runs of
different teams cannot clobber each other). Before anything else is written a run claims its
run id and its result_path (`cosmicai.claims`), so of runs started at the same moment with the
same run id or result_path exactly one starts.

A run that failed can be redriven (`check_redrive`, then `start_redrive`): only its ranks
without a successful record run again, and Summarize combines every rank's record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cosmicai.claims import (
    Claim,
    ClaimedError,
    Claims,
    S3Claims,
    claim_body,
    claim_run,
    execution_arn,
)
from cosmicai.errors import CosmicAIError
from cosmicai.payload import Payload, validate_payload
from cosmicai.pipeline.layout import (
    RunLayout,
    check_run_id,
    combined_key,
    new_run_id,
    result_claim_key,
    result_summary_key,
)
from cosmicai.pipeline.s3objects import iter_objects
from cosmicai.rendezvous.probe import require_rendezvous
from cosmicai.run_store import RunStore, execution_failure
from cosmicai.safe_input import MAX_RECORD_BYTES, UnreadableInput, json_object, parse_json_bytes
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
    layout = RunLayout(run_id)
    if exists(payload.bucket, layout.summary_key):
        raise CosmicAIError(
            f"run {run_id} already completed (s3://{payload.bucket}/{layout.prefix}): use a new "
            f"run id, or pass --overwrite to run it again."
        )
    for key in (result_summary_key(payload.result_prefix), combined_key(payload.result_prefix)):
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
    _check_rendezvous(target, payload)
    claims = claims or S3Claims(target)
    check_fresh(payload, run_id, claims.exists, overwrite)
    # Execution names are unique per state machine: a re-run of a run id gets a suffix.
    execution_name = RunLayout(run_id).rerun_name(int(time.time())) if rerun else run_id
    arn = execution_arn(target.state_machine_arn, execution_name)
    claimed = claim_run(claims, payload, run_id, arn, overwrite)
    try:
        return run_id, _upload_and_start(target, payload, run_id, execution_name, overwrite)
    except BaseException:
        for key in claimed:
            claims.release(payload.bucket, key)
        raise


def _check_rendezvous(target: Target, payload: Payload) -> None:
    """A payload that asks for communication needs the platform's rendezvous server, up."""
    if payload.communication:
        if not target.rendezvous:
            raise CosmicAIError(
                "the payload asks for communication but the platform has no rendezvous server "
                "(Terraform output rendezvous_address is empty)"
            )
        require_rendezvous(target.rendezvous, protocol=target.rendezvous_protocol, timeout_s=5)


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
        input=json.dumps(
            {
                "run_id": run_id,
                "bucket": payload.bucket,
                **({"executor_qualifier": q} if (q := target.executor_qualifier) else {}),
            }
        ),
    )
    return execution["executionArn"]


@dataclass(frozen=True)
class Redrive:
    """A finished, unsuccessful run that can be redriven: its payload and executions so far."""

    run_id: str
    payload: Payload
    executions: list[dict[str, Any]]  # oldest first

    @property
    def number(self) -> int:
        """This redrive's number: one more than the run's latest redrive execution's."""
        layout = RunLayout(self.run_id)
        done = (layout.redrive_number(str(e.get("name", ""))) for e in self.executions)
        return max((n for n in done if n is not None), default=0) + 1


def _still_running(run_id: str) -> CosmicAIError:
    return CosmicAIError(
        f"run {run_id} is still running: wait for it, then redrive (`cosmicai status {run_id}`)."
    )


def _taken(subject: str, held: Claim, run_id: str) -> ClaimedError:
    return ClaimedError(
        f"{subject} is claimed by {held.owner()} since run {run_id} ended: a redrive would "
        f"overwrite that run's results. Start a new run with another result_path instead "
        f"(`cosmicai run PAYLOAD`)."
    )


def _missing_ranks(items: Any, present: set[str], layout: RunLayout) -> list[int]:
    """Ranks of the run's items without a rank record."""
    if not isinstance(items, list) or not all(
        isinstance(item, dict) and isinstance(item.get("rank"), int) for item in items
    ):
        raise UnreadableInput(layout.items_key, "holds no list of items with a rank")
    return [item["rank"] for item in items if layout.rank_key(item["rank"]) not in present]


def check_redrive(store: RunStore, claims: Claims, bucket: str, run_id: str) -> Redrive:
    """The run to redrive; refused (with what to do) when it is unknown, still running, has
    succeeded, or has a record for every rank."""
    layout = RunLayout(run_id)
    claim = claims.read(bucket, layout.claim_key)
    if claim is not None and claim.run_id == run_id and not claims.finished(bucket, claim):
        raise _still_running(run_id)
    executions = store.executions(run_id)  # refuses an unknown run id
    if executions[-1].get("status") == "RUNNING":
        raise _still_running(run_id)
    raw = store.read_json(run_id, layout.payload_key)
    source = f"s3://{bucket}/{layout.payload_key}"
    if raw is None:
        raise CosmicAIError(
            f"run {run_id} has no payload ({source}), so it cannot be redriven: start it again "
            f"with `cosmicai run PAYLOAD`."
        )
    payload = validate_payload(json_object(raw, source), source)
    summary = store.read_json(run_id, layout.summary_key)
    if isinstance(summary, dict) and summary.get("status") == "succeeded":
        raise CosmicAIError(
            f"run {run_id} succeeded: nothing to redrive (`cosmicai results {run_id}` shows it)."
        )
    held = claims.read(bucket, result_claim_key(payload.result_prefix))
    if held is not None and held.run_id != run_id:  # checked again when the claims are taken
        raise _taken(f"result_path {payload.result_prefix!r}", held, run_id)
    items = store.read_json(run_id, layout.items_key)
    if items is not None:  # None: it failed before Init planned it, so every rank is missing
        present = set(store.keys(run_id, layout.ranks_prefix))
        if not _missing_ranks(items, present, layout):
            raise CosmicAIError(
                f"run {run_id}: every one of its {len(items)} ranks has a result, nothing to "
                f"redrive (`cosmicai status {run_id}` says why it did not succeed)."
            )
    return Redrive(run_id, payload, executions)


def last_state_entered(events_newest_first: Iterable[dict[str, Any]]) -> str | None:
    """The state an execution was in when it stopped, from its history (newest event first)."""
    for event in events_newest_first:
        if "stateEnteredEventDetails" in event:
            return str(event["stateEnteredEventDetails"]["name"])
    return None


def step_functions_can_redrive(
    execution: dict[str, Any], events_newest_first: Iterable[dict[str, Any]]
) -> bool:
    """Whether Step Functions' own RedriveExecution applies: the execution stopped before
    Summarize ran (timed out, aborted, or failed in a state other than the final RunFailed) and
    describe_execution says it is REDRIVABLE. (The local emulator has no redriveStatus.)"""
    if execution.get("redriveStatus") != "REDRIVABLE":
        return False
    if execution.get("status") in ("TIMED_OUT", "ABORTED"):
        return True
    return (
        execution.get("status") == "FAILED"
        and last_state_entered(events_newest_first) != "RunFailed"
    )


def _newest_events(sfn: Any, arn: str) -> Iterable[dict[str, Any]]:
    pages = sfn.get_paginator("get_execution_history").paginate(executionArn=arn, reverseOrder=True)
    for page in pages:
        yield from page["events"]


def _reclaim(
    claims: Claims, payload: Payload, run_id: str, arn: str
) -> list[tuple[str, Claim | None]]:
    """Point the run's own claims (run id, result_path) at the redrive's execution; refused if
    another run has claimed the result_path since. Returns what each claim held before."""
    body = claim_body(payload, run_id, arn)
    keys = (
        (RunLayout(run_id).claim_key, f"run id {run_id!r}"),
        (result_claim_key(payload.result_prefix), f"result_path {payload.result_prefix!r}"),
    )
    before: list[tuple[str, Claim | None]] = []
    try:
        for key, subject in keys:
            held = old = claims.read(payload.bucket, key)
            while True:
                if held is not None and held.run_id != run_id:
                    raise _taken(subject, held, run_id)
                if held is None:
                    held = claims.claim(payload.bucket, key, body)
                else:
                    held = claims.replace(payload.bucket, key, held, body)
                if held is None:
                    break
            before.append((key, old))
    except BaseException:
        _restore(claims, payload.bucket, before)
        raise
    return before


def _restore(claims: Claims, bucket: str, before: list[tuple[str, Claim | None]]) -> None:
    """Give the claims back what they held before `_reclaim`."""
    for key, old in before:
        current = claims.read(bucket, key)
        if old is None:
            claims.release(bucket, key)
        elif current is None:
            claims.claim(bucket, key, old.body)
        else:
            claims.replace(bucket, key, current, old.body)


def start_redrive(target: Target, redrive: Redrive, claims: Claims) -> str:
    """Start re-running the run's ranks that have no successful record; returns the ARN to
    follow.

    On AWS, when the run's last execution stopped before Summarize ran and Step Functions says
    it is REDRIVABLE, RedriveExecution resumes it from the state it stopped in: a STANDARD
    parent restarts its failed state, and a Distributed Map redrives its Map Run (only the
    unsuccessful children run again, EXPRESS children included). Otherwise, and always on the
    local cloud, a new execution `<run_id>-redrive-<n>` of the same state machine gets
    `{"run_id", "bucket", "redrive": true, "redrive_number": n}`: its Init plans just the ranks
    without a successful record (`cosmicai.pipeline.init.plan_redrive`).
    """
    payload, run_id = redrive.payload, redrive.run_id
    _check_rendezvous(target, payload)
    sfn = target.client("stepfunctions")
    last, last_arn = redrive.executions[-1], str(redrive.executions[-1].get("executionArn"))
    resume = step_functions_can_redrive(last, _newest_events(sfn, last_arn))
    name = RunLayout(run_id).redrive_name(redrive.number)
    arn = last_arn if resume else execution_arn(target.state_machine_arn, name)
    before = _reclaim(claims, payload, run_id, arn)
    try:
        if resume:
            sfn.redrive_execution(executionArn=arn)
        else:
            redrive_input = {"run_id": run_id, "bucket": payload.bucket, "redrive": True}
            sfn.start_execution(
                stateMachineArn=target.state_machine_arn,
                name=name,
                input=json.dumps({**redrive_input, "redrive_number": redrive.number}),
            )
    except BaseException:
        _restore(claims, payload.bucket, before)
        raise
    return arn


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


def read_json(s3: Any, bucket: str, key: str) -> Any:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read(MAX_RECORD_BYTES + 1)
    return parse_json_bytes(body, f"s3://{bucket}/{key}", max_bytes=MAX_RECORD_BYTES)
