"""`cosmicai tune`: list validation, recommendations, and a 2 x 1 sweep on the local cloud."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import pytest

from cosmicai.cli.main import main
from cosmicai.cli.report import tune_text
from cosmicai.cost import CostError
from cosmicai.defaults import FUNCTIONS
from cosmicai.errors import CosmicAIError
from cosmicai.inference.partitioning import partition
from cosmicai.inference.synthetic import make_data
from cosmicai.local_store import LocalS3Mirror
from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.localcloud.session import upload_inputs
from cosmicai.payload import validate_payload
from cosmicai.run_metrics import RunData, load_run
from cosmicai.run_store import CloudRuns, LocalRuns
from cosmicai.tune import (
    ARCH_NOTE,
    LOCAL_NOTE,
    TuneResult,
    parse_batch_sizes,
    parse_memory,
    plot_sweep,
    recommend,
    sweep_aws,
)

LAMBDA_PRICES = json.loads(
    (Path(__file__).resolve().parents[1] / "tools" / "cosmicai" / "prices.json").read_text()
)["lambda"]


def _result(memory: int, batch: int, duration: float, cost: float, status="succeeded"):
    return TuneResult(memory, batch, f"t-{memory}-{batch}", status, duration, cost, 64, None)


def test_lists_are_validated() -> None:
    assert parse_memory("2048, 4096,2048") == [2048, 4096]
    assert parse_batch_sizes("128,512") == [128, 512]
    with pytest.raises(
        CostError, match=r"--memory .*: 64 is out of range; use values 128 to 10240"
    ):
        parse_memory("2048,64")
    with pytest.raises(CostError, match="10241 is out of range"):
        parse_memory("10241")
    with pytest.raises(CostError, match="'2k' is not a whole number"):
        parse_memory("2k")
    with pytest.raises(CostError, match="--batch-size: 0 is out of range; use values at least 1"):
        parse_batch_sizes("0")


def test_bad_lists_stop_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COSMICAI_HOME", str(tmp_path))
    payload = tmp_path / "payload.json"
    payload.write_text("{}")
    assert main(["tune", str(payload), "--memory", "99999", "--batch-size", "8"]) == 2
    assert "99999 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "s3").exists()


def test_recommendations_cheapest_fastest_balanced(tmp_path: Path) -> None:
    results = [
        _result(1024, 64, duration=40.0, cost=0.010),  # cheapest
        _result(10240, 64, duration=10.0, cost=0.050),  # fastest
        _result(4096, 64, duration=15.0, cost=0.020),  # cost x time 0.30: balanced
        _result(512, 64, duration=5.0, cost=0.001, status="failed"),  # never recommended
    ]
    picks = recommend(results)
    assert {name: pick.memory_mb for name, pick in picks.items()} == {
        "cheapest": 1024,
        "fastest": 10240,
        "balanced": 4096,
    }
    plot = plot_sweep(results, picks, tmp_path / "plots" / "sweep.png")
    assert plot.read_bytes().startswith(b"\x89PNG")
    text = tune_text(results, picks, LOCAL_NOTE.format(cpus=2), plot)
    assert "balanced: 4096 MB / batch 64  (15.0 s, $0.020000" in text
    assert "indicative" in text and "capped by this machine's 2 CPUs" in text
    assert "cost x86_64" in text and "cost arm64" in text and ARCH_NOTE in text
    assert "assumes the same durations" in ARCH_NOTE
    assert f"plot: {plot}" in text
    with pytest.raises(CosmicAIError, match="no configuration of the sweep succeeded"):
        recommend(results[3:])


def test_local_sweep_two_memories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COSMICAI_HOME", str(tmp_path / ".cosmicai"))
    mirror = LocalS3Mirror()
    source = make_data(40, tmp_path / "galaxies.safetensors", seed=3)
    partition(source, mirror.path("cosmicai-data", "tune/parts"), size_mb=0.05)
    payload = tmp_path / "payload.json"
    payload.write_text(
        json.dumps(
            {
                "bucket": "cosmicai-runs",
                "data_bucket": "cosmicai-data",
                "data_prefix": "tune/parts",
                "result_path": "results/tune-test",
                "world_size": 2,
                "model_size": "tiny",
                "threads": 1,
                "team": "tuning",
            }
        )
    )
    plot = tmp_path / "sweep.png"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "tune",
                str(payload),
                "--memory",
                "1024,2048",
                "--batch-size",
                "16",
                "--json",
                "--plot",
                str(plot),
            ]
        )
    assert code == 0
    report = json.loads(out.getvalue())
    configs = report["configs"]
    assert [(c["memory_mb"], c["batch_size"]) for c in configs] == [(1024, 16), (2048, 16)]
    assert all(c["status"] == "succeeded" and c["samples"] == 40 for c in configs)
    assert report["indicative"] is True and "indicative" in report["note"]
    assert {r["run_id"] for r in report["recommendations"].values()} <= {
        c["run_id"] for c in configs
    }
    assert plot.read_bytes().startswith(b"\x89PNG")
    progress = capsys.readouterr().err
    store = LocalRuns(mirror)
    for config in configs:
        data = load_run(store, config["run_id"])
        # the executor ran with the configuration's memory; the batch size reached the ranks
        assert {i.report.memory_size_mb for i in data.role("executor")} == {config["memory_mb"]}
        assert data.payload["batch_size"] == 16
        assert {r["batch_size"] for r in data.ranks} == {16}
        result_path = f"results/tune-test/tune/{config['run_id']}"
        assert data.payload["result_path"] == result_path
        assert mirror.exists("cosmicai-runs", f"{result_path}/summary.json")
        assert config["run_id"] in progress


def _lambda_usd(run: RunData) -> float:
    """The run's Lambda bill from its REPORT lines and prices.json (x86_64, as deployed)."""
    usd = 0.0
    for invocation in run.invocations:
        billed_s = invocation.report.billed_duration_ms / 1000
        extra_mb = max(0, FUNCTIONS[invocation.role].ephemeral_storage_mb - 512)
        usd += billed_s * invocation.report.memory_size_mb / 1024 * LAMBDA_PRICES["x86_64_gb_s"]
        usd += billed_s * extra_mb / 1024 * LAMBDA_PRICES["ephemeral_gb_s"]
        usd += LAMBDA_PRICES["request"]
    return usd


