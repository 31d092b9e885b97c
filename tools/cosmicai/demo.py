"""The demo's inputs: synthetic galaxies partitioned into the local store, and the demo payload.

Shared by `cosmicai demo` and `cosmicai bench pipeline`, so the benchmark measures what the
demo runs.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from cosmicai.local_store import LocalS3Mirror
from cosmicai.payload import Payload, validate_payload

DEMO_DATA_BUCKET = "cosmicai-data"
DEMO_DATA_PREFIX = "demo/partitions"
DEMO_RUNS_BUCKET = "cosmicai-runs"


def prepare_demo_data(
    samples: int, world_size: int, work: Path, seed: int, mirror: LocalS3Mirror
) -> list[Path]:
    """Write `samples` galaxies as `world_size` partitions in the local store; their paths."""
    from cosmicai.inference.partition_io import SAMPLE_BYTES
    from cosmicai.inference.partitioning import partition
    from cosmicai.inference.synthetic import make_data

    source = make_data(samples, work / "data" / "galaxies.safetensors", seed=seed)
    partitions = mirror.path(DEMO_DATA_BUCKET, DEMO_DATA_PREFIX)
    shutil.rmtree(partitions, ignore_errors=True)
    size_mb = math.ceil(samples / world_size) * SAMPLE_BYTES / 2**20
    manifest = partition(source, partitions, size_mb=size_mb * 1.0001)
    return [partitions / f.file for f in manifest.files]


def demo_payload(run_id: str, world_size: int, batch_size: int, model_size: str) -> Payload:
    """The demo's payload: engine mode over the demo partitions, results under results/<run>."""
    return validate_payload(
        {
            "bucket": DEMO_RUNS_BUCKET,
            "data_bucket": DEMO_DATA_BUCKET,
            "data_prefix": DEMO_DATA_PREFIX,
            "result_path": f"results/{run_id}",
            "world_size": world_size,
            "batch_size": batch_size,
            "team": "demo",
            "mode": "engine",
            "model_size": model_size,
        }
    )
