"""Engine backends: what runs a fixed-shape micro-batch through AstroMAE.

* ``torch``: the PyTorch model, eager, under ``torch.inference_mode``.
* ``onnxruntime``: the same weights exported to ONNX once (TorchScript exporter, one fixed
  micro-batch shape), run by ONNX Runtime on CPU. A rank on this backend never imports
  PyTorch when the export exists: ONNX Runtime imports in a fraction of torch's time, which is
  most of a cold start.

The export is cached beside the checkpoint as ``<checkpoint>.mb<N>.onnx`` with a JSON sidecar
``<checkpoint>.mb<N>.onnx.json`` that records the checkpoint's SHA-256: a changed checkpoint is
exported again, never run with stale weights. Where the checkpoint's folder is not writable, or
there is no checkpoint (a seeded, untrained model), the export goes to a cache folder
(``$COSMICAI_CACHE/onnx``, else the temporary directory). ``cosmicai model import`` writes the
export beside the imported checkpoint, so uploading the checkpoint's prefix uploads it too.

Both backends take and return NumPy arrays, so the engine around them is the same code; each
forward call may come from any of the engine's worker threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cosmicai.errors import CheckpointError, CosmicAIError
from cosmicai.inference.partitioning import file_sha256

if TYPE_CHECKING:
    from cosmicai.inference.checkpoint import LoadedModel
    from cosmicai.inference.model import AstroMAEConfig

BACKENDS = ("torch", "onnxruntime")
EXPORT_FORMAT = "cosmicai-onnx/1"
PREPARED_DIR = "cosmicai-onnx"
"""Folder of the function's code holding the untrained models' exports (see prepare_untrained)."""
OPSET = 17
Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(images [B,C,H,W], magnitudes [B,C]) float32 -> redshifts [B]; callable from any thread."""


class EngineModel(Protocol):
    """A model the engine can run: its input shape, where it came from, and a forward pass."""

    @property
    def backend(self) -> str: ...
    @property
    def sample_shape(self) -> tuple[int, int, int]: ...
    @property
    def parameters(self) -> int: ...
    @property
    def trained(self) -> bool: ...
    @property
    def source(self) -> str: ...

    def open(
        self, micro_batch: int, threads: int, workers: int, device: str
    ) -> AbstractContextManager[Forward]: ...


@dataclass
class TorchModel:
    """The torch backend around a loaded PyTorch model."""

    loaded: LoadedModel
    backend: str = "torch"

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        config = self.loaded.config
        return (config.in_chans, config.img_size, config.img_size)

    @property
    def parameters(self) -> int:
        return self.loaded.parameters

    @property
    def trained(self) -> bool:
        return self.loaded.trained

    @property
    def source(self) -> str:
        return self.loaded.source

    @contextmanager
    def open(self, micro_batch: int, threads: int, workers: int, device: str) -> Iterator[Forward]:
        """Torch threads: one per worker when `workers` > 1 (each runs its own micro-batch)."""
        import torch

        model = self.loaded.model.to(device).eval()
        target = torch.device(device)
        previous = torch.get_num_threads()
        torch.set_num_threads(1 if workers > 1 else threads)

        def forward(images: np.ndarray, magnitudes: np.ndarray) -> np.ndarray:
            with torch.inference_mode():  # thread-local: each worker enters it
                x = torch.from_numpy(images).to(target)
                m = torch.from_numpy(magnitudes).to(target)
                out: np.ndarray = model(x, m).cpu().numpy()
                return out

        try:
            yield forward
        finally:
            torch.set_num_threads(previous)


@dataclass(frozen=True)
class OnnxModel:
    """The onnxruntime backend: an exported model file and what its sidecar records."""

    path: Path
    micro_batch: int
    sample_shape: tuple[int, int, int]
    parameters: int
    trained: bool
    source: str
    backend: str = "onnxruntime"

    @contextmanager
    def open(self, micro_batch: int, threads: int, workers: int, device: str) -> Iterator[Forward]:
        _check_cpu(device)
        if micro_batch != self.micro_batch:
            raise CosmicAIError(
                f"{self.path} was exported for micro-batches of {self.micro_batch}, the engine "
                f"asked for {micro_batch}; load it with micro_batch={micro_batch}"
            )
        session = _session(str(self.path), 1 if workers > 1 else threads)

        def forward(images: np.ndarray, magnitudes: np.ndarray) -> np.ndarray:
            out: np.ndarray = session.run(None, {"images": images, "magnitudes": magnitudes})[0]
            return out

        yield forward


