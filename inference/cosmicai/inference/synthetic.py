"""A synthetic, labelled, deterministic SDSS-like galaxy dataset for demos, tests and benchmarks.

Each sample is drawn in this order (one numpy Generator per chunk, seeded with (seed, chunk
index), so the same seed and chunk size give a bit-identical file):

* redshift: a mixture of a main sample, p(z) ∝ z² exp(-(z/0.1)^1.5) (peak near 0.12), and a
  luminous-red-galaxy bump around 0.33, clipped to [0.01, 0.8];
* galaxy type t in [0, 1] (0 early/red, 1 late/blue), which sets the Sersic index (4 -> 1),
  rest-frame colours and size;
* observed colours u-g, g-r, r-i, i-z that redden with z (the 4000 Å break moving through the
  bands) plus intrinsic scatter: the learnable colour-redshift relation;
* r magnitude from an absolute magnitude and the distance modulus (low-z expansion of the
  luminosity distance, H0 = 70, q0 = -0.55), kept within 14 <= r <= 22.5 like a flux-limited
  survey; the other bands follow from the colours;
* an elliptical Sersic profile (random effective radius shrinking with angular-diameter
  distance, axis ratio, angle, centre jitter, softened by a ~1.4" seeing core), normalised on
  the 32x32 stamp so that the noiseless stamp of band b sums to 10^(-0.4 (m_b - 22.5))
  nanomaggies; then Gaussian sky noise per band;
* catalogue magnitudes: the true ones plus noise that grows towards the faint end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from cosmicai.inference.partition_io import (
    BANDS,
    IMAGE_SIZE,
    PartitionWriter,
    check_suffix,
    write_partition,
)

_ZERO_POINT = 22.5  # nanomaggies
_PIXEL_ARCSEC = 0.396
_PSF_SIGMA_PX = 1.4 / 2.355 / _PIXEL_ARCSEC
_SKY_SIGMA = np.array([0.08, 0.03, 0.03, 0.045, 0.15], dtype=np.float32)  # nmgy/pixel, ugriz
_HUBBLE_DISTANCE_MPC = 299_792.458 / 70.0
_Q0 = -0.55
_R_LIMITS = (14.0, 22.5)
_RADIANS_TO_ARCSEC = 206_264.8

Chunk = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _redshifts(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Redshifts and galaxy types (0 early .. 1 late)."""
    main = 0.1 * rng.gamma(2.0, size=n) ** (1 / 1.5)  # p(z) ∝ z^2 exp(-(z/0.1)^1.5)
    red = rng.normal(0.33, 0.09, size=n)
    is_red = rng.random(n) < 0.15
    z = np.clip(np.where(is_red, red, main), 0.01, 0.8)
    kind = np.where(is_red, 0.25 * rng.random(n), rng.random(n))
    return z, kind


