"""The price catalog and the pricing of LLM calls, exactly.

Catalog entries are effective-dated per (provider, model) and price five kinds of token, in USD per token:
input, output, cached input (cache read), cache write and reasoning. Tenants may have negotiated
overrides: a discount percentage or their own prices, themselves effective-dated.

Token accounting (OpenAI's convention, which LiteLLM follows): `input_tokens` is the whole prompt and
includes the cache-read and cache-write tokens; `output_tokens` includes the reasoning tokens. So

    cost = (input − cache_read − cache_write) × input + cache_read × cache_read_price
         + cache_write × cache_write_price + (output − reasoning) × output + reasoning × reasoning_price

A missing cache-read or cache-write price falls back to the input price, a missing reasoning price to the
output price (each in the tier, service tier and time of day that apply). A tenant discount multiplies the
whole. Rounding rule (applied once, here): the exact sum is rounded half-even to 12 decimal places, the
scale of every money column downstream.

Which prices apply to one call, in this order:

1. **Effective date**: the latest entry of (provider, model) whose `effective_from` is not after the event
   time.
2. **Service tier** (`standard`, `batch`, `flex`, `priority`, and any other tier the catalog names): a
   service tier gives the prices that differ; a kind it leaves out costs its standard price, except that a
   tier with its own output price and no reasoning price bills reasoning at that output price. A tier the
   entry has no prices for is priced at `standard`, and the quote says so (`service_tier_requested`).
3. **Threshold tiers on the prompt** (long context): a tier `above_input_tokens: N` applies when the
   call's `input_tokens` (the whole prompt, cache reads and writes included) is *greater than* N, and then
   the WHOLE call, every kind of token that has a tier price (input, cache read, cache write, output), is
   billed at the tier price; this is how Google (Gemini > 200k), Anthropic (> 200k) and OpenAI (> 272k)
   bill, and LiteLLM's rule (`_get_token_base_cost`: `prompt_tokens > threshold`). With several thresholds
   the highest one crossed applies; a kind a tier leaves out keeps its price from just below that
   threshold (for a service tier: its own tier price, else the standard tier price at that threshold, else
   its price just below). xAI bills the higher tier once the prompt *reaches* the threshold (LiteLLM:
   `threshold_is_inclusive` for xai), so the LiteLLM loader writes xAI's "above N" as `above_input_tokens:
   N − 1`, which is the same thing for whole tokens.
4. **Time of day** (`off_peak`): while the event time is inside one of the entry's windows, the off-peak
   prices replace the prices of the kinds they name, whatever tier applies (LiteLLM's rule). A window
   "HH:MM-HH:MM" includes its start and excludes its end, may cross midnight ("16:30-00:30"), and covers
   the whole day when start equals end. Its hours are read in the block's `timezone` (LiteLLM's map: UTC);
   optional `weekdays` (1 = Monday … 7 = Sunday) name the day of the moment being priced, read in
   `weekday_timezone` (default: `timezone`), not the day the window opened.
5. **Tenant override**: a discount scales every price above; negotiated prices replace them all (flat: no
   tiers, no off-peak).

An unknown model is never priced at zero silently: the quote is None and the cost line says priced=false.

Provider namespaces are kept apart: LiteLLM's `litellm_provider` is the namespace (`gemini` and `vertex_ai`,
`openai` and `azure`, `bedrock` with its region-qualified names ...), never merged. Users send other names:
`PROVIDER_ALIASES` (extensible per catalog with `provider_aliases:`) says which namespaces such a name
covers, e.g. `google` covers `gemini` and `vertex_ai*`. A model found in one namespace is priced there;
found in several it is ambiguous (`ModelLookup.candidates`), never priced by a guess. A name the catalog
holds as a namespace itself is looked up there first.
"""

from __future__ import annotations

import bisect
import datetime as dt
import fnmatch
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

MONEY_QUANTUM = Decimal("0.000000000001")
PER_MILLION = Decimal(1_000_000)
UNPRICED_VERSION = "unpriced"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
KINDS = ("input", "cache_read", "cache_write", "output", "reasoning")

STANDARD = "standard"
SERVICE_TIER_NAMES = {
    # what callers send -> the tier the catalog prices
    "": STANDARD, "standard": STANDARD, "default": STANDARD, "auto": STANDARD, "on_demand": STANDARD,
    "batch": "batch", "batches": "batch",
    "flex": "flex",
    "priority": "priority", "fast": "priority",
    "balanced": "balanced",
    "ultrafast": "ultrafast",
}
"""Service tiers PrismOps knows; OpenAI's `fast` is billed as `priority` (LiteLLM maps it the same way)."""

PROVIDER_ALIASES: dict[str, tuple[str, ...]] = {
    # a provider name users send -> the catalog namespaces (glob patterns) it covers
    "google": ("gemini", "vertex_ai", "vertex_ai-*"),
    "vertex_ai": ("vertex_ai-*",),
    "vertex": ("vertex_ai", "vertex_ai-*"),
    "vertexai": ("vertex_ai", "vertex_ai-*"),
    "google-vertex": ("vertex_ai", "vertex_ai-*"),
    "google-ai-studio": ("gemini",),
    "openai": ("text-completion-openai",),
    "azure": ("azure_text",),
    "azure-openai": ("azure", "azure_text"),
    "azure_openai": ("azure", "azure_text"),
    "bedrock": ("bedrock_converse",),
    "aws": ("bedrock", "bedrock_converse"),
    "amazon": ("bedrock", "bedrock_converse", "amazon_nova"),
    "aws-bedrock": ("bedrock", "bedrock_converse"),
    "amazon-nova": ("amazon_nova",),
    "fireworks": ("fireworks_ai", "fireworks_ai-*"),
    "fireworks_ai": ("fireworks_ai-*",),
    "together": ("together_ai",),
    "togetherai": ("together_ai",),
    "mistralai": ("mistral",),
    "cohere": ("cohere_chat",),
    "meta": ("meta_llama",),
    "x-ai": ("xai",),
    "grok": ("xai",),
}
"""Explicit, not inferred: a name maps to exactly these namespaces and a catalog's `provider_aliases:` adds
or replaces names. The name itself is always looked up first when the catalog holds it as a namespace."""

