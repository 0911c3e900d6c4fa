"""The price catalog and the pricing of LLM calls, exactly.

Catalog entries are effective-dated per (provider, model) and price five kinds of token, in USD per token:
input, output, cached input (cache read), cache write and reasoning. Tenants may have negotiated
overrides: a discount percentage or their own prices, themselves effective-dated.

Token accounting (OpenAI's convention, which LiteLLM follows): `input_tokens` is the whole prompt and
includes the cache-read and cache-write tokens; `output_tokens` includes the reasoning tokens. So

    cost = (input − cache_read − cache_write) × input + cache_read × cache_read_price
         + cache_write × cache_write_price + (output − reasoning) × output + reasoning × reasoning_price

A missing cache-read or cache-write price falls back to the input price, a missing reasoning price to the
output price. A tenant discount multiplies the whole. Rounding rule (applied once, here): the exact sum is
rounded half-even to 12 decimal places, the scale of every money column downstream.

An unknown model is never priced at zero silently: the quote is None and the cost line says priced=false.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

MONEY_QUANTUM = Decimal("0.000000000001")
PER_MILLION = Decimal(1_000_000)
UNPRICED_VERSION = "unpriced"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

# LiteLLM's `litellm_provider` values that name the same vendor under our provider names.
LITELLM_PROVIDERS = {
    "gemini": "google",
    "vertex_ai": "google",
    "vertex_ai-language-models": "google",
    "text-completion-openai": "openai",
}


class CatalogError(ValueError):
    """A catalog file that cannot be trusted; the message names the entry and the field."""


def normalize_name(value: str) -> str:
    return " ".join(value.split()).lower()


@dataclass(frozen=True)
class TokenPrices:
    """USD per single token; None means 'same as input' (cache) or 'same as output' (reasoning)."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None

    def scaled(self, factor: Decimal) -> "TokenPrices":
        return TokenPrices(*(None if p is None else p * factor for p in
                             (self.input, self.output, self.cache_read, self.cache_write, self.reasoning)))

    def per_million(self) -> dict[str, Decimal]:
        return {
            "input": self.input * PER_MILLION,
            "cache_read": (self.cache_read if self.cache_read is not None else self.input) * PER_MILLION,
            "cache_write": (self.cache_write if self.cache_write is not None else self.input) * PER_MILLION,
            "output": self.output * PER_MILLION,
            "reasoning": (self.reasoning if self.reasoning is not None else self.output) * PER_MILLION,
        }


@dataclass(frozen=True)
class CatalogEntry:
    provider: str
    model: str
    effective_from: dt.datetime
    prices: TokenPrices
    mode: str = "chat"
    source: str = "prismops"


@dataclass(frozen=True)
class TenantOverride:
    tenant: str
    provider: str
    model: str
    effective_from: dt.datetime
    discount_pct: Decimal | None = None
    prices: TokenPrices | None = None

    def matches(self, provider: str, model: str, at: dt.datetime) -> bool:
        return (self.provider in ("*", provider)) and (self.model in ("*", model)) and self.effective_from <= at


@dataclass(frozen=True)
class PriceQuote:
    """The prices that apply to one call, and where they came from."""

    provider: str
    model: str
    prices: TokenPrices
    price_version: str
    effective_from: dt.datetime
    override: str | None = None


@dataclass(frozen=True)
class CostBreakdown:
    quote: PriceQuote | None
    components: Mapping[str, Decimal]
    cost_usd: Decimal

    @property
    def priced(self) -> bool:
        return self.quote is not None

    @property
    def price_version(self) -> str:
        return self.quote.price_version if self.quote else UNPRICED_VERSION


@dataclass(frozen=True)
class PriceCatalog:
    version: str
    entries: Mapping[tuple[str, str], tuple[CatalogEntry, ...]]
    aliases: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    overrides: Mapping[str, tuple[TenantOverride, ...]] = field(default_factory=dict)

    def resolve(self, provider: str | None, model: str) -> tuple[str, str] | None:
        """(provider, model) as the catalog knows it: aliases applied; provider inferred when not given."""
        name = normalize_name(model)
        if name in self.aliases:
            target = self.aliases[name]
            # an alias names one provider's model: under another provider it is as unknown as the model itself
            return target if not provider or normalize_name(provider) == target[0] else None
        if provider:
            key = (normalize_name(provider), name)
            return key if key in self.entries else None
        matches = [key for key in self.entries if key[1] == name]
        return matches[0] if len(matches) == 1 else None

    def infer_provider(self, model: str) -> str | None:
        key = self.resolve(None, model)
        return key[0] if key else None

    def quote(self, provider: str | None, model: str, at: dt.datetime, tenant: str | None = None) -> PriceQuote | None:
        key = self.resolve(provider, model)
        if key is None:
            return None
        current = [e for e in self.entries[key] if e.effective_from <= at]
        if not current:
            return None
        entry = current[-1]
        quote = PriceQuote(key[0], key[1], entry.prices, self.version, entry.effective_from)
        for override in reversed(self.overrides.get(normalize_name(tenant or ""), ())):
            if override.matches(key[0], key[1], at):
                if override.prices is not None:
                    return replace(quote, prices=override.prices, override=f"{override.tenant}: negotiated prices")
                factor = (Decimal(100) - override.discount_pct) / Decimal(100)  # type: ignore[operator]
                return replace(quote, prices=entry.prices.scaled(factor),
                               override=f"{override.tenant}: {override.discount_pct}% discount")
        return quote

    def with_overrides(self, overrides: Iterable[TenantOverride]) -> "PriceCatalog":
        grouped: dict[str, list[TenantOverride]] = {k: list(v) for k, v in self.overrides.items()}
        for override in overrides:
            grouped.setdefault(override.tenant, []).append(override)
        return replace(self, overrides={k: tuple(sorted(v, key=lambda o: o.effective_from)) for k, v in grouped.items()})


