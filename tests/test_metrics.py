"""Redshift metrics against hand-computed cases and an independent numpy computation."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pytest

from cosmicai.inference.metrics import redshift_metrics

KEYS = {"samples", "mae", "mse", "bias", "precision_nmad", "r2", "outlier_fraction"}


def test_hand_computed_case() -> None:
    # errors 0.1, -0.5, 0; dz = 0.1, -0.25, 0; mean(y) = 4/3, SStot = 42/9, SSres = 0.26
    m = redshift_metrics([0.1, 0.5, 3.0], [0.0, 1.0, 3.0])
    assert set(m) == KEYS
    assert m["samples"] == 3 and isinstance(m["samples"], int)
    assert m["mae"] == pytest.approx(0.2)
    assert m["mse"] == pytest.approx(0.26 / 3)
    assert m["bias"] == pytest.approx(-0.05)
    assert m["precision_nmad"] == pytest.approx(1.48 * 0.1)
    assert m["r2"] == pytest.approx(1 - 0.26 * 9 / 42)
    assert m["outlier_fraction"] == pytest.approx(1 / 3)


def test_outlier_threshold_is_strict() -> None:
    # dz = 0.15 exactly is not an outlier; 0.2 is
    assert redshift_metrics([0.15], [0.0])["outlier_fraction"] == 0.0
    assert redshift_metrics([0.15, 0.2], [0.0, 0.0])["outlier_fraction"] == 0.5


def test_perfect_predictions() -> None:
    y = [0.05, 0.3, 0.7, 1.2]
    m = redshift_metrics(y, y)
    assert m == {
        "samples": 4,
        "mae": 0.0,
        "mse": 0.0,
        "bias": 0.0,
        "precision_nmad": 0.0,
        "r2": 1.0,
        "outlier_fraction": 0.0,
    }


def test_r2_with_constant_truth_is_finite() -> None:
    assert redshift_metrics([0.5, 0.5], [0.5, 0.5])["r2"] == 1.0
    assert redshift_metrics([0.4, 0.6], [0.5, 0.5])["r2"] == 0.0
    assert redshift_metrics([0.4], [0.5])["r2"] == 0.0


def test_even_count_median_and_integer_inputs() -> None:
    # |dz| = 1, 0, 0.5, 0.25 -> median 0.375
    m = redshift_metrics([1, 1, 2, 1.5], [0, 1, 1, 1])
    assert m["precision_nmad"] == pytest.approx(1.48 * 0.375)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_numpy(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 500)
    y = [rng.uniform(0.0, 3.0) for _ in range(n)]
    y_hat = [t + rng.gauss(0.0, 0.2) for t in y]
    m = redshift_metrics(y_hat, y)

    yt, yp = np.asarray(y), np.asarray(y_hat)
    dz = (yp - yt) / (1 + yt)
    ss_tot = np.sum((yt - yt.mean()) ** 2)
    expected = {
        "mae": np.mean(np.abs(yp - yt)),
        "mse": np.mean((yp - yt) ** 2),
        "bias": np.mean(dz),
        "precision_nmad": 1.48 * np.median(np.abs(dz)),
        "r2": 1 - np.sum((yt - yp) ** 2) / ss_tot if ss_tot > 0 else 0.0,
        "outlier_fraction": np.mean(np.abs(dz) > 0.15),
    }
    assert m["samples"] == n
    for key, value in expected.items():
        assert m[key] == pytest.approx(float(value), rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize(
    ("predicted", "true", "message"),
    [
        ([], [], "at least one sample"),
        ([0.1, 0.2], [0.1], "2 predicted and 1 true"),
        ([0.1], [-1.0], "index 0 is <= -1"),
        ([0.1, math.nan], [0.1, 0.2], "predicted redshift at index 1 is nan"),
        ([0.1, 0.2], [math.inf, 0.2], "true redshift at index 0 is inf"),
    ],
)
def test_invalid_input(predicted: list[float], true: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        redshift_metrics(predicted, true)


def test_imports_neither_numpy_nor_torch() -> None:
    code = (
        "import sys, cosmicai.inference.metrics as m; m.redshift_metrics([0.1], [0.2]); "
        "print(sorted({'numpy', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
