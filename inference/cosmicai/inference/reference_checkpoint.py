"""Read a whole pickled model (the published AstroMAE checkpoints) without running its code.

The published checkpoints are `torch.save(DataParallel(ViT_Astro(...)))`: a zip archive whose
`data.pkl` names classes of the reference code and timm, which are not importable here and must
never run. `read_pickled_model` unpickles `data.pkl` with an unpickler that resolves only the
globals tensors are rebuilt from (replaced by our own checked versions); every other class or
callable the pickle names becomes an inert stand-in that only records its arguments and state.
The state_dict is then collected from the stand-ins' `_parameters`, `_buffers` and `_modules`,
as `nn.Module.state_dict` does, and `to_our_names` maps the published names to ours.
"""

from __future__ import annotations

import io
import pickle
import sys
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cosmicai.errors import CheckpointError

_MAX_DEPTH = 64  # module nesting; the published model is 6 deep
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}  # fmt: skip

# Published AstroMAE (ViT_Astro) state_dict prefix -> ours; None drops the entry.
PUBLISHED_MARKER = "inception_model.magnitude_block.0.weight"
PUBLISHED_PREFIXES: tuple[tuple[str, str | None], ...] = (
    ("inception_model.conv2d_init.", None),  # the stem conv again, also at vis_inception.0
    ("inception_model.vis_inception.8.branch3.", None),  # built but never run (no 5x5 branch)
    ("inception_model.vis_inception.", "inception."),
    ("inception_model.magnitude_block.", "magnitude."),
    ("vit_block.", "vit_mlp."),
    ("concat_block.", "head."),
    *((name, f"vit.{name}") for name in
      ("patch_embed.", "cls_token", "pos_embed", "blocks.", "fc_norm.", "head.")),
)  # fmt: skip


class NotAPickledModule(CheckpointError):
    """The file is not a torch zip archive holding a pickled nn.Module."""


class StandIn:
    """An object of a class the pickle names, never imported: it only records what it gets."""

    args: tuple[Any, ...] = ()
    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


@dataclass(frozen=True)
class _Storage:
    data: torch.UntypedStorage
    dtype: torch.dtype


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclass(frozen=True)
class PickledModel:
    """What a whole-model pickle holds, read without running its code."""

    state: dict[str, torch.Tensor]  # its state_dict, names as the pickled modules give them
    root: str  # class of the pickled object, e.g. torch.nn.parallel.data_parallel.DataParallel
    stand_ins: tuple[str, ...]  # every class or callable of the pickle that was not run
    config: dict[str, Any] | None  # an AstroMAEConfig stored on the model (our own pickles)


@dataclass(frozen=True)
class KeyMapping:
    """How a state_dict's names were mapped to ours."""

    renamed: dict[str, int]  # "old -> new" prefix rule -> how many names it renamed
    dropped: tuple[str, ...]  # names with no counterpart in our model


def _ints(value: Any) -> bool:
    return isinstance(value, tuple) and all(type(v) is int for v in value)


def _rebuild_tensor_v2(
    storage: Any, offset: Any, size: Any, stride: Any, *_hooks_and_metadata: Any
) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2, checked; gradients, hooks and metadata are ignored."""
    if (
        not isinstance(storage, _Storage)
        or type(offset) is not int
        or not (_ints(size) and _ints(stride) and len(size) == len(stride))
    ):
        raise pickle.UnpicklingError("a tensor record is malformed")
    try:
        return torch.empty((0,), dtype=storage.dtype).set_(storage.data, offset, size, stride)
    except RuntimeError as err:
        raise pickle.UnpicklingError(f"a tensor does not fit its storage ({err})") from err


def _rebuild_parameter(data: Any, *_grad_hooks_and_state: Any) -> torch.Tensor:
    """torch._utils._rebuild_parameter(_with_state): the plain tensor, without hooks."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter record holds no tensor")
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # how protocol 2 names it
}


