"""The local Lambda runtime behind a real moto server: Lambda semantics, logs and clean shutdown."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
import zipfile
from pathlib import Path

import boto3
import psutil
import pytest
from botocore.config import Config

from cosmicai.lambda_report import parse_report_lines
from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.localcloud.lambda_runtime import vcpus_for
from cosmicai.localcloud.server import LOCAL_CREDENTIALS

HANDLERS = """
import os, subprocess, sys, time

def echo(event, context):
    return {"event": event, "cpus": len(os.sched_getaffinity(0)),
            "request_id": context.aws_request_id,
            "memory": context.memory_limit_in_mb,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "endpoint": os.environ.get("AWS_ENDPOINT_URL"),
            "key": os.environ.get("AWS_ACCESS_KEY_ID")}

def sleepy(event, context):
    print("going to sleep", flush=True)
    if event.get("child"):
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(event.get("seconds", 3))
    return "woke up"

class StudentError(Exception):
    pass

def fail(event, context):
    raise StudentError("rank 3 exploded")

def hold(event, context):
    started = time.time()
    time.sleep(event.get("seconds", 0.4))
    return {"started": started, "ended": time.time(), "cpus": sorted(os.sched_getaffinity(0))}

def tmp_view(event, context):
    before = sorted(os.listdir("/tmp"))
    with open("/tmp/shared-name", "w") as f:
        f.write(context.aws_request_id)
    time.sleep(0.3)
    with open("/tmp/shared-name") as f:
        return {"before": before, "mine": f.read() == context.aws_request_id,
                "tmpdir": os.environ["TMPDIR"]}

def hog(event, context):
    blob = bytearray(300 * 2**20)
    time.sleep(2)
    return len(blob)
"""


def zip_directory(directory: Path) -> bytes:
    """A deployment zip of a folder's files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory):
    code = tmp_path_factory.mktemp("code")
    (code / "handler.py").write_text(HANDLERS)
    with LocalCloud() as cloud:
        iam = cloud.client("iam")
        role = iam.create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        lam = cloud.client("lambda")
        for name, timeout, memory in (
            ("echo", 10, 256),
            ("sleepy", 1, 256),
            ("fail", 10, 256),
            ("hog", 10, 200),
            ("small", 10, 1769),
            ("tmp_view", 10, 128),
            ("large", 10, 10240),
        ):
            lam.create_function(
                FunctionName=name,
                Runtime="python3.11",
                Handler=f"handler.{name if name not in ('small', 'large') else 'hold'}",
                Role=role,
                Code={"ZipFile": zip_directory(code)},
                Timeout=timeout,
                MemorySize=memory,
            )
        yield cloud


def invoke(cloud: LocalCloud, name: str, event: dict) -> tuple[dict, object]:
    response = cloud.client("lambda").invoke(FunctionName=name, Payload=json.dumps(event).encode())
    return response, json.loads(response["Payload"].read())


def report_lines(cloud: LocalCloud, function: str) -> list:
    events = cloud.client("logs").filter_log_events(logGroupName=f"/aws/lambda/{function}")[
        "events"
    ]
    reports, bad = parse_report_lines(e["message"] for e in events)
    assert bad == []
    return reports


def test_invoke_returns_result_with_context_and_local_credentials(cloud: LocalCloud) -> None:
    response, body = invoke(cloud, "echo", {"x": 1})
    assert "FunctionError" not in response
    assert body["event"] == {"x": 1}
    assert body["memory"] == 256
    assert body["cpus"] == 1  # 256 MB gets one vCPU on Lambda
    assert 0 < body["remaining_ms"] <= 10_000
    assert body["endpoint"] == cloud.endpoint_url
    assert body["key"] == "testing"  # never the user's own credentials


def test_cold_then_warm_start_and_report_lines(cloud: LocalCloud) -> None:
    invoke(cloud, "echo", {"n": 1})
    invoke(cloud, "echo", {"n": 2})
    reports = report_lines(cloud, "echo")
    assert len(reports) >= 2
    assert reports[0].init_duration_ms is not None and reports[0].init_duration_ms > 0
    assert all(r.init_duration_ms is None for r in reports[1:])  # one environment, reused
    for r in reports:
        assert r.memory_size_mb == 256
        assert r.billed_duration_ms >= r.duration_ms
        assert 0 < r.max_memory_used_mb <= 256


def test_timeout_kills_environment_and_reports_lambda_error(cloud: LocalCloud) -> None:
    response, body = invoke(cloud, "sleepy", {"seconds": 5, "child": True})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in body["errorMessage"]
    timed_out = [r for r in report_lines(cloud, "sleepy") if r.status == "timeout"]
    assert len(timed_out) == 1
    messages = [
        e["message"]
        for e in cloud.client("logs").filter_log_events(logGroupName="/aws/lambda/sleepy")["events"]
    ]
    assert "going to sleep" in messages


def test_handler_exception_is_a_function_error(cloud: LocalCloud) -> None:
    response, body = invoke(cloud, "fail", {})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "StudentError"
    assert body["errorMessage"] == "rank 3 exploded"


def test_memory_limit_is_enforced(cloud: LocalCloud) -> None:
    _response, body = invoke(cloud, "hog", {})
    assert body["errorType"] == "Runtime.OutOfMemory"


