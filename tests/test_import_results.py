"""`cosmicai import-results`: a past reference run beside ours in `runs`, `compare`, `report`."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from cosmicai.cli.main import main
from cosmicai.pipeline.layout import check_run_id
from cosmicai.reference_results import reference_samples
from cosmicai.run_store import LocalRuns

FIXTURE = Path(__file__).parent / "fixtures" / "reference_run" / "combined_data.json"
IMPORTED = "imported-aws-100mb"


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """One tiny demo run of ours and the imported fixture, in a home of their own."""
    root = tmp_path_factory.mktemp("import")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSMICAI_HOME", str(root / ".cosmicai"))
        code, out, _ = _cli(
            "demo", "--model-size", "tiny", "--samples", "16", "--batch-size", "8",
            "--world-size", "1", "--out", str(root / "out"),
        )  # fmt: skip
        assert code == 0, out
        (ours,) = LocalRuns().run_ids()
        code, out, err = _cli("import-results", str(FIXTURE), "--name", "aws-100mb")
        assert code == 0, err
        yield {"ours": ours, "import_output": out, "root": root}


def test_import_records_a_run_with_its_reference_fields(home) -> None:
    assert check_run_id(IMPORTED) == IMPORTED
    assert f"imported {IMPORTED}: 3 ranks, 14613 samples" in home["import_output"]
    assert "torch.profiler's memory figure" in home["import_output"]
    store = LocalRuns()
    execution = store.execution(IMPORTED)
    assert execution["imported"]["source"] == str(FIXTURE.resolve())
    summary = store.read_json(IMPORTED, f"runs/{IMPORTED}/summary.json")
    assert summary["samples"] == 14613 and summary["world_size"] == 3
    rank2 = store.read_json(IMPORTED, f"runs/{IMPORTED}/ranks/00002.json")
    assert rank2["total_cpu_memory (MB)"] == 6540.902337 and rank2["samples"] == 4613
    assert rank2["data_path"] == "100MB/3.pt"


def test_runs_lists_it_beside_ours_without_a_cost(home) -> None:
    code, out, err = _cli("runs")
    assert code == 0 and "Traceback" not in err
    assert IMPORTED in out and home["ours"] in out
    assert "profiler" in out
    code, out, _ = _cli("runs", "--json")
    rows = {row["run_id"]: row for row in json.loads(out)}
    assert rows[IMPORTED]["cost_usd"] is None and rows[IMPORTED]["duration_s"] is None
    assert rows[home["ours"]]["cost_usd"] > 0


def test_compare_labels_what_each_memory_figure_is(home) -> None:
    code, out, err = _cli("compare", home["ours"], IMPORTED)
    assert code == 0 and "Traceback" not in err
    measured = next(line for line in out.splitlines() if "measured as" in line)
    assert "peak RSS" in measured and "memory profiler" in measured
    assert "7012.3" in next(line for line in out.splitlines() if "total_cpu_memory (MB)" in line)
    assert "note: total_cpu_memory (MB) of a reference run is torch.profiler's" in out
    code, out, _ = _cli("compare", home["ours"], IMPORTED, "--json")
    both = json.loads(out)
    assert both["b"]["imported"] and both["b"]["batch_size"] == 512
    assert both["b"]["cpu_memory_measure"] == "memory profiler (reference run)"


def test_report_shows_the_reference_table_text_json_and_html(home) -> None:
    code, out, err = _cli("report", IMPORTED)
    assert code == 0 and "Traceback" not in err
    assert "IMPORTED past reference run" in out and "total_cpu_memory (MB) [profiler]" in out
    assert "per batch" in out and "no billed duration" in out
    code, out, _ = _cli("report", IMPORTED, "--json")
    report = json.loads(out)
    assert report["cost"] is None and report["imported"]["format"]
    assert any("profiler" in note for note in report["notes"])
    html = home["root"] / "imported.html"
    code, out, err = _cli("report", IMPORTED, "--html", str(html))
    assert code == 0 and "Traceback" not in err and html.stat().st_size > 0


def test_bad_imports_are_refused_with_a_reason(home, tmp_path: Path) -> None:
    code, _, err = _cli("import-results", str(FIXTURE), "--name", "aws-100mb")
    assert code == 2 and "already exists" in err
    code, _, err = _cli("import-results", str(FIXTURE), "--name", "AWS 100MB")
    assert code == 2 and '--name "aws-100mb"' in err
    bad = tmp_path / "combined_data.json"
    bad.write_text(json.dumps([{"sample_persec": "fast"}, 3]))
    code, _, err = _cli("import-results", str(bad), "--name", "bad")
    assert code == 2 and "'sample_persec' must be a number" in err and "entry 1 is int" in err


def test_a_record_without_a_sample_count_is_unknown_not_zero(home, tmp_path: Path) -> None:
    records = json.loads(FIXTURE.read_text())
    del records[1]["sample_persec"]
    path = tmp_path / "run 7" / "combined_data.json"
    path.parent.mkdir()
    path.write_text(json.dumps(records))
    code, out, err = _cli("import-results", str(path))  # named after its folder
    assert code == 0, err
    assert "imported imported-run-7: 3 ranks, unknown samples" in out
    assert "samples unknown for rank(s) 1" in out
    code, out, _ = _cli("report", "imported-run-7")
    assert code == 0 and "3 ranks, unknown samples" in out


def test_reference_samples() -> None:
    record = {"sample_persec": 5000 / 23.8125, "total_cpu_time (seconds)": 23.8125}
    assert reference_samples(record) == (5000, "sample_persec x total_cpu_time (seconds)")
    assert reference_samples({**record, "num_samples": 4999}) == (4999, "num_samples")
    # the product must fit the batches: 10 batches of 512 hold 4609-5120 samples
    assert reference_samples({**record, "num_batches": 10, "batch_size": 512})[0] == 5000
    assert reference_samples({**record, "num_batches": 2, "batch_size": 512}) == (None, None)
    assert reference_samples({"num_batches": 10, "batch_size": 512}) == (None, None)
