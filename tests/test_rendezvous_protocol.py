"""Wire-format conformance of both TCPunch protocols against hand-built bytes."""

from __future__ import annotations

import socket
import struct
import uuid

import pytest

from cosmicai.errors import CosmicAIError
from cosmicai.rendezvous.protocol import (
    LEGACY_REPLY_SIZE,
    V2_REQUEST_SIZE,
    V2_RESPONSE_SIZE,
    Endpoint,
    ProtocolError,
    V2Request,
    V2Response,
    V2Status,
    check_protocol,
    decode_legacy_reply,
    decode_legacy_request,
    decode_v2_request,
    decode_v2_response,
    encode_legacy_reply,
    encode_legacy_request,
    encode_v2_request,
    encode_v2_response,
    is_legacy_request_prefix,
    is_v2_request,
)

TOKEN = "550e8400-e29b-41d4-a716-446655440000"


def test_sizes_match_upstream_structs():
    # struct in_addr + in_port_t, padded by the compiler to 8
    assert LEGACY_REPLY_SIZE == 4 + 2 + 2 == 8
    # name[100] + reconnect_token[37] + uint32 flags
    assert V2_REQUEST_SIZE == 100 + 37 + 4 == 141
    # packed: u8 + u32 + u16 + u32 + u16 + token[37] (upstream's SERVER_RESPONSE_SIZE)
    assert V2_RESPONSE_SIZE == 1 + 4 + 2 + 4 + 2 + 37 == 50


# --- legacy ---------------------------------------------------------------------------------


def test_legacy_reply_layout():
    data = encode_legacy_reply(Endpoint("10.1.2.3", 54321))
    assert data == bytes([10, 1, 2, 3]) + (54321).to_bytes(2, "big") + b"\0\0"
    assert data[:4] == socket.inet_aton("10.1.2.3")
    assert decode_legacy_reply(data) == Endpoint("10.1.2.3", 54321)


def test_legacy_reply_padding_is_ignored_on_read():
    # upstream sends the struct's padding uninitialised
    data = socket.inet_aton("192.168.7.9") + struct.pack(">H", 80) + b"\xab\xcd"
    assert decode_legacy_reply(data) == Endpoint("192.168.7.9", 80)


@pytest.mark.parametrize("size", [0, 6, 7, 9, 16])
def test_legacy_reply_wrong_size(size):
    with pytest.raises(ProtocolError, match="8 bytes"):
        decode_legacy_reply(b"\1" * size)


def test_legacy_request_is_raw_name_like_upstream_client():
    assert encode_legacy_request("rank-0-1") == b"rank-0-1"
    assert encode_legacy_request("é") == "é".encode()
    assert encode_legacy_request("x" * 100) == b"x" * 100


@pytest.mark.parametrize(
    ("chunk", "name"),
    [
        (b"rank-0-1", "rank-0-1"),  # upstream client: no terminator
        (b"rank-0-1\0", "rank-0-1"),  # NUL-terminated
        (b"rank-0-1".ljust(100, b"\0"), "rank-0-1"),  # fixed 100-byte NUL-padded field
        (b"abc\0junk", "abc"),  # cut at the first NUL, as std::string(buffer) does
        (b"n" * 100, "n" * 100),
    ],
)
def test_legacy_request_decoding(chunk, name):
    assert decode_legacy_request(chunk) == name


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (b"", "empty"),
        (b"\0abc", "empty"),
        (b"n" * 101, "oversized"),
        (b"\xff\xfe\xfd", "UTF-8"),
    ],
)
def test_legacy_request_rejects(chunk, message):
    with pytest.raises(ProtocolError, match=message):
        decode_legacy_request(chunk)


@pytest.mark.parametrize(("name", "message"), [("", "empty"), ("a\0b", "NUL"), ("n" * 101, "101")])
def test_legacy_request_encoder_rejects(name, message):
    with pytest.raises(ProtocolError, match=message):
        encode_legacy_request(name)


# --- v2 requests ----------------------------------------------------------------------------


def _request_bytes(name: bytes, token: bytes = b"", flags: bytes = b"\0\0\0\0") -> bytes:
    return name.ljust(100, b"\0") + token.ljust(37, b"\0") + flags


def test_v2_request_layout():
    data = encode_v2_request(V2Request("pair-7", TOKEN, flags=0x01020304))
    # flags are little-endian at offset 137 (upstream: host-order C field, "little-endian")
    assert data == _request_bytes(b"pair-7", TOKEN.encode(), b"\x04\x03\x02\x01")
    assert len(data) == 141
    assert data[100:136] == TOKEN.encode() and data[136] == 0


def test_v2_request_without_token_is_all_zero_token_field():
    data = encode_v2_request(V2Request("pair-7"))
    assert data == _request_bytes(b"pair-7")
    assert decode_v2_request(data) == V2Request("pair-7", None, 0)


def test_v2_request_decoding():
    data = _request_bytes(b"job-42", TOKEN.upper().encode(), struct.pack("<I", 7))
    assert decode_v2_request(data) == V2Request("job-42", TOKEN, 7)
    # 100 name bytes without a terminator: accepted, as upstream's parser does
    assert decode_v2_request(_request_bytes(b"n" * 100)).name == "n" * 100


