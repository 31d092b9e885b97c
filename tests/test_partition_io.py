"""Partition files: our .safetensors format, the reference .pt format, validation, atomicity."""

from __future__ import annotations

import json
import os
import pickletools
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset

from cosmicai.errors import DataFormatError
from cosmicai.inference.partition_io import (
    FORMAT_ID,
    SAMPLE_BYTES,
    PartitionWriter,
    read_partition,
    write_partition,
)


def tensors(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 5, 32, 32, generator=gen),
        20 + torch.randn(n, 5, generator=gen),
        torch.rand(n, generator=gen),
    )


def with_value(tensor: torch.Tensor, index: tuple[int, ...], value: float) -> torch.Tensor:
    """A copy of `tensor` with one element set."""
    copy = tensor.clone()
    copy[index] = value
    return copy


def only_file(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


class SubclassedDataset(TensorDataset):
    """A dataset class outside the allow-list (stands for any custom pickled class)."""


class RunsCode:
    """Unpickling this calls os.system: the kind of file that must never load by default."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("labelled", [True, False])
def test_safetensors_round_trip_and_layout(tmp_path: Path, labelled: bool) -> None:
    images, magnitudes, redshifts = tensors()
    path = tmp_path / "p.safetensors"
    written = write_partition(path, images, magnitudes, redshifts if labelled else None)
    assert written == path.stat().st_size
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    per_sample = SAMPLE_BYTES if labelled else SAMPLE_BYTES - 4
    assert written == 8 + header_len + 6 * per_sample

    part = read_partition(path)
    assert len(part) == 6 and part.path == path
    assert torch.equal(part.images, images) and torch.equal(part.magnitudes, magnitudes)
    if labelled:
        assert torch.equal(part.redshifts, redshifts)
    else:
        assert part.redshifts is None

    # An independent reader (safetensors itself) sees the same tensors and our metadata.
    loaded = load_file(path)
    assert set(loaded) == (
        {"images", "magnitudes", "redshifts"} if labelled else {"images", "magnitudes"}
    )
    assert torch.equal(loaded["images"], images)
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    assert header["__metadata__"] == {"format": FORMAT_ID, "samples": "6"}


def test_safetensors_read_is_memory_mapped(tmp_path: Path) -> None:
    images, magnitudes, redshifts = tensors()
    path = tmp_path / "p.safetensors"
    write_partition(path, images, magnitudes, redshifts)
    part = read_partition(path)
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    with path.open("r+b") as handle:  # change the file under the open partition
        handle.seek(8 + header_len)
        handle.write(struct.pack("<f", 123.0))
    assert part.images[0, 0, 0, 0].item() == 123.0  # the tensor is a view of the file's pages


def test_pt_reference_round_trip_and_compatibility(tmp_path: Path) -> None:
    images, magnitudes, redshifts = tensors()
    path = tmp_path / "p.pt"
    written = write_partition(path, images, magnitudes, redshifts)
    assert written == path.stat().st_size
    # What the reference loop does with the file: torch.load + DataLoader over 3-tuples.
    dataset = torch.load(path, weights_only=False)
    assert isinstance(dataset, TensorDataset)
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert len(batch) == 3 and batch[0].shape == (4, 5, 32, 32)
    part = read_partition(path)
    assert torch.equal(part.images, images) and torch.equal(part.redshifts, redshifts)


def test_pt_read_is_memory_mapped(tmp_path: Path) -> None:
    images, magnitudes, redshifts = tensors()
    path = tmp_path / "p.pt"
    write_partition(path, images, magnitudes, redshifts)
    part = read_partition(path)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    with path.open("r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", handle.read(4))
        handle.seek(info.header_offset + 30 + name_len + extra_len)
        handle.write(struct.pack("<f", 321.0))
    assert part.images[0, 0, 0, 0].item() == 321.0


def test_pt_write_of_a_slice_does_not_carry_the_whole_storage(tmp_path: Path) -> None:
    images, magnitudes, redshifts = tensors(n=40)
    small, big = tmp_path / "small.pt", tmp_path / "big.pt"
    write_partition(small, images[:4], magnitudes[:4], redshifts[:4])
    write_partition(big, images, magnitudes, redshifts)
    assert small.stat().st_size < big.stat().st_size / 5
    assert torch.equal(read_partition(small).images, images[:4])


@pytest.mark.parametrize(
    "make",
    [
        lambda i, m, z: TensorDataset(i, m),
        lambda i, m, z: (i, m, z),
        lambda i, m, z: [i, m, z],
        lambda i, m, z: {"images": i, "magnitudes": m, "redshifts": z},
        lambda i, m, z: {"images": i, "magnitudes": m},
        lambda i, m, z: TensorDataset(i, m, z.reshape(-1, 1)),
    ],
    ids=["unlabelled", "tuple", "list", "dict", "dict-unlabelled", "redshifts-Nx1"],
)
def test_pt_accepted_layouts(tmp_path: Path, make) -> None:
    images, magnitudes, redshifts = tensors()
    obj = make(images, magnitudes, redshifts)
    path = tmp_path / "p.pt"
    torch.save(obj, path)
    part = read_partition(path)
    assert torch.equal(part.images, images) and torch.equal(part.magnitudes, magnitudes)
    labelled = (len(obj.tensors) if isinstance(obj, TensorDataset) else len(obj)) == 3
    if labelled:
        assert part.redshifts.shape == (6,) and torch.equal(part.redshifts, redshifts)
    else:
        assert part.redshifts is None


# --- the reference's dtypes: float16/32/64, read as float32 ----------------------------------


def pickle_globals(path: Path) -> set[str]:
    """The globals a torch zip file's pickle names ("module name")."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    return {str(arg) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


@pytest.mark.parametrize(
    "dtypes",
    [
        (torch.float32, torch.float64, torch.float64),  # the course's reference files
        (torch.float16, torch.float32, torch.float16),
        (torch.float64, torch.float64, torch.float64),
    ],
    ids=["reference", "float16", "float64"],
)
def test_reference_pt_with_other_float_dtypes_reads_as_float32(tmp_path: Path, dtypes) -> None:
    stored = tuple(t.to(d) for t, d in zip(tensors(), dtypes, strict=True))
    path = tmp_path / "reference.pt"
    torch.save(TensorDataset(*stored), path)
    assert {"torch DoubleStorage", "torch HalfStorage"} & pickle_globals(path)
    part = read_partition(path)  # the default allow-list: no trust_pickle needed
    for got, want in zip((part.images, part.magnitudes, part.redshifts), stored, strict=True):
        assert got.dtype == torch.float32 and torch.equal(got, want.float())
    # Bytes of model input as the file stores them (the reference's 20,520 bytes per sample).
    assert part.input_bytes == stored[0].nbytes + stored[1].nbytes
    if dtypes[:2] == (torch.float32, torch.float64):
        assert part.input_bytes * 8 / len(part) == 164_160


def test_float32_tensors_are_read_without_a_copy(tmp_path: Path) -> None:
    images, magnitudes, redshifts = tensors()
    path = tmp_path / "reference.pt"
    torch.save(TensorDataset(images, magnitudes.double(), redshifts.double()), path)
    part = read_partition(path)
    with zipfile.ZipFile(path) as archive:  # images stay a view of the file's pages
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    with path.open("r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", handle.read(4))
        handle.seek(info.header_offset + 30 + name_len + extra_len)
        handle.write(struct.pack("<f", 321.0))
    assert part.images[0, 0, 0, 0].item() == 321.0


def test_safetensors_with_float64_reads_as_float32(tmp_path: Path) -> None:
    images, magnitudes, redshifts = tensors()
    path = tmp_path / "p.safetensors"
    content = {"images": images.half(), "magnitudes": magnitudes.double(), "redshifts": redshifts}
    save_file(content, path, metadata={"format": FORMAT_ID, "samples": "6"})
    part = read_partition(path)
    assert part.magnitudes.dtype == part.images.dtype == torch.float32
    assert torch.equal(part.magnitudes, magnitudes.double().float())
    assert torch.equal(part.images, images.half().float())


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_writes_convert_to_float32(tmp_path: Path, suffix: str) -> None:
    images, magnitudes, redshifts = tensors()
    path = tmp_path / f"p{suffix}"
    write_partition(path, images.half(), magnitudes.double(), redshifts.double())
    stored = (
        load_file(path)
        if suffix == ".safetensors"
        else torch.load(path, weights_only=False).tensors
    )
    values = stored.values() if isinstance(stored, dict) else stored
    assert {t.dtype for t in values} == {torch.float32}
    part = read_partition(path)
    assert torch.equal(part.images, images.half().float())
    assert torch.equal(part.magnitudes, magnitudes.double().float())


def test_non_finite_images_are_found_across_scan_chunks(tmp_path: Path) -> None:
    images, magnitudes, redshifts = tensors(n=600)
    images = with_value(images, (300, 0, 0, 0), float("inf"))  # a later scan chunk than 0
    images = with_value(images, (599, 4, 31, 31), float("nan"))  # the last element
    path = tmp_path / "p.pt"
    torch.save(TensorDataset(images, magnitudes, redshifts), path)
    with pytest.raises(
        DataFormatError,
        match=r"images contain NaN or inf in 2 sample\(s\), first "
        r"at sample 300; drop or impute",
    ):
        read_partition(path)


def test_messages_name_the_file_by_its_label(tmp_path: Path) -> None:
    """A rank reads a temporary copy; every message names the object it came from."""
    label = "s3://cosmicai-data/parts/part-00003.pt"
    images, magnitudes, redshifts = tensors()
    cases = {
        "int.pt": (TensorDataset(images, magnitudes.long(), redshifts), "magnitudes has dtype"),
        "nan.pt": (
            TensorDataset(images, with_value(magnitudes.double(), (4, 1), float("nan")), redshifts),
            "magnitudes contain NaN or inf .* first at sample 4",
        ),
        "custom.pt": (SubclassedDataset(images, magnitudes, redshifts), "refusing to unpickle"),
    }
    for name, (obj, pattern) in cases.items():
        copy = tmp_path / f"00000-{name}"
        torch.save(obj, copy)
        with pytest.raises(DataFormatError, match=f"^{label}: {pattern}") as err:
            read_partition(copy, name=label)
        assert str(tmp_path) not in str(err.value)
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataFormatError, match=f"^{label}: cannot be loaded"):
        read_partition(tmp_path / "garbage.pt", name=label)
    with pytest.raises(DataFormatError, match=f"^{label}: no such file"):
        read_partition(tmp_path / "absent.pt", name=label)


