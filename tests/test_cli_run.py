"""`cosmicai run / upload / status / results` as a user runs them (real local cloud)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

SLOW_SCRIPT = "import time\nprint('working', flush=True)\ntime.sleep(120)\n"
QUICK_SCRIPT = (
    "import json, os\n"
    "json.dump({'rank': int(os.environ['RANK'])}, open(os.environ['COSMICAI_RESULT_FILE'], 'w'))\n"
)


def cosmicai(home: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cosmicai.cli.main", *args],
        cwd=home,
        env={**os.environ, "COSMICAI_HOME": str(home / ".cosmicai")},
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    data = tmp_path / ".cosmicai" / "s3" / "cosmicai-data" / "parts"
    data.mkdir(parents=True)
    for i in range(2):
        (data / f"part-{i:05d}.safetensors").write_bytes(b"unused in script mode")
    for name, text in (("slow", SLOW_SCRIPT), ("quick", QUICK_SCRIPT)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "job.py").write_text(text)
        (tmp_path / f"{name}.json").write_text(
            json.dumps(
                {
                    "bucket": "cosmicai-runs",
                    "data_bucket": "cosmicai-data",
                    "data_prefix": "parts",
                    "result_path": f"results/{name}",
                    "S3_object_name": name,
                    "script": "job.py",
                    "world_size": 2,
                    "team": "cli",
                }
            )
        )
    return tmp_path


def test_invalid_payload_exits_2_before_any_cloud_call(home: Path) -> None:
    (home / "bad.json").write_text('{"bucket": "cosmicai-runs", "file limit": 3}')
    result = cosmicai(home, "run", "bad.json")
    assert result.returncode == 2
    assert 'did you mean "file_limit"' in result.stderr
    assert "Traceback" not in result.stderr
    assert not (home / ".cosmicai" / "s3" / "cosmicai-runs").exists()


def test_no_wait_needs_aws(home: Path) -> None:
    result = cosmicai(home, "run", "quick.json", "--no-wait")
    assert result.returncode == 1
    assert "--no-wait needs --aws" in result.stderr


def test_upload_run_status_results(home: Path) -> None:
    upload = cosmicai(home, "upload", "quick", "s3://cosmicai-runs/quick")
    assert upload.returncode == 0, upload.stderr
    run = cosmicai(home, "run", "quick.json", "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout[run.stdout.index("{") :])
    run_id = out["summary"]["run_id"]
    assert out["summary"]["status"] == "succeeded"
    status = cosmicai(home, "status", run_id, "--json")
    assert json.loads(status.stdout)["execution_status"] == "SUCCEEDED"
    results = cosmicai(home, "results", run_id, "--out", str(home / "copy"))
    assert results.returncode == 0
    combined = json.loads((home / "copy" / run_id / "combined_data.json").read_text())
    assert [r["script_result"]["rank"] for r in combined] == [0, 1]
    again = cosmicai(home, "run", "quick.json")
    assert again.returncode == 1 and "already holds results" in again.stderr
    unknown = cosmicai(home, "status", "cli-00000000-000000-000000")
    assert unknown.returncode == 1 and "no local run" in unknown.stderr


def test_ctrl_c_leaves_no_processes_behind(home: Path) -> None:
    assert cosmicai(home, "upload", "slow", "s3://cosmicai-runs/slow").returncode == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "cosmicai.cli.main", "run", "slow.json"],
        cwd=home,
        env={**os.environ, "COSMICAI_HOME": str(home / ".cosmicai")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cli = psutil.Process(process.pid)
    deadline = time.monotonic() + 120
    family: list[psutil.Process] = []
    while time.monotonic() < deadline:  # wait until a rank's script runs (ranks take turns)
        family = cli.children(recursive=True)
        if any("job.py" in " ".join(p.cmdline()) for p in family if p.is_running()):
            break
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the ranks never started")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    time.sleep(1)
    alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


VERSIONED_SCRIPT = (
    "import json, os\n"
    "json.dump({'rank': int(os.environ['RANK']), 'version': VERSION},\n"
    "          open(os.environ['COSMICAI_RESULT_FILE'], 'w'))\n"
)


def test_status_and_results_of_an_overwrite_rerun_are_the_reruns(
    tmp_path: Path, aws_standin, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--overwrite` re-runs are executions `<run_id>-<epoch>`: `status` and `results --aws`
    find the run by its id and show its latest re-run (a live local cloud standing in for AWS)."""
    from cosmicai.cli.main import main

    cloud, target = aws_standin
    s3 = target.client("s3")
    for i in range(2):
        s3.put_object(Bucket="cosmicai-data", Key=f"parts/part-{i}.safetensors", Body=b"x")
    payload = tmp_path / "payload.json"
    payload.write_text(
        json.dumps(
            {
                "bucket": target.runs_bucket,
                "data_bucket": "cosmicai-data",
                "data_prefix": "parts",
                "result_path": "results/rerun",
                "S3_object_name": "code",
                "script": "job.py",
                "world_size": 2,
                "team": "cli",
            }
        )
    )
    flags = ["--aws", "--state-machine-arn", target.state_machine_arn,
             "--bucket", target.runs_bucket, "--region", cloud.region]  # fmt: skip
    run_id = "cli-rerun-0001"
    started = []
    for version in (1, 2):  # the first is already a re-run: no execution is named `run_id`
        body = f"VERSION = {version}\n{VERSIONED_SCRIPT}".encode()
        s3.put_object(Bucket=target.runs_bucket, Key="code/job.py", Body=body)
        args = ["run", str(payload), *flags, "--run-id", run_id, "--overwrite", "--json"]
        assert main(args) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        execution = json.loads(out[out.index("{") :])["execution"]
        assert execution["name"].startswith(f"{run_id}-")
        started.append(datetime.fromisoformat(execution["startDate"]))
    assert started[0] < started[1]

    assert main(["status", run_id, *flags, "--json"]) == 0, capsys.readouterr().err
    status = json.loads(capsys.readouterr().out)
    assert status["execution_status"] == "SUCCEEDED" and status["run_status"] == "succeeded"
    assert datetime.fromisoformat(status["started"]) == started[1]
    assert main(["results", run_id, *flags, "--out", str(tmp_path / "copy")]) == 0
    combined = json.loads((tmp_path / "copy" / run_id / "combined_data.json").read_text())
    assert [(r["rank"], r["script_result"]["version"]) for r in combined] == [(0, 2), (1, 2)]
