"""FMI's Python API (the native `fmi` module) on torch.distributed's gloo backend, for local runs.

Scripts written for FMI run unchanged here and on Lambda. Names, argument orders and results
follow FMI's Boost.Python binding (`python/fmi.cpp`, `PythonCommunicator.cpp`):

- `Communicator(rank, world_size, config_path, comm_name, memory_mb=128)`;
- `send(value, dest, types)`, `recv(src, types)`, `bcast(value, root, types)` (non-roots pass
  anything, e.g. None), `barrier()`, `gather(value, root, types)` (the root gets one flat list
  in rank order, other ranks an empty list), `scatter(list, root, types(list_type, n))` (n
  divisible by the world size; each rank gets n / world_size items),
  `reduce(value, root, func, types)` (other ranks get FMI's untouched receive buffer, which we
  return as zeros), `allreduce(value, func, types)`, `scan(value, func, types)` (inclusive);
- `func(op.custom, f, commutative, associative)`: commutative first. Custom functions apply
  element-wise to lists and always fold in rank order, which is what FMI does for an op that
  is not both commutative and associative and a valid order for one that is;
- int is FMI's 32-bit C int (sums wrap as in C), double a 64-bit float; lists must be Python
  lists of exactly the declared length.

`allgather(value, types)` is our addition (FMI's Python binding has none): scripts that call it
do not run on the native module.

Rendezvous: the `Local` section of the FMI configuration names a TCPStore (hosted by the local
cloud); keys are prefixed by the communicator name, so concurrent runs never mix.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import numbers
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
from torch.distributed import PrefixStore, ProcessGroupGloo, ReduceOp

from cosmicai.comm.config import load_local_section
from cosmicai.comm.store import connect_store
from cosmicai.errors import CosmicAIError

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _int32_valued(values: torch.Tensor) -> bool:
    """Whether every value is a whole number in the range of a 32-bit C int."""
    if not values.numel():
        return True
    whole = bool(torch.equal(values, values.trunc()))
    return whole and values.min().item() >= _INT_MIN and values.max().item() <= _INT_MAX


class hints(enum.Enum):
    """Channel hints. The local backend has one channel and only records the hint."""

    fast = "fast"
    cheap = "cheap"


class datatypes(enum.Enum):
    """Message element types."""

    int = "int"
    double = "double"
    int_list = "int_list"
    double_list = "double_list"


class op(enum.Enum):
    """Reduction operations."""

    sum = "sum"
    prod = "prod"
    max = "max"
    min = "min"
    custom = "custom"


_TORCH_REDUCE_OPS = {
    op.sum: ReduceOp.SUM,
    op.prod: ReduceOp.PRODUCT,
    op.max: ReduceOp.MAX,
    op.min: ReduceOp.MIN,
}
_TENSOR_OPS: dict[op, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    op.sum: torch.add,
    op.prod: torch.mul,
    op.max: torch.maximum,
    op.min: torch.minimum,
}


class types:
    """A message type: `types(datatypes.int)` or `types(datatypes.int_list, n)`."""

    def __init__(self, datatype: datatypes, num_objects: int | None = None) -> None:
        if not isinstance(datatype, datatypes):
            raise CosmicAIError(
                f"fmi.types needs an fmi.datatypes member (int, double, int_list, double_list), "
                f"got {datatype!r}"
            )
        self.datatype = datatype
        self.is_list = datatype in (datatypes.int_list, datatypes.double_list)
        self.is_int = datatype in (datatypes.int, datatypes.int_list)
        self.dtype = torch.int32 if self.is_int else torch.float64
        if not self.is_list:
            self.num_objects = 1
        elif isinstance(num_objects, numbers.Integral) and num_objects >= 0:
            self.num_objects = int(num_objects)
        else:
            raise CosmicAIError(
                f"fmi.types(fmi.datatypes.{datatype.name}, n) needs the list length n "
                f"(a non-negative int), got {num_objects!r}"
            )

    def __repr__(self) -> str:
        count = f", {self.num_objects}" if self.is_list else ""
        return f"fmi.types(fmi.datatypes.{self.datatype.name}{count})"


class func:
    """A reduction: `func(op.sum)`, or `func(op.custom, f, commutative, associative)`."""

    def __init__(
        self,
        operation: op,
        function: Callable[[Any, Any], Any] | None = None,
        commutative: bool | None = None,
        associative: bool | None = None,
    ) -> None:
        if not isinstance(operation, op):
            raise CosmicAIError(f"fmi.func needs an fmi.op member, got {operation!r}")
        if operation is op.custom:
            if not (
                callable(function)
                and isinstance(commutative, bool)
                and isinstance(associative, bool)
            ):
                raise CosmicAIError(
                    "fmi.func(fmi.op.custom, f, commutative, associative) needs a function "
                    "f(a, b) and two bools, commutative first (FMI's argument order)"
                )
        elif (function, commutative, associative) != (None, None, None):
            raise CosmicAIError(
                f"fmi.op.{operation.name} is built in: write fmi.func(fmi.op.{operation.name}); "
                f"only fmi.op.custom takes a function"
            )
        self.op = operation
        self.function = function
        self.commutative = commutative
        self.associative = associative


class Communicator:
    """A communicator between `world_size` ranks that share `comm_name` (FMI's API)."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        config_path: str | os.PathLike[str],
        comm_name: str,
        memory_mb: int | None = None,
    ) -> None:
        self._group: ProcessGroupGloo | None = None
        if not isinstance(world_size, numbers.Integral) or world_size < 1:
            raise CosmicAIError(f"FMI world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, numbers.Integral) or not 0 <= rank < world_size:
            raise CosmicAIError(
                f"FMI rank must be an int in [0, {world_size - 1}] for world_size {world_size}, "
                f"got {rank!r}"
            )
        if not isinstance(comm_name, str) or not comm_name:
            raise CosmicAIError(
                f"FMI comm_name must be a non-empty string unique to the run, got {comm_name!r}"
            )
        local = load_local_section(config_path)
        self._rank, self._size = int(rank), int(world_size)
        self._hint = hints.fast
        self.memory_mb = int(memory_mb if memory_mb is not None else local["memory_mb"])
        host, port = str(local["host"]), int(local["port"])
        self._where = f"communicator {comm_name!r} at the store {host}:{port}"
        store = PrefixStore(
            f"cosmicai-fmi/{comm_name}/", connect_store(host, port, local["timeout"])
        )
        self._join(store, float(local["peer_timeout"]))
        options = ProcessGroupGloo._Options()
        options._timeout = timedelta(seconds=float(local["op_timeout"]))
        options._devices = [ProcessGroupGloo.create_device(hostname="127.0.0.1")]
        try:
            self._group = ProcessGroupGloo(
                PrefixStore("gloo/", store), self._rank, self._size, options
            )
        except RuntimeError as exc:
            raise CosmicAIError(
                f"FMI setup failed on rank {self._rank} of {self._where}: {exc}"
            ) from exc

    def _join(self, store: PrefixStore, timeout_s: float) -> None:
        """Wait until every rank has joined; name the missing ones after `timeout_s`."""
        if store.add(f"claim/{self._rank}", 1) != 1:
            raise CosmicAIError(
                f"rank {self._rank} joined {self._where} twice; every run needs its own "
                f"comm_name (FMI_COMM_NAME) and each rank must join once"
            )
        store.set(f"joined/{self._rank}", "1")
        try:
            store.wait([f"joined/{r}" for r in range(self._size)], timedelta(seconds=timeout_s))
        except RuntimeError as exc:
            missing = [r for r in range(self._size) if not store.check([f"joined/{r}"])]
            raise CosmicAIError(
                f"ranks {missing} of world size {self._size} did not join {self._where} within "
                f"{timeout_s:g} s (Local.peer_timeout); start all ranks together (Map "
                f"MaxConcurrency >= world_size) with the same FMI_COMM_NAME"
            ) from exc

    def _call(self, what: str, start: Callable[[], Any]) -> None:
        """Start one gloo operation, wait for it, and turn its failures into our errors."""
        try:
            start().wait()
        except RuntimeError as exc:
            raise CosmicAIError(
                f"FMI {what} failed on rank {self._rank} of {self._where}: {exc}; a peer rank "
                f"probably exited or timed out, check its log"
            ) from exc

    @property
    def _pg(self) -> ProcessGroupGloo:
        if self._group is None:
            raise CosmicAIError(f"{self._where} is closed; create a new fmi.Communicator")
        return self._group

    def _check_rank(self, peer: Any, what: str, role: str) -> int:
        if not isinstance(peer, numbers.Integral) or not 0 <= peer < self._size:
            raise CosmicAIError(
                f"FMI {what}: {role} must be a rank in [0, {self._size - 1}], got {peer!r}"
            )
        if role in ("dest", "src") and peer == self._rank:
            raise CosmicAIError(f"FMI {what}: rank {self._rank} cannot {what} to/from itself")
        return int(peer)

    def _element(self, item: Any, t: types, what: str) -> int | float:
        """One element checked against the type (FMI's int is a 32-bit C int)."""
        if t.is_int:
            if isinstance(item, float) and item.is_integer():
                item = int(item)
            if not isinstance(item, numbers.Integral) or not _INT_MIN <= item <= _INT_MAX:
                raise CosmicAIError(f"FMI {what}: {item!r} is not a 32-bit int, as {t!r} requires")
            return int(item)
        if not isinstance(item, numbers.Real):
            raise CosmicAIError(f"FMI {what}: {item!r} is not a number, as {t!r} requires")
        return float(item)

    def _tensor(self, value: Any, t: types, what: str) -> torch.Tensor:
        if t.is_list:
            if not isinstance(value, list):
                raise CosmicAIError(
                    f"FMI {what}: {t!r} needs a Python list (the native module accepts no "
                    f"tuples or arrays), got {type(value).__name__}"
                )
            if len(value) != t.num_objects:
                raise CosmicAIError(
                    f"FMI {what}: the list has {len(value)} elements but the type declares "
                    f"{t.num_objects}; pass fmi.types(..., {len(value)})"
                )
            items = value
        else:
            items = [value]
        try:
            raw = torch.tensor(items, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raw = None
        if raw is None or raw.shape != (len(items),) or (t.is_int and not _int32_valued(raw)):
            # The slow path, only to name the offending element.
            raw = torch.tensor([self._element(i, t, what) for i in items], dtype=torch.float64)
        return raw.to(t.dtype)

    @staticmethod
    def _value(tensor: torch.Tensor, t: types) -> Any:
        items = tensor.tolist()
        return items if t.is_list else items[0]

    @staticmethod
    def _empty(t: types) -> torch.Tensor:
        return torch.zeros(t.num_objects, dtype=t.dtype)

    def _fold(self, parts: list[torch.Tensor], f: func, t: types, what: str) -> Any:
        """Combine per-rank values in rank order."""
        if f.op is not op.custom:
            return self._value(functools.reduce(_TENSOR_OPS[f.op], parts), t)
        function = f.function
        assert function is not None
        acc = parts[0].tolist()
        for part in parts[1:]:
            acc = [
                self._element(function(a, b), t, what)
                for a, b in zip(acc, part.tolist(), strict=True)
            ]
        return acc if t.is_list else acc[0]

    def _allgather(self, tensor: torch.Tensor, what: str) -> list[torch.Tensor]:
        outputs = [torch.empty_like(tensor) for _ in range(self._size)]
        self._call(what, lambda: self._pg.allgather(outputs, tensor))
        return outputs

    def _gather(self, tensor: torch.Tensor, root: int, what: str) -> list[torch.Tensor]:
        outputs = (
            [torch.empty_like(tensor) for _ in range(self._size)] if root == self._rank else []
        )
        self._call(what, lambda: self._pg.gather(outputs, tensor, root))
        return outputs

    @staticmethod
    def _check_func(f: Any, what: str) -> func:
        if not isinstance(f, func):
            raise CosmicAIError(f"FMI {what} needs an fmi.func(...) as its function, got {f!r}")
        return f

    @staticmethod
    def _check_types(t: Any, what: str) -> types:
        if not isinstance(t, types):
            raise CosmicAIError(f"FMI {what} needs an fmi.types(...) as its type, got {t!r}")
        return t

    def hint(self, hint: hints) -> None:
        """Record the channel hint (FMI picks a channel by it; here there is one)."""
        if not isinstance(hint, hints):
            raise CosmicAIError(f"FMI hint must be fmi.hints.fast or fmi.hints.cheap, got {hint!r}")
        self._hint = hint

    def send(self, value: Any, dest: int, t: types) -> None:
        """Send `value` to rank `dest`."""
        t = self._check_types(t, "send")
        dest = self._check_rank(dest, "send", "dest")
        tensor = self._tensor(value, t, "send")
        self._call("send", lambda: self._pg.send([tensor], dest, 0))

    def recv(self, src: int, t: types) -> Any:
        """Receive a value of type `t` from rank `src`."""
        t = self._check_types(t, "recv")
        src = self._check_rank(src, "recv", "src")
        tensor = self._empty(t)
        self._call("recv", lambda: self._pg.recv([tensor], src, 0))
        return self._value(tensor, t)

    def bcast(self, value: Any, root: int, t: types) -> Any:
        """The root's `value`, on every rank."""
        t = self._check_types(t, "bcast")
        root = self._check_rank(root, "bcast", "root")
        tensor = self._tensor(value, t, "bcast") if self._rank == root else self._empty(t)
        self._call("bcast", lambda: self._pg.broadcast(tensor, root))
        return self._value(tensor, t)

    def barrier(self) -> None:
        """Wait until every rank has reached the barrier."""
        self._call("barrier", lambda: self._pg.barrier())

    def gather(self, value: Any, root: int, t: types) -> list[Any]:
        """At the root, every rank's value(s) in rank order as one flat list; elsewhere []."""
        t = self._check_types(t, "gather")
        root = self._check_rank(root, "gather", "root")
        parts = self._gather(self._tensor(value, t, "gather"), root, "gather")
        return torch.cat(parts).tolist() if parts else []

    def allgather(self, value: Any, t: types) -> list[Any]:
        """Every rank's value(s) in rank order as one flat list, on every rank (not in FMI)."""
        t = self._check_types(t, "allgather")
        return torch.cat(self._allgather(self._tensor(value, t, "allgather"), "allgather")).tolist()

    def scatter(self, value: Any, root: int, t: types) -> list[Any]:
        """Rank r gets items [r*k, (r+1)*k) of the root's list, k = n / world_size."""
        t = self._check_types(t, "scatter")
        root = self._check_rank(root, "scatter", "root")
        if not t.is_list:
            raise CosmicAIError("FMI scatter: cannot scatter atomic types; use a list type")
        if t.num_objects % self._size:
            raise CosmicAIError(
                f"FMI scatter: the list length {t.num_objects} is not divisible by the world "
                f"size {self._size}"
            )
        chunk = t.num_objects // self._size
        output = torch.zeros(chunk, dtype=t.dtype)
        inputs = list(self._tensor(value, t, "scatter").split(chunk)) if self._rank == root else []
        self._call("scatter", lambda: self._pg.scatter(output, inputs, root))
        return output.tolist()

    def reduce(self, value: Any, root: int, f: func, t: types) -> Any:
        """The reduction of every rank's value at the root; zeros elsewhere."""
        t, f = self._check_types(t, "reduce"), self._check_func(f, "reduce")
        root = self._check_rank(root, "reduce", "root")
        tensor = self._tensor(value, t, "reduce")
        if f.op is op.custom:
            parts = self._gather(tensor, root, "reduce")
            return self._fold(parts, f, t, "reduce") if parts else self._value(self._empty(t), t)
        self._call("reduce", lambda: self._pg.reduce(tensor, root, _TORCH_REDUCE_OPS[f.op]))
        return self._value(tensor if self._rank == root else self._empty(t), t)

    def allreduce(self, value: Any, f: func, t: types) -> Any:
        """The reduction of every rank's value, on every rank."""
        t, f = self._check_types(t, "allreduce"), self._check_func(f, "allreduce")
        tensor = self._tensor(value, t, "allreduce")
        if f.op is op.custom:
            return self._fold(self._allgather(tensor, "allreduce"), f, t, "allreduce")
        self._call("allreduce", lambda: self._pg.allreduce(tensor, _TORCH_REDUCE_OPS[f.op]))
        return self._value(tensor, t)

    def scan(self, value: Any, f: func, t: types) -> Any:
        """Inclusive prefix reduction: rank r gets the reduction of ranks 0..r."""
        t, f = self._check_types(t, "scan"), self._check_func(f, "scan")
        parts = self._allgather(self._tensor(value, t, "scan"), "scan")
        return self._fold(parts[: self._rank + 1], f, t, "scan")

    def close(self) -> None:
        """Shut the process group down; the communicator cannot be used afterwards."""
        group, self._group = self._group, None
        if group is not None:
            with contextlib.suppress(RuntimeError):  # already broken: a peer died
                group.shutdown()

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_group", None) is not None:
            self.close()

    def __repr__(self) -> str:
        return (
            f"<fmi.Communicator (local) rank {self._rank} of {self._size}, {self._where}, "
            f"hint {self._hint.name}>"
        )
