"""Every subcommand over a corpus of bad arguments and inputs: a message, never a traceback.

Each case is (argv, files to create): it runs the real CLI in a subprocess, in a folder of its
own holding those files (and `home/`, its COSMICAI_HOME), with a timeout. A case fails on a
"Traceback" on stderr, a hang, or exit code 0 for bad input (cases marked `ok` are inputs the
CLI must accept: exit 0, e.g. `runs` listing a damaged store run by run). Add a case for every
bad input found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

FIFO = object()  # a file entry: a named pipe (reading it would block forever)
DIRECTORY = object()  # a file entry: an empty folder
TIMEOUT_S = 30

GOOD = {
    "bucket": "cosmicai-runs",
    "data_bucket": "cosmicai-data",
    "data_prefix": "partitions/p",
    "result_path": "results/r",
}
RUN = "demo-20260101-000000-aaaaaa"
SUCCEEDED_SUMMARY = '{"status": "succeeded"}'
OTHER = "demo-20260102-000000-bbbbbb"
RECORD = {
    "name": RUN,
    "status": "SUCCEEDED",
    "startDate": "2026-01-01T00:00:00+00:00",
    "stopDate": "2026-01-01T00:01:00+00:00",
}
LAMBDA_CAUSE = json.dumps(
    {
        "errorType": "NoDataError",
        "errorMessage": "world_size 3 is larger than the number of partition files (1)",
        "stackTrace": ['  File "/var/task/cosmicai/pipeline/init.py", line 49, in assign_files\n'],
    }
)
FAILED_IN_INIT = {
    **RECORD,
    "status": "FAILED",
    "error": "NoDataError",
    "cause": LAMBDA_CAUSE,
}


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    files: dict[str, object] = field(default_factory=dict)
    ok: bool = False  # good input: must exit 0
    says: str = ""  # must appear in the output
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return " ".join(self.argv)[:90]


def case(*argv: str, files: dict[str, object] | None = None, **kwargs: object) -> Case:
    return Case(tuple(argv), files or {}, **kwargs)  # type: ignore[arg-type]


def payload(**changes: object) -> dict[str, object]:
    return {"p.json": json.dumps({**GOOD, **changes})}


def store(run_id: str = RUN, **files: object) -> dict[str, object]:
    """Files of one run in the local store; a value of None leaves that file out."""
    records = {"execution.json": json.dumps(RECORD | {"name": run_id}), **files}
    base = f"home/s3/cosmicai-runs/runs/{run_id}"
    return {f"{base}/{name}": content for name, content in records.items() if content is not None}


BINARY = bytes(range(256)) * 4
DEEP_LIST = "[" * 200_000
DEEP_OBJECT = '{"a":' * 100_000
HUGE_INT = '{"bucket": "cosmicai-runs", "batch_size": ' + "9" * 5000 + "}"
TRUNCATED = '{"bucket": "cosmicai-runs", "data_bu'
SPARSE = "sparse"  # a file entry value: a 17 MiB sparse file of NUL bytes

PAYLOAD_FILES: dict[str, dict[str, object]] = {
    "truncated": {"p.json": TRUNCATED},
    "deep list": {"p.json": DEEP_LIST},
    "deep object": {"p.json": DEEP_OBJECT},
    "5000-digit number": {"p.json": HUGE_INT},
    "binary": {"p.json": BINARY},
    "latin-1": {"p.json": '{"team": "caf\xe9"}'.encode("latin-1")},
    "empty": {"p.json": ""},
    "fifo": {"p.json": FIFO},
    "directory": {"p.json": DIRECTORY},
    "17 MiB": {"p.json": SPARSE},
    "a list": {"p.json": "[1, 2]"},
    "null": {"p.json": "null"},
    "duplicate keys": {"p.json": '{"bucket": "a-b-c", "bucket": "d-e-f"}'},
    "nan": payload(tolerated_failure_percentage=float("nan")),
    "huge string number": payload(batch_size="9" * 5000),
    "inf world size": {"p.json": json.dumps(GOOD)[:-1] + ', "world_size": 1e999}'},
}
LOOSE_TRUE = ["yes", "on", "Y", "t", 1, 1.0, "1", "TRUE", "True", [], {}, None]
UNSAFE_LOCATIONS: list[dict[str, object]] = [
    {"bucket": "../cosmicai-data"},
    {"bucket": "xn--bucket"},
    {"bucket": "my-bucket-s3alias"},
    {"bucket": "192.168.1.1"},
    {"bucket": "a" * 64},
    {"data_bucket": "Data_Bucket"},
    {"data_prefix": "a//b"},
    {"data_prefix": "../cosmicai-runs"},
    {"data_prefix": "/abs"},
    {"data_prefix": "a\u0000b"},
    {"result_path": ".."},
    {"result_path": "r/./x"},
    {"model": "s3://cosmicai-data/../x.pt"},
    {"model": "s3://Bad_Bucket/x.pt"},
    {"model": "../x.pt"},
]
UNSAFE_URIS = [
    "s3://cosmicai-runs/../cosmicai-data/p/x",
    "s3://cosmicai-runs/a/../../cosmicai-data/x",
    "s3://cosmicai-runs//x",
    "s3://cosmicai-runs/a//x",
    "s3://cosmicai-runs/./x",
    "s3://cosmicai-runs/a\x01b",
    "s3://cosmicai-runs/a\\..\\x",
    "s3://Bad_Bucket/x",
    "s3://ab/x",
    "s3://192.168.0.1/x",
    "s3://xn--bucket/x",
    "s3://bucket-s3alias/x",
    "s3://a..b/x",
    "s3://cosmicai-runs/",
    "not-an-s3-uri",
]

# A valid `cost lambda` command line, for the cases that break only its price table.
COST_LAMBDA = ("cost", "lambda", "--requests", "1", "--duration-s", "1", "--memory-mb", "128")

AWS_ARN = (
    "--aws",
    "--state-machine-arn",
    "arn:aws:states:us-east-1:123456789012:stateMachine:cosmicai-run",
    "--bucket",
    "cosmicai-runs",
    "--region",
    "us-east-1",
)

CASES: list[Case] = [
    *(case("validate", "p.json", files=f) for f in PAYLOAD_FILES.values()),
    case("validate", "missing.json"),
    case("validate", "/dev/zero"),
    case("validate", "/dev/null"),
    *(
        case("validate", "p.json", files=payload(trust_pickle=v), says="trust_pickle")
        for v in LOOSE_TRUE
    ),
    case("validate", "p.json", files=payload(communication="yes"), says="communication"),
    case("validate", "p.json", files=payload(trust_pickle="true"), ok=True),
    case("validate", "p.json", files=payload(trust_pickle=False), ok=True),
    *(case("validate", "p.json", files=payload(**change)) for change in UNSAFE_LOCATIONS),
    *(case("run", "p.json", files=PAYLOAD_FILES[k]) for k in ("truncated", "fifo", "deep list")),
    case("run", "/dev/zero"),
    case("run", "p.json", files=payload(trust_pickle="yes"), says="trust_pickle"),
    case("run", "p.json", "--run-id", "../x", files=payload()),
    case("run", "p.json", "--run-id", "", files=payload()),
    case("run", "p.json", "--run-id", "Demo/1", files=payload()),
    *(case(cmd, run_id) for cmd in ("status", "results", "report") for run_id in ("..", "", "a/b")),
    *(case(cmd, run_id) for cmd in ("redrive", "resume") for run_id in ("..", "a/b")),
    case("redrive", RUN, says=f"no local run {RUN}"),
    case("redrive", RUN, files=store(**{"payload.json": "[]"}), says="unreadable"),
    case("resume", RUN, files=store(**{"executions.json": "{}"}), says="unreadable"),
    case("redrive", RUN, files=store(**{"payload.json": json.dumps(GOOD), "items.json": "[1]"})),
    case(
        "redrive",
        RUN,
        files=store(**{"payload.json": json.dumps(GOOD), "summary.json": SUCCEEDED_SUMMARY}),
        says="succeeded: nothing to redrive",
    ),
    case("compare", "..", RUN),
    case("compare", RUN, "x"),
    case("status", RUN, files=store(**{"execution.json": '{"name": "de'}), says="unreadable"),
    case("status", RUN, files=store(**{"execution.json": None, "payload.json": "{}"})),
    case("status", RUN, files=store(**{"execution.json": "[]"})),
    case("status", RUN, files=store(**{"summary.json": '{"status": "succ'}), says="unreadable"),
    case("status", RUN, files=store(**{"summary.json": "[]"})),
    case("status", RUN, files=store(**{"summary.json": FIFO})),
    case("results", RUN, files=store(**{"summary.json": '{"status": "succ'}), says="unreadable"),
    case("results", RUN, files=store(**{"summary.json": DEEP_LIST})),
    case("report", RUN, files=store(**{"execution.json": '{"name": "de'}), says="unreadable"),
    case("report", RUN, files=store(**{"summary.json": '{"status": "succ'}), says="unreadable"),
    case(
        "report", RUN, files=store(**{"execution.json": json.dumps({**RECORD, "startDate": "x"})})
    ),
    case("report", RUN, files=store(**{"logs/cosmicai-init.jsonl": '{"timestamp": 1, "str'})),
    case("report", RUN, files=store(**{"logs/cosmicai-init.jsonl": "[1]\n"})),
    case("report", RUN, files=store(**{"payload.json": "[]"})),
    case("report", RUN, files=store(**{"items.json": "{}"})),
    case("report", RUN, "--prices", "p.bin", files={**store(), "p.bin": BINARY}),
    case(
        "runs",
        files={
            **store(),
            **store(OTHER, **{"execution.json": '{"name": "de'}),
            **store("demo-20260103-000000-cccccc", **{"summary.json": '{"sta'}),
            "home/s3/cosmicai-runs/runs/demo-20260104-000000-dddddd/payload.json": "{}",
        },
        ok=True,
        says="unreadable",
    ),
    case("runs", "--limit", "0"),
    case("runs", "--limit", "-1"),
    case("runs", "--prices", "fifo", files={**store(), "fifo": FIFO}),
    case(
        "status",
        RUN,
        files=store(**{"execution.json": json.dumps(FAILED_IN_INIT)}),
        ok=True,
        says="init failed: NoDataError: world_size 3",
    ),
    *(case("upload", "f", uri, files={"f": "data"}) for uri in UNSAFE_URIS),
    case("upload", "missing", "s3://cosmicai-runs/x"),
    case("make-data", "--samples", "1", "--out", "x.safetensors", "--seed", "-1"),
    case("make-data", "--samples", "1", "--out", "x.safetensors", "--seed", str(2**40)),
    case("make-data", "--samples", "0", "--out", "x.safetensors"),
    case("make-data", "--samples", "1e3", "--out", "x.safetensors"),
    case("make-data", "--samples", "1", "--out", "/proc/x.safetensors"),
    case("make-data", "--samples", "1", "--out", "x.txt"),
    case("partition", "src.safetensors", "--out", "s3://cosmicai-runs/../cosmicai-data/x"),
    case("partition", "src.safetensors", "--out", "s3://Bad_Bucket/x"),
    case("partition", "missing.safetensors", "--out", "out"),
    case("partition", "fifo.safetensors", "--out", "out", files={"fifo.safetensors": FIFO}),
    case(
        "partition", "x.safetensors", "--size", "inf", "--out", "o", files={"x.safetensors": BINARY}
    ),
    case("metrics", "parse", "/dev/zero"),
    case("metrics", "parse", "fifo", files={"fifo": FIFO}),
    case("metrics", "parse", "dir", files={"dir": DIRECTORY}),
    case("metrics", "parse", "missing.log"),
    case("metrics", "parse", "b.log", files={"b.log": BINARY}, ok=True),
    *(
        case("cost", "lambda", "--requests", "1", "--duration-s", d, "--memory-mb", "128")
        for d in ("1e308", "inf", "nan", "-1", "901", "x")
    ),
    case("cost", "lambda", "--requests", "-1", "--duration-s", "1", "--memory-mb", "128"),
    case("cost", "lambda", "--requests", "1", "--duration-s", "1", "--memory-mb", "1e9"),
    *(
        case(*COST_LAMBDA, "--prices", "prices.json", files={"prices.json": content})
        for content in (BINARY, FIFO, DIRECTORY, DEEP_LIST, HUGE_INT, TRUNCATED, SPARSE, "[]")
    ),
    case(
        *COST_LAMBDA,
        files={"p.bin": BINARY},
        env={"COSMICAI_PRICES": "p.bin"},
    ),
    *(
        case("rendezvous", "check", "127.0.0.1:9", "--timeout", t)
        for t in ("inf", "nan", "0", "-1", "1e300")
    ),
    case("rendezvous", "check", "127.0.0.1:99999"),
    case("rendezvous", "check", "no-port"),
    case("rendezvous", "serve", "--port", "70000"),
    case("rendezvous", "serve", "--ttl", "inf"),
    case("rendezvous", "serve", "--max-pending", "0"),
    case("demo", "--world-size", "0"),
    case("demo", "--world-size", "1e3"),
    case("demo", "--samples", "-5"),
    case("demo", "--batch-size", "0"),
    case("demo", "--seed", "-1"),
    case("bench", "engine", "--samples", "0"),
    case("bench", "engine", "--threads", "0"),
    case("bench", "engine", "--out", "/proc/x/engine.json"),
    case("bench", "pipeline", "--world-size", "0"),
    *(case("bench", "cost", "--partition-mb", size) for size in ("0", "-1", "nan", "inf", "0.001")),
    case("bench", "cost", "--memory-mb", "127"),
    case("bench", "cost", "--memory-mb", "10241"),
    case("bench", "cost", "--memory-mb", "2048.5"),
    case("bench", "cost", "--arch", "sparc"),
    case("bench", "cost", "--backend", "tensorflow"),
    case("bench", "cost", "--out", "/proc/x/cost.json"),
    case("model", "import", "missing.pt", "--out", "m.safetensors"),
    case("model", "import", "x.pt", "--out", "m.safetensors", files={"x.pt": BINARY}),
    case("model", "import", "x.pt", "--out", "m.safetensors", files={"x.pt": FIFO}),
    case("model", "import", "x.pt", "--out", "m.pt", files={"x.pt": BINARY}),
    case("tune", "p.json", "--memory", "abc", "--batch-size", "8", files=payload()),
    case("tune", "p.json", "--memory", "1024", "--batch-size", "8", files=PAYLOAD_FILES["fifo"]),
    *(
        case("status", RUN, *AWS_ARN, flag, value, says=flag)
        for flag, value in (
            ("--name-prefix", "bad prefix"),
            ("--name-prefix", ""),
            ("--name-prefix", "p" * 60),
            ("--rendezvous", "no-port"),
            ("--rendezvous", "203.0.113.10:0"),
            ("--rendezvous", "203.0.113.10:99999"),
            ("--rendezvous", ":10000"),
        )
    ),
    case("status", RUN, "--aws", "--name-prefix", "course", says="--state-machine-arn"),
    case("import-results", "missing.json"),
    *(
        case("import-results", "c.json", "--name", "x", files={"c.json": content})
        for content in (BINARY, FIFO, DIRECTORY, DEEP_LIST, HUGE_INT, TRUNCATED, "[]", "{}")
    ),
    case("import-results", "c.json", "--name", "x", files={"c.json": '[{"num_batches": "2"}]'}),
    case("import-results", "c.json", "--name", "Bad Name", files={"c.json": '[{"device": "cpu"}]'}),
    case(
        "import-results",
        "c.json",
        "--name",
        "x",
        files={"c.json": '[{"device": "cpu"}]'},
        ok=True,
        says="unknown samples",
    ),
]


def _create(root: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is FIFO:
            os.mkfifo(path)
        elif content is DIRECTORY:
            path.mkdir()
        elif content == SPARSE:
            with path.open("wb") as stream:
                stream.truncate(17 * 2**20)
        else:
            data = content if isinstance(content, bytes) else str(content).encode()
            path.write_bytes(data)


def run_case(root: Path, index: int, item: Case) -> tuple[str, str]:
    """(verdict, detail): "refused", "accepted", "traceback", "hang" or "wrong"."""
    folder = root / f"case-{index:03d}"
    folder.mkdir()
    _create(folder, item.files)
    env = {k: v for k, v in os.environ.items() if k != "COSMICAI_PRICES"}
    env |= {"COSMICAI_HOME": str(folder / "home"), **item.env}
    command = [sys.executable, "-m", "cosmicai.cli.main", *item.argv]
    try:
        done = subprocess.run(
            command,
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return "hang", f"no answer in {TIMEOUT_S} s"
    output = done.stdout + done.stderr
    if "Traceback" in done.stderr:
        return "traceback", done.stderr[-2000:]
    if item.says and item.says not in output:
        return "wrong", f"exit {done.returncode}, {item.says!r} not in: {output[-1500:]}"
    if item.ok != (done.returncode == 0):
        return "wrong", f"exit {done.returncode}: {output[-1500:]}"
    return ("accepted" if item.ok else "refused"), output.strip()[-200:]


def test_corpus_is_large_and_covers_every_subcommand() -> None:
    from cosmicai.cli.main import build_parser

    commands = {c.argv[0] for c in CASES}
    subparsers = next(a for a in build_parser()[0]._actions if a.dest == "command")
    assert set(subparsers.choices) <= commands
    assert len(CASES) >= 80


def test_every_bad_input_gets_a_message(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(run_case, tmp_path, i, c) for i, c in enumerate(CASES)]
        results = [(c, *f.result()) for c, f in zip(CASES, futures, strict=True)]
    counts = Counter(verdict for _, verdict, _ in results)
    print(f"\ncorpus: {len(CASES)} cases, {dict(counts)}")
    failures = [
        f"{c.name}: {verdict}: {detail}"
        for c, verdict, detail in results
        if verdict not in ("refused", "accepted")
    ]
    assert not failures, "\n\n".join(failures)
