"""The shared guards: JSON files read defensively, S3 locations kept in their bucket, strict flags
for code execution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cosmicai.errors import CheckpointError
from cosmicai.local_store import LocalS3Mirror
from cosmicai.payload import PayloadError, validate_payload
from cosmicai.pipeline.s3objects import S3LocationError, check_bucket, check_key, split_s3_uri
from cosmicai.safe_input import (
    MAX_JSON_DEPTH,
    MissingInput,
    UnreadableInput,
    read_json_file,
)

GOOD = {
    "bucket": "cosmicai-runs",
    "data_bucket": "cosmicai-data",
    "data_prefix": "partitions/p",
    "result_path": "results/r",
}


@pytest.mark.parametrize("value", ["yes", "on", "Y", "t", 1, 1.0, "1", "TRUE", 0, "no", None])
@pytest.mark.parametrize("key", ["trust_pickle", "communication"])
def test_flags_accept_only_true_false_and_their_strings(key: str, value: object) -> None:
    with pytest.raises(PayloadError) as err:
        validate_payload({**GOOD, key: value})
    assert str(err.value).startswith(f"{key}: expected true or false")
    assert '"true" and "false"' in str(err.value)


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("true", True), ("false", False)])
def test_flags_accept_booleans_and_their_strings(value: object, expected: bool) -> None:
    assert validate_payload({**GOOD, "trust_pickle": value}).trust_pickle is expected


@pytest.mark.parametrize("value", ["false", "true", 1, None])
def test_load_model_takes_only_a_real_boolean_as_trust(value: object) -> None:
    from cosmicai.inference.checkpoint import load_model

    with pytest.raises(CheckpointError, match="trust_pickle must be True or False"):
        load_model(None, trust_pickle=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "uri",
    [
        "s3://cosmicai-runs/../cosmicai-data/p/x",
        "s3://cosmicai-runs/a//b",
        "s3://cosmicai-runs//x",
        "s3://cosmicai-runs/a/./b",
        "s3://cosmicai-runs/a\x00b",
        "s3://cosmicai-runs/a\x1fb",
        "s3://ab/x",
        "s3://" + "a" * 64 + "/x",
        "s3://Upper/x",
        "s3://-bucket/x",
        "s3://bucket-/x",
        "s3://a..b/x",
        "s3://10.0.0.1/x",
        "s3://xn--bucket/x",
        "s3://my-s3alias/x",
    ],
)
def test_split_s3_uri_refuses_escaping_keys_and_invalid_buckets(uri: str) -> None:
    with pytest.raises(S3LocationError, match=r"s3://"):
        split_s3_uri(uri)


def test_split_s3_uri_keeps_a_prefix_slash() -> None:
    assert split_s3_uri("s3://cosmicai-runs/a b/c/") == ("cosmicai-runs", "a b/c/")


def test_keys_and_buckets() -> None:
    assert check_key("a/b/", prefix=True) == "a/b" and check_key("", prefix=True) == ""
    assert check_bucket("my.bucket-1") == "my.bucket-1"
    with pytest.raises(S3LocationError, match="empty path segment"):
        check_key("a/")


def test_the_local_store_refuses_keys_that_leave_their_bucket(tmp_path: Path) -> None:
    mirror = LocalS3Mirror(tmp_path)
    with pytest.raises(S3LocationError, match="traversal"):
        mirror.path("cosmicai-runs", "../cosmicai-data/p/x")
    with pytest.raises(S3LocationError, match="not a valid bucket name"):
        mirror.path("..", "x")
    assert mirror.path("cosmicai-runs", "runs/") == tmp_path / "s3" / "cosmicai-runs" / "runs"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[" * 200_000, f"deeper than {MAX_JSON_DEPTH}"),
        ('{"a": ' + "1" * 5000 + "}", "5000 digits"),
        ('{"a": "b', "truncated"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("  \n", "is empty"),
    ],
)
def test_json_files_that_cannot_be_used(tmp_path: Path, content: str | bytes, reason: str) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UnreadableInput, match=reason) as err:
        read_json_file(path)
    assert str(err.value).startswith(f"unreadable: {path}: ")


def test_only_regular_files_of_bounded_size_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableInput, match="named pipe"):
        read_json_file(fifo)  # would block forever if opened for reading
    with pytest.raises(UnreadableInput, match="character device"):
        read_json_file("/dev/zero")
    with pytest.raises(UnreadableInput, match="directory"):
        read_json_file(tmp_path)
    big = tmp_path / "big.json"
    big.write_text("[1]" + " " * 100)
    with pytest.raises(UnreadableInput, match="larger than"):
        read_json_file(big, max_bytes=10)
    assert read_json_file(tmp_path / "none.json", missing_ok=True) is None
    with pytest.raises(MissingInput) as err:
        read_json_file(tmp_path / "none.json")
    assert isinstance(err.value, FileNotFoundError)
