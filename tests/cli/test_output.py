"""prismops/cli/output.py: JSON output never passes money through a float."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from prismops.cli.output import emit_json, to_jsonable


@pytest.mark.parametrize("amount", [
    "0.007250000000",
    "0.000000000001",
    "0E-12",
    "12345678901234567890.123456789012",
    "-3.10",
    "0.1",
])
def test_decimals_become_exact_strings(amount):
    value = Decimal(amount)
    out = to_jsonable(value)
    assert isinstance(out, str)
    assert Decimal(out) == value
    assert Decimal(out).as_tuple() == value.as_tuple()  # same digits and scale, nothing rounded


def test_a_decimal_that_a_float_would_change_survives():
    value = Decimal("0.1") + Decimal("0.2")
    assert to_jsonable(value) == "0.3"
    assert float(value) != 0.1 + 0.2  # the reason floats are not allowed near money


def test_nested_structures_are_converted():
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    payload = {
        "rows": [{"cost_usd": Decimal("1.50"), "at": moment, "day": dt.date(2026, 1, 2)}],
        "path": Path("/tmp/x"),
        "raw": b"\x00\xff",
        "tuple": (Decimal("2"), 3),
        7: None,
    }
    out = to_jsonable(payload)
    assert out == {
        "rows": [{"cost_usd": "1.50", "at": moment.isoformat(), "day": "2026-01-02"}],
        "path": "/tmp/x",
        "raw": "00ff",
        "tuple": ["2", 3],
        "7": None,
    }
    json.dumps(out)  # plain JSON now


def test_emit_json_writes_exact_money(capsys):
    emit_json([{"cost_usd": Decimal("0.000800000001")}])
    assert json.loads(capsys.readouterr().out) == [{"cost_usd": "0.000800000001"}]
