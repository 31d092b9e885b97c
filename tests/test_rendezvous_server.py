"""The asyncio rendezvous server, driven by raw sockets (hand-built bytes) and by the probe."""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from cosmicai.errors import CosmicAIError
from cosmicai.logs import JsonFormatter
from cosmicai.rendezvous.probe import RendezvousError, check, connect_and_pair
from cosmicai.rendezvous.server import RendezvousServer, ServerThread

pytestmark = pytest.mark.timeout(60)

PROTOCOLS = ["legacy", "v2"]


def serve(**kwargs) -> ServerThread:
    kwargs.setdefault("host", "127.0.0.1")
    kwargs.setdefault("port", 0)
    return ServerThread(RendezvousServer(**kwargs))


def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --- a raw client, independent of cosmicai.rendezvous.protocol ------------------------------


class Raw:
    def __init__(self, port: int, timeout_s: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        host, local_port = self.sock.getsockname()
        self.address = (host, local_port)

    def recv_exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, f"connection closed after {len(data)} of {size} bytes"
            data += chunk
        return data

    def at_eof(self) -> bool:
        return self.sock.recv(1) == b""

    def legacy_reply(self) -> tuple[str, int]:
        ip, port, pad = struct.unpack("!4sHH", self.recv_exact(8))
        assert pad == 0
        return socket.inet_ntoa(ip), port

    def request(self, protocol: str, name: bytes) -> None:
        if protocol == "legacy":
            self.sock.sendall(name)
        else:
            self.v2_send(name)

    def v2_send(self, name: bytes, token: bytes = b"", flags: int = 0) -> None:
        self.sock.sendall(struct.pack("<100s37sI", name, token, flags))

    def v2_reply(self) -> tuple[int, tuple[str, int], tuple[str, int], str]:
        status, you, you_port, peer, peer_port, token = struct.unpack(
            "!B4sH4sH37s", self.recv_exact(50)
        )
        return (
            status,
            (socket.inet_ntoa(you), you_port),
            (socket.inet_ntoa(peer), peer_port),
            token.rstrip(b"\0").decode(),
        )

    def close(self) -> None:
        self.sock.close()


# --- wire behaviour -------------------------------------------------------------------------


def test_legacy_exchange_on_the_wire():
    with serve(protocol="legacy") as server:
        a = Raw(server.port)
        a.sock.sendall(b"pair-x")  # the upstream client: raw name, no terminator
        assert a.legacy_reply() == a.address  # own public address at once
        wait_until(lambda: server.pending == 1)
        b = Raw(server.port)
        b.sock.sendall(b"pair-x".ljust(100, b"\0"))  # a NUL-padded 100-byte field also works
        assert b.legacy_reply() == b.address
        assert b.legacy_reply() == a.address
        assert a.legacy_reply() == b.address
        assert a.at_eof() and b.at_eof()
        assert server.pending == 0 and server.stats.paired_total == 1


def test_v2_exchange_on_the_wire():
    with serve(protocol="v2") as server:
        a = Raw(server.port)
        a.v2_send(b"pair-y")
        status, you, peer, token = a.v2_reply()
        assert (status, you, peer) == (0, a.address, ("0.0.0.0", 0))
        uuid.UUID(token)
        b = Raw(server.port)
        b.v2_send(b"pair-y", flags=0xFFFFFFFF)
        status, you, peer, b_token = b.v2_reply()
        assert (status, you, peer) == (1, b.address, a.address)
        uuid.UUID(b_token)
        assert a.v2_reply() == (1, a.address, b.address, token)  # same token as `waiting`
        assert a.at_eof() and b.at_eof()


def test_v2_bad_token_gets_status_error():
    with serve(protocol="v2") as server:
        client = Raw(server.port)
        client.v2_send(b"name", token=b"not-a-uuid")
        status, you, peer, token = client.v2_reply()
        assert (status, you, peer, token) == (3, client.address, ("0.0.0.0", 0), "")
        assert client.at_eof()
        assert server.stats.rejected_total == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_probe_end_to_end(protocol):
    with serve(protocol=protocol) as server:
        result = check("127.0.0.1", server.port, protocol=protocol, timeout_s=5)
        assert result.ok, result.error
        assert result.error_kind is None and result.exit_code == 0
        assert result.rtt_ms is not None and result.rtt_ms > 0
        a, b = result.client_a, result.client_b
        assert a != b and a.startswith("127.0.0.1:") and b.startswith("127.0.0.1:")
        assert result.to_dict()["client_a"] == a
        assert server.stats.paired_total == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_100_concurrent_pairs_each_get_their_own_peer(protocol):
    pairs = 100

    def client(port: int, name: str) -> tuple[tuple[str, int], tuple[str, int]]:
        raw = Raw(port, timeout_s=20)
        try:
            if protocol == "legacy":
                raw.sock.sendall(name.encode())
                assert raw.legacy_reply() == raw.address
                return raw.address, raw.legacy_reply()
            raw.v2_send(name.encode())
            status, you, peer, _ = raw.v2_reply()
            if status == 0:
                status, you, peer, _ = raw.v2_reply()
            assert status == 1 and you == raw.address
            return raw.address, peer
        finally:
            raw.close()

    names = [f"rank-pair-{i}" for i in range(pairs) for _ in range(2)]
    random.Random(7).shuffle(names)
    with serve(protocol=protocol) as server, ThreadPoolExecutor(2 * pairs) as pool:
        results = list(pool.map(lambda n: client(server.port, n), names))
        assert server.stats.paired_total == pairs
    by_name: dict[str, list] = {}
    for name, result in zip(names, results, strict=True):
        by_name.setdefault(name, []).append(result)
    assert len({own for own, _ in results}) == 2 * pairs
    for (a_own, a_peer), (b_own, b_peer) in by_name.values():
        assert a_peer == b_own and b_peer == a_own


# --- a client of the other protocol ---------------------------------------------------------


def _closes_without_reply(raw: Raw, within_s: float) -> None:
    started = time.monotonic()
    raw.sock.settimeout(within_s)
    assert raw.sock.recv(100) == b"", "the server replied instead of closing"
    assert time.monotonic() - started < within_s


def test_v2_server_closes_on_a_legacy_client_without_a_reply(caplog):
    caplog.set_level(logging.WARNING, logger="cosmicai.rendezvous")
    with serve(protocol="v2", read_timeout_s=30) as server:
        client = Raw(server.port)
        client.sock.sendall(b"rank-0-1")  # the legacy client: a bare name, then it waits
        _closes_without_reply(client, 2.0)
        assert server.stats.mismatched_total == 1 and server.pending == 0
        assert check("127.0.0.1", server.port, protocol="v2").ok
    (line,) = [_line(r) for r in caplog.records]
    assert line["event"] == "protocol_mismatch" and line["client"] == "{}:{}".format(
        *client.address
    )
    assert "client speaks legacy TCPunch but this server runs --protocol v2" in line["message"]


def test_legacy_server_closes_on_a_v2_client_without_a_reply(caplog):
    caplog.set_level(logging.WARNING, logger="cosmicai.rendezvous")
    with serve(protocol="legacy") as server:
        client = Raw(server.port)
        client.v2_send(b"rank-0-1", token=str(uuid.uuid4()).encode())
        _closes_without_reply(client, 2.0)
        assert server.stats.mismatched_total == 1 and server.pending == 0
    (line,) = [_line(r) for r in caplog.records]
    assert "client speaks TCPunch v2 but this server runs --protocol legacy" in line["message"]


@pytest.mark.parametrize(
    ("server_protocol", "client_protocol"), [("v2", "legacy"), ("legacy", "v2")]
)
def test_mismatched_probe_fails_fast_as_a_protocol_error(server_protocol, client_protocol):
    with serve(protocol=server_protocol, read_timeout_s=30) as server:
        started = time.monotonic()
        result = check("127.0.0.1", server.port, protocol=client_protocol, timeout_s=10)
        assert time.monotonic() - started < 2
        assert result.error_kind == "protocol", result.error
        assert "without replying to our" in result.error
        assert server.stats.mismatched_total == 2 and server.stats.paired_total == 0


def test_v2_request_split_inside_the_name_is_still_v2():
    with serve(protocol="v2") as server:
        request = struct.pack("<100s37sI", b"split-name", b"", 0)
        a = Raw(server.port)
        a.sock.sendall(request[:4])  # looks like a legacy name so far
        time.sleep(0.05)
        a.sock.sendall(request[4:])
        assert a.v2_reply()[0] == 0
        b = Raw(server.port)
        b.v2_send(b"split-name")
        assert b.v2_reply()[:3] == (1, b.address, a.address)
        assert server.stats.mismatched_total == 0


def test_legacy_server_rejects_a_141_byte_name_that_is_no_v2_request():
    with serve(protocol="legacy") as server:
        client = Raw(server.port)
        client.sock.sendall(b"n" * 141)  # as long as a v2 request, but not one
        assert client.at_eof()
        assert server.stats.rejected_total == 1 and server.stats.mismatched_total == 0


# --- expiry, abandonment, limits ------------------------------------------------------------


def test_v2_unpaired_entry_expires_with_status_timeout():
    with serve(protocol="v2", ttl_s=0.3) as server:
        client = Raw(server.port)
        client.v2_send(b"lonely")
        status, _, _, token = client.v2_reply()
        assert status == 0
        started = time.monotonic()
        assert client.v2_reply() == (2, client.address, ("0.0.0.0", 0), token)
        assert time.monotonic() - started >= 0.2
        assert client.at_eof()
        assert server.pending == 0 and server.stats.expired_total == 1
        # the name can pair again
        assert check("127.0.0.1", server.port, protocol="v2").ok


def test_legacy_unpaired_entry_expires_and_is_closed():
    with serve(protocol="legacy", ttl_s=0.3) as server:
        client = Raw(server.port)
        client.sock.sendall(b"lonely")
        assert client.legacy_reply() == client.address
        assert client.at_eof()
        assert server.pending == 0 and server.stats.expired_total == 1


def test_v2_client_outlasting_the_ttl_is_paired_after_reconnecting():
    with serve(protocol="v2", ttl_s=0.2) as server, ThreadPoolExecutor(1) as pool:
        early = pool.submit(connect_and_pair, "127.0.0.1", server.port, "late", "v2", 5.0)
        wait_until(lambda: server.stats.expired_total >= 2)
        late = connect_and_pair("127.0.0.1", server.port, "late", "v2", 5.0)
        assert early.result().peer == late.you and late.peer == early.result().you


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_vanished_client_entry_is_removed_and_name_pairs_again(protocol):
    with serve(protocol=protocol) as server:
        client = Raw(server.port)
        client.request(protocol, b"same-name")
        wait_until(lambda: server.pending == 1)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST: gone mid-wait
        wait_until(lambda: server.pending == 0)
        assert server.stats.abandoned_total == 1
        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(
                lambda _: connect_and_pair("127.0.0.1", server.port, "same-name", protocol, 5.0),
                range(2),
            )
        assert a.peer == b.you and b.peer == a.you


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_connection_limit_refuses_cleanly(protocol):
    with serve(protocol=protocol, max_connections=2) as server:
        holders = [Raw(server.port) for _ in range(2)]
        for i, holder in enumerate(holders):
            holder.request(protocol, f"wait-{i}".encode())
        wait_until(lambda: server.pending == 2)
        extra = Raw(server.port)
        if protocol == "v2":
            assert extra.v2_reply()[0] == 3
        assert extra.at_eof()
        with pytest.raises(RendezvousError) as failure:
            connect_and_pair("127.0.0.1", server.port, "x", protocol, 2.0)
        assert failure.value.kind == "protocol"
        assert server.stats.refused_total == 2
        for holder in holders:
            holder.close()
        wait_until(lambda: server.pending == 0)
        assert check("127.0.0.1", server.port, protocol=protocol).ok


# The server in a subprocess under a 128-descriptor limit, its log (stderr) in a file.
_LOW_FD_SERVER = (
    "import resource, sys; _, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard)); import cosmicai.cli.main as m; "
    "m.COMMAND_MODULES = {'rendezvous': ('rendezvous',)}; sys.exit(m.main(sys.argv[1:]))"
)


@contextmanager
def low_fd_server(log_path: Path, *args: str) -> Iterator[dict]:
    """`cosmicai rendezvous serve` with RLIMIT_NOFILE 128; yields its `listening` event."""
    command = [sys.executable, "-c", _LOW_FD_SERVER, "rendezvous", "serve", "--host", "127.0.0.1"]
    command += ["--port", "0", "--health-port", "0", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log, subprocess.Popen(command, stderr=log, env=env) as proc:
        try:
            wait_until(lambda: log_path.read_text().endswith("\n"), timeout_s=20)
            yield json.loads(log_path.read_text().splitlines()[0])
            proc.terminate()
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()


def _pair_two(port: int, timeout_s: float) -> list:
    with ThreadPoolExecutor(2) as pool:
        return list(
            pool.map(
                lambda _: connect_and_pair("127.0.0.1", port, "fd-pair", "legacy", timeout_s), "ab"
            )
        )


def _line(record: logging.LogRecord) -> dict:
    """A captured record as the JSON line `cosmicai.logs` writes for it."""
    return json.loads(JsonFormatter().format(record))


def _epoch_s(line: dict) -> float:
    return datetime.strptime(line["timestamp"], "%Y-%m-%d %H:%M:%S,%f%z").timestamp()


def _assert_small_clean_log(log_path: Path) -> list[dict]:
    text = log_path.read_text()
    assert "Traceback" not in text and "Errno 24" not in text
    lines = text.splitlines()
    assert len(lines) < 40, lines[:40]
    return [json.loads(line) for line in lines]


def test_idle_health_connections_cannot_starve_pairing_under_a_low_fd_limit(tmp_path):
    # Reproduces issue 11: 150 idle health connections under 128 descriptors made pairing time
    # out and the log fill with thousands of EMFILE tracebacks within seconds.
    log_path = tmp_path / "server.log"
    with low_fd_server(log_path) as listening:
        assert listening["max_connections"] == 64
        idle = [Raw(listening["health_port"]) for _ in range(150)]
        try:
            started = time.monotonic()
            a, b = _pair_two(listening["port"], 5.0)
            assert a.peer == b.you and time.monotonic() - started < 2
            assert sum(raw.at_eof() for raw in idle[-50:]) == 50  # over the health share: closed
        finally:
            for raw in idle:
                raw.close()
        assert _http(listening["health_port"], "GET", "/readyz")[0] == 200
    events = _assert_small_clean_log(log_path)
    assert events[-1]["event"] == "stopped" and events[-1]["accept_errors_total"] == 0
    assert events[-1]["refused_total"] >= 50


def test_out_of_descriptors_backs_off_quietly_and_pairs_once_they_free(tmp_path):
    # A cap above what the descriptor limit allows: accept fails with EMFILE.
    log_path = tmp_path / "server.log"
    with low_fd_server(log_path, "--max-connections", "1000", "--read-timeout", "30") as listening:
        idle = [Raw(listening["health_port"]) for _ in range(150)]
        wait_until(lambda: "accept_failed" in log_path.read_text())
        time.sleep(1.2)  # long enough for a spinning accept loop to show in the log
        for raw in idle:
            raw.close()
        a, b = _pair_two(listening["port"], 5.0)
        assert a.peer == b.you
    events = _assert_small_clean_log(log_path)
    failures = [e for e in events if e["event"] == "accept_failed"]
    assert failures[0]["error"] == "EMFILE"
    span_s = _epoch_s(events[-1]) - _epoch_s(failures[0])
    assert len(failures) <= span_s + 1  # at most one line a second
    # retried every 0.1 s while out of descriptors (over a second), never in a tight loop
    assert 5 <= events[-1]["accept_errors_total"] <= span_s * 10 + 5
    assert sum(e.get("suppressed", 0) for e in failures) >= 4


def test_pending_limit_refuses_new_names_but_pairs_existing_ones():
    with serve(protocol="v2", max_pending=1) as server:
        waiting = Raw(server.port)
        waiting.v2_send(b"first")
        assert waiting.v2_reply()[0] == 0
        other = Raw(server.port)
        other.v2_send(b"second")
        assert other.v2_reply()[0] == 3
        partner = Raw(server.port)
        partner.v2_send(b"first")
        assert partner.v2_reply()[:3] == (1, partner.address, waiting.address)
        assert server.stats.refused_total == 1


# --- robustness -----------------------------------------------------------------------------


def _malformed(port: int, protocol: str, seed: int) -> None:
    rng = random.Random(seed)
    kind = seed % 6
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        if kind == 0:  # random bytes
            sock.sendall(rng.randbytes(rng.randint(1, 300)))
        elif kind == 1:  # truncated request (legacy: a name cut inside a UTF-8 sequence)
            whole = struct.pack("<100s37sI", b"trunc", b"", 0)
            sock.sendall(whole[: rng.randint(1, 140)] if protocol == "v2" else b"abc\xe2\x82")
        elif kind == 2:  # oversized name
            sock.sendall(b"n" * rng.randint(101, 2000) if protocol == "legacy" else b"n" * 400)
        elif kind == 3:  # abrupt close with RST after part of a request
            sock.sendall(rng.randbytes(rng.randint(0, 50)))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif kind == 4:  # empty and invalid UTF-8 names, bad tokens; read the server's answer
            name, token = rng.choice(
                [(b"\0name", b""), (b"\xff\xfe", b""), (b"ok", b"zzz"), (b"ok", b"\xff" * 36)]
            )
            if protocol == "legacy":
                sock.sendall(name if token == b"" else b"\xc0" + name)
            else:
                sock.sendall(struct.pack("<100s37sI", name, token, 0))
            sock.settimeout(2)
            while sock.recv(4096):  # read whatever the server answers until it closes
                pass
        # kind 5: connect and close without a byte
    except OSError:
        pass  # the server may already have closed on us
    finally:
        sock.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_survives_1000_malformed_requests(protocol, caplog):
    caplog.set_level(logging.DEBUG)
    with serve(protocol=protocol, read_timeout_s=0.5, health_port=0) as server:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda seed: _malformed(server.port, protocol, seed), range(1000)))
        result = check("127.0.0.1", server.port, protocol=protocol, timeout_s=5)
        assert result.ok, result.error
        conn = http.client.HTTPConnection("127.0.0.1", server.health_port, timeout=5)
        conn.request("GET", "/health")
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["paired_total"] == 1
        wait_until(lambda: server.pending == 0 and server.health()["connections"] == 0)
        assert server.stats.rejected_total >= 500
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# --- health endpoint ------------------------------------------------------------------------


