"""Start the local cloud in a child process and deploy the platform into it, as Terraform would.

    with LocalCloud() as cloud:
        target = cloud.deploy()          # bucket, roles, log groups, functions, state machine
        s3 = target.client("s3")         # the same boto3 calls as on AWS

The functions are the artifacts that deploy: init and summarize from the zips the build step
makes for Terraform, the executor from a local image installed from the image's own requirement
set (`cosmicai.localcloud.runtimes`). Settings come from `cosmicai.defaults`, like Terraform's.

The child process (cosmicai.localcloud.server) exits when this process closes its stdin, so a
crash or Ctrl-C here never leaves it, or its Lambda environments, behind.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from cosmicai import defaults
from cosmicai.asl import render_state_machine
from cosmicai.defaults import FunctionSettings
from cosmicai.errors import CosmicAIError
from cosmicai.localcloud.runtimes import MANAGED_RUNTIME, executor_image, lambda_zip
from cosmicai.localcloud.server import LOCAL_CREDENTIALS
from cosmicai.target import (
    FUNCTION_ROLES,
    NAME_PREFIX_TAG,
    RENDEZVOUS_PROTOCOL_TAG,
    RENDEZVOUS_TAG,
    Target,
)

ACCOUNT_ID = "123456789012"
_START_TIMEOUT_S = 60


class LocalCloud:
    """A running local cloud (moto + local Lambda runtime) in a child process."""

    def __init__(
        self,
        workdir: Path | None = None,
        region: str = "us-east-1",
        concurrency: int = defaults.LOCAL_ACCOUNT_CONCURRENCY,
        *,
        communication: bool = False,
        rendezvous_protocol: str = "legacy",
    ) -> None:
        self.region = region
        self.concurrency = concurrency
        self.communication = communication
        self.rendezvous_protocol = rendezvous_protocol
        # A temporary workdir is removed by whichever of us outlives the other.
        self._remove_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="cosmicai-localcloud-"))
        self.log_path = self.workdir / "localcloud.log"
        self.endpoint_url = ""
        self.services: dict[str, Any] = {}
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> LocalCloud:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        exited = self._process.poll() if self._process else None
        tail = self._log_tail() if exited is not None else ""
        self.stop()
        if exited is not None and isinstance(exc, Exception) and not isinstance(exc, CosmicAIError):
            raise CosmicAIError(
                f"the local cloud's server exited (status {exited}) in the middle of the run, so "
                f"the run was lost; run it again. The end of its log:\n{tail or '(empty)'}"
            ) from exc

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log_file:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cosmicai.localcloud.server",
                    "--workdir",
                    str(self.workdir),
                    "--region",
                    self.region,
                    "--concurrency",
                    str(self.concurrency),
                    "--rendezvous-protocol",
                    self.rendezvous_protocol,
                    *(["--communication"] if self.communication else []),
                    *(["--remove-workdir"] if self._remove_workdir else []),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
            )
        assert self._process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self._process.stdout, selectors.EVENT_READ)
        ready = selector.select(_START_TIMEOUT_S)
        line = self._process.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise CosmicAIError(
                f"the local cloud did not start within {_START_TIMEOUT_S} s; its log is "
                f"{self.log_path}:\n{self._log_tail()}"
            )
        ready = json.loads(line)
        self.endpoint_url = ready["endpoint_url"]
        self.services = {k: ready[k] for k in ("rendezvous", "store")}

    def stop(self) -> None:
        if self._process is not None:
            if self._process.stdin:
                self._process.stdin.close()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stdout:
                self._process.stdout.close()
            self._process = None
        if self._remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service, region_name=self.region, endpoint_url=self.endpoint_url, **LOCAL_CREDENTIALS
        )

    def deploy(
        self,
        *,
        runs_bucket: str = "cosmicai-runs",
        prefix: str = defaults.NAME_PREFIX,
        functions: dict[str, FunctionSettings] | None = None,
        environment: dict[str, str] | None = None,
        rank_max_retries: int = defaults.RANK_MAX_RETRIES,
    ) -> Target:
        """Create what the Terraform root creates: bucket, roles, logs, functions, state machine."""
        settings = {**defaults.FUNCTIONS, **(functions or {})}
        rendezvous, store = self.services["rendezvous"], self.services["store"]
        executor_env = {
            # what Terraform gives the executor, pointing at the local services
            "RENDEZVOUS_HOST": rendezvous["host"],
            "RENDEZVOUS_PORT": str(rendezvous["port"]),
            "RENDEZVOUS_PROTOCOL": rendezvous["protocol"],
            "COSMICAI_ENGINE_BACKEND": defaults.EXECUTOR_ENGINE_BACKEND,
            **(
                {"COSMICAI_STORE_HOST": store["host"], "COSMICAI_STORE_PORT": str(store["port"])}
                if store
                else {}
            ),
            **(environment or {}),
        }
        iam, lam, logs, sfn = (self.client(s) for s in ("iam", "lambda", "logs", "stepfunctions"))
        self.client("s3").create_bucket(Bucket=runs_bucket)
        arns: dict[str, str] = {}
        for role in FUNCTION_ROLES:
            name = f"{prefix}-{role}"
            logs.create_log_group(logGroupName=f"/aws/lambda/{name}")
            spec = settings[role]
            package = (
                {"PackageType": "Image", "Code": {"ImageUri": executor_image()}}
                if role == "executor"
                else {
                    "Runtime": MANAGED_RUNTIME,
                    "Handler": "handler.handler",
                    "Code": {"ZipFile": lambda_zip(role)},
                }
            )
            fn = lam.create_function(
                FunctionName=name,
                Role=_create_role(iam, name, "lambda.amazonaws.com"),
                **package,
                Timeout=spec.timeout_s,
                MemorySize=spec.memory_mb,
                EphemeralStorage={"Size": spec.ephemeral_storage_mb},
                Environment={
                    "Variables": {
                        "COSMICAI_RUNS_BUCKET": runs_bucket,
                        **(executor_env if role == "executor" else {}),
                    }
                },
            )
            if spec.reserved_concurrency:
                lam.put_function_concurrency(
                    FunctionName=name, ReservedConcurrentExecutions=spec.reserved_concurrency
                )
            arns[role] = fn["FunctionArn"]
        definition = render_state_machine(
            {
                "init_function_arn": arns["init"],
                "executor_function_arn": arns["executor"],
                "summarize_function_arn": arns["summarize"],
                "map_execution_type": defaults.LOCAL_MAP_EXECUTION_TYPE,
                "rank_max_retries": rank_max_retries,
                "runs_bucket": runs_bucket,
            }
        )
        rendezvous_address = f"{executor_env['RENDEZVOUS_HOST']}:{executor_env['RENDEZVOUS_PORT']}"
        machine = sfn.create_state_machine(
            name=f"{prefix}-run",
            definition=definition,
            roleArn=_create_role(iam, f"{prefix}-states", "states.amazonaws.com"),
            tags=[  # the tags terraform/modules/pipeline sets, read by --state-machine-arn
                {"key": NAME_PREFIX_TAG, "value": prefix},
                {"key": RENDEZVOUS_TAG, "value": rendezvous_address},
                {"key": RENDEZVOUS_PROTOCOL_TAG, "value": executor_env["RENDEZVOUS_PROTOCOL"]},
            ],
        )
        return Target(
            kind="local",
            region=self.region,
            runs_bucket=runs_bucket,
            state_machine_arn=machine["stateMachineArn"],
            functions={role: f"{prefix}-{role}" for role in FUNCTION_ROLES},
            endpoint_url=self.endpoint_url,
            credentials=dict(LOCAL_CREDENTIALS),
            rendezvous=rendezvous_address,
            rendezvous_protocol=executor_env["RENDEZVOUS_PROTOCOL"],
        )


def _create_role(iam: Any, name: str, service: str) -> str:
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
        ],
    }
    return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
