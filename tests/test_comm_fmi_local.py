"""The local FMI backend (`import fmi` through the shim) against sequential computations.

Eight worker processes (each imports torch once) run every world size from 1 to 8 in turn:
worker i is rank i of every communicator larger than i. Each reports what every call returned;
the test recomputes each value sequentially here and compares exactly (the double inputs are
dyadic, so sums and products are exact in any order). This file also runs as the worker:
`python test_comm_fmi_local.py CONFIG JOBS_JSON`.
"""

from __future__ import annotations

import functools
import json
import operator
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

WORKERS = 8
INTS = [3, -2, 5, 1, -4, 2, 7, -1]
KINDS = ("int", "double", "int_list", "double_list")
OPS = ("sum", "prod", "max", "min", "custom_ordered", "custom_free")
MIX_TAGS = {"mixA": 100, "mixB": 1000}


def value(kind: str, rank: int) -> Any:
    """Rank `rank`'s input of a datatype: distinct, signed, and exact in binary."""
    i = INTS[rank]
    d = i * 0.5 + 0.25
    return {
        "int": i,
        "double": d,
        "int_list": [i, i + rank, -i],
        "double_list": [d, -2 * d, d + rank],
    }[kind]


def digits(a: int, b: int) -> int:
    """Neither commutative nor associative: FMI must fold it in rank order."""
    return a * 10 + b


def twice_minus(a: float, b: float) -> float:
    return a * 2 - b


def plus(a: Any, b: Any) -> Any:
    return a + b


def scalar_op(op: str, kind: str) -> Any:
    ordered = digits if kind.startswith("int") else twice_minus
    return {
        "sum": operator.add,
        "prod": operator.mul,
        "max": max,
        "min": min,
        "custom_ordered": ordered,
        "custom_free": plus,
    }[op]


def fold(op: str, kind: str, values: list[Any]) -> Any:
    f = scalar_op(op, kind)
    if kind.endswith("list"):
        return functools.reduce(lambda a, b: [f(x, y) for x, y in zip(a, b, strict=True)], values)
    return functools.reduce(f, values)


def scatter_input(kind: str, size: int) -> list[Any]:
    if kind == "int_list":
        return [10 * i - 7 for i in range(2 * size)]
    return [i * 0.5 - 1 for i in range(size)]


def roots(size: int) -> dict[str, int]:
    return {"bcast": size - 1, "gather": size // 2, "scatter": 0, "reduce": (size - 1) // 2}


def zero(kind: str) -> Any:
    return {"int": 0, "double": 0.0, "int_list": [0, 0, 0], "double_list": [0.0, 0.0, 0.0]}[kind]


def expected(size: int, rank: int) -> dict[str, Any]:
    """What each call must return on `rank`, computed sequentially."""
    root = roots(size)
    everyone = {kind: [value(kind, r) for r in range(size)] for kind in KINDS}

    def flat(values: list[Any]) -> list[Any]:
        return [x for v in values for x in (v if isinstance(v, list) else [v])]

    out: dict[str, Any] = {
        "ring": {k: value(k, (rank - 1) % size) for k in KINDS} if size > 1 else {},
        "bcast": {k: value(k, root["bcast"]) for k in KINDS},
        "gather": {k: flat(everyone[k]) if rank == root["gather"] else [] for k in KINDS},
        "allgather": {k: flat(everyone[k]) for k in KINDS},
        "scatter": {},
    }
    for kind in ("int_list", "double_list"):
        items = scatter_input(kind, size)
        chunk = len(items) // size
        out["scatter"][kind] = items[rank * chunk : (rank + 1) * chunk]
    for name in ("reduce", "allreduce", "scan"):
        out[name] = {}
        for op in OPS:
            row = {}
            for kind in KINDS:
                if name == "reduce":
                    row[kind] = (
                        fold(op, kind, everyone[kind]) if rank == root["reduce"] else zero(kind)
                    )
                elif name == "allreduce":
                    row[kind] = fold(op, kind, everyone[kind])
                else:
                    row[kind] = fold(op, kind, everyone[kind][: rank + 1])
            out[name][op] = row
    return out


# -- the worker side (runs in a subprocess) -----------------------------------------------------


def run_collectives(fmi: Any, comm: Any, rank: int, size: int) -> dict[str, Any]:
    """Call every operation the way a student script would; return what each call gave."""
    kinds = {
        k: fmi.types(getattr(fmi.datatypes, k), 3)
        if k.endswith("list")
        else fmi.types(getattr(fmi.datatypes, k))
        for k in KINDS
    }

    def func(op: str, kind: str) -> Any:
        if op == "custom_ordered":
            return fmi.func(fmi.op.custom, scalar_op(op, kind), False, False)
        if op == "custom_free":
            return fmi.func(fmi.op.custom, plus, True, True)
        return fmi.func(getattr(fmi.op, op))

    root = roots(size)
    comm.barrier()
    out: dict[str, Any] = {"ring": {}, "bcast": {}, "gather": {}, "allgather": {}, "scatter": {}}
    for kind, t in kinds.items():
        if size > 1:
            right, left = (rank + 1) % size, (rank - 1) % size
            if rank % 2 == 0:
                comm.send(value(kind, rank), right, t)
                out["ring"][kind] = comm.recv(left, t)
            else:
                out["ring"][kind] = comm.recv(left, t)
                comm.send(value(kind, rank), right, t)
        mine = value(kind, rank) if rank == root["bcast"] else None
        out["bcast"][kind] = comm.bcast(mine, root["bcast"], t)
        out["gather"][kind] = comm.gather(value(kind, rank), root["gather"], t)
        out["allgather"][kind] = comm.allgather(value(kind, rank), t)
    for kind in ("int_list", "double_list"):
        items = scatter_input(kind, size)
        t = fmi.types(getattr(fmi.datatypes, kind), len(items))
        out["scatter"][kind] = comm.scatter(items if rank == 0 else None, 0, t)
    for name in ("reduce", "allreduce", "scan"):
        out[name] = {}
        for op in OPS:
            row = {}
            for kind, t in kinds.items():
                if name == "reduce":
                    row[kind] = comm.reduce(value(kind, rank), root["reduce"], func(op, kind), t)
                elif name == "allreduce":
                    row[kind] = comm.allreduce(value(kind, rank), func(op, kind), t)
                else:
                    row[kind] = comm.scan(value(kind, rank), func(op, kind), t)
            out[name][op] = row
    comm.barrier()
    return out


def run_mix(fmi: Any, comm: Any, rank: int, tag: int) -> dict[str, Any]:
    int_t = fmi.types(fmi.datatypes.int)
    return {
        "sum": comm.allreduce(tag + rank, fmi.func(fmi.op.sum), int_t),
        "gather": comm.gather(tag + rank, 0, int_t),
    }


def worker_main(config: str, jobs: list[dict[str, Any]]) -> None:
    from cosmicai.comm.config import fmi_pythonpath

    sys.path.insert(0, str(fmi_pythonpath()))
    import fmi

    results: dict[str, Any] = {}
    for job in jobs:
        try:
            with fmi.Communicator(job["rank"], job["size"], config, job["comm"], 256) as comm:
                comm.hint(fmi.hints.fast)
                if job["name"] in MIX_TAGS:
                    results[job["name"]] = run_mix(fmi, comm, job["rank"], MIX_TAGS[job["name"]])
                else:
                    results[job["name"]] = run_collectives(fmi, comm, job["rank"], job["size"])
        except Exception as exc:  # reported to the test, which fails with the message
            results[job["name"]] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(results))


