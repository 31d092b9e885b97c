"""`cosmicai bench cost` end to end (tiny model, a 0.5 MB partition) and its Lambda cost model."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from cosmicai.bench_cost import (
    available_backends,
    choose_memory,
    lambda_vcpus,
    model_lambda,
    resolve_backends,
)
from cosmicai.cli.bench import cost_report
from cosmicai.cli.main import main
from cosmicai.cost import PACKAGED_PRICES, CostError, load_prices
from cosmicai.errors import CosmicAIError
from cosmicai.inference.partitioning import samples_per_file

SIDE_KEYS = {
    "init_s", "download_s", "compute_s", "total_s", "samples", "threads", "vcpus", "memory_mb",
    "peak_rss_mb", "usd_per_million_samples", "lambda", "memory_choice", "memory_fits",
}  # fmt: skip
PRICES = json.loads(Path(PACKAGED_PRICES).read_text())["lambda"]


def _bench(tmp_path: Path, *flags: str) -> tuple[str, dict[str, Any]]:
    """Run the CLI once (stdout captured by hand: module-scoped fixtures cannot use capsys);
    returns what it printed and the JSON it saved."""
    out = tmp_path / "cost.json"
    argv = ["bench", "cost", "--partition-mb", "0.5", "--model-size", "tiny", "--out", str(out)]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*argv, *flags])
    assert code == 0, stderr.getvalue()
    return stdout.getvalue(), json.loads(out.read_text())


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    return _bench(tmp_path_factory.mktemp("cost"), "--json")


@pytest.fixture(scope="module")
def given_memory_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    return _bench(
        tmp_path_factory.mktemp("cost"), "--memory-mb", "3538", "--arch", "arm64",
        "--backend", "torch",
    )  # fmt: skip


def _sides(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [result["reference"], *result["ours_by_backend"].values()]


def test_json_has_every_key_and_each_side_ran(default_run: tuple[str, dict]) -> None:
    printed, saved = json.loads(default_run[0]), default_run[1]
    assert printed == saved
    assert printed["benchmark"] == "cost"
    assert printed["samples"] == samples_per_file(0.5)
    assert set(printed["ours_by_backend"]) == set(available_backends())
    for side in _sides(printed):
        assert set(side) >= SIDE_KEYS
        assert side["samples"] == printed["samples"]
        assert side["init_s"] > 0 and side["compute_s"] > 0 and side["download_s"] >= 0
        assert side["total_s"] == pytest.approx(
            side["init_s"] + side["download_s"] + side["compute_s"]
        )
        assert side["threads"] >= 1 and side["peak_rss_mb"] > 0
    for name, side in printed["ours_by_backend"].items():
        assert side["backend"] == name
        assert side["result_key"].endswith("/ranks/00000.json")
        assert side["predictions_max_abs_diff"] < 1e-4  # same data, same weights
    assert printed["machine"]["cores"] >= 1 and len(printed["machine"]["load_average"]) == 3
    assert printed["assumptions"] and all(isinstance(a, str) for a in printed["assumptions"])


def test_ours_is_the_cheapest_backend_and_the_ratio_and_targets_follow(
    default_run: tuple[str, dict],
) -> None:
    result = default_run[1]
    by_backend = result["ours_by_backend"]
    cheapest = min(by_backend, key=lambda name: by_backend[name]["usd_per_million_samples"])
    assert result["recommended_backend"] == cheapest
    assert result["ours"] == by_backend[cheapest]
    ratio = (
        result["ours"]["usd_per_million_samples"] / result["reference"]["usd_per_million_samples"]
    )
    assert result["cost_ratio"] == pytest.approx(ratio)
    targets = result["targets"]
    assert targets["cost_ratio_max"] == 0.5
    assert targets["cost_ratio_met"] is (ratio <= 0.5)
    assert targets["met"] is (ratio <= 0.5 and result["ours"]["memory_fits"])


def _expected_usd(side: dict[str, Any], arch: str) -> float:
    """One cold invocation's price, from the components and prices.json, by hand."""
    memory = side["memory_mb"]
    vcpus = 6.0 if memory == 10240 else memory / 1769
    billed_s = side["init_s"] + side["download_s"] + side["compute_s"] * side["threads"] / vcpus
    billed = math.ceil(round(billed_s * 1000, 6)) / 1000
    storage_gb = max(0, side["ephemeral_mb"] - 512) / 1024
    return (
        billed * memory / 1024 * PRICES[f"{arch}_gb_s"]
        + PRICES["request"]
        + billed * storage_gb * PRICES["ephemeral_gb_s"]
    )


