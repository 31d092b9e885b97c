"""`cosmicai report | runs | compare` and the HTML report, on two tiny demo runs (local cloud)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cosmicai.cli.main import main
from cosmicai.defaults import FUNCTIONS
from cosmicai.report_html import render_html
from cosmicai.run_cost import cost_of_run
from cosmicai.run_metrics import load_run
from cosmicai.run_store import LocalRuns

SECTIONS = {"status", "timeline", "ranks", "cost", "predictions", "invocations", "payload"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory):
    """Two tiny demo runs (world sizes 2 then 1) in a home of their own."""
    home = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSMICAI_HOME", str(home / ".cosmicai"))
        printed = []
        for world_size in ("2", "1"):
            code, out = _cli(
                "demo",
                "--model-size",
                "tiny",
                "--samples",
                "48",
                "--batch-size",
                "16",
                "--world-size",
                world_size,
                "--out",
                str(home / "out"),
            )
            assert code == 0, out
            printed.append(out)
        store = LocalRuns()
        run_ids = store.run_ids()
        yield {"home": home, "printed": printed, "run_ids": run_ids, "store": store}


class _Structure(HTMLParser):
    """Section ids, images and any external references of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self.sections.append(attributes.get("id") or "")
        if tag == "table":
            self.tables += 1
        if tag == "img":
            self.images.append(attributes.get("src") or "")
        for name in ("src", "href"):
            value = attributes.get(name) or ""
            if value and not value.startswith("data:"):
                self.external.append(value)


def test_demo_prints_the_cost_table_and_the_report_path(demos) -> None:
    for out in demos["printed"]:
        assert "cost of run" in out and "lambda cosmicai-executor compute" in out
        assert "stepfunctions standard state transitions" in out
        report_line = next(line for line in out.splitlines() if line.startswith("report: "))
        path = Path(report_line.removeprefix("report: "))
        assert path.name == "report.html" and path.is_file()


def test_html_report_has_every_section_inline(demos, tmp_path: Path) -> None:
    run_id = demos["run_ids"][-1]  # the world-size-2 run
    html_path = tmp_path / "r.html"
    code, out = _cli("report", run_id, "--html", str(html_path))
    assert code == 0 and out.strip() == f"report: {html_path}"
    text = html_path.read_text()
    structure = _Structure()
    structure.feed(text)
    assert set(structure.sections) == SECTIONS and len(structure.sections) == len(SECTIONS)
    assert structure.external == []  # self-contained
    # timeline, ranks, cost, predictions: four inline PNGs
    assert len(structure.images) == 4
    for src in structure.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert "UNTRAINED model" in text
    assert f"CosmicAI run {run_id}" in text and "SUCCEEDED" in text
    executor_mb = FUNCTIONS["executor"].memory_mb
    assert "precision_nmad" in text
    assert f"cosmicai-executor compute (x86_64, {executor_mb} MB)" in text
    assert '"model_size": "tiny"' in text.replace("&quot;", '"')


