"""The evolution rule: a new schema version only adds fields with defaults, so every older version stays
readable with every newer one. Enforced for every schema by writing with the old version and reading with
the new one (fastavro schema resolution), and through the codec the services use."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import random
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from prismops import schemas
from prismops.streams.codecs import codec_for

UTC = dt.timezone.utc


def _pairs() -> list[tuple[str, int, int]]:
    return [
        (name, old.version, new.version)
        for name in schemas.schema_names()
        for old, new in itertools.combinations(schemas.versions(name), 2)
    ]


def _fields(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in definition["fields"]}


def _type_name(schema: Any) -> str | None:
    if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed"):
        return schema["name"]
    return None


def sample_value(schema: Any, rng: random.Random, named: dict[str, Any]) -> Any:
    """A valid, non-default-looking value for any Avro schema (as fastavro writes it)."""
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        return sample_value(rng.choice(branches), rng, named)
    if isinstance(schema, str):
        if schema in named:
            return sample_value(named[schema], rng, named)
        return {
            "string": lambda: f"s{rng.randrange(10**6)}",
            "long": lambda: rng.randrange(1, 2**40),
            "int": lambda: rng.randrange(1, 2**20),
            "boolean": lambda: True,
            "double": lambda: rng.randrange(1, 10**6) / 8,
            "float": lambda: rng.randrange(1, 1000) / 4,
            "bytes": lambda: bytes(rng.randrange(256) for _ in range(5)),
        }[schema]()
    if name := _type_name(schema):
        named[name] = schema
    logical = schema.get("logicalType")
    if logical == "timestamp-micros":
        return dt.datetime(2026, 1, 2, 3, 4, 5, rng.randrange(10**6), tzinfo=UTC)
    if logical == "decimal":
        scale = schema.get("scale", 0)
        return Decimal(rng.randrange(1, 10**8)).scaleb(-scale)
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: sample_value(f["type"], rng, named) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][-1]
    if kind == "array":
        return [sample_value(schema["items"], rng, named) for _ in range(2)]
    if kind == "map":
        return {"k1": sample_value(schema["values"], rng, named), "k2": sample_value(schema["values"], rng, named)}
    return sample_value(kind, rng, named)


def nested_record(schema: Any) -> tuple[str, dict[str, Any]] | None:
    """(container, record) for a field type that is a record, an array of records or a map of records."""
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "record":
        return "record", schema
    inner = schema.get("items") if schema.get("type") == "array" else schema.get("values")
    if schema.get("type") in ("array", "map") and isinstance(inner, dict) and inner.get("type") == "record":
        return schema["type"], inner
    return None


def records_in(definition: dict[str, Any]) -> list[dict[str, Any]]:
    """The top-level record and every record defined inline in its fields, however deep."""
    found = [definition]
    for field in definition["fields"]:
        branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
        for branch in branches:
            if inner := nested_record(branch):
                found.extend(records_in(inner[1]))
    return found


def assert_only_adds_fields_with_defaults(old: dict[str, Any], new: dict[str, Any], where: str) -> None:
    old_fields, new_fields = _fields(old), _fields(new)
    removed = set(old_fields) - set(new_fields)
    assert not removed, f"{where} removes {removed}"
    for added in set(new_fields) - set(old_fields):
        assert "default" in new_fields[added], f"{where} adds {added} without a default"
    for kept in old_fields:
        old_type, new_type = old_fields[kept]["type"], new_fields[kept]["type"]
        if old_type == new_type:
            continue
        old_inner, new_inner = nested_record(old_type), nested_record(new_type)
        if old_inner and new_inner and old_inner[0] == new_inner[0] and old_inner[1]["name"] == new_inner[1]["name"]:
            # a record nested in a record (or in an array or map) evolves by the same rule
            assert_only_adds_fields_with_defaults(old_inner[1], new_inner[1], f"{where}.{kept}")
            continue
        # Only widening is allowed: the old type must still be one of the new union's branches.
        assert isinstance(new_type, list) and old_type in new_type, f"{where}.{kept} changed type"


def as_read_by_newer(value: Any, old: Any, new: Any) -> Any:
    """`value`, written with schema `old`, as a reader with `new` gets it: added record fields take their
    defaults, in nested records too; anything else reads back unchanged."""
    if old == new:
        return value
    new_inner, old_inner = nested_record(new), nested_record(old)
    if new_inner is None or old_inner is None:
        return value  # a widened union reads the written value unchanged
    kind, new_record = new_inner
    old_record = old_inner[1]
    if kind == "array":
        return [as_read_by_newer(v, old_record, new_record) for v in value]
    if kind == "map":
        return {k: as_read_by_newer(v, old_record, new_record) for k, v in value.items()}
    old_fields = _fields(old_record)
    return {
        name: as_read_by_newer(value[name], old_fields[name]["type"], field["type"])
        if name in old_fields else default_as_read(field)
        for name, field in _fields(new_record).items()
    }


def default_as_read(field: dict[str, Any]) -> Any:
    """The value a reader gets for a missing field: the JSON default, as the Avro spec defines it."""
    default = field["default"]
    schema = field["type"]
    if isinstance(schema, list):
        schema = schema[0]  # a union's default belongs to its first branch
    if isinstance(schema, dict) and schema.get("logicalType"):
        pytest.fail(f"field {field['name']}: teach this test how to read a logical-type default")
    return default


def _write(definition: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(definition), record)
    return out.getvalue()


@pytest.mark.parametrize("name", schemas.schema_names())
def test_consecutive_versions_only_add_fields_with_defaults(name):
    versions = schemas.versions(name)
    for old, new in zip(versions, versions[1:]):
        assert_only_adds_fields_with_defaults(old.definition, new.definition, f"{name} v{new.version}")


def test_the_rule_reaches_records_nested_in_arrays():
    item = {"type": "record", "name": "Item", "fields": [{"name": "a", "type": "string"}]}
    old = {"type": "record", "name": "Outer", "fields": [{"name": "items", "type": {"type": "array", "items": item}}]}
    grown = {**item, "fields": [*item["fields"], {"name": "b", "type": ["null", "string"], "default": None}]}
    new = {**old, "fields": [{"name": "items", "type": {"type": "array", "items": grown}}]}
    assert_only_adds_fields_with_defaults(old, new, "outer")
    assert as_read_by_newer({"items": [{"a": "x"}]}, old, new) == {"items": [{"a": "x", "b": None}]}

    def outer_with(items: dict[str, Any]) -> dict[str, Any]:
        return {**old, "fields": [{"name": "items", "type": {"type": "array", "items": items}}]}

    no_default = {**item, "fields": [*item["fields"], {"name": "b", "type": "string"}]}
    with pytest.raises(AssertionError, match=r"outer.items adds b without a default"):
        assert_only_adds_fields_with_defaults(old, outer_with(no_default), "outer")
    with pytest.raises(AssertionError, match=r"outer.items removes"):
        assert_only_adds_fields_with_defaults(old, outer_with({**item, "fields": []}), "outer")


@pytest.mark.parametrize("name", schemas.schema_names())
def test_null_defaults_sit_on_unions_whose_first_branch_is_null(name):
    for version in schemas.versions(name):
        for field in (f for record in records_in(version.definition) for f in record["fields"]):
            if "default" in field and field["default"] is None:
                assert isinstance(field["type"], list) and field["type"][0] == "null", (
                    f"{name} v{version.version}.{field['name']}: a null default needs 'null' as first union branch"
                )


def test_there_is_at_least_one_evolved_schema_to_check():
    assert ("llm_usage_event", 1, 2) in _pairs()


@pytest.mark.parametrize(("name", "old", "new"), _pairs())
def test_newer_version_reads_data_written_with_older_version(name, old, new):
    old_def, new_def = schemas.get(name, old).definition, schemas.get(name, new).definition
    for seed in range(5):
        record = sample_value(old_def, random.Random(seed), {})
        data = _write(old_def, record)
        read = fastavro.schemaless_reader(
            io.BytesIO(data), fastavro.parse_schema(old_def), fastavro.parse_schema(new_def)
        )
        assert set(read) == set(_fields(new_def))
        assert read == as_read_by_newer(record, old_def, new_def)


@pytest.mark.parametrize("name", schemas.schema_names())
def test_codec_decodes_bytes_written_with_every_shipped_version(name):
    codec = codec_for(name)
    latest = schemas.latest(name)
    for version in schemas.versions(name):
        record = sample_value(version.definition, random.Random(version.version), {})
        decoded = codec.decode(codec.encode(record, version=version.version))
        assert set(decoded) == set(_fields(latest.definition))
        assert decoded == as_read_by_newer(record, version.definition, latest.definition)


def _v1_llm_usage_record() -> dict[str, Any]:
    return {
        "event_id": "evt-v1",
        "event_time": dt.datetime(2026, 2, 3, 4, 5, 6, 789000, tzinfo=UTC),
        "tenant": "acme",
        "service": "support-bot",
        "feature": "answer",
        "customer": "cust-007",
        "session_id": None,
        "request_id": "req-v1",
        "environment": "staging",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 500,
        "cached_input_tokens": 200,
        "latency_ms": 840,
        "status": "ok",
        "error_code": None,
        "cache_hit": True,
        "fallback": False,
        "shadow": False,
        "prompt_chars": 4000,
        "labels": {"team": "cx"},
    }


def test_llm_usage_v1_bytes_read_as_v2_get_v2_defaults():
    codec = codec_for("llm_usage_event")
    record = _v1_llm_usage_record()
    data = codec.encode(record, version=1)

    # The header names v1 as the writer, not the newest version.
    assert data[2:10] != codec.fingerprint
    assert data[2:10] != codec.encode(record)[2:10]

    decoded = codec.decode(data)
    for name, value in record.items():
        assert decoded[name] == value, name
    # Fields v2 added, with the defaults v2 declares for them.
    assert decoded["reasoning_tokens"] == 0
    assert decoded["model_version"] is None
    assert decoded["deployment_id"] is None
    assert decoded["time_to_first_token_ms"] is None
    assert decoded["decision_id"] is None
    v2_only = set(_fields(schemas.get("llm_usage_event", 2).definition)) - set(_fields(schemas.get("llm_usage_event", 1).definition))
    assert v2_only == {"reasoning_tokens", "model_version", "deployment_id", "time_to_first_token_ms", "decision_id"}


def test_v2_only_fields_are_dropped_when_writing_v1():
    codec = codec_for("llm_usage_event")
    record = _v1_llm_usage_record() | {"reasoning_tokens": 42, "model_version": "2024-08-06"}
    decoded = codec.decode(codec.encode(record, version=1))
    assert decoded["reasoning_tokens"] == 0
    assert decoded["model_version"] is None
    assert codec.decode(codec.encode(record))["reasoning_tokens"] == 42


def test_schema_definitions_are_json_serialisable_round_trip():
    # The registry hands out the parsed JSON; it must stay plain JSON (no fastavro mutation leaks into it).
    for name in schemas.schema_names():
        for version in schemas.versions(name):
            _ = version.parsed
            assert json.loads(json.dumps(version.definition)) == version.definition
