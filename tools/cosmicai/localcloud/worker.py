"""One Lambda execution environment: a process that imports a handler once and serves invocations.

Started by `LambdaRuntime` as `python -I [-S] worker.py TASK_ROOT MODULE.FUNCTION [SITE_DIR ...]`:
by path, in an isolated interpreter, so it imports only the standard library and what
`TASK_ROOT` (the unpacked function code, Lambda's /var/task) and the runtime's `SITE_DIR`s hold.
Requests arrive as JSON lines on stdin; replies go as JSON lines to the file descriptor named
by `COSMICAI_WORKER_FD`. Whatever the handler prints goes to stdout/stderr, which the runtime
forwards to the function's CloudWatch Logs stream, as on Lambda. The worker exits when stdin
closes, and a watchdog kills its whole process group (the handler's children included) the
moment the runtime that started it (`COSMICAI_RUNTIME_PID`) is gone, even while it computes, so
it never outlives the runtime.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

END_MARKER = "\x1ecosmicai-invocation-end"
"""Printed after each invocation: the runtime then knows the handler's output is complete."""


@dataclass
class LambdaContext:
    """The context object Lambda passes to Python handlers (the attributes handlers use)."""

    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    deadline_ms: int

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.deadline_ms - int(time.time() * 1000))


def error_payload(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    """Lambda's error body: errorType, errorMessage, stackTrace."""
    return {
        "errorType": error_type or type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def _peak_memory() -> Any:
    """`cosmicai/peak_memory.py`, loaded by path: this interpreter cannot import the package."""
    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peak_memory.py"
    )
    spec = importlib.util.spec_from_file_location("_cosmicai_peak_memory", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


_PEAK_MEMORY = _peak_memory()


def max_rss_mb() -> int:
    """Peak resident memory of this environment (the process and its finished children), in
    whole MB rounded up, as Lambda's REPORT line gives it."""
    return int(_PEAK_MEMORY.peak_rss_mb(children=True)) + 1


def _load_handler(task_root: str, spec: str, site_dirs: list[str]) -> Any:
    module_name, _, function_name = spec.rpartition(".")
    sys.path[:0] = [task_root, *site_dirs]
    module = importlib.import_module(module_name)
    handler = getattr(module, function_name, None)
    if not callable(handler):
        raise AttributeError(f"Handler '{function_name}' missing on module '{module_name}'")
    return handler


def _watch_runtime(runtime_pid: int, poll_s: float = 0.2) -> None:
    """Kill this environment's process group once its runtime process has exited."""
    while os.getppid() == runtime_pid:
        time.sleep(poll_s)
    os.killpg(0, signal.SIGKILL)


def main() -> None:
    runtime_pid = int(os.environ.get("COSMICAI_RUNTIME_PID", os.getppid()))
    threading.Thread(target=_watch_runtime, args=(runtime_pid,), daemon=True).start()
    task_root, spec, site_dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.chdir(task_root)
    replies = os.fdopen(int(os.environ["COSMICAI_WORKER_FD"]), "w", buffering=1)

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")

    started = time.perf_counter()
    try:
        handler = _load_handler(task_root, spec, site_dirs)
        init_error = None
    except Exception as exc:  # the Init phase failed: every invocation reports it
        handler = None
        init_error = error_payload(exc, "Runtime.ImportModuleError")
        print(f"[ERROR] {init_error['errorType']}: {exc}", file=sys.stderr, flush=True)
    reply({"init_ms": (time.perf_counter() - started) * 1000, "error": init_error})

    for line in sys.stdin:
        request = json.loads(line)
        context = LambdaContext(**request["context"])
        if handler is None:
            outcome: dict[str, Any] = {"error": init_error}
        else:
            try:
                outcome = {"result": handler(request["event"], context)}
            except Exception as exc:
                outcome = {"error": error_payload(exc)}
                print(
                    f"[ERROR] {type(exc).__name__}: {exc}\n{traceback.format_exc()}",
                    file=sys.stderr,
                    flush=True,
                )
        sys.stderr.flush()
        print(END_MARKER, flush=True)
        outcome["max_rss_mb"] = max_rss_mb()
        try:
            reply(outcome)
        except TypeError as exc:  # a result that is not JSON-serialisable
            reply({"error": error_payload(exc, "Runtime.MarshalError"), "max_rss_mb": max_rss_mb()})


if __name__ == "__main__":
    main()
