"""Platform defaults: the one place that names, memory sizes, timeouts, retries, concurrency and
the Map child type come from.

The local cloud deploys with these values; the Terraform variables' defaults are the same
figures (Terraform defaults must be literals, so `tests/test_platform_defaults.py` reads
`terraform/**/variables.tf` and proves them equal).
"""

from __future__ import annotations

from dataclasses import dataclass

EXPRESS_MAX_DURATION_S = 300
"""AWS runs an EXPRESS workflow (Distributed Map children included) for at most 5 minutes."""


@dataclass(frozen=True)
class FunctionSettings:
    """Memory, timeout and concurrency of one function (Terraform variables on AWS)."""

    memory_mb: int
    timeout_s: int
    reserved_concurrency: int | None = None  # None: unreserved (Terraform's -1)
    ephemeral_storage_mb: int = 512


NAME_PREFIX = "cosmicai"
FUNCTIONS: dict[str, FunctionSettings] = {
    "init": FunctionSettings(memory_mb=512, timeout_s=60),
    "executor": FunctionSettings(memory_mb=10240, timeout_s=300, ephemeral_storage_mb=2048),
    "summarize": FunctionSettings(memory_mb=1024, timeout_s=300),
}
EXECUTOR_ARCHITECTURE = "x86_64"
EXECUTOR_ENGINE_BACKEND = "onnxruntime"
"""Backend of ranks whose payload names none (`cosmicai bench cost`: the cheaper one)."""
RANK_MAX_RETRIES = 2
"""Retries of a rank after an error of its own (service errors and throttling retry apart)."""
MAP_EXECUTION_TYPE = "EXPRESS"
"""Distributed Map children on AWS. STANDARD for ranks that may run longer than 5 minutes."""
LOCAL_MAP_EXECUTION_TYPE = "STANDARD"
"""The emulator cannot run EXPRESS children of a Distributed Map."""
LAMBDA_MB_PER_VCPU = 1769
"""Lambda gives a function one vCPU per 1,769 MB of memory (proportionally)."""
LOCAL_ACCOUNT_CONCURRENCY = 1000
"""Lambda's default concurrency quota per account and region; locally the CPUs queue the rest."""
