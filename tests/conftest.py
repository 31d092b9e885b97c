"""Fixtures shared by test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.localcloud.server import LOCAL_CREDENTIALS
from cosmicai.target import Target


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
