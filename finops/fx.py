"""Effective-dated exchange rates: the only way a report turns a bill's own currency into USD (no network, no
rate ever guessed). Cost lines keep non-USD bills in their BillingCurrency (finops/focus_billing.py); a report
that wants USD reads an FX table the user supplies.

File format (CSV, UTF-8, a header row; docs/fx_rates.example.csv is a complete example):

    currency,effective_from,usd_per_unit
    EUR,2025-06-01,1.1412
    EUR,2025-07-01,1.1687
    JPY,2025-06-01,0.0069

- `currency`: ISO 4217 code, three capital letters; USD needs no row (1 USD = 1 USD; a USD row must say 1).
- `effective_from`: ISO date (YYYY-MM-DD), UTC; the rate holds from that day until the currency's next row.
- `usd_per_unit`: how many USD one unit of the currency is worth, a positive decimal written exactly (no
  exponent needed, no float detour); any number of places.
- Any other column (a `source` or `note`) is ignored; blank lines are skipped; one row per currency and day.

The rate for an amount is the one in force on its date (for a cost line, the UTC date of ChargePeriodStart). An
amount dated before a currency's first row has no rate: `FxError` (rule `fx_missing`) naming the currency and
the date, never a silent zero. Converted amounts are exact products rounded once, half-even, to 12 places.
Every problem with the file is an `FxError` naming the file, the line, the column and the rule.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import decimal
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from prismops.errors import FieldRuleError

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_DECIMAL = re.compile(r"^\+?(?:\d+(?:\.\d*)?|\.\d+)$")
_TWELVE_PLACES = Decimal(1).scaleb(-12)
_EXACT = decimal.Context(prec=200, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])
_ROUNDING = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation, decimal.Overflow])
COLUMNS = ("currency", "effective_from", "usd_per_unit")


class FxError(FieldRuleError):
    """A broken rule of an FX table file, or an amount the table has no rate for."""


@dataclass
class FxTable:
    """Rates per currency, each list sorted by its effective date."""

    rates: dict[str, list[tuple[dt.date, Decimal]]] = field(default_factory=dict)
    source: str = ""

    def rate(self, currency: str, on: dt.date) -> Decimal:
        """USD per unit of `currency` in force on `on`."""
        if currency == "USD":
            return Decimal(1)
        rows = self.rates.get(currency)
        if not rows:
            raise FxError("currency", "fx_missing", f"{self.source or 'the FX table'} has no rate for {currency}")
        at = bisect.bisect_right([day for day, _ in rows], on)
        if at == 0:
            raise FxError("effective_from", "fx_missing", f"{self.source or 'the FX table'} has no {currency} rate in "
                          f"force on {on.isoformat()} (its first is from {rows[0][0].isoformat()})")
        return rows[at - 1][1]

    def to_usd(self, amount: Decimal, currency: str, on: dt.date) -> Decimal:
        """`amount` of `currency` on `on` in USD: the exact product, rounded once half-even to 12 places."""
        product = _EXACT.multiply(amount, self.rate(currency, on))
        return product.quantize(_TWELVE_PLACES, context=_ROUNDING)

    def currencies(self) -> list[str]:
        return sorted(self.rates)


def load_fx_table(path: str | os.PathLike[str]) -> FxTable:
    """Read and check an FX table file (format in the module docstring)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return parse_fx_rows(csv.reader(handle), source=str(path))
    except UnicodeDecodeError as exc:
        raise FxError(None, "utf8", f"{path} is not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise FxError(None, "readable", f"cannot read {path}: {exc.strerror or exc}") from exc
    except csv.Error as exc:
        raise FxError(None, "csv", f"{path}: not valid CSV: {exc}") from exc


def parse_fx_rows(rows: Iterable[list[str]], source: str = "the FX table") -> FxTable:
    lines = iter(rows)
    header = [c.strip() for c in next(lines, [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise FxError(", ".join(missing), "header", f"{source}: line 1 must name the columns {', '.join(COLUMNS)}; "
                      f"missing {', '.join(missing)}")
    at = {name: header.index(name) for name in COLUMNS}
    table = FxTable(source=source)
    seen: dict[tuple[str, dt.date], int] = {}
    for number, cells in enumerate(lines, start=2):
        if not cells or all(not c.strip() for c in cells):
            continue

        def cell(name: str) -> str:
            return cells[at[name]].strip() if at[name] < len(cells) else ""

        def bad(column: str, rule: str, message: str) -> FxError:
            return FxError(column, rule, f"{source}: line {number}, column {column}: {message}")

        currency, day_text, rate_text = cell("currency"), cell("effective_from"), cell("usd_per_unit")
        if not _CURRENCY.fullmatch(currency):
            raise bad("currency", "currency", f"{currency!r} is not an ISO 4217 code (three capital letters)")
        try:
            day = dt.date.fromisoformat(day_text)
        except ValueError:
            raise bad("effective_from", "date", f"{day_text!r} is not a date (YYYY-MM-DD)") from None
        if not _DECIMAL.fullmatch(rate_text) or Decimal(rate_text) <= 0:
            raise bad("usd_per_unit", "positive_decimal", f"{rate_text!r} is not a positive decimal number")
        rate = Decimal(rate_text)
        if currency == "USD" and rate != 1:
            raise bad("usd_per_unit", "usd_is_one", f"a USD row must say 1, not {rate_text}")
        if (currency, day) in seen:
            raise bad("effective_from", "duplicate", f"{currency} already has a rate from {day.isoformat()} "
                      f"(line {seen[currency, day]})")
        seen[currency, day] = number
        table.rates.setdefault(currency, []).append((day, rate))
    for rows_of in table.rates.values():
        rows_of.sort()
    return table