def _http(port: int, method: str, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path)
    response = conn.getresponse()
    body = response.read()
    assert response.getheader("Content-Type") == "application/json"
    return response.status, json.loads(body) if body else {}


def test_health_endpoint_reports_live_figures():
    with serve(protocol="v2", health_port=0) as server:
        assert server.health_port not in (None, 0, server.port)
        status, body = _http(server.health_port, "GET", "/health")
        assert status == 200
        assert body["status"] == "ok" and body["protocol"] == "v2"
        assert (body["pending"], body["paired_total"], body["expired_total"]) == (0, 0, 0)
        assert body["uptime_s"] >= 0
        waiting = Raw(server.port)
        waiting.v2_send(b"health-wait")
        assert waiting.v2_reply()[0] == 0
        assert _http(server.health_port, "GET", "/health?verbose=1")[1]["pending"] == 1
        assert check("127.0.0.1", server.port, protocol="v2").ok
        assert _http(server.health_port, "GET", "/health")[1]["paired_total"] == 1
        assert _http(server.health_port, "GET", "/metrics")[0] == 404
        assert _http(server.health_port, "POST", "/health")[0] == 405
        assert _http(server.health_port, "HEAD", "/health") == (200, {})
        raw = socket.create_connection(("127.0.0.1", server.health_port), timeout=5)
        raw.sendall(b"\x16\x03\x01garbage\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400 ")


