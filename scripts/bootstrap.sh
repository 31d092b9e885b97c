#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv in .venv with one extra of the package:
#   scripts/bootstrap.sh demo   # what `cosmicai demo` imports (local cloud, engine, reports)
#   scripts/bootstrap.sh dev    # that plus the test and lint tools, checkov, the Node tools
# Idempotent: re-installs only when pyproject.toml or package-lock.json changed.
set -euo pipefail
extra="${1:-dev}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
venv="$root/.venv"
stamp="$venv/.bootstrap-$extra"
want="$(cat pyproject.toml package.json package-lock.json 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: installing cosmicai[$extra] into $venv (first run takes a few minutes)" >&2
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # The CPU build of PyTorch first: an unpinned torch would pull a multi-GB CUDA build.
    "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
    "$venv/bin/python" -m pip install --quiet -e ".[$extra]"
    if [ "$extra" = dev ]; then
        # checkov pins old boto3/networkx/packaging: it gets a virtualenv of its own.
        if [ ! -x "$venv/tools/checkov/bin/checkov" ]; then
            "$python" -m venv "$venv/tools/checkov"
            "$venv/tools/checkov/bin/python" -m pip install --quiet "checkov==3.3.30"
        fi
        if command -v npm >/dev/null && [ -f package-lock.json ]; then
            npm ci --silent --no-audit --no-fund >/dev/null
        fi
    fi
    echo "$want" > "$stamp"
fi
