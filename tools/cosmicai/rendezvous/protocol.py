"""TCPunch wire formats (legacy and v2) as pure encode/decode functions; no I/O.

Confirmed against the upstream sources (spcl/TCPunch lineage: OpenCoreCH/TCPunch and
mstaylor/TCPunch: `common/utils.h`, `client/tcpunch.cpp`, `server/hole_punching_server.cpp`,
`server/rust/src/protocol.rs`).

Legacy protocol
    Request: the pairing name's bytes, sent with one `send()` and no terminator; the upstream
    server takes whatever its single `recv(fd, buf, 100)` returns and cuts it at the first NUL.
    We keep exactly that framing: the request is the first chunk read from the connection
    (at most 100 bytes), cut at the first NUL, so both the upstream client (raw name) and a
    client that sends a NUL-terminated or NUL-padded 100-byte field are understood. A chunk of
    more than 100 bytes is an oversized name and rejected.
    Replies: `PeerConnectionData` = `struct in_addr` (4 bytes) + `in_port_t` (2 bytes), both in
    network byte order, padded by the C compiler to `sizeof` = 8 bytes. The server sends the
    client's own public address at once, then the peer's address when the peer arrives.
    Upstream leaves the two padding bytes uninitialised; we send zeros and ignore them on read.

v2 protocol
    Request, 141 bytes: name[100] (NUL-terminated UTF-8, so at most 99 bytes from a conforming
    encoder; a decoder accepts 100 without NUL as upstream does), reconnect_token[37] (a UUID
    string NUL-terminated, or empty), flags u32 at offset 137 in little-endian (upstream copies
    the host-order C field and documents the request as little-endian; the flags are reserved).
    Response: status u8 (0 waiting, 1 paired, 2 timeout, 3 error), your ip (4 bytes), your port
    u16, peer ip (4 bytes), peer port u16 (all network byte order; peer 0.0.0.0:0 when there is
    none), token[37], packed. That is 1 + 4 + 2 + 4 + 2 + 37 = 50 bytes: upstream's constant
    `SERVER_RESPONSE_SIZE = 1 + 4 + 2 + 4 + 2 + TOKEN_LENGTH` and its packed struct are 50 bytes,
    although its migration guide (and our FACTS.md) say "51". A client reading 51 would block
    on or misframe the second response, so 50 is what goes on the wire.

Telling the two apart
    A legacy request is a bare name of at most 100 bytes without a NUL, sent at once; a v2
    request is 141 bytes whose name field holds a NUL within its first 100 bytes. So a server
    that has read at most 100 NUL-free bytes and sees nothing more follow is talking to a
    legacy client (`is_legacy_request_prefix`), and 141 bytes that decode as a v2 request are
    a v2 client (`is_v2_request`); a legacy server would otherwise read them as an oversized
    name.
"""

from __future__ import annotations

import ipaddress
import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from cosmicai.errors import CosmicAIError

PROTOCOLS = ("legacy", "v2")
MAX_NAME_BYTES = 100
TOKEN_BYTES = 37

_LEGACY_REPLY = struct.Struct("!4sH2x")
_V2_REQUEST = struct.Struct("<100s37sI")
_V2_RESPONSE = struct.Struct("!B4sH4sH37s")

LEGACY_REPLY_SIZE = _LEGACY_REPLY.size  # 8
V2_REQUEST_SIZE = _V2_REQUEST.size  # 141
V2_RESPONSE_SIZE = _V2_RESPONSE.size  # 50


class ProtocolError(CosmicAIError):
    """Bytes that do not form a valid message of the rendezvous protocol."""


