"""Summarize Lambda: combine the rank records into combined_data.json and summary.json."""

from typing import Any

from cosmicai.pipeline.lambda_support import append_run_keys, handler_logger, s3_client
from cosmicai.pipeline.summarize import summarize_run

logger = handler_logger("summarize")


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    append_run_keys(logger, event, context)
    logger.info("summarize started")
    outcome = summarize_run(s3_client(), event)
    logger.info("run summarized", status=outcome["status"], detail=outcome["message"])
    return outcome
