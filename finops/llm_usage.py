"""One LLM usage record in (a single event or a batch of them), per event a cost line and a model observation
out, or a rejection naming field and rule.

This is the whole per-message logic of the pricing agent, kept free of Faust so it is testable alone:
strip conversation content → decode → validate → tag (normalize, infer, default) → price at event time
with the tenant's overrides → mask personal data → cost line. In a batch every event is its own case: a
rejected event carries the bytes to dead-letter (its own JSON, or its Avro record re-encoded alone) and the
others go on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, NamedTuple

from prismops.finops.pricing import (
    MONEY_QUANTUM,
    PER_MILLION,
    CostBreakdown,
    PriceCatalog,
    load_catalog,
    price_llm_call_as,
)
from prismops.finops.privacy import hash_user_id, mask_labels, mask_personal_data, strip_content_fields
from prismops.finops.tagging import ServiceRegistry, load_service_registry, resolve_dimensions, tag_key
from prismops.finops.validation import DEFAULT_MAX_TOKENS_PER_CALL, service_tier_of, validate_llm_usage
from prismops.settings import Settings
from prismops.streams.avro_writer import RecordTemplate
from prismops.streams.codecs import BatchItem, CodecError, TemplatedRecord, batch_codec_for, codec_for
from prismops.errors import FieldRuleError

COST_LINE_NAMESPACE = uuid.UUID("5f6c1c0e-4a8b-4f7e-9d43-7d2f1b9e0c11")
_NAMESPACE_BYTES = COST_LINE_NAMESPACE.bytes
INPUT_COMPONENTS = ("input", "cache_read", "cache_write")
"""Priced components billed for prompt tokens; everything else (output, reasoning) is billed for completion tokens."""


def cost_line_id(source: str, source_event_id: str) -> str:
    """Deterministic, so reprocessing the same event yields the same line id and the sink can dedupe: the text of
    uuid.uuid5(COST_LINE_NAMESPACE, "<source>:<id>"), formatted without building a UUID object (a third of the cost)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{source}:{source_event_id}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def cost_by_direction(priced: CostBreakdown) -> tuple[Decimal | None, Decimal | None]:
    """(input cost, output cost) of one priced call, or (None, None) when it is unpriced.

    Input is the uncached input, cache-read and cache-write components; output is the output and reasoning
    components. The exact input sum is rounded half-even to 12 places, once; output is the (already rounded)
    cost_usd minus that, so the two always add up exactly to cost_usd and no second rounding is needed.
    """
    if not priced.priced:
        return None, None
    exact_input = sum((priced.components[name] for name in INPUT_COMPONENTS), Decimal(0))
    input_cost = exact_input.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)
    return input_cost, priced.cost_usd - input_cost


@dataclass(frozen=True)
class Rejection:
    field: str | None
    rule: str
    message: str
    value: bytes | None = None
    """The bytes to dead-letter: the original, or a copy with conversation content removed."""


class PricedUsage(NamedTuple):
    """A priced call: its cost line and its live-stats observation (a named tuple: one is made per call)."""

    cost_line: dict[str, Any]
    observation: dict[str, Any]
    dropped_content_fields: Sequence[str] = ()


COST_LINE_OPEN_FIELDS = frozenset({
    "line_id", "source_event_id", "event_time", "user_hash", "input_tokens", "output_tokens", "cached_input_tokens",
    "cache_write_tokens", "reasoning_tokens", "usage_quantity", "cost_usd", "priced", "price_version", "status",
    "session_id", "request_id", "model_version", "deployment_id", "prompt_chars", "latency_ms", "cache_hit",
    "fallback", "shadow", "decision_id",
})
"""An LLM cost line's fields that are the call's own; every other field is one of its shape (`cost_line_tags`) or
the same for every LLM line, so the lines of a shape are written from one template (`CallShape.cost_line`)."""
SHAPES_KEPT = 10_000
"""Call shapes an LlmPricingContext remembers (forgotten all at once when full)."""
LINE_DIMENSIONS = ("tenant", "team", "product", "service", "feature", "environment", "provider", "model")


