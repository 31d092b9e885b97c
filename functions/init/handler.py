"""Init Lambda: validate the run's payload, assign partition files to ranks, write the items."""

from typing import Any

from cosmicai.pipeline.init import run_init
from cosmicai.pipeline.lambda_support import append_run_keys, handler_logger, s3_client

logger = handler_logger("init")


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    append_run_keys(logger, event, context)
    logger.info("init started")
    pointer = run_init(s3_client(), event)
    logger.info("run planned", world_size=pointer["world_size"], files=pointer["files"])
    return pointer
