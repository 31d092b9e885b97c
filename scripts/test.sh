#!/usr/bin/env bash
# Bootstrap the virtualenv, then run the linter and the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh" dev
cd "$root"
.venv/bin/ruff check .
.venv/bin/mypy  # strict on cosmicai.pipeline and cosmicai.inference ([tool.mypy] in pyproject.toml)
.venv/bin/python -m pytest "$@"
