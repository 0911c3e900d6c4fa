from __future__ import annotations

import datetime as dt
import os
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import strategies as st

from prismops import schemas

UTC = dt.timezone.utc


@pytest.fixture(autouse=True)
def _no_prismops_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read PRISMOPS_* variables: keep the developer's environment out of these tests."""
    for name in list(os.environ):
        if name.startswith("PRISMOPS_"):
            monkeypatch.delenv(name)


def _sample_value(schema: Any, rng: random.Random) -> Any:
    """A valid value for any (inline-defined) Avro schema, in the form the codec accepts."""
    if isinstance(schema, list):
        return _sample_value(rng.choice([b for b in schema if b != "null"]), rng)
    if isinstance(schema, str):
        return {
            "string": lambda: f"s{rng.randrange(10**6)}",
            "long": lambda: rng.randrange(0, 2**40),
            "int": lambda: rng.randrange(0, 2**20),
            "boolean": lambda: rng.random() < 0.5,
            "double": lambda: rng.randrange(1, 10**6) / 8,
            "float": lambda: rng.randrange(1, 1000) / 4,
            "bytes": lambda: bytes(rng.randrange(256) for _ in range(6)),
        }[schema]()
    logical = schema.get("logicalType")
    if logical == "timestamp-micros":
        return dt.datetime(2026, 1, 2, 3, 4, 5, rng.randrange(10**6), tzinfo=dt.timezone.utc)
    if logical == "decimal":
        return Decimal(rng.randrange(0, 10**8)).scaleb(-schema.get("scale", 0))
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: _sample_value(f["type"], rng) for f in schema["fields"]}
    if kind == "enum":
        return rng.choice(schema["symbols"])
    if kind == "array":
        return [_sample_value(schema["items"], rng) for _ in range(2)]
    if kind == "map":
        return {f"k{i}": _sample_value(schema["values"], rng) for i in range(2)}
    return _sample_value(kind, rng)


@pytest.fixture()
def sample_record() -> Callable[..., dict[str, Any]]:
    """sample_record(schema_name, version=None, seed=0) -> a valid record for that schema version."""

    def make(name: str, version: int | None = None, seed: int = 0) -> dict[str, Any]:
        return _sample_value(schemas.get(name, version).definition, random.Random(seed))

    return make


def avro_values(schema: Any, depth: int = 0) -> st.SearchStrategy:
    """Values of an Avro schema definition, as our agents build them (hypothesis)."""
    if isinstance(schema, list):
        return st.one_of(st.none(), avro_values(schema[1], depth))
    if isinstance(schema, str):
        return {
            "null": st.none(), "boolean": st.booleans(), "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1), "string": st.text(max_size=20),
            "bytes": st.binary(max_size=20), "double": st.floats(allow_nan=False),
        }[schema]
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "decimal":
        scale, precision = schema.get("scale", 0), schema["precision"]
        return st.integers(-(10**precision) + 1, 10**precision - 1).map(lambda n: Decimal(n).scaleb(-scale))
    if logical == "timestamp-micros":
        return st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1),
                            timezones=st.just(UTC))
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: avro_values(f["type"], depth + 1) for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(avro_values(schema["items"], depth + 1), max_size=3 if depth < 2 else 1)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), avro_values(schema["values"], depth + 1), max_size=3)
    return avro_values(kind, depth)


@pytest.fixture()
def records_of() -> Callable[[Any], st.SearchStrategy]:
    """`avro_values`, for property tests that draw records of a schema."""
    return avro_values
