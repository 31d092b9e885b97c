"""Reading the files users and the local store hand us: a message, never a traceback or a hang.

`read_json_file` reads only regular files (a FIFO would hang, /dev/zero would fill memory), at
most `max_bytes`, as UTF-8, and parses JSON no deeper than `MAX_JSON_DEPTH` and with integers of
at most `MAX_INT_DIGITS` digits. Every refusal is an `UnreadableInput`:
"unreadable: <path>: <reason>".
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import Any, BinaryIO

from cosmicai.errors import CosmicAIError

MAX_JSON_BYTES = 16 * 2**20  # payloads and price tables
MAX_RECORD_BYTES = 256 * 2**20  # a run's records and combined results
MAX_LOG_BYTES = 512 * 2**20  # a run's saved log events
MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 100

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class UnreadableInput(CosmicAIError):
    """A file that cannot be used: missing, not a regular file, too large, not UTF-8, bad JSON."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"unreadable: {path}: {reason}")


class MissingInput(UnreadableInput, FileNotFoundError):
    """The file does not exist (also a FileNotFoundError, for callers that allow that)."""


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | Path) -> BinaryIO:
    """A regular file opened for reading; folders, FIFOs, devices and sockets are refused."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableInput(path, f"is {_kind(mode)}; give a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # never blocks, even if now a FIFO
    except FileNotFoundError:
        raise MissingInput(path, "no such file") from None
    except OSError as err:
        raise UnreadableInput(path, err.strerror or str(err)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnreadableInput(path, "was replaced by something that is not a regular file")
    return os.fdopen(fd, "rb")


def read_bytes(path: str | Path, *, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The contents of a regular file of at most `max_bytes` bytes."""
    with open_regular(path) as stream:
        try:
            data = stream.read(max_bytes + 1)
        except OSError as err:
            raise UnreadableInput(path, err.strerror or str(err)) from None
    return _within(data, max_bytes, path)


def _within(data: bytes, max_bytes: int, source: str | Path) -> bytes:
    if len(data) > max_bytes:
        raise UnreadableInput(source, f"is larger than {max_bytes / 2**20:g} MiB")
    return data


def decode_text(data: bytes, source: str | Path) -> str:
    """UTF-8 text (a byte-order mark is dropped)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UnreadableInput(source, f"is not UTF-8 text (byte {err.start})") from None


def read_text(path: str | Path, *, max_bytes: int = MAX_JSON_BYTES) -> str:
    """A regular UTF-8 text file of at most `max_bytes` bytes."""
    return decode_text(read_bytes(path, max_bytes=max_bytes), path)


def _depth(text: str) -> int:
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(1 if char in "[{" else -1 for char in brackets), default=0)


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"holds a number of {len(digits)} digits (at most {MAX_INT_DIGITS})")
    return int(digits)


def parse_json(
    text: str,
    source: str | Path,
    *,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """The JSON document in `text`; `source` names it in errors."""
    if not text.strip():
        raise UnreadableInput(source, "is empty; it must hold a JSON document")
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(text) > MAX_JSON_DEPTH:
        raise UnreadableInput(source, f"nests JSON deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_int=_parse_int, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as err:
        early = err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string")
        ends = " (the text ends early: truncated?)" if early else ""
        reason = f"not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}{ends}"
        raise UnreadableInput(source, reason) from None
    except (ValueError, RecursionError) as err:
        raise UnreadableInput(source, str(err) or "cannot be parsed as JSON") from None


def parse_json_bytes(data: bytes, source: str | Path, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON document in `data` (an S3 object's body, say): size-limited UTF-8 JSON."""
    return parse_json(decode_text(_within(data, max_bytes, source), source), source)


def read_json_file(
    path: str | Path,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    missing_ok: bool = False,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """The JSON document in a regular file; None for a missing file when `missing_ok`."""
    try:
        text = read_text(path, max_bytes=max_bytes)
    except MissingInput:
        if missing_ok:
            return None
        raise
    return parse_json(text, path, object_pairs_hook=object_pairs_hook)


def json_object(value: Any, source: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """`value` if it is a JSON object holding the `required` keys."""
    if not isinstance(value, dict):
        raise UnreadableInput(source, f"holds a JSON {type(value).__name__}, expected an object")
    missing = [key for key in required if key not in value]
    if missing:
        raise UnreadableInput(source, f"lacks {', '.join(missing)}")
    return value


def writable_dir(path: str | Path) -> Path:
    """`path` as a directory that exists (created if needed) and accepts new files."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as err:
        raise CosmicAIError(
            f"cannot write to {directory}: {err.strerror or err}; choose another location"
        ) from None
    return directory