def test_all_text_is_escaped(demos) -> None:
    run_id = demos["run_ids"][0]
    data = load_run(demos["store"], run_id)
    hostile = "<script>alert('x')</script>"
    data = dataclasses.replace(
        data,
        payload={**(data.payload or {}), "team": hostile},
        summary={**(data.summary or {}), "message": hostile},
        problems=[hostile],
    )
    text = render_html(data, cost_of_run(data))
    assert "<script>" not in text
    assert text.count("&lt;script&gt;") >= 3


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(demos, tmp_path: Path) -> None:
    from matplotlib.image import imread

    html_path = tmp_path / "report.html"
    assert _cli("report", demos["run_ids"][-1], "--html", str(html_path))[0] == 0
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}",
            "--window-size=1200,3000",
            html_path.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert screenshot.is_file()
    pixels = imread(screenshot)[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    not_white = (pixels.min(axis=2) < 0.9).mean()
    assert 0.03 < not_white < 0.9  # text, tables and plots, not a blank or error page
    # the status badge (green) and the plots' colours are there
    assert len({tuple(p) for p in (pixels[::7, ::7] * 255).astype(int).reshape(-1, 3)}) > 50


def test_report_text_and_json(demos) -> None:
    run_id = demos["run_ids"][-1]
    code, text = _cli("report", run_id)
    assert code == 0
    assert "Lambda invocations (REPORT lines):" in text and "total" in text
    assert "5 parent + 2 map children started + 2 children" in text
    code, out = _cli("report", run_id, "--json")
    report = json.loads(out)
    data = load_run(demos["store"], run_id)
    assert report["overview"]["world_size"] == 2 and report["overview"]["samples"] == 48
    assert report["cost"]["total_usd"] == pytest.approx(cost_of_run(data).total_usd)
    assert [i["role"] for i in report["invocations"]].count("executor") == 2
    assert all(i["failed"] is False for i in report["invocations"])
    code, out = _cli("report", run_id, "--json", "--workflow", "express")
    assert json.loads(out)["cost"]["workflow"] == "express"


def test_runs_lists_newest_first_and_compare_puts_two_side_by_side(demos) -> None:
    code, out = _cli("runs", "--json")
    runs = json.loads(out)
    assert [r["run_id"] for r in runs] == demos["run_ids"]
    assert [r["world_size"] for r in runs] == [1, 2]
    assert all(r["status"] == "succeeded" and r["cost_usd"] > 0 for r in runs)
    assert all(r["samples"] == 48 for r in runs)
    code, table = _cli("runs")
    assert code == 0 and all(run_id in table for run_id in demos["run_ids"])

    newer, older = demos["run_ids"]
    code, out = _cli("compare", older, newer, "--json")
    pair = json.loads(out)
    assert (pair["a"]["world_size"], pair["b"]["world_size"]) == (2, 1)
    assert pair["a"]["metrics"]["mae"] > 0
    assert pair["a"]["executor_memory_mb"] == FUNCTIONS["executor"].memory_mb
    code, text = _cli("compare", older, newer)
    header = text.splitlines()[0]
    assert older in header and newer in header
    assert any(line.split()[:2] == ["world", "size"] for line in text.splitlines())


def test_unknown_run_is_an_actionable_error(demos, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSMICAI_HOME", str(demos["home"] / ".cosmicai"))
        assert main(["report", "nope-20260101-000000-000000"]) == 1
    assert "no local run nope-20260101-000000-000000" in capsys.readouterr().err


def test_a_damaged_store_is_reported_run_by_run(
    demos, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / ".cosmicai"
    shutil.copytree(demos["home"] / ".cosmicai" / "s3", home / "s3")
    newer, older = demos["run_ids"]
    runs = home / "s3" / "cosmicai-runs" / "runs"
    summary = runs / newer / "summary.json"
    summary.write_text(summary.read_text()[:40])  # truncated
    (runs / "demo-20260101-000000-ffffff").mkdir()  # a run folder without execution.json
    (runs / "demo-20260101-000000-eeeeee").mkdir()
    (runs / "demo-20260101-000000-eeeeee" / "execution.json").write_text('{"name": "demo-')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSMICAI_HOME", str(home))
        code, out = _cli("runs", "--json")
        assert code == 0
        rows = {row["run_id"]: row for row in json.loads(out)}
        assert rows[older]["status"] == "succeeded"
        assert rows[newer]["status"].startswith(f"unreadable: {summary}: not valid JSON")
        assert rows["demo-20260101-000000-eeeeee"]["status"].startswith("unreadable: ")
        for command in ("status", "results", "report"):
            assert main([command, newer]) == 1
            err = capsys.readouterr().err
            assert err.startswith(f"error: unreadable: {summary}: ") and "truncated" in err
        assert main(["status", "demo-20260101-000000-ffffff"]) == 1
        assert "execution.json: no such file" in capsys.readouterr().err
