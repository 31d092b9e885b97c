"""The `--local | --aws` flags every command that talks to a cloud shares."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from cosmicai.errors import CosmicAIError
from cosmicai.target import (
    DEFAULT_TERRAFORM_DIR,
    NAME_PREFIX_TAG,
    RENDEZVOUS_TAG,
    Target,
    check_name_prefix,
    check_rendezvous,
)


def _flag_type(check: Callable[[str, str], str], flag: str) -> Callable[[str], str]:
    """An argparse type: a bad value is a usage error (exit 2) with the check's message."""

    def parse(text: str) -> str:
        try:
            return check(text, flag)
        except CosmicAIError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag}: ")) from None

    return parse


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
    parser.add_argument(
        "--name-prefix",
        type=_flag_type(check_name_prefix, "--name-prefix"),
        metavar="PREFIX",
        help=f"functions PREFIX-init, PREFIX-executor, PREFIX-summarize, with --state-machine-arn "
        f"(default: the state machine's {NAME_PREFIX_TAG} tag)",
    )
    parser.add_argument(
        "--rendezvous",
        type=_flag_type(check_rendezvous, "--rendezvous"),
        metavar="HOST:PORT",
        help=f"rendezvous server, with --state-machine-arn (default: the state machine's "
        f"{RENDEZVOUS_TAG} tag)",
    )


def aws_target(args: argparse.Namespace) -> Target:
    """The AWS platform named by flags, or by the Terraform root's outputs."""
    if args.state_machine_arn:
        if not (args.bucket and args.region):
            raise CosmicAIError("--state-machine-arn needs --bucket and --region as well")
        return Target.from_state_machine(
            args.state_machine_arn,
            bucket=args.bucket,
            region=args.region,
            name_prefix=args.name_prefix,
            rendezvous=args.rendezvous,
        )
    if args.name_prefix or args.rendezvous:
        raise CosmicAIError(
            "--name-prefix and --rendezvous go with --state-machine-arn; without it the "
            "Terraform outputs name the functions and the rendezvous server"
        )
    return Target.from_terraform_dir(args.terraform_dir)
