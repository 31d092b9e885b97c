"""`cosmicai bench pipeline`: both phases run over the same data and the figures add up.

Only the harness is tested here (tiny model, a few samples); the target itself is measured by
running the benchmark, never asserted in a timed unit test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_bench_pipeline_reports_both_phases_and_saves_them(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    done = subprocess.run(
        [sys.executable, "-m", "cosmicai.cli.main", "bench", "pipeline", "--model-size", "tiny",
         "--samples", "64", "--world-size", "2", "--out", str(out), "--json"],
        capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "COSMICAI_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result == json.loads(out.read_text())
    assert result["engine_alone_s"] > 0 and result["demo_s"] > 0
    ratio = result["demo_s"] / result["engine_alone_s"]
    assert result["overhead_ratio"] == pytest.approx(ratio, abs=2e-3)  # both rounded to ms
    assert result["engine_threads"] == len(os.sched_getaffinity(0))
    assert sorted(r["rank"] for r in result["ranks"]) == [0, 1]
    assert sum(r["samples"] for r in result["ranks"]) == 64
    bound = 1.15 * result["engine_alone_s"] + 3.0
    assert result["target"]["demo_s_max"] == pytest.approx(bound, abs=2e-3)
    assert result["target"]["met"] == (result["demo_s"] <= result["target"]["demo_s_max"])
    assert not (tmp_path / "home").exists()  # the benchmark keeps its data to itself