# --- pickle safety ----------------------------------------------------------------------------


def test_pt_with_foreign_class_is_refused_unless_trusted(tmp_path: Path) -> None:
    images, magnitudes, redshifts = tensors()
    path = tmp_path / "custom.pt"
    torch.save(SubclassedDataset(images, magnitudes, redshifts), path)
    with pytest.raises(DataFormatError) as err:
        read_partition(path)
    message = str(err.value)
    assert str(path) in message and "SubclassedDataset" in message
    assert "trust_pickle=True" in message and "--trust-pickle" in message
    part = read_partition(path, trust_pickle=True)
    assert torch.equal(part.images, images)


def test_pt_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"images": RunsCode(marker)}, path)
    with pytest.raises(DataFormatError, match="refusing to unpickle"):
        read_partition(path)
    assert not marker.exists()


# --- errors -----------------------------------------------------------------------------------


def test_missing_file_unknown_suffix_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"no such file"):
        read_partition(tmp_path / "absent.safetensors")
    (tmp_path / "data.npy").write_bytes(b"x")
    with pytest.raises(DataFormatError, match=r"unsupported suffix '\.npy'.*\.safetensors"):
        read_partition(tmp_path / "data.npy")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(DataFormatError, match="not a regular file"):
        read_partition(tmp_path / "dir.pt")
    with pytest.raises(DataFormatError, match="unsupported suffix"):
        write_partition(tmp_path / "out.h5", *tensors())


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_corrupt_and_truncated_files(tmp_path: Path, suffix: str) -> None:
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(DataFormatError, match="corrupt or truncated") as err:
        read_partition(garbage)
    assert str(garbage) in str(err.value)

    valid = tmp_path / f"valid{suffix}"
    write_partition(valid, *tensors())
    data = valid.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 6):
        truncated = tmp_path / f"cut{cut}{suffix}"
        truncated.write_bytes(data[:cut])
        with pytest.raises(DataFormatError, match="corrupt or truncated"):
            read_partition(truncated)