# -- the test side ------------------------------------------------------------------------------


def jobs_for(worker: int) -> list[dict[str, Any]]:
    jobs = []
    if worker < 4:  # two 2-rank communicators with equal ranks on one store, at the same time
        name = "mixA" if worker < 2 else "mixB"
        jobs.append({"name": name, "comm": name, "rank": worker % 2, "size": 2})
    for size in range(worker + 1, WORKERS + 1):
        jobs.append({"name": f"ws{size}", "comm": f"ws{size}", "rank": worker, "size": size})
    return jobs


def local_config(path: Path, store_port: int, **local: float) -> str:
    from cosmicai.comm.config import write_fmi_config

    write_fmi_config(
        path,
        rendezvous_host="127.0.0.1",
        rendezvous_port=10000,
        bucket="bucket",
        run_id="test-run",
        store_host="127.0.0.1",
        store_port=store_port,
    )
    config = json.loads(path.read_text())
    config["Local"].update(local)
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def store() -> Any:
    from cosmicai.comm.store import serve_store

    return serve_store()


@pytest.fixture(scope="module")
def pool(store: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, Any]]:
    """Run every job on the 8 workers; results by job name, then by rank."""
    config = local_config(
        tmp_path_factory.mktemp("fmi") / "fmi.json", store.port, peer_timeout=90, op_timeout=15
    )
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, config, json.dumps(jobs_for(w))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WORKERS)
    ]
    results: dict[str, dict[int, Any]] = {}
    for worker, proc in enumerate(procs):
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"worker {worker} failed:\n{stderr[-3000:]}"
        for job in jobs_for(worker):
            results.setdefault(job["name"], {})[job["rank"]] = json.loads(stdout)[job["name"]]
    return results


@pytest.mark.parametrize("size", range(1, WORKERS + 1))
def test_every_collective_equals_the_sequential_computation(
    pool: dict[str, dict[int, Any]], size: int
) -> None:
    for rank in range(size):
        got = pool[f"ws{size}"][rank]
        assert "error" not in got, got
        want = json.loads(json.dumps(expected(size, rank)))
        for section, values in want.items():
            assert got[section] == values, f"{section} on rank {rank} of {size}"


