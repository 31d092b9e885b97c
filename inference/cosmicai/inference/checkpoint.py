"""Load AstroMAE weights safely (safetensors, weights-only torch files) and save them atomically.

Whole pickled models, the form the published AstroMAE checkpoints take, can run arbitrary code
when unpickled, so they load only when the caller passes `trust_pickle=True`.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from cosmicai.inference.errors import CheckpointError, CosmicAIError
from cosmicai.inference.model import AstroMAE, AstroMAEConfig, build_model, count_parameters
from cosmicai.inference.partition_io import AtomicFile

FORMAT = "cosmicai-astromae/1"
SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pt", ".pth")
_LISTED_KEYS = 5  # how many offending keys an error message names
_SCAN_LIMIT = 64 * 1024 * 1024  # bytes of a non-zip pickle inspected to explain a refusal
_IMPORT_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST"}
_OPT_IN = (
    'Only if you trust where the file came from, opt in with "trust_pickle": true in '
    "payload.json or --trust-pickle on the command line (load_model(..., trust_pickle=True)), "
    "then convert it once to .safetensors with save_checkpoint."
)

# Published AstroMAE (a ViT_Astro module) state_dict prefix -> ours; None drops the entry.
_PUBLISHED_MARKER = "inception_model.magnitude_block.0.weight"
_PUBLISHED_PREFIXES: tuple[tuple[str, str | None], ...] = (
    ("inception_model.conv2d_init.", None),  # the stem conv again, also at vis_inception.0
    ("inception_model.vis_inception.8.branch3.", None),  # built but never run (no 5x5 branch)
    ("inception_model.vis_inception.", "inception."),
    ("inception_model.magnitude_block.", "magnitude."),
    ("vit_block.", "vit_mlp."),
    ("concat_block.", "head."),
    *((name, f"vit.{name}") for name in
      ("patch_embed.", "cls_token", "pos_embed", "blocks.", "fc_norm.", "head.")),
)


@dataclass
class LoadedModel:
    """A model ready for inference (eval mode, on its device) and where it came from.

    `model` is an AstroMAE, except for a trusted whole-model pickle of another module, which is
    used as is (then `config` is only the requested or default config, not the module's).
    """

    model: nn.Module
    config: AstroMAEConfig
    trained: bool
    source: str
    parameters: int


def load_model(
    checkpoint: str | Path | None = None,
    *,
    config: AstroMAEConfig | None = None,
    trust_pickle: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> LoadedModel:
    """Load a checkpoint, or build a seeded, untrained model when `checkpoint` is None.

    Files: `.safetensors` (config in the metadata), `.pt`/`.pth` holding a state_dict or the
    `{"format", "config", "state_dict"}` wrapper (read with weights_only=True), or, only with
    `trust_pickle`, a whole pickled model (DataParallel wrappers are unwrapped). `config` is used
    for files that carry none; it must agree with a config stored in the file.
    """
    if not isinstance(trust_pickle, bool):  # "false" or 1 must not unlock code execution
        raise CheckpointError(f"trust_pickle must be True or False, got {trust_pickle!r}")
    if checkpoint is None:
        config = config or AstroMAEConfig()
        return _ready(build_model(config, seed), config, False, f"random-init(seed={seed})", device)
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist or is not a file; check the path, or leave the "
            "checkpoint out to run an untrained, randomly initialised model"
        )
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        state, stored = _read_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        obj = _read_torch(path, trust_pickle)
        if isinstance(obj, nn.Module):
            return _from_module(obj, path, config, device)
        state, stored = _unwrap_state(obj, path)
    else:
        raise CheckpointError(
            f"checkpoint {path} has an unsupported suffix {path.suffix!r}; use "
            f"{SAFETENSORS_SUFFIX} or {' / '.join(TORCH_SUFFIXES)}"
        )
    config = _choose_config(stored, config, path)
    return _ready(_model_from_state(state, config, path), config, True, str(path), device)


def save_checkpoint(model: AstroMAE, path: str | Path) -> Path:
    """Write weights and config to `.safetensors` or the `.pt`/`.pth` wrapper, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES):
        raise CheckpointError(
            f"cannot save a checkpoint as {path}: use a {SAFETENSORS_SUFFIX} (recommended) or "
            f"{' / '.join(TORCH_SUFFIXES)} file name"
        )
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    out = AtomicFile(path)
    try:
        if suffix == SAFETENSORS_SUFFIX:
            out.handle.write(save(state, metadata={"format": FORMAT, "config": json.dumps(config)}))
        else:
            torch.save({"format": FORMAT, "config": config, "state_dict": state}, out.handle)
        out.commit()
    except BaseException:
        out.discard()
        raise
    return path


def _ready(
    model: nn.Module, config: AstroMAEConfig, trained: bool, source: str, device: str
) -> LoadedModel:
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise CosmicAIError(
            f"cannot place the model on device {device!r} ({_first_line(err)}); use 'cpu' or a "
            "device this machine has"
        ) from err
    return LoadedModel(model.eval(), config, trained, source, count_parameters(model))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is not a readable model checkpoint (truncated, corrupt or another "
        f"kind of file): {_first_line(err)}; re-download or re-save it"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise _unreadable(path, err) from err
    if "config" not in metadata:
        return state, None
    try:
        stored = json.loads(metadata["config"])
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"checkpoint {path}: the model config in its metadata is not valid JSON ({err}); "
            "re-save it with save_checkpoint"
        ) from err
    return state, stored


