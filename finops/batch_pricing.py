"""Re-pricing a usage export: one JSON object per line in, one priced call (or one error) per line out.

An input line is a call: `model` (required), `provider`, `input_tokens` and `output_tokens` (required),
`cached_input_tokens`, `cache_write_tokens`, `reasoning_tokens`, `event_time` (or `at`; ISO-8601, without a
zone: UTC; absent: the default moment), `service_tier`, `tenant`; `event_id` or `id` are echoed. Other keys
are ignored. An output line is either

    {"line": 7, "event_id": ..., "provider": ..., "model": ..., "at": ..., "tenant": ..., "cost_usd": "0.0123",
     "price_tier": {"service_tier": "standard", "above_input_tokens": 200000, "off_peak": false},
     "breakdown": {"input": {"tokens": 1000, "usd_per_mtok": "2.5", "cost_usd": "0.0025"}, ...},
     "price_version": ..., "effective_from": ..., "override": null}

or `{"line": 7, "error": {"field": ..., "rule": ..., "message": ...}}` (rules: utf8, json, object, required,
type, iso_8601, known_service_tier, the token rules of finops.validation.check_token_counts, in_catalog,
unambiguous_model, price_in_effect). Money is a decimal string, never a float.

Quotes are memoized inside the catalog per (entry, service tier, off-peak or not, tenant override), so a file
of many calls to few models costs little more than parsing it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from prismops.errors import FieldRuleError
from prismops.finops.pricing import CatalogEntry, PriceCatalog, price_tokens, service_tier_name
from prismops.finops.validation import check_token_counts

TEXT_FIELDS = ("provider", "model", "tenant", "service_tier", "event_time", "at")


def exact_text(value: Decimal) -> str:
    """The exact value without trailing zeros or exponent."""
    return format(value.normalize(), "f") if value else "0"


def parse_moment(value: str) -> dt.datetime:
    """ISO-8601; a time without a zone is UTC. ValueError when unreadable."""
    moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def describe_candidates(catalog: PriceCatalog, candidates: tuple[tuple[str, str], ...], at: dt.datetime) -> str:
    """"azure/gpt-4.1 (input $2.2, output $8.8 per Mtok), openai/gpt-4.1 (...)"."""
    described = []
    for provider, model in candidates:
        entry: CatalogEntry | None = catalog.entry_at((provider, model), at)
        if entry is None:
            described.append(f"{provider}/{model} (no price in effect)")
            continue
        per_mtok = entry.prices.per_million()
        described.append(f"{provider}/{model} (input ${exact_text(per_mtok['input'])}, "
                         f"output ${exact_text(per_mtok['output'])} per Mtok)")
    return ", ".join(described)


def unpriced_reason(catalog: PriceCatalog, provider: str | None, model: str, at: dt.datetime) -> FieldRuleError:
    """Why (provider, model) has no quote at `at`: ambiguous, not in the catalog, or not priced yet."""
    lookup = catalog.lookup(provider, model)
    name = f"{provider}/{model}" if provider else model
    if lookup.ambiguous:
        providers = sorted({p for p, _ in lookup.candidates})
        return FieldRuleError("provider", "unambiguous_model",
                              f"{name} is ambiguous in the catalog ({catalog.version}): {len(lookup.candidates)} "
                              f"entries match: {describe_candidates(catalog, lookup.candidates, at)}; name the "
                              f"provider ({' or '.join(providers)})")
    if lookup.key is None:
        return FieldRuleError("model", "in_catalog",
                              f"{name} is not in the catalog ({catalog.version}); it would be flagged unpriced")
    return FieldRuleError("event_time", "price_in_effect",
                          f"{name} has no price in effect at that time ({at.isoformat()}, {catalog.version})")


def _text(call: Mapping[str, Any], name: str) -> str | None:
    value = call.get(name)
    if value is None or isinstance(value, str):
        return value
    raise FieldRuleError(name, "type", f"must be a string, got {type(value).__name__}")


def price_call(call: Mapping[str, Any], catalog: PriceCatalog, default_at: dt.datetime,
               max_tokens: int) -> dict[str, Any]:
    """One call (a decoded JSON object) priced; FieldRuleError for the first rule it breaks."""
    texts = {name: _text(call, name) for name in TEXT_FIELDS}
    model = texts["model"]
    if not model or not model.strip():
        raise FieldRuleError("model", "required", "is required")
    check_token_counts(call, max_tokens)
    moment_text = texts["event_time"] if texts["event_time"] is not None else texts["at"]
    at = default_at
    if moment_text is not None:
        try:
            at = parse_moment(moment_text)
        except ValueError:
            field = "event_time" if texts["event_time"] is not None else "at"
            raise FieldRuleError(field, "iso_8601", f"{moment_text[:64]!r} is not an ISO-8601 date or time") from None
    try:
        tier = service_tier_name(texts["service_tier"])
    except ValueError as exc:
        raise FieldRuleError("service_tier", "known_service_tier", str(exc)) from None
    provider, tenant = texts["provider"] or None, texts["tenant"] or None
    quote = catalog.quote(provider, model, at, tenant, tier)
    if quote is None:
        raise unpriced_reason(catalog, provider, model, at)
    counts = {name: call.get(name) or 0 for name in
              ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")}
    cost = price_tokens(quote, **counts)
    tokens = {"input": counts["input_tokens"] - counts["cached_input_tokens"] - counts["cache_write_tokens"],
              "cache_read": counts["cached_input_tokens"], "cache_write": counts["cache_write_tokens"],
              "output": counts["output_tokens"] - counts["reasoning_tokens"], "reasoning": counts["reasoning_tokens"]}
    per_mtok = cost.prices.per_million()  # type: ignore[union-attr]
    record: dict[str, Any] = {}
    for key in ("event_id", "id"):
        if key in call:
            record[key] = call[key]
    record.update({
        "provider": quote.provider, "model": quote.model, "at": at.isoformat(), "tenant": tenant,
        "cost_usd": format(cost.cost_usd, "f"),
        "price_tier": {**cost.price_tier, **({"service_tier_requested": quote.service_tier_requested}
                                             if quote.service_tier_requested else {})},
        "breakdown": {kind: {"tokens": tokens[kind], "usd_per_mtok": exact_text(per_mtok[kind]),
                             "cost_usd": exact_text(cost.components[kind])} for kind in tokens},
        "price_version": quote.price_version, "effective_from": quote.effective_from.isoformat(),
        "override": quote.override,
    })
    return record


def price_line(number: int, raw: bytes, catalog: PriceCatalog, default_at: dt.datetime,
               max_tokens: int) -> dict[str, Any] | None:
    """One input line as its output record (priced or error); None for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return error_record(number, FieldRuleError(None, "utf8", f"byte {exc.start + 1} is not UTF-8 text"))
    if not text.strip():
        return None
    try:
        call = json.loads(text, parse_float=Decimal)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        return error_record(number, FieldRuleError(None, "json", f"not a JSON object: {str(exc)[:120]}"))
    if not isinstance(call, dict):
        return error_record(number, FieldRuleError(None, "object", f"must be a JSON object, not {type(call).__name__}"))
    try:
        return {"line": number, **price_call(call, catalog, default_at, max_tokens)}
    except FieldRuleError as exc:
        return error_record(number, exc)


def error_record(number: int, error: FieldRuleError) -> dict[str, Any]:
    return {"line": number, "error": {"field": error.field, "rule": error.rule, "message": error.message}}