def test_v2_request_name_limit_on_encode_keeps_the_terminator():
    assert encode_v2_request(V2Request("n" * 99))[99] == 0
    with pytest.raises(ProtocolError, match="limit is 99"):
        encode_v2_request(V2Request("n" * 100))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_request_bytes(b"name")[:140], "141 bytes"),
        (_request_bytes(b"name") + b"\0", "141 bytes"),
        (_request_bytes(b""), "empty"),
        (_request_bytes(b"name", b"not-a-uuid"), "UUID"),
        (_request_bytes(b"\xc3\x28"), "UTF-8"),
        (_request_bytes(b"name", b"\xff" * 36), "UTF-8"),
    ],
)
def test_v2_request_rejects(data, message):
    with pytest.raises(ProtocolError, match=message):
        decode_v2_request(data)


def test_v2_request_encoder_rejects_bad_fields():
    with pytest.raises(ProtocolError, match="UUID"):
        encode_v2_request(V2Request("a", token="nope"))
    with pytest.raises(ProtocolError, match="32-bit"):
        encode_v2_request(V2Request("a", flags=2**32))


# --- v2 responses ---------------------------------------------------------------------------


def _response_bytes(status, you, you_port, peer, peer_port, token=b""):
    return (
        bytes([status])
        + socket.inet_aton(you)
        + you_port.to_bytes(2, "big")
        + socket.inet_aton(peer)
        + peer_port.to_bytes(2, "big")
        + token.ljust(37, b"\0")
    )


def test_v2_response_layout():
    response = V2Response(
        V2Status.PAIRED, Endpoint("192.168.1.100", 12345), Endpoint("10.0.0.50", 54321), TOKEN
    )
    data = encode_v2_response(response)
    assert data == _response_bytes(1, "192.168.1.100", 12345, "10.0.0.50", 54321, TOKEN.encode())
    assert len(data) == 50
    assert data[5:7] == b"\x30\x39" and data[11:13] == b"\xd4\x31"  # ports at offsets 5 and 11
    assert decode_v2_response(data) == response


def test_v2_waiting_response_has_zero_peer():
    response = V2Response(V2Status.WAITING, Endpoint("1.2.3.4", 5), None, TOKEN)
    data = encode_v2_response(response)
    assert data[7:13] == b"\0" * 6
    assert data[0] == 0
    assert decode_v2_response(data) == response


def test_v2_error_response_without_token():
    data = _response_bytes(3, "0.0.0.0", 0, "0.0.0.0", 0)
    assert decode_v2_response(data) == V2Response(V2Status.ERROR, Endpoint("0.0.0.0", 0))
    assert encode_v2_response(V2Response(V2Status.ERROR, Endpoint("0.0.0.0", 0))) == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_response_bytes(4, "1.2.3.4", 1, "0.0.0.0", 0), "unknown status 4"),
        (_response_bytes(1, "1.2.3.4", 1, "5.6.7.8", 2, b"garbage"), "UUID"),
        (_response_bytes(1, "1.2.3.4", 1, "5.6.7.8", 2)[:49], "50 bytes"),
        (_response_bytes(1, "1.2.3.4", 1, "5.6.7.8", 2) + b"\0", "50 bytes"),
    ],
)
def test_v2_response_rejects(data, message):
    with pytest.raises(ProtocolError, match=message):
        decode_v2_response(data)


def test_encoders_reject_non_ipv4_and_bad_ports():
    with pytest.raises(ProtocolError, match="IPv4"):
        encode_legacy_reply(Endpoint("::1", 1))
    with pytest.raises(ProtocolError, match="65535"):
        encode_v2_response(V2Response(V2Status.WAITING, Endpoint("1.2.3.4", 70000)))


def test_token_roundtrip_random():
    token = str(uuid.uuid4())
    data = encode_v2_response(V2Response(V2Status.TIMEOUT, Endpoint("8.8.8.8", 1), None, token))
    assert data[13:49] == token.encode() and data[49] == 0
    assert decode_v2_response(data).token == token


def test_protocol_errors_are_cosmicai_errors_and_protocols_checked():
    assert issubclass(ProtocolError, CosmicAIError)
    assert check_protocol("v2") == "v2"
    with pytest.raises(CosmicAIError, match="legacy, v2"):
        check_protocol("v3")


# --- telling the protocols apart ------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "legacy"),
    [
        (b"rank-0-1", True),  # what the upstream legacy client sends
        (b"n" * 100, True),
        (b"", False),
        (b"n" * 101, False),  # longer than any legacy name
        (b"rank-0-1\0", False),  # past the NUL that ends a v2 name field
        (_request_bytes(b"rank")[:60], False),
    ],
)
def test_legacy_request_prefix(prefix, legacy):
    assert is_legacy_request_prefix(prefix) is legacy


def test_v2_request_recognised_only_whole_and_well_formed():
    request = encode_v2_request(V2Request("rank", TOKEN, 7))
    assert is_v2_request(request)
    assert is_v2_request(_request_bytes(b"rank"))
    assert not is_v2_request(request[:-1])
    assert not is_v2_request(request + b"\0")
    assert not is_v2_request(b"n" * V2_REQUEST_SIZE)  # an oversized legacy name
    assert not is_v2_request(_request_bytes(b"rank", b"not-a-uuid"))
    assert not is_v2_request(_request_bytes(b"\0rank"))