_THRESHOLD_KEY = re.compile(
    r"^(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost|cache_creation_input_token_cost)"
    r"_above_(\d+)(k?)_tokens(?:_(batches|flex|priority|balanced|ultrafast))?$"
)
_SERVICE_TIER_KEY = re.compile(
    r"^(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost|cache_creation_input_token_cost"
    r"|output_cost_per_reasoning_token)_(batches|flex|priority|balanced|ultrafast)$"
)
_LITELLM_KIND = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write",
    "output_cost_per_reasoning_token": "reasoning",
}
_LITELLM_SERVICE_TIER = {"batches": "batch", "flex": "flex", "priority": "priority", "balanced": "balanced",
                         "ultrafast": "ultrafast"}


class CatalogError(ValueError):
    """A catalog file that cannot be trusted: the message names the file, the entry, the field and the rule."""

    def __init__(self, message: str, *, entry: str | None = None, field: str | None = None, rule: str = "invalid",
                 file: str | None = None):
        self.entry, self.field, self.rule, self.file, self.detail = entry, field, rule, file, message
        super().__init__(self._text())

    def _text(self) -> str:
        where = ": ".join(part for part in (self.file, self.entry) if part)
        what = f"{self.field} {self.detail}" if self.field else self.detail
        return f"{where + ': ' if where else ''}{what} [{self.rule}]"

    def in_file(self, file: str | Path) -> "CatalogError":
        self.file = str(file)
        self.args = (self._text(),)
        return self


def normalize_name(value: str) -> str:
    return " ".join(value.split()).lower()


def service_tier_name(value: str | None) -> str:
    """The catalog's name of a service tier callers send; ValueError for a name PrismOps does not know."""
    name = normalize_name(value or "").replace("-", "_")
    if name not in SERVICE_TIER_NAMES:
        raise ValueError(f"{value!r} is not a service tier PrismOps knows ({', '.join(sorted(set(SERVICE_TIER_NAMES) - {''}))})")
    return SERVICE_TIER_NAMES[name]


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

    def with_changes(self, changes: Mapping[str, Decimal]) -> "TokenPrices":
        return replace(self, **changes) if changes else self

    def per_token(self) -> dict[str, Decimal]:
        """The price of each kind with the fallbacks applied."""
        return {
            "input": self.input,
            "cache_read": self.cache_read if self.cache_read is not None else self.input,
            "cache_write": self.cache_write if self.cache_write is not None else self.input,
            "output": self.output,
            "reasoning": self.reasoning if self.reasoning is not None else self.output,
        }

    def per_million(self) -> dict[str, Decimal]:
        return {kind: price * PER_MILLION for kind, price in self.per_token().items()}


@dataclass(frozen=True)
class ThresholdTier:
    """The prices of a call whose prompt (input_tokens) is greater than `above_input_tokens`: complete, every
    kind the tier leaves out already carried from below."""

    above_input_tokens: int
    prices: TokenPrices


@dataclass(frozen=True)
class PriceSchedule:
    """One service tier's prices: below every threshold, and per threshold tier (ascending)."""

    base: TokenPrices
    tiers: tuple[ThresholdTier, ...] = ()

    def for_prompt(self, input_tokens: int) -> tuple[TokenPrices, int | None]:
        """(prices, threshold crossed or None) for a call with this many input tokens."""
        for tier in reversed(self.tiers):
            if input_tokens > tier.above_input_tokens:
                return tier.prices, tier.above_input_tokens
        return self.base, None

    def mapped(self, change: Callable[[TokenPrices], TokenPrices]) -> "PriceSchedule":
        """The same schedule with `change` applied to every set of prices (off-peak, discount)."""
        return PriceSchedule(change(self.base), tuple(ThresholdTier(t.above_input_tokens, change(t.prices))
                                                       for t in self.tiers))


def build_schedule(base: TokenPrices, tier_changes: Mapping[int, Mapping[str, Decimal]],
                   fallback_changes: Mapping[int, Mapping[str, Decimal]] | None = None) -> PriceSchedule:
    """Carry prices upwards: at each threshold (own or fallback's) a kind costs its own tier price, else the
    fallback's tier price at that threshold, else its price just below."""
    fallback_changes = fallback_changes or {}
    prices, tiers = base, []
    for threshold in sorted(set(tier_changes) | set(fallback_changes)):
        prices = prices.with_changes({**fallback_changes.get(threshold, {}), **tier_changes.get(threshold, {})})
        tiers.append(ThresholdTier(threshold, prices))
    return PriceSchedule(base, tuple(tiers))


@dataclass(frozen=True)
class OffPeakWindow:
    start: dt.time
    end: dt.time
    weekdays: frozenset[int] | None = None

    def contains(self, clock: dt.time) -> bool:
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= clock < self.end
        return clock >= self.start or clock < self.end  # crosses midnight


@dataclass(frozen=True)
class OffPeakPrices:
    """Time-of-day prices: while any window is open they replace the prices of the kinds in `changes`."""

    windows: tuple[OffPeakWindow, ...]
    changes: Mapping[str, Decimal]
    timezone: str = "UTC"
    weekday_timezone: str | None = None

    def is_open(self, at: dt.datetime) -> bool:
        local = at.astimezone(_zone(self.timezone))
        clock = local.time().replace(tzinfo=None)
        weekday = (at.astimezone(_zone(self.weekday_timezone)) if self.weekday_timezone else local).isoweekday()
        return any((w.weekdays is None or weekday in w.weekdays) and w.contains(clock) for w in self.windows)


_ZONES: dict[str, dt.tzinfo] = {}


def _zone(name: str) -> dt.tzinfo:
    zone = _ZONES.get(name)
    if zone is None:
        zone = _ZONES[name] = dt.timezone.utc if name.upper() == "UTC" else ZoneInfo(name)
    return zone