def bad_inputs() -> list[tuple[str, tuple, str]]:
    images, magnitudes, redshifts = tensors()
    return [
        (
            "3 bands",
            (images[:, :3], magnitudes, redshifts),
            r"images has shape \[6, 3, 32, 32\], expected \[N, 5, 32, 32\]",
        ),
        (
            "64 px",
            (torch.zeros(6, 5, 64, 64), magnitudes, redshifts),
            r"images has shape \[6, 5, 64, 64\]",
        ),
        (
            "int images",
            (images.long(), magnitudes, redshifts),
            r"images has dtype torch\.int64; accepted dtypes are torch\.float16, torch\.float32 "
            r"or torch\.float64 \(read as float32\)",
        ),
        ("int", (images, magnitudes.int(), redshifts), r"magnitudes has dtype torch\.int32; acc"),
        ("bool", (images, magnitudes, redshifts > 0.5), r"redshifts has dtype torch\.bool; acc"),
        (
            "complex",
            (images, magnitudes.to(torch.complex64), redshifts),
            r"magnitudes has dtype torch\.complex64; accepted",
        ),
        (
            "mags 4",
            (images, magnitudes[:, :4], redshifts),
            r"magnitudes has shape \[6, 4\], expected \[N, 5\]",
        ),
        (
            "z 2d",
            (images, magnitudes, redshifts.reshape(2, 3)),
            r"redshifts has shape \[2, 3\], expected \[N\]",
        ),
        ("N", (images, magnitudes[:5], redshifts), r"images has 6 samples but magnitudes has 5"),
        ("N z", (images, magnitudes, redshifts[:4]), r"images has 6 samples but redshifts has 4"),
        (
            "nan",
            (
                images,
                magnitudes.clone().index_fill_(0, torch.tensor([2, 4]), float("nan")),
                redshifts,
            ),
            r"magnitudes contain NaN or inf in 2 sample\(s\), first at sample 2",
        ),
        (
            "inf",
            (images, magnitudes, redshifts.clone().index_fill_(0, torch.tensor([5]), float("inf"))),
            r"redshifts contain NaN or inf in 1 sample\(s\), first at sample 5",
        ),
        (
            "nan image",
            (with_value(images, (3, 2, 10, 7), float("nan")), magnitudes, redshifts),
            r"images contain NaN or inf in 1 sample\(s\), first at sample 3",
        ),
        (
            "beyond float32",
            (images, magnitudes.double().index_fill_(0, torch.tensor([1]), 1e39), redshifts),
            r"magnitudes contain NaN or inf \(or values beyond float32's range\) in 1 sample",
        ),
        (
            "array",
            (images.numpy(), magnitudes, redshifts),
            r"images is a ndarray, expected a torch\.Tensor",
        ),
    ]


