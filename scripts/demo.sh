#!/usr/bin/env bash
# Bootstrap the virtualenv, then run the whole pipeline on the embedded local cloud.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh" demo
exec "$root/.venv/bin/cosmicai" demo "$@"
