"""Structured JSON log lines for our servers, in the shape the Lambda handlers write.

The handlers log through AWS Lambda Powertools' `Logger`; the rendezvous server and the local
cloud (which must run on the standard library alone) log through `JsonFormatter`, which writes
the same keys in the same order: `level`, `location` (`function:line`), `message`,
`timestamp` (`2024-05-01 12:00:00,123+0000`, local time) and `service` (here the logger's
name, such as `cosmicai.rendezvous`), then every key passed as `extra=` (and `exception`,
`exception_name` for a logged exception). Each record is one line made with `json.dumps`, so a
message holding quotes, backslashes or newlines still parses.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

BASE_KEYS = ("level", "location", "message", "timestamp", "service")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,{msecs:03d}%z"  # Powertools' default ("%F" being the msecs)
# What every LogRecord carries (on this Python), so that only `extra=` keys are copied.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object, keyed as Powertools' Logger keys its lines."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "level": record.levelname,
            "location": f"{record.funcName}:{record.lineno}",
            "message": record.getMessage(),
            "timestamp": self.formatTime(record),
            "service": record.name,
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES)
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = self.formatException(record.exc_info)
            line["exception_name"] = record.exc_info[0].__name__
        return json.dumps(line, default=str, separators=(",", ":"), ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Local time with milliseconds and the UTC offset, as Powertools writes it."""
        msecs = int(record.msecs)
        return time.strftime(_TIME_FORMAT.format(msecs=msecs), time.localtime(record.created))


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> logging.Handler:
    """Make the root logger write JSON lines to `stream` (stderr by default) at `level`.

    Replaces the root logger's handlers, so calling it again does not duplicate lines.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
