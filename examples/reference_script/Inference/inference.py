"""A reference-style inference script for script mode (see ../README.md).

Like the CosmicAI reference's inference.py it reads everything from the environment the
executor gives it (RANK, WORLD_SIZE, BATCH_SIZE, DATA_BUCKET, DATA_PATH, RESULT_PATH, ...),
loads its partitions from DATA_BUCKET/DATA_PATH, runs AstroMAE batch by batch, times it and
writes its record to DATA_BUCKET/RESULT_PATH/<rank>.json with put_object, in the reference's
field names. Unlike it: the model is ours (`cosmicai.inference`, no timm), partitions are read
without unpickling, and times and memory are measured without a profiler.
"""

import json
import os
import resource
import sys
import tempfile
import time

import boto3
import torch

from cosmicai.inference.checkpoint import load_model
from cosmicai.inference.partition_io import read_partition

# On Lambda this folder is /tmp/<S3_object_name>/ (the reference's prj_dir).
PRJ_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_PATH = os.path.join(PRJ_DIR, "Fine_Tune_Model", "astromae.safetensors")
TRUST_PICKLE = False  # True only for reference .pt partitions you trust: unpickling runs code

s3_client = boto3.client("s3")


def data_keys(data_path):
    """DATA_PATH is one key, or a JSON list of keys when the rank has several files."""
    return json.loads(data_path) if data_path.startswith("[") else [data_path]


def load_data(keys, bucket, into):
    """Download the rank's partitions and concatenate them."""
    images, magnitudes = [], []
    for index, key in enumerate(keys):
        path = os.path.join(into, f"{index:05d}-{os.path.basename(key)}")
        s3_client.download_file(bucket, key, path)
        part = read_partition(path, trust_pickle=TRUST_PICKLE)
        images.append(part.images)
        magnitudes.append(part.magnitudes)
    return torch.cat(images), torch.cat(magnitudes)


def inference(model, images, magnitudes, batch_size):
    """Predict batch by batch; the reference's figures, measured honestly."""
    num_batches, total_data_bits = 0, 0
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            image = images[start : start + batch_size]
            magnitude = magnitudes[start : start + batch_size]
            model(image, magnitude)
            total_data_bits += 8 * (image.nbytes + magnitude.nbytes)
            num_batches += 1
    cpu_s = time.process_time() - cpu_started
    wall_s = time.perf_counter() - wall_started
    num_samples = len(images)
    return {
        "total_cpu_time (seconds)": cpu_s,
        # peak RSS of this process, not the reference profiler's allocation total
        "total_cpu_memory (MB)": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "execution_time (seconds/batch)": wall_s / num_batches if num_batches else 0.0,
        "num_batches": num_batches,
        "batch_size": batch_size,
        "device": "cpu",
        "throughput_bps": total_data_bits / wall_s if wall_s else 0.0,
        "sample_persec": num_samples / wall_s if wall_s else 0.0,
        "num_samples": num_samples,
        "wall_time (seconds)": wall_s,
    }


def engine():
    rank = int(os.environ["RANK"])
    data_path = os.environ.get("DATA_PATH")
    if not data_path:
        print(f"Rank: {rank}. Data path is not specified. Exiting.")
        sys.exit(0)
    bucket, result_path = os.environ["DATA_BUCKET"], os.environ["RESULT_PATH"]
    with tempfile.TemporaryDirectory() as into:
        images, magnitudes = load_data(data_keys(data_path), bucket, into)
    checkpoint = MODEL_PATH if os.path.exists(MODEL_PATH) else None  # None: untrained model
    model = load_model(checkpoint).model
    record = inference(model, images, magnitudes, int(os.environ["BATCH_SIZE"]))
    record.update(result_path=result_path, data_path=data_path, model_trained=bool(checkpoint))
    s3_client.put_object(
        Bucket=bucket,
        Key=f"{result_path}/{rank}.json",
        Body=json.dumps(record),
        ContentType="application/json",
    )
    print(f"Rank: {rank}. {record['num_samples']} samples, {record['sample_persec']:.1f}/s")


if __name__ == "__main__":
    engine()