@pytest.mark.parametrize("case", bad_inputs(), ids=lambda case: case[0])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_bad_tensors_are_refused_on_write(tmp_path: Path, case, suffix: str) -> None:
    _, args, pattern = case
    path = tmp_path / f"p{suffix}"
    with pytest.raises(DataFormatError, match=pattern) as err:
        write_partition(path, *args)
    assert str(path) in str(err.value)
    assert only_file(tmp_path) == []  # nothing written, no temporary left


@pytest.mark.parametrize("case", bad_inputs()[:-1], ids=lambda case: case[0])
def test_bad_tensors_are_refused_on_read_of_reference_files(tmp_path: Path, case) -> None:
    _, args, pattern = case
    path = tmp_path / "p.pt"
    torch.save(tuple(args), path)
    with pytest.raises(DataFormatError, match=pattern) as err:
        read_partition(path)
    assert str(path) in str(err.value)


def test_foreign_safetensors_files_are_refused(tmp_path: Path) -> None:
    images, magnitudes, redshifts = tensors()
    meta = {"format": FORMAT_ID, "samples": "6"}
    cases = {
        "nometa": ({"images": images, "magnitudes": magnitudes}, None, r"metadata format is None"),
        "version": (
            {"images": images, "magnitudes": magnitudes},
            {"format": "cosmicai-partition/9", "samples": "6"},
            r"expected 'cosmicai-partition/1'",
        ),
        "missing": ({"images": images}, meta, r"missing: \['magnitudes'\]"),
        "extra": (
            {"images": images, "magnitudes": magnitudes, "image": images.clone()},
            meta,
            r"unexpected: \['image'\]",
        ),
        "count": (
            {"images": images, "magnitudes": magnitudes},
            {"format": FORMAT_ID, "samples": "7"},
            r"metadata says 7 samples but images holds 6",
        ),
        "dtype": (
            {"images": images.to(torch.int16), "magnitudes": magnitudes},
            meta,
            r"images has dtype torch\.int16; accepted dtypes",
        ),
        "nan": (
            {
                "images": images,
                "magnitudes": magnitudes,
                "redshifts": redshifts.clone().fill_(float("nan")),
            },
            meta,
            r"redshifts contain NaN or inf in 6",
        ),
    }
    for name, (content, metadata, pattern) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(content, path, metadata=metadata)
        with pytest.raises(DataFormatError, match=pattern):
            read_partition(path)


