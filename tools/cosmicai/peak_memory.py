"""Peak resident memory of this process (and, optionally, its finished children), in MiB.

Standard library only: the local Lambda worker, which runs in an isolated interpreter, loads
this file by path. On Linux the process' own peak is `VmHWM` from /proc/self/status: the peak
of this program since it started. `ru_maxrss` alone would not do, because Linux carries it
across fork and exec, so a process started by a big parent reports the parent's peak (a
benchmark phase spawned by a 600 MB parent read 600 MB whatever it used).
"""

from __future__ import annotations

import resource
import sys


def _own_peak_kib() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB else


def peak_rss_mb(*, children: bool = False) -> float:
    """Peak RSS of this process in MiB; with `children`, the larger of it and the peak of any
    finished child (what Lambda's "Max Memory Used" covers)."""
    peak = _own_peak_kib()
    if children:
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        peak = max(peak, child / 1024 if sys.platform == "darwin" else child)
    return peak / 1024