@lru_cache(maxsize=4)
def _session(path: str, intra_threads: int) -> Any:
    """One ONNX Runtime session per file and thread count: warm invocations reuse it."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def load_engine_model(
    checkpoint: str | Path | None,
    *,
    backend: str = "torch",
    micro_batch: int,
    config: AstroMAEConfig | None = None,
    model_size: str | None = None,
    trust_pickle: bool = False,
    device: str = "cpu",
    seed: int = 0,
) -> EngineModel:
    """The model for `backend`: torch loads the checkpoint; onnxruntime runs its export (made now
    when missing or stale). `model_size` ('full' or 'tiny') stands for `config` without
    importing torch. Raises CosmicAIError for a bad backend or checkpoint."""
    if backend not in BACKENDS:
        raise CosmicAIError(
            f"engine backend {backend!r} is not supported; use one of {', '.join(BACKENDS)}"
        )
    if backend == "onnxruntime":
        _check_cpu(device)
        return onnx_model(
            checkpoint,
            micro_batch,
            config=config,
            model_size=model_size,
            trust_pickle=trust_pickle,
            seed=seed,
        )
    from cosmicai.inference.checkpoint import load_model

    loaded = load_model(
        checkpoint,
        config=config or _config(model_size),
        trust_pickle=trust_pickle,
        seed=seed,
        device=device,
    )
    return TorchModel(loaded)


def _check_cpu(device: str) -> None:
    if device != "cpu":
        raise CosmicAIError(
            f"backend 'onnxruntime' runs on CPU only, but device {device!r} was requested; "
            'use "backend": "torch" for a GPU'
        )


def _config(model_size: str | None) -> AstroMAEConfig | None:
    if model_size is None:
        return None
    from cosmicai.inference.model import AstroMAEConfig

    return AstroMAEConfig.tiny() if model_size == "tiny" else AstroMAEConfig()


def export_suffixes(micro_batch: int) -> tuple[str, str]:
    """What the export for `micro_batch` and its sidecar add to the checkpoint's file name."""
    export = f".mb{micro_batch}.onnx"
    return export, _sidecar_name(export)


def export_path(checkpoint: Path, micro_batch: int) -> Path:
    """Where the export of `checkpoint` for `micro_batch` goes beside it."""
    return checkpoint.with_name(checkpoint.name + export_suffixes(micro_batch)[0])


def onnx_model(
    checkpoint: str | Path | None,
    micro_batch: int,
    *,
    config: AstroMAEConfig | None = None,
    model_size: str | None = None,
    trust_pickle: bool = False,
    seed: int = 0,
) -> OnnxModel:
    """The cached export of `checkpoint` (None: the seeded, untrained model), made if needed.

    An untrained model's export is looked for first in the prepared folder of the function's
    code (`$LAMBDA_TASK_ROOT/cosmicai-onnx`, made at image build by `prepare_untrained`).
    """
    _require_onnxruntime()
    if checkpoint is None:
        name, digest = _untrained(micro_batch, config, model_size, seed)
        source = f"random-init(seed={seed})"  # as load_model names it
        for folder in _prepared_dirs():
            found = _read_sidecar(folder / name, digest, micro_batch, source)
            if found is not None:
                return found
        target = _cache_dir() / name
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint {path} does not exist or is not a file; check the path, or leave "
                "the checkpoint out to run an untrained, randomly initialised model"
            )
        digest, source = file_sha256(path), str(path)
        target = export_path(path, micro_batch)
        if not os.access(path.parent, os.W_OK):
            target = _cache_dir() / f"{digest[:16]}-{target.name}"
    found = _read_sidecar(target, digest, micro_batch, source)
    if found is not None:
        return found
    with _export_lock(target):  # ranks starting together export once; the others wait
        found = _read_sidecar(target, digest, micro_batch, source)
        if found is not None:
            return found
        return export_onnx(
            checkpoint,
            target,
            micro_batch,
            digest,
            config=config or _config(model_size),
            trust_pickle=trust_pickle,
            seed=seed,
        )


def _untrained(
    micro_batch: int, config: AstroMAEConfig | None, model_size: str | None, seed: int
) -> tuple[str, str]:
    """(file name, digest) of an untrained model's export: named by its config and seed."""
    described = (
        {"seed": seed, "config": config.to_dict()}
        if config
        else {"seed": seed, "model_size": model_size or "full"}
    )
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    return f"random-init-{digest[:16]}.mb{micro_batch}.onnx", digest


def _prepared_dirs() -> list[Path]:
    root = os.environ.get("LAMBDA_TASK_ROOT")
    return [Path(root) / PREPARED_DIR] if root else []


