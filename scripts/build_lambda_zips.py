#!/usr/bin/env python3
"""Build the deployment zips of the zip-packaged Lambdas (init, summarize) for Terraform.

The zips come from the installed `cosmicai` package (see `cosmicai.artifacts`): each holds the
function's handler at the zip root, the `cosmicai` packages, and the packages of
`functions/<name>/requirements.txt` installed for Lambda's python3.11 on the target
architecture. The local cloud runs these same zips.

    .venv/bin/python scripts/build_lambda_zips.py            # -> build/lambda/{init,summarize}.zip
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cosmicai.artifacts import PLATFORMS, ZIP_FUNCTIONS, BuildError, build_zip

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "lambda", help="output folder")
    parser.add_argument(
        "--function", action="append", choices=ZIP_FUNCTIONS, help="build only this one"
    )
    parser.add_argument(
        "--arch", choices=sorted(PLATFORMS), default="x86_64", help="Lambda architecture"
    )
    parser.add_argument(
        "--no-deps", action="store_true", help="skip functions/<name>/requirements.txt"
    )
    args = parser.parse_args(argv)
    try:
        for function in args.function or ZIP_FUNCTIONS:
            path = build_zip(function, args.out, args.arch, with_deps=not args.no_deps)
            print(f"{path} ({path.stat().st_size} bytes)")
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
