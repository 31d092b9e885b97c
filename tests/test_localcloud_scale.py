"""Class scale on the local cloud: a world size far above the machine's cores runs every rank.

Reproduces the lost ranks (world size 16 ran 8, 64 ran 8 and reported success): every rank now
has its record, and the executor's REPORT lines show one invocation per rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORLD_SIZE = 64


def test_world_size_64_runs_every_rank(tmp_path: Path) -> None:
    env = {**os.environ, "COSMICAI_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "cosmicai.cli.main", "demo", "--world-size", str(WORLD_SIZE),
         "--model-size", "tiny", "--samples", str(WORLD_SIZE * 16), "--out", str(tmp_path / "out"),
         "--json"],
        capture_output=True, text=True, check=False, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)["summary"]
    assert summary["status"] == "succeeded"
    assert sorted(r["rank"] for r in summary["ranks"]) == list(range(WORLD_SIZE))
    assert summary["samples"] == WORLD_SIZE * 16
    (run_dir,) = (tmp_path / "home" / "s3" / "cosmicai-runs" / "runs").iterdir()
    logs = (run_dir / "logs" / "cosmicai-executor.jsonl").read_text().splitlines()
    reports = [line for line in logs if '"REPORT RequestId' in line]
    assert len(reports) == WORLD_SIZE