class Endpoint(NamedTuple):
    """An IPv4 address and port as the rendezvous server observed them."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


NO_ENDPOINT = Endpoint("0.0.0.0", 0)


class V2Status(IntEnum):
    WAITING = 0
    PAIRED = 1
    TIMEOUT = 2
    ERROR = 3


@dataclass(frozen=True)
class V2Request:
    name: str
    token: str | None = None
    flags: int = 0


@dataclass(frozen=True)
class V2Response:
    status: V2Status
    you: Endpoint
    peer: Endpoint | None = None
    token: str | None = None


def check_protocol(protocol: str) -> str:
    """Return `protocol` if it is one we speak, else raise an actionable error."""
    if protocol not in PROTOCOLS:
        raise CosmicAIError(
            f"unknown rendezvous protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}"
        )
    return protocol


def _name_bytes(name: str, limit: int) -> bytes:
    raw = name.encode("utf-8")
    if not raw:
        raise ProtocolError("pairing name is empty: give a non-empty name")
    if b"\0" in raw:
        raise ProtocolError("pairing name contains a NUL byte, which the wire format forbids")
    if len(raw) > limit:
        raise ProtocolError(
            f"pairing name is {len(raw)} bytes in UTF-8; the limit is {limit}: use a shorter name"
        )
    return raw


def _c_string(field: bytes, what: str) -> str:
    try:
        return field.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtocolError(f"{what} is not valid UTF-8") from err


def _decode_name(field: bytes) -> str:
    name = _c_string(field, "pairing name")
    if not name:
        raise ProtocolError("pairing name is empty")
    return name


def _pack_ip(endpoint: Endpoint) -> bytes:
    try:
        packed = ipaddress.IPv4Address(endpoint.ip).packed
    except ValueError as err:
        raise ProtocolError(f"{endpoint.ip!r} is not an IPv4 address") from err
    if not 0 <= endpoint.port <= 0xFFFF:
        raise ProtocolError(f"port {endpoint.port} is outside 0-65535")
    return packed


def _unpack_endpoint(ip: bytes, port: int) -> Endpoint:
    return Endpoint(str(ipaddress.IPv4Address(ip)), port)


def _check_size(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise ProtocolError(f"{what} must be {size} bytes, got {len(data)}")


def _canonical_token(token: str) -> str:
    try:
        return str(uuid.UUID(token))
    except ValueError as err:
        raise ProtocolError(f"reconnect token {token[:40]!r} is not a UUID string") from err


# --- legacy ---------------------------------------------------------------------------------


def encode_legacy_request(name: str) -> bytes:
    """The name's UTF-8 bytes, as the upstream client sends them (no terminator)."""
    return _name_bytes(name, MAX_NAME_BYTES)


def decode_legacy_request(chunk: bytes) -> str:
    """The pairing name in the first chunk a client sent (see the module docstring)."""
    if len(chunk) > MAX_NAME_BYTES:
        raise ProtocolError(f"legacy request is over {MAX_NAME_BYTES} bytes (oversized name)")
    return _decode_name(chunk)


def is_legacy_request_prefix(data: bytes) -> bool:
    """Whether `data` (what a client sent so far) can be a whole legacy request but is not yet
    past the name of a v2 one: 1 to 100 bytes, none of them NUL."""
    return 0 < len(data) <= MAX_NAME_BYTES and b"\0" not in data


def encode_legacy_reply(endpoint: Endpoint) -> bytes:
    return _LEGACY_REPLY.pack(_pack_ip(endpoint), endpoint.port)


def decode_legacy_reply(data: bytes) -> Endpoint:
    _check_size(data, LEGACY_REPLY_SIZE, "legacy reply")
    ip, port = _LEGACY_REPLY.unpack(data)
    return _unpack_endpoint(ip, port)


# --- v2 -------------------------------------------------------------------------------------


def encode_v2_request(request: V2Request) -> bytes:
    name = _name_bytes(request.name, MAX_NAME_BYTES - 1)
    token = _canonical_token(request.token).encode("ascii") if request.token else b""
    if not 0 <= request.flags <= 0xFFFFFFFF:
        raise ProtocolError(f"flags {request.flags} do not fit an unsigned 32-bit field")
    return _V2_REQUEST.pack(name, token, request.flags)


def decode_v2_request(data: bytes) -> V2Request:
    _check_size(data, V2_REQUEST_SIZE, "v2 request")
    name, token_field, flags = _V2_REQUEST.unpack(data)
    token = _c_string(token_field, "reconnect token")
    return V2Request(_decode_name(name), _canonical_token(token) if token else None, flags)


def is_v2_request(data: bytes) -> bool:
    """Whether `data` is a whole, well-formed v2 request with its name NUL-terminated."""
    if len(data) != V2_REQUEST_SIZE or b"\0" not in data[:MAX_NAME_BYTES]:
        return False
    try:
        decode_v2_request(data)
    except ProtocolError:
        return False
    return True


def encode_v2_response(response: V2Response) -> bytes:
    peer = response.peer or NO_ENDPOINT
    token = _canonical_token(response.token).encode("ascii") if response.token else b""
    return _V2_RESPONSE.pack(
        int(response.status),
        _pack_ip(response.you),
        response.you.port,
        _pack_ip(peer),
        peer.port,
        token,
    )


def decode_v2_response(data: bytes) -> V2Response:
    _check_size(data, V2_RESPONSE_SIZE, "v2 response")
    status, your_ip, your_port, peer_ip, peer_port, token_field = _V2_RESPONSE.unpack(data)
    try:
        status = V2Status(status)
    except ValueError as err:
        raise ProtocolError(f"v2 response has unknown status {status} (expected 0-3)") from err
    peer = _unpack_endpoint(peer_ip, peer_port)
    token = _c_string(token_field, "reconnect token")
    return V2Response(
        status,
        _unpack_endpoint(your_ip, your_port),
        None if peer == NO_ENDPOINT else peer,
        _canonical_token(token) if token else None,
    )
