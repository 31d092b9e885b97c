"""What the three Lambda handlers share: the S3 client and their structured JSON logger."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger


@cache
def s3_client() -> Any:
    """One S3 client per environment; the endpoint comes from AWS_ENDPOINT_URL when set."""
    return boto3.client("s3")


def handler_logger(step: str) -> Logger:
    """The Powertools logger of the `step` handler: JSON lines on stdout, service `cosmicai.<step>`.

    A handler decorates itself with `logger.inject_lambda_context(clear_state=True)` and appends
    its run's keys with `append_run_keys`.
    """
    return Logger(service=f"cosmicai.{step}")


def append_run_keys(logger: Logger, event: dict[str, Any], context: Any, **keys: Any) -> None:
    """Key every line of this invocation with its `run_id` and `request_id` (and `keys`).

    `cosmicai.run_metrics` joins invocations to runs (and ranks) by these keys.
    """
    logger.append_keys(run_id=event.get("run_id"), request_id=context.aws_request_id, **keys)
