"""Entry point of the `cosmicai` console script.

Each command module exposes `register(subparsers)`, which adds its sub-command(s) and sets
`func` (taking the parsed arguments, returning an exit code) as the parser default.
Expected errors (`CosmicAIError`, and OSError for files the user named) are printed to stderr
without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cosmicai.inference.errors import CosmicAIError

# Command modules under cosmicai.cli, in the order `cosmicai --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "data",
    "run",
    "rendezvous",
    "validate",
    "metrics",
    "cost",
    "report",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosmicai",
        description="Serverless AstroMAE redshift inference on AWS Lambda, or locally.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"cosmicai.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CosmicAIError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a file or folder the command was pointed at cannot be used
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