def test_livez_and_readyz():
    with serve(protocol="legacy", health_port=0, max_connections=2) as server:
        assert _http(server.health_port, "GET", "/livez") == (200, {"status": "alive"})
        status, body = _http(server.health_port, "GET", "/readyz")
        assert status == 200 and body["status"] == "ready" and body["max_connections"] == 2
        assert _http(server.health_port, "HEAD", "/readyz") == (200, {})
        assert _http(server.health_port, "POST", "/livez")[0] == 405
        status, body = _http(server.health_port, "GET", "/healthz")
        assert status == 404 and "/livez, /readyz, /health" in body["error"]
        waiting = Raw(server.port)
        waiting.sock.sendall(b"holds-a-slot")
        assert waiting.legacy_reply() == waiting.address
        status, body = _http(server.health_port, "GET", "/readyz")  # its own slot is the last
        assert status == 503 and body == {
            "status": "not ready",
            "reason": "all 2 connections in use",
        }
        assert _http(server.health_port, "GET", "/livez")[0] == 200


def test_idle_health_clients_hold_at_most_a_quarter_of_the_cap_and_time_out():
    with serve(protocol="v2", health_port=0, max_connections=8, read_timeout_s=0.5) as server:
        idle = [Raw(server.health_port) for _ in range(2)]
        wait_until(lambda: server.health()["connections"] == 2)
        refused = Raw(server.health_port)
        assert refused.at_eof()  # the health share (8 // 4) is taken: closed at once
        assert check("127.0.0.1", server.port, protocol="v2").ok  # pairing is not crowded out
        started = time.monotonic()
        assert all(raw.at_eof() for raw in idle)  # closed by the read timeout
        assert time.monotonic() - started < 2
        assert _http(server.health_port, "GET", "/livez")[0] == 200
        assert server.stats.refused_total == 1


