"""The FMI JSON configuration (FMI's own sections plus our Local section) and its helpers."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cosmicai.comm.config import (
    fmi_comm_name,
    fmi_config,
    fmi_pythonpath,
    fmi_script_pythonpath,
    load_local_section,
    write_fmi_config,
)
from cosmicai.errors import CosmicAIError

BASE = {"rendezvous_host": "10.0.0.5", "rendezvous_port": 10000, "bucket": "b", "run_id": "r1"}

# The parameters FMI's channel constructors read (S3.cpp, Redis.cpp, Direct.cpp,
# Configuration::get_faas_price): a missing one makes std::stod throw on Lambda.
FMI_READS = {
    "backends": {
        "S3": {"enabled", "bucket_name", "s3_region", "timeout", "max_timeout"},
        "Redis": {"enabled", "host", "port", "timeout", "max_timeout"},
        "Direct": {"enabled", "host", "port", "max_timeout"},
    },
    "model": {
        "S3": {"bandwidth", "overhead", "transfer_price", "download_price", "upload_price"},
        "Redis": {
            "bandwidth_single",
            "bandwidth_multiple",
            "overhead",
            "transfer_price",
            "instance_price",
            "requests_per_hour",
            "include_infrastructure_costs",
        },
        "Direct": {
            "bandwidth",
            "overhead",
            "transfer_price",
            "vm_price",
            "requests_per_hour",
            "include_infrastructure_costs",
        },
        "FaaS": {"gib_second_price"},
    },
}


def leaves(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in leaves(value)]
    return [tree]


def test_config_has_every_parameter_fmi_reads_as_plain_scalars() -> None:
    config = fmi_config(**BASE, timeout_s=7.5)
    for section, channels in FMI_READS.items():
        for channel, keys in channels.items():
            assert keys <= set(config[section][channel]), (section, channel)
    # boost::property_tree keeps JSON scalars as strings; arrays or nulls would break it.
    assert all(isinstance(leaf, str | int | float | bool) for leaf in leaves(config))
    backends = config["backends"]
    assert [backends[c]["enabled"] for c in ("S3", "Redis", "Direct")] == [True, False, True]
    assert backends["S3"]["bucket_name"] == "b"
    assert (backends["Direct"]["host"], backends["Direct"]["port"]) == ("10.0.0.5", 10000)
    assert {b["max_timeout"] for b in backends.values()} == {7500}


def test_local_section_is_enabled_only_with_a_store() -> None:
    assert fmi_config(**BASE)["Local"]["enabled"] is False
    local = fmi_config(**BASE, store_port=4242, memory_mb=2048)["Local"]
    assert (local["enabled"], local["host"], local["port"]) == (True, "10.0.0.5", 4242)
    assert local["memory_mb"] == 2048
    assert fmi_config(**BASE, store_host="127.0.0.1", store_port=1)["Local"]["host"] == "127.0.0.1"


def test_region_comes_from_the_argument_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert fmi_config(**BASE)["backends"]["S3"]["s3_region"] == "us-east-1"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert fmi_config(**BASE)["backends"]["S3"]["s3_region"] == "eu-central-1"
    assert fmi_config(**BASE, region="us-west-2")["backends"]["S3"]["s3_region"] == "us-west-2"


def test_nonpositive_timeout_is_rejected() -> None:
    with pytest.raises(CosmicAIError, match="timeout_s must be positive"):
        fmi_config(**BASE, timeout_s=0)


def test_write_then_load_the_local_section(tmp_path: Path) -> None:
    path = write_fmi_config(tmp_path / "deep" / "fmi.json", **BASE, store_port=5555, timeout_s=3)
    assert json.loads(path.read_text()) == fmi_config(**BASE, store_port=5555, timeout_s=3)
    local = load_local_section(path)
    assert (local["host"], local["port"], local["timeout"]) == ("10.0.0.5", 5555, 3)
    assert local["peer_timeout"] > 0 and local["op_timeout"] > 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        ('{"backends": {}}', "no enabled 'Local' section"),
        ('{"Local": {"enabled": true, "port": 1}}', "lacks 'host'"),
        ('{"Local": {"enabled": true, "host": "h", "port": -1}}', "Local.port must be a positive"),
        ('{"Local": {"enabled": true, "host": "h", "port": 1, "timeout": "9"}}', "Local.timeout"),
    ],
)
def test_bad_local_sections_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "fmi.json"
    path.write_text(content)
    with pytest.raises(CosmicAIError, match=message):
        load_local_section(path)


def test_comm_name_keeps_s3_objects_under_the_run_and_fits_tcpunch() -> None:
    assert fmi_comm_name("r-42") == "runs/r-42/fmi/"
    with pytest.raises(CosmicAIError, match="too long for FMI"):
        fmi_comm_name("x" * 80)


def test_pythonpath_holds_an_fmi_module_exporting_the_api() -> None:
    shim = fmi_pythonpath() / "fmi.py"
    tree = ast.parse(shim.read_text())
    exported = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and node.targets[0].id == "__all__"  # type: ignore[attr-defined]
    )
    assert set(exported) == {"Communicator", "datatypes", "func", "hints", "op", "types"}


def test_script_pythonpath_finds_the_shim_and_the_package_it_imports(tmp_path: Path) -> None:
    # -S: no site-packages, so no installed cosmicai, as for a script run from a task root
    code = (
        "import importlib.util as u; "
        "print(u.find_spec('fmi').origin); print(u.find_spec('cosmicai.comm.fmi_local').origin)"
    )
    entries = os.pathsep.join(map(str, fmi_script_pythonpath()))
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PYTHONPATH": entries},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shim, backend = done.stdout.split()
    assert Path(shim) == fmi_pythonpath() / "fmi.py"
    assert Path(backend) == fmi_pythonpath().parent / "fmi_local.py"
