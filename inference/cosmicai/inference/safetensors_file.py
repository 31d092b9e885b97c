"""Read a ``.safetensors`` file as memory-mapped NumPy arrays, without PyTorch.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
data_offsets; optional ``__metadata__`` of strings) and the tensors' bytes. Every offset and size
is checked against the file, so a corrupt or truncated file is refused, not read past its end.
Arrays are copy-on-write mappings: touching them costs memory only for the pages read.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "BF16": None,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
"""safetensors dtype codes; BF16 has no NumPy type and is refused when read."""
_MAX_HEADER = 100 * 2**20


class SafetensorsFormatError(ValueError):
    """The file is not a well-formed safetensors file (the message says why)."""


def read_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """(tensor entries, metadata, offset of the data section) of the file at `path`."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise SafetensorsFormatError(f"{size} bytes: too short for a header")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(_MAX_HEADER, size - 8):
            raise SafetensorsFormatError(f"header length {length} exceeds the file ({size} bytes)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SafetensorsFormatError(f"header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise SafetensorsFormatError("__metadata__ is not an object")
    _check_entries(header, size - 8 - length)
    return header, metadata, 8 + length


def _check_entries(entries: dict[str, Any], data_bytes: int) -> None:
    """Each entry's dtype, shape and offsets are valid and the entries tile the data section."""
    spans = []
    for name, entry in entries.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            itemsize = np.dtype(DTYPES[dtype]).itemsize if DTYPES[dtype] else 2
            if not all(isinstance(d, int) and d >= 0 for d in (*shape, start, end)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise SafetensorsFormatError(f"tensor {name!r} has a malformed entry") from None
        if end - start != math.prod(shape) * itemsize:
            raise SafetensorsFormatError(
                f"tensor {name!r} spans {end - start} bytes but {dtype}{shape} needs "
                f"{math.prod(shape) * itemsize}"
            )
        spans.append((start, end))
    position = 0
    for start, end in sorted(spans):
        if start != position:
            raise SafetensorsFormatError("tensor data overlaps or leaves gaps")
        position = end
    if position != data_bytes:
        raise SafetensorsFormatError(
            f"tensors hold {position} bytes but the data section has {data_bytes} (truncated?)"
        )


def read_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The file's tensors as memory-mapped arrays (name -> array) and its metadata."""
    entries, metadata, data_start = read_header(path)
    arrays = {}
    for name, entry in entries.items():
        dtype = DTYPES[entry["dtype"]]
        if dtype is None:
            raise SafetensorsFormatError(f"tensor {name!r} is bfloat16, which NumPy cannot map")
        start, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if start == end:
            arrays[name] = np.zeros(shape, dtype=np.dtype(dtype).newbyteorder("<"))
            continue
        arrays[name] = np.memmap(
            path,
            dtype=np.dtype(dtype).newbyteorder("<"),
            mode="c",
            offset=data_start + start,
            shape=shape,
        )
    return arrays, metadata
