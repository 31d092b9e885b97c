"""The executor step: one rank's work, in engine mode or script mode.

The rank works only from its own Map item (never re-reading the shared payload), downloads its
partition files to local temporary storage (in engine mode one ahead of the compute, each deleted
once used; in script mode all first), runs inference, and writes
`runs/<run_id>/ranks/<rank>.json` with one PutObject: a retried rank overwrites its own key.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from cosmicai.atomic import atomic_path
from cosmicai.errors import CosmicAIError
from cosmicai.pipeline.layout import RunLayout
from cosmicai.pipeline.s3objects import iter_objects, split_s3_uri
from cosmicai.reference_results import reference_samples

Log = Callable[..., None]
STALE_SLACK_S = 5.0  # S3's LastModified has whole seconds; clocks differ a little


class EphemeralStorageFull(CosmicAIError):
    """The rank's /tmp (Lambda's ephemeral storage) filled up: retrying cannot help."""


class ScriptError(CosmicAIError):
    """A student script exited with a non-zero status or wrote an unreadable result."""


@dataclass(frozen=True)
class RankTask:
    """The executor's input, as the Map's ItemSelector builds it."""

    run_id: str
    bucket: str
    world_size: int
    rank: int
    files: list[dict[str, Any]]
    settings: dict[str, Any]

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> RankTask:
        try:
            item = event["item"]
            return cls(
                run_id=event["run_id"],
                bucket=event["bucket"],
                world_size=int(event["world_size"]),
                rank=int(item["rank"]),
                files=list(item["files"]),
                settings=dict(event["settings"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CosmicAIError(
                f"executor event is missing or has a bad field ({exc!r}); it must carry "
                f"run_id, bucket, world_size, settings and item{{rank, files}}"
            ) from exc


def partition_path(into: Path, index: int, f: dict[str, Any]) -> Path:
    """Where the rank's `index`-th partition goes: its order and file suffix kept."""
    return into / f"{index:05d}-{Path(f['key']).name}"


def download_partition(s3: Any, f: dict[str, Any], path: Path) -> float:
    """Download one partition to `path`; returns the seconds it took."""
    started = time.perf_counter()
    try:
        s3.download_file(f["bucket"], f["key"], str(path))
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        path.unlink(missing_ok=True)
        problem = f"no space left in the rank's temporary storage while downloading {_uri(f)}"
        raise ephemeral_storage_full(path.parent, problem) from err
    return time.perf_counter() - started


def download_files(s3: Any, files: list[dict[str, Any]], into: Path) -> list[Path]:
    """Download all the rank's partitions (script mode: the script expects its files)."""
    paths = [partition_path(into, index, f) for index, f in enumerate(files)]
    for f, path in zip(files, paths, strict=True):
        download_partition(s3, f, path)
    return paths


@dataclass
class PartitionStream:
    """The rank's partitions in order, each downloaded while the previous one is computed.

    Iterating yields one local path at a time; asking for the next deletes the previous one, so
    the folder holds at most two partitions. `waited_s` is the time the consumer waited for
    downloads, `download_s` the total download time (mostly hidden behind the compute).
    """

    s3: Any
    files: list[dict[str, Any]]
    into: Path
    waited_s: float = 0.0
    download_s: float = 0.0

    def __iter__(self) -> Generator[Path, None, None]:
        if not self.files:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
            pending = pool.submit(self._fetch, 0)
            for index in range(len(self.files)):
                waiting = time.perf_counter()
                path = pending.result()
                self.waited_s += time.perf_counter() - waiting
                if index + 1 < len(self.files):
                    pending = pool.submit(self._fetch, index + 1)
                try:
                    yield path
                finally:
                    path.unlink(missing_ok=True)

    def _fetch(self, index: int) -> Path:
        path = partition_path(self.into, index, self.files[index])
        self.download_s += download_partition(self.s3, self.files[index], path)
        return path


