#!/usr/bin/env python3
"""Smoke test of the executor: one tiny inference, invoked the way Lambda invokes it.

An embedded S3 (moto) holds a small synthetic partition; the init step's own planning code
writes the run's items; the executor event is built exactly as the state machine's
ItemSelector builds it. Then either

* `--image IMAGE`: runs the image (`docker run -p 9000:8080`; the AWS base image's Runtime
  Interface Emulator answers there) and POSTs the event to the invocations endpoint, or
* `--in-process`: calls functions/executor/handler.py directly (the test suite does this),

and checks the handler's answer and the rank record it wrote.

    .venv/bin/python images/executor/smoke_test.py --image cosmicai-executor:local
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from cosmicai.inference.synthetic import make_data
from cosmicai.payload import validate_payload
from cosmicai.pipeline.init import plan_run

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "cosmicai-smoke"
RIE_URL = "http://127.0.0.1:9000/2015-03-31/functions/function/invocations"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "smoke",
    "AWS_SECRET_ACCESS_KEY": "smoke",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class SmokeFailure(Exception):
    """The executor did not produce a valid rank record."""


def prepare_run(s3: Any, samples: int) -> dict[str, Any]:
    """Upload a synthetic partition, plan a one-rank run; return the executor's event."""
    s3.create_bucket(Bucket=BUCKET)
    with tempfile.TemporaryDirectory() as tmp:
        partition = make_data(samples, Path(tmp) / "part-00000.safetensors", seed=7)
        s3.upload_file(str(partition), BUCKET, "data/smoke/part-00000.safetensors")
    payload = validate_payload(
        {
            "team": "smoke",
            "bucket": BUCKET,
            "data_bucket": BUCKET,
            "data_prefix": "data/smoke",
            "result_path": "results/smoke",
            "batch_size": 16,
            "world_size": 1,
            "model_size": "tiny",
        }
    )
    pointer = plan_run(s3, f"smoke-{uuid.uuid4().hex[:8]}", BUCKET, payload)
    items = json.loads(s3.get_object(Bucket=BUCKET, Key=pointer["items_key"])["Body"].read())
    # The Map state's ItemSelector: the run's fields plus one item.
    return {
        "run_id": pointer["run_id"],
        "bucket": pointer["bucket"],
        "world_size": pointer["world_size"],
        "settings": pointer["settings"],
        "item": items[0],
    }


class _Context:
    """The part of Lambda's context object the handler uses."""

    aws_request_id = "smoke-request"
    function_name = "cosmicai-executor"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:cosmicai-executor"
    memory_limit_in_mb = 1024

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def invoke_in_process(event: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """Call functions/executor/handler.py in this process, its S3 client on `endpoint`."""
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
    from cosmicai.pipeline.lambda_support import s3_client

    s3_client.cache_clear()  # a client cached before this endpoint was set would miss it
    spec = importlib.util.spec_from_file_location(
        "executor_handler", ROOT / "functions" / "executor" / "handler.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler(event, _Context())


def invoke_image(image: str, event: dict[str, Any], s3_port: int, timeout_s: float) -> Any:
    """Run `image` under its Runtime Interface Emulator and POST `event` to it."""
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://host.docker.internal:{s3_port}"}
    command = ["docker", "run", "--rm", "--detach", "-p", "9000:8080"]
    command += ["--add-host", "host.docker.internal:host-gateway"]
    for name, value in env.items():
        command += ["-e", f"{name}={value}"]
    container = subprocess.run(
        [*command, image], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        request = urllib.request.Request(RIE_URL, data=json.dumps(event).encode(), method="POST")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    return json.loads(response.read())
            except (urllib.error.URLError, ConnectionError) as err:
                if time.monotonic() > deadline:
                    raise SmokeFailure(f"the emulator at {RIE_URL} never answered: {err}") from err
                time.sleep(1)
    finally:
        logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
        print(logs.stdout + logs.stderr, file=sys.stderr)
        subprocess.run(["docker", "stop", container], capture_output=True, check=False)


def check_result(s3: Any, event: dict[str, Any], answer: Any) -> dict[str, Any]:
    """The handler's answer points at a rank record with predictions for every sample."""
    if not isinstance(answer, dict) or "errorType" in answer:
        raise SmokeFailure(f"the executor failed: {json.dumps(answer)[:2000]}")
    if answer.get("rank") != event["item"]["rank"] or answer.get("status") != "succeeded":
        raise SmokeFailure(f"unexpected answer {answer}")
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=answer["result_key"])["Body"].read())
    if record.get("run_id") != event["run_id"] or record.get("status") != "succeeded":
        raise SmokeFailure(f"rank record does not belong to this run: {str(record)[:500]}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--image", help="executor image to run under the emulator")
    target.add_argument("--in-process", action="store_true", help="call the handler directly")
    parser.add_argument("--samples", type=int, default=64, help="samples in the partition")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for it")
    args = parser.parse_args(argv)

    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="0.0.0.0" if args.image else "127.0.0.1", port=0)
    server.start()
    try:
        port = server.get_host_and_port()[1]
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        event = prepare_run(s3, args.samples)
        if args.image:
            answer = invoke_image(args.image, event, port, args.timeout)
        else:
            answer = invoke_in_process(event, f"http://127.0.0.1:{port}")
        record = check_result(s3, event, answer)
    except SmokeFailure as err:
        print(f"smoke test FAILED: {err}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    print(json.dumps({"answer": answer, "record_keys": sorted(record)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
