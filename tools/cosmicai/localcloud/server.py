"""The local cloud's server process: moto on loopback, with Lambda Invoke answered by our runtime.

`python -m cosmicai.localcloud.server --workdir DIR` binds 127.0.0.1 on a free port, prints one
JSON line `{"endpoint_url": ..., "rendezvous": ..., "store": ...}` when ready, and serves until
its stdin closes or it receives SIGTERM/SIGINT; then it kills every Lambda environment and
exits. It also runs the rendezvous server ranks pair through (our TCPunch-compatible one) and,
with `--communication`, the store of the local FMI backend. Every other AWS API call
(S3, Step Functions with execution switched on, CloudWatch Logs, IAM, the Lambda control plane)
is moto's own. `MOTO_PORT` is set to the bound port so moto's Step Functions interpreter sends
its Lambda invokes and S3 ItemReader calls back to this same server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import boto3
import requests
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from cosmicai.defaults import LOCAL_ACCOUNT_CONCURRENCY
from cosmicai.localcloud.lambda_runtime import InvokeResponse, LambdaRuntime, become_subreaper
from cosmicai.logs import configure as configure_logs
from cosmicai.rendezvous.server import RendezvousServer, ServerThread

log = logging.getLogger("cosmicai.localcloud")

LOCAL_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "aws_session_token": "testing",
}
_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations/?$")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class CloudWatchLogSink:
    """Writes Lambda log events to the emulated CloudWatch Logs through its public API."""

    def __init__(self, endpoint_url: str, region: str) -> None:
        self._logs = boto3.client(
            "logs", endpoint_url=endpoint_url, region_name=region, **LOCAL_CREDENTIALS
        )
        self._streams: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, group: str, stream: str, events: list[tuple[int, str]]) -> None:
        if not events:
            return
        with self._lock:
            if (group, stream) not in self._streams:
                for create in (
                    lambda: self._logs.create_log_group(logGroupName=group),
                    lambda: self._logs.create_log_stream(logGroupName=group, logStreamName=stream),
                ):
                    with contextlib.suppress(self._logs.exceptions.ResourceAlreadyExistsException):
                        create()
                self._streams.add((group, stream))
            ordered = sorted(events, key=lambda e: e[0])
            self._logs.put_log_events(
                logGroupName=group,
                logStreamName=stream,
                logEvents=[{"timestamp": ts, "message": msg} for ts, msg in ordered],
            )


def lambda_invoke_middleware(moto_app: WSGIApp, runtime: LambdaRuntime) -> WSGIApp:
    """Route Lambda's Invoke API to the local runtime; everything else to moto."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        match = _INVOKE_PATH.match(environ.get("PATH_INFO", ""))
        if not match or environ["REQUEST_METHOD"] != "POST":
            return moto_app(environ, start_response)
        # NAME, NAME:QUALIFIER or an ARN, and the Qualifier query parameter
        name, _, qualifier = unquote(match["name"]).split(":function:")[-1].partition(":")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        qualifier = qualifier or query.get("Qualifier", [""])[0] or None
        length = int(environ.get("CONTENT_LENGTH") or 0)
        payload = environ["wsgi.input"].read(length) if length else b""
        invocation_type = environ.get("HTTP_X_AMZ_INVOCATION_TYPE", "RequestResponse")
        if invocation_type == "DryRun":
            response = InvokeResponse(204, b"", str(uuid.uuid4()))
        elif invocation_type == "Event":
            threading.Thread(
                target=runtime.invoke, args=(name, payload, qualifier), daemon=True
            ).start()
            response = InvokeResponse(202, b"", str(uuid.uuid4()))
        else:
            response = runtime.invoke(name, payload, qualifier)
        # Lambda names every response's request; Step Functions' error handling reads it.
        headers = [
            ("Content-Type", "application/json"),
            ("X-Amz-Executed-Version", "$LATEST"),
            ("x-amzn-RequestId", response.request_id),
        ]
        if response.function_error:
            headers.append(("X-Amz-Function-Error", response.function_error))
        if response.error_code:
            headers.append(("x-amzn-ErrorType", response.error_code))
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}", headers)
        return [response.body]

    return app


