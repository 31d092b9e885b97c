"""Plan the Terraform root with the real AWS provider and assert what the plan creates.

The provider is downloaded by `terraform init`, so these tests run only where that works
(CI sets COSMICAI_TF_PLAN=1; see .github/workflows/ci.yml). No AWS account is involved: an
override file points the provider at an embedded moto server, which answers the plan's reads
(caller identity, the AMI's SSM parameter, the default VPC and subnets).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
IMAGE_TAG = "0123456789abcdef0123456789abcdef01234567"

pytestmark = pytest.mark.skipif(
    os.environ.get("COSMICAI_TF_PLAN") != "1",
    reason="plan tests need the AWS provider from `terraform init`: set COSMICAI_TF_PLAN=1 "
    "where Terraform can download it (CI does)",
)

OVERRIDE = """\
provider "aws" {{
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true

  endpoints {{
    ec2 = "{endpoint}"
    ssm = "{endpoint}"
    sts = "{endpoint}"
  }}
}}
"""


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import tftest
    from moto.server import ThreadedMotoServer

    if shutil.which("terraform") is None:
        pytest.fail("COSMICAI_TF_PLAN=1 but there is no `terraform` on PATH")
    work = tmp_path_factory.mktemp("plan")
    root = work / "terraform"
    shutil.copytree(
        TF,
        root,
        ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*", "backend.tf", "*.tfvars"),
    )
    zips = work / "zips"
    builder = ROOT / "scripts" / "build_lambda_zips.py"
    subprocess.run([sys.executable, str(builder), "--out", str(zips), "--no-deps"], check=True)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        (root / "moto_override.tf").write_text(OVERRIDE.format(endpoint=endpoint))
        tf = tftest.TerraformTest(
            str(root),
            binary="terraform",
            env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        )
        tf.setup()
        yield tf.plan(
            output=True,
            tf_vars={
                "github_repository": "my-course/cosmicai",
                "rendezvous_cosmicai_package": "cosmicai==0.1.0",
                "executor_image_tag": IMAGE_TAG,
                "init_zip_path": str(zips / "init.zip"),
                "summarize_zip_path": str(zips / "summarize.zip"),
            },
        )
    finally:
        server.stop()


def after(plan: Any, address: str) -> dict[str, Any]:
    change = plan.resource_changes[address]
    assert change["change"]["actions"] == ["create"], address
    return change["change"]["after"]


def test_weekly_restart_schedule_reboots_the_rendezvous_host(plan) -> None:
    schedule = after(plan, "module.rendezvous.aws_scheduler_schedule.restart")
    assert schedule["schedule_expression"] == "cron(0 4 ? * SUN *)"
    assert schedule["target"][0]["arn"] == "arn:aws:scheduler:::aws-sdk:ec2:rebootInstances"
    instance = after(plan, "module.rendezvous.aws_instance.this")
    assert instance["metadata_options"][0]["http_tokens"] == "required"
    assert instance["root_block_device"][0]["encrypted"] is True


def test_executor_memory_timeout_and_storage(plan) -> None:
    executor = after(plan, "module.pipeline.aws_lambda_function.executor")
    assert executor["memory_size"] == 10240
    assert executor["timeout"] == 300  # cosmicai.defaults: EXPRESS children run 5 minutes
    assert executor["ephemeral_storage"][0]["size"] == 2048
    assert executor["package_type"] == "Image"
    assert executor["image_uri"].endswith(f"/cosmicai-executor:{IMAGE_TAG}")
    assert executor["architectures"] == ["x86_64"]
    for name, timeout in (("init", 60), ("summarize", 300)):
        function = after(plan, f'module.pipeline.aws_lambda_function.zip["{name}"]')
        assert function["timeout"] == timeout and function["runtime"] == "python3.11"


def test_state_machine_logs_everything_but_execution_data(plan) -> None:
    machine = after(plan, "module.pipeline.aws_sfn_state_machine.this")
    logging = machine["logging_configuration"][0]
    assert logging["level"] == "ALL" and logging["include_execution_data"] is False


def _policy_documents(plan: Any) -> list[dict[str, Any]]:
    """Every aws_iam_policy_document, read at plan time or deferred to apply."""
    documents = [
        r["values"]
        for module in plan.prior_root_module.child_modules.values()
        for r in module.resources.values()
        if r["type"] == "aws_iam_policy_document"
    ]
    documents += [
        c["change"]["after"]
        for c in plan.resource_changes.values()
        if c["type"] == "aws_iam_policy_document"
    ]
    return documents


def test_no_iam_action_is_a_wildcard(plan) -> None:
    documents = _policy_documents(plan)
    assert len(documents) >= 12
    actions = [
        action
        for document in documents
        for statement in document.get("statement") or []
        if statement.get("effect", "Allow") == "Allow"
        for action in statement.get("actions") or []
    ]
    assert len(actions) > 40
    assert not [a for a in actions if "*" in a], "wildcard actions"
    for change in plan.resource_changes.values():
        policy = change["change"]["after"] and change["change"]["after"].get("policy")
        if change["type"] == "aws_iam_role_policy" and isinstance(policy, str):
            for statement in json.loads(policy)["Statement"]:
                listed = statement["Action"]
                assert "*" not in json.dumps(listed), statement
