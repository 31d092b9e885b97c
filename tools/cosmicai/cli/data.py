"""`cosmicai make-data` (synthetic galaxies) and `cosmicai partition` (fixed-size files).

The inference modules (and so PyTorch) are imported when these commands run, not when the CLI
starts: every other command would otherwise pay torch's import time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosmicai.cli.argtypes import positive_int, whole_number
from cosmicai.cli.target_flags import add_target_flags, aws_target
from cosmicai.local_store import LocalS3Mirror
from cosmicai.pipeline.s3objects import split_s3_uri
from cosmicai.safe_input import writable_dir

if TYPE_CHECKING:
    from cosmicai.inference.partitioning import Manifest

SEED_MAX = 2**32 - 1


def register(subparsers: argparse._SubParsersAction) -> None:
    make = subparsers.add_parser(
        "make-data",
        help="write a synthetic, labelled SDSS-like galaxy dataset",
        description=(
            "Write N synthetic galaxies (5x32x32 ugriz stamps, magnitudes, redshifts) to FILE; "
            "the suffix picks the format: .safetensors (ours) or .pt (reference TensorDataset). "
            "The same seed gives a bit-identical file."
        ),
    )
    make.add_argument(
        "--samples", type=positive_int, required=True, metavar="N", help="number of samples"
    )
    make.add_argument("--out", required=True, metavar="FILE", help=".safetensors or .pt file")
    make.add_argument(
        "--seed",
        type=whole_number(0, SEED_MAX),
        default=0,
        metavar="S",
        help=f"random seed, 0-{SEED_MAX} (default: 0)",
    )
    make.add_argument("--json", action="store_true", help="print one JSON object")
    make.set_defaults(func=run_make_data)

    split = subparsers.add_parser(
        "partition",
        help="split a dataset into fixed-size partition files with a manifest",
        description=(
            "Split SRC (a .safetensors/.pt file, or a directory of them read in name order) into "
            "part-00000.safetensors... of SIZE MiB each, plus manifest.json with checksums."
        ),
    )
    split.add_argument("source", metavar="SRC", help="dataset file or directory")
    split.add_argument(
        "--size", default="25MB", help="MiB per file: 25MB, 25 or 0.5MB (default: 25MB)"
    )
    split.add_argument(
        "--out",
        required=True,
        metavar="DIR|s3://bucket/prefix",
        help="new or empty directory, or s3://bucket/prefix (local store; S3 with --aws)",
    )
    split.add_argument("--stem", default="part", help="file-name prefix (default: part)")
    split.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow .pt sources that need arbitrary pickled classes (runs their code)",
    )
    split.add_argument("--json", action="store_true", help="print one JSON object")
    add_target_flags(split)
    split.set_defaults(func=run_partition)


def run_make_data(args: argparse.Namespace) -> int:
    writable_dir(Path(args.out).parent)  # before PyTorch loads and the data is generated
    from cosmicai.inference.synthetic import make_data

    path = make_data(args.samples, args.out, seed=args.seed)
    size = path.stat().st_size
    if args.json:
        print(
            json.dumps(
                {"path": str(path), "samples": args.samples, "bytes": size, "seed": args.seed}
            )
        )
    else:
        print(f"wrote {args.samples} samples ({size / 2**20:.2f} MiB, seed {args.seed}) to {path}")
    return 0


def partition_local(args: argparse.Namespace, out_dir: Path) -> Manifest:
    """Partition args.source into the local directory `out_dir` (an upload may follow)."""
    from cosmicai.inference.partitioning import parse_size_mb, partition

    return partition(
        args.source,
        out_dir,
        size_mb=parse_size_mb(args.size),
        stem=args.stem,
        trust_pickle=args.trust_pickle,
    )


def partition_report(manifest: Manifest, out: str) -> dict[str, Any]:
    """The --json object: where the files went, plus the manifest."""
    from cosmicai.inference.partitioning import MANIFEST_NAME

    return {"out": out, "manifest": f"{out.rstrip('/')}/{MANIFEST_NAME}", **manifest.to_dict()}


def partition_to_s3(args: argparse.Namespace) -> Manifest:
    """Partition into s3://bucket/prefix: the local cloud's store, or S3 itself with --aws."""
    bucket, prefix = split_s3_uri(args.out)
    if not args.aws:
        return partition_local(args, LocalS3Mirror().path(bucket, prefix))
    s3 = aws_target(args).client("s3")
    with tempfile.TemporaryDirectory(prefix="cosmicai-partition-") as staging:
        manifest = partition_local(args, Path(staging))
        for path in sorted(Path(staging).iterdir()):
            s3.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.name}")
    return manifest


def run_partition(args: argparse.Namespace) -> int:
    if args.out.startswith("s3://"):
        manifest = partition_to_s3(args)
    else:
        manifest = partition_local(args, Path(args.out))
    if args.json:
        print(json.dumps(partition_report(manifest, args.out)))
    else:
        from cosmicai.inference.partitioning import MANIFEST_NAME

        print(
            f"wrote {len(manifest.files)} partition files ({manifest.samples} samples, "
            f"{manifest.samples_per_file} per full file of {manifest.size_mb:g} MiB) and "
            f"{MANIFEST_NAME} to {args.out}"
        )
    return 0