def check_storage(s3: Any, files: list[dict[str, Any]], into: Path, *, streamed: bool) -> None:
    """Refuse, before any download, partitions that cannot fit in the free temporary storage:
    all of them at once, or (`streamed`) the two largest consecutive ones."""
    sizes = [_object_size(s3, f) for f in files]
    if streamed:
        spans = [range(i, min(i + 2, len(files))) for i in range(len(files))]
    else:
        spans = [range(len(files))]
    span = max(spans, key=lambda r: sum(sizes[i] for i in r), default=range(0))
    need = sum(sizes[i] for i in span)
    if need <= shutil.disk_usage(into).free:
        return
    held = " with ".join(f"{_uri(files[i])} ({_mb(sizes[i])})" for i in span)
    at_once = "prefetched while the other is computed" if streamed else "all downloaded first"
    problem = (
        f"the rank's temporary storage is too small for its partitions: {held}, "
        f"{at_once}, need {_mb(need)}"
    )
    raise ephemeral_storage_full(into, problem)


def _object_size(s3: Any, f: dict[str, Any]) -> int:
    """A partition's size in bytes: as the init step recorded it in the item, or a HEAD."""
    if "size" in f:
        return int(f["size"])
    return int(s3.head_object(Bucket=f["bucket"], Key=f["key"])["ContentLength"])


def _uri(f: dict[str, Any]) -> str:
    return f"s3://{f['bucket']}/{f['key']}"


def _mb(size: float) -> str:
    return f"{size / 2**20:.1f} MB"


def ephemeral_storage_full(tmp: Path, problem: str) -> EphemeralStorageFull:
    """The error for a full (or too small) /tmp: `problem`, its size and what to change."""
    usage = shutil.disk_usage(tmp)
    return EphemeralStorageFull(
        f"{problem}: {tmp} holds {_mb(usage.total)} ({_mb(usage.free)} free). Raise the "
        f"executor's ephemeral storage (Terraform executor_ephemeral_storage_mb, up to 10240), "
        f"or use smaller partitions (`cosmicai partition --size 25MB`)."
    )


BACKEND_ENV = "COSMICAI_ENGINE_BACKEND"
"""The executor's default engine backend when the payload names none (set by Terraform)."""


@lru_cache(maxsize=2)
def _cached_model(
    source: str | None,
    model_size: str,
    trust_pickle: bool,
    device: str,
    backend: str,
    micro_batch: int,
) -> Any:
    """The model, loaded once per environment: warm invocations reuse it."""
    from cosmicai.inference.backends import load_engine_model

    return load_engine_model(
        source,
        backend=backend,
        micro_batch=micro_batch,
        model_size=model_size,
        trust_pickle=trust_pickle,
        device=device,
    )


def _download_once(s3: Any, bucket: str, key: str, cached: Path) -> None:
    if not cached.exists():
        with atomic_path(cached) as partial:
            s3.download_file(bucket, key, str(partial))


def _model_path(s3: Any, task: RankTask, export_names: tuple[str, ...]) -> str | None:
    """Local path of the payload's checkpoint (downloaded), a baked-in default, or None.

    Objects beside the checkpoint named `<checkpoint>` + each of `export_names` (its ONNX export
    and sidecar) are downloaded too when they exist; a stale export is ignored by the loader.
    """
    model = task.settings.get("model")
    if not model:
        return os.environ.get("COSMICAI_DEFAULT_MODEL") or None
    bucket, key = split_s3_uri(model) if model.startswith("s3://") else (task.bucket, model)
    cached = Path(tempfile.gettempdir()) / "cosmicai-models" / bucket / key
    _download_once(s3, bucket, key, cached)
    for name in export_names:
        with contextlib.suppress(ClientError):  # no export uploaded: made at first use
            _download_once(s3, bucket, key + name, cached.with_name(cached.name + name))
    return str(cached)


def run_engine(s3: Any, task: RankTask, paths: Iterable[Path]) -> dict[str, Any]:
    """Built-in AstroMAE inference over the rank's files (consumed one at a time, in order)."""
    from cosmicai.inference.backends import export_suffixes
    from cosmicai.inference.engine import EngineConfig, run_inference

    settings = task.settings
    sources = [_uri(f) for f in task.files]  # names in data errors
    config = EngineConfig(
        batch_size=int(settings.get("batch_size") or 512),
        threads=settings.get("threads"),
        device=settings.get("device") or "cpu",
    )
    config.validate()
    micro_batch = config.resolved_micro_batch()
    backend = settings.get("backend") or os.environ.get(BACKEND_ENV) or "torch"
    exports = export_suffixes(micro_batch) if backend == "onnxruntime" else ()
    model = _cached_model(
        _model_path(s3, task, exports),
        settings.get("model_size") or "full",
        settings.get("trust_pickle") is True,
        config.device,
        backend,
        micro_batch,
    )
    result = run_inference(
        model,
        paths,
        config,
        labels=sources,
        data_path_label=",".join(sources),
        result_path=settings.get("result_path"),
    )
    return {**result.record, "predictions": result.predictions, "true_redshift": result.true}