class _Unpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED` and storage types; every other global becomes a stand-in."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix = archive, prefix
        self._little = self._record("byteorder", b"little") == b"little"
        self._storages: dict[str, _Storage] = {}
        self.stand_ins: dict[str, type[StandIn]] = {}

    def _record(self, name: str, default: bytes) -> bytes:
        try:
            return self._archive.read(self._prefix + name)
        except KeyError:
            return default

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        qualified = f"{module}.{name}"
        if qualified not in self.stand_ins:
            attrs = {"__module__": module, "__qualname__": name}
            self.stand_ins[qualified] = type(name, (StandIn,), attrs)
        return self.stand_ins[qualified]

    def persistent_load(self, pid: Any) -> _Storage:
        """('storage', storage type, key, location, numel) -> the archive's data/<key>."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or type(key) is not str or type(numel) is not int:
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r:.80}")
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, kind.dtype, numel)
        return self._storages[key]

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> _Storage:
        nbytes = numel * dtype.itemsize
        if numel < 0:
            raise pickle.UnpicklingError(f"storage data/{key} has a negative size")
        try:
            data = self._archive.read(f"{self._prefix}data/{key}")
        except KeyError:
            raise pickle.UnpicklingError(f"storage data/{key} is missing") from None
        if len(data) < nbytes:
            raise pickle.UnpicklingError(f"storage data/{key} is shorter than {nbytes} bytes")
        storage = torch.UntypedStorage(0)  # type: ignore[no-untyped-call]  # unannotated in torch
        if nbytes:
            storage = torch.UntypedStorage.from_buffer(data[:nbytes], dtype=torch.uint8)
        if self._little != (sys.byteorder == "little"):
            storage.byteswap(dtype)  # type: ignore[no-untyped-call]  # unannotated in torch
        return _Storage(storage, dtype)


def _data_pickle(archive: zipfile.ZipFile, path: Path) -> str:
    """The record prefix (`archive/`) of the archive's top-level data.pkl."""
    names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(names) != 1:
        raise NotAPickledModule(f"{path} is a zip file but not a torch.save archive (no data.pkl)")
    if any(n.endswith("/constants.pkl") for n in archive.namelist()):
        raise NotAPickledModule(f"{path} is a TorchScript archive, not a pickled model")
    return names[0].removesuffix("data.pkl")


def read_pickled_model(path: str | Path) -> PickledModel:
    """The state_dict of a whole pickled nn.Module, without importing or running its classes.

    Raises NotAPickledModule for a file that is no torch zip archive or holds no module, and
    CheckpointError for a damaged archive.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise NotAPickledModule(f"{path} is not a zip-format torch.save archive")
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _data_pickle(archive, path)
            unpickler = _Unpickler(archive.read(prefix + "data.pkl"), archive, prefix)
            root = unpickler.load()
    except NotAPickledModule:
        raise
    except Exception as err:  # a damaged or hostile pickle raises many types
        raise CheckpointError(
            f"checkpoint {path} is a damaged torch archive ({type(err).__name__}: {err}); "
            "re-download it"
        ) from err
    if _module_attrs(root) is None:
        raise NotAPickledModule(f"{path} holds a pickled {_class_name(root)}, not a module")
    state: dict[str, torch.Tensor] = {}
    _collect(root, "", state, path, 0)
    return PickledModel(state, _class_name(root), tuple(sorted(unpickler.stand_ins)),
                        _stored_config(root))  # fmt: skip


def _class_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _module_attrs(obj: Any) -> dict[str, Any] | None:
    """The attribute dict of a pickled nn.Module stand-in, else None."""
    if not isinstance(obj, StandIn):
        return None
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots)
        state = state[0]
    if isinstance(state, dict) and all(
        isinstance(state.get(k), dict) for k in ("_modules", "_parameters")
    ):
        return state
    return None


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor], path: Path, depth: int) -> None:
    """Add `obj`'s parameters and persistent buffers, then its children's, as state_dict does."""
    attrs = _module_attrs(obj)
    where = prefix.removesuffix(".") or "the model"
    if attrs is None or depth > _MAX_DEPTH:
        raise CheckpointError(
            f"checkpoint {path}: {where} is not a module ({_class_name(obj)}) or nests deeper "
            f"than {_MAX_DEPTH}; the file is not a pickled model"
        )
    skipped = attrs.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (attrs.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skipped):
                continue
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                raise CheckpointError(
                    f"checkpoint {path}: {where}.{group} holds {name!r:.40}, not a tensor"
                )
            out[prefix + name] = value
    for name, child in attrs["_modules"].items():
        if child is not None:
            _collect(child, f"{prefix}{name}.", out, path, depth + 1)


def _stored_config(root: Any) -> dict[str, Any] | None:
    """The fields of an AstroMAEConfig stored on the (DataParallel-unwrapped) model."""
    while (attrs := _module_attrs(root)) is not None and "module" in attrs["_modules"]:
        root = attrs["_modules"]["module"]
    config = (attrs or {}).get("config")
    if (
        config is not None
        and type(config).__name__ == "AstroMAEConfig"
        and isinstance(config.state, dict)
    ):
        return dict(config.state)
    return None


def to_our_names(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], KeyMapping]:
    """Strip DataParallel's `module.` prefixes; rename a published-layout state_dict to ours."""
    renamed: dict[str, int] = {}
    while state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
        renamed["module. -> (none)"] = renamed.get("module. -> (none)", 0) + len(state)
    if PUBLISHED_MARKER not in state:
        return state, KeyMapping(renamed, ())
    ours, dropped = {}, []
    for key, value in state.items():
        rule = next(((old, new) for old, new in PUBLISHED_PREFIXES if key.startswith(old)), None)
        if rule is None:
            ours[key] = value
        elif rule[1] is None:
            dropped.append(key)
        else:
            ours[rule[1] + key.removeprefix(rule[0])] = value
            label = f"{rule[0]} -> {rule[1]}"
            renamed[label] = renamed.get(label, 0) + 1
    return ours, KeyMapping(renamed, tuple(dropped))
