"""Runs claim their run id and their result_path before anything else is written.

A claim is a small JSON object created only if absent: on S3 a conditional write
(`IfNoneMatch="*"`), in the local store an exclusive create (see `local_store`). Of runs
started at the same moment with the same run id or result_path exactly one wins; the others are
refused before they write anything. `--overwrite` takes a claim over only from a finished run,
conditionally on the claim not having changed since it was read (S3 `IfMatch`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from botocore.exceptions import ClientError

from cosmicai.errors import CosmicAIError
from cosmicai.payload import Payload
from cosmicai.pipeline.layout import RunLayout, result_claim_key
from cosmicai.target import Target

STARTING_GRACE_S = 120.0
"""How long a claim whose execution does not exist yet counts as a run still starting."""

_LOST = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404")


class ClaimedError(CosmicAIError):
    """The run id or result_path belongs to another run."""


@dataclass(frozen=True)
class Claim:
    """A stored claim: its JSON body, and the version a conditional replace compares."""

    body: dict[str, Any]
    version: str

    @property
    def run_id(self) -> str:
        return self.body["run_id"]

    @property
    def age_s(self) -> float:
        created = datetime.fromisoformat(self.body["created"])
        return (datetime.now(UTC) - created).total_seconds()

    def owner(self) -> str:
        return f"run {self.run_id} (team {self.body.get('team')}, since {self.body.get('created')})"


class Claims(Protocol):
    """Where concurrent runs meet: S3 for AWS, the local store for local runs."""

    def exists(self, bucket: str, key: str) -> bool: ...

    def read(self, bucket: str, key: str) -> Claim | None: ...

    def claim(self, bucket: str, key: str, body: dict[str, Any]) -> Claim | None:
        """Create the claim if absent; None if it was created, else the claim that exists."""

    def replace(self, bucket: str, key: str, old: Claim, body: dict[str, Any]) -> Claim | None:
        """Replace `old` unless it changed meanwhile; None if replaced, else the current claim."""

    def release(self, bucket: str, key: str) -> None: ...

    def finished(self, bucket: str, claim: Claim) -> bool:
        """Whether the run holding the claim is no longer running."""


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, indent=2).encode()


def decode(raw: bytes, where: str) -> dict[str, Any]:
    """A stored claim's body, checked to hold what deciding about it needs."""
    try:
        body = json.loads(raw)
        datetime.fromisoformat(body["created"])
        if not all(isinstance(body[k], str) for k in ("run_id", "execution_arn")):
            raise TypeError
    except (ValueError, TypeError, KeyError) as err:
        raise CosmicAIError(
            f"the claim {where} is damaged: delete it if no run is using it."
        ) from err
    return body


def execution_arn(state_machine_arn: str, name: str) -> str:
    return state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}"


class S3Claims:
    """Claims in the runs bucket, by S3 conditional writes (AWS, and the emulator)."""

    def __init__(self, target: Target) -> None:
        self.s3 = target.client("s3")
        self.sfn = target.client("stepfunctions")

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if err.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def read(self, bucket: str, key: str) -> Claim | None:
        try:
            obj = self.s3.get_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if err.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return Claim(decode(obj["Body"].read(), f"s3://{bucket}/{key}"), obj["ETag"])

    def claim(self, bucket: str, key: str, body: dict[str, Any]) -> Claim | None:
        return self._put(bucket, key, body, IfNoneMatch="*")

    def replace(self, bucket: str, key: str, old: Claim, body: dict[str, Any]) -> Claim | None:
        return self._put(bucket, key, body, IfMatch=old.version)

    def _put(self, bucket: str, key: str, body: dict[str, Any], **condition: str) -> Claim | None:
        try:
            self.s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=encode(body),
                ContentType="application/json",
                **condition,
            )
            return None
        except ClientError as err:
            if err.response["Error"]["Code"] not in _LOST:
                raise
        current = self.read(bucket, key)
        return current if current is not None else self.claim(bucket, key, body)

    def release(self, bucket: str, key: str) -> None:
        self.s3.delete_object(Bucket=bucket, Key=key)

    def finished(self, bucket: str, claim: Claim) -> bool:
        try:
            execution = self.sfn.describe_execution(executionArn=claim.body["execution_arn"])
        except self.sfn.exceptions.ExecutionDoesNotExist:
            return claim.age_s > STARTING_GRACE_S  # it never started, or is just starting
        return execution["status"] != "RUNNING"


def _take(
    claims: Claims,
    bucket: str,
    key: str,
    body: dict[str, Any],
    *,
    overwrite: bool,
    subject: str,
    fix: str,
) -> None:
    """Claim `key`; with overwrite, take it over from a run that has finished."""
    held = claims.claim(bucket, key, body)
    while held is not None:
        if not overwrite:
            raise ClaimedError(
                f"{subject} is claimed by {held.owner()}: {fix}, or wait for that run and pass "
                f"--overwrite."
            )
        if not claims.finished(bucket, held):
            raise ClaimedError(
                f"{subject} is claimed by {held.owner()}, which is still running: --overwrite "
                f"replaces only a finished run; wait for it (`cosmicai status {held.run_id}`), "
                f"or {fix}."
            )
        held = claims.replace(bucket, key, held, body)


def claim_body(payload: Payload, run_id: str, arn: str) -> dict[str, Any]:
    """What a run's claims hold: the run, its result_path, its execution, when it claimed."""
    return {
        "run_id": run_id,
        "team": payload.team,
        "result_path": payload.result_prefix,
        "execution_arn": arn,
        "created": datetime.now(UTC).isoformat(),
    }


def claim_run(
    claims: Claims, payload: Payload, run_id: str, arn: str, overwrite: bool
) -> list[str]:
    """Claim the run id, then the result_path; returns the keys claimed (to release on failure).

    A lost claim raises ClaimedError naming the other run, and leaves nothing of this run behind.
    """
    body = claim_body(payload, run_id, arn)
    bucket, run_key = payload.bucket, RunLayout(run_id).claim_key
    _take(
        claims,
        bucket,
        run_key,
        body,
        overwrite=overwrite,
        subject=f"run id {run_id!r}",
        fix="use a new run id",
    )
    result_key = result_claim_key(payload.result_prefix)
    try:
        _take(
            claims,
            bucket,
            result_key,
            body,
            overwrite=overwrite,
            subject=f"result_path {payload.result_prefix!r}",
            fix="choose another result_path",
        )
    except BaseException:
        claims.release(bucket, run_key)
        raise
    return [run_key, result_key]