def code_path(task: RankTask) -> Path:
    """`<tmp>/<S3_object_name>`, where the reference executor put the code (/tmp on Lambda)."""
    name: str = task.settings["S3_object_name"].strip("/")
    return Path(tempfile.gettempdir()) / name


def _download_code(s3: Any, task: RankTask, root: Path) -> None:
    """Fetch S3_object_name (a folder prefix or one file) from the runs bucket to `root`."""
    name = task.settings["S3_object_name"].strip("/")
    _remove_code(root)  # what an earlier rank of this environment may have left
    if task.settings.get("object_type") == "file":
        root.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(task.bucket, name, str(root))
        return
    count = 0
    for obj in iter_objects(s3, task.bucket, name + "/"):
        target = root / obj["Key"][len(name) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(task.bucket, obj["Key"], str(target))
        count += 1
    if count == 0:
        raise ScriptError(f"no objects under s3://{task.bucket}/{name}/ (S3_object_name)")


def _remove_code(root: Path) -> None:
    """Remove downloaded code and the folders above it that it leaves empty (up to <tmp>)."""
    if root.is_dir():
        shutil.rmtree(root, ignore_errors=True)
    else:
        root.unlink(missing_ok=True)
    tmp = Path(tempfile.gettempdir())
    for parent in root.parents:
        if parent == tmp or not parent.is_relative_to(tmp):
            break
        try:
            parent.rmdir()
        except OSError:  # not empty (or gone): keep what is not ours
            break


def script_env(task: RankTask, paths: list[Path], script: Path) -> dict[str, str]:
    """The reference executor's variables (same names and meanings), then ours.

    DATA_PATH is the rank's S3 key, or a JSON list of keys when it has several files (the
    reference scripts read it as one key: one file per rank keeps them unchanged).
    """
    settings = task.settings
    keys = [f["key"] for f in task.files]
    data_bucket = settings.get("data_bucket") or (task.files[0]["bucket"] if task.files else "")
    batch_size = str(settings.get("batch_size") or 512)
    result_path = (settings.get("result_path") or "").strip("/")
    return {
        "S3_BUCKET": task.bucket,
        "S3_OBJECT_NAME": settings["S3_object_name"],
        "SCRIPT": str(script),
        "S3_OBJECT_TYPE": settings.get("object_type") or "folder",
        "WORLD_SIZE": str(task.world_size),
        "RANK": str(task.rank),
        "DATA_BUCKET": data_bucket,
        "DATA_PREFIX": (settings.get("data_prefix") or "").strip("/"),
        "DATA_PATH": keys[0] if len(keys) == 1 else json.dumps(keys),
        "RESULT_PATH": result_path,
        "BATCH_SIZE": batch_size,
        "RUN_ID": task.run_id,
        "BUCKET": task.bucket,
        "DATA_PATHS": os.pathsep.join(str(p) for p in paths),
    }


# Runs argv[2:] so that it is killed when this process dies (Linux's parent-death signal,
# which exec keeps): a script in a session of its own dies with its environment, as on Lambda.
_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "prctl = getattr(ctypes.CDLL(None), 'prctl', None)\n"
    "if prctl is not None:\n"
    "    prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(137)  # the parent is already gone\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _run_in_own_group(command: list[str], cwd: Path, env: dict[str, str], logs: Path) -> int:
    """Run `command` in its own session; wait for it alone, then kill what it left running.

    Output goes to files, not pipes: a background child holding a pipe open would otherwise
    keep the rank waiting for end-of-file until its timeout.
    """
    with (logs / "stdout").open("wb") as out, (logs / "stderr").open("wb") as err:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            return process.wait()
        finally:
            with contextlib.suppress(ProcessLookupError):  # nothing was left behind
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def reference_record(
    s3: Any, task: RankTask, env: dict[str, str], since: float
) -> dict[str, Any] | None:
    """The record the script wrote the reference way (`DATA_BUCKET/RESULT_PATH/<rank>.json`),
    or None; one older than the script's start (a previous run's) is ignored."""
    bucket, key = env["DATA_BUCKET"], f"{env['RESULT_PATH']}/{task.rank}.json"
    try:
        obj = s3.get_object(Bucket=bucket, Key=key)
    except s3.exceptions.NoSuchKey:
        return None
    if obj["LastModified"].timestamp() < since - STALE_SLACK_S:
        return None
    try:
        record = json.loads(obj["Body"].read())
    except ValueError as exc:
        raise ScriptError(f"s3://{bucket}/{key} written by the script is not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise ScriptError(f"s3://{bucket}/{key} written by the script is not a JSON object")
    return record


def run_script(
    s3: Any, task: RankTask, paths: list[Path], workdir: Path, log: Log
) -> dict[str, Any]:
    """Run the student's script as the reference executor did; its result joins the record.

    The code is at `<tmp>/<S3_object_name>` and the script runs there with the reference's
    variables (see `script_env`). A record it writes the reference way becomes the rank's
    record (its fields at the top level, its sample count added when it has one); one written to
    COSMICAI_RESULT_FILE lands under `script_result`. The function's own timeout bounds the
    script: Lambda (or the local runtime) then ends the whole environment.
    """
    code = code_path(task)
    try:
        _download_code(s3, task, code)
        is_file = task.settings.get("object_type") == "file"
        folder = code.parent if is_file else code  # the cwd, as in the reference
        script = code if is_file else code / task.settings["script"]
        result_file = workdir / "result.json"
        env = {**os.environ, **script_env(task, paths, script)}
        env["COSMICAI_RESULT_FILE"] = str(result_file)
        env.update(_communication_env(task, workdir))
        env["PYTHONPATH"] = _script_pythonpath(env.get("PYTHONPATH"), folder, script)
        if task.settings.get("trust_pickle") is True:  # asked for explicitly in the payload
            # torch >= 2.6 loads weights only: the script's torch.load unpickles as it did
            env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        since, started = time.time(), time.perf_counter()
        status = _run_in_own_group(
            [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), sys.executable, str(script)],
            folder, env, workdir,
        )  # fmt: skip
        wall_s = time.perf_counter() - started
    finally:
        _remove_code(code)
    stderr = _log_output(workdir, log)
    if status != 0:
        tail = "\n".join(stderr.strip().splitlines()[-5:])
        raise ScriptError(
            f"script {task.settings['script']} exited with status {status} on "
            f"rank {task.rank}: {tail or '(no stderr)'}"
        )
    record: dict[str, Any] = {}
    reference = reference_record(s3, task, env, since)
    if reference is not None:
        samples, source = reference_samples(reference)
        record.update(reference, samples=samples, samples_source=source)
    record.update(script=task.settings["script"], wall_s=wall_s)
    if result_file.exists():
        try:
            record["script_result"] = json.loads(result_file.read_text())
        except json.JSONDecodeError as exc:
            raise ScriptError(
                f"COSMICAI_RESULT_FILE written by the script is not JSON: {exc}"
            ) from exc
    return record


def _script_pythonpath(pythonpath: str | None, folder: Path, script: Path) -> str:
    """A script's PYTHONPATH: the folders this executor imports cosmicai from (the image's venv,
    or a task folder the runtime put on sys.path), the given entries, and last the timm shim of
    `cosmicai.compat` unless a timm of the script's own is in its folder, beside it or installed
    (the script's folder, sys.path[0], comes before PYTHONPATH anyway)."""
    import cosmicai
    from cosmicai.compat import timm_pythonpath

    roots = [str(Path(entry).parent) for entry in cosmicai.__path__]
    own_timm = importlib.util.find_spec("timm") is not None or any(
        (place / name).exists() for place in (folder, script.parent) for name in ("timm", "timm.py")
    )
    shim = [] if own_timm else [str(timm_pythonpath())]
    paths = dict.fromkeys([*roots, *(pythonpath or "").split(os.pathsep), *shim])
    return os.pathsep.join(path for path in paths if path)


def _log_output(workdir: Path, log: Log) -> str:
    """Log the script's output line by line; returns its stderr."""
    texts = {}
    for stream in ("stdout", "stderr"):
        texts[stream] = (workdir / stream).read_text(errors="replace")
        for line in texts[stream].splitlines():
            log("script output", stream=stream, line=line)
    return texts["stderr"]


def _communication_env(task: RankTask, workdir: Path) -> dict[str, str]:
    """FMI settings for scripts that open a communicator (see cosmicai.comm)."""
    if not task.settings.get("communication"):
        return {}
    from cosmicai.comm.config import fmi_comm_name, fmi_script_pythonpath, write_fmi_config
    from cosmicai.rendezvous.probe import require_rendezvous, resolve_ipv4

    port = int(os.environ.get("RENDEZVOUS_PORT", "10000"))
    # FMI's TCPunch client takes only IPv4 addresses; the image records the protocol it speaks.
    host = resolve_ipv4(os.environ.get("RENDEZVOUS_HOST", "127.0.0.1"), port)
    deadline_s = float(os.environ.get("RENDEZVOUS_DEADLINE_S", "10"))
    require_rendezvous(
        f"{host}:{port}",
        protocol=os.environ.get("RENDEZVOUS_PROTOCOL", "legacy"),
        client_protocol=os.environ.get("COSMICAI_TCPUNCH_PROTOCOL") or None,
        timeout_s=deadline_s,
    )
    memory_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024"))
    config_path = workdir / "fmi.json"
    write_fmi_config(
        config_path,
        rendezvous_host=host,
        rendezvous_port=port,
        bucket=task.bucket,
        run_id=task.run_id,
        store_host=os.environ.get("COSMICAI_STORE_HOST"),
        store_port=int(os.environ["COSMICAI_STORE_PORT"])
        if "COSMICAI_STORE_PORT" in os.environ
        else None,
        timeout_s=deadline_s,
        memory_mb=memory_mb,
    )
    env = {
        "FMI_CONFIG": str(config_path),
        "FMI_COMM_NAME": fmi_comm_name(task.run_id),
        "FMI_MEMORY_MB": str(memory_mb),
    }
    try:
        import fmi  # noqa: F401  (the native module, present in the executor image)
    except ImportError:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (*map(str, fmi_script_pythonpath()), os.environ.get("PYTHONPATH", "")) if p
        )
    return env


