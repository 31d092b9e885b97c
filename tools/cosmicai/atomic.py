"""Atomic file writes: a temporary file beside the target replaces it only when complete.

Readers never see a half-written file: a crash or an error leaves the old file (or none) and
no temporary behind. Temporary names start with ``.`` and end in ``.part``, which the local S3
store never lists as keys.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _temporary(path: Path) -> tuple[int, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    return fd, Path(name)


class AtomicFile:
    """A temporary file beside `path`, open for writing, that replaces `path` on commit()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd, self.tmp = _temporary(path)
        self.handle: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> int:
        """Flush to disk and move into place; return the file's size in bytes."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size

    def discard(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` for a writer that wants a file name (a download, a
    zip): it replaces `target` when the block ends without an error, and is removed otherwise."""
    fd, tmp = _temporary(target)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