def cost_line_tags(dims: Mapping[str, Any], tag_source: dict[str, str], customer: str | None,
                   labels: dict[str, str]) -> dict[str, Any]:
    """The fields of an LLM cost line that follow from its tags (and the constants of every LLM line): what the
    calls of one shape share. `customer` and `labels` are masked."""
    return {"source": "llm", **{name: dims[name] for name in LINE_DIMENSIONS}, "customer": customer,
            "region": None, "resource": None, "usage_unit": "token", "billed_cost_usd": None, "list_cost_usd": None,
            "charge_category": "Usage",  # FOCUS ChargeCategory casing, as bill lines carry it
            "tag_source": tag_source, "labels": labels}


class CallShape:
    """What the calls with one `tag_key` share: their dimensions and the fields of their cost lines that follow from
    them (`cost_line_tags`), and, made from its second line, the template the lines after it are written from. Not
    from the first: writing a template's fixed fields costs about a whole line, and a third of the bench's 20,000
    simulated calls had a shape of their own."""

    __slots__ = ("dims", "tags", "remembered", "_lines", "_template")

    def __init__(self, dims: dict[str, Any], tags: dict[str, Any], remembered: bool = True):
        self.dims = dims
        self.tags = tags
        self.remembered = remembered
        self._lines = 0
        self._template: RecordTemplate | None = None

    def cost_line(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A cost line of this shape from the call's own fields (COST_LINE_OPEN_FIELDS, in a dict of its own): a
        TemplatedRecord of the cost-line batch codec once the shape has its template (made from its second line, if
        it is remembered), else that dict, filled."""
        tags = self.tags
        if self._template is None:
            fields.update(tags)
            fields["tag_source"], fields["labels"] = dict(tags["tag_source"]), dict(tags["labels"])
            self._lines += self.remembered
            if self._lines >= 2:
                self._template = batch_codec_for("cost_line").item_template(fields, COST_LINE_OPEN_FIELDS)
            return fields
        line = TemplatedRecord.of(batch_codec_for("cost_line"), self._template, tags, fields)
        line["tag_source"], line["labels"] = dict(tags["tag_source"]), dict(tags["labels"])  # each line owns its maps
        return line


@dataclass(frozen=True)
class LlmPricingContext:
    """Everything pricing and tagging an LLM call needs, loaded once per worker."""

    catalog: PriceCatalog
    registry: ServiceRegistry
    user_hash_key: bytes
    max_tokens_per_call: int = DEFAULT_MAX_TOKENS_PER_CALL

    @classmethod
    def from_settings(cls, settings: Settings) -> "LlmPricingContext":
        return cls(
            load_catalog(settings.pricing.catalog, settings.pricing.tenant_overrides),
            load_service_registry(settings.tagging.service_registry),
            settings.pii.hash_key.get_secret_value().encode(),
            settings.pricing.max_tokens_per_call,
        )

    @cached_property
    def _shapes(self) -> dict[tuple[Any, ...], CallShape]:
        return {}

    def shape_of(self, event: dict[str, Any]) -> CallShape:
        """The event's CallShape, remembered per `tag_key` (SHAPES_KEPT of them: a stream repeats few combinations
        of tenant, service, model and labels, and tagging one event normalizes eight names) unless its customer or
        labels hold personal data: those are masked for every call and kept nowhere."""
        key = tag_key(event)
        shape = self._shapes.get(key)
        if shape is not None:
            return shape
        given_customer = (event.get("customer") or "").strip()
        customer = mask_personal_data(given_customer) if given_customer else None
        given_labels = event.get("labels") or {}
        labels = mask_labels(given_labels)
        dims, tag_source = resolve_dimensions(event, self.registry, self.catalog.infer_provider)
        if (customer or "") != given_customer or labels != given_labels:
            return CallShape(dims, cost_line_tags(dims, tag_source, customer, labels), remembered=False)
        if len(self._shapes) >= SHAPES_KEPT:
            self._shapes.clear()
        shape = self._shapes[key] = CallShape(dims, cost_line_tags(dims, tag_source, customer, labels))
        return shape

    def validate(self, event: dict[str, Any], now: dt.datetime) -> str:
        """Every rule an event must meet before it is priced (InvalidEvent names the field and the rule); returns
        the event's service tier, which the last rule reads, so pricing does not read it again."""
        validate_llm_usage(event, now, self.max_tokens_per_call)
        return service_tier_of(event)


