"""Reading and writing data partitions: images [N,5,32,32], magnitudes [N,5], redshifts [N].

Two formats, chosen by suffix:

* ``.safetensors`` — ours: tensors ``images``, ``magnitudes`` and (labelled data only)
  ``redshifts``, written as float32, with metadata ``format: cosmicai-partition/1`` and ``samples``.
  Read without pickle and memory-mapped, so opening a file costs little memory until batches
  are touched.
* ``.pt`` — the reference format: ``torch.save(TensorDataset(images, magnitudes, redshifts))``
  (two tensors for unlabelled data; a tuple, list or dict of the same tensors is accepted too).
  Read with ``torch.load(weights_only=True)`` and ``TensorDataset`` as the only extra allowed
  global; anything else is refused unless the caller passes ``trust_pickle=True``. The
  weights-only unpickler already admits the storages of every dtype (``torch.FloatStorage``,
  ``DoubleStorage``, ``HalfStorage`` with ``torch._utils._rebuild_tensor_v2``), so float64 and
  float16 files need nothing more; other dtypes load and are then refused by validation.

Validation rules (read and write): exact shapes, float16, float32 or float64 tensors (the
reference's files hold float64 magnitudes and redshifts), converted to float32 (float32 tensors
are kept as they are, memory-mapped; others are converted in memory), one sample count for all
tensors, and finite values in every tensor after conversion (a NaN silently poisons a
prediction, so the file is refused with the first bad sample and the count named; images are
scanned in chunks of samples). Reference ``.pt`` files may store redshifts as [N, 1]; they are
read as [N]. Messages name the file as the caller labels it (``read_partition(..., name=)``),
e.g. the ``s3://`` object a rank downloaded to a temporary file.

Writes are atomic (`cosmicai.atomic`: a temporary file in the target directory, fsynced, then
``os.replace``).
:class:`PartitionWriter` streams a ``.safetensors`` partition chunk by chunk, so producers
never need the whole partition in memory.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from cosmicai.atomic import AtomicFile
from cosmicai.errors import DataFormatError
from cosmicai.inference.safetensors_file import SafetensorsFormatError, read_arrays

if TYPE_CHECKING:
    from torch import Tensor

FORMAT_ID = "cosmicai-partition/1"
BANDS = 5
IMAGE_SIZE = 32
IMAGE_SHAPE = (BANDS, IMAGE_SIZE, IMAGE_SIZE)
IMAGE_BYTES = BANDS * IMAGE_SIZE * IMAGE_SIZE * 4
SAMPLE_BYTES = IMAGE_BYTES + BANDS * 4 + 4
"""Bytes per labelled sample: image, five magnitudes, one redshift (all float32)."""

ACCEPTED_DTYPES = ("float16", "float32", "float64")
"""Dtypes accepted in partitions; tensors are converted to float32 on read and write."""
SUFFIXES = (".safetensors", ".pt")
_REQUIRED = ("images", "magnitudes")
_NAMES = (*_REQUIRED, "redshifts")
_ROW_SHAPES = {"images": IMAGE_SHAPE, "magnitudes": (BANDS,), "redshifts": ()}
_SAFETENSORS_SUFFIX = ".safetensors"
_SCAN_ROWS = 256
"""Samples checked for NaN/inf at a time (bounds the scan's temporary memory)."""


@dataclass(frozen=True, eq=False)
class Partition:
    """One partition file's float32 data: NumPy arrays (`read_partition_arrays`) or torch tensors
    (`read_partition`) sharing the same memory, memory-mapped when the file holds float32.

    `name` is how messages name the file; `input_bytes` is the size of images and magnitudes
    as the file stores them (before conversion to float32).
    """

    images: Any
    magnitudes: Any
    redshifts: Any | None
    path: Path
    name: str
    input_bytes: int

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _shape(shape: tuple[int | str, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _dtype_name(dtype: Any) -> str:
    """A dtype as PyTorch names it (``torch.float32``), NumPy's or torch's alike."""
    name = str(dtype)
    return name if name.startswith("torch.") else f"torch.{name}"


def _accepted() -> str:
    names = [_dtype_name(name) for name in ACCEPTED_DTYPES]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _check_dtype(name: str, dtype: Any, where: str | Path) -> None:
    """DataFormatError unless `dtype` (NumPy's or torch's) is an accepted one."""
    if _dtype_name(dtype).removeprefix("torch.") not in ACCEPTED_DTYPES:
        raise DataFormatError(
            f"{where}: {name} has dtype {_dtype_name(dtype)}; accepted dtypes are "
            f"{_accepted()} (read as float32); convert with .float()"
        )


def _checked(name: str, array: np.ndarray, where: str | Path) -> np.ndarray:
    """`array` as float32, or DataFormatError unless its dtype and row shape fit `name`."""
    _check_dtype(name, array.dtype, where)
    row = _ROW_SHAPES[name]
    if array.ndim != 1 + len(row) or tuple(array.shape[1:]) != row:
        raise DataFormatError(
            f"{where}: {name} has shape {_shape(array.shape)}, expected {_shape(('N', *row))}"
        )
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused below
        return array.astype(np.float32, copy=False)  # the array itself when float32 already


def _non_finite(array: np.ndarray) -> tuple[int, int]:
    """How many samples hold a NaN or inf, and the first of them (-1 if none)."""
    count, first = 0, -1
    for start in range(0, len(array), _SCAN_ROWS):
        rows = array[start : start + _SCAN_ROWS]
        bad = ~np.isfinite(rows).reshape(len(rows), -1).all(axis=1)
        found = int(bad.sum())
        if found and first < 0:
            first = start + int(np.flatnonzero(bad)[0])
        count += found
    return count, first


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "numpy")


def _as_array(name: str, value: Any, where: str | Path, arrays: bool) -> np.ndarray:
    """A torch tensor as a NumPy view of the same memory, or (`arrays`) a NumPy array."""
    if arrays and isinstance(value, np.ndarray):
        return value
    if _is_tensor(value):
        _check_dtype(name, value.dtype, where)  # before NumPy, which has no bfloat16 and such
        array: np.ndarray = value.detach().cpu().numpy()
        return array
    raise DataFormatError(f"{where}: {name} is a {type(value).__name__}, expected a torch.Tensor")


def validated_arrays(
    images: Any, magnitudes: Any, redshifts: Any, where: str | Path, *, arrays: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The tensors (or, `arrays`, NumPy arrays too) as float32 arrays, or DataFormatError
    (prefixed with `where`) unless they form a valid partition (see the module doc)."""
    given = {"images": images, "magnitudes": magnitudes, "redshifts": redshifts}
    stored = {
        name: _as_array(name, value, where, arrays)
        for name, value in given.items()
        if value is not None or name != "redshifts"
    }
    checked = {name: _checked(name, array, where) for name, array in stored.items()}
    count = checked["images"].shape[0]
    for name, array in checked.items():
        if array.shape[0] != count:
            raise DataFormatError(
                f"{where}: images has {count} samples but {name} has {array.shape[0]}; "
                "every tensor needs one row per sample"
            )
    for name, array in checked.items():
        bad, first = _non_finite(array)
        if bad:
            overflow = (
                " (or values beyond float32's range)" if stored[name].dtype == np.float64 else ""
            )
            raise DataFormatError(
                f"{where}: {name} contain NaN or inf{overflow} in {bad} sample(s), first at "
                f"sample {first}; drop or impute those samples and write the partition again"
            )
    return checked["images"], checked["magnitudes"], checked.get("redshifts")


def check_suffix(path: Path, where: str | Path | None = None) -> None:
    """Raise DataFormatError (prefixed with `where`, default `path`) unless `path` names a
    supported partition format."""
    if path.suffix not in SUFFIXES:
        raise DataFormatError(
            f"{where or path}: unsupported suffix {path.suffix or '(none)'!r}; expected "
            ".safetensors (CosmicAI format) or .pt (reference TensorDataset)"
        )


def read_partition_arrays(
    path: str | Path, *, trust_pickle: bool = False, name: str | None = None
) -> Partition:
    """Read and validate one partition file (format chosen by suffix) as float32 NumPy arrays.

    `name` is how messages name the file (default: `path`), e.g. the object it was downloaded
    from. A `.safetensors` file is read without PyTorch; a `.pt` file needs it.
    """
    path = Path(path)
    where = name or str(path)
    check_suffix(path, where)
    if not path.exists():
        raise DataFormatError(f"{where}: no such file; check the path (make one with make-data)")
    if not path.is_file():
        raise DataFormatError(f"{where}: is not a regular file; expected a partition file")
    if path.suffix == _SAFETENSORS_SUFFIX:
        stored = _read_safetensors(path, where)
    else:
        stored = _read_pt(path, trust_pickle, where)
    images, magnitudes, redshifts = validated_arrays(*stored, where, arrays=True)
    input_bytes = stored[0].nbytes + stored[1].nbytes
    return Partition(images, magnitudes, redshifts, path, where, input_bytes)


def read_partition(
    path: str | Path, *, trust_pickle: bool = False, name: str | None = None
) -> Partition:
    """`read_partition_arrays` with the data as torch tensors (no copy)."""
    import torch

    part = read_partition_arrays(path, trust_pickle=trust_pickle, name=name)
    redshifts = None if part.redshifts is None else torch.from_numpy(part.redshifts)
    return Partition(
        torch.from_numpy(part.images),
        torch.from_numpy(part.magnitudes),
        redshifts,
        part.path,
        part.name,
        part.input_bytes,
    )


def _read_safetensors(path: Path, where: str) -> tuple[Any, Any, Any]:
    """The file's arrays as stored (validated by the caller)."""
    try:
        arrays, metadata = read_arrays(path)
    except (SafetensorsFormatError, OSError) as err:
        raise DataFormatError(
            f"{where}: cannot be read as safetensors ({err}); the file is corrupt or truncated, "
            "re-create or re-download it"
        ) from err
    _check_names(where, set(arrays))
    found = metadata.get("format")
    if found != FORMAT_ID:
        raise DataFormatError(
            f"{where}: metadata format is {found!r}, expected {FORMAT_ID!r}; write partitions "
            "with `cosmicai partition` or cosmicai.inference.partition_io.write_partition"
        )
    images = arrays["images"]
    held = images.shape[0] if images.ndim else None
    if metadata.get("samples") != str(held):
        raise DataFormatError(
            f"{where}: metadata says {metadata.get('samples')} samples but images holds "
            f"{held}; the file is inconsistent, re-create it"
        )
    return images, arrays["magnitudes"], arrays.get("redshifts")


def _check_names(where: str, names: set[str]) -> None:
    missing = [name for name in _REQUIRED if name not in names]
    unknown = sorted(names - set(_NAMES))
    if missing or unknown:
        raise DataFormatError(
            f"{where}: holds tensors {sorted(names)}; expected images, magnitudes and optionally "
            f"redshifts (missing: {missing or 'none'}, unexpected: {unknown or 'none'})"
        )


def _read_pt(path: Path, trust_pickle: bool, where: str) -> tuple[Any, Any, Any]:
    """The file's tensors as stored (validated by the caller)."""
    import torch
    from torch.utils.data import TensorDataset

    mmap = zipfile.is_zipfile(path)  # legacy (pre-zip) torch files cannot be memory-mapped
    try:
        if trust_pickle:
            obj = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        else:
            with torch.serialization.safe_globals([TensorDataset]):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        if isinstance(err, pickle.UnpicklingError) and not trust_pickle:
            unsafe = _unsafe_globals(path)
            if unsafe:
                raise DataFormatError(
                    f"{where}: refusing to unpickle: the file needs Python globals outside the "
                    f"allow-list ({', '.join(unsafe)}), and loading it could run arbitrary code. "
                    "If you trust the file, pass trust_pickle=True (CLI: --trust-pickle), or "
                    "convert it once to .safetensors with `cosmicai partition`"
                ) from err
        raise DataFormatError(
            f"{where}: cannot be loaded as a torch file ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); the file is corrupt or "
            "truncated, re-create or re-download it"
        ) from err
    return _tensors_from_object(where, obj)


def _unsafe_globals(path: Path) -> list[str]:
    """Globals the file needs beyond the allow-list ([] when it cannot even be scanned)."""
    import torch
    from torch.utils.data import TensorDataset

    try:
        with torch.serialization.safe_globals([TensorDataset]):
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


def _tensors_from_object(where: str, obj: Any) -> tuple[Any, Any, Any]:
    from torch import Tensor
    from torch.utils.data import TensorDataset

    expected = "a TensorDataset(images, magnitudes[, redshifts]) or a tuple, list or dict of them"
    if isinstance(obj, TensorDataset):
        items = tuple(obj.tensors)
    elif isinstance(obj, dict):
        _check_names(where, {str(key) for key in obj})
        items = tuple(obj[name] for name in _NAMES if name in obj)
    elif isinstance(obj, tuple | list):
        items = tuple(obj)
    else:
        raise DataFormatError(f"{where}: holds a {type(obj).__name__}; expected {expected}")
    if len(items) not in (2, 3):
        raise DataFormatError(f"{where}: holds {len(items)} tensors; expected {expected}")
    images, magnitudes = items[0], items[1]
    redshifts = items[2] if len(items) == 3 else None
    if isinstance(redshifts, Tensor) and redshifts.dim() == 2 and redshifts.shape[1] == 1:
        redshifts = redshifts.reshape(-1)
    return images, magnitudes, redshifts


def _write_view(handle: BinaryIO, array: np.ndarray) -> None:
    handle.write(np.ascontiguousarray(array).data)


class PartitionWriter:
    """Streams a ``.safetensors`` partition of a known sample count, chunk by chunk.

    The header is written first (shapes are known from `samples`), each chunk's rows go to
    their final offsets, and the file appears at `path` only when close() sees every sample.
    Use as a context manager: an exception discards the temporary file.
    """

    def __init__(self, path: str | Path, samples: int, *, labelled: bool = True) -> None:
        path = Path(path)
        if path.suffix != _SAFETENSORS_SUFFIX:
            raise DataFormatError(f"{path}: PartitionWriter writes .safetensors files only")
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        self.path, self.samples, self.labelled = path, samples, labelled
        self.written = 0
        names = _NAMES if labelled else _REQUIRED
        header: dict[str, Any] = {"__metadata__": {"format": FORMAT_ID, "samples": str(samples)}}
        self._offsets: dict[str, tuple[int, int]] = {}  # name -> (start, bytes per row)
        start = 0
        for name in names:
            row_shape = _ROW_SHAPES[name]
            row_bytes = 4 * math.prod(row_shape)
            end = start + samples * row_bytes
            header[name] = {
                "dtype": "F32",
                "shape": [samples, *row_shape],
                "data_offsets": [start, end],
            }
            self._offsets[name] = (start, row_bytes)
            start = end
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._data_start = 8 + len(raw)
        self._file = AtomicFile(path)
        self._file.handle.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, images: Tensor, magnitudes: Tensor, redshifts: Tensor | None = None) -> None:
        """Append a chunk of samples (validated and converted like a whole partition)."""
        self.write_arrays(*validated_arrays(images, magnitudes, redshifts, self.path))

    def write_arrays(
        self, images: np.ndarray, magnitudes: np.ndarray, redshifts: np.ndarray | None
    ) -> None:
        """Append a chunk already validated as float32 arrays (`validated_arrays`)."""
        if (redshifts is not None) != self.labelled:
            state = "labelled" if self.labelled else "unlabelled"
            raise DataFormatError(
                f"{self.path}: the partition is {state}; give redshifts for every chunk or none"
            )
        count = len(images)
        if self.written + count > self.samples:
            raise ValueError(
                f"{self.path}: {self.written + count} samples written, {self.samples} declared"
            )
        chunk = {"images": images, "magnitudes": magnitudes}
        if redshifts is not None:
            chunk["redshifts"] = redshifts
        for name, (start, row_bytes) in self._offsets.items():
            self._file.handle.seek(self._data_start + start + self.written * row_bytes)
            _write_view(self._file.handle, chunk[name])
        self.written += count

    def close(self) -> int:
        """Publish the file; return its size in bytes."""
        if self.written != self.samples:
            self._file.discard()
            raise ValueError(
                f"{self.path}: only {self.written} of {self.samples} declared samples written"
            )
        return self._file.commit()

    def __enter__(self) -> PartitionWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.discard()


def _own_storage(tensor: Tensor) -> Tensor:
    """The tensor itself if it owns exactly its storage, else a compact copy (torch.save
    writes whole storages, so a slice of a big tensor would otherwise drag the rest along)."""
    compact = (
        tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.nbytes
    )
    return tensor if compact else tensor.clone()


def write_partition(
    path: str | Path, images: Tensor, magnitudes: Tensor, redshifts: Tensor | None = None
) -> int:
    """Validate and atomically write one float32 partition (format by suffix); return bytes
    written."""
    path = Path(path)
    check_suffix(path)
    image_rows, magnitude_rows, redshift_rows = validated_arrays(
        images, magnitudes, redshifts, path
    )
    if path.suffix == _SAFETENSORS_SUFFIX:
        with PartitionWriter(path, len(image_rows), labelled=redshift_rows is not None) as writer:
            writer.write_arrays(image_rows, magnitude_rows, redshift_rows)
        return path.stat().st_size
    import torch
    from torch.utils.data import TensorDataset

    arrays = [image_rows, magnitude_rows]
    if redshift_rows is not None:
        arrays.append(redshift_rows)
    tensors = [_own_storage(torch.from_numpy(np.ascontiguousarray(a))) for a in arrays]
    target = AtomicFile(path)
    try:
        torch.save(TensorDataset(*tensors), target.handle)
    except BaseException:
        target.discard()
        raise
    return target.commit()
