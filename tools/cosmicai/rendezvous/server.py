"""Asyncio TCPunch rendezvous server (legacy or v2 protocol) with an HTTP health port.

Two clients that send the same pairing name are paired: each is told the other's public
address (see `protocol` for the bytes). Unlike the upstream server, an unpaired entry lives
only while its connection is open and at most `ttl_s` seconds (v2 clients are sent status 2,
timeout), pending entries and connections are bounded, and malformed requests are turned
away without disturbing anyone else (v2 clients get status 3, error; legacy clients, which
have no error reply, see the connection close). A client of the other protocol is closed on
without a reply, so it fails at once instead of misreading one (a legacy client would read a
v2 reply as addresses and retry forever). Pairings, expiries and refusals are logged on the
`cosmicai.rendezvous` logger, each with an `event` key and its details as keys (one JSON line
each, with `cosmicai.logs`); refusals, protocol mismatches and accept errors at most once a
second each, with a count of the lines suppressed meanwhile.

Connections, rendezvous and health alike, share one cap (`max_connections`, by default the
descriptor limit less a reserve); health connections may hold at most a quarter of it, so
idle health clients cannot crowd out pairing. The server accepts no more sockets than the
cap plus a small headroom for turning clients away, and backs off briefly when `accept`
fails (out of descriptors, for one), so it never spins and pairs again once descriptors free.

v2 reconnect tokens: every waiting client is issued one, and well-formed tokens are accepted
on requests; because a waiting entry is removed as soon as its connection goes away, a token
never resumes an entry, so a request carrying one is a fresh registration (as upstream treats
an unknown token).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import resource
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

from cosmicai.errors import CosmicAIError
from cosmicai.rendezvous.protocol import (
    MAX_NAME_BYTES,
    NO_ENDPOINT,
    V2_REQUEST_SIZE,
    Endpoint,
    ProtocolError,
    V2Response,
    V2Status,
    check_protocol,
    decode_legacy_request,
    decode_v2_request,
    encode_legacy_reply,
    encode_v2_response,
    is_legacy_request_prefix,
    is_v2_request,
)

log = logging.getLogger("cosmicai.rendezvous")

DEFAULT_PORT = 10000
_FD_RESERVE = 64  # descriptors kept free for the listeners, turned-away clients and logging
_TURN_AWAY_HEADROOM = 16  # sockets accepted beyond the cap, only to be turned away
_HTTP_HEAD_LIMIT = 8192
_LEGACY_PAUSE_S = 0.25  # a legacy client sends its whole name at once, then only waits
_ACCEPT_BACKOFF_S = 0.1
_CLOSE_TIMEOUT_S = 1.0
_LOG_INTERVAL_S = 1.0
_HEALTH_PATHS = ("/livez", "/readyz", "/health")
_MISMATCH = {
    "legacy": "client speaks legacy TCPunch but this server runs --protocol v2",
    "v2": "client speaks TCPunch v2 but this server runs --protocol legacy",
}


def default_max_connections() -> int:
    """Connections the process can hold open: the soft RLIMIT_NOFILE less a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(1, min(65536, soft - _FD_RESERVE))


def log_event(level: int, event: str, message: str | None = None, **fields: object) -> None:
    """Log `event` on the `cosmicai.rendezvous` logger with `fields` as its keys (`cosmicai.logs`
    writes it as one JSON line); the message is `message`, or else the event's name."""
    log.log(level, message or event, extra={"event": event, **fields}, stacklevel=2)


class _Throttled:
    """`log_event` at most once per `interval_s` per event; the next line that is logged
    carries `suppressed`, the number of lines of that event dropped since the last one."""

    def __init__(self, interval_s: float = _LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, level: int, event: str, **fields: object) -> None:
        now = time.monotonic()
        last = self._last.get(event)
        if last is not None and now - last < self.interval_s:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return
        self._last[event] = now
        suppressed = self._suppressed.pop(event, 0)
        log_event(level, event, **fields, **({"suppressed": suppressed} if suppressed else {}))


class _Mismatch(Exception):
    """The client speaks the other protocol (`client_protocol`)."""

    def __init__(self, client_protocol: str) -> None:
        super().__init__(_MISMATCH[client_protocol])
        self.client_protocol = client_protocol


