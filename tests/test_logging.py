"""One log shape: the servers' `cosmicai.logs` lines and the handlers' Powertools lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from cosmicai.localcloud.worker import LambdaContext
from cosmicai.logs import BASE_KEYS, configure
from cosmicai.pipeline.lambda_support import append_run_keys, handler_logger
from cosmicai.run_metrics import LogEvent, join_events

NASTY = 'a "quoted" word, a back\\slash, C:\\path\\n and\na newline\r\tand a tab'
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S,%f%z"


def _context(request_id: str) -> LambdaContext:
    return LambdaContext(
        function_name="cosmicai-executor",
        function_version="$LATEST",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:cosmicai-executor",
        memory_limit_in_mb=1024,
        aws_request_id=request_id,
        log_group_name="/aws/lambda/cosmicai-executor",
        log_stream_name="2024/05/01/[$LATEST]0",
        deadline_ms=0,
    )


def _handler_lines(
    capsys: pytest.CaptureFixture[str],
    step: str,
    body: Callable[[Any], None],
    event: dict[str, Any],
    request_id: str = "req-1",
) -> list[dict[str, Any]]:
    """Run a handler built as ours are (Powertools logger, run keys) and parse its stdout."""
    logger = handler_logger(step)

    @logger.inject_lambda_context(clear_state=True)
    def handler(event: dict[str, Any], context: Any) -> None:
        append_run_keys(logger, event, context, rank=(event.get("item") or {}).get("rank"))
        body(logger)

    handler(event, _context(request_id))
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines()]


def _server_lines(log: Callable[[logging.Logger], None]) -> list[dict[str, Any]]:
    """Log through `cosmicai.logs` (as the servers do) and parse what it wrote."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure(stream=stream)
        log(logging.getLogger("cosmicai.rendezvous"))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_a_message_with_quotes_backslashes_and_newlines_is_one_json_line(capsys) -> None:
    (server,) = _server_lines(lambda log: log.warning(NASTY, extra={"client": 'x"y', "n": 1}))
    (handler,) = _handler_lines(
        capsys, "logtest-nasty", lambda log: log.info(NASTY, stream="stdout"), {"run_id": "r1"}
    )
    assert server["message"] == handler["message"] == NASTY
    assert list(server)[: len(BASE_KEYS)] == list(handler)[: len(BASE_KEYS)] == list(BASE_KEYS)
    assert (server["level"], server["service"]) == ("WARNING", "cosmicai.rendezvous")
    assert (server["client"], server["n"]) == ('x"y', 1)
    assert (handler["level"], handler["service"]) == ("INFO", "cosmicai.logtest-nasty")
    for line in (server, handler):
        datetime.strptime(line["timestamp"], TIMESTAMP_FORMAT)  # one timestamp format
        function, _, number = line["location"].rpartition(":")
        assert function and number.isdigit()


def test_a_logged_exception_has_the_keys_powertools_gives_it(capsys) -> None:
    def fail(log: Any) -> None:
        try:
            raise ValueError('bad "value"')
        except ValueError:
            log.exception("step failed")

    (server,) = _server_lines(fail)
    (handler,) = _handler_lines(capsys, "logtest-exception", fail, {"run_id": "r1"})
    for line in (server, handler):
        assert (line["level"], line["exception_name"]) == ("ERROR", "ValueError")
        assert 'ValueError: bad "value"' in line["exception"]


def test_configuring_again_replaces_the_handler_instead_of_doubling_lines() -> None:
    first = io.StringIO()

    def reconfigure_and_log(log: logging.Logger) -> None:
        log.info("before")
        configure(stream=first)
        log.info("after")

    (line,) = _server_lines(reconfigure_and_log)
    assert line["message"] == "before"
    assert [json.loads(text)["message"] for text in first.getvalue().splitlines()] == ["after"]


def test_run_metrics_joins_a_handlers_lines_to_its_run_and_rank(capsys) -> None:
    event = {"run_id": "run-7", "item": {"rank": 3}}
    lines = _handler_lines(
        capsys, "logtest-join", lambda log: log.info("rank started"), event, "req-9"
    )
    (line,) = lines
    assert (line["run_id"], line["rank"], line["request_id"]) == ("run-7", 3, "req-9")
    report = (
        "REPORT RequestId: req-9\tDuration: 10.00 ms\tBilled Duration: 10 ms\t"
        "Memory Size: 1024 MB\tMax Memory Used: 60 MB\t"
    )
    events = [
        LogEvent(1_000, "s", "START RequestId: req-9 Version: $LATEST"),
        LogEvent(1_001, "s", json.dumps(line)),
        LogEvent(1_010, "s", report),
    ]
    (invocation,), pending, problems = join_events("executor", "cosmicai-executor", events, "run-7")
    assert (invocation.rank, invocation.request_id) == (3, "req-9")
    assert not pending and not problems
    assert join_events("executor", "cosmicai-executor", events, "other-run")[0] == []