class LocalCloudServer:
    """moto plus the local Lambda runtime, served on loopback from a background thread."""

    def __init__(
        self,
        workdir: Path,
        region: str = "us-east-1",
        concurrency: int = LOCAL_ACCOUNT_CONCURRENCY,
        rendezvous_protocol: str = "legacy",
        communication: bool = False,
    ) -> None:
        self.workdir = workdir
        self.region = region
        self.concurrency = concurrency
        self.communication = communication
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.runtime: LambdaRuntime | None = None
        self.rendezvous = ServerThread(
            RendezvousServer(host="127.0.0.1", port=0, protocol=rendezvous_protocol)
        )
        self.store: Any = None

    def start(self) -> str:
        """Bind a free port, start serving, switch on state machine execution; return the URL."""
        holder: dict[str, WSGIApp] = {"app": DomainDispatcherApplication(create_backend_app)}
        self._server = make_server(
            "127.0.0.1",
            0,
            lambda environ, start_response: holder["app"](environ, start_response),
            threaded=True,
            request_handler=MotoRequestHandler,
        )
        port = self._server.server_address[1]
        endpoint_url = f"http://127.0.0.1:{port}"
        os.environ["MOTO_PORT"] = str(port)
        self.runtime = LambdaRuntime(
            region=self.region,
            endpoint_url=endpoint_url,
            workdir=self.workdir,
            log_sink=CloudWatchLogSink(endpoint_url, self.region),
            account_concurrency=self.concurrency,
            share_cpus=self.communication,
        )
        holder["app"] = lambda_invoke_middleware(holder["app"], self.runtime)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        requests.post(
            f"{endpoint_url}/moto-api/config",
            json={"stepfunctions": {"execute_state_machine": True}},
            timeout=10,
        ).raise_for_status()
        self.rendezvous.start()
        if self.communication:
            from cosmicai.comm.store import serve_store

            self.store = serve_store("127.0.0.1", 0)
        return endpoint_url

    def services(self) -> dict[str, Any]:
        """Where the rendezvous server and the FMI store listen (for the ready line)."""
        server = self.rendezvous.server
        return {
            "rendezvous": {"host": "127.0.0.1", "port": server.port, "protocol": server.protocol},
            "store": {"host": "127.0.0.1", "port": self.store.port} if self.store else None,
        }

    def stop(self) -> None:
        self.rendezvous.stop()
        if self.runtime:
            self.runtime.shutdown()
        if self._server:
            self._server.shutdown()
        if self._thread:
            self._thread.join(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--concurrency", type=int, default=LOCAL_ACCOUNT_CONCURRENCY)
    parser.add_argument("--rendezvous-protocol", choices=("legacy", "v2"), default="legacy")
    parser.add_argument("--communication", action="store_true", help="host the FMI store")
    parser.add_argument(
        "--remove-workdir", action="store_true", help="delete the workdir on exit (a temp dir)"
    )
    args = parser.parse_args(argv)
    configure_logs()  # JSON lines on stderr, one per record
    args.workdir.mkdir(parents=True, exist_ok=True)
    become_subreaper()
    server = LocalCloudServer(
        args.workdir, args.region, args.concurrency, args.rendezvous_protocol, args.communication
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # The parent closing our stdin, or dying, ends the local cloud.
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    threading.Thread(target=_watch_parent, args=(os.getppid(), stop), daemon=True).start()
    try:
        endpoint_url = server.start()
        ready = {"endpoint_url": endpoint_url, "region": args.region, **server.services()}
        print(json.dumps(ready), flush=True)
        stop.wait()
    finally:
        server.stop()
        if args.remove_workdir:
            shutil.rmtree(args.workdir, ignore_errors=True)


def _watch_parent(parent: int, stop: threading.Event, poll_s: float = 0.2) -> None:
    while os.getppid() == parent and not stop.is_set():
        time.sleep(poll_s)
    stop.set()


if __name__ == "__main__":
    main()
