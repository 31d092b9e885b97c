"""Peak memory is the process' own, not its parent's (the engine record, bench phases and the
local Lambda worker's REPORT line all use `cosmicai.peak_memory`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cosmicai.peak_memory import peak_rss_mb

PROBE = (
    "import json, resource\n"
    "from cosmicai.peak_memory import peak_rss_mb\n"
    "block = bytearray({mb} * 2**20)\n"
    "block[::4096] = b'x' * len(block[::4096])\n"
    "print(json.dumps([peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux carries ru_maxrss")
def test_a_child_of_a_big_parent_reports_its_own_peak() -> None:
    held = bytearray(400 * 2**20)
    held[::4096] = b"x" * len(held[::4096])  # touch every page: the parent is now 400+ MB
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(mb=50)], capture_output=True, text=True, check=True
    )
    own, inherited = json.loads(done.stdout)
    assert 50 <= own < 300  # its 50 MB block and the interpreter, not the parent's 400 MB
    assert inherited >= 400  # what ru_maxrss alone would have reported
    assert peak_rss_mb() >= 400
    del held


def test_children_count_once_finished() -> None:
    """Lambda's Max Memory Used covers the handler's finished children (script mode)."""
    parent = (
        "import json, subprocess, sys\n"
        "from cosmicai.peak_memory import peak_rss_mb\n"
        f"subprocess.run([sys.executable, '-c', {PROBE.format(mb=200)!r}], check=True,"
        " capture_output=True)\n"
        "print(json.dumps([peak_rss_mb(), peak_rss_mb(children=True)]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, check=True
    )
    own, with_children = json.loads(done.stdout)
    assert own < 150 <= 200 <= with_children
