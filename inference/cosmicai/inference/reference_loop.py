"""The CosmicAI reference workflow's inference loop, reproduced for the benchmarks only.

It does what the reference executor (AI-for-Astronomy `aws/inference.py`) does per rank:
download the `.pt` partition into an in-memory `BytesIO` and `torch.load` the TensorDataset
from it, iterate a `DataLoader` (no workers), and run the model in eval mode under
`torch.no_grad()` inside `torch.profiler.profile(activities=[CPU], profile_memory=True)`, with
`gc.collect()` after every batch; afterwards it derives its figures from the profiler's
`key_averages().total_average()`.

The profiler is the reference's own choice, so it is reproduced as is (not a psutil-polling
stand-in): its cost on time and memory is part of what the reference really paid. The one
deliberate difference is safety: the TensorDataset is unpickled with `weights_only=True` and
TensorDataset as the only allowed global, where the reference used `weights_only=False`; the
work done is the same.
"""

from __future__ import annotations

import gc
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader, TensorDataset


@dataclass
class ReferenceRun:
    """Predictions of the reference loop and the figures it reports about itself."""

    predictions: list[float]
    samples: int
    num_batches: int
    reported: dict[str, Any]


def load_reference_data(source: Path | BinaryIO) -> TensorDataset:
    """torch.load the TensorDataset from a buffer (the reference downloads the object from S3
    into a BytesIO), or from a file read into a BytesIO first."""
    if isinstance(source, Path):
        buffer: BinaryIO = io.BytesIO()
        with open(source, "rb") as file:
            shutil.copyfileobj(file, buffer)
    else:
        buffer = source
    buffer.seek(0)
    with torch.serialization.safe_globals([TensorDataset]):
        dataset: TensorDataset = torch.load(buffer, weights_only=True)
    return dataset


def run_reference(
    model: nn.Module, source: Path | BinaryIO, batch_size: int, device: str = "cpu"
) -> ReferenceRun:
    """Run the reference loop over one `.pt` partition (a file, or its bytes in a buffer);
    threads are the caller's setting."""
    loader = DataLoader(load_reference_data(source), batch_size=batch_size)
    model.eval()
    predictions: list[float] = []
    num_batches = num_samples = data_bits = 0
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, torch.no_grad():
        for data in loader:
            image = data[0].to(device)
            magnitude = data[1].to(device)
            predictions += model(image, magnitude).tolist()
            data_bits += 8 * (
                image.element_size() * image.nelement()
                + magnitude.element_size() * magnitude.nelement()
            )
            num_batches += 1
            num_samples += len(image)
            gc.collect()
    average = prof.key_averages().total_average()
    total_time = average.cpu_time_total / 1e6
    reported = {  # computed exactly as the reference computes its result fields
        "total_cpu_time (seconds)": total_time,
        "total_cpu_memory (MB)": average.cpu_memory_usage / 1e6,
        "execution_time (seconds/batch)": total_time / (num_samples / batch_size),
        "throughput_bps": data_bits / total_time,
        "sample_persec": num_samples / total_time,
    }
    return ReferenceRun(predictions, num_samples, num_batches, reported)