def _read_torch(path: Path, trust_pickle: bool) -> Any:
    try:
        with warnings.catch_warnings():  # a refused plain pickle is explained below instead
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or corrupt files
        safe_error = err
    if not trust_pickle:
        reason = _pickled_code(path, safe_error)
        if reason is None:
            raise _unreadable(path, safe_error) from safe_error
        raise CheckpointError(
            f"checkpoint {path} contains pickled Python code ({reason}); loading it can execute "
            f"arbitrary code. {_OPT_IN}"
        ) from safe_error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as err:
        raise CheckpointError(
            f"checkpoint {path} is a pickled model whose code cannot be imported here "
            f"({_first_line(err)}); load it where that code is importable and save its "
            "state_dict (or use save_checkpoint) to get a file that needs no code"
        ) from err
    except Exception as err:
        raise _unreadable(path, err) from err


def _pickled_code(path: Path, error: BaseException) -> str | None:
    """Why the weights-only loader refused `path`, if it is a pickle that imports code."""
    match = re.search(r"GLOBAL (\S+) was not an allowed global", str(error))
    if match:
        return f"it imports {match.group(1)}"
    try:
        stream = io.BytesIO(_pickle_bytes(path))
        for _ in range(4):  # a legacy torch.save writes 4 pickles: magic, protocol, info, object
            if any(op.name in _IMPORT_OPCODES for op, _, _ in pickletools.genops(stream)):
                return "it imports Python callables"
    except Exception:  # not (or no longer) a pickle: nothing to explain
        return None
    return None


def _pickle_bytes(path: Path) -> bytes:
    """The pickle stream of a torch zip archive (its data.pkl), else the file's head."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return archive.read(names[0]) if names else b""
    with path.open("rb") as f:
        return f.read(_SCAN_LIMIT)


def _unwrap_state(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state_dict, stored config) from a plain state_dict or our wrapper dict."""
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not model weights; expected a "
            f"state_dict or a {FORMAT} file written by save_checkpoint"
        )
    stored = None
    if "format" in obj:
        if obj["format"] != FORMAT:
            raise CheckpointError(
                f"checkpoint {path} has format {obj['format']!r}; this version reads {FORMAT!r}"
            )
        obj, stored = obj.get("state_dict"), obj.get("config")
        if not isinstance(obj, dict) or not isinstance(stored, dict):
            raise CheckpointError(
                f"checkpoint {path} is a {FORMAT} file without a 'state_dict' and 'config' dict; "
                "re-save it with save_checkpoint"
            )
    odd = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not obj or odd:
        raise CheckpointError(
            f"checkpoint {path} is not a state_dict (name -> tensor): "
            f"{_listed(odd) if odd else 'it is empty'}; extract the model's state_dict from it"
        )
    return obj, stored


def _choose_config(
    stored: dict[str, Any] | None, requested: AstroMAEConfig | None, path: Path
) -> AstroMAEConfig:
    if stored is None:
        return requested or AstroMAEConfig()
    try:
        config = AstroMAEConfig.from_dict(stored)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} stores an invalid model config: {err}") from err
    if requested is not None and requested != config:
        mine, theirs = requested.to_dict(), config.to_dict()
        diff = [f"{k}: file {theirs[k]}, requested {mine[k]}" for k in mine if mine[k] != theirs[k]]
        raise CheckpointError(
            f"checkpoint {path} was saved for another model config ({'; '.join(diff)}); "
            "leave the config out to use the file's own"
        )
    return config


def _normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DataParallel's `module.` prefix; rename a published-layout state_dict to ours."""
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if _PUBLISHED_MARKER not in state:
        return state
    renamed = {}
    for key, value in state.items():
        for old, new in _PUBLISHED_PREFIXES:
            if key.startswith(old):
                if new is not None:
                    renamed[new + key.removeprefix(old)] = value
                break
        else:
            renamed[key] = value
    return renamed


def _model_from_state(
    state: dict[str, torch.Tensor], config: AstroMAEConfig, path: Path
) -> AstroMAE:
    state = _normalize_keys(state)
    with torch.device("meta"):
        model = AstroMAE(config)
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshaped = [
        f"{k} {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(expected.keys() & state.keys())
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshaped:
        problems = [
            f"{len(keys)} {label} key(s): {_listed(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                ("mis-shaped", misshaped))
            if keys
        ]
        raise CheckpointError(
            f"checkpoint {path} does not match the AstroMAE config ({'; '.join(problems)}); "
            "load it with the config it was trained with (files written by save_checkpoint "
            "carry their config)"
        )
    model.to_empty(device="cpu")
    model.load_state_dict(state)
    return model


def _listed(keys: list[str]) -> str:
    more = f", ... (+{len(keys) - _LISTED_KEYS} more)" if len(keys) > _LISTED_KEYS else ""
    return ", ".join(keys[:_LISTED_KEYS]) + more


def _from_module(
    module: nn.Module, path: Path, config: AstroMAEConfig | None, device: str
) -> LoadedModel:
    """A trusted whole-model pickle: unwrap `.module`; convert the published layout to ours."""
    while isinstance(getattr(module, "module", None), nn.Module):
        module = module.module
    if isinstance(module, AstroMAE):
        chosen = _choose_config(module.config.to_dict(), config, path)
        return _ready(module, chosen, True, str(path), device)
    state = module.state_dict()
    if _PUBLISHED_MARKER in state:
        chosen = config or AstroMAEConfig()
        return _ready(_model_from_state(state, chosen, path), chosen, True, str(path), device)
    return _ready(module, config or AstroMAEConfig(), True, str(path), device)
