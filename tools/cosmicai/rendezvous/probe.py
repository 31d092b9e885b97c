"""Rendezvous clients: one pairing (`connect_and_pair`) and an end-to-end probe (`check`).

Blocking sockets bounded by one deadline, so callers without an event loop (the executor,
the CLI) can use them. Failures are `RendezvousError`s whose `kind` tells them apart:
`unreachable` (no connection: refused, DNS, no route, connect timeout), `timeout` (connected
but no pairing before the deadline) and `protocol` (the server's bytes are not a valid reply).
"""

from __future__ import annotations

import ipaddress
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from cosmicai.errors import CosmicAIError
from cosmicai.rendezvous.protocol import (
    LEGACY_REPLY_SIZE,
    PROTOCOLS,
    V2_RESPONSE_SIZE,
    Endpoint,
    ProtocolError,
    V2Request,
    V2Status,
    check_protocol,
    decode_legacy_reply,
    decode_v2_response,
    encode_legacy_request,
    encode_v2_request,
)

EXIT_CODES = {"unreachable": 3, "timeout": 4, "protocol": 5}
# When the two probe clients fail differently, the most telling failure is reported.
_SEVERITY = ("unreachable", "protocol", "timeout")


class RendezvousError(CosmicAIError):
    """A pairing failed; `kind` is one of `EXIT_CODES`, which also gives `exit_code`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.exit_code = EXIT_CODES[kind]


@dataclass(frozen=True)
class Pairing:
    """A completed pairing: our address and the peer's, as the server observed them."""

    you: Endpoint
    peer: Endpoint
    token: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of `check`. `rtt_ms`: wall time from the first connect until both probe
    clients knew their peer; `client_a`/`client_b`: each client's ip:port as the server saw
    it; on failure `error_kind` (a key of `EXIT_CODES`) and an actionable `error`."""

    ok: bool
    host: str
    port: int
    protocol: str
    rtt_ms: float | None = None
    client_a: str | None = None
    client_b: str | None = None
    error_kind: str | None = None
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.error_kind] if self.error_kind else 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class _Session:
    """One connection to the rendezvous server, every wait bounded by a shared deadline."""

    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        protocol: str,
        deadline: float,
        timeout_s: float,
        replied: bool = False,
    ) -> None:
        self.where = f"{host}:{port}"
        self.name = name
        self.protocol = protocol
        self.replied = replied  # the server has answered this pairing attempt before
        self.deadline = deadline
        self.timeout_s = timeout_s
        try:
            self.sock = socket.create_connection((host, port), timeout=self._remaining())
        except socket.gaierror as err:
            raise RendezvousError(
                "unreachable",
                f"cannot resolve rendezvous host {host!r} (port {port}): {err.strerror}; "
                "check the host name",
            ) from err
        except TimeoutError as err:
            raise RendezvousError(
                "unreachable",
                f"rendezvous server {self.where} did not accept a connection within "
                f"{timeout_s:g} s; check the address and that a firewall or security group "
                "lets the port through",
            ) from err
        except OSError as err:
            raise RendezvousError(
                "unreachable",
                f"cannot connect to rendezvous server {self.where}: {err.strerror or err}; "
                "is `cosmicai rendezvous serve` running there and the port open?",
            ) from err

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out()
        return left

    def _timed_out(self) -> RendezvousError:
        if not self.replied:
            return RendezvousError(
                "timeout",
                f"rendezvous server {self.where} accepted the connection but sent no reply "
                f"within {self.timeout_s:g} s; is it a {self.protocol} rendezvous server?",
            )
        return RendezvousError(
            "timeout",
            f"no peer paired with name {self.name!r} through {self.where} within "
            f"{self.timeout_s:g} s; is the other side running with the same name and protocol?",
        )

    def broken(self, what: str) -> RendezvousError:
        return RendezvousError(
            "protocol",
            f"rendezvous server {self.where} {what}; check that it is a rendezvous server "
            "speaking the same protocol (legacy or v2) and not over its connection limit",
        )

    def send(self, data: bytes) -> None:
        try:
            self.sock.settimeout(self._remaining())
            self.sock.sendall(data)
        except TimeoutError as err:
            raise self._timed_out() from err
        except OSError as err:
            raise self.broken(f"dropped the connection while we sent the request ({err})") from err

    def recv_exact(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            try:
                self.sock.settimeout(self._remaining())
                chunk = self.sock.recv(size - len(data))
            except TimeoutError as err:
                raise self._timed_out() from err
            except OSError as err:
                raise self.broken(f"reset the connection ({err})") from err
            if not chunk and not data and not self.replied:
                raise self.broken(
                    f"closed the connection without replying to our {self.protocol} request "
                    "(as a server of the other protocol does)"
                )
            if not chunk:
                raise self.broken(
                    f"closed the connection after {len(data)} of the {size} bytes of a reply"
                )
            data += chunk
        self.replied = True
        return bytes(data)

    def expect_end(self) -> None:
        """After the last reply the server closes; bytes already following it are garbage."""
        try:
            extra = self.sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
        except OSError:
            return  # nothing buffered (BlockingIOError) or the connection is already gone
        if extra:
            raise self.broken("sent more bytes than the protocol's replies")

    def check(self, pairing: Pairing) -> Pairing:
        for role, endpoint in (("our", pairing.you), ("the peer's", pairing.peer)):
            ip = ipaddress.IPv4Address(endpoint.ip)
            if endpoint.port == 0 or ip.is_unspecified or ip.is_multicast or ip.is_reserved:
                raise self.broken(f"reported {role} address as {endpoint}, which is not usable")
        if pairing.you == pairing.peer:
            raise self.broken(f"reported the same address {pairing.you} for us and the peer")
        self.expect_end()
        return pairing

    def close(self) -> None:
        self.sock.close()


def _pair_legacy(session: _Session) -> Pairing:
    session.send(encode_legacy_request(session.name))
    you = decode_legacy_reply(session.recv_exact(LEGACY_REPLY_SIZE))
    peer = decode_legacy_reply(session.recv_exact(LEGACY_REPLY_SIZE))
    return session.check(Pairing(you, peer))


def _pair_v2(session: _Session, token: str | None) -> tuple[Pairing | None, str | None]:
    """One v2 request: the pairing, or (None, token to retry with) on status 2 (timeout)."""
    session.send(encode_v2_request(V2Request(session.name, token)))
    response = decode_v2_response(session.recv_exact(V2_RESPONSE_SIZE))
    if response.status == V2Status.WAITING:
        response = decode_v2_response(session.recv_exact(V2_RESPONSE_SIZE))
        if response.status == V2Status.WAITING:
            raise ProtocolError("status 0 (waiting) came twice")
    if response.status == V2Status.ERROR:
        raise session.broken("answered status 3 (error): it rejected the request")
    if response.status == V2Status.TIMEOUT:
        return None, response.token or token
    if response.peer is None:
        raise ProtocolError("status 1 (paired) came without a peer address")
    return session.check(Pairing(response.you, response.peer, response.token)), None


def connect_and_pair(
    host: str, port: int, name: str, protocol: str = "legacy", timeout_s: float = 5.0
) -> Pairing:
    """Register `name` with the rendezvous at `host:port` and wait for the peer.

    v2: on status 2 (the server gave up waiting) the request is repeated with the issued
    reconnect token until `timeout_s` is spent. Raises `RendezvousError` (module docstring).
    """
    # A bad name is the caller's error (ProtocolError), raised before any connection.
    if check_protocol(protocol) == "legacy":
        encode_legacy_request(name)
    else:
        encode_v2_request(V2Request(name))
    deadline = time.monotonic() + timeout_s
    token: str | None = None
    while True:
        session = _Session(host, port, name, protocol, deadline, timeout_s, token is not None)
        try:
            if protocol == "legacy":
                return _pair_legacy(session)
            pairing, token = _pair_v2(session, token)
            if pairing is not None:
                return pairing
        except ProtocolError as err:
            raise session.broken(f"sent an invalid {protocol} reply: {err}") from err
        finally:
            session.close()


def check(host: str, port: int, *, protocol: str = "legacy", timeout_s: float = 5.0) -> ProbeResult:
    """Pair two probe clients through the server under a random unique name."""
    check_protocol(protocol)
    name = f"cosmicai-probe-{uuid.uuid4().hex}"
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="rendezvous-probe") as pool:
        futures = [
            pool.submit(connect_and_pair, host, port, name, protocol, timeout_s) for _ in "ab"
        ]
        errors = [f.exception() for f in futures]
    rtt_ms = round((time.perf_counter() - started) * 1000, 3)
    base = {"host": host, "port": port, "protocol": protocol}
    failures = [err for err in errors if err is not None]
    for err in failures:
        if not isinstance(err, RendezvousError):
            raise err
    if failures:
        worst = min(failures, key=lambda err: _SEVERITY.index(err.kind))
        return ProbeResult(False, **base, error_kind=worst.kind, error=str(worst))
    a, b = (f.result() for f in futures)
    if a.you != b.peer or b.you != a.peer:
        return ProbeResult(
            False,
            **base,
            error_kind="protocol",
            error=f"rendezvous server {host}:{port} gave inconsistent addresses: client A "
            f"was told it is {a.you} but B was told A is {b.peer}; B is {b.you}, A saw {a.peer}",
        )
    return ProbeResult(True, **base, rtt_ms=rtt_ms, client_a=str(a.you), client_b=str(b.you))


def resolve_ipv4(host: str, port: int) -> str:
    """`host` as an IPv4 address: TCPunch's client (in FMI) takes only addresses (`inet_addr`),
    so a DNS name (Terraform's `dns_name`) is resolved before it reaches FMI's configuration."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise RendezvousError(
            "unreachable",
            f"cannot resolve rendezvous host {host!r} to an IPv4 address ({reason}); FMI's "
            "TCPunch client needs one: check RENDEZVOUS_HOST (Terraform's rendezvous_host) and "
            "the host's DNS record",
        ) from err
    return str(infos[0][4][0])


