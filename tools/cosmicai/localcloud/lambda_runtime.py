"""A local Lambda runtime: runs the functions registered in moto in worker processes.

It gives each invocation Lambda's semantics: the function's code (the zip uploaded to moto) in a
process of its own, a context object, cold starts (a new environment, with an Init phase) and
warm starts (an idle environment reused), the function's timeout (the environment is killed and
the caller gets Lambda's timeout error), its memory size (an environment that grows past it is
killed), a concurrency cap (throttling beyond it), and START/END/REPORT lines in the CloudWatch
Logs group `/aws/lambda/<function>`, so the metrics code reads local and AWS logs alike.

Zip functions run under the stand-in for AWS's python3.11 runtime, image functions (the
executor) from their local image (`cosmicai.localcloud.runtimes`). Each environment sees a /tmp
of its own, as on Lambda (its temporary folder bind-mounted on /tmp in a mount namespace of its
own, where this machine allows one), so concurrent runs never see each other's files.

The local account has this machine's CPUs: an invocation runs only once it holds as many CPUs as
Lambda would give its memory (capped by the machine), so concurrent environments never hold more
threads than there are cores; the others wait in line, first come first served, and their wait
is neither billed nor counted against their timeout. Ranks that communicate cannot wait in line
(collectives need every rank alive), so a local cloud started for communication shares the CPUs
instead: one CPU each, in turn.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import json
import logging
import math
import os
import select
import signal
import subprocess
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from moto.awslambda.exceptions import UnknownFunctionException
from moto.awslambda.models import lambda_backends

from cosmicai.defaults import LAMBDA_MB_PER_VCPU
from cosmicai.lambda_report import ReportLine
from cosmicai.localcloud import worker
from cosmicai.localcloud.runtimes import Interpreter, cache_root, managed_runtime, resolve_image

log = logging.getLogger("cosmicai.localcloud.lambda")

_POLL_S = 0.05


def vcpus_for(memory_mb: int, available: int) -> int:
    """The CPUs Lambda would give this memory size, capped by what this machine has."""
    return max(1, min(available, math.ceil(memory_mb / LAMBDA_MB_PER_VCPU)))


@dataclass(frozen=True)
class InvokeResponse:
    """What the Invoke API returns: HTTP status, body, and the function-error header if any."""

    status: int
    body: bytes
    request_id: str
    function_error: str | None = None
    error_code: str | None = None


@dataclass(frozen=True)
class FunctionConfig:
    """The parts of a moto Lambda function the runtime needs."""

    name: str
    arn: str
    handler: str
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]
    code_sha: str
    code_zip: bytes
    image_uri: str | None
    reserved_concurrency: int | None

    @property
    def log_group(self) -> str:
        return f"/aws/lambda/{self.name}"


LogSink = Callable[[str, str, list[tuple[int, str]]], None]
"""Writes (timestamp ms, message) events to (log group, log stream)."""


@dataclass(eq=False)
class _Environment:
    """One execution environment (worker process) of a function."""

    function: FunctionConfig
    process: subprocess.Popen[bytes]
    replies: io.TextIOWrapper
    log_stream: str
    lines: list[tuple[int, str]] = field(default_factory=list)
    marker: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pump_output(self) -> None:
        """Collect the worker's stdout/stderr lines (runs in a thread until the pipe closes)."""
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            if text == worker.END_MARKER:
                self.marker.set()
                continue
            if not text.strip():  # CloudWatch Logs refuses empty events
                continue
            with self.lock:
                self.lines.append((int(time.time() * 1000), text))
        self.closed.set()
        self.marker.set()

    def take_lines(self) -> list[tuple[int, str]]:
        with self.lock:
            lines, self.lines = self.lines, []
        return lines

    def read_reply(self, deadline: float, memory_mb: int) -> dict[str, Any] | str:
        """The worker's reply, or "timeout" / "oom" / "crash" if it never comes."""
        fd = self.replies.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            ready, _, _ = select.select([fd], [], [], min(_POLL_S * 4, remaining))
            if ready:
                line = self.replies.readline()
                return json.loads(line) if line else "crash"
            if self.tree_rss_mb() > memory_mb:
                return "oom"

    def tree_rss_mb(self) -> float:
        try:
            root = psutil.Process(self.process.pid)
            procs = [root, *root.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs) / 2**20
        except psutil.NoSuchProcess:
            return 0.0

    def kill(self) -> None:
        """Tear the environment down, with every process the handler started: those in the
        worker's process group (which outlive a worker that was killed) and those that left it
        for a session of their own."""
        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        kill_all(descendants)
        self.process.wait()
        self.closed.wait(2)
        self.replies.close()
        if self.process.stdin:
            self.process.stdin.close()


def kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


def become_subreaper() -> None:
    """Have orphaned descendants (a killed environment's children) re-parented to this process
    rather than to init, so `LambdaRuntime.shutdown` finds and ends them (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


_PR_SET_CHILD_SUBREAPER = 36


class CpuPool:
    """The machine's CPUs, lent to invocations first come, first served.

    `shared`: for ranks that communicate, which must all be alive at once (a rank waiting in a
    collective for a queued one would wait forever): nobody waits; each invocation gets one CPU,
    in turn, so the ranks spread over the machine.
    """

    def __init__(self, cpus: list[int], *, shared: bool = False) -> None:
        self.cpus = sorted(cpus)
        self.shared = shared
        self._free = list(self.cpus)
        self._queue: list[object] = []
        self._next = 0
        self._changed = threading.Condition()

    def acquire(self, count: int) -> list[int]:
        """Block until `count` CPUs are free and this caller is first in line; take them."""
        count = min(count, len(self.cpus))
        ticket = object()
        with self._changed:
            if self.shared:
                self._next += 1
                return [self.cpus[self._next % len(self.cpus)]]
            self._queue.append(ticket)
            self._changed.wait_for(lambda: self._queue[0] is ticket and len(self._free) >= count)
            self._queue.pop(0)
            taken, self._free = self._free[:count], self._free[count:]
            self._changed.notify_all()
        return taken

    def release(self, cpus: list[int]) -> None:
        if self.shared:
            return
        with self._changed:
            self._free = sorted(self._free + cpus)
            self._changed.notify_all()


def pin(pid: int, cpus: list[int]) -> None:
    """Pin every thread of a process, and of its descendants, to `cpus`."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            for thread in proc.threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(thread.id, cpus)


