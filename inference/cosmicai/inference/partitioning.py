"""Splitting a dataset into fixed-size partition files, with a checksummed manifest.

`partition` streams: sources are memory-mapped and opened one at a time, and each output file is
written row range by row range with :class:`PartitionWriter`, so memory does not grow with the
dataset. Sizes are in MiB (2**20 bytes) and counted as ``SAMPLE_BYTES`` per sample, so every
file but the last holds exactly ``floor(size_mb * 2**20 / SAMPLE_BYTES)`` samples.

Sources may hold float16, float32 or float64 tensors (the reference's files have float64
magnitudes and redshifts); partitions are always float32. A source's non-float32 tensors are
converted in memory when it is opened (for float64 magnitudes, 20 bytes per sample).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cosmicai.atomic import AtomicFile
from cosmicai.errors import CosmicAIError, DataFormatError
from cosmicai.inference.partition_io import (
    FORMAT_ID,
    SAMPLE_BYTES,
    SUFFIXES,
    PartitionWriter,
    read_partition,
)

MANIFEST_NAME = "manifest.json"
_MIB = 2**20
_MIN_SIZE_MB = math.ceil(SAMPLE_BYTES / _MIB * 100) / 100  # one sample, rounded up to 0.01 MiB
_UNITS = {"": 1.0, "k": 1 / 1024, "m": 1.0, "g": 1024.0}
_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmg])(?:i?b)?)?\s*$", re.IGNORECASE)

Segment = tuple[int, int, int]
"""Rows [start, stop) of source file number `index`: (index, start, stop)."""


@dataclass(frozen=True)
class ManifestEntry:
    """One partition file as recorded in the manifest."""

    file: str
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What `partition` wrote: the target size, totals, and every file with its checksum."""

    size_mb: float
    samples_per_file: int
    samples: int
    labelled: bool
    files: tuple[ManifestEntry, ...]
    format: str = FORMAT_ID

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "size_mb": self.size_mb,
            "samples_per_file": self.samples_per_file,
            "samples": self.samples,
            "labelled": self.labelled,
            "files": [asdict(entry) for entry in self.files],
        }

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a manifest file, or the manifest.json inside a directory."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise DataFormatError(
                f"{path}: no manifest; partition the data with `cosmicai partition` first"
            ) from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataFormatError(f"{path}: unreadable manifest ({err}); re-partition") from err
        try:
            manifest = cls(
                size_mb=float(data["size_mb"]),
                samples_per_file=int(data["samples_per_file"]),
                samples=int(data["samples"]),
                labelled=bool(data["labelled"]),
                files=tuple(ManifestEntry(**entry) for entry in data["files"]),
                format=str(data["format"]),
            )
        except KeyError as err:
            raise DataFormatError(f"{path}: manifest lacks the key {err}; re-partition") from err
        except (TypeError, ValueError) as err:
            raise DataFormatError(f"{path}: malformed manifest ({err}); re-partition") from err
        if manifest.format != FORMAT_ID:
            raise DataFormatError(
                f"{path}: manifest format {manifest.format!r} is not {FORMAT_ID!r}; re-partition"
            )
        return manifest

    def write(self, out_dir: str | Path) -> Path:
        """Write manifest.json into `out_dir` atomically; return its path."""
        target = AtomicFile(Path(out_dir) / MANIFEST_NAME)
        target.handle.write(json.dumps(self.to_dict(), indent=2).encode() + b"\n")
        target.commit()
        return target.path


def parse_size_mb(text: str) -> float:
    """Parse a partition size such as ``25MB``, ``25``, ``0.5MB``, ``512KB`` or ``1GB`` (MiB)."""
    match = _SIZE_PATTERN.match(text)
    if not match:
        raise CosmicAIError(
            f"invalid size {text!r}: give a number of MiB with an optional unit, "
            "for example 25MB, 25 or 0.5MB"
        )
    return float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def samples_per_file(size_mb: float) -> int:
    """Samples in each full partition of `size_mb` MiB; refuses sizes below one sample."""
    if not math.isfinite(size_mb) or size_mb <= 0:
        raise CosmicAIError(f"partition size must be a positive number of MiB, got {size_mb}")
    count = math.floor(size_mb * _MIB / SAMPLE_BYTES + 1e-9)
    if count < 1:
        raise CosmicAIError(
            f"partition size {size_mb} MiB is smaller than one sample ({SAMPLE_BYTES} bytes = "
            f"{SAMPLE_BYTES / _MIB:.4f} MiB); use at least {_MIN_SIZE_MB}MB"
        )
    return count


def _partition_files(directory: Path) -> list[Path]:
    return sorted(
        path
        for path in directory.iterdir()
        if path.suffix in SUFFIXES and path.is_file() and not path.name.startswith(".")
    )


def source_files(source: str | Path) -> list[Path]:
    """The partition files of `source`: the file itself, or a directory's files in name order."""
    source = Path(source)
    if source.is_dir():
        files = _partition_files(source)
        if not files:
            raise DataFormatError(
                f"{source}: directory holds no partition files ({', '.join(SUFFIXES)})"
            )
        return files
    if not source.exists():
        raise DataFormatError(f"{source}: no such file or directory; check the source path")
    return [source]


