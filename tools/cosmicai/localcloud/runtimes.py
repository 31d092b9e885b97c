"""What the local cloud runs: the deployable artifacts, and interpreters shaped like Lambda's.

- **Zip functions** run under a stand-in for AWS's python3.11 managed runtime: the base
  interpreter with `-I -S` (no site-packages, no user site, no `PYTHONPATH`), the unpacked zip
  first on `sys.path` (Lambda's `/var/task`), then only the packages AWS's runtime ships (boto3,
  botocore, s3transfer, jmespath, python-dateutil, urllib3, six). A zip that lacks a package
  fails here with the `ModuleNotFoundError` it would raise on AWS.
- **The executor** runs from a local image: a virtualenv installed from exactly the
  requirement set the executor image installs (the `executor` extra), plus the image's code
  (handler and `cosmicai` packages) as the task root.

Everything is built once per content digest under the cache folder (`$COSMICAI_CACHE`, else
`~/.cache/cosmicai`), under a file lock, so concurrent runs share it and a changed source tree
gets fresh artifacts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cosmicai.artifacts import (
    EXECUTOR_EXTRA,
    BuildError,
    build_zip,
    code_entries,
    content_digest,
    extra_requirements,
    requirements_file,
    write_zip,
)

# What AWS's python3.11 Lambda runtime provides besides the standard library.
LAMBDA_RUNTIME_DISTRIBUTIONS = (
    "boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "urllib3", "six",
)  # fmt: skip
EXECUTOR_IMAGE = "cosmicai-executor"
MANAGED_RUNTIME = "python3.11"


def cache_root() -> Path:
    """`$COSMICAI_CACHE`, else `$XDG_CACHE_HOME/cosmicai`, else `~/.cache/cosmicai`."""
    if os.environ.get("COSMICAI_CACHE"):
        return Path(os.environ["COSMICAI_CACHE"]).resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).resolve() / "cosmicai"


def local_architecture() -> str:
    """This machine's Lambda architecture name."""
    return "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class Interpreter:
    """How a worker is started: the interpreter, its flags, and what follows the task root on
    `sys.path`."""

    python: str
    flags: tuple[str, ...]
    site_dirs: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"python": self.python, "flags": self.flags, "site_dirs": self.site_dirs})

    @classmethod
    def from_file(cls, path: Path) -> Interpreter:
        data = json.loads(path.read_text())
        return cls(data["python"], tuple(data["flags"]), tuple(data["site_dirs"]))


def _top_level_names(distribution: str) -> set[str]:
    dist = metadata.distribution(distribution)
    names = set()
    for file in dist.files or []:
        top = file.parts[0]
        if top.endswith((".dist-info", ".egg-info", ".pth")) or top in ("..", "__pycache__"):
            continue
        names.add(top)
    return names


def managed_runtime() -> Interpreter:
    """The stand-in for AWS's python3.11 runtime (built once per boto3 version set)."""
    versions = [f"{d}=={metadata.version(d)}" for d in LAMBDA_RUNTIME_DISTRIBUTIONS]
    target = cache_root() / "runtimes" / f"{MANAGED_RUNTIME}-{content_digest({}, *versions)}"
    with _locked(target):
        if not target.is_dir():
            staging = target.with_name(target.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            for distribution in LAMBDA_RUNTIME_DISTRIBUTIONS:
                origin = Path(metadata.distribution(distribution).locate_file(""))
                for name in _top_level_names(distribution):
                    (staging / name).symlink_to(origin / name)
            staging.rename(target)
    python = getattr(sys, "_base_executable", None) or sys.executable
    return Interpreter(python, ("-I", "-S"), (str(target),))


def lambda_zip(function: str) -> bytes:
    """The function's deployment zip as the build step makes it (for this machine's Python)."""
    requirements = requirements_file(function)
    digest = content_digest(
        code_entries(function),
        requirements.read_text() if requirements else "",
        local_architecture(),
        platform.python_version(),
    )
    target = cache_root() / "zips" / f"{function}-{digest}.zip"
    with _locked(target):
        if not target.is_file():
            python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
            built = build_zip(
                function, target.parent / f"{function}-{digest}.build", local_architecture(),
                python_version=python_version,
            )  # fmt: skip
            built.replace(target)
            built.parent.rmdir()
    return target.read_bytes()


def _executor_environment() -> Path:
    """A virtualenv with exactly the executor image's third-party requirement set."""
    requirements = extra_requirements(EXECUTOR_EXTRA)
    if not requirements:
        raise BuildError(f"cosmicai's metadata has no [{EXECUTOR_EXTRA}] extra: reinstall it")
    digest = content_digest({}, *requirements, platform.python_version(), local_architecture())
    target = cache_root() / "envs" / f"{EXECUTOR_EXTRA}-{digest}"
    with _locked(target):
        if not (target / ".complete").is_file():
            shutil.rmtree(target, ignore_errors=True)
            base = getattr(sys, "_base_executable", None) or sys.executable
            _run([base, "-m", "venv", str(target)], "creating the executor environment")
            _run(
                [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet",
                 "--disable-pip-version-check", *requirements],
                f"installing the executor's requirements ({', '.join(requirements)})",
            )  # fmt: skip
            (target / ".complete").write_text("\n".join(requirements) + "\n")
    return target


def _run(command: list[str], what: str) -> None:
    print(f"local cloud: {what} (once) ...", file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"{what} failed (exit {result.returncode}):\n{result.stderr.strip()}")


def executor_image() -> str:
    """Build (once) the local executor image; returns its image URI for `CreateFunction`."""
    entries = code_entries("executor")
    environment = _executor_environment()
    tag = content_digest(entries, str(environment))
    target = images_root() / EXECUTOR_IMAGE / tag
    with _locked(target):
        if not target.is_dir():
            staging = target.with_name(tag + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            bundle = staging / "code.zip"
            write_zip(entries, bundle)
            with zipfile.ZipFile(bundle) as archive:
                archive.extractall(staging / "task")
            bundle.unlink()
            interpreter = Interpreter(str(environment / "bin" / "python"), ("-I",))
            _prepare_untrained_exports(interpreter, staging / "task")
            (staging / "interpreter.json").write_text(interpreter.to_json())
            staging.rename(target)
    return f"{EXECUTOR_IMAGE}:{tag}"


def _prepare_untrained_exports(interpreter: Interpreter, task: Path) -> None:
    """Bake the untrained models' ONNX exports into the image, as the Dockerfile does, so a rank
    on the onnxruntime backend never exports at first use."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from cosmicai.inference.backends import PREPARED_DIR, prepare_untrained; "
        "prepare_untrained(f'{sys.argv[1]}/{PREPARED_DIR}')"
    )
    done = subprocess.run(
        [interpreter.python, *interpreter.flags, "-c", code, str(task)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BuildError(f"exporting the untrained models to ONNX failed:\n{done.stderr[-2000:]}")


def images_root() -> Path:
    return cache_root() / "images"


def resolve_image(image_uri: str) -> tuple[Path, Interpreter]:
    """(task root, interpreter) of a local image built by `executor_image`."""
    repository, _, tag = image_uri.rpartition("/")[2].partition(":")
    folder = images_root() / repository / tag
    if not (folder / "interpreter.json").is_file():
        raise BuildError(f"no local image {image_uri} under {images_root()}")
    return folder / "task", Interpreter.from_file(folder / "interpreter.json")