def _distances_mpc(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Luminosity and angular-diameter distances (second-order expansion in z)."""
    luminosity = _HUBBLE_DISTANCE_MPC * z * (1 + 0.5 * (1 - _Q0) * z)
    return luminosity, luminosity / (1 + z) ** 2


def _true_magnitudes(
    rng: np.random.Generator, z: np.ndarray, kind: np.ndarray, modulus: np.ndarray
) -> np.ndarray:
    """Noiseless u, g, r, i, z magnitudes, shape [n, 5]."""
    n = len(z)
    redness = 1 - kind
    u_g = 0.9 + 0.7 * redness + 1.2 * z
    g_r = 0.3 + 0.5 * redness + 2.6 * z - 1.5 * np.maximum(z - 0.4, 0)
    r_i = 0.2 + 0.2 * redness + 0.5 * z + 1.5 * np.maximum(z - 0.3, 0)
    i_z = 0.1 + 0.12 * redness + 0.6 * z
    colours = np.stack([u_g, g_r, r_i, i_z], axis=1) + rng.normal(0, 0.04, size=(n, 4))
    low, high = _R_LIMITS[0] - modulus, _R_LIMITS[1] - modulus
    absolute = rng.normal(-21.0 - 0.4 * redness, 0.9)
    for _ in range(64):  # truncated normal by resampling; a rare leftover is clipped below
        outside = (absolute < low) | (absolute > high)
        if not outside.any():
            break
        absolute[outside] = rng.normal(-21.0 - 0.4 * redness[outside], 0.9)
    r = np.clip(absolute + modulus, *_R_LIMITS)
    g = r + colours[:, 1]
    i = r - colours[:, 2]
    return np.stack([g + colours[:, 0], g, r, i, i - colours[:, 3]], axis=1)


def _profiles(rng: np.random.Generator, kind: np.ndarray, diameter_mpc: np.ndarray) -> np.ndarray:
    """Sersic light profiles normalised to unit sum on the stamp, [n, 32, 32] float32."""
    n = len(kind)
    sersic = (1 + 3 * (1 - kind) ** 2)[:, None, None]
    b_n = 2 * sersic - 1 / 3 + 0.009876 / sersic
    radius_kpc = np.exp(rng.normal(np.log(3.0 + 2.0 * kind), 0.55))
    radius_px = radius_kpc / (diameter_mpc * 1000) * _RADIANS_TO_ARCSEC / _PIXEL_ARCSEC
    radius_px = np.clip(radius_px, 0.5, 10.0)[:, None, None]
    axis_ratio = (1 - rng.random(n) * (0.4 + 0.35 * kind))[:, None, None]
    angle = rng.uniform(0, np.pi, size=n)[:, None, None]
    centre = (IMAGE_SIZE - 1) / 2 + rng.normal(0, 0.7, size=(2, n, 1, 1))
    grid = np.arange(IMAGE_SIZE, dtype=np.float32)
    dx = grid[None, None, :] - centre[0].astype(np.float32)
    dy = grid[None, :, None] - centre[1].astype(np.float32)
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    along = dx * cos + dy * sin
    across = (dy * cos - dx * sin) / axis_ratio.astype(np.float32)
    scaled = np.sqrt(along**2 + across**2 + np.float32(_PSF_SIGMA_PX**2))
    scaled /= radius_px.astype(np.float32)
    profile = np.exp(-b_n.astype(np.float32) * (scaled ** (1 / sersic).astype(np.float32) - 1))
    total = profile.sum(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
    normalised: np.ndarray = profile / total
    return normalised


def _chunk(seed: int, index: int, n: int) -> Chunk:
    rng = np.random.default_rng([seed, index])
    z, kind = _redshifts(rng, n)
    luminosity, diameter = _distances_mpc(z)
    modulus = 5 * np.log10(luminosity * 1e5)  # 5 log10(d_L / 10 pc), d_L in Mpc
    magnitudes = _true_magnitudes(rng, z, kind, modulus)
    flux = (10 ** (-0.4 * (magnitudes - _ZERO_POINT))).astype(np.float32)
    images = flux[:, :, None, None] * _profiles(rng, kind, diameter)[:, None]
    noise = rng.standard_normal((n, BANDS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    images += noise * _SKY_SIGMA[None, :, None, None]
    sigma = np.minimum(0.02 + 0.1 * 10 ** (0.4 * (magnitudes - _R_LIMITS[1])), 0.3)
    observed = magnitudes + sigma * rng.standard_normal(magnitudes.shape)
    return (
        torch.from_numpy(images),
        torch.from_numpy(observed.astype(np.float32)),
        torch.from_numpy(z.astype(np.float32)),
    )


def iter_chunks(samples: int, *, seed: int = 0, chunk: int = 4096) -> Iterator[Chunk]:
    """Yield (images, magnitudes, redshifts) chunks of at most `chunk` samples, `samples` total."""
    if samples < 1 or chunk < 1:
        raise ValueError(f"samples and chunk must be >= 1, got {samples} and {chunk}")
    for index, start in enumerate(range(0, samples, chunk)):
        yield _chunk(seed, index, min(chunk, samples - start))


def make_data(samples: int, out: str | Path, *, seed: int = 0, chunk: int = 4096) -> Path:
    """Write `samples` synthetic labelled galaxies to `out` (.safetensors or .pt); return it.

    ``.safetensors`` is streamed chunk by chunk (memory bounded by `chunk`); the reference
    ``.pt`` format is one pickle, so its tensors are gathered before writing.
    """
    out = Path(out)
    check_suffix(out)
    chunks = iter_chunks(samples, seed=seed, chunk=chunk)
    if out.suffix == ".pt":
        write_partition(out, *(torch.cat(parts) for parts in zip(*chunks, strict=True)))
        return out
    with PartitionWriter(out, samples) as writer:
        for images, magnitudes, redshifts in chunks:
            writer.write(images, magnitudes, redshifts)
    return out
