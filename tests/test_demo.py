"""`cosmicai demo`: the main job, end to end on the local cloud, checked against one engine run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosmicai.cli.main import main
from cosmicai.defaults import EXECUTOR_ENGINE_BACKEND
from cosmicai.inference.backends import load_engine_model
from cosmicai.inference.checkpoint import load_model
from cosmicai.inference.engine import EngineConfig, run_inference
from cosmicai.inference.model import AstroMAEConfig
from cosmicai.reference_results import REFERENCE_FIELDS


def run_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[dict, list, Path]:
    monkeypatch.setenv("COSMICAI_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    assert main(["demo", "--out", str(out), *args]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.name != "data"]
    summary = json.loads((run_dir / "summary.json").read_text())
    combined = json.loads((run_dir / "combined_data.json").read_text())
    return summary, combined, out


def test_demo_predictions_equal_a_single_engine_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    summary, combined, out = run_demo(
        tmp_path,
        monkeypatch,
        "--world-size",
        "3",
        "--samples",
        "200",
        "--model-size",
        "tiny",
        "--batch-size",
        "32",
    )
    printed = capsys.readouterr().out
    assert "SUCCEEDED" in printed and "UNTRAINED" in printed
    assert summary["status"] == "succeeded"
    assert summary["world_size"] == 3 and summary["ranks_succeeded"] == 3
    assert summary["ranks_failed"] == 0 and summary["samples"] == 200
    assert set(summary["metrics"]) >= {
        "mae",
        "mse",
        "bias",
        "precision_nmad",
        "r2",
        "outlier_fraction",
    }
    assert summary["model_trained"] is False
    assert [r["rank"] for r in combined] == [0, 1, 2]
    for record in combined:  # every reference field is kept
        for field in REFERENCE_FIELDS:
            assert field in record
    pipeline = [p for r in combined for p in r["predictions"]]

    data = [out / "data" / "galaxies.safetensors"]
    config = EngineConfig(batch_size=32, threads=1)
    assert {r["backend"] for r in combined} == {EXECUTOR_ENGINE_BACKEND}  # the deployed default
    same_backend = load_engine_model(
        None, backend=EXECUTOR_ENGINE_BACKEND, micro_batch=32, model_size="tiny"
    )
    single = run_inference(same_backend, data, config)
    assert pipeline == single.predictions  # bit for bit
    assert [t for r in combined for t in r["true_redshift"]] == single.true
    eager = run_inference(load_model(None, config=AstroMAEConfig.tiny()), data, config)
    assert max(abs(a - b) for a, b in zip(pipeline, eager.predictions, strict=True)) <= 1e-6


@pytest.mark.slow
def test_demo_smoke_full_size_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary, combined, _ = run_demo(tmp_path, monkeypatch, "--samples", "256")
    assert summary["status"] == "succeeded" and summary["world_size"] == 4
    assert summary["samples"] == 256
    assert all(r["model_parameters"] > 15_000_000 for r in combined)