def test_reserved_concurrency_throttles(cloud: LocalCloud) -> None:
    lam = boto3.client(
        "lambda",
        region_name=cloud.region,
        endpoint_url=cloud.endpoint_url,
        config=Config(retries={"total_max_attempts": 1}),
        **LOCAL_CREDENTIALS,
    )
    lam.put_function_concurrency(FunctionName="sleepy", ReservedConcurrentExecutions=1)
    results: list[str] = []

    def call() -> None:
        try:
            lam.invoke(FunctionName="sleepy", Payload=b'{"seconds": 0.5}')
            results.append("ok")
        except lam.exceptions.TooManyRequestsException:
            results.append("throttled")

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert sorted(results) == ["ok", "throttled"]


@pytest.mark.parametrize("function", ["small", "large"])
def test_concurrent_environments_never_hold_more_cpus_than_the_machine(
    cloud: LocalCloud, function: str
) -> None:
    cores = len(os.sched_getaffinity(0))
    wanted = vcpus_for(1769 if function == "small" else 10240, cores)
    results: list[dict] = []
    threads = [
        threading.Thread(target=lambda: results.append(invoke(cloud, function, {})[1]))
        for _ in range(2 * cores + 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 * cores + 1
    for r in results:
        assert len(r["cpus"]) == wanted  # the CPUs Lambda gives the memory, capped by the machine
    for a in results:  # environments running at the same time hold disjoint CPUs
        for b in results:
            if a is not b and a["started"] < b["ended"] and b["started"] < a["ended"]:
                assert not set(a["cpus"]) & set(b["cpus"]), (a, b)
    # the queued invocations waited: more invocations than the CPUs can hold at once
    span = max(r["ended"] for r in results) - min(r["started"] for r in results)
    assert span >= 0.4 * (2 * cores + 1) / (cores // wanted) * 0.9
    # and their wait is not billed: every REPORT Duration is the handler's own time
    durations = [r.duration_ms for r in report_lines(cloud, function)]
    assert durations and max(durations) < 1500


def test_each_environment_has_a_tmp_of_its_own(cloud: LocalCloud) -> None:
    from cosmicai.localcloud import worker
    from cosmicai.localcloud.lambda_runtime import tmp_view
    from cosmicai.localcloud.runtimes import cache_root

    if not tmp_view(Path("/unused"), [worker.__file__, sys.prefix, str(cache_root())]):
        pytest.skip("no /tmp views here: no mount namespaces, or the project lives under /tmp")
    results: list[dict] = []
    threads = [
        threading.Thread(target=lambda: results.append(invoke(cloud, "tmp_view", {})[1]))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r["mine"] for r in results] == [True, True]  # nobody saw the other's file
    assert all(r["tmpdir"] == "/tmp" for r in results)
    assert [r["before"] for r in results] == [[], []]  # a fresh /tmp, not the machine's


def test_throttling_reaches_the_state_machine_s_retry_and_catch(cloud: LocalCloud) -> None:
    """Reproduces the lost ranks: moto's Step Functions read the throttle response's request id
    (absent, it raised KeyError, so no Retry or Catch ran and the rank vanished)."""
    lam, sfn = cloud.client("lambda"), cloud.client("stepfunctions")
    lam.put_function_concurrency(FunctionName="echo", ReservedConcurrentExecutions=0)
    try:
        definition = {
            "StartAt": "Invoke",
            "States": {
                "Invoke": {
                    "Type": "Task",
                    "Resource": "arn:aws:states:::lambda:invoke",
                    "Parameters": {"FunctionName": "echo", "Payload": {}},
                    "Retry": [
                        {
                            "ErrorEquals": ["Lambda.TooManyRequestsException"],
                            "IntervalSeconds": 1,
                            "MaxAttempts": 1,
                        }
                    ],
                    "Catch": [
                        {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Caught"}
                    ],
                    "End": True,
                },
                "Caught": {"Type": "Pass", "End": True},
            },
        }
        role = cloud.client("iam").create_role(
            RoleName="states-throttle", AssumeRolePolicyDocument="{}"
        )["Role"]["Arn"]
        machine = sfn.create_state_machine(
            name="throttle", definition=json.dumps(definition), roleArn=role
        )["stateMachineArn"]
        arn = sfn.start_execution(stateMachineArn=machine, input="{}")["executionArn"]
        deadline = time.monotonic() + 30
        while (execution := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert execution["status"] == "SUCCEEDED", execution
        assert (
            json.loads(execution["output"])["error"]["Error"] == "Lambda.TooManyRequestsException"
        )
        events = sfn.get_execution_history(executionArn=arn)["events"]
        assert sum(e["type"] == "TaskFailed" for e in events) == 2  # the first try and one retry
    finally:
        lam.delete_function_concurrency(FunctionName="echo")


def test_shutdown_leaves_no_processes(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text(HANDLERS)
    with LocalCloud() as cloud:
        role = cloud.client("iam").create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"][
            "Arn"
        ]
        cloud.client("lambda").create_function(
            FunctionName="echo",
            Runtime="python3.11",
            Handler="handler.echo",
            Role=role,
            Code={"ZipFile": zip_directory(tmp_path)},
            Timeout=10,
            MemorySize=256,
        )
        invoke(cloud, "echo", {})
        server = psutil.Process(cloud._process.pid)
        family = [server, *server.children(recursive=True)]
        assert len(family) >= 2  # the server and a warm environment
    time.sleep(0.5)
    assert [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []


def test_vcpus_follow_lambda_memory_rule() -> None:
    assert vcpus_for(128, 64) == 1
    assert vcpus_for(1769, 64) == 1
    assert vcpus_for(1770, 64) == 2
    assert vcpus_for(10240, 64) == 6
    assert vcpus_for(10240, 2) == 2  # capped by the machine
