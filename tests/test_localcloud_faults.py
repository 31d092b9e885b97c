"""Faults on the local cloud: whichever process of a run's tree is killed, nothing is left behind.

A script-mode run whose rank 0 sleeps on its first attempt is started as a user would
(`cosmicai run`); once its ranks are busy, one process of the tree (the CLI, the local cloud's
server, or a rank's environment) gets SIGKILL (or the CLI SIGTERM). Afterwards no process of the
tree may be alive and no temporary directory of the local cloud may remain; the CLI never prints
a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

SCRIPT = """
import json, os, time
import boto3
s3, marker = boto3.client("s3"), "runs/%s/first-attempt" % os.environ["RUN_ID"]
if os.environ["RANK"] == "0" and "Contents" not in s3.list_objects_v2(
    Bucket=os.environ["BUCKET"], Prefix=marker
):  # the first attempt sleeps: the test kills something meanwhile
    s3.put_object(Bucket=os.environ["BUCKET"], Key=marker, Body=b"1")
    time.sleep(60)
json.dump({"rank": int(os.environ["RANK"])}, open(os.environ["COSMICAI_RESULT_FILE"], "w"))
"""


def _start_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    tmpdir.mkdir()
    for rank in range(2):
        part = home / "s3" / "cosmicai-data" / "parts" / f"part-{rank}.safetensors"
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(b"unused in script mode")
    code = home / "s3" / "cosmicai-runs" / "code-faults" / "job.py"
    code.parent.mkdir(parents=True)
    code.write_text(SCRIPT)
    payload = tmp_path / "payload.json"
    payload.write_text(
        json.dumps(
            {
                "bucket": "cosmicai-runs",
                "data_bucket": "cosmicai-data",
                "data_prefix": "parts",
                "result_path": "results/faults",
                "S3_object_name": "code-faults",
                "script": "job.py",
                "team": "faults",
            }
        )
    )
    env = {**os.environ, "COSMICAI_HOME": str(home), "TMPDIR": str(tmpdir)}
    cli = subprocess.Popen(
        [sys.executable, "-m", "cosmicai.cli.main", "run", str(payload)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    return cli, tmpdir


def _busy_tree(cli: subprocess.Popen[str], deadline_s: float = 120) -> list[psutil.Process]:
    """The run's process tree once a rank's script is sleeping (ranks take turns: each holds
    every CPU of this machine at the executor's default memory)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert cli.poll() is None, cli.communicate()
        tree = psutil.Process(cli.pid).children(recursive=True)
        if any(_cmdline(p)[-1:] and _cmdline(p)[-1].endswith("job.py") for p in tree):
            return [psutil.Process(cli.pid), *tree]
        time.sleep(0.2)
    raise AssertionError("the ranks never started")


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _alive(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(" ".join(_cmdline(p))[:120])
        except psutil.NoSuchProcess:
            pass
    return alive


def _which(tree: list[psutil.Process], victim: str) -> psutil.Process:
    if victim.startswith("cli"):
        return tree[0]
    if victim == "server":
        return next(p for p in tree if "cosmicai.localcloud.server" in _cmdline(p))
    # the environment running rank 0's script (idle init/summarize environments exist too)
    script = next(p for p in tree if _cmdline(p)[-1:] and _cmdline(p)[-1].endswith("job.py"))
    return next(p for p in script.parents() if any(a.endswith("worker.py") for a in _cmdline(p)))


@pytest.mark.parametrize("victim", ["cli", "cli-sigterm", "server", "environment"])
def test_killing_any_process_of_a_run_leaves_nothing_behind(tmp_path: Path, victim: str) -> None:
    cli, tmpdir = _start_run(tmp_path)
    try:
        tree = _busy_tree(cli)
        assert list(tmpdir.glob("cosmicai-localcloud-*"))
        sig = signal.SIGTERM if victim == "cli-sigterm" else signal.SIGKILL
        _which(tree, victim).send_signal(sig)
        _out, err = cli.communicate(timeout=90)  # an environment's death: the rank is retried
        deadline = time.monotonic() + 15
        while (_alive(tree) or list(tmpdir.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _alive(tree) == []
        assert list(tmpdir.iterdir()) == []
        assert "Traceback" not in err
        if victim == "environment":
            assert cli.returncode == 0, err
        elif victim == "cli-sigterm":
            assert cli.returncode == 143 and "terminated" in err
        elif victim == "server":
            assert cli.returncode != 0 and "local cloud's server exited" in err
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


@pytest.fixture
def small_tmp(tmp_path: Path):
    """A 24 MB tmpfs to serve as the run's temporary storage (needs mount rights: root)."""
    folder = tmp_path / "small-tmp"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(folder)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_tmp_fails_the_rank_once_with_what_to_change(
    tmp_path: Path, small_tmp: Path
) -> None:
    home = tmp_path / "home"
    part = home / "s3" / "cosmicai-data" / "big" / "part-0.safetensors"
    part.parent.mkdir(parents=True)
    part.write_bytes(os.urandom(30 * 2**20))  # more than the whole temporary storage
    code = home / "s3" / "cosmicai-runs" / "code-full" / "job.py"
    code.parent.mkdir(parents=True)
    code.write_text("print('never reached')\n")
    payload = tmp_path / "payload.json"
    payload.write_text(
        json.dumps(
            {"bucket": "cosmicai-runs", "data_bucket": "cosmicai-data", "data_prefix": "big",
             "result_path": "results/full", "S3_object_name": "code-full", "script": "job.py"}
        )
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "cosmicai.cli.main", "run", str(payload)],
        capture_output=True, text=True, check=False, timeout=180, cwd=tmp_path,
        env={
            **os.environ,
            "COSMICAI_HOME": str(home),
            "TMPDIR": str(small_tmp),
            # the emulator's S3 keeps objects in memory, so only the rank needs the small disk
            "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(64 * 2**20),
        },
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "rank 0 failed: EphemeralStorageFull" in done.stderr
    assert "the rank's temporary storage is too small for its partitions" in done.stderr
    assert "s3://cosmicai-data/big/part-0.safetensors" in done.stderr
    (run_dir,) = (home / "s3" / "cosmicai-runs" / "runs").iterdir()
    log = (run_dir / "logs" / "cosmicai-executor.jsonl").read_text()
    assert log.count('\\"rank started\\"') == 1  # not retried: it cannot help
    assert list(small_tmp.iterdir()) == []


def test_an_input_the_local_cloud_cannot_store_is_an_error_naming_it(tmp_path: Path) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    from cosmicai.errors import CosmicAIError
    from cosmicai.local_store import LocalS3Mirror

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        port = server._server.server_address[1]
        s3 = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        mirror = LocalS3Mirror(tmp_path)
        part = mirror.path("no-such-bucket", "parts/part-0.safetensors")
        part.parent.mkdir(parents=True)
        part.write_bytes(b"x")
        with pytest.raises(CosmicAIError, match=r"could not copy .*part-0\.safetensors into"):
            mirror.upload(s3, "no-such-bucket", "parts/")
    finally:
        server.stop()
