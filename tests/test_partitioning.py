"""Partitioning into fixed-size files, the manifest, verification, and `cosmicai partition`."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from cosmicai.cli.main import main
from cosmicai.errors import CosmicAIError, DataFormatError
from cosmicai.inference import partitioning
from cosmicai.inference.partition_io import SAMPLE_BYTES, read_partition, write_partition
from cosmicai.inference.partitioning import (
    Manifest,
    parse_size_mb,
    partition,
    plan_segments,
    samples_per_file,
    verify_manifest,
)


def dataset(n: int, seed: int = 0, labelled: bool = True):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 5, 32, 32, generator=gen)
    magnitudes = 18 + torch.randn(n, 5, generator=gen)
    redshifts = torch.rand(n, generator=gen) if labelled else None
    return images, magnitudes, redshifts


def concatenated(directory: Path, manifest: Manifest):
    parts = [read_partition(directory / entry.file) for entry in manifest.files]
    redshifts = [p.redshifts for p in parts]
    return (
        torch.cat([p.images for p in parts]),
        torch.cat([p.magnitudes for p in parts]),
        None if redshifts[0] is None else torch.cat(redshifts),
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "all.safetensors"
    write_partition(path, *dataset(100))
    return path


def test_sizes_order_and_manifest(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "parts"
    size_mb = 0.5
    manifest = partition(source, out, size_mb=size_mb)
    per_file = math.floor(size_mb * 2**20 / SAMPLE_BYTES)
    assert per_file == 25 and manifest.samples_per_file == per_file
    assert [entry.samples for entry in manifest.files] == [25, 25, 25, 25]
    assert [entry.file for entry in manifest.files] == [
        f"part-0000{i}.safetensors" for i in range(4)
    ]
    assert manifest.samples == 100 and manifest.labelled and manifest.size_mb == 0.5

    images, magnitudes, redshifts = concatenated(out, manifest)
    original = read_partition(source)
    assert torch.equal(images, original.images)
    assert torch.equal(magnitudes, original.magnitudes)
    assert torch.equal(redshifts, original.redshifts)

    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest.to_dict() and on_disk["format"] == "cosmicai-partition/1"
    for entry in on_disk["files"]:
        data = (out / entry["file"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert Manifest.load(out) == manifest == Manifest.load(out / "manifest.json")
    assert verify_manifest(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + [
        e.file for e in manifest.files
    ]


def test_last_file_holds_the_remainder(tmp_path: Path) -> None:
    src = tmp_path / "d.pt"  # the reference format as a source
    write_partition(src, *dataset(57))
    manifest = partition(src, tmp_path / "out", size_mb=0.4, stem="chunk")
    per_file = math.floor(0.4 * 2**20 / SAMPLE_BYTES)
    full, rest = divmod(57, per_file)
    assert [e.samples for e in manifest.files] == [per_file] * full + [rest]
    assert manifest.files[0].file == "chunk-00000.safetensors"
    assert torch.equal(concatenated(tmp_path / "out", manifest)[0], read_partition(src).images)


def test_exact_sample_multiple_is_not_lost_to_rounding() -> None:
    for count in (1, 3, 5113, 12345):
        assert samples_per_file(count * SAMPLE_BYTES / 2**20) == count
    assert samples_per_file(100) == 5114  # 100 * 2**20 // 20504; the reference's "~5,120"


def test_repartitioning_a_directory(tmp_path: Path, source: Path) -> None:
    first = tmp_path / "first"
    partition(source, first, size_mb=0.3)
    (first / "notes.txt").write_text("ignored: not a partition file")
    second = tmp_path / "second"
    manifest = partition(first, second, size_mb=0.7)
    per_file = math.floor(0.7 * 2**20 / SAMPLE_BYTES)
    assert [e.samples for e in manifest.files] == [per_file] * (100 // per_file) + [100 % per_file]
    assert torch.equal(concatenated(second, manifest)[0], read_partition(source).images)


def test_directory_sources_are_read_in_name_order(tmp_path: Path) -> None:
    images, magnitudes, redshifts = dataset(30)
    src = tmp_path / "src"
    # Written out of order and in both formats; names decide the order.
    write_partition(src / "b.pt", images[10:20], magnitudes[10:20], redshifts[10:20])
    write_partition(src / "c.safetensors", images[20:], magnitudes[20:], redshifts[20:])
    write_partition(src / "a.safetensors", images[:10], magnitudes[:10], redshifts[:10])
    manifest = partition(src, tmp_path / "out", size_mb=0.25)
    got_images, got_mags, got_z = concatenated(tmp_path / "out", manifest)
    assert torch.equal(got_images, images) and torch.equal(got_mags, magnitudes)
    assert torch.equal(got_z, redshifts)


def test_unlabelled_data(tmp_path: Path) -> None:
    src = tmp_path / "u.safetensors"
    write_partition(src, *dataset(20, labelled=False))
    manifest = partition(src, tmp_path / "out", size_mb=0.2)
    assert not manifest.labelled
    assert concatenated(tmp_path / "out", manifest)[2] is None


def test_plan_segments() -> None:
    assert plan_segments([5], 2) == [[(0, 0, 2)], [(0, 2, 4)], [(0, 4, 5)]]
    assert plan_segments([3, 0, 4], 5) == [[(0, 0, 3), (2, 0, 2)], [(2, 2, 4)]]
    assert plan_segments([2, 2], 2) == [[(0, 0, 2)], [(1, 0, 2)]]


def test_verify_manifest_finds_problems(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "out"
    manifest = partition(source, out, size_mb=0.5)
    first, second, third = (out / e.file for e in manifest.files[:3])
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))  # same size, different content
    second.unlink()
    third.write_bytes(third.read_bytes()[:-8])
    write_partition(out / "stray.safetensors", *dataset(1))
    problems = verify_manifest(out)
    assert problems == [
        "part-00000.safetensors: sha256 differs from the manifest (file altered)",
        "part-00001.safetensors: missing",
        f"part-00002.safetensors: {manifest.files[2].bytes - 8} bytes, manifest says "
        f"{manifest.files[2].bytes}",
        "stray.safetensors: not listed in the manifest (it would be read as data too)",
    ]


def test_verify_manifest_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no manifest"):
        verify_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "cosmicai-partition/1"}')
    with pytest.raises(DataFormatError, match="lacks the key 'size_mb'"):
        verify_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="unreadable manifest"):
        verify_manifest(tmp_path)


def test_bad_inputs(tmp_path: Path, source: Path) -> None:
    with pytest.raises(CosmicAIError, match=r"smaller than one sample \(20504 bytes"):
        partition(source, tmp_path / "o", size_mb=0.01)
    for size in (0, -1, float("nan")):
        with pytest.raises(CosmicAIError, match="positive number of MiB"):
            partition(source, tmp_path / "o", size_mb=size)
    with pytest.raises(DataFormatError, match="no such file or directory"):
        partition(tmp_path / "absent.safetensors", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="holds no partition files"):
        partition(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(CosmicAIError, match="invalid stem"):
        partition(source, tmp_path / "o", stem="../x")
    # A source file inside the output directory would be re-read as data: refused.
    with pytest.raises(CosmicAIError, match=r"already holds partition files \(all\.safetensors\)"):
        partition(source, tmp_path)
    assert not (tmp_path / "o").exists()


def test_source_without_samples(tmp_path: Path) -> None:
    images, magnitudes, redshifts = dataset(0)
    write_partition(tmp_path / "empty.safetensors", images, magnitudes, redshifts)
    with pytest.raises(DataFormatError, match="holds no samples"):
        partition(tmp_path / "empty.safetensors", tmp_path / "out")


def test_mixed_labelled_and_unlabelled_sources(tmp_path: Path) -> None:
    write_partition(tmp_path / "src" / "a.safetensors", *dataset(3))
    write_partition(tmp_path / "src" / "b.safetensors", *dataset(3, labelled=False))
    with pytest.raises(DataFormatError, match=r"has redshifts but .*b\.safetensors does not"):
        partition(tmp_path / "src", tmp_path / "out")


def test_failure_midway_leaves_nothing(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_sha = partitioning.file_sha256

    def failing_sha(path: Path) -> str:
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk went away")
        return real_sha(path)

    monkeypatch.setattr(partitioning, "file_sha256", failing_sha)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk went away"):
        partition(source, out, size_mb=0.5)
    assert list(out.iterdir()) == []  # the third file is there only as a temp: none remain


def test_parse_size_mb() -> None:
    assert parse_size_mb("25MB") == 25
    assert parse_size_mb("25") == 25
    assert parse_size_mb("0.5MB") == 0.5
    assert parse_size_mb(" 100 mib ") == 100
    assert parse_size_mb("512KB") == 0.5
    assert parse_size_mb("1GB") == 1024
    for bad in ("", "MB", "25TB", "-5MB", "25 MB extra", "1e3"):
        with pytest.raises(CosmicAIError, match="invalid size"):
            parse_size_mb(bad)


def test_cli_partition(tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "parts"
    assert main(["partition", str(source), "--size", "0.5MB", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["out"] == str(out) and report["manifest"] == f"{out}/manifest.json"
    assert report["samples"] == 100 and len(report["files"]) == 4
    assert Manifest.load(out).to_dict() == {
        k: v for k, v in report.items() if k not in ("out", "manifest")
    }
    assert main(["partition", str(out), "--size", "1", "--out", str(tmp_path / "again")]) == 0
    assert "wrote 2 partition files (100 samples, 51 per full file" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message", "code"),
    [
        (["--size", "25 parsecs"], "invalid size '25 parsecs'", 1),
        (["--size", "0.001MB"], "smaller than one sample", 1),
        (["--out", "s3://bucket-only"], "must look like s3://bucket/key", 2),  # a bad location
    ],
)
def test_cli_partition_errors(
    tmp_path: Path, source: Path, capsys: pytest.CaptureFixture[str], argv, message, code
) -> None:
    args = {"--size": "1MB", "--out": str(tmp_path / "o")}
    args.update(zip(argv[::2], argv[1::2], strict=True))
    assert main(["partition", str(source), *[x for kv in args.items() for x in kv]]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_partition_to_local_store(
    tmp_path: Path,
    source: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COSMICAI_HOME", str(tmp_path / "home"))
    assert main(["partition", str(source), "--size", "1MB", "--out", "s3://data/p/1MB"]) == 0
    stored = tmp_path / "home" / "s3" / "data" / "p" / "1MB"
    assert Manifest.load(stored).samples == 100
    assert verify_manifest(stored) == []
    assert "s3://data/p/1MB" in capsys.readouterr().out


def test_cli_partition_missing_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["partition", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code != 0 and "nope.pt: no such file or directory" in err and "Traceback" not in err


def test_cli_partition_of_a_float64_reference_file_writes_float32(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, magnitudes, redshifts = dataset(60)
    source = tmp_path / "reference.pt"  # the course's files: float64 magnitudes and redshifts
    torch.save(TensorDataset(images, magnitudes.double(), redshifts.double()), source)
    out = tmp_path / "parts"
    assert main(["partition", str(source), "--size", "0.5MB", "--out", str(out)]) == 0
    manifest = Manifest.load(out)
    assert [entry.samples for entry in manifest.files] == [25, 25, 10]
    for entry in manifest.files:
        assert {t.dtype for t in load_file(out / entry.file).values()} == {torch.float32}
        assert entry.bytes == (out / entry.file).stat().st_size
    got = concatenated(out, manifest)
    assert torch.equal(got[0], images)
    assert torch.equal(got[1], magnitudes.double().float())
    assert torch.equal(got[2], redshifts.double().float())
    assert verify_manifest(out) == []


def test_cli_partition_refuses_int_and_nan_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, magnitudes, redshifts = dataset(8)
    bad_magnitudes = magnitudes.double()
    bad_magnitudes[5, 2] = float("nan")
    cases = {
        "int.pt": (
            (images, magnitudes.long(), redshifts),
            "magnitudes has dtype torch.int64; accepted dtypes are torch.float16, "
            "torch.float32 or torch.float64",
        ),
        "nan.pt": (
            (images, bad_magnitudes, redshifts),
            "magnitudes contain NaN or inf (or values beyond float32's range) in 1 sample(s), "
            "first at sample 5",
        ),
    }
    for name, (tensors, message) in cases.items():
        source = tmp_path / name
        torch.save(TensorDataset(*tensors), source)
        out = tmp_path / f"out-{name}"
        assert main(["partition", str(source), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"{source}: {message}" in err and "Traceback" not in err
        assert not out.exists() or list(out.iterdir()) == []
