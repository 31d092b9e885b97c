"""`cosmicai run | redrive | status | results | upload | demo`: runs on the local cloud or AWS."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

from cosmicai.claims import S3Claims
from cosmicai.cli.argtypes import non_negative_int, positive_int
from cosmicai.cli.argtypes import run_id as run_id_arg
from cosmicai.cli.output import ProgressPrinter, print_json, summary_text
from cosmicai.cli.report import finish_run, store_for
from cosmicai.cli.target_flags import add_target_flags, aws_target
from cosmicai.demo import DEMO_RUNS_BUCKET, demo_payload, prepare_demo_data
from cosmicai.errors import CosmicAIError
from cosmicai.local_store import LocalS3Mirror, cosmicai_home
from cosmicai.payload import Payload, load_payload
from cosmicai.pipeline.layout import combined_key, new_run_id, result_summary_key
from cosmicai.pipeline.s3objects import split_s3_uri
from cosmicai.run_store import CloudRuns, RunStore, execution_failure
from cosmicai.runner import check_redrive, follow, outcome_error, start_redrive, start_run


def _report(summary: dict[str, Any] | None, execution: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print_json({"execution": execution, "summary": summary})
    elif summary:
        print(summary_text(summary))
    error = outcome_error(summary, execution)
    if error:
        raise error
    return 0


def _info(args: argparse.Namespace) -> TextIO:
    """Where progress notes go: stderr when stdout carries --json."""
    return sys.stderr if getattr(args, "json", False) else sys.stdout


def run_payload(
    payload: Payload, args: argparse.Namespace, run_id: str | None = None
) -> tuple[str, dict, dict | None]:
    """Run on the chosen target and wait; returns (run id, execution, summary)."""
    progress = ProgressPrinter()
    try:
        if args.aws:
            target = aws_target(args)
            run_id, arn = start_run(target, payload, run_id=run_id, overwrite=args.overwrite)
            print(f"started run {run_id} ({arn})", file=_info(args), flush=True)
            if args.no_wait:
                return run_id, {"executionArn": arn, "status": "RUNNING"}, None
            execution = follow(
                target, run_id, arn, payload.bucket, payload.world_size, on_progress=progress
            )
            return run_id, execution, CloudRuns(target, settle_s=0).summary(run_id)
        if args.no_wait:
            raise CosmicAIError(
                "--no-wait needs --aws: the local cloud lives only while the command runs"
            )
        from cosmicai.localcloud.session import run_local

        local = run_local(
            payload,
            run_id=run_id,
            overwrite=args.overwrite,
            on_progress=progress,
            on_started=lambda rid: print(
                f"started run {rid} on the local cloud", file=_info(args), flush=True
            ),
        )
        return local.run_id, local.execution, local.summary
    finally:
        progress.close()


def cmd_run(args: argparse.Namespace) -> int:
    payload = load_payload(args.payload)
    run_id, execution, summary = run_payload(payload, args, args.run_id)
    if execution.get("status") == "RUNNING":
        return 0
    try:
        return _report(summary, execution, args.json)
    finally:
        if not args.json:
            finish_run(args, run_id, cosmicai_home() / "reports" / f"{run_id}.html")


def redrive_run(args: argparse.Namespace) -> tuple[dict, dict | None]:
    """Redrive the run on the chosen target and wait; returns (execution, summary)."""
    progress = ProgressPrinter()
    try:
        if args.aws:
            target = aws_target(args)
            claims = S3Claims(target)
            store = CloudRuns(target, settle_s=0)
            redrive = check_redrive(store, claims, target.runs_bucket, args.run_id)
            arn = start_redrive(target, redrive, claims)
            print(f"redriving run {args.run_id} ({arn})", file=_info(args), flush=True)
            bucket = redrive.payload.bucket
            execution = follow(
                target, args.run_id, arn, bucket, redrive.payload.world_size, on_progress=progress
            )
            return execution, store.summary(args.run_id)
        from cosmicai.localcloud.session import redrive_local

        local = redrive_local(
            args.run_id,
            on_progress=progress,
            on_started=lambda rid: print(
                f"redriving run {rid} on the local cloud", file=_info(args), flush=True
            ),
        )
        return local.execution, local.summary
    finally:
        progress.close()


def cmd_redrive(args: argparse.Namespace) -> int:
    execution, summary = redrive_run(args)
    try:
        return _report(summary, execution, args.json)
    finally:
        if not args.json:
            finish_run(args, args.run_id, cosmicai_home() / "reports" / f"{args.run_id}.html")


def _load_run(args: argparse.Namespace) -> tuple[RunStore, dict[str, Any], dict[str, Any] | None]:
    """(store, latest execution, summary or None) of a local or AWS run: the execution of an
    --overwrite re-run (`<run_id>-<epoch>`) or of the latest redrive, if any."""
    store = store_for(args, settle_s=0)
    return store, store.execution(args.run_id), store.summary(args.run_id)


def cmd_status(args: argparse.Namespace) -> int:
    _, execution, summary = _load_run(args)
    status = {
        "run_id": args.run_id,
        "execution_status": execution.get("status"),
        "run_status": summary["status"] if summary else None,
        "message": summary["message"] if summary else execution_failure(execution) or None,
        "started": execution.get("startDate"),
        "stopped": execution.get("stopDate"),
    }
    if args.json:
        print_json(status)
    else:
        for key, value in status.items():
            print(f"{key:>16}: {value if value is not None else '-'}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    store, execution, summary = _load_run(args)
    if summary is None:
        raise CosmicAIError(
            f"run {args.run_id} has no summary yet (execution {execution.get('status')})"
        )
    if args.out:
        combined = store.read_json(args.run_id, summary["combined_key"])
        if combined is None:
            raise CosmicAIError(
                f"run {args.run_id}: its results {summary['combined_key']} are gone from the runs "
                f"bucket (its summary names them); run it again to get them back."
            )
        target = args.out / args.run_id
        target.mkdir(parents=True, exist_ok=True)
        (target / "summary.json").write_text(json.dumps(summary, indent=2))
        (target / "combined_data.json").write_text(json.dumps(combined))
    return _report(summary, execution, args.json)


def cmd_upload(args: argparse.Namespace) -> int:
    """Copy a file or folder to s3://bucket/key: the local store by default, S3 with --aws."""
    bucket, key = split_s3_uri(args.dest)
    files = (
        [args.source]
        if args.source.is_file()
        else sorted(p for p in args.source.rglob("*") if p.is_file())
    )
    if not files:
        raise CosmicAIError(f"{args.source} does not exist or holds no files")
    s3 = aws_target(args).client("s3") if args.aws else None
    for path in files:
        object_key = (
            key
            if args.source.is_file()
            else f"{key.rstrip('/')}/{path.relative_to(args.source).as_posix()}"
        )
        if s3:
            s3.upload_file(str(path), bucket, object_key)
        else:
            dest = LocalS3Mirror().path(bucket, object_key)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
    print(
        f"uploaded {len(files)} file(s) to s3://{bucket}/{key}"
        + ("" if args.aws else " (local store)")
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.samples < args.world_size:
        raise CosmicAIError(
            f"--samples {args.samples} must be at least --world-size {args.world_size}"
        )
    mirror = LocalS3Mirror()
    files = prepare_demo_data(args.samples, args.world_size, args.out, args.seed, mirror)
    print(
        f"demo data: {args.samples} galaxies in {len(files)} partitions at {files[0].parent}",
        file=_info(args),
        flush=True,
    )
    run_id = new_run_id("demo")
    payload = demo_payload(run_id, args.world_size, args.batch_size, args.model_size)
    args.aws, args.overwrite, args.no_wait = False, False, False
    run_id, execution, summary = run_payload(payload, args, run_id)
    if summary:
        out = args.out / run_id
        out.mkdir(parents=True, exist_ok=True)
        for key in (combined_key(payload.result_prefix), result_summary_key(payload.result_prefix)):
            shutil.copyfile(mirror.path(DEMO_RUNS_BUCKET, key), out / key.rsplit("/", 1)[1])
    try:
        status = _report(summary, execution, args.json)
    finally:
        if not args.json:
            finish_run(args, run_id, args.out / run_id / "report.html")
    if not args.json:
        print(f"results: {args.out / run_id}/combined_data.json and summary.json")
    return status


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run a payload (local cloud by default, or --aws)")
    run.add_argument("payload", type=Path, help="payload.json")
    add_target_flags(run)
    run.add_argument("--json", action="store_true", help="print JSON instead of tables")
    run.add_argument("--no-wait", action="store_true", help="start the run and return (--aws)")
    run.add_argument(
        "--run-id", type=run_id_arg, help="a run id of your own (default: <team>-<time>-<random>)"
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results and claim of a finished run (result_path or run id)",
    )
    run.set_defaults(func=cmd_run)

    redrive = subparsers.add_parser(
        "redrive",
        aliases=["resume"],
        help="re-run only the ranks of a failed run that have no result, then re-summarise",
    )
    redrive.add_argument("run_id", type=run_id_arg)
    add_target_flags(redrive)
    redrive.add_argument("--json", action="store_true", help="print JSON instead of tables")
    redrive.set_defaults(func=cmd_redrive)

    for name, func, text in (
        ("status", cmd_status, "show a run's status"),
        ("results", cmd_results, "show a run's results (and copy them with --out)"),
    ):
        sub = subparsers.add_parser(name, help=text)
        sub.add_argument("run_id", type=run_id_arg)
        add_target_flags(sub)
        sub.add_argument("--json", action="store_true", help="print JSON instead of tables")
        if name == "results":
            sub.add_argument(
                "--out", type=Path, help="copy summary.json and combined_data.json to OUT/<run_id>/"
            )
        sub.set_defaults(func=func)

    upload = subparsers.add_parser(
        "upload", help="copy a file or folder to s3://bucket/key (local store by default)"
    )
    upload.add_argument("source", type=Path)
    upload.add_argument("dest", help="s3://bucket/key")
    add_target_flags(upload)
    upload.set_defaults(func=cmd_upload)

    demo = subparsers.add_parser(
        "demo", help="the whole pipeline on the local cloud with synthetic data"
    )
    demo.add_argument("--world-size", type=positive_int, default=4)
    demo.add_argument("--samples", type=positive_int, default=2048)
    demo.add_argument("--batch-size", type=positive_int, default=256)
    demo.add_argument("--model-size", choices=("full", "tiny"), default="full")
    demo.add_argument("--seed", type=non_negative_int, default=0)
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.add_argument("--json", action="store_true", help="print JSON instead of tables")
    demo.set_defaults(func=cmd_demo)
