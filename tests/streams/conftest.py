from __future__ import annotations

import datetime as dt
import os
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from prismops import schemas


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
