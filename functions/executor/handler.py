"""Executor Lambda: run one rank's inference and write runs/<run_id>/ranks/<rank>.json."""

from typing import Any

from cosmicai.pipeline.executor import run_rank
from cosmicai.pipeline.lambda_support import append_run_keys, handler_logger, s3_client

logger = handler_logger("executor")


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    append_run_keys(logger, event, context, rank=(event.get("item") or {}).get("rank"))
    logger.info("rank started")
    result = run_rank(s3_client(), event, request_id=context.aws_request_id, log=logger.info)
    logger.info("rank finished", status=result["status"])
    return result
