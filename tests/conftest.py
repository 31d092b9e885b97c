"""Fixtures shared by test modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.localcloud.server import LOCAL_CREDENTIALS
from cosmicai.target import Target

ROOT = Path(__file__).resolve().parents[1]
# Stands in for a command (docker, terraform) in a workflow step: logs each call (command, argv,
# stdin) as a JSON line; as docker, answers `image inspect` and `run` with the sizes a test sets.
FAKE_COMMAND = f"""#!{sys.executable}
import json, os, sys
command, args, stdin = os.path.basename(sys.argv[0]), sys.argv[1:], sys.stdin.read()
with open(os.environ["FAKE_COMMAND_LOG"], "a") as log:
    log.write(json.dumps({{"command": command, "args": args, "stdin": stdin}}) + "\\n")
if command != "docker":
    pass
elif args[:2] == ["image", "inspect"]:
    print(os.environ["FAKE_DOCKER_IMAGE_BYTES"])
elif args[:1] == ["run"]:
    print(json.dumps({{"total": int(os.environ["FAKE_DOCKER_PYTHON_BYTES"])}}))
"""


@dataclass(frozen=True)
class StepRun:
    """A workflow step's shell script run locally: its exit status, output and faked calls."""

    returncode: int
    output: str
    calls: list[dict[str, Any]]

    def of(self, command: str) -> list[dict[str, Any]]:
        """The calls of one faked command."""
        return [call for call in self.calls if call["command"] == command]


@pytest.fixture
def run_step(tmp_path: Path) -> Callable[..., StepRun]:
    """Run a workflow step's `run:` script as GitHub's default bash shell does (-eo pipefail),
    in the repository root, with `env` set and the `fake` commands replaced by FAKE_COMMAND."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    log = tmp_path / "fake-calls.jsonl"

    def run(script: str, env: dict[str, str], fake: tuple[str, ...] = ("docker",)) -> StepRun:
        log.unlink(missing_ok=True)
        for command in fake:
            (bin_dir / command).write_text(FAKE_COMMAND)
            (bin_dir / command).chmod(0o755)
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            cwd=ROOT,
            env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_COMMAND_LOG": str(log), **env},
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
