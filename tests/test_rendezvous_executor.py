"""The executor's rendezvous checks before a communicating script: the host name is resolved to
the IPv4 address FMI's TCPunch client needs, and the image's client protocol
(COSMICAI_TCPUNCH_PROTOCOL) is checked against the server's before the rank runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cosmicai.pipeline.executor import RankTask, _communication_env
from cosmicai.rendezvous.probe import RendezvousError, resolve_ipv4
from cosmicai.rendezvous.server import RendezvousServer, ServerThread

pytestmark = pytest.mark.timeout(60)

TASK = RankTask(
    run_id="r1", bucket="b", world_size=2, rank=0, files=[], settings={"communication": True}
)


@pytest.fixture
def environment(monkeypatch):
    for name in ("COSMICAI_STORE_HOST", "COSMICAI_STORE_PORT", "COSMICAI_TCPUNCH_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RENDEZVOUS_DEADLINE_S", "5")

    def set_rendezvous(host: str, port: int, protocol: str, client: str | None = None) -> None:
        monkeypatch.setenv("RENDEZVOUS_HOST", host)
        monkeypatch.setenv("RENDEZVOUS_PORT", str(port))
        monkeypatch.setenv("RENDEZVOUS_PROTOCOL", protocol)
        if client is not None:
            monkeypatch.setenv("COSMICAI_TCPUNCH_PROTOCOL", client)

    return set_rendezvous


def serve(protocol: str) -> ServerThread:
    return ServerThread(RendezvousServer("127.0.0.1", 0, protocol, read_timeout_s=30))


@pytest.mark.parametrize("protocol", ["legacy", "v2"])
def test_host_name_reaches_fmi_as_an_ipv4_address(environment, tmp_path: Path, protocol):
    with serve(protocol) as server:
        environment("localhost", server.port, protocol, client=protocol)
        env = _communication_env(TASK, tmp_path)
        assert server.stats.paired_total == 1  # the probe paired through it
    config = json.loads(Path(env["FMI_CONFIG"]).read_text())
    assert config["backends"]["Direct"]["host"] == "127.0.0.1"
    assert config["backends"]["Direct"]["port"] == server.port


@pytest.mark.parametrize(("server_protocol", "client"), [("v2", "legacy"), ("legacy", "v2")])
def test_client_of_the_other_protocol_fails_the_rank_naming_both(
    environment, tmp_path: Path, server_protocol, client
):
    with serve(server_protocol) as server:
        # Terraform's rendezvous_protocol says the server speaks what the image does
        environment("127.0.0.1", server.port, client, client=client)
        started = time.monotonic()
        with pytest.raises(RendezvousError) as failure:
            _communication_env(TASK, tmp_path)
        assert time.monotonic() - started < 3
    assert str(failure.value).startswith(
        f"the executor's TCPunch client speaks {client} but the rendezvous server at "
        f"127.0.0.1:{server.port} speaks {server_protocol}: rebuild the image with TCPUNCH_REF "
        f"of a {server_protocol} revision"
    )
    assert f'rendezvous_protocol = "{client}"' in str(failure.value)
    assert not (tmp_path / "fmi.json").exists()


def test_without_the_image_protocol_a_mismatch_is_a_plain_probe_failure(
    environment, tmp_path: Path
):
    with serve("v2") as server:
        environment("127.0.0.1", server.port, "legacy")
        with pytest.raises(RendezvousError) as failure:
            _communication_env(TASK, tmp_path)
    assert failure.value.kind == "protocol"
    assert f"rendezvous server at 127.0.0.1:{server.port} (legacy protocol)" in str(failure.value)
    assert "TCPUNCH_REF" not in str(failure.value)


def test_unresolvable_rendezvous_host_fails_the_rank_naming_it(environment, tmp_path: Path):
    environment("no-such-host.invalid", 10000, "legacy", client="legacy")
    with pytest.raises(RendezvousError, match=r"'no-such-host\.invalid' to an IPv4 address"):
        _communication_env(TASK, tmp_path)
    assert not (tmp_path / "fmi.json").exists()


def test_resolve_ipv4_keeps_addresses():
    assert resolve_ipv4("10.0.0.5", 10000) == "10.0.0.5"
    assert resolve_ipv4("localhost", 10000) == "127.0.0.1"
