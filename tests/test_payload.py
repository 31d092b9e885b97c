"""The payload model: defaults, coercion, the mode rule, every-problem validation, the schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from cosmicai.errors import CosmicAIError
from cosmicai.payload import (
    KNOWN_KEYS,
    SCHEMA_PATH,
    PayloadError,
    Problem,
    load_payload,
    main,
    payload_json_schema,
    schema_text,
    validate_payload,
)

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "bucket": "cosmicai-runs",
    "data_bucket": "cosmicai-data",
    "data_prefix": "partitions/25MB",
    "result_path": "results/demo",
}
# The reference workflow's form: numbers as strings, the script as a /tmp path.
REFERENCE = {
    "bucket": "cosmicai2",
    "file_limit": "10",
    "batch_size": "512",
    "world_size": "2",
    "object_type": "folder",
    "S3_object_name": "scripts/Anomaly Detection",
    "script": "/tmp/scripts/Anomaly Detection/Inference/inference.py",
    "result_path": "result/Batches/run 1",
    "data_bucket": "cosmicai-data",
    "data_prefix": "partitions/100MB",
}
SCRIPT_FILE = {
    **BASE,
    "object_type": "file",
    "S3_object_name": "scripts/run.py",
    "script": "/tmp/scripts/run.py",
}


def problems_of(data: dict) -> dict[str, str]:
    with pytest.raises(PayloadError) as caught:
        validate_payload(data)
    return {problem.key: problem.message for problem in caught.value.problems}


def only_problem(data: dict, key: str) -> str:
    found = problems_of(data)
    assert list(found) == [key], found
    return found[key]


def test_minimal_payload_gets_documented_defaults() -> None:
    assert validate_payload(BASE).to_dict() == {
        **BASE,
        "team": "default",
        "mode": "engine",
        "file_limit": None,
        "world_size": None,
        "batch_size": 512,
        "object_type": "folder",
        "S3_object_name": None,
        "script": None,
        "model": None,
        "model_size": "full",
        "device": "cpu",
        "threads": None,
        "backend": None,
        "trust_pickle": False,
        "max_concurrency": None,
        "tolerated_failure_percentage": 0,
        "communication": False,
    }


def test_reference_payload_is_coerced_and_normalised() -> None:
    payload = validate_payload(REFERENCE)
    assert (payload.file_limit, payload.batch_size, payload.world_size) == (10, 512, 2)
    assert payload.mode == "script"
    assert payload.script == "Inference/inference.py"
    assert payload.S3_object_name == "scripts/Anomaly Detection"
    assert payload.result_prefix == "result/Batches/run 1"


@pytest.mark.parametrize(
    ("extra", "mode"),
    [
        ({}, "engine"),
        ({"S3_object_name": "code"}, "engine"),
        ({"S3_object_name": "code", "script": "main.py"}, "script"),
        ({"mode": "script", "S3_object_name": "code", "script": "main.py"}, "script"),
        ({"mode": "engine"}, "engine"),
    ],
)
def test_mode_defaults_to_script_exactly_when_script_is_given(extra: dict, mode: str) -> None:
    assert validate_payload({**BASE, **extra}).mode == mode


def test_script_mode_requires_script_and_object_name() -> None:
    found = problems_of({**BASE, "mode": "script"})
    assert set(found) == {"script", "S3_object_name"}
    assert all("required in script mode" in message for message in found.values())


def test_script_with_explicit_engine_mode_is_a_conflict() -> None:
    message = only_problem({**BASE, "mode": "engine", "script": "x.py"}, "script")
    assert '"mode": "script"' in message


@pytest.mark.parametrize(("text", "value"), [("true", True), ("false", False), (True, True)])
def test_booleans_may_arrive_as_strings(text: object, value: bool) -> None:
    payload = validate_payload({**BASE, "trust_pickle": text, "communication": text})
    assert payload.trust_pickle is value and payload.communication is value


@pytest.mark.parametrize("key", ["world_size", "batch_size", "file_limit", "threads"])
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (0, "at least 1"),
        (-3, "at least 1"),
        ("0", "at least 1"),
        ("1.5", "whole number"),
        (1.5, "whole number"),
        ("ten", "whole number"),
        (True, "expected a number"),
    ],
)
def test_counts_must_be_whole_numbers_of_at_least_one(
    key: str, value: object, fragment: str
) -> None:
    assert fragment in only_problem({**BASE, key: value}, key)


@pytest.mark.parametrize(
    ("key", "text", "value"), [("world_size", "11", 11), ("batch_size", 64.0, 64)]
)
def test_counts_coerce_from_strings_and_integral_floats(key: str, text: object, value: int) -> None:
    assert getattr(validate_payload({**BASE, key: text}), key) == value


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("max_concurrency", 1, True),
        ("max_concurrency", "10000", True),
        ("max_concurrency", 0, False),
        ("max_concurrency", 10_001, False),
        ("tolerated_failure_percentage", "12.5", True),
        ("tolerated_failure_percentage", 100, True),
        ("tolerated_failure_percentage", 100.5, False),
        ("tolerated_failure_percentage", -1, False),
        ("tolerated_failure_percentage", "nan", False),
    ],
)
def test_bounded_numbers(key: str, value: object, ok: bool) -> None:
    data = {**BASE, key: value}
    if ok:
        assert getattr(validate_payload(data), key) == float(value)
    else:
        only_problem(data, key)


@pytest.mark.parametrize("key", ["bucket", "data_bucket"])
@pytest.mark.parametrize(
    "name",
    ["", "ab", "a" * 64, "My-Bucket", "my_bucket", "-bucket", "bucket-", "my..bucket", "10.1.2.3"],
)
def test_invalid_bucket_names_are_refused(key: str, name: str) -> None:
    message = only_problem({**BASE, key: name}, key)
    assert "not a valid bucket name" in message or "is empty" in message


@pytest.mark.parametrize("name", ["abc", "my.bucket-1", "a" * 63, "0bucket9"])
def test_valid_bucket_names(name: str) -> None:
    assert validate_payload({**BASE, "bucket": name, "data_bucket": name}).bucket == name


def test_bucket_suggestion_is_itself_valid() -> None:
    assert 'e.g. "my-bucket"' in only_problem({**BASE, "bucket": "My_Bucket"}, "bucket")


@pytest.mark.parametrize("key", ["data_prefix", "result_path", "S3_object_name", "script"])
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("../etc", "traversal"),
        ("a/../../b", "traversal"),
        ("./a", "traversal"),
        ("/abs/path", "absolute"),
        ("a\\b", "backslash"),
        ("a//b", "empty path segment"),
        (" a", "spaces"),
        ("a\nb", "control character"),
        ("", "is empty"),
    ],
)
def test_unsafe_paths_are_refused(key: str, value: str, fragment: str) -> None:
    data = {**BASE, "mode": "script", "S3_object_name": "code", "script": "main.py", key: value}
    assert fragment in only_problem(data, key)


def test_prefixes_lose_one_trailing_slash() -> None:
    data = {**BASE, "data_prefix": "partitions/25MB/", "result_path": "results/run 1/"}
    payload = validate_payload(data)
    assert payload.data_prefix == "partitions/25MB"
    assert payload.result_prefix == "results/run 1"


def test_script_form_must_be_inside_the_downloaded_object() -> None:
    data = {**REFERENCE, "script": "/tmp/elsewhere/inference.py"}
    assert "/tmp/scripts/Anomaly Detection/" in only_problem(data, "script")
    escaped = {**REFERENCE, "script": "/tmp/scripts/Anomaly Detection/../../x.py"}
    assert "traversal" in only_problem(escaped, "script")


@pytest.mark.parametrize("script", ["/tmp/scripts/run.py", "run.py"])
def test_file_object_script_names_that_file(script: str) -> None:
    assert validate_payload({**SCRIPT_FILE, "script": script}).script == "run.py"


@pytest.mark.parametrize("script", ["other.py", "/tmp/scripts/run.py/x.py", "scripts/run.py"])
def test_file_object_with_mismatched_script_is_refused(script: str) -> None:
    message = only_problem({**SCRIPT_FILE, "script": script}, "script")
    assert '"object_type": "file"' in message and '"run.py"' in message


def test_file_object_cannot_be_a_prefix() -> None:
    data = {**SCRIPT_FILE, "S3_object_name": "scripts/", "script": "run.py"}
    assert "object_type" in only_problem(data, "S3_object_name")


@pytest.mark.parametrize(
    "model", [None, "s3://models-bucket/ckpt/astromae.safetensors", "ckpt/astromae.pt"]
)
def test_model_locations(model: str | None) -> None:
    assert validate_payload({**BASE, "model": model}).model == model


@pytest.mark.parametrize(
    "model", ["s3://Bad_Bucket/x.pt", "s3://bucket/", "s3://bucket/../x.pt", "https://x/y.pt"]
)
def test_bad_model_locations(model: str) -> None:
    only_problem({**BASE, "model": model}, "model")


def test_team_must_be_a_safe_slug() -> None:
    assert 'e.g. "team-a"' in only_problem({**BASE, "team": "Team A"}, "team")
    only_problem({**BASE, "team": "a" * 33}, "team")
    only_problem({**BASE, "team": "-x"}, "team")
    assert validate_payload({**BASE, "team": "team-1"}).team == "team-1"


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("file limit", "file_limit"),
        ("File_Limit", "file_limit"),
        ("s3_object_name", "S3_object_name"),
        ("batch-size", "batch_size"),
        ("batchsize", "batch_size"),
        ("wrold_size", "world_size"),
        ("tolerated_failures", "tolerated_failure_percentage"),
    ],
)
def test_unknown_keys_suggest_the_closest_known_key(key: str, suggestion: str) -> None:
    message = only_problem({**BASE, key: 1}, key)
    assert f'did you mean "{suggestion}"?' in message


def test_unrelated_unknown_key_lists_the_known_keys() -> None:
    message = only_problem({**BASE, "timeout_s": 900}, "timeout_s")
    assert "known keys" in message and "batch_size" in message


@pytest.mark.parametrize("key", sorted(BASE))
def test_required_keys_are_named_when_missing(key: str) -> None:
    data = {k: v for k, v in BASE.items() if k != key}
    assert "required" in only_problem(data, key)


def test_every_problem_is_reported_at_once() -> None:
    data = {
        "bucket": "Bad_Bucket",
        "data_bucket": "cosmicai-data",
        "data_prefix": "../up",
        "result_path": "results",
        "world_size": 0,
        "batch_size": "ten",
        "file limit": 3,
        "device": "tpu",
        "trust_pickle": "maybe",
    }
    with pytest.raises(PayloadError) as caught:
        validate_payload(data)
    err = caught.value
    keys = {"bucket", "data_prefix", "world_size", "batch_size", "file limit", "device"}
    assert {p.key for p in err.problems} == keys | {"trust_pickle"}
    assert isinstance(err, CosmicAIError) and err.exit_code == 2
    assert str(err).splitlines() == [f"{p.key}: {p.message}" for p in err.problems]


def test_not_an_object() -> None:
    with pytest.raises(PayloadError) as caught:
        validate_payload(["bucket"])  # type: ignore[arg-type]
    assert caught.value.problems == [Problem("", caught.value.problems[0].message)]
    assert "JSON object" in str(caught.value)


def test_schema_key_is_allowed_and_dropped() -> None:
    payload = validate_payload({**BASE, "$schema": "./schemas/payload.schema.json"})
    assert "$schema" not in payload.to_dict()
    assert set(payload.to_dict()) == set(KNOWN_KEYS) - {"$schema"}


@pytest.mark.parametrize("data", [BASE, REFERENCE, SCRIPT_FILE])
def test_to_dict_is_json_ready_and_round_trips(data: dict) -> None:
    payload = validate_payload(data)
    again = validate_payload(json.loads(json.dumps(payload.to_dict())))
    assert again == payload


def write(tmp_path: Path, text: str, name: str = "payload.json") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        load_payload(path)
    assert caught.value.source == str(path)
    assert all(line.startswith(f"{path}: ") for line in str(caught.value).splitlines())
    return caught.value


def test_load_missing_file(tmp_path: Path) -> None:
    assert "not found" in str(load_error(tmp_path / "nope.json"))


def test_load_broken_json_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "bucket": "cosmicai-runs",\n  "batch_size": ,\n}\n')
    assert "line 3, column 17" in str(load_error(path))


@pytest.mark.parametrize(("text", "fragment"), [("[1, 2]", "JSON object"), ("  \n", "empty")])
def test_load_wrong_document(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in str(load_error(write(tmp_path, text)))


def test_load_directory(tmp_path: Path) -> None:
    assert "directory" in str(load_error(tmp_path))


def test_load_reports_duplicate_keys_with_other_problems(tmp_path: Path) -> None:
    text = json.dumps(BASE)[:-1] + ', "batch_size": 4, "batch_size": 0}'
    err = load_error(write(tmp_path, text))
    assert [p.key for p in err.problems] == ["batch_size", "batch_size"]
    assert "more than once" in err.problems[0].message
    assert "at least 1" in err.problems[1].message


def test_load_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "payload.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(BASE).encode())
    assert load_payload(path) == validate_payload(BASE)


def test_root_payload_is_the_documented_local_example() -> None:
    payload = load_payload(ROOT / "payload.json")
    raw = json.loads((ROOT / "payload.json").read_text())
    assert raw["$schema"] == "./schemas/payload.schema.json"
    assert (payload.bucket, payload.data_bucket) == ("cosmicai-runs", "cosmicai-data")
    assert (payload.data_prefix, payload.result_prefix) == ("partitions/25MB", "results/demo")
    assert (payload.batch_size, payload.world_size) == (512, 4)
    assert (payload.team, payload.mode) == ("demo", "engine")


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_PATH == ROOT / "schemas" / "payload.schema.json"
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text()
    assert schema_text().endswith("}\n")


def test_write_schema_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "schemas" / "payload.schema.json"
    assert main(["--write-schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == payload_json_schema()
    assert out.read_text() == SCHEMA_PATH.read_text()
    capsys.readouterr()


def test_schema_shape() -> None:
    schema = payload_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert schema["title"] and schema["description"]
    assert set(schema["properties"]) == set(KNOWN_KEYS)
    assert set(schema["required"]) == set(BASE)
    for key, prop in schema["properties"].items():
        assert prop.get("description"), key
        assert key in BASE or "default" in prop, key


SCHEMA_GOOD = [
    json.loads((ROOT / "payload.json").read_text()),
    BASE,
    REFERENCE,
    SCRIPT_FILE,
    {**BASE, "model": "s3://models-bucket/astromae.pt", "trust_pickle": "true", "threads": 2},
    {**BASE, "max_concurrency": "100", "tolerated_failure_percentage": "5.5"},
]
SCHEMA_BAD = [
    {**BASE, "file limit": 3},
    {**BASE, "batch_size": 0},
    {**BASE, "world_size": "ten"},
    {**BASE, "bucket": "Bad_Bucket"},
    {**BASE, "data_prefix": "../x"},
    {**BASE, "result_path": "/abs"},
    {**BASE, "mode": "fast"},
    {**BASE, "trust_pickle": "maybe"},
    {**BASE, "max_concurrency": 10_001},
    {**BASE, "team": "Team A"},
    {k: v for k, v in BASE.items() if k != "bucket"},
]


@pytest.mark.parametrize("data", SCHEMA_GOOD)
def test_schema_and_model_accept_good_payloads(data: dict) -> None:
    jsonschema.validate(data, payload_json_schema())
    validate_payload(data)


@pytest.mark.parametrize("data", SCHEMA_BAD)
def test_schema_and_model_refuse_bad_payloads(data: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, payload_json_schema())
    with pytest.raises(PayloadError):
        validate_payload(data)


def test_onnxruntime_backend_is_cpu_only() -> None:
    assert validate_payload({**BASE, "backend": "onnxruntime"}).backend == "onnxruntime"
    with pytest.raises(PayloadError, match='backend "onnxruntime" runs on CPU only'):
        validate_payload({**BASE, "backend": "onnxruntime", "device": "cuda"})
    with pytest.raises(PayloadError, match="backend"):
        validate_payload({**BASE, "backend": "tensorflow"})