def test_oversized_health_request_is_answered_431():
    with serve(health_port=0) as server:
        raw = Raw(server.health_port)
        raw.sock.sendall(b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n")
        assert raw.recv_exact(12) == b"HTTP/1.1 431"


def test_health_endpoint_is_off_by_default():
    with serve() as server:
        assert server.health_port is None


# --- lifecycle and configuration ------------------------------------------------------------


def test_stop_closes_waiting_clients_and_frees_the_port():
    thread = serve(protocol="legacy")
    server = thread.start()
    client = Raw(server.port)
    client.sock.sendall(b"waiting")
    assert client.legacy_reply() == client.address
    port = server.port
    thread.stop()
    assert client.at_eof()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_port_in_use_is_an_actionable_error():
    with serve() as server, pytest.raises(CosmicAIError, match=f"{server.port}.*another port"):
        serve(port=server.port).start()


@pytest.mark.parametrize(
    "kwargs",
    [{"protocol": "v3"}, {"port": 70000}, {"ttl_s": 0}, {"max_pending": 0}, {"health_port": -1}],
)
def test_bad_configuration_is_rejected(kwargs):
    with pytest.raises(CosmicAIError):
        RendezvousServer(**kwargs)


def test_pairings_and_expiries_are_logged_as_json_lines(caplog):
    caplog.set_level(logging.INFO, logger="cosmicai.rendezvous")
    with serve(protocol="legacy", ttl_s=0.2) as server:
        assert check("127.0.0.1", server.port).ok
        lonely = Raw(server.port)
        lonely.sock.sendall(b"alone")
        assert lonely.legacy_reply() == lonely.address and lonely.at_eof()
    events = [_line(r) for r in caplog.records if r.name == "cosmicai.rendezvous"]
    by_event = {e["event"]: e for e in events}
    assert {"listening", "paired", "expired", "stopped"} <= by_event.keys()
    assert by_event["paired"]["pairing"].startswith("cosmicai-probe-")
    assert by_event["expired"]["client"] == "{}:{}".format(*lonely.address)
    assert by_event["stopped"]["paired_total"] == 1


# --- the single-client helper ---------------------------------------------------------------


@pytest.mark.parametrize("host", ["10.255.255.1", "127.0.0.1"])
def test_unreachable_rendezvous_fails_within_the_deadline(host):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    started = time.monotonic()
    with pytest.raises(RendezvousError) as failure:
        connect_and_pair(host, port, "rank-0", "legacy", timeout_s=1.0)
    assert time.monotonic() - started < 3.0
    assert failure.value.kind == "unreachable" and failure.value.exit_code == 3
    assert f"{host}:{port}" in str(failure.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_lonely_client_times_out_naming_its_pairing_name(protocol):
    with serve(protocol=protocol) as server:
        with pytest.raises(RendezvousError) as failure:
            connect_and_pair("127.0.0.1", server.port, "nobody-else", protocol, timeout_s=0.3)
        assert failure.value.kind == "timeout" and failure.value.exit_code == 4
        assert "'nobody-else'" in str(failure.value)
        wait_until(lambda: server.pending == 0)  # the abandoned entry is gone


def test_bad_names_are_the_callers_error_before_any_connection():
    with pytest.raises(CosmicAIError, match="limit is 99") as failure:
        connect_and_pair("127.0.0.1", 1, "n" * 100, "v2")
    assert not isinstance(failure.value, RendezvousError)
    with pytest.raises(CosmicAIError, match="empty"):
        connect_and_pair("127.0.0.1", 1, "", "legacy")