def plan_segments(counts: list[int], per_file: int) -> list[list[Segment]]:
    """Cut the concatenation of sources with `counts` rows into parts of `per_file` rows."""
    parts: list[list[Segment]] = []
    room = 0
    for index, count in enumerate(counts):
        start = 0
        while start < count:
            if room == 0:
                parts.append([])
                room = per_file
            stop = min(count, start + room)
            parts[-1].append((index, start, stop))
            room -= stop - start
            start = stop
    return parts


def _survey(files: list[Path], trust_pickle: bool) -> tuple[list[int], bool]:
    """Sample counts of every source and whether they are labelled (all or none)."""
    counts: list[int] = []
    labelled: dict[bool, Path] = {}
    for path in files:
        part = read_partition(path, trust_pickle=trust_pickle)
        counts.append(len(part))
        labelled.setdefault(part.redshifts is not None, path)
    if len(labelled) > 1:
        raise DataFormatError(
            f"{labelled[True]} has redshifts but {labelled[False]} does not; partition labelled "
            "and unlabelled data separately"
        )
    return counts, next(iter(labelled))


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CosmicAIError(f"{out_dir}: exists and is not a directory; choose another --out")
    taken = sorted(
        path.name
        for path in (out_dir.iterdir() if out_dir.exists() else ())
        if path.suffix in SUFFIXES or path.name == MANIFEST_NAME
    )
    if taken:
        shown = ", ".join(taken[:3]) + (", ..." if len(taken) > 3 else "")
        raise CosmicAIError(
            f"{out_dir}: already holds partition files ({shown}); partition into an empty or new "
            "directory (everything there would be read as data) or delete them first"
        )


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def partition(
    source: str | Path,
    out_dir: str | Path,
    *,
    size_mb: float = 25,
    stem: str = "part",
    trust_pickle: bool = False,
) -> Manifest:
    """Split `source` (a partition file or a directory of them) into `size_mb` MiB files.

    Writes ``<stem>-00000.safetensors``... and ``manifest.json`` into `out_dir` (which must not
    already hold partition files) and returns the manifest.
    """
    per_file = samples_per_file(size_mb)
    if not stem or Path(stem).name != stem or stem.startswith("."):
        raise CosmicAIError(f"invalid stem {stem!r}: use a plain file-name prefix such as 'part'")
    files = source_files(source)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    counts, labelled = _survey(files, trust_pickle)
    if sum(counts) == 0:
        raise DataFormatError(f"{source}: holds no samples; nothing to partition")
    # Only the most recently opened source stays mapped.
    open_source = functools.lru_cache(maxsize=1)(
        lambda index: read_partition(files[index], trust_pickle=trust_pickle)
    )
    entries: list[ManifestEntry] = []
    published: list[Path] = []
    try:
        for number, segments in enumerate(plan_segments(counts, per_file)):
            path = out_dir / f"{stem}-{number:05d}.safetensors"
            samples = sum(stop - start for _, start, stop in segments)
            with PartitionWriter(path, samples, labelled=labelled) as writer:
                for index, start, stop in segments:
                    rows = open_source(index)
                    redshifts = (
                        rows.redshifts[start:stop]
                        if labelled and rows.redshifts is not None
                        else None
                    )
                    writer.write(rows.images[start:stop], rows.magnitudes[start:stop], redshifts)
            published.append(path)
            entries.append(
                ManifestEntry(path.name, samples, path.stat().st_size, file_sha256(path))
            )
        manifest = Manifest(float(size_mb), per_file, sum(counts), labelled, tuple(entries))
        manifest.write(out_dir)
    except BaseException:
        for path in published:  # leave no manifest-less half result behind
            path.unlink(missing_ok=True)
        raise
    finally:
        open_source.cache_clear()
    return manifest


def verify_manifest(directory: str | Path) -> list[str]:
    """Problems with a partitioned directory: missing, altered or unlisted files ([] if none)."""
    directory = Path(directory)
    manifest = Manifest.load(directory)
    problems = []
    for entry in manifest.files:
        path = directory / entry.file
        if not path.is_file():
            problems.append(f"{entry.file}: missing")
            continue
        size = path.stat().st_size
        if size != entry.bytes:
            problems.append(f"{entry.file}: {size} bytes, manifest says {entry.bytes}")
        elif file_sha256(path) != entry.sha256:
            problems.append(f"{entry.file}: sha256 differs from the manifest (file altered)")
    listed = {entry.file for entry in manifest.files}
    problems.extend(
        f"{path.name}: not listed in the manifest (it would be read as data too)"
        for path in _partition_files(directory)
        if path.name not in listed
    )
    listed_samples = sum(entry.samples for entry in manifest.files)
    if listed_samples != manifest.samples:
        problems.append(
            f"{MANIFEST_NAME}: files hold {listed_samples} samples, total says {manifest.samples}"
        )
    return problems