# --- atomicity and streaming ------------------------------------------------------------------


def test_write_is_atomic_when_saving_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.pt"
    write_partition(path, *tensors(seed=1))
    before = path.read_bytes()

    def crash(obj: object, handle) -> None:
        handle.write(b"half a partition")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_partition(path, *tensors(seed=2))
    assert path.read_bytes() == before
    assert only_file(tmp_path) == ["p.pt"]


def test_streaming_writer_matches_one_shot_write(tmp_path: Path) -> None:
    images, magnitudes, redshifts = tensors(n=10)
    one_shot = tmp_path / "one.safetensors"
    write_partition(one_shot, images, magnitudes, redshifts)
    streamed = tmp_path / "streamed.safetensors"
    with PartitionWriter(streamed, 10) as writer:
        for start, stop in ((0, 3), (3, 4), (4, 10)):
            writer.write(images[start:stop], magnitudes[start:stop], redshifts[start:stop])
    assert streamed.read_bytes() == one_shot.read_bytes()


def test_streaming_writer_publishes_nothing_on_error(tmp_path: Path) -> None:
    images, magnitudes, redshifts = tensors(n=10)
    path = tmp_path / "p.safetensors"
    with pytest.raises(ValueError, match="only 4 of 10"), PartitionWriter(path, 10) as writer:
        writer.write(images[:4], magnitudes[:4], redshifts[:4])
    too_many = pytest.raises(ValueError, match="11 samples written, 10 declared")
    with too_many, PartitionWriter(path, 10) as writer:
        writer.write(images, magnitudes, redshifts)
        writer.write(images[:1], magnitudes[:1], redshifts[:1])
    mixed = pytest.raises(DataFormatError, match="give redshifts for every chunk or none")
    with mixed, PartitionWriter(path, 10) as writer:
        writer.write(images, magnitudes)
    assert only_file(tmp_path) == []


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_empty_partition_round_trip(tmp_path: Path, suffix: str) -> None:
    images, magnitudes, redshifts = tensors(n=0)
    path = tmp_path / f"empty{suffix}"
    write_partition(path, images, magnitudes, redshifts)
    part = read_partition(path)
    assert len(part) == 0 and part.redshifts.shape == (0,)