@dataclass
class _Waiter:
    name: str
    endpoint: Endpoint
    token: str
    since: float = field(default_factory=time.monotonic)
    peer: asyncio.Future[Endpoint] = field(default_factory=asyncio.Future)


@dataclass
class ServerStats:
    paired_total: int = 0
    expired_total: int = 0
    abandoned_total: int = 0
    rejected_total: int = 0  # malformed requests, protocol mismatches included
    mismatched_total: int = 0  # clients of the other protocol
    refused_total: int = 0  # over a limit
    accept_errors_total: int = 0


def _client_endpoint(writer: asyncio.StreamWriter) -> Endpoint | None:
    """The client's IPv4 address and port (IPv4-mapped IPv6 unwrapped); None for IPv6."""
    peername = writer.get_extra_info("peername")
    if not peername:
        return None
    ip = ipaddress.ip_address(peername[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return None
        ip = ip.ipv4_mapped
    return Endpoint(str(ip), int(peername[1]))


async def _read_request(
    reader: asyncio.StreamReader, data: bytes, pause_while: Callable[[bytes], bool]
) -> bytes:
    """`data` and what follows, up to a whole v2 request's size, until EOF or (while
    `pause_while(data)`) `_LEGACY_PAUSE_S` without a byte."""
    while len(data) < V2_REQUEST_SIZE:
        read = reader.read(V2_REQUEST_SIZE - len(data))
        try:
            more = await (asyncio.wait_for(read, _LEGACY_PAUSE_S) if pause_while(data) else read)
        except TimeoutError:
            break
        if not more:
            break
        data += more
    return data


async def _close(conn: socket.socket, writer: asyncio.StreamWriter | None) -> None:
    """Close a connection and wait until its descriptor is released (so the accept loop's
    count is exact); a client that leaves our last bytes unread is aborted."""
    if writer is None:
        conn.close()
        return
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT_S)
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        pass  # closed by a reset: released all the same


class RendezvousServer:
    """TCPunch-compatible pairing server; see the module docstring."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        protocol: str = "legacy",
        health_port: int | None = None,
        *,
        ttl_s: float = 60.0,
        max_pending: int = 10_000,
        max_connections: int | None = None,
        read_timeout_s: float = 5.0,
    ) -> None:
        for label, value in (("port", port), ("health port", health_port)):
            if value is not None and not 0 <= value <= 65535:
                raise CosmicAIError(f"rendezvous {label} {value} is outside 0-65535")
        for label, number in (("ttl_s", ttl_s), ("read_timeout_s", read_timeout_s)):
            if number <= 0:
                raise CosmicAIError(f"rendezvous {label} must be positive, got {number}")
        if max_pending < 1 or (max_connections is not None and max_connections < 1):
            raise CosmicAIError("rendezvous max_pending and max_connections must be at least 1")
        self.host = host
        self.protocol = check_protocol(protocol)
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.max_connections = max_connections or default_max_connections()
        self.max_health_connections = max(1, self.max_connections // 4)
        self.read_timeout_s = read_timeout_s
        self.stats = ServerStats()
        self._ports = (port, health_port)
        self._pending: dict[str, _Waiter] = {}
        self._open = 0  # accepted sockets not yet closed
        self._connections = 0  # of those, admitted under the cap (health ones included)
        self._health_connections = 0
        self._room = asyncio.Event()  # set whenever a socket closes
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task] = []
        self._handlers: set[asyncio.Task] = set()
        self._stopping = False
        self._started = 0.0
        self._throttled = _Throttled()

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The rendezvous port: the bound one once started (the real one when 0 was asked)."""
        return self._ports[0]

    @property
    def health_port(self) -> int | None:
        """The health port (bound once started), or None when the health endpoint is off."""
        return self._ports[1]

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        port, health_port = self._ports
        self._stopping = False
        self._room = asyncio.Event()
        bound = [self._listen(port, self._serve_client, MAX_NAME_BYTES * 2)]
        if health_port is not None:
            try:
                bound.append(self._listen(health_port, self._serve_health, _HTTP_HEAD_LIMIT))
            except CosmicAIError:
                await self.stop()
                raise
        self._ports = (bound[0], bound[1] if health_port is not None else None)
        self._started = time.monotonic()
        log_event(
            logging.INFO,
            "listening",
            host=self.host,
            port=self.port,
            health_port=self.health_port,
            protocol=self.protocol,
            ttl_s=self.ttl_s,
            max_pending=self.max_pending,
            max_connections=self.max_connections,
        )

    def _listen(self, port: int, handler: Callable[..., Awaitable[None]], limit: int) -> int:
        """Bind `port`, start its accept loop; return the bound port."""
        try:
            listener = socket.create_server((self.host, port), backlog=1024)
        except OSError as err:
            reason = os.strerror(err.errno) if (err.errno or 0) > 0 else err.strerror or err
            raise CosmicAIError(
                f"cannot listen on {self.host}:{port}: {reason}; "
                "check the host, and choose another port or stop the process that holds it"
            ) from err
        listener.setblocking(False)
        self._listeners.append(listener)
        self._accepting.append(asyncio.create_task(self._accept_loop(listener, handler, limit)))
        return int(listener.getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, close every open connection and the health endpoint."""
        self._stopping = True
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for listener in self._listeners:
            listener.close()
        self._accepting, self._listeners = [], []
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        self._pending.clear()
        log_event(logging.INFO, "stopped", **asdict(self.stats))

    def health(self) -> dict[str, object]:
        return {
            "status": "ok",
            "protocol": self.protocol,
            "pending": self.pending,
            "connections": self._connections,
            "max_connections": self.max_connections,
            "uptime_s": round(time.monotonic() - self._started, 3),
            **asdict(self.stats),
        }

    # --- accepting and admitting connections ----------------------------------------------

    async def _accept_loop(
        self, listener: socket.socket, handler: Callable[..., Awaitable[None]], limit: int
    ) -> None:
        """Accept clients while there is room; back off (and log, throttled) on errors."""
        loop = asyncio.get_running_loop()
        while True:
            while self._open >= self.max_connections + _TURN_AWAY_HEADROOM:
                self._room.clear()
                await self._room.wait()
            try:
                conn, _ = await loop.sock_accept(listener)
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as err:
                self.stats.accept_errors_total += 1
                self._throttled(
                    logging.WARNING,
                    "accept_failed",
                    port=listener.getsockname()[1],
                    error=errno.errorcode.get(err.errno or 0, str(err)),
                    reason=err.strerror or str(err),
                    backoff_s=_ACCEPT_BACKOFF_S,
                )
                await asyncio.sleep(_ACCEPT_BACKOFF_S)
                continue
            self._open += 1
            task = asyncio.create_task(self._connection(conn, handler, limit))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _connection(
        self, conn: socket.socket, handler: Callable[..., Awaitable[None]], limit: int
    ) -> None:
        """Run `handler` on an accepted socket; close it at the end, quiet about clients
        that go away mid-exchange."""
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=limit)
            if not self._stopping:
                await handler(reader, writer)
        except OSError:
            pass  # the peer reset or closed the connection; nothing is left to clean up
        finally:
            try:
                await _close(conn, writer)
            finally:
                self._open -= 1
                self._room.set()

    def _admit(self, health: bool) -> str | None:
        """Take a connection slot; None, or the reason there is none."""
        if self._connections >= self.max_connections:
            return "connection limit reached"
        if health and self._health_connections >= self.max_health_connections:
            return "health connection limit reached"
        self._connections += 1
        self._health_connections += health
        return None

    def _release(self, health: bool) -> None:
        self._connections -= 1
        self._health_connections -= health

    def _refuse(self, endpoint: Endpoint | None, reason: str) -> None:
        self.stats.refused_total += 1
        self._throttled(
            logging.WARNING, "refused", client=str(endpoint) if endpoint else None, reason=reason
        )

    # --- rendezvous connections -----------------------------------------------------------

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        endpoint = _client_endpoint(writer)
        full = self._admit(health=False)
        if full:
            self._refuse(endpoint, full)
            await self._send_error(writer, endpoint)
            return
        try:
            await self._pair(reader, writer, endpoint)
        finally:
            self._release(health=False)

    async def _pair(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, endpoint: Endpoint | None
    ) -> None:
        try:
            name = await asyncio.wait_for(self._read_name(reader), self.read_timeout_s)
        except _Mismatch as err:
            self._mismatched(endpoint, err)
            return
        except (TimeoutError, ProtocolError) as err:
            reason = "no complete request in time" if isinstance(err, TimeoutError) else str(err)
            await self._reject(writer, endpoint, reason)
            return
        if endpoint is None:
            await self._reject(writer, endpoint, "IPv6 clients are not supported")
            return

        waiter = self._pending.pop(name, None)
        if waiter is not None:
            await self._complete_pair(writer, waiter, endpoint)
        elif len(self._pending) >= self.max_pending:
            self._refuse(endpoint, "pending-entry limit reached")
            await self._send_error(writer, endpoint)
        else:
            await self._wait_for_peer(reader, writer, _Waiter(name, endpoint, str(uuid.uuid4())))

    async def _read_name(self, reader: asyncio.StreamReader) -> str:
        """The pairing name; `_Mismatch` for a client of the other protocol (see `protocol`)."""
        data = await reader.read(V2_REQUEST_SIZE)
        if not data:
            raise ProtocolError("connection closed before a request arrived")
        if self.protocol == "v2":
            data = await _read_request(reader, data, is_legacy_request_prefix)
            if len(data) < V2_REQUEST_SIZE:
                if is_legacy_request_prefix(data):
                    raise _Mismatch("legacy")
                raise ProtocolError(f"truncated request ({len(data)} of {V2_REQUEST_SIZE} bytes)")
            return decode_v2_request(data).name
        if len(data) > MAX_NAME_BYTES:
            data = await _read_request(reader, data, lambda _: True)
            if is_v2_request(data):
                raise _Mismatch("v2")
        return decode_legacy_request(data)

    def _reply(self, status: V2Status, you: Endpoint, peer: Endpoint | None, token: str) -> bytes:
        """One reply: v2 a full response; legacy the one address due now (peer, else own)."""
        if self.protocol == "legacy":
            return encode_legacy_reply(peer or you)
        return encode_v2_response(V2Response(status, you, peer, token))

    async def _complete_pair(
        self, writer: asyncio.StreamWriter, waiter: _Waiter, endpoint: Endpoint
    ) -> None:
        """Second client of a name: tell the waiter about us, and us about the waiter."""
        waiter.peer.set_result(endpoint)
        self.stats.paired_total += 1
        log_event(
            logging.INFO,
            "paired",
            pairing=waiter.name,
            first=str(waiter.endpoint),
            second=str(endpoint),
            wait_ms=round((time.monotonic() - waiter.since) * 1000, 1),
        )
        token = str(uuid.uuid4())
        if self.protocol == "legacy":
            writer.write(self._reply(V2Status.WAITING, endpoint, None, token))
        writer.write(self._reply(V2Status.PAIRED, endpoint, waiter.endpoint, token))
        await writer.drain()

    async def _wait_for_peer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, waiter: _Waiter
    ) -> None:
        """First client of a name: wait for the peer, the TTL, or the client going away."""
        self._pending[waiter.name] = waiter
        eof = asyncio.ensure_future(self._until_eof(reader))
        try:
            writer.write(self._reply(V2Status.WAITING, waiter.endpoint, None, waiter.token))
            await writer.drain()
            await asyncio.wait(
                {waiter.peer, eof}, timeout=self.ttl_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            eof.cancel()
            if self._pending.get(waiter.name) is waiter:
                del self._pending[waiter.name]
        if waiter.peer.done():
            peer = waiter.peer.result()
            writer.write(self._reply(V2Status.PAIRED, waiter.endpoint, peer, waiter.token))
            await writer.drain()
            return
        if eof.done():
            self.stats.abandoned_total += 1
            log_event(logging.DEBUG, "abandoned", pairing=waiter.name, client=str(waiter.endpoint))
            return
        self.stats.expired_total += 1
        log_event(
            logging.INFO,
            "expired",
            pairing=waiter.name,
            client=str(waiter.endpoint),
            waited_s=round(time.monotonic() - waiter.since, 3),
        )
        if self.protocol == "v2":
            writer.write(self._reply(V2Status.TIMEOUT, waiter.endpoint, None, waiter.token))
            await writer.drain()

    @staticmethod
    async def _until_eof(reader: asyncio.StreamReader) -> None:
        """Return when the client closes its side; bytes it sends while waiting are ignored."""
        with contextlib.suppress(OSError):
            while await reader.read(4096):
                pass

    async def _reject(
        self, writer: asyncio.StreamWriter, endpoint: Endpoint | None, reason: str
    ) -> None:
        """Turn away a malformed request; v2 clients get status 3."""
        self.stats.rejected_total += 1
        log_event(
            logging.DEBUG, "rejected", client=str(endpoint) if endpoint else None, reason=reason
        )
        await self._send_error(writer, endpoint)

    async def _send_error(self, writer: asyncio.StreamWriter, endpoint: Endpoint | None) -> None:
        if self.protocol == "v2":
            writer.write(encode_v2_response(V2Response(V2Status.ERROR, endpoint or NO_ENDPOINT)))
            await writer.drain()

    def _mismatched(self, endpoint: Endpoint | None, err: _Mismatch) -> None:
        """A client of the other protocol: no reply (it could only misread one), one log line."""
        self.stats.rejected_total += 1
        self.stats.mismatched_total += 1
        self._throttled(
            logging.WARNING,
            "protocol_mismatch",
            client=str(endpoint) if endpoint else None,
            client_protocol=err.client_protocol,
            server_protocol=self.protocol,
            message=f"{err}; closed without a reply: run client and server on one protocol",
        )

    # --- health endpoint ------------------------------------------------------------------

    async def _serve_health(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        full = self._admit(health=True)
        if full:
            self._refuse(_client_endpoint(writer), full)
            return  # closed without an answer: the prober sees the server is saturated
        try:
            await asyncio.wait_for(self._answer_health(reader, writer), self.read_timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError):
            pass  # a slow or truncated request gets no answer
        finally:
            self._release(health=True)

    async def _answer_health(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            status, body = (
                "431 Request Header Fields Too Large",
                {"error": f"request head is over {_HTTP_HEAD_LIMIT} bytes"},
            )
            head = b""
        else:
            status, body = self._route(head.split(b"\r\n", 1)[0].decode("latin-1"))
        payload = json.dumps(body).encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + (b"" if head.startswith(b"HEAD ") else payload)
        )
        await writer.drain()

    def _route(self, request_line: str) -> tuple[str, dict[str, object]]:
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", {"error": "malformed HTTP request line"}
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if path not in _HEALTH_PATHS:
            return "404 Not Found", {
                "error": f"no such path {target[:100]!r}; use {', '.join(_HEALTH_PATHS)}"
            }
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", {"error": f"{method[:20]} not allowed; use GET"}
        if path == "/livez":
            return "200 OK", {"status": "alive"}
        if path == "/readyz":
            busy = self._busy()
            if busy:
                return "503 Service Unavailable", {"status": "not ready", "reason": busy}
            return "200 OK", {**self.health(), "status": "ready"}
        return "200 OK", self.health()

    def _busy(self) -> str | None:
        """Why a pairing client arriving now would be turned away, or None."""
        if self._stopping:
            return "stopping"
        if self._connections >= self.max_connections:  # this request's own included
            return f"all {self.max_connections} connections in use"
        if self.pending >= self.max_pending:
            return f"all {self.max_pending} pending entries in use"
        return None


async def _run_until(
    server: RendezvousServer, stop: asyncio.Event, on_started: Callable[[], object] = lambda: None
) -> None:
    """Start `server`, call `on_started`, serve until `stop` is set, then stop the server."""
    await server.start()
    on_started()
    try:
        await stop.wait()
    finally:
        await server.stop()


def serve_forever(**kwargs: object) -> None:
    """Run a `RendezvousServer(**kwargs)` until SIGINT or SIGTERM, then stop it cleanly."""
    server = RendezvousServer(**kwargs)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await _run_until(server, stop)

    asyncio.run(main())


class ServerThread:
    """A `RendezvousServer` on its own event loop in a daemon thread (local cloud, tests).

    `with ServerThread(RendezvousServer(port=0)) as server: ...` starts it, yields the server
    (read `.port`, `.health_port`, `.pending`, `.stats`) and stops it on exit.
    """

    def __init__(self, server: RendezvousServer) -> None:
        self.server = server
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="rendezvous", daemon=True)

    def start(self) -> RendezvousServer:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self.server

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def __enter__(self) -> RendezvousServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as err:
            self._error = err
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await _run_until(self.server, self._stop, self._ready.set)
