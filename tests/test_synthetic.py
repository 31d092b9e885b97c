"""The synthetic galaxy dataset: shapes, determinism, realism, learnability, and make-data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmicai.cli.main import main
from cosmicai.errors import DataFormatError
from cosmicai.inference.partition_io import read_partition
from cosmicai.inference.synthetic import iter_chunks, make_data


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory):
    path = make_data(3000, tmp_path_factory.mktemp("synthetic") / "d.safetensors", seed=7)
    return read_partition(path)


def test_shapes_and_dtypes(sample) -> None:
    assert len(sample) == 3000
    assert sample.images.shape == (3000, 5, 32, 32) and sample.images.dtype == torch.float32
    assert sample.magnitudes.shape == (3000, 5) and sample.magnitudes.dtype == torch.float32
    assert sample.redshifts.shape == (3000,) and sample.redshifts.dtype == torch.float32
    assert torch.isfinite(sample.images).all()


def test_same_seed_gives_identical_files_and_formats_agree(tmp_path: Path) -> None:
    first = make_data(50, tmp_path / "a.safetensors", seed=3, chunk=16)
    second = make_data(50, tmp_path / "b.safetensors", seed=3, chunk=16)
    other = make_data(50, tmp_path / "c.safetensors", seed=4, chunk=16)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    reference = read_partition(make_data(50, tmp_path / "a.pt", seed=3, chunk=16))
    ours = read_partition(first)
    for name in ("images", "magnitudes", "redshifts"):
        assert torch.equal(getattr(reference, name), getattr(ours, name))


def test_chunks_bound_the_work_in_flight() -> None:
    sizes = [len(images) for images, _, _ in iter_chunks(10, seed=0, chunk=4)]
    assert sizes == [4, 4, 2]


def test_redshift_distribution_is_sdss_like(sample) -> None:
    z = sample.redshifts.numpy()
    assert z.min() >= 0.01 and z.max() <= 0.8
    assert 0.1 <= np.median(z) <= 0.25
    assert np.mean((z >= 0.02) & (z <= 0.6)) > 0.95
    counts, edges = np.histogram(z, bins=16, range=(0, 0.8))
    assert 0.05 <= edges[np.argmax(counts)] <= 0.2  # the peak sits in 0.05-0.25


def test_magnitudes_are_realistic_and_match_the_stamps(sample) -> None:
    mags = sample.magnitudes.numpy().astype(np.float64)
    r = mags[:, 2]
    assert r.min() > 13.5 and r.max() < 23.5
    assert np.percentile(mags, 1) > 13 and np.percentile(mags, 99) < 26
    # Colours redden with redshift: g-r correlates strongly with z.
    z = sample.redshifts.numpy()
    assert np.corrcoef(mags[:, 1] - mags[:, 2], z)[0, 1] > 0.6
    # The stamp's total flux (nanomaggies, zero point 22.5) agrees with the catalogue magnitude
    # for galaxies well above the sky noise.
    flux = sample.images.numpy().astype(np.float64).sum(axis=(2, 3))
    bright = r < 18
    stamp_mag = 22.5 - 2.5 * np.log10(flux[bright, 2])
    assert bright.sum() > 100
    assert np.median(np.abs(stamp_mag - r[bright])) < 0.05


def test_galaxies_are_centred_extended_and_noisy(sample) -> None:
    images = sample.images.numpy().astype(np.float64)
    r_band = images[:, 2]
    centre = r_band[:, 12:20, 12:20].mean(axis=(1, 2))
    corner = r_band[:, :4, :4].mean(axis=(1, 2))
    assert np.mean(centre > corner) > 0.95
    light = np.clip(r_band, 0, None)
    grid = np.arange(32)
    x = (light.sum(axis=1) * grid).sum(axis=1) / light.sum(axis=(1, 2))
    y = (light.sum(axis=2) * grid).sum(axis=1) / light.sum(axis=(1, 2))
    assert abs(np.median(x) - 15.5) < 1 and abs(np.median(y) - 15.5) < 1
    # Sky noise: corner pixels of faint galaxies scatter around zero, noisiest in u and z.
    corners = images[:, :, :3, :3].reshape(len(images), 5, -1)
    spread = corners.std(axis=(0, 2))
    assert spread.min() > 0.01 and spread[0] > spread[2] and spread[4] > spread[2]


def test_colour_redshift_relation_is_learnable(sample) -> None:
    mags = sample.magnitudes.numpy().astype(np.float64)
    z = sample.redshifts.numpy().astype(np.float64)
    features = np.column_stack([np.ones(len(z)), mags[:, :-1] - mags[:, 1:]])  # 4 colours
    train, test = slice(0, 2000), slice(2000, None)
    coef, *_ = np.linalg.lstsq(features[train], z[train], rcond=None)
    residual = z[test] - features[test] @ coef
    r2 = 1 - np.sum(residual**2) / np.sum((z[test] - z[test].mean()) ** 2)
    assert r2 > 0.5


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="unsupported suffix"):
        make_data(10, tmp_path / "d.csv")
    with pytest.raises(ValueError, match="samples and chunk must be >= 1"):
        make_data(0, tmp_path / "d.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_cli_make_data_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.safetensors"
    assert main(["make-data", "--samples", "12", "--out", str(out), "--seed", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"path": str(out), "samples": 12, "bytes": out.stat().st_size, "seed": 5}
    assert len(read_partition(out)) == 12
    assert main(["make-data", "--samples", "3", "--out", str(tmp_path / "d.pt")]) == 0
    assert "wrote 3 samples" in capsys.readouterr().out


def test_cli_make_data_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:  # refused while parsing
        main(["make-data", "--samples", "0", "--out", str(tmp_path / "d.pt")])
    assert exited.value.code == 2
    assert "--samples: '0' is not a whole number of at least 1" in capsys.readouterr().err
    assert main(["make-data", "--samples", "5", "--out", str(tmp_path / "d.txt")]) != 0
    err = capsys.readouterr().err
    assert "unsupported suffix" in err and "Traceback" not in err
