#!/usr/bin/env bash
# Bootstrap the virtualenv, then run the linter, the formatter's check, the type checker and the
# whole test suite. The per-test timeout is pyproject.toml's [tool.pytest.ini_options] timeout
# (pass --timeout N to override it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh" dev
cd "$root"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # strict on cosmicai.pipeline and cosmicai.inference ([tool.mypy] in pyproject.toml)
.venv/bin/python -m pytest "$@"
