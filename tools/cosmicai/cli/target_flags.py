"""The `--local | --aws` flags every command that talks to a cloud shares."""

from __future__ import annotations

import argparse
from pathlib import Path

from cosmicai.errors import CosmicAIError
from cosmicai.target import DEFAULT_TERRAFORM_DIR, FUNCTION_ROLES, Target


def add_target_flags(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--local", dest="aws", action="store_false", help="the embedded local cloud (default)"
    )
    where.add_argument(
        "--aws", dest="aws", action="store_true", help="the platform deployed by terraform/"
    )
    parser.set_defaults(aws=False)
    parser.add_argument(
        "--terraform-dir",
        type=Path,
        default=DEFAULT_TERRAFORM_DIR,
        help="applied Terraform root whose outputs name the platform (--aws)",
    )
    parser.add_argument("--state-machine-arn", help="instead of Terraform outputs (--aws)")
    parser.add_argument("--bucket", help="runs bucket, with --state-machine-arn")
    parser.add_argument("--region", help="AWS region, with --state-machine-arn")


def aws_target(args: argparse.Namespace) -> Target:
    """The AWS platform named by flags, or by the Terraform root's outputs."""
    if args.state_machine_arn:
        if not (args.bucket and args.region):
            raise CosmicAIError("--state-machine-arn needs --bucket and --region as well")
        return Target(
            kind="aws",
            region=args.region,
            runs_bucket=args.bucket,
            state_machine_arn=args.state_machine_arn,
            functions={role: f"cosmicai-{role}" for role in FUNCTION_ROLES},
        )
    return Target.from_terraform_dir(args.terraform_dir)
