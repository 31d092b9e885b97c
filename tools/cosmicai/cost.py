"""What a run costs on AWS, itemised, from one versioned price table (`prices.json`).

The reference workflow priced a run as `requests x duration x GB x $0.00001667`, with GB the
memory the process *used*. AWS bills differently, and this module follows AWS:
- Lambda compute is billed on the *configured* memory, for the *billed* duration (each
  invocation rounded up to the ms, and including the Init phase where it is billed: container
  images, and managed runtimes since August 2025), at the price of the function's architecture;
- every invocation is also a request ($0.20 per million);
- ephemeral storage (/tmp) above the free 512 MB is billed per GB-second of billed duration;
- the Step Functions workflow costs state transitions (Standard) or, for Express child
  executions, requests plus GB-seconds of duration (memory in 64 MB units, at least 100 ms per
  execution);
- S3 requests (the payload, item list, rank results, summaries) are billed per 1,000.
Prices are the first (lowest-volume) tier, before any free tier: the marginal cost of one more
run. Data transfer inside a region, S3 storage and CloudWatch Logs are not included.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cosmicai.errors import CosmicAIError
from cosmicai.lambda_report import ReportLine
from cosmicai.safe_input import MissingInput, UnreadableInput, read_json_file

Arch = Literal["x86_64", "arm64"]
Workflow = Literal["standard", "express"]

ARCHES: tuple[str, ...] = ("x86_64", "arm64")
WORKFLOWS: tuple[str, ...] = ("standard", "express")
MEMORY_RANGE_MB = (128, 10240)
EPHEMERAL_RANGE_MB = (512, 10240)
MAX_DURATION_S = 900  # Lambda's maximum timeout: no invocation lasts longer
PRICES_ENV = "COSMICAI_PRICES"
PACKAGED_PRICES = Path(__file__).with_name("prices.json")

_TEXT_KEYS = ("version", "region", "source")
_SECTIONS: dict[str, tuple[str, ...]] = {
    "lambda": ("x86_64_gb_s", "arm64_gb_s", "request", "ephemeral_gb_s", "ephemeral_free_mb"),
    "stepfunctions": (
        "standard_transition",
        "express_request",
        "express_gb_s",
        "express_memory_unit_mb",
        "express_min_duration_ms",
    ),
    "s3": ("put_per_1000", "get_per_1000"),
}


class CostError(CosmicAIError):
    """Invalid usage figures or an unusable price table."""

    exit_code = 2


def _unknown_key(key: str, known: Iterable[str], where: str) -> CostError:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "known keys: " + ", ".join(known)
    return CostError(f"{where}: unknown key '{key}'; {hint}")


def _check_table(table: Mapping[str, Any], where: str, complete: bool) -> None:
    """Check keys and values of a price table; `complete=False` allows a partial override."""
    for key, value in table.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise CostError(f"{where}: '{key}' must be an object of prices")
            for name, price in value.items():
                if name not in _SECTIONS[key]:
                    raise _unknown_key(name, _SECTIONS[key], f"{where}: '{key}'")
                if isinstance(price, bool) or not isinstance(price, int | float):
                    raise CostError(f"{where}: '{key}.{name}' must be a number, got {price!r}")
                if not math.isfinite(price) or price < 0:
                    raise CostError(f"{where}: '{key}.{name}' must be >= 0, got {price!r}")
            if value.get("express_memory_unit_mb", 1) <= 0:
                raise CostError(f"{where}: 'stepfunctions.express_memory_unit_mb' must be > 0")
        elif key == "source":
            if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                raise CostError(f"{where}: 'source' must be a list of URLs")
        elif key in _TEXT_KEYS:
            if not isinstance(value, str) or not value:
                raise CostError(f"{where}: '{key}' must be a non-empty string")
        else:
            raise _unknown_key(key, [*_TEXT_KEYS, *_SECTIONS], where)
    if complete:
        missing = [k for k in (*_TEXT_KEYS, *_SECTIONS) if k not in table]
        missing += [
            f"{s}.{n}" for s, names in _SECTIONS.items() for n in names if n not in table.get(s, {})
        ]
        if missing:
            raise CostError(f"{where}: missing price(s): {', '.join(missing)}")


def _read_table(path: Path) -> dict[str, Any]:
    try:
        table = read_json_file(path)
    except MissingInput:
        raise CostError(
            f"price table {path} not found; pass an existing JSON file with --prices or "
            f"{PRICES_ENV}, or neither to use the packaged table"
        ) from None
    except UnreadableInput as err:
        raise CostError(f"{err} (a price table must be a JSON file)") from None
    if not isinstance(table, dict):
        raise CostError(f"price table {path} must hold a JSON object")
    return table


def load_prices(path: str | Path | None = None) -> dict[str, Any]:
    """The price table: the packaged one, overridden by a user file.

    The user file is `path`, or else the file named by $COSMICAI_PRICES. It may hold only the
    figures it changes (for example `{"region": "eu-west-1", "lambda": {"x86_64_gb_s": ...}}`);
    misspelled keys are errors. Without its own `version`, the result's version is the packaged
    one plus `+<file name>`, so a breakdown always says which figures it used.
    """
    table = _read_table(PACKAGED_PRICES)
    _check_table(table, str(PACKAGED_PRICES), complete=True)
    chosen = path if path is not None else os.environ.get(PRICES_ENV) or None
    if chosen is None:
        return table
    user_path = Path(chosen)
    override = _read_table(user_path)
    _check_table(override, str(user_path), complete=False)
    merged = {**table, **{k: v for k, v in override.items() if k not in _SECTIONS}}
    for section in _SECTIONS:
        merged[section] = {**table[section], **override.get(section, {})}
    if "version" not in override:
        merged["version"] = f"{table['version']}+{user_path.name}"
    return merged


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CostError(f"{name} must be a whole number >= 0, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CostError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_range(name: str, value: object, bounds: tuple[int, int], what: str) -> None:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CostError(f"{name}={value!r} is out of range: {what} is {low} to {high} MB")


@dataclass
class LambdaUsage:
    """One Lambda function's use in a run.

    `billed_ms_total` is the sum of the invocations' billed durations (Init included where
    billed), as the REPORT lines' `Billed Duration` give it; `memory_mb` is the configured
    memory, not the memory used.
    """

    function: str
    requests: int
    billed_ms_total: int
    memory_mb: int
    arch: Arch = "x86_64"
    ephemeral_mb: int = 512

    def __post_init__(self) -> None:
        where = f"Lambda '{self.function}': " if self.function else ""
        _check_count(f"{where}requests", self.requests)
        _check_count(f"{where}billed_ms_total", self.billed_ms_total)
        _check_range(f"{where}memory_mb", self.memory_mb, MEMORY_RANGE_MB, "Lambda memory")
        _check_range(
            f"{where}ephemeral_mb", self.ephemeral_mb, EPHEMERAL_RANGE_MB, "ephemeral storage"
        )
        _check_choice(f"{where}arch", self.arch, ARCHES)


@dataclass
class RunUsage:
    """Everything a run used that AWS bills for.

    `workflow` is the type of the Distributed Map's child executions. `state_transitions`
    counts all Standard-workflow transitions: the parent's, plus the children's when they are
    Standard. With Express children, `express_requests` is the number of child executions,
    `express_billed_ms_total` the sum of their billed durations and `express_memory_mb` their
    billed memory (rounded up to 64 MB units here).
    """

    lambdas: list[LambdaUsage] = field(default_factory=list)
    workflow: Workflow = "standard"
    state_transitions: int = 0
    express_requests: int = 0
    express_billed_ms_total: int = 0
    express_memory_mb: int = 64
    s3_puts: int = 0
    s3_gets: int = 0

    def __post_init__(self) -> None:
        _check_choice("workflow", self.workflow, WORKFLOWS)
        for name in (
            "state_transitions",
            "express_requests",
            "express_billed_ms_total",
            "s3_puts",
            "s3_gets",
            "express_memory_mb",
        ):
            _check_count(name, getattr(self, name))
        if self.express_memory_mb < 1:
            raise CostError(f"express_memory_mb must be >= 1, got {self.express_memory_mb}")
        if self.workflow == "standard" and (self.express_requests or self.express_billed_ms_total):
            raise CostError(
                "express child usage was given but workflow='standard'; set workflow='express' "
                "or count the children's state transitions instead"
            )


@dataclass(frozen=True)
class CostItem:
    """One billed quantity: `quantity` `unit`s at `unit_price_usd` each."""

    service: str
    resource: str
    component: str
    quantity: float
    unit: str
    unit_price_usd: float

    @property
    def cost_usd(self) -> float:
        return self.quantity * self.unit_price_usd

    @property
    def label(self) -> str:
        return " ".join(part for part in (self.service, self.resource, self.component) if part)

    def to_dict(self) -> dict[str, object]:
        return {
            "service": self.service,
            "resource": self.resource,
            "component": self.component,
            "quantity": self.quantity,
            "unit": self.unit,
            "unit_price_usd": self.unit_price_usd,
            "cost_usd": round(self.cost_usd, 12),
        }


@dataclass(frozen=True)
class CostBreakdown:
    """Itemised cost (items with a zero quantity are left out) and the price table used."""

    items: tuple[CostItem, ...]
    prices_version: str
    region: str

    @property
    def total_usd(self) -> float:
        return sum(item.cost_usd for item in self.items)

    def by_service(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for item in self.items:
            totals[item.service] = totals.get(item.service, 0.0) + item.cost_usd
        return totals

    def to_dict(self) -> dict[str, object]:
        return {
            "total_usd": round(self.total_usd, 12),
            "prices_version": self.prices_version,
            "region": self.region,
            "by_service": {k: round(v, 12) for k, v in self.by_service().items()},
            "items": [item.to_dict() for item in self.items],
        }


def price_run(usage: RunUsage, prices: Mapping[str, Any] | None = None) -> CostBreakdown:
    """Price a run item by item (see the module docstring for what AWS bills).

    Per Lambda function: compute GB-s = billed_ms / 1000 x memory_mb / 1024 at the function's
    architecture price; requests; ephemeral GB-s = billed_ms / 1000 x (ephemeral_mb - 512) /
    1024. Step Functions: Standard transitions; Express child requests, and GB-s of their
    duration (at least 100 ms per execution) times memory rounded up to 64 MB. S3: PUT and GET
    requests. `prices` defaults to `load_prices()`.
    """
    table = load_prices() if prices is None else prices
    lam, sfn, s3 = table["lambda"], table["stepfunctions"], table["s3"]
    items: list[CostItem] = []
    for fn in usage.lambdas:
        seconds = fn.billed_ms_total / 1000
        extra_storage_mb = max(0, fn.ephemeral_mb - lam["ephemeral_free_mb"])
        items += [
            CostItem(
                "lambda",
                fn.function,
                f"compute ({fn.arch}, {fn.memory_mb} MB)",
                seconds * fn.memory_mb / 1024,
                "GB-s",
                lam[f"{fn.arch}_gb_s"],
            ),
            CostItem("lambda", fn.function, "requests", fn.requests, "requests", lam["request"]),
            CostItem(
                "lambda",
                fn.function,
                f"ephemeral storage ({fn.ephemeral_mb} MB)",
                seconds * extra_storage_mb / 1024,
                "GB-s",
                lam["ephemeral_gb_s"],
            ),
        ]
    unit_mb = sfn["express_memory_unit_mb"]
    express_mb = math.ceil(usage.express_memory_mb / unit_mb) * unit_mb
    express_ms = max(
        usage.express_billed_ms_total, usage.express_requests * sfn["express_min_duration_ms"]
    )
    items += [
        CostItem(
            "stepfunctions",
            "",
            "standard state transitions",
            usage.state_transitions,
            "transitions",
            sfn["standard_transition"],
        ),
        CostItem(
            "stepfunctions",
            "",
            "express requests",
            usage.express_requests,
            "requests",
            sfn["express_request"],
        ),
        CostItem(
            "stepfunctions",
            "",
            f"express duration ({express_mb} MB)",
            express_ms / 1000 * express_mb / 1024,
            "GB-s",
            sfn["express_gb_s"],
        ),
        CostItem("s3", "", "PUT requests", usage.s3_puts, "requests", s3["put_per_1000"] / 1000),
        CostItem("s3", "", "GET requests", usage.s3_gets, "requests", s3["get_per_1000"] / 1000),
    ]
    return CostBreakdown(
        items=tuple(item for item in items if item.quantity > 0),
        prices_version=table["version"],
        region=table["region"],
    )


def lambda_cost(
    requests: int,
    duration_s: float,
    memory_mb: int,
    arch: Arch = "x86_64",
    ephemeral_mb: int = 512,
    prices: Mapping[str, Any] | None = None,
) -> CostBreakdown:
    """What-if cost of `requests` invocations of `duration_s` each (billed rounded up to 1 ms)."""
    if isinstance(duration_s, bool) or not isinstance(duration_s, int | float):
        raise CostError(f"duration_s must be a number of seconds, got {duration_s!r}")
    if not 0 <= duration_s <= MAX_DURATION_S:  # also refuses nan and inf
        raise CostError(
            f"duration_s must be a number of seconds from 0 to {MAX_DURATION_S} (Lambda's "
            f"longest timeout), got {duration_s!r}"
        )
    billed_ms = math.ceil(round(duration_s * 1000, 6))  # 6.55 s is 6550 ms, not 6551
    _check_count("requests", requests)
    usage = LambdaUsage("", requests, requests * billed_ms, memory_mb, arch, ephemeral_mb)
    return price_run(RunUsage(lambdas=[usage]), prices)


def usage_from_reports(
    function: str,
    reports: Iterable[ReportLine],
    arch: Arch = "x86_64",
    ephemeral_mb: int = 512,
) -> LambdaUsage:
    """A function's usage from its REPORT lines: one request each, their billed durations."""
    reports = list(reports)
    if not reports:
        raise CostError(
            f"no REPORT lines for Lambda '{function}'; collect them from "
            f"/aws/lambda/{function} for the run's request ids"
        )
    sizes = sorted({r.memory_size_mb for r in reports})
    if len(sizes) > 1:
        raise CostError(
            f"REPORT lines for Lambda '{function}' have different memory sizes {sizes} MB; "
            "price each configuration separately"
        )
    return LambdaUsage(
        function=function,
        requests=len(reports),
        billed_ms_total=sum(r.billed_duration_ms for r in reports),
        memory_mb=sizes[0],
        arch=arch,
        ephemeral_mb=ephemeral_mb,
    )