@functools.cache
def _can_make_tmp_views() -> bool:
    """Whether this process may start workers in a mount namespace of their own."""
    probe = subprocess.run(
        [*_UNSHARE, "sh", "-c", "mount -t tmpfs none /tmp"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        log.warning(
            "environments share this machine's /tmp (no mount namespaces here: %s); each "
            "still gets its own TMPDIR",
            probe.stderr.decode(errors="replace").strip(),
        )
    return probe.returncode == 0


_UNSHARE = ["unshare", "--mount", "--propagation", "private"]
if os.geteuid() != 0:
    _UNSHARE[1:1] = ["--user", "--map-root-user"]


@functools.cache
def _warn_shared_tmp(path: str) -> None:
    """Say once (not per environment) why environments share the machine's /tmp."""
    log.warning("environments share /tmp: %s lives under /tmp", path)


def tmp_view(tmpdir: Path, needed: list[str]) -> list[str]:
    """The command prefix that shows a worker `tmpdir` as its /tmp, as Lambda gives every
    environment a /tmp of its own. Empty (the machine's /tmp is shared) where mount namespaces
    are not allowed, or where what the worker runs (`needed`: its interpreter, code, packages)
    lives under /tmp itself, which the view would hide."""
    hidden = [p for p in needed for q in (p, os.path.realpath(p)) if q.startswith("/tmp/")]
    if hidden or not _can_make_tmp_views():
        if hidden:
            _warn_shared_tmp(hidden[0])
        return []
    return [*_UNSHARE, "sh", "-c", 'mount --bind "$0" /tmp && exec "$@"', str(tmpdir)]


def _runs_from(task_root: Path, interpreter: Interpreter) -> list[str]:
    """The paths a worker runs from: its code, the worker itself, its interpreter and packages
    (and what the runtime's package links point at)."""
    paths = [str(task_root), worker.__file__, interpreter.python, *interpreter.site_dirs]
    for site in interpreter.site_dirs:
        paths += [str(link.resolve()) for link in Path(site).iterdir() if link.is_symlink()]
    return paths


class LambdaRuntime:
    """Invokes moto's Lambda functions in local worker processes."""

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: str,
        workdir: Path,
        log_sink: LogSink,
        account_id: str = "123456789012",
        account_concurrency: int = 1000,
        share_cpus: bool = False,
    ) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self.workdir = workdir
        self.account_id = account_id
        self.account_concurrency = account_concurrency
        self.cpu_pool = CpuPool(list(os.sched_getaffinity(0)), shared=share_cpus)
        self._log_sink = log_sink
        self._lock = threading.Lock()
        self._idle: dict[str, list[_Environment]] = {}
        self._busy: dict[str, int] = {}
        self._all: set[_Environment] = set()

    # -- the Invoke API -----------------------------------------------------------------
    def invoke(self, function: str, payload: bytes, qualifier: str | None = None) -> InvokeResponse:
        """Run one synchronous invocation (InvocationType RequestResponse) of the function's
        `qualifier` (a version or alias; None: $LATEST)."""
        request_id = str(uuid.uuid4())
        try:
            config = self._function_config(function, qualifier)
        except UnknownFunctionException:
            return _service_error(
                request_id, 404, "ResourceNotFoundException", f"Function not found: {function}"
            )
        if not self._admit(config):
            return _service_error(
                request_id,
                429,
                "TooManyRequestsException",
                "Rate Exceeded.",
                reason="ReservedFunctionConcurrentInvocationLimitExceeded",
            )
        try:
            cpus = self.cpu_pool.acquire(vcpus_for(config.memory_mb, len(self.cpu_pool.cpus)))
            try:
                env, cold = self._acquire(config)
                pin(env.process.pid, cpus)
                return self._run(env, cold, config, request_id, payload)
            finally:
                self.cpu_pool.release(cpus)
        except Exception as exc:  # the runtime's own fault: Lambda's service error, retryable
            log.exception("invocation %s of %s failed in the runtime", request_id, config.name)
            return _service_error(
                request_id, 500, "ServiceException", f"the local Lambda runtime failed: {exc}"
            )
        finally:
            with self._lock:
                self._busy[config.name] -= 1

    def _write_logs(
        self, config: FunctionConfig, env: _Environment, events: list[tuple[int, str]]
    ) -> None:
        try:
            self._log_sink(config.log_group, env.log_stream, events)
        except Exception:  # logs are best effort, as on Lambda: never fail the invocation
            log.exception("could not write %d log events to %s", len(events), config.log_group)

    def shutdown(self) -> None:
        """Kill every environment (idle or busy), and whatever their processes left behind
        (orphans come to this process, the subreaper of its environments)."""
        with self._lock:
            envs, self._all, self._idle = list(self._all), set(), {}
        for env in envs:
            env.kill()
        kill_all(psutil.Process().children(recursive=True))

    # -- environments -------------------------------------------------------------------
    def _function_config(self, function: str, qualifier: str | None = None) -> FunctionConfig:
        fn = lambda_backends[self.account_id][self.region].get_function(function, qualifier)
        return FunctionConfig(
            name=fn.function_name,
            arn=fn.function_arn,
            handler=fn.handler or "handler.handler",
            timeout_s=int(fn.timeout),
            memory_mb=int(fn.memory_size),
            environment=dict(fn.environment_vars or {}),
            code_sha=fn.code_sha_256,
            code_zip=getattr(fn, "code_bytes", b""),  # image functions have none
            image_uri=fn.code.get("ImageUri") if fn.package_type == "Image" else None,
            reserved_concurrency=fn.reserved_concurrency,
        )

    def _admit(self, config: FunctionConfig) -> bool:
        """Count an invocation in flight, or refuse it (throttling) beyond the concurrency."""
        with self._lock:
            limit = (
                self.account_concurrency
                if config.reserved_concurrency is None
                else config.reserved_concurrency
            )
            busy_total = sum(self._busy.values())
            if self._busy.get(config.name, 0) >= limit or busy_total >= self.account_concurrency:
                return False
            self._busy[config.name] = self._busy.get(config.name, 0) + 1
            return True

    def _acquire(self, config: FunctionConfig) -> tuple[_Environment, bool]:
        """A warm idle environment of this function's code, or a new (cold) one."""
        with self._lock:
            idle = self._idle.setdefault(config.name, [])
            while idle:
                env = idle.pop()
                if env.function == config:
                    return env, False
                self._all.discard(env)
                threading.Thread(target=env.kill, daemon=True).start()
        return self._start(config), True

    def _release(self, env: _Environment) -> None:
        with self._lock:
            if env in self._all:
                self._idle.setdefault(env.function.name, []).append(env)

    def _discard(self, env: _Environment) -> None:
        with self._lock:
            self._all.discard(env)
        env.kill()

    def _task_root(self, config: FunctionConfig) -> tuple[Path, Interpreter]:
        """Where the function's code is unpacked (Lambda's /var/task), and what runs it."""
        if config.image_uri:
            return resolve_image(config.image_uri)
        # content-addressed and outside /tmp (each environment sees its own /tmp)
        target = cache_root() / "code" / config.name / config.code_sha.replace("/", "_")[:32]
        if not target.exists():
            staging = target.with_name(target.name + f".{uuid.uuid4().hex}")
            with zipfile.ZipFile(io.BytesIO(config.code_zip)) as archive:
                archive.extractall(staging)
            with contextlib.suppress(OSError):  # another invocation extracted it first
                staging.rename(target)
        return target, managed_runtime()

    def _start(self, config: FunctionConfig) -> _Environment:
        stream = time.strftime("%Y/%m/%d/[$LATEST]", time.gmtime()) + uuid.uuid4().hex
        tmpdir = self.workdir / "tmp" / uuid.uuid4().hex
        tmpdir.mkdir(parents=True)
        task_root, interpreter = self._task_root(config)
        view = tmp_view(tmpdir, _runs_from(task_root, interpreter))
        read_fd, write_fd = os.pipe()
        process = subprocess.Popen(
            [
                *view,
                interpreter.python,
                *interpreter.flags,
                worker.__file__,
                str(task_root),
                config.handler,
                *interpreter.site_dirs,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={
                **self._lambda_env(config, stream, "/tmp" if view else str(tmpdir), task_root),
                "COSMICAI_WORKER_FD": str(write_fd),
                "COSMICAI_RUNTIME_PID": str(os.getpid()),
            },
            pass_fds=(write_fd,),
            start_new_session=True,
        )
        os.close(write_fd)
        env = _Environment(config, process, os.fdopen(read_fd, "r"), stream)
        threading.Thread(target=env.pump_output, daemon=True).start()
        with self._lock:
            self._all.add(env)
        return env

    def _lambda_env(
        self, config: FunctionConfig, stream: str, tmpdir: str, task_root: Path
    ) -> dict[str, str]:
        """The environment Lambda gives a function: its variables plus the runtime's own.

        Built from scratch, so the user's own AWS credentials never reach local handlers.
        """
        passthrough = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
        return {
            **passthrough,
            **config.environment,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
            "AWS_LAMBDA_FUNCTION_NAME": config.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": config.log_group,
            "AWS_LAMBDA_LOG_STREAM_NAME": stream,
            "LAMBDA_TASK_ROOT": str(task_root),
            "HOME": tmpdir,
            "TMPDIR": tmpdir,
            "PYTHONUNBUFFERED": "1",
        }

    # -- one invocation -----------------------------------------------------------------
    def _run(
        self, env: _Environment, cold: bool, config: FunctionConfig, request_id: str, payload: bytes
    ) -> InvokeResponse:
        events: list[tuple[int, str]] = []
        init_ms: float | None = None
        if cold:
            ready = env.read_reply(time.monotonic() + max(config.timeout_s, 10), config.memory_mb)
            if not isinstance(ready, dict):
                self._discard(env)
                events += env.take_lines()
                self._write_logs(config, env, events)
                return _function_error(
                    request_id, "Runtime.ExitError", "Runtime exited during Init"
                )
            init_ms = ready["init_ms"]
            events += env.take_lines()
        started_wall = int(time.time() * 1000)
        events.append((started_wall, f"START RequestId: {request_id} Version: $LATEST"))
        context = {
            "function_name": config.name,
            "function_version": "$LATEST",
            "invoked_function_arn": config.arn,
            "memory_limit_in_mb": config.memory_mb,
            "aws_request_id": request_id,
            "log_group_name": config.log_group,
            "log_stream_name": env.log_stream,
            "deadline_ms": started_wall + config.timeout_s * 1000,
        }
        event = json.loads(payload or b"{}")
        started = time.monotonic()
        assert env.process.stdin is not None
        env.marker.clear()
        env.process.stdin.write(json.dumps({"event": event, "context": context}).encode() + b"\n")
        env.process.stdin.flush()
        reply = env.read_reply(started + config.timeout_s, config.memory_mb)
        duration_ms = (time.monotonic() - started) * 1000
        if isinstance(reply, dict):
            env.marker.wait(2)
            max_mb = reply["max_rss_mb"]
        else:
            max_mb = math.ceil(env.tree_rss_mb())
            self._discard(env)
        events += env.take_lines()
        now = int(time.time() * 1000)
        response: InvokeResponse
        if reply == "timeout":
            message = f"Task timed out after {config.timeout_s:.2f} seconds"
            events.append((now, f"{_iso(now)} {request_id} {message}"))
            response = _function_error(request_id, "Sandbox.Timedout", message)
        elif reply == "oom":
            response = _function_error(
                request_id,
                "Runtime.OutOfMemory",
                f"Runtime exited with error: signal: killed (memory above the function's "
                f"{config.memory_mb} MB)",
            )
            max_mb = config.memory_mb
        elif reply == "crash":
            response = _function_error(
                request_id, "Runtime.ExitError", "Runtime exited without providing a reason"
            )
        elif "error" in reply:
            response = InvokeResponse(
                200, json.dumps(reply["error"]).encode(), request_id, "Unhandled"
            )
        else:
            response = InvokeResponse(200, json.dumps(reply["result"]).encode(), request_id)
        report = ReportLine(
            request_id=request_id,
            duration_ms=round(duration_ms, 2),
            billed_duration_ms=math.ceil(duration_ms + (init_ms or 0)),
            memory_size_mb=config.memory_mb,
            max_memory_used_mb=min(int(max_mb), config.memory_mb),
            init_duration_ms=round(init_ms, 2) if init_ms is not None else None,
            status="timeout" if reply == "timeout" else "success",
        )
        events.append((now, f"END RequestId: {request_id}"))
        events.append((now, report.format()))
        self._write_logs(config, env, events)
        if isinstance(reply, dict):
            self._release(env)
        return response


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _function_error(request_id: str, error_type: str, message: str) -> InvokeResponse:
    body = {"errorType": error_type, "errorMessage": f"RequestId: {request_id} Error: {message}"}
    return InvokeResponse(200, json.dumps(body).encode(), request_id, "Unhandled")


def _service_error(
    request_id: str, status: int, code: str, message: str, reason: str | None = None
) -> InvokeResponse:
    body: dict[str, str] = {"Type": "User", "message": message}
    if reason:
        body["Reason"] = reason
    return InvokeResponse(status, json.dumps(body).encode(), request_id, error_code=code)
