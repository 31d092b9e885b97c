"""The engine's backends: onnxruntime agrees with torch, is split-invariant, caches its export
beside the checkpoint, and never imports torch once the export exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmicai.errors import CheckpointError, CosmicAIError
from cosmicai.inference import backends
from cosmicai.inference.backends import export_path, load_engine_model
from cosmicai.inference.checkpoint import LoadedModel, load_model, save_checkpoint
from cosmicai.inference.engine import EngineConfig, run_inference
from cosmicai.inference.model import AstroMAEConfig, build_model
from cosmicai.inference.partition_io import read_partition
from cosmicai.inference.synthetic import make_data

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("backends")
    save_checkpoint(build_model(AstroMAEConfig.tiny(), seed=5), root / "model.safetensors")
    for name, samples, seed in (("a", 70, 1), ("b", 33, 2), ("c", 45, 3)):
        make_data(samples, root / f"{name}.safetensors", seed=seed)
    return root


def _files(work: Path) -> list[Path]:
    return sorted(work.glob("[abc].safetensors"))


def _onnx(work: Path, micro_batch: int = 32) -> backends.OnnxModel:
    model = load_engine_model(
        work / "model.safetensors", backend="onnxruntime", micro_batch=micro_batch
    )
    assert isinstance(model, backends.OnnxModel)
    return model


def test_onnxruntime_agrees_with_torch_within_1e6(work: Path) -> None:
    config = EngineConfig(batch_size=64, threads=2)
    torch_run = run_inference(load_model(work / "model.safetensors"), _files(work), config)
    onnx_run = run_inference(_onnx(work), _files(work), config)
    assert len(onnx_run.predictions) == 148
    diff = np.abs(np.array(onnx_run.predictions) - np.array(torch_run.predictions))
    assert diff.max() <= 1e-6
    assert onnx_run.record["backend"] == "onnxruntime"
    assert torch_run.record["backend"] == "torch"
    assert onnx_run.record["model_parameters"] == torch_run.record["model_parameters"]
    assert onnx_run.true == torch_run.true


def test_onnxruntime_is_split_and_thread_invariant(work: Path) -> None:
    files = _files(work)
    model = _onnx(work)
    whole = run_inference(model, files, EngineConfig(batch_size=64, threads=1)).predictions
    per_rank = [
        run_inference(model, [path], EngineConfig(batch_size=32, threads=2)).predictions
        for path in files
    ]
    assert [p for rank in per_rank for p in rank] == whole


def test_export_is_cached_beside_the_checkpoint_and_redone_when_it_changes(
    work: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "model.safetensors"
    save_checkpoint(build_model(AstroMAEConfig.tiny(), seed=1), checkpoint)
    first = load_engine_model(checkpoint, backend="onnxruntime", micro_batch=8)
    target = export_path(checkpoint, 8)
    assert first.path == target and target.is_file()  # type: ignore[union-attr]
    sidecar = json.loads(target.with_name(target.name + ".json").read_text())
    assert sidecar["micro_batch"] == 8 and sidecar["trained"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(  # no lock file beside it
        ["model.safetensors", target.name, target.name + ".json"]
    )
    moved = tmp_path / "moved"  # e.g. uploaded with the checkpoint, downloaded by a rank
    moved.mkdir()
    for name in ("model.safetensors", target.name, target.name + ".json"):
        (moved / name).write_bytes((tmp_path / name).read_bytes())
    copied = (moved / target.name).stat().st_mtime_ns
    reused = load_engine_model(moved / "model.safetensors", backend="onnxruntime", micro_batch=8)
    assert (moved / target.name).stat().st_mtime_ns == copied  # used as found, not re-exported
    assert reused.path == export_path(moved / "model.safetensors", 8)  # type: ignore[union-attr]
    assert reused.source == str(moved / "model.safetensors")
    stamp = target.stat().st_mtime_ns
    load_engine_model(checkpoint, backend="onnxruntime", micro_batch=8)
    assert target.stat().st_mtime_ns == stamp  # reused, not exported again
    save_checkpoint(build_model(AstroMAEConfig.tiny(), seed=2), checkpoint)  # new weights
    again = load_engine_model(checkpoint, backend="onnxruntime", micro_batch=8)
    assert (
        json.loads(target.with_name(target.name + ".json").read_text())["checkpoint_sha256"]
        != sidecar["checkpoint_sha256"]
    )
    data = [work / "a.safetensors"]
    expected = run_inference(load_model(checkpoint), data, EngineConfig(batch_size=8, threads=1))
    got = run_inference(again, data, EngineConfig(batch_size=8, threads=1))
    assert np.abs(np.array(got.predictions) - np.array(expected.predictions)).max() <= 1e-6


def test_random_init_and_unwritable_folders_export_to_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSMICAI_CACHE", str(tmp_path / "cache"))
    model = load_engine_model(None, backend="onnxruntime", micro_batch=4, model_size="tiny")
    assert model.path.parent == tmp_path / "cache" / "onnx"  # type: ignore[union-attr]
    assert model.trained is False
    locked = tmp_path / "locked"
    locked.mkdir()
    save_checkpoint(build_model(AstroMAEConfig.tiny(), seed=1), locked / "m.safetensors")
    monkeypatch.setattr(backends.os, "access", lambda path, mode: Path(path) != locked)
    exported = load_engine_model(locked / "m.safetensors", backend="onnxruntime", micro_batch=4)
    assert exported.path.parent == tmp_path / "cache" / "onnx"  # type: ignore[union-attr]
    assert list(locked.iterdir()) == [locked / "m.safetensors"]


def test_a_rank_on_onnxruntime_never_imports_torch(work: Path) -> None:
    _onnx(work)  # the export exists, as after `cosmicai model import` or a first rank
    script = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from cosmicai.inference.backends import load_engine_model\n"
        "from cosmicai.inference.engine import EngineConfig, run_inference\n"
        f"work = Path({str(work)!r})\n"
        "model = load_engine_model(work / 'model.safetensors', backend='onnxruntime',"
        " micro_batch=32)\n"
        "result = run_inference(model, [work / 'a.safetensors'], EngineConfig(threads=2))\n"
        "print(json.dumps([len(result.predictions), 'torch' in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert json.loads(done.stdout) == [70, False]


def test_bad_backend_settings_are_clear_errors(work: Path) -> None:
    with pytest.raises(CosmicAIError, match="backend 'tensorflow' is not supported"):
        load_engine_model(None, backend="tensorflow", micro_batch=32)
    with pytest.raises(CosmicAIError, match="runs on CPU only"):
        load_engine_model(None, backend="onnxruntime", micro_batch=32, device="cuda")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_engine_model(work / "missing.safetensors", backend="onnxruntime", micro_batch=32)
    with pytest.raises(CosmicAIError, match="exported for micro-batches of 32"):
        run_inference(_onnx(work), _files(work), EngineConfig(batch_size=64, micro_batch=16))


def test_torch_backend_is_the_loaded_model_unchanged(work: Path) -> None:
    loaded = load_model(work / "model.safetensors")
    model = load_engine_model(work / "model.safetensors", backend="torch", micro_batch=32)
    config = EngineConfig(batch_size=64, threads=2)
    assert (
        run_inference(model, _files(work), config).predictions
        == run_inference(loaded, _files(work), config).predictions
    )


def _eager_fixed_shape(loaded: LoadedModel, files: list[Path], micro_batch: int) -> list[float]:
    """The torch engine's algorithm before backends existed, written out: torch tensors, each
    file in zero-padded micro-batches of one shape, one thread, `inference_mode`."""
    predictions: list[float] = []
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for path in files:
            part = read_partition(path)
            for first in range(0, len(part), micro_batch):
                images = torch.zeros(micro_batch, *part.images.shape[1:])
                magnitudes = torch.zeros(micro_batch, part.magnitudes.shape[1])
                rows = min(micro_batch, len(part) - first)
                images[:rows] = part.images[first : first + rows]
                magnitudes[:rows] = part.magnitudes[first : first + rows]
                with torch.inference_mode():
                    predictions += loaded.model(images, magnitudes)[:rows].tolist()
    finally:
        torch.set_num_threads(previous)
    return predictions


@pytest.mark.parametrize("threads", [1, 2])
def test_torch_backend_is_bit_identical_to_the_eager_fixed_shape_engine(
    work: Path, threads: int
) -> None:
    loaded = load_model(work / "model.safetensors")
    config = EngineConfig(batch_size=64, threads=threads)
    assert run_inference(loaded, _files(work), config).predictions == _eager_fixed_shape(
        loaded, _files(work), 32
    )
