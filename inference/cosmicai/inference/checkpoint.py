"""Load AstroMAE weights safely (safetensors, weights-only torch files) and save them atomically.

Whole pickled models, the form the published AstroMAE checkpoints take, could run arbitrary code
if unpickled normally: their tensors are read without running any of it (reference_checkpoint)
and mapped to our names. Only other pickles, which need their own code, load with
`trust_pickle=True`.
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

from cosmicai.atomic import AtomicFile
from cosmicai.errors import CheckpointError, CosmicAIError
from cosmicai.inference.model import AstroMAE, AstroMAEConfig, build_model, count_parameters
from cosmicai.inference.reference_checkpoint import (
    KeyMapping,
    NotAPickledModule,
    PickledModel,
    read_pickled_model,
    to_our_names,
)

FORMAT = "cosmicai-astromae/1"
SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pt", ".pth")
_LISTED_KEYS = 5  # how many offending keys an error message names
_SCAN_LIMIT = 64 * 1024 * 1024  # bytes of a non-zip pickle inspected to explain a refusal
_IMPORT_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST"}
_OPT_IN = (
    'Only if you trust where the file came from, set "trust_pickle": true in payload.json '
    "(Python: load_model(..., trust_pickle=True)), then convert it once to .safetensors with "
    "save_checkpoint."
)
_FOREIGN = (
    "It is a whole pickled {root}, read without running its code; if it is another model "
    'whose code you trust, set "trust_pickle": true in payload.json.'
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
    mapping: KeyMapping | None = None  # how the file's tensor names became ours


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
    `{"format", "config", "state_dict"}` wrapper (read with weights_only=True), or a whole
    pickled AstroMAE, published layout included (its tensors are read without running its code;
    DataParallel wrappers are unwrapped). Only another pickled model, whose code must run, needs
    `trust_pickle`. `config` is used for files that carry none; it must agree with a config
    stored in the file.
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
        return _from_state(*_read_safetensors(path), config, path, device)
    if suffix in TORCH_SUFFIXES:
        try:
            with warnings.catch_warnings():  # a refused plain pickle is explained instead
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for foreign or corrupt files
            return _from_pickle(path, config, trust_pickle, device, err)
        return _from_state(*_unwrap_state(obj, path), config, path, device)
    raise CheckpointError(
        f"checkpoint {path} has an unsupported suffix {path.suffix!r}; use "
        f"{SAFETENSORS_SUFFIX} or {' / '.join(TORCH_SUFFIXES)}"
    )


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


def _from_state(
    state: dict[str, torch.Tensor],
    stored: dict[str, Any] | None,
    requested: AstroMAEConfig | None,
    path: Path,
    device: str,
) -> LoadedModel:
    config = _choose_config(stored, requested, path)
    state, mapping = to_our_names(state)
    model = _model_from_state(state, config, path)
    return _ready(model, config, True, str(path), device, mapping)


def _ready(
    model: nn.Module,
    config: AstroMAEConfig,
    trained: bool,
    source: str,
    device: str,
    mapping: KeyMapping | None = None,
) -> LoadedModel:
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise CosmicAIError(
            f"cannot place the model on device {device!r} ({_first_line(err)}); use 'cpu' or a "
            "device this machine has"
        ) from err
    return LoadedModel(model.eval(), config, trained, source, count_parameters(model), mapping)


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


def _from_pickle(
    path: Path, config: AstroMAEConfig | None, trust_pickle: bool, device: str, refused: Exception
) -> LoadedModel:
    """A pickle the weights-only loader refused: a whole pickled AstroMAE loads without running
    its code; anything else needs `trust_pickle` (`refused` explains why it was refused)."""
    try:
        pickled: PickledModel | None = read_pickled_model(path)
    except NotAPickledModule:
        pickled = None
    if pickled is not None:
        try:
            return _from_state(pickled.state, pickled.config, config, path, device)
        except CheckpointError as err:
            if not trust_pickle:
                raise CheckpointError(f"{err}. {_FOREIGN.format(root=pickled.root)}") from err
    if not trust_pickle:
        reason = _pickled_code(path, refused)
        if reason is None:
            raise _unreadable(path, refused) from refused
        raise CheckpointError(
            f"checkpoint {path} contains pickled Python code ({reason}); loading it can execute "
            f"arbitrary code. {_OPT_IN}"
        ) from refused
    obj = _unpickle(path)
    if isinstance(obj, nn.Module):
        return _from_module(obj, path, config, device)
    return _from_state(*_unwrap_state(obj, path), config, path, device)


def _unpickle(path: Path) -> Any:
    """Full, code-running unpickling: only for files the caller trusts."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as err:
        raise CheckpointError(
            f"checkpoint {path} is a pickled model whose code cannot be imported here "
            f"({_first_line(err)}), and its tensors do not fit AstroMAE; load it where that "
            "code is importable and save its state_dict to get a file that needs no code"
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


def _model_from_state(
    state: dict[str, torch.Tensor], config: AstroMAEConfig, path: Path
) -> AstroMAE:
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
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mis-shaped", misshaped),
            )
            if keys
        ]
        raise CheckpointError(
            f"checkpoint {path} does not match the AstroMAE config ({'; '.join(problems)}); "
            'load it with the config it was trained with (payload.json "model_size", '
            "`cosmicai model import --model-size`; files written by save_checkpoint carry "
            "their config)"
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
    """A trusted whole-model pickle of another module: unwrap `.module`, use it as is."""
    while isinstance(inner := getattr(module, "module", None), nn.Module):
        module = inner
    if isinstance(module, AstroMAE):
        chosen = _choose_config(module.config.to_dict(), config, path)
        return _ready(module, chosen, True, str(path), device)
    return _ready(module, config or AstroMAEConfig(), True, str(path), device)