def run_rank(s3: Any, event: dict[str, Any], *, request_id: str, log: Log) -> dict[str, Any]:
    """Executor Lambda body: run one rank and store its record; returns a small pointer."""
    task = RankTask.from_event(event)
    layout = RunLayout(task.run_id)
    started_at = time.time()
    workdir = Path(tempfile.mkdtemp(prefix=f"rank{task.rank}-"))
    try:
        if task.settings.get("mode") == "script":
            check_storage(s3, task.files, workdir, streamed=False)
            download_started = time.perf_counter()
            paths = download_files(s3, task.files, workdir)
            download_s = download_total_s = time.perf_counter() - download_started
            log("partitions downloaded", files=len(paths), seconds=round(download_s, 3))
            record = run_script(s3, task, paths, workdir, log)
        else:
            check_storage(s3, task.files, workdir, streamed=True)
            stream = PartitionStream(s3, task.files, workdir)
            with contextlib.closing(iter(stream)) as streamed:
                record = run_engine(s3, task, streamed)
            download_s, download_total_s = stream.waited_s, stream.download_s
            log(
                "partitions streamed",
                files=len(task.files),
                waited_s=round(download_s, 3),
                download_s=round(download_total_s, 3),
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record.update(
        {
            "rank": task.rank,
            "world_size": task.world_size,
            "run_id": task.run_id,
            "status": "succeeded",
            "request_id": request_id,
            "download_s": download_s,  # what the rank waited for: prefetching hides the rest
            "download_total_s": download_total_s,
            "started_at": started_at,
            "ended_at": time.time(),
            "data_files": [_uri(f) for f in task.files],
        }
    )
    key = layout.rank_key(task.rank)
    s3.put_object(
        Bucket=task.bucket,
        Key=key,
        Body=json.dumps(record).encode(),
        ContentType="application/json",
    )
    log("rank result written", key=key, samples=record.get("samples"))
    return {"rank": task.rank, "status": "succeeded", "result_key": key}
