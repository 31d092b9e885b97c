"""Fixtures shared by test modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.localcloud.server import LOCAL_CREDENTIALS
from cosmicai.target import Target

ROOT = Path(__file__).resolve().parents[1]
# Stands in for `docker` in a workflow step: logs each call (argv and stdin) as a JSON line and
# answers `image inspect` and `run` with the sizes the test sets.
FAKE_DOCKER = f"""#!{sys.executable}
import json, os, sys
args, stdin = sys.argv[1:], sys.stdin.read()
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps({{"args": args, "stdin": stdin}}) + "\\n")
if args[:2] == ["image", "inspect"]:
    print(os.environ["FAKE_DOCKER_IMAGE_BYTES"])
elif args[:1] == ["run"]:
    print(json.dumps({{"total": int(os.environ["FAKE_DOCKER_PYTHON_BYTES"])}}))
"""


@dataclass(frozen=True)
class StepRun:
    """A workflow step's shell script run locally: its exit status, output and docker calls."""

    returncode: int
    output: str
    docker: list[dict[str, object]]


@pytest.fixture
def run_step(tmp_path: Path) -> Callable[[str, dict[str, str]], StepRun]:
    """Run a workflow step's `run:` script as GitHub's default bash shell does (-eo pipefail),
    in the repository root, with `docker` replaced by FAKE_DOCKER and `env` set."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker-calls.jsonl"

    def run(script: str, env: dict[str, str]) -> StepRun:
        log.unlink(missing_ok=True)
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            cwd=ROOT,
            env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DOCKER_LOG": str(log), **env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return StepRun(done.returncode, done.stdout + done.stderr, calls)

    return run


@pytest.fixture
def aws_standin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LocalCloud, Target]]:
    """A deployed local cloud standing in for AWS: the `--aws` code path reaches it through the
    standard AWS_ENDPOINT_URL and credential variables; it has a `cosmicai-data` bucket."""
    monkeypatch.setenv("COSMICAI_HOME", str(tmp_path / "home"))
    with LocalCloud() as cloud:
        target = cloud.deploy()
        monkeypatch.setenv("AWS_ENDPOINT_URL", cloud.endpoint_url)
        for key, value in LOCAL_CREDENTIALS.items():
            monkeypatch.setenv(key.upper(), value)
        target.client("s3").create_bucket(Bucket="cosmicai-data")
        yield cloud, target


@pytest.fixture(scope="module")
def cloud() -> Iterator[LocalCloud]:
    """A local cloud shared by a module's tests (a module may define its own instead)."""
    with LocalCloud() as cloud:
        yield cloud


@pytest.fixture(scope="module")
def target(cloud: LocalCloud) -> Target:
    """The platform deployed into the module's local cloud, with the platform defaults."""
    return cloud.deploy()
