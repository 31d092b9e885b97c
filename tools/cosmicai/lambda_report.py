"""AWS Lambda REPORT lines: parse them from logs, and write them exactly as Lambda does.

Lambda writes one REPORT line per invocation to `/aws/lambda/<function>`, tab-separated,
each field `Name: value`, with a trailing tab::

    REPORT RequestId: <id>\tDuration: 6434.80 ms\tBilled Duration: 7381 ms\t
    Memory Size: 10240 MB\tMax Memory Used: 645 MB\tInit Duration: 945.56 ms\t

(one line in the log). `Init Duration` appears on cold starts only; `Status: timeout` (or
`Status: error` with `Error Type: ...`) when the invocation failed in the runtime; other fields
(`Restore Duration`, `Billed Restore Duration`, `XRAY TraceId`, `SegmentId`, `Sampled`) are
kept verbatim in `ReportLine.extra`.

What `parse_report_lines` accepts:
- a bare REPORT line (leading whitespace allowed);
- a REPORT line embedded after a prefix, as in `aws logs tail` output or CloudWatch exports
  (`2024-05-01T12:00:00.123Z 2024/05/01/[$LATEST]abc REPORT RequestId: ...`): the text from
  `REPORT RequestId:` on is parsed;
- a line whose tabs were turned into spaces (copied from the console): fields are then found
  by their known names, so unknown extra fields cannot be told apart there.
JSON exports escape the tabs (`\\t`); extract the messages first, for example with
`jq -r '.events[].message'`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from cosmicai.errors import CosmicAIError


class ReportParseError(CosmicAIError):
    """A line that starts like a Lambda REPORT line but does not have its fields."""


_STARTS_WITH_REPORT = re.compile(r"^\s*(REPORT(?:\s.*)?)$", re.DOTALL)
_EMBEDDED_REPORT = re.compile(r"(?:^|\s)(REPORT\s+RequestId:.*)$", re.DOTALL)
_MS_FLOAT = re.compile(r"(\d+(?:\.\d+)?) ms")
_MS_INT = re.compile(r"(\d+) ms")
_MB_INT = re.compile(r"(\d+) MB")
# Field names Lambda writes, longest first so that "Billed Duration" wins over "Duration"
# when a console copy has lost its tabs.
_KNOWN_FIELDS = (
    "Billed Restore Duration",
    "Restore Duration",
    "Billed Duration",
    "Init Duration",
    "Max Memory Used",
    "Memory Size",
    "Duration",
    "RequestId",
    "Status",
    "Error Type",
    "XRAY TraceId",
    "SegmentId",
    "Sampled",
)
_KNOWN_FIELD_START = re.compile(
    r"(?:^|(?<=\s))(" + "|".join(re.escape(name) for name in _KNOWN_FIELDS) + r"): "
)
_REQUIRED = ("RequestId", "Duration", "Billed Duration", "Memory Size", "Max Memory Used")


@dataclass(frozen=True)
class ReportLine:
    """One invocation's REPORT line. Durations are kept to the 0.01 ms that Lambda prints."""

    request_id: str
    duration_ms: float
    billed_duration_ms: int
    memory_size_mb: int
    max_memory_used_mb: int
    init_duration_ms: float | None = None
    status: str = "success"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "duration_ms", round(float(self.duration_ms), 2))
        if self.init_duration_ms is not None:
            object.__setattr__(self, "init_duration_ms", round(float(self.init_duration_ms), 2))
        object.__setattr__(self, "extra", {str(k): str(v) for k, v in self.extra.items()})

    @property
    def cold_start(self) -> bool:
        """True when Lambda reported an Init phase, i.e. a new execution environment."""
        return self.init_duration_ms is not None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields; `extra` only when the line had fields beyond the standard ones."""
        data: dict[str, object] = {
            "request_id": self.request_id,
            "duration_ms": self.duration_ms,
            "billed_duration_ms": self.billed_duration_ms,
            "memory_size_mb": self.memory_size_mb,
            "max_memory_used_mb": self.max_memory_used_mb,
            "init_duration_ms": self.init_duration_ms,
            "status": self.status,
        }
        if self.extra:
            data["extra"] = dict(self.extra)
        return data

    def format(self) -> str:
        """The line as Lambda writes it: tab-separated fields and a trailing tab."""
        fields = [
            f"REPORT RequestId: {self.request_id}",
            f"Duration: {self.duration_ms:.2f} ms",
            f"Billed Duration: {self.billed_duration_ms} ms",
            f"Memory Size: {self.memory_size_mb} MB",
            f"Max Memory Used: {self.max_memory_used_mb} MB",
        ]
        if self.init_duration_ms is not None:
            fields.append(f"Init Duration: {self.init_duration_ms:.2f} ms")
        if self.status != "success":
            fields.append(f"Status: {self.status}")
        fields.extend(f"{name}: {value}" for name, value in self.extra.items())
        return "\t".join(fields) + "\t"


def _report_text(line: str) -> str | None:
    """The REPORT part of a log line, or None when the line is no REPORT line at all."""
    match = _STARTS_WITH_REPORT.match(line) or _EMBEDDED_REPORT.search(line)
    return match.group(1).rstrip("\r\n") if match else None


def _split_fields(body: str) -> list[tuple[str, str]]:
    """`Name: value` pairs of the text after `REPORT`, tab- (or newline-) separated or not."""
    if "\t" in body or "\n" in body:
        pairs = []
        for chunk in re.split(r"[\t\n]", body):
            chunk = chunk.strip()
            if not chunk:
                continue
            name, sep, value = chunk.partition(": ")
            if not sep or not name:
                raise ReportParseError(f"field {chunk!r} is not of the form 'Name: value'")
            pairs.append((name, value.strip()))
        return pairs
    starts = list(_KNOWN_FIELD_START.finditer(body))
    if not starts or body[: starts[0].start()].strip():
        raise ReportParseError(
            "no tab-separated 'Name: value' fields after REPORT (expected 'RequestId: ...')"
        )
    ends = [m.start() for m in starts[1:]] + [len(body)]
    return [(m.group(1), body[m.end() : end].strip()) for m, end in zip(starts, ends, strict=True)]


def _number(name: str, value: str, pattern: re.Pattern[str], expected: str) -> str:
    match = pattern.fullmatch(value)
    if match is None:
        raise ReportParseError(f"{name}: expected '{expected}', got {value!r}")
    return match.group(1)


def parse_report_line(line: str) -> ReportLine:
    """Parse one REPORT line (see the module docstring for the accepted shapes).

    Raises ReportParseError naming the missing, duplicated or malformed field.
    """
    text = _report_text(line)
    if text is None:
        raise ReportParseError(f"not a Lambda REPORT line: {line.strip()[:80]!r}")
    fields: dict[str, str] = {}
    for name, value in _split_fields(text[len("REPORT") :]):
        if name in fields:
            raise ReportParseError(f"field '{name}' appears twice")
        fields[name] = value
    missing = [name for name in _REQUIRED if name not in fields]
    if missing:
        raise ReportParseError("missing field(s): " + ", ".join(f"'{m}'" for m in missing))
    request_id = fields.pop("RequestId")
    if not request_id or any(c.isspace() for c in request_id):
        raise ReportParseError(f"RequestId: expected an id without spaces, got {request_id!r}")
    init = fields.pop("Init Duration", None)
    return ReportLine(
        request_id=request_id,
        duration_ms=float(_number("Duration", fields.pop("Duration"), _MS_FLOAT, "<n> ms")),
        billed_duration_ms=int(
            _number("Billed Duration", fields.pop("Billed Duration"), _MS_INT, "<integer> ms")
        ),
        memory_size_mb=int(
            _number("Memory Size", fields.pop("Memory Size"), _MB_INT, "<integer> MB")
        ),
        max_memory_used_mb=int(
            _number("Max Memory Used", fields.pop("Max Memory Used"), _MB_INT, "<integer> MB")
        ),
        init_duration_ms=(
            None if init is None else float(_number("Init Duration", init, _MS_FLOAT, "<n> ms"))
        ),
        status=fields.pop("Status", "") or "success",
        extra=fields,
    )


def parse_report_lines(
    lines: Iterable[str],
) -> tuple[list[ReportLine], list[tuple[int, str]]]:
    """Parse every REPORT line of a log; never raises on bad input.

    Lines that are not REPORT lines (START, END, application output) are ignored. REPORT lines
    that cannot be parsed are skipped and returned as `(line_number, reason)`, numbered from 1.
    """
    reports: list[ReportLine] = []
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if _report_text(line) is None:
            continue
        try:
            reports.append(parse_report_line(line))
        except ReportParseError as err:
            problems.append((number, str(err)))
    return reports, problems
