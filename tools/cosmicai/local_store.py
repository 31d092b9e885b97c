"""The local store: the local cloud's persistent S3, a folder `<home>/s3/<bucket>/<key>`.

The emulator's S3 lives only as long as one command, so local runs read their inputs from this
folder (uploaded into the emulator when a run starts) and leave their outputs here (downloaded
when it ends). `cosmicai partition ... --out s3://bucket/prefix` without `--aws` writes here.

Each local run has its own emulator, so this folder is also where concurrent local runs claim
their run id and result_path (`MirrorClaims`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cosmicai.atomic import atomic_path
from cosmicai.claims import Claim, decode, encode
from cosmicai.errors import CosmicAIError
from cosmicai.pipeline.layout import RunLayout
from cosmicai.pipeline.s3objects import check_location, iter_objects


def cosmicai_home() -> Path:
    """`$COSMICAI_HOME`, or `.cosmicai` in the current directory."""
    return Path(os.environ.get("COSMICAI_HOME", ".cosmicai")).resolve()


class LocalS3Mirror:
    """Objects of the local cloud, kept on disk between commands."""

    def __init__(self, home: Path | None = None) -> None:
        self.root = (home or cosmicai_home()) / "s3"

    def path(self, bucket: str, key: str) -> Path:
        check_location(bucket, key)
        target = (self.root / bucket / key).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise CosmicAIError(f"s3://{bucket}/{key} escapes the local store {self.root}")
        return target

    def exists(self, bucket: str, key: str) -> bool:
        return self.path(bucket, key).is_file()

    def keys(self, bucket: str, prefix: str) -> Iterator[str]:
        """Keys under a prefix (a folder prefix `a/b/` or an exact key)."""
        base = self.root / bucket
        start = self.path(bucket, prefix)
        if start.is_file():
            yield prefix
            return
        if start.is_dir():
            for path in sorted(start.rglob("*")):
                if path.is_file() and not path.name.endswith(".part"):
                    yield path.relative_to(base).as_posix()

    def upload(self, s3: Any, bucket: str, prefix: str) -> int:
        """Copy a prefix from disk into the emulator; returns the number of objects."""
        from boto3.exceptions import S3UploadFailedError

        count = 0
        for key in self.keys(bucket, prefix):
            try:
                s3.upload_file(str(self.path(bucket, key)), bucket, key)
            except S3UploadFailedError as err:  # e.g. the emulator's disk is full
                raise CosmicAIError(
                    f"could not copy {self.path(bucket, key)} into the local cloud's S3 "
                    f"(s3://{bucket}/{key}): {err}. Free disk space (the local cloud keeps large "
                    f"objects in $TMPDIR) and run again."
                ) from err
            count += 1
        return count

    def download(self, s3: Any, bucket: str, prefix: str) -> int:
        """Copy a prefix from the emulator to disk; returns the number of objects."""
        count = 0
        for obj in iter_objects(s3, bucket, prefix):
            with atomic_path(self.path(bucket, obj["Key"])) as partial:
                s3.download_file(bucket, obj["Key"], str(partial))
            count += 1
        return count


def _alive(pid: object) -> bool:
    """Whether a process of this host still runs under `pid`."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class MirrorClaims:
    """Claims as files of the local store: an exclusive create, visible only when complete.

    A claim is written to a temporary file and hard-linked into place (`os.link` fails if the
    claim exists), so exactly one of concurrent claimers wins and no reader sees half a claim.
    Local claims also name the claiming process (pid, hostname): when it is gone, so is the
    local cloud that ran the claimed run.
    """

    def __init__(self, mirror: LocalS3Mirror) -> None:
        self.mirror = mirror

    def exists(self, bucket: str, key: str) -> bool:
        return self.mirror.exists(bucket, key)

    def read(self, bucket: str, key: str) -> Claim | None:
        path = self.mirror.path(bucket, key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        return Claim(decode(raw, str(path)), hashlib.sha256(raw).hexdigest())

    def claim(self, bucket: str, key: str, body: dict[str, Any]) -> Claim | None:
        path = self.mirror.path(bucket, key)
        staged = self._stage(path, body)
        try:
            os.link(staged, path)
            return None
        except FileExistsError:
            pass
        finally:
            staged.unlink()
        return self._current(bucket, key, body)

    def replace(self, bucket: str, key: str, old: Claim, body: dict[str, Any]) -> Claim | None:
        path = self.mirror.path(bucket, key)
        try:
            held = path.open("rb")
        except FileNotFoundError:
            return self.claim(bucket, key, body)
        with held:
            fcntl.flock(held, fcntl.LOCK_EX)  # replacements of one claim take turns
            raw = held.read()
            if _same_file(path, held) and hashlib.sha256(raw).hexdigest() == old.version:
                os.replace(self._stage(path, body), path)
                return None
        return self._current(bucket, key, body)

    def release(self, bucket: str, key: str) -> None:
        self.mirror.path(bucket, key).unlink(missing_ok=True)

    def finished(self, bucket: str, claim: Claim) -> bool:
        """Its execution record says it ended, or its process on this host is gone."""
        record_path = self.mirror.path(bucket, RunLayout(claim.run_id).execution_key)
        try:
            record = json.loads(record_path.read_text())
        except (FileNotFoundError, ValueError):
            record = {}
        ours = record.get("executionArn") == claim.body.get("execution_arn")
        if ours and record.get("status") not in (None, "RUNNING"):
            return True
        here = claim.body.get("hostname") == socket.gethostname()
        return here and not _alive(claim.body.get("pid"))

    def _current(self, bucket: str, key: str, body: dict[str, Any]) -> Claim | None:
        """The claim that beat ours; if it has gone meanwhile, try again."""
        current = self.read(bucket, key)
        return current if current is not None else self.claim(bucket, key, body)

    @staticmethod
    def _stage(path: Path, body: dict[str, Any]) -> Path:
        """The claim, complete, in a temporary file beside `path` (`.part`: not a key)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f"{path.name}.{secrets.token_hex(6)}.part")
        local = {**body, "pid": os.getpid(), "hostname": socket.gethostname()}
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(encode(local))
        return staged


def _same_file(path: Path, handle: Any) -> bool:
    """Whether `handle` is still the file at `path` (not replaced or removed since it opened)."""
    try:
        return path.stat().st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False
