"""`cosmicai import-results COMBINED_DATA.json [--name NAME]`: record a past reference run.

The run (`imported-<name>`) lands in the local store, so `cosmicai runs`, `compare` and `report`
show it beside ours (see `cosmicai.reference_results`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cosmicai.cli.output import print_json
from cosmicai.reference_results import PROFILER_MEMORY_NOTE, import_results


def cmd_import(args: argparse.Namespace) -> int:
    summary = import_results(args.combined_data, args.name)
    if args.json:
        print_json(summary)
        return 0
    samples = summary["samples"]
    counted = "unknown" if samples is None else str(samples)
    print(f"imported {summary['run_id']}: {summary['world_size']} ranks, {counted} samples")
    if summary["samples_unknown_ranks"]:
        ranks = ", ".join(map(str, summary["samples_unknown_ranks"]))
        print(f"  samples unknown for rank(s) {ranks}: their records carry no sample count")
    print(f"note: {PROFILER_MEMORY_NOTE}")
    print(f"see it with `cosmicai report {summary['run_id']}` or `cosmicai compare RUN_ID ...`")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-results",
        help="record a past AWS run's combined_data.json (reference format) as a run",
        description=(
            "Store a reference combined_data.json (a JSON list of per-rank records with the "
            "reference's fields) in the local store as the run imported-NAME, so that runs, "
            "compare and report show it beside ours. Its fields keep their reference meaning: "
            "total_cpu_memory (MB) is the memory profiler's figure."
        ),
    )
    parser.add_argument("combined_data", type=Path, metavar="COMBINED_DATA.json")
    parser.add_argument(
        "--name",
        help="run id suffix (lowercase letters, digits, hyphens); default: the file's folder",
    )
    parser.add_argument("--json", action="store_true", help="print the imported summary as JSON")
    parser.set_defaults(func=cmd_import)