def price_tokens(
    quote: PriceQuote | None,
    *,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> CostBreakdown:
    if quote is None:
        return CostBreakdown(None, {}, Decimal(0).quantize(MONEY_QUANTUM))
    p = quote.prices
    components = {
        "input": (input_tokens - cached_input_tokens - cache_write_tokens) * p.input,
        "cache_read": cached_input_tokens * (p.cache_read if p.cache_read is not None else p.input),
        "cache_write": cache_write_tokens * (p.cache_write if p.cache_write is not None else p.input),
        "output": (output_tokens - reasoning_tokens) * p.output,
        "reasoning": reasoning_tokens * (p.reasoning if p.reasoning is not None else p.output),
    }
    total = sum(components.values(), Decimal(0))
    return CostBreakdown(quote, components, total.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN))


def price_llm_call(event: Mapping[str, Any], catalog: PriceCatalog) -> CostBreakdown:
    """Price one decoded LLM usage event at its event_time, with its tenant's overrides."""
    quote = catalog.quote(event.get("provider"), event["model"], event["event_time"], event.get("tenant"))
    return price_tokens(
        quote,
        input_tokens=event["input_tokens"],
        output_tokens=event["output_tokens"],
        cached_input_tokens=event.get("cached_input_tokens") or 0,
        cache_write_tokens=event.get("cache_write_tokens") or 0,
        reasoning_tokens=event.get("reasoning_tokens") or 0,
    )


def _decimal(value: Any, where: str, name: str, optional: bool = False) -> Decimal | None:
    if value is None:
        if optional:
            return None
        raise CatalogError(f"{where}: {name} is required")
    if isinstance(value, float):
        raise CatalogError(f"{where}: {name} must be written as a decimal string, not a float")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise CatalogError(f"{where}: {name} {value!r} is not a decimal number") from None
    if not number.is_finite() or number < 0:
        raise CatalogError(f"{where}: {name} must be a finite number >= 0")
    return number


