"""`cosmicai bench engine` end to end (tiny model), the reference loop, and the comparison."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from cosmicai.cli.bench import engine_report
from cosmicai.cli.main import main
from cosmicai.inference.bench_engine import DEFAULT_SAMPLES, compare_predictions
from cosmicai.inference.checkpoint import load_model
from cosmicai.inference.model import AstroMAEConfig, flops_per_sample
from cosmicai.inference.partition_io import SAMPLE_BYTES, write_partition
from cosmicai.inference.reference_loop import run_reference

PHASE_KEYS = {"samples_per_s", "wall_s", "peak_rss_mb", "cold_start_s"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """One end-to-end run (module scope, so stdout is captured by hand): printed, saved JSON."""
    out = tmp_path_factory.mktemp("bench") / "engine.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(
            [
                "bench",
                "engine",
                "--samples",
                "64",
                "--model-size",
                "tiny",
                "--batch-size",
                "16",
                "--threads",
                "1",
                "--out",
                str(out),
                "--json",
            ]
        )
    assert code == 0, stderr.getvalue()
    return json.loads(stdout.getvalue()), json.loads(out.read_text())


def test_json_has_every_key(bench: tuple[dict, dict]) -> None:
    printed, saved = bench
    assert printed == saved
    for phase in ("reference", "engine", "engine_onnxruntime"):
        assert set(printed[phase]) >= PHASE_KEYS
        assert all(printed[phase][key] > 0 for key in PHASE_KEYS)
        assert printed[phase]["samples"] == 64
    ref, eng = printed["reference"], printed["engine"]
    assert printed["speedup"] == pytest.approx(eng["samples_per_s"] / ref["samples_per_s"])
    assert printed["rss_ratio"] == pytest.approx(eng["peak_rss_mb"] / ref["peak_rss_mb"])
    gflops = printed["gflops"]
    assert set(gflops) == {"model", "matmul", "fraction"}
    tiny_flops = flops_per_sample(AstroMAEConfig.tiny())
    assert gflops["model"] == pytest.approx(tiny_flops * eng["samples_per_s"] / 1e9)
    assert gflops["fraction"] == pytest.approx(gflops["model"] / gflops["matmul"])
    assert gflops["matmul"] > 0
    # 64 samples in batches of 16: every batch is full, so the engine matches eager bit for bit
    assert printed["predictions_identical"] is True
    assert printed["predictions"]["compared"] == 64 and printed["predictions"]["differing"] == 0
    assert set(printed["machine"]) >= {"cpu_model", "cores", "threads", "torch_version"}
    assert printed["machine"]["threads"] == printed["threads"] == 1
    assert printed["machine"]["torch_version"] == torch.__version__
    assert set(printed["targets"]) >= {"speedup_min", "rss_ratio_max", "met"}
    assert set(ref["reported"]) >= {"total_cpu_time (seconds)", "sample_persec"}
    assert eng["num_batches"] == ref["num_batches"] == 4
    onnx = printed["engine_onnxruntime"]
    assert onnx["backend"] == "onnxruntime" and eng["backend"] == "torch"
    assert printed["cold_start_s"] == {
        "torch": eng["cold_start_s"],
        "onnxruntime": onnx["cold_start_s"],
    }
    assert onnx["max_abs_diff_vs_torch"] <= 1e-6
    assert printed["targets"]["onnxruntime_predictions_met"] is True


def test_table_names_both_phases_and_the_targets(bench: tuple[dict, dict]) -> None:
    text = engine_report(bench[0])
    assert "reference" in text and "engine (onnxruntime)" in text and "cold start s" in text
    assert "onnxruntime: ready in" in text
    assert "speedup" in text and "peak RSS ratio" in text and "GFLOP/s" in text
    assert "identical to eager fp32 (the reference loop): yes" in text


def test_default_is_one_100_mib_partition() -> None:
    assert DEFAULT_SAMPLES * SAMPLE_BYTES <= 100 * 2**20 < (DEFAULT_SAMPLES + 1) * SAMPLE_BYTES


def test_bad_sample_count_is_an_error_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:  # refused while parsing, before any work
        main(["bench", "engine", "--samples", "0", "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "at least 1" in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()


def test_reference_loop_is_eager_fp32_over_dataloader_batches(tmp_path: Path) -> None:
    loaded = load_model(None, config=AstroMAEConfig.tiny())
    g = torch.Generator().manual_seed(3)
    images, magnitudes = torch.randn(21, 5, 32, 32, generator=g), torch.randn(21, 5, generator=g)
    write_partition(tmp_path / "data.pt", images, magnitudes, torch.rand(21, generator=g))
    run = run_reference(loaded.model, tmp_path / "data.pt", batch_size=8)
    with torch.no_grad():
        eager = [loaded.model(images[i : i + 8], magnitudes[i : i + 8]) for i in range(0, 21, 8)]
    assert run.predictions == torch.cat(eager).tolist()
    assert run.samples == 21 and run.num_batches == 3
    assert set(run.reported) == {
        "total_cpu_time (seconds)",
        "total_cpu_memory (MB)",
        "execution_time (seconds/batch)",
        "throughput_bps",
        "sample_persec",
    }
    assert run.reported["sample_persec"] == pytest.approx(
        21 / run.reported["total_cpu_time (seconds)"]
    )


def test_comparison_separates_the_partial_last_batch() -> None:
    eager = [0.1, 0.2, 0.3, 0.4, 0.5]
    same = compare_predictions(list(eager), eager, batch_size=2)
    assert same["identical"] and same["identical_in_full_batches"] and same["differing"] == 0
    tail = compare_predictions([0.1, 0.2, 0.3, 0.4, 0.5 + 1e-8], eager, batch_size=2)
    assert not tail["identical"] and tail["identical_in_full_batches"]
    assert tail["first_differing"] == [4] and tail["max_abs_diff"] == pytest.approx(1e-8)
    inside = compare_predictions([0.1, 0.25, 0.3, 0.4, 0.5], eager, batch_size=2)
    assert not inside["identical_in_full_batches"] and inside["differing"] == 1
