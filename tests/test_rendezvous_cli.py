"""`cosmicai rendezvous check|serve`: exit codes, messages, JSON output, signals."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import cosmicai.cli.main as cli_main
from cosmicai.rendezvous.server import RendezvousServer, ServerThread

pytestmark = pytest.mark.timeout(60)

# Only this command group is loaded, so these tests do not depend on other commands' modules.
ONLY_RENDEZVOUS = (
    "import sys, cosmicai.cli.main as m; m.COMMAND_MODULES = {'rendezvous': ('rendezvous',)}; "
)


@pytest.fixture
def cli(monkeypatch, capsys):
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", {"rendezvous": ("rendezvous",)})

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli_main.main(["rendezvous", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@contextmanager
def fake_server(reply: bytes | None) -> Iterator[int]:
    """A TCP server that sends `reply` to every client and closes, or (None) never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if reply is None:
                held.append(conn)
            else:
                conn.sendall(reply)
                conn.close()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join()
        for conn in held:
            conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("protocol", ["legacy", "v2"])
def test_check_ok_prints_and_exits_zero(cli, protocol):
    with ServerThread(RendezvousServer("127.0.0.1", 0, protocol)) as server:
        code, out, err = cli("check", f"127.0.0.1:{server.port}", "--protocol", protocol)
    assert code == 0, err
    assert out.startswith(f"ok: paired through 127.0.0.1:{server.port} ({protocol})")
    assert err == ""


def test_check_json(cli):
    with ServerThread(RendezvousServer("127.0.0.1", 0)) as server:
        code, out, _ = cli("check", f"localhost:{server.port}", "--json")
    result = json.loads(out)
    assert code == 0 and result["ok"] is True and result["error_kind"] is None
    assert result["port"] == server.port and result["protocol"] == "legacy"
    assert result["client_a"].startswith("127.0.0.1:") and result["rtt_ms"] > 0


def test_unreachable_port_exits_3_naming_host_and_port(cli):
    port = free_port()
    code, out, err = cli("check", f"127.0.0.1:{port}", "--timeout", "2")
    assert code == 3
    assert f"127.0.0.1:{port}" in err and "refused" in err
    assert out == "" and "Traceback" not in err


def test_unknown_host_exits_3(cli):
    code, _, err = cli("check", "no-such-host.invalid:10000", "--json")
    assert code == 3
    assert "no-such-host.invalid" in err and "10000" in err


@pytest.mark.parametrize("protocol", ["legacy", "v2"])
def test_server_that_never_pairs_exits_4(cli, protocol):
    with fake_server(None) as port:
        code, out, err = cli(
            "check", f"127.0.0.1:{port}", "--protocol", protocol, "--timeout", "0.5", "--json"
        )
    assert code == 4
    assert json.loads(out)["error_kind"] == "timeout"
    assert f"127.0.0.1:{port}" in err and "0.5 s" in err


@pytest.mark.parametrize(
    ("server_protocol", "client_protocol"), [("v2", "legacy"), ("legacy", "v2")]
)
def test_protocol_mismatch_fails_fast_with_a_hint(cli, server_protocol, client_protocol):
    # the server closes on a client of the other protocol instead of answering it
    server = RendezvousServer("127.0.0.1", 0, server_protocol, read_timeout_s=30)
    with ServerThread(server):
        started = time.monotonic()
        code, _, err = cli(
            "check", f"127.0.0.1:{server.port}", "--protocol", client_protocol, "--timeout", "10"
        )
    assert code == 5 and time.monotonic() - started < 2
    assert f"without replying to our {client_protocol} request" in err
    assert "speaking the same protocol" in err and "Traceback" not in err


@pytest.mark.parametrize("protocol", ["legacy", "v2"])
@pytest.mark.parametrize(
    "garbage",
    [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", b"A" * 16, b"\xff" * 60, b"xyz"],
)
def test_garbage_server_exits_5(cli, protocol, garbage):
    with fake_server(garbage) as port:
        code, out, err = cli("check", f"127.0.0.1:{port}", "--protocol", protocol, "--json")
    assert code == 5, err
    assert json.loads(out)["error_kind"] == "protocol"
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err


@pytest.mark.parametrize("address", ["nocolon", "host:", ":10000", "host:99999", "host:port"])
def test_bad_address_is_a_usage_error(cli, address):
    with pytest.raises(SystemExit) as exit_info:
        cli("check", address)
    assert exit_info.value.code == 2


def test_check_help_documents_exit_codes(cli, capsys):
    with pytest.raises(SystemExit):
        cli("check", "--help")
    text = capsys.readouterr().out
    for line in ("0  the two probe clients", "3  unreachable", "4  timed out", "5  protocol error"):
        assert line in text


def test_serve_port_in_use_exits_1_without_traceback(cli):
    with ServerThread(RendezvousServer("127.0.0.1", 0)) as server:
        code, _, err = cli("serve", "--host", "127.0.0.1", "--port", str(server.port))
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in err and "Traceback" not in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_until_signalled(signum):
    command = [
        sys.executable,
        "-c",
        ONLY_RENDEZVOUS + "sys.exit(m.main(sys.argv[1:]))",
        "rendezvous",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--health-port",
        "0",
        "--protocol",
        "v2",
        "--ttl",
        "30",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            listening = json.loads(proc.stderr.readline())
            assert listening["event"] == "listening" and listening["protocol"] == "v2"
            port, health_port = listening["port"], listening["health_port"]
            check = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    ONLY_RENDEZVOUS + "sys.exit(m.main(sys.argv[1:]))",
                    "rendezvous",
                    "check",
                    f"127.0.0.1:{port}",
                    "--protocol",
                    "v2",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert check.returncode == 0, check.stderr
            conn = http.client.HTTPConnection("127.0.0.1", health_port, timeout=5)
            conn.request("GET", "/health")
            assert json.loads(conn.getresponse().read())["paired_total"] == 1
            proc.send_signal(signum)
            rest = proc.stderr.read()
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
    events = [json.loads(line)["event"] for line in rest.splitlines()]
    assert events == ["paired", "stopped"]
    assert "Traceback" not in rest
