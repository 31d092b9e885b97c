"""The deployment artifacts, built from the installed `cosmicai` package (a checkout or a wheel).

- **Zip Lambdas** (init, summarize): the function's `handler.py` at the zip root, the `cosmicai`
  packages it imports, and the third-party packages of `functions/<name>/requirements.txt`
  installed for Lambda's Python on the target architecture (boto3 is in Lambda's runtime).
  Zips are reproducible: sorted entries, fixed timestamps and permissions, so an unchanged tree
  gives the same bytes and Terraform's `source_code_hash` does not change.
- **The executor image's code**: the executor's handler (the image's `LAMBDA_TASK_ROOT`) and the
  `cosmicai` packages; the image installs the `executor` extra for its third-party packages.

Terraform deploys the zips that `scripts/build_lambda_zips.py` writes with `build_zips`; the
local cloud runs the very same zips.
"""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from cosmicai.atomic import atomic_path
from cosmicai.errors import CosmicAIError

ZIP_FUNCTIONS = ("init", "summarize")
EXECUTOR_EXTRA = "executor"
# The packages a function's code bundle carries (each one's own files; sub-packages listed apart).
CODE_PACKAGES = (
    "cosmicai",
    "cosmicai.pipeline",
    "cosmicai.inference",
    "cosmicai.comm",
    "cosmicai.compat",  # the timm shim reference scripts import (package data)
    "cosmicai.rendezvous",  # the executor probes the rendezvous before communicating scripts
)
PLATFORMS = {"x86_64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}
LAMBDA_PYTHON = "3.11"
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class BuildError(CosmicAIError):
    """A missing input or a failed dependency install, with what to do about it."""


def package_dir(package: str) -> Path:
    """The folder a `cosmicai` package's files live in (a checkout's source, or site-packages)."""
    module = importlib.import_module(package)
    for entry in module.__path__:
        if Path(entry).is_dir():
            return Path(entry)
    raise BuildError(f"package {package} has no folder on disk: reinstall cosmicai")


def function_dir(function: str) -> Path:
    """`functions/<function>/`, shipped as the package data of `cosmicai.functions`."""
    return package_dir("cosmicai.functions") / function


def state_machine_template() -> Path:
    """The Terraform pipeline module's ASL template (package data of `cosmicai.statemachine`)."""
    return package_dir("cosmicai.statemachine") / "state_machine.asl.json.tftpl"


def _source_files(directory: Path, recursive: bool) -> Iterator[Path]:
    """Files under `directory`, without caches or bytecode (sub-folders only if `recursive`)."""
    paths = directory.rglob("*") if recursive else directory.iterdir()
    for path in sorted(paths):
        parts = set(path.relative_to(directory).parts)
        if path.is_file() and not parts & SKIP_DIRS and path.suffix not in SKIP_SUFFIXES:
            yield path


def _package_entries(package: str) -> dict[str, Path]:
    """Archive name -> file for one package's own files (its data sub-folders included)."""
    root = package_dir(package)
    prefix = package.replace(".", "/")
    entries = {}
    for path in _source_files(root, recursive=True):
        relative = path.relative_to(root)
        # a sub-folder that is a package of its own (or not shipped) is not this package's file
        if len(relative.parts) > 1 and (root / relative.parts[0] / "__init__.py").exists():
            continue
        if len(relative.parts) > 1 and relative.parts[0] in ("functions", "statemachine"):
            continue
        entries[f"{prefix}/{relative.as_posix()}"] = path
    return entries


def code_entries(function: str, deps_dir: Path | None = None) -> dict[str, Path]:
    """Archive name -> file for one function's code bundle."""
    handler_dir = function_dir(function)
    if not (handler_dir / "handler.py").is_file():
        raise BuildError(
            f"{handler_dir / 'handler.py'} does not exist: each function needs a "
            f"functions/{function}/handler.py defining handler(event, context)."
        )
    entries: dict[str, Path] = {}
    if deps_dir:
        entries.update(
            (path.relative_to(deps_dir).as_posix(), path)
            for path in _source_files(deps_dir, recursive=True)
        )
    for package in CODE_PACKAGES:
        entries.update(_package_entries(package))
    for path in _source_files(handler_dir, recursive=False):
        if path.name != "requirements.txt":
            entries[path.name] = path  # last: the function's own files win
    return entries


def write_zip(entries: dict[str, Path], target: Path) -> None:
    """Write a reproducible zip atomically: sorted names, fixed time, 0644 files."""
    with atomic_path(target) as partial, zipfile.ZipFile(partial, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entries[name].read_bytes(), compresslevel=9)


def requirements_file(function: str) -> Path | None:
    """`functions/<function>/requirements.txt`, if the function has third-party packages."""
    path = function_dir(function) / "requirements.txt"
    return path if path.is_file() else None


def install_requirements(
    requirements: Path, into: Path, architecture: str, python_version: str = LAMBDA_PYTHON
) -> None:
    """pip-install `requirements` for Lambda's Python on `architecture` into `into`."""
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
        "--disable-pip-version-check", "--target", str(into),
        "--platform", PLATFORMS[architecture], "--implementation", "cp",
        "--python-version", python_version, "--only-binary=:all:", "-r", str(requirements),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(
            f"installing {requirements} for python{python_version}/{architecture} failed "
            f"(pip exit {result.returncode}):\n{result.stderr.strip()}"
        )


def build_zip(
    function: str,
    out: Path,
    architecture: str = "x86_64",
    *,
    with_deps: bool = True,
    python_version: str = LAMBDA_PYTHON,
) -> Path:
    """Build `out/<function>.zip`; returns its path."""
    if function not in ZIP_FUNCTIONS:
        raise BuildError(f"{function} is not a zip function (choose from {ZIP_FUNCTIONS})")
    requirements = requirements_file(function)
    with tempfile.TemporaryDirectory(prefix=f"lambda-{function}-") as tmp:
        deps_dir = None
        if with_deps and requirements:
            deps_dir = Path(tmp)
            install_requirements(requirements, deps_dir, architecture, python_version)
        target = out / f"{function}.zip"
        write_zip(code_entries(function, deps_dir), target)
    return target


def extra_requirements(extra: str) -> list[str]:
    """The requirement strings `cosmicai[extra]` installs (from the distribution's metadata)."""
    try:
        requires = metadata.requires("cosmicai") or []
    except metadata.PackageNotFoundError as err:
        raise BuildError("cosmicai is not installed: run ./scripts/bootstrap.sh") from err
    marker = f'extra == "{extra}"'
    return sorted(r.split(";")[0].strip() for r in requires if marker in r)


def content_digest(entries: dict[str, Path], *extra: str) -> str:
    """A short digest of the bundle's names and bytes (and any extra strings)."""
    digest = hashlib.sha256()
    for name in sorted(entries):
        digest.update(name.encode() + b"\0" + entries[name].read_bytes() + b"\0")
    for text in extra:
        digest.update(text.encode() + b"\0")
    return digest.hexdigest()[:16]