@pytest.mark.parametrize("run", ["default_run", "given_memory_run"])
def test_cost_follows_from_the_components_and_prices(
    run: str, request: pytest.FixtureRequest
) -> None:
    result = request.getfixturevalue(run)[1]
    for side in _sides(result):
        usd = _expected_usd(side, result["arch"])
        assert side["lambda"]["usd_per_invocation"] == pytest.approx(usd, rel=1e-9)
        assert side["usd_per_million_samples"] == pytest.approx(
            usd / side["samples"] * 1e6, rel=1e-9
        )


def test_memory_each_side_uses(
    default_run: tuple[str, dict], given_memory_run: tuple[str, dict]
) -> None:
    for result in (default_run[1], given_memory_run[1]):
        assert result["reference"]["memory_mb"] == 10240 and result["reference"]["vcpus"] == 6
    for side in default_run[1]["ours_by_backend"].values():
        assert side["memory_mb"] == max(1769, math.ceil(side["peak_rss_mb"] * 1.25))
    given = given_memory_run[1]
    assert list(given["ours_by_backend"]) == ["torch"] and given["arch"] == "arm64"
    assert given["ours"]["memory_mb"] == 3538 and given["ours"]["vcpus"] == pytest.approx(2.0)
    assert "--memory-mb" in given["ours"]["memory_choice"]
    compute_item = given["ours"]["lambda"]["items"][0]
    assert compute_item["unit_price_usd"] == PRICES["arm64_gb_s"]


def test_report_shows_both_models_the_ratio_and_the_assumptions(
    given_memory_run: tuple[str, dict],
) -> None:
    printed, saved = given_memory_run
    assert printed.startswith(cost_report(saved) + "\nsaved: ")
    for phrase in ("init s", "download s", "compute s", "peak RSS MB", "$/M samples", "vCPUs",
                   "cost ratio ours/reference", "recommended backend: torch", "assumptions:",
                   "ours' memory: 3538 MB"):  # fmt: skip
        assert phrase in printed


MEASURED = {"init_s": 1.5, "download_s": 0.25, "compute_s": 12.0, "threads": 2,
            "samples": 1000, "peak_rss_mb": 600.0}  # fmt: skip


@pytest.mark.parametrize(
    ("memory_mb", "vcpus"),
    [(1769, 1.0), (3538, 2.0), (885, 885 / 1769), (10240, 6.0), (10000, 10000 / 1769)],
)
def test_compute_scales_by_threads_here_over_vcpus_there(memory_mb: int, vcpus: float) -> None:
    assert lambda_vcpus(memory_mb) == pytest.approx(vcpus)
    modelled = model_lambda(MEASURED, memory_mb, "x86_64", 512, load_prices())
    assert modelled["vcpus"] == pytest.approx(vcpus)
    assert modelled["lambda"]["compute_s"] == pytest.approx(12.0 * 2 / vcpus)
    assert modelled["lambda"]["init_s"] == 1.5 and modelled["lambda"]["download_s"] == 0.25
    assert modelled["lambda"]["billed_s"] == pytest.approx(1.75 + 24.0 / vcpus)
    assert modelled["memory_fits"] is (memory_mb >= 600)


def test_a_rank_longer_than_lambdas_timeout_is_refused() -> None:
    with pytest.raises(CostError, match="900 s timeout"):
        model_lambda({**MEASURED, "compute_s": 100.0}, 128, "x86_64", 512, load_prices())


@pytest.mark.parametrize(
    ("peak_rss_mb", "memory_mb"), [(300.0, 1769), (2000.0, 2500), (9000.0, 10240)]
)
def test_default_memory_holds_the_peak_with_headroom_and_a_vcpu(
    peak_rss_mb: float, memory_mb: int
) -> None:
    chosen, why = choose_memory(peak_rss_mb)
    assert chosen == memory_mb and "headroom" in why


def test_backend_choices() -> None:
    assert resolve_backends("all") == available_backends()
    assert resolve_backends("torch") == ["torch"]
    with pytest.raises(CosmicAIError, match="unknown backend"):
        resolve_backends("tensorflow")