def build_llm_cost_line(event: dict[str, Any], pricing: LlmPricingContext, service_tier: str) -> PricedUsage:
    """The cost line and the live-stats observation of a valid event; `service_tier` is what `validate` returned."""
    shape = pricing.shape_of(event)
    dims = shape.dims
    catalog = pricing.catalog
    priced = price_llm_call_as(event, catalog, dims["provider"], dims["tenant"], service_tier)
    tokens = event["input_tokens"] + event["output_tokens"]
    line = shape.cost_line({
        "line_id": cost_line_id("llm", event["event_id"]),
        "source_event_id": event["event_id"],
        "event_time": event["event_time"],
        "user_hash": hash_user_id(event["user_id"], pricing.user_hash_key) if event.get("user_id") else None,
        "input_tokens": event["input_tokens"],
        "output_tokens": event["output_tokens"],
        "cached_input_tokens": event["cached_input_tokens"],
        "cache_write_tokens": event.get("cache_write_tokens") or 0,
        "reasoning_tokens": event.get("reasoning_tokens") or 0,
        "usage_quantity": Decimal(tokens).quantize(MONEY_QUANTUM),  # as the cost line's decimal(38, 12) reads back
        "cost_usd": priced.cost_usd,
        "priced": priced.priced,
        "price_version": priced.price_version,
        "status": event["status"],
        "session_id": event.get("session_id"),
        "request_id": event.get("request_id"),
        "model_version": event.get("model_version"),
        "deployment_id": event.get("deployment_id"),
        "prompt_chars": event.get("prompt_chars"),
        "latency_ms": event["latency_ms"],
        "cache_hit": bool(event.get("cache_hit")),
        "fallback": bool(event.get("fallback")),
        "shadow": bool(event.get("shadow")),
        "decision_id": event.get("decision_id"),
    })
    list_quote = catalog.quote(dims["provider"], dims["model"], event["event_time"])
    list_prices = list_quote.prices if list_quote else None  # the router compares list prices, per million
    input_cost, output_cost = cost_by_direction(priced)
    observation = {
        "provider": dims["provider"],
        "model": dims["model"],
        "event_time": event["event_time"],
        "latency_ms": event["latency_ms"],
        "status": event["status"],
        "tokens": tokens,
        "cost_usd": priced.cost_usd,
        "input_price_per_mtok": list_prices.input * PER_MILLION if list_prices else None,
        "output_price_per_mtok": list_prices.output * PER_MILLION if list_prices else None,
        "ttft_ms": event.get("time_to_first_token_ms"),
        "input_tokens": event["input_tokens"],
        "output_tokens": event["output_tokens"],
        "input_cost_usd": input_cost,
        "output_cost_usd": output_cost,
    }
    return PricedUsage(line, observation)


@dataclass(frozen=True)
class PricedRecord:
    """What one usage record (single or batch) gave: per event, in order, a priced usage or a rejection; and the
    content fields removed from the record before decoding."""

    outcomes: list[PricedUsage | Rejection]
    dropped_content_fields: list[str]


def price_usage_record(value: bytes | None, pricing: LlmPricingContext, now: dt.datetime) -> PricedRecord:
    """Strip content, decode (raises CodecError when the record as a whole is unreadable), then validate, tag and
    price each event of it."""
    cleaned, dropped = strip_content_fields(value)
    decoded = batch_codec_for("llm_usage_event").decode(cleaned)
    return PricedRecord([price_usage_item(item, pricing, now) for item in decoded.items], dropped)


def price_usage_item(item: BatchItem, pricing: LlmPricingContext, now: dt.datetime) -> PricedUsage | Rejection:
    if item.error is not None or item.value is None:
        error = item.error or CodecError(None, "json_decode", "not an event")
        return Rejection(error.field, error.rule, error.message, item.original)
    try:
        service_tier = pricing.validate(item.value, now)
    except FieldRuleError as exc:
        original = item.original if item.original is not None else codec_for("llm_usage_event").encode(item.value)
        return Rejection(exc.field, exc.rule, exc.message, original)
    return build_llm_cost_line(item.value, pricing, service_tier)


def process_llm_usage(value: bytes | None, pricing: LlmPricingContext, now: dt.datetime) -> PricedUsage | Rejection:
    """Strip content, decode, validate, tag, price and mask one message value."""
    cleaned, dropped = strip_content_fields(value)
    try:
        event = codec_for("llm_usage_event").decode(cleaned)
        service_tier = pricing.validate(event, now)
    except FieldRuleError as exc:
        return Rejection(exc.field, exc.rule, exc.message, cleaned)
    outcome = build_llm_cost_line(event, pricing, service_tier)
    return PricedUsage(outcome.cost_line, outcome.observation, dropped) if dropped else outcome
