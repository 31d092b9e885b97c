"""The run payload (`payload.json`): its model, its validation and its JSON Schema.

One model serves the CLI (validation before any cloud call) and the init Lambda (which
re-validates what it reads from S3). The CosmicAI reference keys keep their exact spelling;
numbers and booleans may arrive as strings ("11", "true") and are coerced. Validation reports
every problem at once, each naming its key and saying how to fix it.

`python -m cosmicai.payload --write-schema` regenerates `schemas/payload.schema.json`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cosmicai.errors import CosmicAIError
from cosmicai.pipeline.s3objects import (
    BUCKET_PATTERN,
    S3LocationError,
    check_bucket,
    check_key,
)
from cosmicai.pipeline.s3objects import quoted as _quoted
from cosmicai.safe_input import MissingInput, UnreadableInput, read_json_file

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "payload.schema.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

TEAM_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
LAMBDA_TMP = "/tmp/"  # where the reference executor downloads S3_object_name

# Schema-only patterns, so editors flag mistakes as students type (the model says why).
_SEGMENT = r"(?!\.\.?(/|$))[^/\\\x00-\x1f\x7f]+"
_RELATIVE = rf"{_SEGMENT}(/{_SEGMENT})*"
_PREFIX_PATTERN = rf"^{_RELATIVE}/?$"
_SCRIPT_PATTERN = rf"^(/tmp/.+|{_RELATIVE})$"
_MODEL_PATTERN = rf"^(s3://{BUCKET_PATTERN[1:-1]}/)?{_RELATIVE}$"
_WHOLE_AT_LEAST_ONE = r"^\s*\+?0*[1-9][0-9]*\s*$"
_WHOLE_ONE_TO_10000 = r"^\s*\+?0*([1-9][0-9]{0,3}|10000)\s*$"
_PERCENTAGE = r"^\s*(100(\.0+)?|[0-9]{1,2}(\.[0-9]+)?)\s*$"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a payload: the key it concerns ("" for the file) and how to fix it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class PayloadError(CosmicAIError):
    """A payload that cannot be used; `problems` lists every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__("\n".join(f"{prefix}{problem}" for problem in self.problems))


def _refuse(message: str) -> PydanticCustomError:
    """A validation error whose message is shown to the student as is."""
    return PydanticCustomError("payload", "{detail}", {"detail": message})


def _not_a_boolean(value: Any) -> Any:
    """Numbers coerce from strings, but `true` as a batch size is a mistake, not a 1."""
    if isinstance(value, bool):
        raise _refuse(f"expected a number, got {_quoted(value)}")
    return value


def _whole_number(minimum: int, maximum: int | None, string_pattern: str) -> Any:
    bounds = {"minimum": minimum} if maximum is None else {"minimum": minimum, "maximum": maximum}
    as_string = {"type": "string", "pattern": string_pattern}
    return Annotated[
        int,
        BeforeValidator(_not_a_boolean),
        Field(ge=minimum, le=maximum),
        WithJsonSchema({"anyOf": [{"type": "integer", **bounds}, as_string]}),
    ]


AtLeastOne = _whole_number(1, None, _WHOLE_AT_LEAST_ONE)
Concurrency = _whole_number(1, 10_000, _WHOLE_ONE_TO_10000)
Percentage = Annotated[
    float,
    BeforeValidator(_not_a_boolean),
    Field(ge=0, le=100, allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 100},
                {"type": "string", "pattern": _PERCENTAGE},
            ]
        }
    ),
]
_FLAG_VALUES = {True: True, False: False, "true": True, "false": False}


def _strict_flag(value: Any) -> bool:
    """Only JSON true/false or "true"/"false": a flag may unlock code execution, so "yes", 1
    or "on" are mistakes to report, not to guess at."""
    if isinstance(value, bool | str) and value in _FLAG_VALUES:
        return _FLAG_VALUES[value]
    raise _refuse(
        f'expected true or false (JSON booleans, or the strings "true" and "false"), '
        f"got {_quoted(value)}"
    )


Flag = Annotated[
    bool,
    BeforeValidator(_strict_flag),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "string", "enum": ["true", "false"]}]}),
]


def _relative_path(value: str, *, example: str, trailing_slash: bool) -> str:
    """`value` as a safe S3 key (or, with `trailing_slash`, a prefix: without its "/")."""
    if not value:
        raise _refuse(f'is empty; give a path, e.g. "{example}"')
    try:
        return check_key(value, prefix=trailing_slash, example=example)
    except S3LocationError as err:
        raise _refuse(str(err)) from None