def test_aws_sweep_runs_versions_and_leaves_latest_alone(tmp_path: Path) -> None:
    """The AWS code path on a live local cloud: each memory runs on a published version of the
    executor, $LATEST keeps its memory during every run, and the versions are deleted after
    the sweep, also when it fails."""
    mirror = LocalS3Mirror(tmp_path)
    data = mirror.path("cosmicai-data", "parts/part-00000.safetensors")
    data.parent.mkdir(parents=True)
    data.write_bytes(b"not read in script mode")
    code = mirror.path("cosmicai-runs", "code/job.py")
    code.parent.mkdir(parents=True)
    code.write_text("print('hello from the rank')\n")
    settings = {
        "bucket": "cosmicai-runs",
        "data_bucket": "cosmicai-data",
        "data_prefix": "parts",
        "result_path": "results/aws-tune",
        "S3_object_name": "code",
        "script": "job.py",
        "team": "tuning",
    }
    payload = validate_payload(settings)
    default_mb = FUNCTIONS["executor"].memory_mb
    with LocalCloud() as cloud:
        target = cloud.deploy()
        upload_inputs(target, payload, mirror)
        lam = target.client("lambda")
        executor = target.functions["executor"]

        def latest_mb() -> int:
            return lam.get_function_configuration(FunctionName=executor)["MemorySize"]

        def versions() -> list[str]:
            listed = lam.list_versions_by_function(FunctionName=executor)["Versions"]
            return [v["Version"] for v in listed]

        during: list[int] = []
        results = sweep_aws(
            target, payload, [1024, 2048], [8], on_progress=lambda _: during.append(latest_mb())
        )
        assert during and set(during) == {default_mb}  # while the runs ran
        assert latest_mb() == default_mb and versions() == ["$LATEST"]
        store = CloudRuns(target, settle_s=0)
        assert [(r.memory_mb, r.status) for r in results] == [
            (1024, "succeeded"),
            (2048, "succeeded"),
        ]
        others = []
        for result in results:
            run = load_run(store, result.run_id)
            assert {i.report.memory_size_mb for i in run.role("executor")} == {result.memory_mb}
            assert run.payload["batch_size"] == 8
            # Lambda from the REPORT lines; the rest (Step Functions, S3) is the same per run
            others.append(result.cost_usd - _lambda_usd(run))
            # the deployed executor is x86_64; arm64 is cheaper by 20% of its compute only
            assert result.cost_x86_64_usd == pytest.approx(result.cost_usd)
            executor_ms = sum(i.report.billed_duration_ms for i in run.role("executor"))
            gb_s = executor_ms / 1000 * result.memory_mb / 1024
            saved = gb_s * (LAMBDA_PRICES["x86_64_gb_s"] - LAMBDA_PRICES["arm64_gb_s"])
            assert result.cost_arm64_usd == pytest.approx(result.cost_usd - saved)
        assert others[0] > 0 and others[0] == pytest.approx(others[1], rel=1e-9)

        elsewhere = validate_payload({**settings, "bucket": "other-runs"})
        with pytest.raises(CosmicAIError, match="is not the platform's runs bucket"):
            sweep_aws(dataclasses.replace(target, kind="aws"), elsewhere, [1024], [8])
        assert latest_mb() == default_mb and versions() == ["$LATEST"]
