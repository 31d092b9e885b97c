"""S3 locations shared by the Lambda steps and the client: listing, and safe buckets and keys.

`check_bucket` applies S3's naming rules for general purpose buckets and `check_key` refuses
keys that would leave their bucket in the local store (`..` or `.` segments, empty segments, a
leading `/`, control characters, backslashes), both before any AWS call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from cosmicai.errors import CosmicAIError

BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
MAX_KEY_BYTES = 1024  # S3's limit on an object key
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_BUCKET_RULE = (
    "S3 bucket names have 3-63 characters: lowercase letters, digits, dots and hyphens, "
    "starting and ending with a letter or digit"
)


class S3LocationError(CosmicAIError):
    """A bucket name or object key that S3 (or the local store) must not be given."""

    exit_code = 2


def quoted(value: Any) -> str:
    """`value` as JSON (or repr), shortened to 80 characters, for messages."""
    text = json.dumps(value) if isinstance(value, str | int | float | bool | None) else repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def iter_objects(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Every object under a prefix, across ListObjectsV2 pages (each with Key, Size, ...)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def check_bucket(name: str) -> str:
    """`name` if it follows the S3 bucket naming rules (general purpose buckets)."""
    shown = quoted(name)
    if not name:
        raise S3LocationError(
            f'is empty; give an S3 bucket name, e.g. "cosmicai-runs" ({_BUCKET_RULE})'
        )
    if not re.fullmatch(BUCKET_PATTERN, name) or ".." in name:
        fixed = re.sub(r"[^a-z0-9.]+|\.{2,}", "-", name.lower()).strip(".-")
        valid_fix = re.fullmatch(BUCKET_PATTERN, fixed) and ".." not in fixed
        hint = f'; e.g. "{fixed}"' if valid_fix else ""
        raise S3LocationError(f"{shown} is not a valid bucket name: {_BUCKET_RULE}{hint}")
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        raise S3LocationError(f"{shown} is not a valid bucket name: it looks like an IP address")
    reserved = [p for p in _RESERVED_PREFIXES if name.startswith(p)]
    reserved += [s for s in _RESERVED_SUFFIXES if name.endswith(s)]
    if reserved:
        raise S3LocationError(
            f'{shown} is not a valid bucket name: "{reserved[0]}" is reserved by S3 '
            f"(prefixes {', '.join(_RESERVED_PREFIXES)}; suffixes {', '.join(_RESERVED_SUFFIXES)})"
        )
    return name


def check_key(
    key: str, *, prefix: bool = False, example: str = "data/part-00000.safetensors"
) -> str:
    """`key` if it stays inside its bucket; a prefix may be empty and loses one trailing "/"."""
    shown = quoted(key)
    if key.startswith("/"):
        fix = quoted(key.lstrip("/") or example)
        raise S3LocationError(f"{shown} is an absolute path; give a relative path, e.g. {fix}")
    if prefix and key.endswith("/"):
        key = key[:-1]
    if not key:
        if prefix:
            return key
        raise S3LocationError(f'is empty; give a key, e.g. "{example}"')
    if key != key.strip():
        raise S3LocationError(f"{shown} has leading or trailing spaces; remove them")
    if "\\" in key:
        fixed = quoted(key.replace("\\", "/"))
        raise S3LocationError(f"{shown} contains a backslash; S3 keys use forward slashes: {fixed}")
    if any(ord(char) < 32 or ord(char) == 127 for char in key):
        raise S3LocationError(f"{shown} contains a control character; remove it")
    segments = key.split("/")
    if "" in segments:
        raise S3LocationError(
            f'{shown} has an empty path segment ("//" or a trailing "/"); remove it'
        )
    if ".." in segments or "." in segments:
        raise S3LocationError(
            f'{shown} contains a "." or ".." segment (path traversal); '
            f'name the folders explicitly, e.g. "{example}"'
        )
    if len(key.encode()) > MAX_KEY_BYTES:
        raise S3LocationError(
            f"is {len(key.encode())} bytes long; S3 keys hold at most {MAX_KEY_BYTES}"
        )
    return key


def check_location(bucket: str, key: str) -> None:
    """Refuse a bucket name, or a key or prefix, that the local store or S3 must not be given."""
    try:
        check_bucket(bucket)
        check_key(key, prefix=True)
    except S3LocationError as err:
        raise S3LocationError(f"s3://{bucket}/{key}: {err}") from None


def split_s3_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key), both checked; a prefix keeps its trailing "/"."""
    if not uri.startswith("s3://") or "/" not in uri[5:] or not uri[5:].split("/", 1)[1]:
        raise S3LocationError(f"{uri!r} must look like s3://bucket/key")
    bucket, key = uri[5:].split("/", 1)
    check_location(bucket, key)
    return bucket, key
