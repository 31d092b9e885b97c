"""`cosmicai metrics parse`: Lambda REPORT lines from a log, as JSON Lines."""

from __future__ import annotations

import argparse
import io
import json
import sys
from typing import TextIO

from cosmicai.errors import CosmicAIError
from cosmicai.lambda_report import parse_report_lines
from cosmicai.safe_input import MissingInput, UnreadableInput, open_regular

_PARSE_EPILOG = """\
Input: a log file or '-' (standard input), for example the output of
  aws logs tail /aws/lambda/<function> --since 1h
Lines other than REPORT lines (START, END, application output) are ignored; a REPORT line may
follow a timestamp or stream prefix. Malformed REPORT lines are reported on stderr as
'line N: reason' and skipped.

Exit status: 0 when at least one REPORT line was parsed or the input held no REPORT lines;
1 when every REPORT line was malformed, or the file cannot be read.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    metrics = subparsers.add_parser(
        "metrics",
        help="per-invocation Lambda metrics from REPORT lines",
        description="Per-invocation Lambda metrics from REPORT lines.",
    )
    commands = metrics.add_subparsers(dest="metrics_command", metavar="SUBCOMMAND", required=True)
    parse = commands.add_parser(
        "parse",
        help="REPORT lines -> one JSON object per line",
        description="Parse Lambda REPORT lines into one JSON object per line on stdout.",
        epilog=_PARSE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parse.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE|-",
        help="log file to read, or '-' for standard input (the default)",
    )
    parse.add_argument(
        "--json",
        action="store_true",
        help="JSON Lines output: the default and only format, accepted for "
        "uniformity with the other commands",
    )
    parse.set_defaults(func=run_parse)


def _parse_stream(stream: TextIO) -> int:
    reports, problems = parse_report_lines(stream)
    for report in reports:
        print(json.dumps(report.to_dict()))
    for line_no, reason in problems:
        print(f"line {line_no}: {reason}", file=sys.stderr)
    return 1 if problems and not reports else 0


def run_parse(args: argparse.Namespace) -> int:
    if args.file == "-":
        return _parse_stream(sys.stdin)
    try:
        binary = open_regular(args.file)
    except MissingInput:
        raise CosmicAIError(
            f"no such file: {args.file}; pass a log file holding Lambda REPORT lines, "
            "or '-' to read standard input"
        ) from None
    except UnreadableInput as err:
        raise CosmicAIError(f"{err} (pipe a stream to standard input with '-')") from None
    with io.TextIOWrapper(binary, encoding="utf-8", errors="replace") as stream:
        return _parse_stream(stream)