@dataclass(frozen=True)
class CatalogEntry:
    provider: str
    model: str
    effective_from: dt.datetime
    prices: TokenPrices
    """The standard prices below every threshold."""
    mode: str = "chat"
    source: str = "prismops"
    tiers: tuple[ThresholdTier, ...] = ()
    """Standard threshold tiers."""
    service_tiers: Mapping[str, PriceSchedule] = field(default_factory=dict)
    """Every other service tier's schedule, complete."""
    off_peak: OffPeakPrices | None = None
    source_key: str | None = None
    """The entry's name in the file it came from (LiteLLM: the map key)."""

    @property
    def standard(self) -> PriceSchedule:
        return PriceSchedule(self.prices, self.tiers)

    def schedule(self, service_tier: str) -> PriceSchedule | None:
        return self.standard if service_tier == STANDARD else self.service_tiers.get(service_tier)


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
    """The prices that apply to one call (before its token counts pick a threshold tier), and where they came
    from."""

    provider: str
    model: str
    prices: TokenPrices
    """Below every threshold."""
    price_version: str
    effective_from: dt.datetime
    override: str | None = None
    tiers: tuple[ThresholdTier, ...] = ()
    service_tier: str = STANDARD
    """The service tier priced."""
    service_tier_requested: str | None = None
    """Set when the call asked for a service tier this entry has no prices for (then `standard` is priced)."""
    off_peak: bool = False

    @property
    def schedule(self) -> PriceSchedule:
        return PriceSchedule(self.prices, self.tiers)


@dataclass(frozen=True)
class CostBreakdown:
    quote: PriceQuote | None
    components: Mapping[str, Decimal]
    cost_usd: Decimal
    prices: TokenPrices | None = None
    """The prices the tokens were billed at (the threshold tier's, when one was crossed)."""
    above_input_tokens: int | None = None
    """The threshold crossed, None below every threshold."""

    @property
    def priced(self) -> bool:
        return self.quote is not None

    @property
    def price_version(self) -> str:
        return self.quote.price_version if self.quote else UNPRICED_VERSION

    @property
    def price_tier(self) -> dict[str, Any]:
        """Which prices applied: service tier, threshold crossed, off-peak or not."""
        if self.quote is None:
            return {}
        return {"service_tier": self.quote.service_tier, "above_input_tokens": self.above_input_tokens,
                "off_peak": self.quote.off_peak}


@dataclass(frozen=True)
class ModelLookup:
    """What a (provider, model) names in a catalog: one key, several candidates (ambiguous), or nothing."""

    key: tuple[str, str] | None
    candidates: tuple[tuple[str, str], ...] = ()

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1


@dataclass(frozen=True)
class SkippedEntry:
    entry: str
    reason: str


@dataclass(frozen=True)
class PriceCatalog:
    version: str
    entries: Mapping[tuple[str, str], tuple[CatalogEntry, ...]]
    aliases: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    overrides: Mapping[str, tuple[TenantOverride, ...]] = field(default_factory=dict)
    provider_aliases: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(PROVIDER_ALIASES))
    skipped: tuple[SkippedEntry, ...] = ()
    """Entries of the file that were not loaded, each with the reason."""
    _memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    # --- names ---------------------------------------------------------------------------------------------

    def _by_model(self) -> dict[str, tuple[tuple[str, str], ...]]:
        index = self._memo.get("by_model")
        if index is None:
            grouped: dict[str, list[tuple[str, str]]] = {}
            for key in self.entries:
                grouped.setdefault(key[1], []).append(key)
            index = self._memo["by_model"] = {name: tuple(sorted(keys)) for name, keys in grouped.items()}
        return index

    def namespaces(self) -> frozenset[str]:
        found = self._memo.get("namespaces")
        if found is None:
            found = self._memo["namespaces"] = frozenset(key[0] for key in self.entries)
        return found

    def namespaces_for(self, provider: str) -> tuple[str, ...]:
        """The catalog namespaces a provider name covers through the alias table (the name itself excluded)."""
        memo_key = ("namespaces_for", provider)
        found = self._memo.get(memo_key)
        if found is None:
            patterns = self.provider_aliases.get(provider, ())
            found = tuple(sorted(ns for ns in self.namespaces() if ns != provider
                                 and any(fnmatch.fnmatchcase(ns, p) for p in patterns)))
            self._memo[memo_key] = found
        return found

    def lookup(self, provider: str | None, model: str) -> ModelLookup:
        """(provider, model) as the catalog knows it: model aliases applied, provider aliases expanded,
        provider inferred when not given; several candidates when the name is ambiguous."""
        memo_key = ("lookup", provider, model)
        found = self._memo.get(memo_key)
        if found is None:
            found = self._memo[memo_key] = self._lookup(provider, model)
        return found

    def _lookup(self, provider: str | None, model: str) -> ModelLookup:
        name = normalize_name(model)
        wanted = normalize_name(provider) if provider else None
        if name in self.aliases:
            target = self.aliases[name]
            # an alias names one provider's model: under another provider it is as unknown as the model itself
            if not wanted or wanted == target[0] or target[0] in self.namespaces_for(wanted):
                return ModelLookup(target)
            return ModelLookup(None)
        if wanted:
            if (wanted, name) in self.entries:
                return ModelLookup((wanted, name))
            candidates = tuple((ns, name) for ns in self.namespaces_for(wanted) if (ns, name) in self.entries)
        else:
            candidates = self._by_model().get(name, ())
        if len(candidates) == 1:
            return ModelLookup(candidates[0])
        if candidates:
            return ModelLookup(None, candidates)
        route, slash, rest = name.partition("/")
        if slash and rest and (not wanted or wanted == route or route in self.namespaces_for(wanted)) and (
                route in self.namespaces() or route in self.provider_aliases):
            # LiteLLM's "provider/model" spelling: "vertex_ai/gemma-3" is vertex_ai's gemma-3
            return self._lookup(route, rest)
        return ModelLookup(None)

    def resolve(self, provider: str | None, model: str) -> tuple[str, str] | None:
        """(provider, model) as the catalog knows it, or None when unknown or ambiguous."""
        return self.lookup(provider, model).key

    def infer_provider(self, model: str) -> str | None:
        key = self.resolve(None, model)
        return key[0] if key else None

    def entry_at(self, key: tuple[str, str], at: dt.datetime) -> CatalogEntry | None:
        versions = self.entries[key]
        starts = self._memo.get(("starts", key))
        if starts is None:
            starts = self._memo[("starts", key)] = [e.effective_from for e in versions]
        index = bisect.bisect_right(starts, at) - 1
        return versions[index] if index >= 0 else None

    # --- prices --------------------------------------------------------------------------------------------

    def quote(self, provider: str | None, model: str, at: dt.datetime, tenant: str | None = None,
              service_tier: str | None = None) -> PriceQuote | None:
        """The prices of (provider, model) at `at` for this tenant and service tier, None when unknown or
        ambiguous. `service_tier` is a catalog tier name (see service_tier_name); None is standard."""
        key = self.resolve(provider, model)
        if key is None:
            return None
        entry = self.entry_at(key, at)
        if entry is None:
            return None
        tier = service_tier or STANDARD
        off_peak = entry.off_peak is not None and entry.off_peak.is_open(at)
        override = None
        for candidate in reversed(self.overrides.get(normalize_name(tenant or ""), ())):
            if candidate.matches(key[0], key[1], at):
                override = candidate
                break
        memo_key = ("quote", id(entry), tier, off_peak, id(override))
        quote = self._memo.get(memo_key)
        if quote is None:
            quote = self._memo[memo_key] = self._build_quote(entry, tier, off_peak, override)
        return quote

    def _build_quote(self, entry: CatalogEntry, tier: str, off_peak: bool,
                     override: TenantOverride | None) -> PriceQuote:
        schedule = entry.schedule(tier)
        requested = None
        if schedule is None:
            schedule, requested, tier = entry.standard, tier, STANDARD
        if off_peak and entry.off_peak is not None:
            changes = entry.off_peak.changes
            schedule = schedule.mapped(lambda prices: prices.with_changes(changes))
        note = None
        if override is not None and override.prices is not None:
            schedule, note, off_peak = PriceSchedule(override.prices), f"{override.tenant}: negotiated prices", False
        elif override is not None:
            factor = (Decimal(100) - override.discount_pct) / Decimal(100)  # type: ignore[operator]
            schedule = schedule.mapped(lambda prices: prices.scaled(factor))
            note = f"{override.tenant}: {override.discount_pct}% discount"
        return PriceQuote(entry.provider, entry.model, schedule.base, self.version, entry.effective_from, note,
                          schedule.tiers, tier, requested, off_peak)

    def with_overrides(self, overrides: Iterable[TenantOverride]) -> "PriceCatalog":
        grouped: dict[str, list[TenantOverride]] = {k: list(v) for k, v in self.overrides.items()}
        for override in overrides:
            grouped.setdefault(override.tenant, []).append(override)
        return replace(self, overrides={k: tuple(sorted(v, key=lambda o: o.effective_from)) for k, v in grouped.items()},
                       _memo={})


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
    prices, threshold = quote.schedule.for_prompt(input_tokens) if quote.tiers else (quote.prices, None)
    p = prices.per_token()
    components = {
        "input": (input_tokens - cached_input_tokens - cache_write_tokens) * p["input"],
        "cache_read": cached_input_tokens * p["cache_read"],
        "cache_write": cache_write_tokens * p["cache_write"],
        "output": (output_tokens - reasoning_tokens) * p["output"],
        "reasoning": reasoning_tokens * p["reasoning"],
    }
    total = sum(components.values(), Decimal(0))
    return CostBreakdown(quote, components, total.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN), prices, threshold)