def prepare_untrained(folder: str | Path, micro_batch: int = 32) -> list[Path]:
    """Export the untrained full and tiny models (seed 0) into `folder`, for `_prepared_dirs`."""
    made = []
    for size in ("full", "tiny"):
        name, digest = _untrained(micro_batch, None, size, 0)
        made.append(
            export_onnx(None, Path(folder) / name, micro_batch, digest, config=_config(size)).path
        )
    return made


def export_onnx(
    checkpoint: str | Path | None,
    target: Path,
    micro_batch: int,
    digest: str | None = None,
    *,
    config: AstroMAEConfig | None = None,
    trust_pickle: bool = False,
    seed: int = 0,
) -> OnnxModel:
    """Export the model of `checkpoint` to `target` (atomically) with its sidecar."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise CosmicAIError(
            f"no ONNX export of {checkpoint or 'the untrained model'} for micro-batch "
            f"{micro_batch} exists yet, and making one needs the onnx package, which is not "
            "installed here: install cosmicai[executor], upload the export `cosmicai model "
            'import` writes beside the checkpoint, or use "backend": "torch"'
        )
    import warnings

    import torch

    from cosmicai.atomic import AtomicFile
    from cosmicai.inference.checkpoint import load_model
    from cosmicai.inference.model import AstroMAE

    loaded = load_model(checkpoint, config=config, trust_pickle=trust_pickle, seed=seed)
    if not isinstance(loaded.model, AstroMAE):
        raise CosmicAIError(
            f"{loaded.source} holds a {type(loaded.model).__name__}, not an AstroMAE; only "
            'AstroMAE exports to ONNX: use "backend": "torch" for other models'
        )
    shape = (loaded.config.in_chans, loaded.config.img_size, loaded.config.img_size)
    example = (torch.zeros(micro_batch, *shape), torch.zeros(micro_batch, shape[0]))
    out = AtomicFile(target)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes on the input checks: shapes are fixed
            torch.onnx.export(
                loaded.model.eval(),
                example,
                out.handle,  # type: ignore[arg-type]  # a binary file works; the hint says path
                input_names=["images", "magnitudes"],
                output_names=["redshifts"],
                opset_version=OPSET,
                dynamo=False,
            )
        out.commit()
    except BaseException:
        out.discard()
        raise
    model = OnnxModel(target, micro_batch, shape, loaded.parameters, loaded.trained, loaded.source)
    sidecar = {
        "format": EXPORT_FORMAT,
        "checkpoint_sha256": digest,
        "micro_batch": micro_batch,
        "sample_shape": list(shape),
        "parameters": loaded.parameters,
        "trained": loaded.trained,
        "source": loaded.source,
        "torch_version": torch.__version__,
    }
    side = AtomicFile(_sidecar(target))
    side.handle.write(json.dumps(sidecar, indent=1).encode())
    side.commit()
    return model


def _read_sidecar(target: Path, digest: str, micro_batch: int, source: str) -> OnnxModel | None:
    """The export at `target` if its sidecar says it was made from `digest` for `micro_batch`
    (`source`: the checkpoint as this process loads it; the sidecar's is where it was made)."""
    try:
        side = json.loads(_sidecar(target).read_text())
        fits = (
            side["format"] == EXPORT_FORMAT
            and side["checkpoint_sha256"] == digest
            and side["micro_batch"] == micro_batch
            and target.is_file()
        )
        if not fits:
            return None
        channels, height, width = (int(d) for d in side["sample_shape"])
        return OnnxModel(
            target,
            micro_batch,
            (channels, height, width),
            int(side["parameters"]),
            bool(side["trained"]),
            source,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable: export again


@contextmanager
def _export_lock(target: Path) -> Iterator[None]:
    """An exclusive lock for exporting to `target` (advisory, released when the process ends),
    kept in the cache folder so nothing but the export lands beside a checkpoint."""
    import fcntl

    name = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:16]
    locks = _cache_dir() / "locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sidecar_name(export_name: str) -> str:
    return export_name + ".json"


def _sidecar(target: Path) -> Path:
    return target.with_name(_sidecar_name(target.name))


def _cache_dir() -> Path:
    root = os.environ.get("COSMICAI_CACHE")
    folder = Path(root) / "onnx" if root else Path(tempfile.gettempdir()) / "cosmicai-onnx"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise CosmicAIError(
            "backend 'onnxruntime' needs the onnxruntime package, which is not installed "
            'here; install cosmicai[executor], or use "backend": "torch"'
        ) from err
