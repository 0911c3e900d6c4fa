"""Price LLM calls from a price table, exactly.

Rounding rule (applied once, here): the exact product tokens × USD-per-million / 10^6 is summed per
call and rounded half-even to 12 decimal places, the scale of every money column downstream.
An unknown (provider, model) is never priced at zero silently: the result says `priced=False`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

MONEY_QUANTUM = Decimal("0.000000000001")
PER_MILLION = Decimal(1_000_000)
UNPRICED_VERSION = "unpriced"


@dataclass(frozen=True)
class ModelPrice:
    provider: str
    model: str
    input_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    output_per_mtok: Decimal


@dataclass(frozen=True)
class PriceTable:
    version: str
    effective_from: dt.datetime
    prices: Mapping[tuple[str, str], ModelPrice]

    def find(self, provider: str, model: str) -> ModelPrice | None:
        return self.prices.get((provider.strip().lower(), model.strip().lower()))


@dataclass(frozen=True)
class PricedCall:
    cost_usd: Decimal
    priced: bool
    price_version: str
    price: ModelPrice | None


def _decimal(entry: Mapping[str, Any], name: str) -> Decimal:
    raw = entry.get(name)
    if raw is None or isinstance(raw, float):
        raise ValueError(f"price table entry {entry.get('provider')}/{entry.get('model')}: {name} must be a decimal string")
    value = Decimal(str(raw))
    if value < 0:
        raise ValueError(f"price table entry {entry.get('provider')}/{entry.get('model')}: {name} must be >= 0")
    return value


def parse_price_table(document: Mapping[str, Any]) -> PriceTable:
    prices = {}
    for entry in document["models"]:
        price = ModelPrice(
            provider=entry["provider"].strip().lower(),
            model=entry["model"].strip().lower(),
            input_per_mtok=_decimal(entry, "input_per_mtok"),
            cached_input_per_mtok=_decimal(entry, "cached_input_per_mtok"),
            output_per_mtok=_decimal(entry, "output_per_mtok"),
        )
        prices[(price.provider, price.model)] = price
    effective = dt.datetime.fromisoformat(str(document["effective_from"]).replace("Z", "+00:00"))
    return PriceTable(version=str(document["version"]), effective_from=effective, prices=prices)


def load_price_table(path: Path | None = None) -> PriceTable:
    """The YAML at `path`, or the bundled skeleton table."""
    text = path.read_text() if path else resources.files("agents").joinpath("price_table.yaml").read_text()
    return parse_price_table(yaml.safe_load(text))


def price_llm_call(event: Mapping[str, Any], table: PriceTable) -> PricedCall:
    price = table.find(event["provider"], event["model"])
    if price is None:
        return PricedCall(Decimal(0).quantize(MONEY_QUANTUM), False, UNPRICED_VERSION, None)
    cached = event.get("cached_input_tokens") or 0
    exact = (
        (event["input_tokens"] - cached) * price.input_per_mtok
        + cached * price.cached_input_per_mtok
        + event["output_tokens"] * price.output_per_mtok
    ) / PER_MILLION
    return PricedCall(exact.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN), True, table.version, price)
