"""One LLM usage message in, a cost line and a model observation out, or a rejection naming field and rule.

This is the whole per-message logic of the pricing agent, kept free of Faust so it is testable alone.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from agents.pricing import PriceTable, load_price_table, price_llm_call
from agents.tagging import ServiceRegistry, load_service_registry, resolve_dimensions
from agents.validation import InvalidEvent, validate_llm_usage
from prismops.settings import Settings
from streams.codecs import CodecError, codec_for

COST_LINE_NAMESPACE = uuid.UUID("5f6c1c0e-4a8b-4f7e-9d43-7d2f1b9e0c11")


def cost_line_id(source: str, source_event_id: str) -> str:
    """Deterministic, so reprocessing the same event yields the same line id and the sink can dedupe."""
    return str(uuid.uuid5(COST_LINE_NAMESPACE, f"{source}:{source_event_id}"))


@dataclass(frozen=True)
class Rejection:
    field: str | None
    rule: str
    message: str


@dataclass(frozen=True)
class PricedUsage:
    cost_line: dict[str, Any]
    observation: dict[str, Any]


@dataclass(frozen=True)
class LlmPricingContext:
    """Everything pricing and tagging an LLM call needs, loaded once per worker."""

    prices: PriceTable
    registry: ServiceRegistry

    @classmethod
    def from_settings(cls, settings: Settings) -> "LlmPricingContext":
        return cls(load_price_table(settings.pricing.catalog), load_service_registry(settings.tagging.service_registry))


def build_llm_cost_line(event: dict[str, Any], table: PriceTable, registry: ServiceRegistry) -> PricedUsage:
    priced = price_llm_call(event, table)
    dims, tag_source = resolve_dimensions(event, registry)
    tokens = event["input_tokens"] + event["output_tokens"]
    line = {
        "line_id": cost_line_id("llm", event["event_id"]),
        "source": "llm",
        "source_event_id": event["event_id"],
        "event_time": event["event_time"],
        **{k: dims[k] for k in ("tenant", "team", "product", "service", "feature", "customer", "environment", "provider", "model")},
        "user_hash": None,
        "region": None,
        "resource": None,
        "input_tokens": event["input_tokens"],
        "output_tokens": event["output_tokens"],
        "cached_input_tokens": event["cached_input_tokens"],
        "cache_write_tokens": event.get("cache_write_tokens", 0),
        "reasoning_tokens": event.get("reasoning_tokens", 0),
        "usage_quantity": Decimal(tokens),
        "usage_unit": "token",
        "cost_usd": priced.cost_usd,
        "billed_cost_usd": None,
        "list_cost_usd": None,
        "charge_category": "usage",
        "priced": priced.priced,
        "price_version": priced.price_version,
        "status": event["status"],
        "tag_source": tag_source,
        "labels": dict(event.get("labels") or {}),
    }
    observation = {
        "provider": dims["provider"],
        "model": dims["model"],
        "event_time": event["event_time"],
        "latency_ms": event["latency_ms"],
        "status": event["status"],
        "tokens": tokens,
        "cost_usd": priced.cost_usd,
        "input_price_per_mtok": priced.price.input_per_mtok if priced.price else None,
        "output_price_per_mtok": priced.price.output_per_mtok if priced.price else None,
    }
    return PricedUsage(line, observation)


def process_llm_usage(value: bytes | None, pricing: LlmPricingContext, now: dt.datetime) -> PricedUsage | Rejection:
    """Decode, validate, price and tag one message value."""
    try:
        event = codec_for("llm_usage_event").decode(value)
        validate_llm_usage(event, now)
    except (CodecError, InvalidEvent) as exc:
        return Rejection(exc.field, exc.rule, exc.message)
    return build_llm_cost_line(event, pricing.prices, pricing.registry)
