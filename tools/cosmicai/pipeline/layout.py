"""Where a run's objects live in the runs bucket: one prefix per run id, never a shared key.

`RunLayout` is the only code that builds (and parses back) a run's keys and the names of its
executions: a run's first execution is named after its run id, an `--overwrite` re-run
`<run_id>-<epoch>`, a redrive `<run_id>-redrive-<n>`.

Claims (see `cosmicai.claims`) make run ids and result paths exclusive: a run's claim on its id
is `runs/<run_id>/claim.json`, its claim on its result_path is
`claims/result_paths/<result_path>.claim`, outside result_path so that nothing reading the
results (script-mode summarize takes every `.json` under result_path) ever sees it.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from cosmicai.errors import CosmicAIError

_RUN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,79}$")
_RERUN_SUFFIX = re.compile(r"^(.+)-\d{10}$")  # `<run_id>-<epoch>`: an --overwrite re-run
_REDRIVE_SUFFIX = re.compile(r"^(.+)-redrive-(\d+)$")  # `<run_id>-redrive-<n>`: a redrive
RUNS_PREFIX = "runs/"


def new_run_id(team: str) -> str:
    """A unique, sortable run id: <team>-<UTC time>-<random>."""
    return f"{team}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise CosmicAIError(
            f"run id {run_id!r} is not valid: use 3-80 lowercase letters, digits and hyphens, "
            f"starting with a letter or digit (e.g. demo-20261124-101500-a1b2c3)."
        )
    return run_id


@dataclass(frozen=True)
class RunLayout:
    """Keys of one run under `runs/<run_id>/` in the runs bucket."""

    run_id: str

    @property
    def prefix(self) -> str:
        return f"{RUNS_PREFIX}{self.run_id}/"

    @property
    def payload_key(self) -> str:
        return f"{self.prefix}payload.json"

    @property
    def items_key(self) -> str:
        return f"{self.prefix}items.json"

    def redrive_items_key(self, number: int) -> str:
        """The items of the run's redrive `number` (1, 2, ...): its ranks without a result."""
        return f"{self.prefix}items-redrive-{number}.json"

    @property
    def ranks_prefix(self) -> str:
        return f"{self.prefix}ranks/"

    def rank_key(self, rank: int) -> str:
        return f"{self.ranks_prefix}{rank:05d}.json"

    @property
    def failures_prefix(self) -> str:
        return f"{self.prefix}failures/"

    def failure_key(self, rank: int) -> str:
        """A rank's final error, as the state machine's RecordFailure state names it."""
        return f"{self.failures_prefix}{rank}.json"

    def failure_rank(self, key: str) -> int | None:
        """The rank whose failure record `key` is (`failure_key`'s inverse); None if it is none."""
        name = key.removeprefix(self.failures_prefix)
        digits = name.removesuffix(".json")
        if name == key or digits == name or not digits.isdigit():
            return None
        return int(digits)

    @property
    def summary_key(self) -> str:
        return f"{self.prefix}summary.json"

    @property
    def claim_key(self) -> str:
        return f"{self.prefix}claim.json"

    @property
    def functions_key(self) -> str:
        """The functions' configuration a local run keeps (what their price depends on)."""
        return f"{self.prefix}functions.json"

    @property
    def execution_key(self) -> str:
        """The execution record a local run keeps in the local store when it ends."""
        return f"{self.prefix}execution.json"

    @property
    def executions_key(self) -> str:
        """Every execution of a local run (its first, then each redrive), oldest first."""
        return f"{self.prefix}executions.json"

    @property
    def history_key(self) -> str:
        """The execution history events a local run keeps (every execution's, in order)."""
        return f"{self.prefix}history.json"

    @property
    def logs_prefix(self) -> str:
        return f"{self.prefix}logs/"

    def log_key(self, function: str) -> str:
        """A function's CloudWatch Logs events a local run keeps, one JSON object a line."""
        return f"{self.logs_prefix}{function}.jsonl"

    def log_function(self, key: str) -> str | None:
        """The function whose kept log `key` is (`log_key`'s inverse); None for another key."""
        if key.startswith(self.logs_prefix) and key.endswith(".jsonl"):
            return key[len(self.logs_prefix) :].removesuffix(".jsonl")
        return None

    @property
    def results_prefix(self) -> str:
        """Where Summarize writes the results of a run without a result_path (no slash)."""
        return f"{self.prefix}results"

    @property
    def fmi_prefix(self) -> str:
        """Where FMI's S3 channel keeps the run's messages (its communicator name)."""
        return f"{self.prefix}fmi/"

    def rerun_name(self, epoch_s: int) -> str:
        """The execution name of an `--overwrite` re-run started at `epoch_s` (names are unique
        per state machine)."""
        return f"{self.run_id}-{epoch_s}"

    def redrive_name(self, number: int) -> str:
        """The execution name of the run's redrive `number` (1, 2, ...)."""
        return f"{self.run_id}-redrive-{number}"

    def redrive_number(self, execution_name: str) -> int | None:
        """Which of this run's redrives `execution_name` is; None for another execution."""
        match = _REDRIVE_SUFFIX.match(execution_name)
        return int(match.group(2)) if match and match.group(1) == self.run_id else None


def execution_run_id(execution_name: str) -> str:
    """The run an execution belongs to: its name less a re-run's or a redrive's suffix."""
    for suffix in (_REDRIVE_SUFFIX, _RERUN_SUFFIX):
        if match := suffix.match(execution_name):
            return match.group(1)
    return execution_name


def is_redrive(execution_name: str) -> bool:
    """Whether the execution is a redrive (`<run_id>-redrive-<n>`)."""
    return _REDRIVE_SUFFIX.match(execution_name) is not None


def combined_key(result_prefix: str) -> str:
    """The run's combined records (the reference's combined_data.json) under its result_path."""
    return f"{result_prefix}/combined_data.json"


def result_summary_key(result_prefix: str) -> str:
    """The run's summary under its result_path (a copy of `RunLayout.summary_key`'s)."""
    return f"{result_prefix}/summary.json"


def result_claim_key(result_prefix: str) -> str:
    """The key of the claim on a result_path (`Payload.result_prefix`)."""
    return f"claims/result_paths/{result_prefix}.claim"