def require_rendezvous(
    address: str,
    *,
    protocol: str = "legacy",
    client_protocol: str | None = None,
    timeout_s: float = 10.0,
) -> None:
    """Raise an actionable `RendezvousError` unless the rendezvous at `host:port` pairs clients.

    Used before a run that communicates (so it is refused instead of timing out on Lambda) and
    by the executor (so a rank gives up within the deadline, naming host and port). With
    `client_protocol` (what the executor image's TCPunch client speaks) the probe speaks that;
    when the server turns it away, a probe of the other protocol tells a protocol mismatch
    (reported as such, naming both) from a broken server.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RendezvousError("protocol", f"rendezvous address {address!r} is not host:port")
    speaks = check_protocol(client_protocol or protocol)
    deadline = time.monotonic() + timeout_s
    result = check(host, int(port), protocol=speaks, timeout_s=timeout_s)
    if result.ok:
        return
    if client_protocol and result.error_kind == "protocol":
        _raise_if_server_speaks_other(host, int(port), client_protocol, deadline)
    raise RendezvousError(
        result.error_kind or "protocol",
        f"the rendezvous server at {host}:{port} ({speaks} protocol) is not pairing "
        f'clients ({result.error_kind}: {result.error}); runs with "communication": true '
        f"need it. Check it with `cosmicai rendezvous check {host}:{port} --protocol "
        f"{speaks}` and restart it (on AWS: the rendezvous EC2 host's systemd service).",
    )


def _raise_if_server_speaks_other(host: str, port: int, client: str, deadline: float) -> None:
    """Raise the mismatch error if the server pairs clients of the protocol `client` is not."""
    server = next(p for p in PROTOCOLS if p != client)
    left = deadline - time.monotonic()
    if left > 0 and check(host, port, protocol=server, timeout_s=left).ok:
        raise RendezvousError(
            "protocol",
            f"the executor's TCPunch client speaks {client} but the rendezvous server at "
            f"{host}:{port} speaks {server}: rebuild the image with TCPUNCH_REF of a {server} "
            f"revision (TCPUNCH_PROTOCOL={server}), or set Terraform's rendezvous_protocol = "
            f'"{client}"',
        )