def price_llm_call(event: Mapping[str, Any], catalog: PriceCatalog) -> CostBreakdown:
    """Price one decoded LLM usage event at its event_time, with its tenant's overrides and service tier
    (`service_tier`, a catalog tier name; absent: standard)."""
    return price_llm_call_as(event, catalog, event.get("provider"), event.get("tenant"), event.get("service_tier"))


def price_llm_call_as(event: Mapping[str, Any], catalog: PriceCatalog, provider: str | None, tenant: str | None,
                      service_tier: str | None) -> CostBreakdown:
    """price_llm_call with the provider, tenant and service tier given apart from the event (the pricing stage
    has them from tagging), so the event is not copied to carry them."""
    quote = catalog.quote(provider, event["model"], event["event_time"], tenant, service_tier)
    return price_tokens(
        quote,
        input_tokens=event["input_tokens"],
        output_tokens=event["output_tokens"],
        cached_input_tokens=event.get("cached_input_tokens") or 0,
        cache_write_tokens=event.get("cache_write_tokens") or 0,
        reasoning_tokens=event.get("reasoning_tokens") or 0,
    )


# --- reading catalogs ----------------------------------------------------------------------------------------

def _decimal(value: Any, where: str, name: str, optional: bool = False) -> Decimal | None:
    if value is None:
        if optional:
            return None
        raise CatalogError("is required", entry=where, field=name, rule="required")
    if isinstance(value, float):
        raise CatalogError("must be written as a decimal string, not a float", entry=where, field=name,
                           rule="decimal_string")
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise CatalogError(f"{value!r} is not a decimal number", entry=where, field=name, rule="decimal")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise CatalogError(f"{value!r} is not a decimal number", entry=where, field=name, rule="decimal") from None
    if not number.is_finite() or number < 0:
        raise CatalogError("must be a finite number >= 0", entry=where, field=name, rule="non_negative")
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
            raise CatalogError(f"{value!r} is not an ISO-8601 date or time", entry=where, field="effective_from",
                               rule="iso_8601") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _threshold(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CatalogError(f"must be a whole number of tokens >= 0, got {value!r}", entry=where,
                           field="above_input_tokens", rule="threshold")
    return value


_PER_MTOK_FIELDS = {"input": "input_per_mtok", "output": "output_per_mtok", "cache_read": "cache_read_per_mtok",
                    "cache_write": "cache_write_per_mtok", "reasoning": "reasoning_per_mtok"}
_MODEL_FIELDS = {"provider", "model", "effective_from", "mode", "note", "source", "tiers", "service_tiers", "off_peak",
                 *_PER_MTOK_FIELDS.values()}


def _mapping(value: Any, where: str, name: str | None = None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CatalogError(f"must be a mapping, not {type(value).__name__}", entry=where, field=name, rule="mapping")
    return value


def _per_million_changes(raw: Mapping[str, Any], where: str) -> dict[str, Decimal]:
    """The per-million prices an entry, tier or block gives, as USD per token."""
    changes = {}
    for kind, name in _PER_MTOK_FIELDS.items():
        value = _decimal(raw.get(name), where, name, optional=True)
        if value is not None:
            changes[kind] = value / PER_MILLION
    return changes


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


def _tier_changes(items: Any, where: str) -> dict[int, dict[str, Decimal]]:
    if items is None:
        return {}
    if not isinstance(items, list):
        raise CatalogError("must be a list of {above_input_tokens, <kind>_per_mtok...}", entry=where,
                           field="tiers", rule="list")
    tiers: dict[int, dict[str, Decimal]] = {}
    for index, raw in enumerate(items):
        here = f"{where} tiers[{index}]"
        raw = _mapping(raw, here)
        unknown = set(raw) - {"above_input_tokens", *_PER_MTOK_FIELDS.values()}
        if unknown:
            raise CatalogError(f"{', '.join(sorted(map(str, unknown)))} is not a tier field", entry=here,
                               rule="known_field")
        threshold = _threshold(raw.get("above_input_tokens"), here)
        if threshold in tiers:
            raise CatalogError(f"two tiers above {threshold} input tokens", entry=here, field="above_input_tokens",
                               rule="unique_threshold")
        tiers[threshold] = _per_million_changes(raw, here)
        if not tiers[threshold]:
            raise CatalogError("a tier must give at least one <kind>_per_mtok price", entry=here, rule="tier_prices")
    return tiers


def _window(text: Any, where: str, weekdays: frozenset[int] | None) -> OffPeakWindow:
    try:
        start_text, end_text = str(text).split("-")
        start = dt.datetime.strptime(start_text.strip(), "%H:%M").time()
        end = dt.datetime.strptime(end_text.strip(), "%H:%M").time()
    except ValueError:
        raise CatalogError(f"{text!r} is not a window HH:MM-HH:MM", entry=where, field="hours",
                           rule="window") from None
    return OffPeakWindow(start, end, weekdays)


_WEEKDAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}


def _weekdays(value: Any, where: str) -> frozenset[int] | None:
    if value is None:
        return None
    days = set()
    for day in value if isinstance(value, list) else [value]:
        if isinstance(day, int) and not isinstance(day, bool) and 1 <= day <= 7:
            days.add(day)
        elif isinstance(day, str) and day.strip().lower()[:3] in _WEEKDAYS:
            days.add(_WEEKDAYS[day.strip().lower()[:3]])
        else:
            raise CatalogError(f"{day!r} is not a weekday (1 = Monday ... 7 = Sunday, or mon ... sun)", entry=where,
                               field="weekdays", rule="weekday")
    return frozenset(days)


def _zone_name(value: Any, where: str, name: str) -> str:
    text = str(value).strip()
    try:
        _zone(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise CatalogError(f"{value!r} is not an IANA time zone", entry=where, field=name, rule="time_zone") from None
    return text


def _off_peak(raw: Any, where: str) -> OffPeakPrices | None:
    """Our format: {timezone, weekday_timezone?, windows: [{hours: "HH:MM-HH:MM" | [...], weekdays?}],
    <kind>_per_mtok...}."""
    if raw is None:
        return None
    here = f"{where} off_peak"
    raw = _mapping(raw, here)
    unknown = set(raw) - {"timezone", "weekday_timezone", "windows", *_PER_MTOK_FIELDS.values()}
    if unknown:
        raise CatalogError(f"{', '.join(sorted(map(str, unknown)))} is not an off_peak field", entry=here,
                           rule="known_field")
    windows = []
    items = raw.get("windows")
    if not isinstance(items, list) or not items:
        raise CatalogError("must list at least one window", entry=here, field="windows", rule="required")
    for index, item in enumerate(items):
        spot = f"{here} windows[{index}]"
        item = {"hours": item} if isinstance(item, str) else _mapping(item, spot)
        days = _weekdays(item.get("weekdays"), spot)
        hours = item.get("hours")
        for text in hours if isinstance(hours, list) else [hours]:
            windows.append(_window(text, spot, days))
    changes = _per_million_changes(raw, here)
    if not changes:
        raise CatalogError("must give at least one <kind>_per_mtok price", entry=here, rule="tier_prices")
    zone = _zone_name(raw.get("timezone", "UTC"), here, "timezone")
    weekday_zone = raw.get("weekday_timezone")
    return OffPeakPrices(tuple(windows), changes, zone,
                         _zone_name(weekday_zone, here, "weekday_timezone") if weekday_zone is not None else None)


def _service_tier_schedule(base: TokenPrices, standard_tiers: Mapping[int, Mapping[str, Decimal]],
                           changes: Mapping[str, Decimal], tier_changes: Mapping[int, Mapping[str, Decimal]]
                           ) -> PriceSchedule:
    """A service tier over the standard prices (see the module docstring, step 2 and 3)."""
    if "output" in changes and "reasoning" not in changes:
        changes = {**changes, "reasoning": None}  # its own output price bills its reasoning too
    return build_schedule(replace(base, **changes), tier_changes, standard_tiers)


def _model_entry(raw: Any, index: int) -> CatalogEntry:
    if not isinstance(raw, Mapping):
        raise CatalogError(f"must be a mapping, not {type(raw).__name__}", entry=f"models[{index}]", rule="mapping")
    where = f"models[{index}] {raw.get('provider')}/{raw.get('model')}"
    if not raw.get("provider") or not raw.get("model"):
        raise CatalogError("provider and model are required", entry=where, rule="required")
    unknown = set(raw) - _MODEL_FIELDS
    if unknown:
        raise CatalogError(f"{', '.join(sorted(map(str, unknown)))} is not a catalog field", entry=where,
                           rule="known_field")
    base = _per_million_prices(raw, where)
    standard_tiers = _tier_changes(raw.get("tiers"), where)
    service_tiers = {}
    for name, block in _mapping(raw.get("service_tiers") or {}, where, "service_tiers").items():
        here = f"{where} service_tiers.{name}"
        try:
            tier = service_tier_name(str(name))
        except ValueError as exc:
            raise CatalogError(str(exc), entry=here, rule="known_service_tier") from None
        if tier == STANDARD:
            raise CatalogError("the standard prices are the entry's own", entry=here, rule="known_service_tier")
        block = _mapping(block, here)
        unknown = set(block) - {"tiers", *_PER_MTOK_FIELDS.values()}
        if unknown:
            raise CatalogError(f"{', '.join(sorted(map(str, unknown)))} is not a service tier field", entry=here,
                               rule="known_field")
        service_tiers[tier] = _service_tier_schedule(base, standard_tiers, _per_million_changes(block, here),
                                                     _tier_changes(block.get("tiers"), here))
    standard = build_schedule(base, standard_tiers)
    return CatalogEntry(
        provider=normalize_name(str(raw["provider"])), model=normalize_name(str(raw["model"])),
        effective_from=_timestamp(raw.get("effective_from"), where), prices=base, mode=str(raw.get("mode", "chat")),
        tiers=standard.tiers, service_tiers=service_tiers, off_peak=_off_peak(raw.get("off_peak"), where),
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
            raise CatalogError("two entries take effect at the same moment", entry=f"{key[0]}/{key[1]}",
                               rule="unique_effective_from")
        result[key] = tuple(versions)
    return result


def _provider_aliases(raw: Any) -> dict[str, tuple[str, ...]]:
    aliases = dict(PROVIDER_ALIASES)
    for name, targets in _mapping(raw or {}, "provider_aliases").items():
        items = targets if isinstance(targets, list) else [targets]
        if not items or not all(isinstance(t, str) and t.strip() for t in items):
            raise CatalogError("must name one namespace or a list of them", entry=f"provider_aliases.{name}",
                               rule="namespaces")
        aliases[normalize_name(str(name))] = tuple(normalize_name(t) for t in items)
    return aliases


def parse_catalog(document: Mapping[str, Any]) -> PriceCatalog:
    """Our YAML format: USD per million tokens, effective-dated entries with threshold tiers, service tiers and
    off-peak prices, model aliases, provider aliases, tenant overrides."""
    document = _mapping(document, "catalog")
    models = document.get("models") or []
    if not isinstance(models, list):
        raise CatalogError("must be a list of entries", entry="models", rule="list")
    grouped = _group(_model_entry(raw, index) for index, raw in enumerate(models))
    aliases = {}
    for alias, target in _mapping(document.get("aliases") or {}, "aliases").items():
        provider, _, model = str(target).partition("/")
        key = (normalize_name(provider), normalize_name(model))
        if key not in grouped:
            raise CatalogError(f"{alias} points to {target}, which is not in the catalog", entry="aliases",
                               rule="alias_target")
        aliases[normalize_name(str(alias))] = key
    catalog = PriceCatalog(version=str(document.get("version") or "unversioned"), entries=grouped, aliases=aliases,
                           provider_aliases=_provider_aliases(document.get("provider_aliases")))
    overrides = document.get("tenant_overrides") or []
    if not isinstance(overrides, list):
        raise CatalogError("must be a list", entry="tenant_overrides", rule="list")
    return catalog.with_overrides(parse_tenant_overrides(overrides))


def parse_tenant_overrides(items: Iterable[Mapping[str, Any]]) -> list[TenantOverride]:
    overrides = []
    for index, raw in enumerate(items):
        raw = _mapping(raw, f"tenant_overrides[{index}]")
        where = f"tenant_overrides[{index}] {raw.get('tenant')}"
        if not raw.get("tenant"):
            raise CatalogError("tenant is required", entry=where, rule="required")
        discount = _decimal(raw.get("discount_pct"), where, "discount_pct", optional=True)
        has_prices = "input_per_mtok" in raw
        if (discount is None) == (not has_prices):
            raise CatalogError("give either discount_pct or prices (input_per_mtok, output_per_mtok, …)", entry=where,
                               rule="discount_or_prices")
        if discount is not None and discount > 100:
            raise CatalogError("must be between 0 and 100", entry=where, field="discount_pct", rule="percentage")
        overrides.append(TenantOverride(
            tenant=normalize_name(str(raw["tenant"])),
            provider=normalize_name(str(raw.get("provider", "*"))),
            model=normalize_name(str(raw.get("model", "*"))),
            effective_from=_timestamp(raw.get("effective_from"), where),
            discount_pct=discount,
            prices=_per_million_prices(raw, where) if has_prices else None,
        ))
    return overrides


# --- LiteLLM's price map -------------------------------------------------------------------------------------

def _route_matches(route: str, provider: str) -> bool:
    """Whether a key's first path segment is the entry's provider route ("vertex_ai/" for
    "vertex_ai-anthropic_models", "bedrock/" for "bedrock_converse", "amazon-nova/" for "amazon_nova")."""
    a, b = route.replace("_", "-"), provider.replace("_", "-")
    return a == b or b.startswith(a + "-")


def litellm_model_name(key: str, provider: str) -> str:
    """The model name of a LiteLLM map key inside its provider's namespace: the provider route prefix is
    dropped ("gemini/gemini-2.5-pro" → "gemini-2.5-pro"); any other path is part of the name
    ("bedrock/us-east-1/anthropic.claude-3" → "us-east-1/anthropic.claude-3")."""
    route, slash, rest = key.partition("/")
    return rest if slash and rest and _route_matches(normalize_name(route), provider) else key


def _litellm_price(raw: Mapping[str, Any], key: str, where: str) -> Decimal | None:
    return _decimal(raw.get(key), where, key, optional=True)


def _litellm_prices(raw: Mapping[str, Any], where: str, suffix: str = "") -> dict[str, Decimal]:
    found = {}
    for key, kind in _LITELLM_KIND.items():
        value = _litellm_price(raw, key + suffix, where)
        if value is not None:
            found[kind] = value
    return found


def _litellm_thresholds(raw: Mapping[str, Any], where: str, inclusive: bool
                        ) -> dict[str | None, dict[int, dict[str, Decimal]]]:
    """Threshold-tier prices per service tier suffix (None: standard) from `<kind>_above_<N>[k]_tokens[_<tier>]`."""
    found: dict[str | None, dict[int, dict[str, Decimal]]] = {}
    for key in raw:
        match = _THRESHOLD_KEY.match(key)
        if not match:
            continue
        value = _litellm_price(raw, key, where)
        if value is None:
            continue
        threshold = int(match[2]) * (1000 if match[3] else 1)
        if inclusive:  # billed once the prompt reaches N: "above N - 1" for whole tokens
            threshold -= 1
        found.setdefault(match[4], {}).setdefault(threshold, {})[_LITELLM_KIND[match[1]]] = value
    return found


def _litellm_tiered_pricing(raw: Mapping[str, Any], where: str) -> tuple[TokenPrices, dict[int, dict[str, Decimal]]]:
    """Range tiers (`tiered_pricing`, e.g. Dashscope): `range_start < input_tokens <= range_end` bills the whole
    call at that tier; as thresholds, each tier applies above its range start. A tier's missing cache prices
    are its input price, a missing output price the model's."""
    items = raw["tiered_pricing"]
    if not isinstance(items, list) or not items:
        raise CatalogError("must be a non-empty list", entry=where, field="tiered_pricing", rule="list")
    ranged = []
    for index, tier in enumerate(items):
        here = f"{where} tiered_pricing[{index}]"
        tier = _mapping(tier, here)
        bounds = tier.get("range")
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise CatalogError(f"{bounds!r} is not [start, end]", entry=here, field="range", rule="range")
        start = _decimal(bounds[0], here, "range")
        prices = _litellm_prices(tier, here)
        if "input" not in prices:
            raise CatalogError("is required", entry=here, field="input_cost_per_token", rule="required")
        model_output = _litellm_price(raw, "output_cost_per_token", where)
        ranged.append((int(start), TokenPrices(  # type: ignore[arg-type]
            input=prices["input"],
            output=prices.get("output", model_output if model_output is not None else Decimal(0)),
            cache_read=prices.get("cache_read", prices["input"]),
            cache_write=prices.get("cache_write", prices["input"]),
            reasoning=prices.get("reasoning", None if "output" in prices else
                                 _litellm_price(raw, "output_cost_per_reasoning_token", where)),
        )))
    ranged.sort(key=lambda item: item[0])
    base = ranged[0][1]
    tiers = {start: {k: getattr(p, k) for k in KINDS} for start, p in ranged[1:]}
    return base, tiers


def _litellm_off_peak(raw: Any, where: str) -> OffPeakPrices:
    here = f"{where} off_peak_pricing"
    raw = _mapping(raw, here)
    windows: list[OffPeakWindow] = []

    def add(hours: Any, days: frozenset[int] | None, spot: str) -> None:
        for text in hours if isinstance(hours, list) else [hours]:
            windows.append(_window(text, spot, days))

    if raw.get("hours_utc") is not None:
        add(raw["hours_utc"], None, here)
    for index, rule in enumerate(raw.get("windows") or []):
        spot = f"{here} windows[{index}]"
        rule = _mapping(rule, spot)
        add(rule.get("hours_utc"), _weekdays(rule.get("weekdays"), spot), spot)
    if not windows:
        raise CatalogError("names no window (hours_utc or windows)", entry=here, rule="required")
    changes = _litellm_prices(raw, here)
    weekday_zone = raw.get("weekday_timezone")
    return OffPeakPrices(tuple(windows), changes, "UTC",
                         _zone_name(weekday_zone, here, "weekday_timezone") if weekday_zone else None)


def _litellm_batch_schedule(raw: Mapping[str, Any], standard: TokenPrices, std_tiers: Mapping[int, Mapping[str, Decimal]],
                            own_tiers: Mapping[int, Mapping[str, Decimal]], where: str) -> PriceSchedule:
    """LiteLLM's batch rule (cost_calculator.batch_cost_calculator): the `_batches` prices; a missing batch
    output price is half the standard one; a missing batch cache-read price is the standard (threshold-tiered)
    cache-read price; cache writes without a batch price, and reasoning, cost the batch input/output price;
    above a threshold a kind without a batch tier price keeps its flat batch price."""
    own = _litellm_prices(raw, where, "_batches")
    output = own.get("output", standard.output / 2)
    base = TokenPrices(input=own["input"], output=output, cache_read=own.get("cache_read", standard.cache_read),
                       cache_write=own.get("cache_write"), reasoning=None)
    fallback = {} if "cache_read" in own else {
        t: {"cache_read": c["cache_read"]} for t, c in std_tiers.items() if "cache_read" in c}
    tiers = {t: {k: v for k, v in c.items() if k != "reasoning"} for t, c in own_tiers.items()}
    return build_schedule(base, tiers, fallback)


def _litellm_entry(name: str, raw: Mapping[str, Any]) -> CatalogEntry:
    where = name
    provider = raw.get("litellm_provider")
    if not provider:
        raise CatalogError("is required", entry=where, field="litellm_provider", rule="required")
    provider = normalize_name(str(provider))
    inclusive = provider == "xai"
    thresholds = _litellm_thresholds(raw, where, inclusive)
    std_tiers = thresholds.get(None, {})
    if raw.get("tiered_pricing") is not None:
        base, std_tiers = _litellm_tiered_pricing(raw, where)
    else:
        base = TokenPrices(
            input=_decimal(raw.get("input_cost_per_token"), where, "input_cost_per_token"),  # type: ignore[arg-type]
            output=_decimal(raw.get("output_cost_per_token", 0), where, "output_cost_per_token"),  # type: ignore[arg-type]
            cache_read=_litellm_price(raw, "cache_read_input_token_cost", where),
            cache_write=_litellm_price(raw, "cache_creation_input_token_cost", where),
            reasoning=_litellm_price(raw, "output_cost_per_reasoning_token", where),
        )
    standard = build_schedule(base, std_tiers)
    service_tiers: dict[str, PriceSchedule] = {}
    suffixes = {m[2] for key in raw if (m := _SERVICE_TIER_KEY.match(key)) and raw.get(key) is not None}
    for suffix in sorted(suffixes):
        tier = _LITELLM_SERVICE_TIER[suffix]
        if suffix == "batches":
            if raw.get("input_cost_per_token_batches") is not None:
                service_tiers[tier] = _litellm_batch_schedule(raw, base, std_tiers, thresholds.get(suffix, {}), where)
            continue
        service_tiers[tier] = _service_tier_schedule(base, std_tiers, _litellm_prices(raw, where, f"_{suffix}"),
                                                     thresholds.get(suffix, {}))
    off_peak = raw.get("off_peak_pricing")
    return CatalogEntry(
        provider=provider, model=normalize_name(litellm_model_name(name, provider)), effective_from=EPOCH,
        prices=base, mode=str(raw.get("mode", "chat")), source="litellm", tiers=standard.tiers,
        service_tiers=service_tiers, off_peak=_litellm_off_peak(off_peak, where) if off_peak is not None else None,
        source_key=name,
    )


def _token_priced(raw: Mapping[str, Any]) -> bool:
    tiers = raw.get("tiered_pricing")
    return raw.get("input_cost_per_token") is not None or (
        isinstance(tiers, list) and any(isinstance(t, Mapping) and "input_cost_per_token" in t for t in tiers))


def parse_litellm_prices(document: Mapping[str, Any], version: str) -> PriceCatalog:
    """LiteLLM's model_prices_and_context_window.json: USD per token, no dates (effective since forever).

    Parse the JSON with parse_float=Decimal so '2.5e-06' stays exact. Each entry lands in its own provider's
    namespace (`litellm_provider`), the provider route prefix dropped from its name. Not loaded, and listed
    in `PriceCatalog.skipped` with the reason: `sample_spec`, entries without token prices (image, audio-per-
    second, search ... models), and the second spelling of one (provider, model): LiteLLM itself looks up
    "<provider>/<model>" before "<model>", so the prefixed spelling wins.
    """
    if not isinstance(document, Mapping):
        raise CatalogError(f"the catalog must be an object of model entries, not a {type(document).__name__}",
                           rule="top_level_object")
    entries: dict[tuple[str, str], CatalogEntry] = {}
    skipped: list[SkippedEntry] = []
    for name, raw in document.items():
        if name == "sample_spec":
            skipped.append(SkippedEntry(name, "the format's own documentation, not a model"))
            continue
        if not isinstance(raw, Mapping):
            skipped.append(SkippedEntry(name, f"not an object ({type(raw).__name__})"))
            continue
        if not _token_priced(raw):
            skipped.append(SkippedEntry(name, f"no per-token prices (mode {raw.get('mode', '?')}): priced per "
                                              "image, pixel, second, character or query, which PrismOps does not read"))
            continue
        entry = _litellm_entry(name, raw)
        key = (entry.provider, entry.model)
        other = entries.get(key)
        if other is not None:
            keep, drop = (entry, other) if "/" in name and "/" not in (other.source_key or "") else (other, entry)
            same = keep.standard == drop.standard and keep.service_tiers == drop.service_tiers and keep.off_peak == drop.off_peak
            skipped.append(SkippedEntry(drop.source_key or "?", f"another spelling of {keep.source_key} ({key[0]}/{key[1]}); "
                                        + ("same prices" if same else "its prices differ; LiteLLM uses "
                                           f"{keep.source_key}'s")))
            entries[key] = keep
            continue
        entries[key] = entry
    return PriceCatalog(version=version, entries=_group(entries.values()), skipped=tuple(skipped))


# --- files ---------------------------------------------------------------------------------------------------

def _yaml_document(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CatalogError(f"is not valid YAML: {problem}", entry=where, rule="yaml_syntax", file=source) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CatalogError("is not UTF-8 text", rule="utf8", file=str(path)) from None
    except OSError as exc:
        raise CatalogError(f"cannot be read: {exc.strerror or exc}", rule="readable", file=str(path)) from None


def load_catalog_file(path: Path) -> PriceCatalog:
    """One catalog file: our YAML or (.json) LiteLLM's price map. Every error is a CatalogError naming the
    file."""
    try:
        if path.suffix.lower() == ".json":
            text = _read_text(path)
            try:
                document = json.loads(text, parse_float=Decimal)
            except json.JSONDecodeError as exc:
                raise CatalogError(f"is not valid JSON: {exc.msg}", entry=f"line {exc.lineno} column {exc.colno}",
                                   rule="json_syntax") from None
            digest = hashlib.sha256(text.encode()).hexdigest()[:12]
            return parse_litellm_prices(document, version=f"litellm-{digest}")
        document = _yaml_document(_read_text(path), str(path))
        if not isinstance(document, Mapping):
            raise CatalogError(f"the catalog must be a mapping with models:, not {type(document).__name__}",
                               rule="top_level_mapping")
        return parse_catalog(document)
    except CatalogError as exc:
        raise (exc if exc.file else exc.in_file(path)) from None
    except RecursionError:
        raise CatalogError("is nested too deeply", rule="depth", file=str(path)) from None


def load_catalog(path: Path | None = None, tenant_overrides: Path | None = None) -> PriceCatalog:
    """Our YAML (default: the bundled catalog) or, for a .json file, LiteLLM's price map; plus overrides."""
    if path is None:
        bundled = "finops/price_catalog.yaml"
        try:
            catalog = parse_catalog(_yaml_document(
                resources.files("prismops.finops").joinpath("price_catalog.yaml").read_text(), bundled))
        except CatalogError as exc:
            raise (exc if exc.file else exc.in_file(bundled)) from None
    else:
        catalog = load_catalog_file(Path(path))
    if tenant_overrides is not None:
        path = Path(tenant_overrides)
        document = _yaml_document(_read_text(path), str(path)) or {}
        try:
            items = _mapping(document, "overrides file").get("tenant_overrides") or []
            if not isinstance(items, list):
                raise CatalogError("must be a list", entry="tenant_overrides", rule="list")
            catalog = catalog.with_overrides(parse_tenant_overrides(items))
        except CatalogError as exc:
            raise (exc if exc.file else exc.in_file(path)) from None
    return catalog