def test_custom_op_follows_rank_order_like_fmi_readme(pool: dict[str, dict[int, Any]]) -> None:
    # FMI's README folds a custom op in rank order (f(a, b) = 3a + b over ranks 0..2 gives 5);
    # digits (10a + b) is neither commutative nor associative, so any other order differs.
    assert (
        pool["ws3"][0]["allreduce"]["custom_ordered"]["int"]
        == fold("custom_ordered", "int", INTS[:3])
        == (3 * 10 - 2) * 10 + 5
    )


def test_communicators_with_different_names_do_not_mix(pool: dict[str, dict[int, Any]]) -> None:
    for name, tag in MIX_TAGS.items():
        for rank in (0, 1):
            assert pool[name][rank]["sum"] == 2 * tag + 1, pool[name][rank]
        assert pool[name][0]["gather"] == [tag, tag + 1]
        assert pool[name][1]["gather"] == []


# -- errors, in this process --------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_store_fails_within_the_deadline_naming_host_and_port(tmp_path: Path) -> None:
    from cosmicai.comm.fmi_local import Communicator
    from cosmicai.errors import CosmicAIError

    port = closed_port()
    config = local_config(tmp_path / "fmi.json", port, timeout=1)
    started = time.monotonic()
    with pytest.raises(CosmicAIError, match=rf"127\.0\.0\.1:{port} within 1 s"):
        Communicator(0, 2, config, "nobody-home")
    assert time.monotonic() - started < 5


def test_missing_peers_are_named_after_the_peer_deadline(store: Any, tmp_path: Path) -> None:
    from cosmicai.comm.fmi_local import Communicator
    from cosmicai.errors import CosmicAIError

    config = local_config(tmp_path / "fmi.json", store.port, peer_timeout=1)
    with pytest.raises(CosmicAIError, match=r"ranks \[1, 2\] of world size 3 did not join"):
        Communicator(0, 3, config, "lonely")


def test_a_rank_cannot_join_the_same_communicator_twice(store: Any, tmp_path: Path) -> None:
    from cosmicai.comm.fmi_local import Communicator
    from cosmicai.errors import CosmicAIError

    config = local_config(tmp_path / "fmi.json", store.port)
    with Communicator(0, 1, config, "twice"), pytest.raises(CosmicAIError, match="twice"):
        Communicator(0, 1, config, "twice")


def test_config_without_local_section_is_an_actionable_error(tmp_path: Path) -> None:
    from cosmicai.comm.config import write_fmi_config
    from cosmicai.comm.fmi_local import Communicator
    from cosmicai.errors import CosmicAIError

    path = write_fmi_config(
        tmp_path / "fmi.json", rendezvous_host="h", rendezvous_port=1, bucket="b", run_id="r"
    )
    with pytest.raises(CosmicAIError, match="no enabled 'Local' section"):
        Communicator(0, 1, str(path), "x")
    with pytest.raises(CosmicAIError, match="does not exist"):
        Communicator(0, 1, str(tmp_path / "missing.json"), "x")


def test_bad_arguments_are_actionable_errors(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cosmicai.comm.config import fmi_pythonpath
    from cosmicai.errors import CosmicAIError

    monkeypatch.syspath_prepend(str(fmi_pythonpath()))
    import fmi

    config = local_config(tmp_path / "fmi.json", store.port)
    int_t = fmi.types(fmi.datatypes.int)
    pair = fmi.types(fmi.datatypes.int_list, 2)
    with fmi.Communicator(0, 1, config, "bad-arguments") as comm:
        cases = [
            (lambda: comm.allreduce([1, 2, 3], fmi.func(fmi.op.sum), pair), "has 3 elements"),
            (lambda: comm.allreduce((1, 2), fmi.func(fmi.op.sum), pair), "needs a Python list"),
            (lambda: comm.allreduce(2**31, fmi.func(fmi.op.sum), int_t), "not a 32-bit int"),
            (lambda: comm.allreduce(1.5, fmi.func(fmi.op.sum), int_t), "not a 32-bit int"),
            (lambda: comm.bcast(1, 1, int_t), r"root must be a rank in \[0, 0\]"),
            (lambda: comm.send(1, 0, int_t), "cannot send to/from itself"),
            (lambda: comm.scatter(1, 0, int_t), "cannot scatter atomic types"),
            (lambda: comm.allreduce(1, fmi.op.sum, int_t), r"needs an fmi\.func"),
            (lambda: comm.hint("fast"), "fmi.hints.fast"),
            (lambda: fmi.func(fmi.op.custom, plus), "commutative first"),
            (lambda: fmi.func(fmi.op.sum, plus, True, True), "only fmi.op.custom"),
            (lambda: fmi.types(fmi.datatypes.int_list), "needs the list length"),
        ]
        for call, message in cases:
            with pytest.raises(CosmicAIError, match=message):
                call()
        assert comm.allreduce(7, fmi.func(fmi.op.sum), int_t) == 7
    with pytest.raises(CosmicAIError, match="is closed"):
        comm.barrier()


if __name__ == "__main__":
    worker_main(sys.argv[1], json.loads(sys.argv[2]))