def _timestamp(value: Any, where: str) -> dt.datetime:
    if value is None:
        return EPOCH
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise CatalogError(f"{where}: effective_from {value!r} is not an ISO-8601 date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _per_million_prices(entry: Mapping[str, Any], where: str) -> TokenPrices:
    def per_token(name: str, optional: bool = False) -> Decimal | None:
        value = _decimal(entry.get(name), where, name, optional)
        return None if value is None else value / PER_MILLION

    return TokenPrices(
        input=per_token("input_per_mtok"),  # type: ignore[arg-type]
        output=per_token("output_per_mtok"),  # type: ignore[arg-type]
        cache_read=per_token("cache_read_per_mtok", True),
        cache_write=per_token("cache_write_per_mtok", True),
        reasoning=per_token("reasoning_per_mtok", True),
    )


def _group(entries: Iterable[CatalogEntry]) -> dict[tuple[str, str], tuple[CatalogEntry, ...]]:
    grouped: dict[tuple[str, str], list[CatalogEntry]] = {}
    for entry in entries:
        grouped.setdefault((entry.provider, entry.model), []).append(entry)
    result = {}
    for key, versions in grouped.items():
        versions.sort(key=lambda e: e.effective_from)
        starts = [e.effective_from for e in versions]
        if len(set(starts)) != len(starts):
            raise CatalogError(f"{key[0]}/{key[1]}: two entries take effect at the same moment")
        result[key] = tuple(versions)
    return result


def parse_catalog(document: Mapping[str, Any]) -> PriceCatalog:
    """Our YAML format: USD per million tokens, effective-dated entries, aliases, tenant overrides."""
    entries = []
    for index, raw in enumerate(document.get("models") or []):
        where = f"models[{index}] {raw.get('provider')}/{raw.get('model')}"
        if not raw.get("provider") or not raw.get("model"):
            raise CatalogError(f"{where}: provider and model are required")
        entries.append(CatalogEntry(
            provider=normalize_name(raw["provider"]), model=normalize_name(raw["model"]),
            effective_from=_timestamp(raw.get("effective_from"), where), prices=_per_million_prices(raw, where),
            mode=raw.get("mode", "chat"),
        ))
    grouped = _group(entries)
    aliases = {}
    for alias, target in (document.get("aliases") or {}).items():
        provider, _, model = str(target).partition("/")
        key = (normalize_name(provider), normalize_name(model))
        if key not in grouped:
            raise CatalogError(f"aliases: {alias} points to {target}, which is not in the catalog")
        aliases[normalize_name(alias)] = key
    catalog = PriceCatalog(version=str(document.get("version") or "unversioned"), entries=grouped, aliases=aliases)
    return catalog.with_overrides(parse_tenant_overrides(document.get("tenant_overrides") or []))


def parse_tenant_overrides(items: Iterable[Mapping[str, Any]]) -> list[TenantOverride]:
    overrides = []
    for index, raw in enumerate(items):
        where = f"tenant_overrides[{index}] {raw.get('tenant')}"
        if not raw.get("tenant"):
            raise CatalogError(f"{where}: tenant is required")
        discount = _decimal(raw.get("discount_pct"), where, "discount_pct", optional=True)
        has_prices = "input_per_mtok" in raw
        if (discount is None) == (not has_prices):
            raise CatalogError(f"{where}: give either discount_pct or prices (input_per_mtok, output_per_mtok, …)")
        if discount is not None and discount > 100:
            raise CatalogError(f"{where}: discount_pct must be between 0 and 100")
        overrides.append(TenantOverride(
            tenant=normalize_name(raw["tenant"]),
            provider=normalize_name(raw.get("provider", "*")),
            model=normalize_name(raw.get("model", "*")),
            effective_from=_timestamp(raw.get("effective_from"), where),
            discount_pct=discount,
            prices=_per_million_prices(raw, where) if has_prices else None,
        ))
    return overrides


def parse_litellm_prices(document: Mapping[str, Any], version: str) -> PriceCatalog:
    """LiteLLM's model_prices_and_context_window.json: USD per token, no dates (effective since forever).

    Parse the JSON with parse_float=Decimal so '2.5e-06' stays exact. Entries without token prices (image,
    audio-per-second models) are skipped.
    """
    entries: dict[tuple[str, str], CatalogEntry] = {}
    # LiteLLM lists some models under several spellings that map to one (provider, model) here, e.g.
    # "gemini/gemini-2.5-flash" and "gemini-2.5-flash" (Vertex), "bedrock/x" and "x": the bare name wins,
    # then the first in the file; the others are skipped rather than failing the whole file.
    for name, raw in sorted(document.items(), key=lambda item: "/" in item[0]):
        if name == "sample_spec" or not isinstance(raw, Mapping) or raw.get("input_cost_per_token") is None:
            continue
        where = f"{name}"
        provider = LITELLM_PROVIDERS.get(raw.get("litellm_provider", ""), raw.get("litellm_provider", ""))
        model = name.split("/", 1)[1] if "/" in name else name
        if not provider:
            raise CatalogError(f"{where}: litellm_provider is required")
        key = (normalize_name(provider), normalize_name(model))
        if key in entries:
            continue
        entries[key] = CatalogEntry(
            provider=normalize_name(provider), model=normalize_name(model), effective_from=EPOCH,
            prices=TokenPrices(
                input=_decimal(raw.get("input_cost_per_token"), where, "input_cost_per_token"),  # type: ignore[arg-type]
                output=_decimal(raw.get("output_cost_per_token", 0), where, "output_cost_per_token"),  # type: ignore[arg-type]
                cache_read=_decimal(raw.get("cache_read_input_token_cost"), where, "cache_read_input_token_cost", True),
                cache_write=_decimal(raw.get("cache_creation_input_token_cost"), where,
                                     "cache_creation_input_token_cost", True),
                reasoning=_decimal(raw.get("output_cost_per_reasoning_token"), where,
                                   "output_cost_per_reasoning_token", True),
            ),
            mode=raw.get("mode", "chat"), source="litellm",
        )
    return PriceCatalog(version=version, entries=_group(entries.values()))


def load_catalog(path: Path | None = None, tenant_overrides: Path | None = None) -> PriceCatalog:
    """Our YAML (default: the bundled catalog) or, for a .json file, LiteLLM's price map; plus overrides."""
    if path is None:
        catalog = parse_catalog(yaml.safe_load(resources.files("prismops.finops").joinpath("price_catalog.yaml").read_text()))
    elif path.suffix.lower() == ".json":
        raw = path.read_bytes()
        document = json.loads(raw, parse_float=Decimal)
        catalog = parse_litellm_prices(document, version=f"litellm-{hashlib.sha256(raw).hexdigest()[:12]}")
    else:
        catalog = parse_catalog(yaml.safe_load(path.read_text()))
    if tenant_overrides is not None:
        document = yaml.safe_load(tenant_overrides.read_text()) or {}
        catalog = catalog.with_overrides(parse_tenant_overrides(document.get("tenant_overrides") or []))
    return catalog
