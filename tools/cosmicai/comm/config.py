"""The FMI JSON configuration: what FMI's native module reads, plus our `Local` section.

FMI (`Configuration.cpp`) reads two top-level objects: `backends` (one object per channel;
a channel whose `enabled` is not true is skipped) and `model` (the per-channel cost and
performance parameters its hints use, plus `FaaS.gib_second_price`). Unknown top-level keys
are ignored, so the `Local` section that `cosmicai.comm.fmi_local` reads rides along safely.

FMI names its S3 objects `<comm_name><peer>_<operation>_<n>` at the root of the bucket, so a
run's objects land under `runs/<run_id>/fmi/` when its communicator name is
`fmi_comm_name(run_id)`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from cosmicai.errors import CosmicAIError
from cosmicai.pipeline.layout import RunLayout

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_PEER_TIMEOUT_S = 60.0
DEFAULT_OP_TIMEOUT_S = 900.0
DEFAULT_MEMORY_MB = 128
S3_POLL_INTERVAL_MS = 100
# TCPunch pairing names are at most 100 bytes; FMI appends "<peer>_<peer>" to the comm name.
_MAX_PAIRING_NAME = 100
_PEER_SUFFIX = len("65535_65535")

# FMI's channel models (bandwidth MiB/s, overhead ms, prices USD) as in FMI's own test
# configuration; S3 request prices are us-east-1's ($0.005 per 1,000 PUT, $0.0004 per 1,000 GET).
_MODEL: dict[str, dict[str, Any]] = {
    "S3": {
        "bandwidth": 50.0,
        "overhead": 40.4,
        "transfer_price": 0.0,
        "download_price": 0.0000004,
        "upload_price": 0.000005,
    },
    "Redis": {
        "bandwidth_single": 100.0,
        "bandwidth_multiple": 400.0,
        "overhead": 5.2,
        "transfer_price": 0.0,
        "instance_price": 0.0038,
        "requests_per_hour": 1000,
        "include_infrastructure_costs": True,
    },
    "Direct": {
        "bandwidth": 250.0,
        "overhead": 0.34,
        "transfer_price": 0.0,
        "vm_price": 0.0134,
        "requests_per_hour": 1000,
        "include_infrastructure_costs": True,
        "resolve_host_dns": True,
    },
    # AWS Lambda x86_64 price per GB-second, us-east-1.
    "FaaS": {"gib_second_price": 0.0000166667},
}


def fmi_config(
    *,
    rendezvous_host: str,
    rendezvous_port: int,
    bucket: str,
    run_id: str,
    store_host: str | None = None,
    store_port: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    region: str | None = None,
) -> dict[str, Any]:
    """The FMI configuration of one run.

    S3 on the run's bucket, Redis disabled, Direct (TCPunch) at the rendezvous host/port, all
    with `timeout_s` as their deadline. The `Local` section (our torch.distributed backend) is
    enabled when `store_port` is given; its store host defaults to the rendezvous host.
    """
    if timeout_s <= 0:
        raise CosmicAIError(f"FMI timeout_s must be positive, got {timeout_s}")
    max_timeout_ms = int(timeout_s * 1000)
    return {
        "backends": {
            "S3": {
                "enabled": True,
                "bucket_name": bucket,
                "s3_region": region or os.environ.get("AWS_REGION") or "us-east-1",
                "timeout": S3_POLL_INTERVAL_MS,
                "max_timeout": max_timeout_ms,
            },
            "Redis": {
                "enabled": False,
                "host": "127.0.0.1",
                "port": 6379,
                "timeout": 1,
                "max_timeout": max_timeout_ms,
            },
            "Direct": {
                "enabled": True,
                "host": rendezvous_host,
                "port": int(rendezvous_port),
                "max_timeout": max_timeout_ms,
            },
        },
        "model": copy.deepcopy(_MODEL),
        "Local": {
            "enabled": store_port is not None,
            "host": store_host or rendezvous_host,
            "port": int(store_port) if store_port is not None else 0,
            "timeout": timeout_s,
            "peer_timeout": DEFAULT_PEER_TIMEOUT_S,
            "op_timeout": DEFAULT_OP_TIMEOUT_S,
            "memory_mb": int(memory_mb),
            "run_id": run_id,
        },
    }


def write_fmi_config(path: str | Path, **kwargs: Any) -> Path:
    """Write `fmi_config(**kwargs)` as JSON to `path` (parents created) and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(fmi_config(**kwargs), indent=2) + "\n")
    return target


def fmi_comm_name(run_id: str) -> str:
    """The communicator name that keeps a run's FMI S3 objects under `runs/<run_id>/fmi/`."""
    name = RunLayout(run_id).fmi_prefix
    if len(name.encode()) + _PEER_SUFFIX > _MAX_PAIRING_NAME:
        raise CosmicAIError(
            f"run id {run_id!r} is too long for FMI: TCPunch pairing names are limited to "
            f"{_MAX_PAIRING_NAME} bytes; use a run id of at most "
            f"{_MAX_PAIRING_NAME - _PEER_SUFFIX - len('runs//fmi/')} characters"
        )
    return name


def fmi_pythonpath() -> Path:
    """The directory holding the `fmi` shim module (put it on PYTHONPATH for scripts)."""
    return Path(__file__).resolve().parent / "pythonpath"


def fmi_script_pythonpath() -> list[Path]:
    """PYTHONPATH entries for a script to import the shim: its directory, and the one holding
    the `cosmicai` package it imports (not on a script's path where cosmicai is not installed,
    as in a function's task root)."""
    shim = fmi_pythonpath()
    return [shim, shim.parents[2]]


def load_local_section(config_path: str | Path) -> dict[str, Any]:
    """The validated `Local` section of an FMI configuration file, with defaults filled in."""
    path = Path(config_path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CosmicAIError(
            f"FMI configuration {path} does not exist; pass the path the executor put in "
            f"FMI_CONFIG (written by cosmicai.comm.config.write_fmi_config)"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CosmicAIError(f"FMI configuration {path} is not readable JSON: {exc}") from exc
    local = config.get("Local") if isinstance(config, dict) else None
    if not isinstance(local, dict) or local.get("enabled") is not True:
        raise CosmicAIError(
            f"FMI configuration {path} has no enabled 'Local' section, so the local FMI backend "
            f"has no rendezvous store; write it with write_fmi_config(..., store_host=H, "
            f"store_port=P) (the local cloud's store), or run with the native fmi module"
        )
    section = {
        "timeout": DEFAULT_TIMEOUT_S,
        "peer_timeout": DEFAULT_PEER_TIMEOUT_S,
        "op_timeout": DEFAULT_OP_TIMEOUT_S,
        "memory_mb": DEFAULT_MEMORY_MB,
        **local,
    }
    for key in ("host", "port"):
        if key not in section:
            raise CosmicAIError(f"FMI configuration {path}: 'Local' section lacks '{key}'")
    for key in ("port", "timeout", "peer_timeout", "op_timeout"):
        value = section[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise CosmicAIError(
                f"FMI configuration {path}: Local.{key} must be a positive number, got {value!r}"
            )
    return section