def _bucket_name(value: str) -> str:
    """`value` if it follows the S3 bucket naming rules (general purpose buckets)."""
    try:
        return check_bucket(value)
    except S3LocationError as err:
        raise _refuse(str(err)) from None


def _normalise_key(key: str) -> str:
    return re.sub(r"[\s\-.]+", "_", key.strip().lower())


class Payload(BaseModel):
    """Settings of one CosmicAI inference run (payload.json). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="CosmicAI payload")

    schema_: str | None = Field(
        default=None,
        alias="$schema",
        title="JSON Schema",
        description="Path or URL of this file's JSON Schema, for editors; ignored by CosmicAI.",
    )
    team: str = Field(
        default="default",
        description=(
            "Your team's name: 1-32 lowercase letters, digits or hyphens. It is part of the run "
            "id, so concurrent runs of different teams never collide."
        ),
        json_schema_extra={"pattern": TEAM_PATTERN},
    )
    mode: Literal["engine", "script"] = Field(
        default="engine",
        description=(
            '"engine" runs the built-in AstroMAE engine; "script" runs your own script from '
            '`bucket`. Default: "script" when `script` is given, otherwise "engine".'
        ),
    )
    bucket: str = Field(
        description=(
            "The run bucket: the payload, the item list, the rank results and `result_path` "
            "live here (and your code in script mode)."
        ),
        json_schema_extra={"pattern": BUCKET_PATTERN},
    )
    data_bucket: str = Field(
        description="The bucket that holds the partition files.",
        json_schema_extra={"pattern": BUCKET_PATTERN},
    )
    data_prefix: str = Field(
        description="Folder (key prefix) in `data_bucket` whose partition files are listed, "
        'e.g. "partitions/25MB".',
        json_schema_extra={"pattern": _PREFIX_PATTERN},
    )
    file_limit: AtLeastOne | None = Field(
        default=None,
        description="Use at most this many partition files (in listing order); null: all of them.",
    )
    world_size: AtLeastOne | None = Field(
        default=None,
        description=(
            "Number of executor Lambdas (ranks), at most the number of files: files are shared out "
            "evenly and in order (a rank never reuses another's file, which would duplicate "
            "predictions). Null: one rank per file (after `file_limit`)."
        ),
    )
    batch_size: AtLeastOne = Field(default=512, description="Samples per inference batch.")
    result_path: str = Field(
        description=(
            "Key prefix in `bucket` for the results: combined_data.json and summary.json are "
            'written under it, e.g. "results/demo".'
        ),
        json_schema_extra={"pattern": _PREFIX_PATTERN},
    )
    object_type: Literal["folder", "file"] = Field(
        default="folder",
        description=(
            'Script mode: what `S3_object_name` names, a "folder" (every object under that '
            'prefix is downloaded) or a single "file" (the script itself).'
        ),
    )
    S3_object_name: str | None = Field(
        default=None,
        validate_default=True,
        description=(
            "Script mode (required there): key or prefix of your code in `bucket`, e.g. "
            '"scripts/Anomaly Detection".'
        ),
        json_schema_extra={"pattern": _PREFIX_PATTERN},
    )
    script: str | None = Field(
        default=None,
        validate_default=True,
        description=(
            "Script mode (required there): path of the script inside the downloaded "
            '`S3_object_name`, e.g. "Inference/inference.py". The reference form '
            '"/tmp/<S3_object_name>/<path>" is accepted and normalised to the relative path.'
        ),
        json_schema_extra={"pattern": _SCRIPT_PATTERN},
    )
    model: str | None = Field(
        default=None,
        description=(
            "Checkpoint to load: s3://bucket/key, or a key in `bucket`. Null: a seeded random "
            "initialisation, labelled untrained in the results."
        ),
        json_schema_extra={"pattern": _MODEL_PATTERN},
    )
    model_size: Literal["full", "tiny"] = Field(
        default="full",
        description='"full" AstroMAE (about 15.6 M parameters) or a "tiny" one for quick tests.',
    )
    device: Literal["cpu", "cuda"] = Field(
        default="cpu",
        description='Where inference runs: "cpu", or "cuda" where a GPU exists (not on Lambda).',
    )
    threads: AtLeastOne | None = Field(
        default=None,
        description="CPU threads for inference; null: all CPUs the process may use.",
    )
    backend: Literal["torch", "onnxruntime"] | None = Field(
        default=None,
        description=(
            'Engine backend: "torch" (PyTorch, CPU or CUDA) or "onnxruntime" (the model\'s ONNX '
            "export on CPU: a faster cold start and rank). Null: the executor's default "
            "(COSMICAI_ENGINE_BACKEND, onnxruntime as deployed)."
        ),
    )
    trust_pickle: Flag = Field(
        default=False,
        description=(
            "Allow pickled .pt data and checkpoints that need code execution to load. Only for "
            "files you trust: unpickling runs arbitrary code."
        ),
    )
    max_concurrency: Concurrency | None = Field(
        default=None,
        description="At most this many ranks run at once (1-10000); null: the world size.",
    )
    tolerated_failure_percentage: Percentage = Field(
        default=0.0,
        description="Percentage of ranks (0-100) that may fail before the run fails.",
    )
    communication: Flag = Field(
        default=False,
        description=(
            "Open an FMI communicator between the ranks (and check the rendezvous first), for "
            "collective operations."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _derive_mode(cls, data: Any) -> Any:
        """The mode rule: absent `mode` means "script" if `script` is given, else "engine"."""
        if isinstance(data, Mapping) and "mode" not in data:
            return {**data, "mode": "script" if data.get("script") is not None else "engine"}
        return data

    @field_validator("team")
    @classmethod
    def _check_team(cls, value: str) -> str:
        if not re.fullmatch(TEAM_PATTERN, value):
            slug = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:32].strip("-")
            hint = f'; e.g. "{slug}"' if slug else ""
            raise _refuse(
                f"{_quoted(value)} is not a safe team name: use 1-32 lowercase letters, digits "
                f"or hyphens, starting and ending with a letter or digit{hint}"
            )
        return value

    @field_validator("bucket", "data_bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        return _bucket_name(value)

    @field_validator("data_prefix")
    @classmethod
    def _check_data_prefix(cls, value: str) -> str:
        return _relative_path(value, example="partitions/25MB", trailing_slash=True)

    @field_validator("result_path")
    @classmethod
    def _check_result_path(cls, value: str) -> str:
        return _relative_path(value, example="results/demo", trailing_slash=True)

    @field_validator("S3_object_name")
    @classmethod
    def _check_object_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if info.data.get("mode") == "script":
                raise _refuse(
                    "required in script mode: the key or prefix of your code in `bucket`, "
                    'e.g. "scripts/Anomaly Detection"'
                )
            return None
        is_file = info.data.get("object_type") == "file"
        if is_file and value.endswith("/"):
            raise _refuse(
                f'{_quoted(value)} ends with "/" but object_type is "file"; name the script '
                'file itself, or set "object_type": "folder"'
            )
        return _relative_path(value, example="scripts/Anomaly Detection", trailing_slash=True)

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value == "onnxruntime" and info.data.get("device") == "cuda":
            raise _refuse(
                'backend "onnxruntime" runs on CPU only; use "backend": "torch" with '
                '"device": "cuda", or "device": "cpu"'
            )
        return value

    @field_validator("script")
    @classmethod
    def _check_script(cls, value: str | None, info: ValidationInfo) -> str | None:
        mode = info.data.get("mode")
        if value is None:
            if mode == "script":
                raise _refuse(
                    "required in script mode: the path of your script inside "
                    '`S3_object_name`, e.g. "Inference/inference.py"'
                )
            return None
        if mode == "engine":
            raise _refuse(
                'is set but mode is "engine", which runs the built-in engine and ignores '
                'scripts; remove "script" or set "mode": "script"'
            )
        example = "Inference/inference.py"
        name = info.data.get("S3_object_name")
        if name is None:  # missing or invalid (reported on its own key): check what we can
            if value.startswith(LAMBDA_TMP):
                return value
            return _relative_path(value, example=example, trailing_slash=False)
        is_file = info.data.get("object_type") == "file"
        file_name = name.rsplit("/", 1)[-1]
        if is_file and value in (f"{LAMBDA_TMP}{name}", file_name):
            return file_name
        if is_file:
            raise _refuse(
                f'{_quoted(value)} does not match S3_object_name: with "object_type": "file" '
                f'the script is that file, "{file_name}" (or "{LAMBDA_TMP}{name}")'
            )
        downloaded = f"{LAMBDA_TMP}{name}/"
        if value.startswith("/"):
            if not value.startswith(downloaded):
                raise _refuse(
                    f"{_quoted(value)} is an absolute path outside the downloaded S3_object_name "
                    f'("{downloaded}"); give the path relative to it, e.g. "{example}"'
                )
            value = value[len(downloaded) :]
        return _relative_path(value, example=example, trailing_slash=False)

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("s3://"):
            bucket, _, key = value[len("s3://") :].partition("/")
            _bucket_name(bucket)
            example = "models/astromae.safetensors"
            return f"s3://{bucket}/{_relative_path(key, example=example, trailing_slash=False)}"
        if "://" in value:
            raise _refuse(
                f"{_quoted(value)} is not an S3 location; give s3://bucket/key or a key in `bucket`"
            )
        return _relative_path(value, example="models/astromae.safetensors", trailing_slash=False)

    @property
    def result_prefix(self) -> str:
        """Key prefix in `bucket` for combined_data.json and summary.json (no trailing slash)."""
        return self.result_path

    def to_dict(self) -> dict[str, Any]:
        """Every setting, normalised and JSON-ready (without `$schema`)."""
        return self.model_dump(mode="json", by_alias=True, exclude={"schema_"})


KNOWN_KEYS: tuple[str, ...] = tuple(
    field.alias or name for name, field in Payload.model_fields.items()
)


def _unknown_key_message(key: str) -> str:
    by_normal_form = {_normalise_key(known): known for known in KNOWN_KEYS}
    wanted = _normalise_key(key)
    if wanted in by_normal_form:
        return (
            f'unknown key; did you mean "{by_normal_form[wanted]}"? '
            "(keys are case-sensitive and use underscores)"
        )
    close = difflib.get_close_matches(wanted, by_normal_form, n=1, cutoff=0.6)
    if close:
        return f'unknown key; did you mean "{by_normal_form[close[0]]}"?'
    return f"unknown key; the known keys are: {', '.join(KNOWN_KEYS)}"


def _message(error: Mapping[str, Any], key: str) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    got = _quoted(error.get("input"))
    if kind == "extra_forbidden":
        return _unknown_key_message(key)
    if kind == "missing":
        field = next(f for name, f in Payload.model_fields.items() if (f.alias or name) == key)
        description = str(field.description)
        return f'required but missing; add "{key}": {description[0].lower()}{description[1:]}'
    if kind in ("int_parsing", "int_parsing_size", "int_from_float", "int_type"):
        return f"expected a whole number, got {got}"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return f"expected a number, got {got}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}, got {got}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, got {got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false, got {got}"
    if kind == "literal_error":
        expected = str(ctx["expected"]).replace("'", '"')
        return f"must be {expected}, got {got}"
    if kind == "string_type":
        return f"expected a string, got {got}"
    return str(error["msg"])


def _check(data: Any) -> tuple[Payload | None, list[Problem]]:
    if not isinstance(data, Mapping):
        kind = type(data).__name__
        return None, [Problem("", f"must be a JSON object of settings ({{...}}), got {kind}")]
    try:
        return Payload.model_validate(dict(data)), []
    except ValidationError as err:
        problems = []
        for error in err.errors():
            key = ".".join(str(part) for part in error["loc"])
            problems.append(Problem(key, _message(error, key)))
        return None, problems


def validate_payload(data: Mapping[str, Any], source: str | None = None) -> Payload:
    """The validated, normalised payload; raises PayloadError listing every problem."""
    payload, problems = _check(data)
    if payload is None:
        raise PayloadError(problems, source)
    return payload


def _duplicates_noted(problems: list[Problem]) -> Any:
    """An object_pairs_hook noting a problem per duplicated key (JSON would keep the last)."""

    def keep_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for key, value in pairs:
            if key in found:
                problems.append(Problem(key, "appears more than once; keep a single entry"))
            found[key] = value
        return found

    return keep_pairs


def load_payload(path: str | Path) -> Payload:
    """Read and validate a payload file; PayloadError (naming the file) on any problem."""
    source = str(path)
    duplicates: list[Problem] = []
    try:
        data = read_json_file(path, object_pairs_hook=_duplicates_noted(duplicates))
    except MissingInput:
        message = "file not found; check the path (the repository's payload.json is an example)"
        raise PayloadError([Problem("", message)], source) from None
    except UnreadableInput as err:
        raise PayloadError([Problem("", err.reason)], source) from None
    payload, problems = _check(data)
    if payload is None or duplicates:
        raise PayloadError(duplicates + problems, source)
    return payload


def payload_json_schema() -> dict[str, Any]:
    """The JSON Schema of payload.json, generated from `Payload`."""
    return {"$schema": JSON_SCHEMA_DIALECT, **Payload.model_json_schema(by_alias=True)}


def schema_text() -> str:
    """The schema as committed in schemas/payload.schema.json (sorted keys, trailing newline)."""
    return json.dumps(payload_json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cosmicai.payload",
        description="Print the payload JSON Schema, or write it for editors and CI.",
    )
    parser.add_argument(
        "--write-schema", action="store_true", help=f"write the schema to --out ({SCHEMA_PATH})"
    )
    parser.add_argument("--out", type=Path, default=SCHEMA_PATH, help="schema file to write")
    args = parser.parse_args(argv)
    if not args.write_schema:
        sys.stdout.write(schema_text())
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(schema_text(), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
