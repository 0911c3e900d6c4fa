"""finops/pricing.py: the effective-dated price catalog, tenant overrides, LiteLLM's format, exact costs.

Every expected cost is computed here from the numbers in the YAML/JSON files (or by hand), never taken from
the code under test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from prismops.finops.pricing import (
    UNPRICED_VERSION,
    CatalogError,
    PriceCatalog,
    TokenPrices,
    load_catalog,
    parse_catalog,
    parse_litellm_prices,
    price_llm_call,
    price_tokens,
)

UTC = dt.timezone.utc
MILLION = Decimal(1_000_000)
TWELVE_PLACES = Decimal("1e-12")
BUNDLED = yaml.safe_load(resources.files("prismops.finops").joinpath("price_catalog.yaml").read_text())
CATALOG = load_catalog()
LITELLM_EXCERPT = Path(__file__).resolve().parents[1] / "fixtures" / "litellm" / "model_prices_excerpt.json"
KINDS = ("input", "cache_read", "cache_write", "output", "reasoning")


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


def usage(input_tokens: int = 0, output_tokens: int = 0, cached: int = 0, write: int = 0, reasoning: int = 0) -> dict:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "cached_input_tokens": cached,
            "cache_write_tokens": write, "reasoning_tokens": reasoning}


def call(provider: str | None, model: str, when: dt.datetime, tenant: str | None = None,
         tokens: dict | None = None, **short: int) -> dict:
    """An event as price_llm_call reads it: token counts from a usage() dict or usage()'s keywords."""
    return {"provider": provider, "model": model, "event_time": when, "tenant": tenant, **(tokens or usage(**short))}


def yaml_entries(provider: str, model: str) -> list[dict]:
    return sorted((e for e in BUNDLED["models"] if (e["provider"], e["model"]) == (provider, model)),
                  key=lambda e: str(e["effective_from"]))


def expected_from_yaml(entry: dict, tokens: dict, factor: Decimal = Decimal(1)) -> Decimal:
    """The documented formula, with the documented fallbacks, on the per-million numbers as written."""
    def rate(name: str, fallback: str) -> Decimal:
        return Decimal(str(entry.get(name, entry[fallback])))

    exact = (
        (tokens["input_tokens"] - tokens["cached_input_tokens"] - tokens["cache_write_tokens"]) * rate("input_per_mtok", "input_per_mtok")
        + tokens["cached_input_tokens"] * rate("cache_read_per_mtok", "input_per_mtok")
        + tokens["cache_write_tokens"] * rate("cache_write_per_mtok", "input_per_mtok")
        + (tokens["output_tokens"] - tokens["reasoning_tokens"]) * rate("output_per_mtok", "output_per_mtok")
        + tokens["reasoning_tokens"] * rate("reasoning_per_mtok", "output_per_mtok")
    ) / MILLION
    return exact * factor


def catalog_of(*models: dict, aliases: dict | None = None, overrides: list | None = None) -> PriceCatalog:
    return parse_catalog({"version": "test-v1", "models": list(models), "aliases": aliases or {},
                          "tenant_overrides": overrides or []})


def model(name: str = "m", provider: str = "acme-ai", effective_from: str = "2025-01-01", **prices: Any) -> dict:
    return {"provider": provider, "model": name, "effective_from": effective_from,
            "input_per_mtok": "1", "output_per_mtok": "2", **prices}


# --- effective dating ----------------------------------------------------------------------------------------

def test_the_bundled_catalog_has_two_gpt_4o_entries():
    first, second = yaml_entries("openai", "gpt-4o")
    assert str(first["effective_from"]) < str(second["effective_from"])
    assert Decimal(first["input_per_mtok"]) != Decimal(second["input_per_mtok"])


def test_gpt_4o_in_mid_2024_uses_the_first_entry():
    first, _ = yaml_entries("openai", "gpt-4o")
    tokens = usage(1000, 500, cached=200)
    priced = price_llm_call(call("openai", "gpt-4o", at(2024, 6, 1), tokens=tokens), CATALOG)
    assert priced.cost_usd == expected_from_yaml(first, tokens)
    # by hand: the first entry has no cache price, so all 1000 input tokens at $5/M, 500 output at $15/M
    assert priced.cost_usd == Decimal("0.005") + Decimal("0.0075")
    assert priced.quote.effective_from == at(2024, 5, 13)


def test_gpt_4o_in_2025_uses_the_second_entry():
    _, second = yaml_entries("openai", "gpt-4o")
    tokens = usage(1000, 500, cached=200)
    priced = price_llm_call(call("openai", "gpt-4o", at(2025, 3, 1), tokens=tokens), CATALOG)
    assert priced.cost_usd == expected_from_yaml(second, tokens)
    assert priced.cost_usd == Decimal("0.00725")  # 800 × 2.5/M + 200 × 1.25/M + 500 × 10/M by hand
    assert priced.quote.effective_from == at(2024, 10, 1)
    assert priced.price_version == BUNDLED["version"]


def test_an_entry_applies_from_its_first_instant():
    first, second = yaml_entries("openai", "gpt-4o")
    tokens = usage(1000, 0)
    boundary = at(2024, 10, 1)
    assert price_llm_call(call("openai", "gpt-4o", boundary, tokens=tokens), CATALOG).cost_usd == expected_from_yaml(second, tokens)
    just_before = boundary - dt.timedelta(microseconds=1)
    assert price_llm_call(call("openai", "gpt-4o", just_before, tokens=tokens), CATALOG).cost_usd == expected_from_yaml(first, tokens)


def test_before_the_first_entry_the_call_is_unpriced():
    before = at(2024, 5, 13) - dt.timedelta(seconds=1)
    assert CATALOG.quote("openai", "gpt-4o", before) is None
    priced = price_llm_call(call("openai", "gpt-4o", before, input_tokens=1000, output_tokens=500), CATALOG)
    assert priced.priced is False
    assert priced.cost_usd == 0
    assert priced.price_version == "unpriced"


def test_entries_may_be_listed_in_any_order():
    catalog = catalog_of(model(effective_from="2026-01-01", input_per_mtok="3"),
                         model(effective_from="2025-01-01", input_per_mtok="1"))
    assert catalog.quote("acme-ai", "m", at(2025, 6, 1)).prices.input == Decimal(1) / MILLION
    assert catalog.quote("acme-ai", "m", at(2026, 6, 1)).prices.input == Decimal(3) / MILLION


def test_effective_from_may_be_a_yaml_date_or_a_time_with_zone():
    catalog = parse_catalog(yaml.safe_load(
        "models:\n"
        "  - {provider: p, model: m, effective_from: 2025-01-01, input_per_mtok: '1', output_per_mtok: '1'}\n"
        "  - {provider: p, model: m, effective_from: '2025-06-01T12:00:00+02:00', input_per_mtok: '2', output_per_mtok: '1'}\n"
    ))
    assert catalog.quote("p", "m", at(2025, 1, 1)).prices.input == Decimal(1) / MILLION
    assert catalog.quote("p", "m", at(2025, 6, 1, 9, 59)).prices.input == Decimal(1) / MILLION
    assert catalog.quote("p", "m", at(2025, 6, 1, 10, 0)).prices.input == Decimal(2) / MILLION


def test_an_entry_without_effective_from_applies_since_forever():
    catalog = parse_catalog({"models": [{"provider": "p", "model": "m", "input_per_mtok": "1", "output_per_mtok": "1"}]})
    assert catalog.quote("p", "m", dt.datetime(1990, 1, 1, tzinfo=UTC)) is not None


# --- every bundled model, every token kind -------------------------------------------------------------------

def _latest_bundled_entries() -> list[dict]:
    latest: dict[tuple[str, str], dict] = {}
    for entry in BUNDLED["models"]:
        key = (entry["provider"], entry["model"])
        if key not in latest or str(entry["effective_from"]) > str(latest[key]["effective_from"]):
            latest[key] = entry
    return list(latest.values())


@pytest.mark.parametrize("entry", _latest_bundled_entries(), ids=lambda e: f"{e['provider']}/{e['model']}")
def test_every_bundled_model_is_priced_from_its_yaml_numbers(entry):
    # below every threshold tier (the smallest is 200k), at noon UTC (outside every off-peak window)
    tokens = usage(123_457, 7_891, cached=23_456, write=1_234, reasoning=891)
    priced = price_llm_call(call(entry["provider"], entry["model"], at(2026, 6, 1, 12), tokens=tokens), CATALOG)
    assert priced.priced is True
    assert priced.cost_usd == expected_from_yaml(entry, tokens).quantize(TWELVE_PLACES)
    assert priced.cost_usd.as_tuple().exponent == -12  # always at the money scale
    assert sum(priced.components.values()) == expected_from_yaml(entry, tokens)  # components are exact


KIND_CATALOG = catalog_of(
    model("full", input_per_mtok="1", cache_read_per_mtok="0.1", cache_write_per_mtok="1.25", output_per_mtok="10",
          reasoning_per_mtok="30"),
    model("bare", input_per_mtok="2", output_per_mtok="8"),
)
M = 1_000_000


@pytest.mark.parametrize(("name", "tokens", "kind", "dollars"), [
    ("full", usage(input_tokens=M), "input", "1"),
    ("full", usage(input_tokens=M, cached=M), "cache_read", "0.1"),
    ("full", usage(input_tokens=M, write=M), "cache_write", "1.25"),
    ("full", usage(output_tokens=M), "output", "10"),
    ("full", usage(output_tokens=M, reasoning=M), "reasoning", "30"),
    # no cache prices: cache reads and writes cost the input price; no reasoning price: the output price
    ("bare", usage(input_tokens=M, cached=M), "cache_read", "2"),
    ("bare", usage(input_tokens=M, write=M), "cache_write", "2"),
    ("bare", usage(output_tokens=M, reasoning=M), "reasoning", "8"),
])
def test_each_token_kind_and_its_fallback(name, tokens, kind, dollars):
    priced = price_llm_call(call("acme-ai", name, at(2025, 6, 1), tokens=tokens), KIND_CATALOG)
    assert priced.cost_usd == Decimal(dollars)
    assert priced.components[kind] == Decimal(dollars)
    assert all(priced.components[other] == 0 for other in KINDS if other != kind)


def test_all_kinds_together():
    # 1M prompt: 300k cache reads, 200k cache writes, 500k plain; 1M output of which 400k reasoning
    tokens = usage(M, M, cached=300_000, write=200_000, reasoning=400_000)
    priced = price_llm_call(call("acme-ai", "full", at(2025, 6, 1), tokens=tokens), KIND_CATALOG)
    assert dict(priced.components) == {
        "input": Decimal("0.5"), "cache_read": Decimal("0.03"), "cache_write": Decimal("0.25"),
        "output": Decimal("6"), "reasoning": Decimal("12"),
    }
    assert priced.cost_usd == Decimal("18.78")


def test_per_million_view_applies_the_fallbacks():
    bare = KIND_CATALOG.quote("acme-ai", "bare", at(2025, 6, 1)).prices
    assert bare.per_million() == {"input": 2, "cache_read": 2, "cache_write": 2, "output": 8, "reasoning": 8}
    full = KIND_CATALOG.quote("acme-ai", "full", at(2025, 6, 1)).prices
    assert full.per_million() == {"input": 1, "cache_read": Decimal("0.1"), "cache_write": Decimal("1.25"),
                                  "output": 10, "reasoning": 30}


def test_missing_optional_token_counts_count_as_zero():
    event = {"provider": "acme-ai", "model": "full", "event_time": at(2025, 6, 1), "input_tokens": M, "output_tokens": 0}
    assert price_llm_call(event, KIND_CATALOG).cost_usd == Decimal(1)


# --- tenant overrides ----------------------------------------------------------------------------------------

HOOLI = next(o for o in BUNDLED["tenant_overrides"] if o["tenant"] == "hooli")


def test_hooli_gets_its_discount_on_openai_models():
    assert (HOOLI["provider"], HOOLI["model"]) == ("openai", "*")
    _, gpt_4o = yaml_entries("openai", "gpt-4o")
    tokens = usage(1000, 500, cached=200)
    factor = (100 - Decimal(HOOLI["discount_pct"])) / 100
    priced = price_llm_call(call("openai", "gpt-4o", at(2026, 6, 1), tenant="hooli", tokens=tokens), CATALOG)
    assert priced.cost_usd == (expected_from_yaml(gpt_4o, tokens) * factor).quantize(TWELVE_PLACES)
    assert priced.cost_usd == Decimal("0.0061625")  # 0.00725 × 0.85 by hand
    assert "hooli" in priced.quote.override and "15" in priced.quote.override
    mini = yaml_entries("openai", "gpt-4o-mini")[-1]
    priced = price_llm_call(call("openai", "gpt-4o-mini", at(2026, 6, 1), tenant="hooli", tokens=tokens), CATALOG)
    assert priced.cost_usd == (expected_from_yaml(mini, tokens) * factor).quantize(TWELVE_PLACES)


def test_hooli_tenant_name_is_normalized():
    tokens = usage(1000, 500, cached=200)
    priced = price_llm_call(call("openai", "gpt-4o", at(2026, 6, 1), tenant="  HOOLI ", tokens=tokens), CATALOG)
    assert priced.cost_usd == Decimal("0.0061625")


def test_hooli_pays_list_price_before_its_discount_starts():
    tokens = usage(1000, 500, cached=200)
    priced = price_llm_call(call("openai", "gpt-4o", at(2025, 12, 31, 23, 59, 59), tenant="hooli", tokens=tokens), CATALOG)
    assert priced.cost_usd == Decimal("0.00725")
    assert priced.quote.override is None


def test_hooli_pays_list_price_for_other_providers():
    claude = yaml_entries("anthropic", "claude-sonnet-4")[-1]
    tokens = usage(10_000, 2_000, cached=3_000, write=1_000)
    priced = price_llm_call(call("anthropic", "claude-sonnet-4", at(2026, 6, 1), tenant="hooli", tokens=tokens), CATALOG)
    assert priced.cost_usd == expected_from_yaml(claude, tokens)
    assert priced.quote.override is None


@pytest.mark.parametrize("tenant", ["acme", "globex", None, ""])
def test_other_tenants_are_unaffected_by_hoolis_discount(tenant):
    priced = price_llm_call(call("openai", "gpt-4o", at(2026, 6, 1), tenant=tenant, tokens=usage(1000, 500, cached=200)), CATALOG)
    assert priced.cost_usd == Decimal("0.00725")
    assert priced.quote.override is None


def test_a_tenant_with_its_own_prices():
    catalog = catalog_of(
        model("big", input_per_mtok="10", cache_read_per_mtok="5", output_per_mtok="40"),
        model("small", input_per_mtok="1", output_per_mtok="2"),
        overrides=[{"tenant": "Initech", "provider": "acme-ai", "model": "big", "effective_from": "2026-03-01",
                    "input_per_mtok": "6", "output_per_mtok": "24"}],
    )
    tokens = usage(M, M, cached=250_000)
    # own prices: 750k × 6 + 250k cache reads at its own input price (6, not the list cache price) + 1M × 24
    own = catalog.quote("acme-ai", "big", at(2026, 6, 1), "initech")
    assert price_tokens(own, **tokens).cost_usd == Decimal("4.5") + Decimal("1.5") + Decimal("24")
    assert "negotiated" in own.override
    # before its start, for another model and for another tenant: list prices
    list_cost = Decimal("7.5") + Decimal("1.25") + Decimal("40")
    assert price_tokens(catalog.quote("acme-ai", "big", at(2026, 2, 28), "initech"), **tokens).cost_usd == list_cost
    assert price_tokens(catalog.quote("acme-ai", "big", at(2026, 6, 1), "hooli"), **tokens).cost_usd == list_cost
    assert price_tokens(catalog.quote("acme-ai", "big", at(2026, 6, 1)), **tokens).cost_usd == list_cost
    small = catalog.quote("acme-ai", "small", at(2026, 6, 1), "initech")
    assert price_tokens(small, **tokens).cost_usd == Decimal(1) + Decimal(2)


def test_the_latest_override_in_effect_wins():
    catalog = catalog_of(
        model("m", input_per_mtok="10", output_per_mtok="10"),
        overrides=[
            {"tenant": "t", "effective_from": "2026-01-01", "discount_pct": "10"},
            {"tenant": "t", "effective_from": "2026-06-01", "provider": "acme-ai", "model": "m",
             "input_per_mtok": "1", "output_per_mtok": "1"},
        ],
    )
    tokens = usage(M, M)
    assert price_tokens(catalog.quote("acme-ai", "m", at(2025, 12, 1), "t"), **tokens).cost_usd == Decimal(20)
    assert price_tokens(catalog.quote("acme-ai", "m", at(2026, 3, 1), "t"), **tokens).cost_usd == Decimal(18)
    assert price_tokens(catalog.quote("acme-ai", "m", at(2026, 7, 1), "t"), **tokens).cost_usd == Decimal(2)


def test_a_full_discount_makes_calls_free_but_priced():
    catalog = catalog_of(model(), overrides=[{"tenant": "friend", "discount_pct": "100"}])
    priced = price_llm_call(call("acme-ai", "m", at(2026, 1, 1), tenant="friend", tokens=usage(M, M)), catalog)
    assert priced.priced is True
    assert priced.cost_usd == 0


def test_overrides_from_a_separate_file_add_to_the_bundled_ones(tmp_path: Path):
    path = tmp_path / "overrides.yaml"
    path.write_text(yaml.safe_dump({"tenant_overrides": [
        {"tenant": "globex", "provider": "anthropic", "model": "claude-sonnet-4", "effective_from": "2026-02-01",
         "discount_pct": "20"},
    ]}))
    catalog = load_catalog(None, path)
    claude = yaml_entries("anthropic", "claude-sonnet-4")[-1]
    tokens = usage(10_000, 1_000)
    priced = price_llm_call(call("anthropic", "claude-sonnet-4", at(2026, 6, 1), tenant="globex", tokens=tokens), catalog)
    assert priced.cost_usd == expected_from_yaml(claude, tokens) * Decimal("0.8")
    hooli = price_llm_call(call("openai", "gpt-4o", at(2026, 6, 1), tenant="hooli", tokens=usage(1000, 500, cached=200)), catalog)
    assert hooli.cost_usd == Decimal("0.0061625")  # the bundled override is still there


# --- aliases and provider inference ------------------------------------------------------------------------

@pytest.mark.parametrize(("alias", "target"), sorted(BUNDLED["aliases"].items()))
def test_every_bundled_alias_resolves_to_its_target(alias, target):
    provider, _, name = target.partition("/")
    assert CATALOG.resolve(None, alias) == (provider, name)
    assert CATALOG.resolve(provider, alias) == (provider, name)
    assert CATALOG.infer_provider(alias) == provider


def test_an_alias_is_priced_like_its_target():
    tokens = usage(1000, 500, cached=200)
    direct = price_llm_call(call("openai", "gpt-4o", at(2025, 3, 1), tokens=tokens), CATALOG)
    for spelling in ("gpt-4o-2024-08-06", " GPT-4o-2024-11-20 "):
        via_alias = price_llm_call(call(None, spelling, at(2025, 3, 1), tokens=tokens), CATALOG)
        assert via_alias.cost_usd == direct.cost_usd == Decimal("0.00725")
        assert (via_alias.quote.provider, via_alias.quote.model) == ("openai", "gpt-4o")


def test_lookup_ignores_case_and_surrounding_whitespace():
    for provider, name in (("OpenAI", "GPT-4o"), ("  openai ", "gpt-4o\t"), (None, " Gpt-4O ")):
        assert CATALOG.resolve(provider, name) == ("openai", "gpt-4o")


@pytest.mark.parametrize(("name", "provider"), [
    ("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("claude-sonnet-4", "anthropic"),
    ("gemini-2.0-flash", "google"), ("llama-3.1-8b", "local"),
])
def test_a_unique_model_name_infers_its_provider(name, provider):
    assert CATALOG.infer_provider(name) == provider
    assert price_llm_call(call(None, name, at(2026, 6, 1), input_tokens=1), CATALOG).priced is True


def test_an_ambiguous_model_name_infers_nothing():
    catalog = catalog_of(model("gpt-4o", "openai", input_per_mtok="2.5"), model("gpt-4o", "azure", input_per_mtok="2.75"))
    assert catalog.resolve(None, "gpt-4o") is None
    assert catalog.infer_provider("gpt-4o") is None
    assert catalog.quote(None, "gpt-4o", at(2026, 1, 1)) is None
    assert catalog.quote("azure", "gpt-4o", at(2026, 1, 1)).prices.input == Decimal("2.75") / MILLION
    assert catalog.quote("openai", "gpt-4o", at(2026, 1, 1)).prices.input == Decimal("2.5") / MILLION


def test_a_known_model_under_another_provider_is_unknown():
    assert CATALOG.resolve("azure", "gpt-4o") is None
    assert price_llm_call(call("azure", "gpt-4o", at(2026, 1, 1), input_tokens=1000), CATALOG).priced is False


def test_an_alias_under_another_provider_is_unknown_too():
    assert CATALOG.resolve("azure", "gpt-4o-2024-08-06") is None
    assert price_llm_call(call("bedrock", "claude-sonnet-4-20250514", at(2026, 1, 1), input_tokens=1), CATALOG).priced is False
    assert CATALOG.resolve("Anthropic", "claude-sonnet-4-20250514") == ("anthropic", "claude-sonnet-4")


def test_unknown_model_is_flagged_unpriced_not_silently_free():
    priced = price_llm_call(call("openai", "gpt-9-ultra", at(2026, 1, 1), input_tokens=1000, output_tokens=500), CATALOG)
    assert priced.priced is False
    assert priced.quote is None
    assert priced.cost_usd == 0
    assert priced.components == {}
    assert priced.price_version == UNPRICED_VERSION == "unpriced"
    assert CATALOG.infer_provider("gpt-9-ultra") is None


# --- catalog errors ----------------------------------------------------------------------------------------

PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok", "reasoning_per_mtok")


@pytest.mark.parametrize("name", PRICE_FIELDS)
def test_float_prices_are_refused(name):
    with pytest.raises(CatalogError, match=rf"models\[0\] acme-ai/m: {name} must be written as a decimal string"):
        catalog_of(model(**{name: 2.5}))


def test_a_float_in_a_yaml_file_is_refused(tmp_path: Path):
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  - {provider: p, model: m, input_per_mtok: 0.1, output_per_mtok: '0'}\n")
    with pytest.raises(CatalogError, match="input_per_mtok must be written as a decimal string, not a float"):
        load_catalog(path)


@pytest.mark.parametrize("name", PRICE_FIELDS)
@pytest.mark.parametrize("value", ["-0.01", "NaN", "Infinity"])
def test_negative_or_non_finite_prices_are_refused(name, value):
    with pytest.raises(CatalogError, match=f"{name} must be a finite number >= 0"):
        catalog_of(model(**{name: value}))


def test_a_price_that_is_not_a_number_is_refused():
    with pytest.raises(CatalogError, match="output_per_mtok 'cheap' is not a decimal number"):
        catalog_of(model(output_per_mtok="cheap"))


@pytest.mark.parametrize("name", ["input_per_mtok", "output_per_mtok"])
def test_missing_prices_are_refused(name):
    entry = model()
    del entry[name]
    with pytest.raises(CatalogError, match=f"{name} is required"):
        catalog_of(entry)


@pytest.mark.parametrize("name", ["provider", "model"])
def test_missing_provider_or_model_is_refused(name):
    entry = model()
    del entry[name]
    with pytest.raises(CatalogError, match="provider and model are required"):
        catalog_of(entry)


def test_the_message_names_the_entry():
    with pytest.raises(CatalogError, match=r"models\[1\] acme-ai/second: output_per_mtok"):
        catalog_of(model("first"), model("second", output_per_mtok="-1"))


def test_two_entries_taking_effect_at_the_same_moment_are_refused():
    with pytest.raises(CatalogError, match="acme-ai/m: two entries take effect at the same moment"):
        catalog_of(model(effective_from="2025-01-01"), model(effective_from="2025-01-01T00:00:00Z", input_per_mtok="3"))


def test_an_unreadable_effective_from_is_refused():
    with pytest.raises(CatalogError, match="effective_from 'next tuesday' is not an ISO-8601"):
        catalog_of(model(effective_from="next tuesday"))


def test_an_alias_to_an_unknown_model_is_refused():
    with pytest.raises(CatalogError, match="aliases: m-latest points to acme-ai/nope, which is not in the catalog"):
        catalog_of(model(), aliases={"m-latest": "acme-ai/nope"})


@pytest.mark.parametrize("override", [
    {"tenant": "t", "discount_pct": "10", "input_per_mtok": "1", "output_per_mtok": "1"},
    {"tenant": "t"},
], ids=["both", "neither"])
def test_an_override_needs_exactly_one_of_discount_and_prices(override):
    with pytest.raises(CatalogError, match=r"tenant_overrides\[0\] t: give either discount_pct or prices"):
        catalog_of(model(), overrides=[override])


def test_a_discount_over_100_percent_is_refused():
    with pytest.raises(CatalogError, match="discount_pct must be between 0 and 100"):
        catalog_of(model(), overrides=[{"tenant": "t", "discount_pct": "100.01"}])


def test_a_negative_or_float_discount_is_refused():
    with pytest.raises(CatalogError, match="discount_pct must be a finite number >= 0"):
        catalog_of(model(), overrides=[{"tenant": "t", "discount_pct": "-5"}])
    with pytest.raises(CatalogError, match="discount_pct must be written as a decimal string"):
        catalog_of(model(), overrides=[{"tenant": "t", "discount_pct": 12.5}])


def test_an_override_needs_a_tenant():
    with pytest.raises(CatalogError, match="tenant is required"):
        catalog_of(model(), overrides=[{"discount_pct": "10"}])


def test_override_prices_are_checked_like_catalog_prices():
    with pytest.raises(CatalogError, match="output_per_mtok is required"):
        catalog_of(model(), overrides=[{"tenant": "t", "input_per_mtok": "1"}])


def test_catalog_error_is_a_value_error():
    assert issubclass(CatalogError, ValueError)


def test_load_catalog_from_a_yaml_file(tmp_path: Path):
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump({"version": "v9", "models": [model("m", "p", input_per_mtok="1.5",
                                                                       cache_read_per_mtok="0.5", output_per_mtok="3")]}))
    catalog = load_catalog(path)
    assert catalog.version == "v9"
    priced = price_llm_call(call("p", "m", at(2026, 1, 1), input_tokens=2 * M, output_tokens=M, cached=M), catalog)
    assert priced.cost_usd == Decimal("1.5") + Decimal("0.5") + Decimal("3")
    assert priced.price_version == "v9"


# --- rounding -----------------------------------------------------------------------------------------------

# Input at 0.0000005 USD per million tokens: n tokens cost n × 0.5e-12 USD, exactly half a unit of the 12th
# place for every odd n. Half-even rounds those ties to the even neighbour.
TINY = catalog_of(model("tiny", input_per_mtok="0.0000005", output_per_mtok="0.0000004"))


@pytest.mark.parametrize(("tokens", "units_of_1e_12"), [
    (1, 0),   # 0.5 -> 0
    (3, 2),   # 1.5 -> 2
    (5, 2),   # 2.5 -> 2 (half-up would give 3)
    (7, 4),   # 3.5 -> 4
    (2, 1),   # 1.0 exact
])
def test_rounding_is_half_even_at_twelve_places(tokens, units_of_1e_12):
    priced = price_llm_call(call("acme-ai", "tiny", at(2026, 1, 1), input_tokens=tokens), TINY)
    assert priced.components["input"] == tokens * Decimal("0.5e-12")  # exact, unrounded
    assert priced.cost_usd == units_of_1e_12 * TWELVE_PLACES
    assert priced.cost_usd.as_tuple().exponent == -12


def test_the_total_is_rounded_once_not_per_component():
    # 1 output token = 0.4e-12 and 1 reasoning token (at the output price) = 0.4e-12: each would round to 0,
    # their sum 0.8e-12 rounds to 1e-12.
    priced = price_llm_call(call("acme-ai", "tiny", at(2026, 1, 1), output_tokens=2, reasoning=1), TINY)
    assert priced.components["output"] == priced.components["reasoning"] == Decimal("0.4e-12")
    assert priced.cost_usd == TWELVE_PLACES


def test_a_discount_is_applied_before_the_single_rounding():
    catalog = catalog_of(model("tiny", input_per_mtok="0.000001", output_per_mtok="0"),
                         overrides=[{"tenant": "t", "discount_pct": "50"}])
    # 5 tokens × 1e-12 × 0.5 = 2.5e-12 → 2e-12 (half-even); rounding before discounting would give 3e-12 or 2.5
    priced = price_llm_call(call("acme-ai", "tiny", at(2026, 1, 1), tenant="t", input_tokens=5), catalog)
    assert priced.cost_usd == 2 * TWELVE_PLACES


# --- LiteLLM's price map -------------------------------------------------------------------------------------

def _excerpt() -> dict:
    return json.loads(LITELLM_EXCERPT.read_bytes(), parse_float=Decimal)


EXCERPT_KEYS = {  # our (provider, model) for every entry of the excerpt that has token prices
    "gpt-4o": ("openai", "gpt-4o"),
    "gpt-4o-mini": ("openai", "gpt-4o-mini"),
    "claude-sonnet-4-20250514": ("anthropic", "claude-sonnet-4-20250514"),
    "gemini/gemini-2.0-flash": ("gemini", "gemini-2.0-flash"),
    "gemini/gemini-2.5-flash-preview-04-17": ("gemini", "gemini-2.5-flash-preview-04-17"),
    "text-embedding-3-small": ("openai", "text-embedding-3-small"),
}
FLAT_KEYS = dict(EXCERPT_KEYS)  # no threshold tiers, no off-peak prices
EXCERPT_KEYS.update({  # hand-written entries: threshold tiers, service tiers, off-peak prices, namespaces
    "gemini/gemini-2.5-pro": ("gemini", "gemini-2.5-pro"),
    "gemini-2.5-pro": ("vertex_ai-language-models", "gemini-2.5-pro"),
    "claude-sonnet-4-5": ("anthropic", "claude-sonnet-4-5"),
    "xai/grok-4-fast": ("xai", "grok-4-fast"),
    "gpt-4.1": ("openai", "gpt-4.1"),
    "azure/gpt-4.1": ("azure", "gpt-4.1"),
    "gpt-5.4": ("openai", "gpt-5.4"),
    "deepseek/deepseek-chat": ("deepseek", "deepseek-chat"),
    "tencent/deepseek-v4-flash": ("tencent", "deepseek-v4-flash"),
    "dashscope/qwen-plus": ("dashscope", "qwen-plus"),
    "anthropic.claude-3-haiku-20240307-v1:0": ("bedrock", "anthropic.claude-3-haiku-20240307-v1:0"),
    "bedrock/eu-central-1/anthropic.claude-3-haiku-20240307-v1:0": (
        "bedrock", "eu-central-1/anthropic.claude-3-haiku-20240307-v1:0"),
})
# "deepseek-chat" is a second spelling of deepseek/deepseek-chat (same namespace, other prices): skipped
SKIPPED = {"sample_spec", "hd/1024-x-1792/dall-e-3", "deepseek-chat"}


def test_litellm_excerpt_loads_every_token_priced_entry_and_skips_the_rest():
    catalog = load_catalog(LITELLM_EXCERPT)
    assert set(catalog.entries) == set(EXCERPT_KEYS.values())
    assert set(_excerpt()) == set(EXCERPT_KEYS) | SKIPPED
    assert {s.entry for s in catalog.skipped} == SKIPPED
    reasons = {s.entry: s.reason for s in catalog.skipped}
    assert "documentation" in reasons["sample_spec"]
    assert "no per-token prices" in reasons["hd/1024-x-1792/dall-e-3"]
    assert "deepseek/deepseek-chat" in reasons["deepseek-chat"] and "differ" in reasons["deepseek-chat"]
    assert catalog.version == "litellm-" + hashlib.sha256(LITELLM_EXCERPT.read_bytes()).hexdigest()[:12]


@pytest.mark.parametrize("name", sorted(FLAT_KEYS))
def test_litellm_prices_are_read_exactly(name):
    raw = _excerpt()[name]
    [entry] = load_catalog(LITELLM_EXCERPT).entries[EXCERPT_KEYS[name]]
    assert entry.source == "litellm"
    assert entry.mode == raw["mode"]
    assert entry.prices == TokenPrices(
        input=raw["input_cost_per_token"], output=raw["output_cost_per_token"],
        cache_read=raw.get("cache_read_input_token_cost"), cache_write=raw.get("cache_creation_input_token_cost"),
        reasoning=raw.get("output_cost_per_reasoning_token"),
    )
    assert entry.prices.input == Decimal(str(json.loads(LITELLM_EXCERPT.read_text())[name]["input_cost_per_token"]))


def test_litellm_prices_have_no_start_date():
    quote = load_catalog(LITELLM_EXCERPT).quote(None, "gpt-4o", dt.datetime(2001, 1, 1, tzinfo=UTC))
    assert quote is not None and quote.provider == "openai"


def test_litellm_worked_example():
    catalog = load_catalog(LITELLM_EXCERPT)
    # claude-sonnet-4: 10k prompt (2k cache reads, 1k cache writes), 1k output, by hand from the per-token prices
    priced = price_llm_call(call(None, "claude-sonnet-4-20250514", at(2026, 1, 1), input_tokens=10_000,
                                 output_tokens=1_000, cached=2_000, write=1_000), catalog)
    assert priced.cost_usd == Decimal("0.021") + Decimal("0.0006") + Decimal("0.00375") + Decimal("0.015")
    # gemini-2.5-flash preview: reasoning at its own price
    priced = price_llm_call(call("gemini", "gemini-2.5-flash-preview-04-17", at(2026, 1, 1), input_tokens=1_000,
                                 output_tokens=1_000, reasoning=600), catalog)
    assert priced.cost_usd == Decimal("0.00015") + Decimal("0.00024") + Decimal("0.0021")


def test_litellm_floats_are_refused():
    document = json.loads(LITELLM_EXCERPT.read_text())  # without parse_float=Decimal: binary floats
    with pytest.raises(CatalogError, match="gpt-4o: input_cost_per_token must be written as a decimal string"):
        parse_litellm_prices(document, version="floats")


def test_litellm_entry_without_a_provider_is_refused():
    with pytest.raises(CatalogError, match="mystery: litellm_provider is required"):
        parse_litellm_prices({"mystery": {"input_cost_per_token": Decimal("1e-06")}}, version="x")


@pytest.mark.parametrize("order", ["bare first", "prefixed first"])
def test_litellm_namespaces_are_kept_apart(order):
    # LiteLLM lists Gemini API and Vertex prices of one model under "gemini/x" and "x" (vertex_ai-language-models):
    # two namespaces, each with its own prices, whatever the order of the file.
    prefixed = ("gemini/gemini-9-flash", {"input_cost_per_token": Decimal("1e-07"), "output_cost_per_token": Decimal("4e-07"),
                                          "litellm_provider": "gemini", "mode": "chat"})
    bare = ("gemini-9-flash", {"input_cost_per_token": Decimal("1.5e-07"), "output_cost_per_token": Decimal("6e-07"),
                               "litellm_provider": "vertex_ai-language-models", "mode": "chat"})
    items = [bare, prefixed] if order == "bare first" else [prefixed, bare]
    catalog = parse_litellm_prices(dict(items), version="dupes")
    [gemini] = catalog.entries[("gemini", "gemini-9-flash")]
    [vertex] = catalog.entries[("vertex_ai-language-models", "gemini-9-flash")]
    assert (gemini.prices.input, vertex.prices.input) == (Decimal("1e-07"), Decimal("1.5e-07"))
    assert catalog.skipped == ()
    assert catalog.resolve("gemini", "gemini-9-flash") == ("gemini", "gemini-9-flash")
    assert catalog.resolve("vertex_ai", "gemini-9-flash") == ("vertex_ai-language-models", "gemini-9-flash")
    lookup = catalog.lookup("google", "gemini-9-flash")  # google covers both: ambiguous, never a guess
    assert lookup.key is None and lookup.candidates == (("gemini", "gemini-9-flash"),
                                                        ("vertex_ai-language-models", "gemini-9-flash"))
    assert catalog.lookup(None, "gemini-9-flash").candidates == lookup.candidates
    assert catalog.quote(None, "gemini-9-flash", at(2026, 1, 1)) is None


@pytest.mark.parametrize("order", ["bare first", "prefixed first"])
def test_two_spellings_in_one_namespace_the_prefixed_one_wins_and_the_other_is_reported(order):
    # LiteLLM looks up "<provider>/<model>" before "<model>"
    prefixed = ("deepseek/deepseek-x", {"input_cost_per_token": Decimal("2e-07"), "output_cost_per_token": Decimal("1e-06"),
                                        "litellm_provider": "deepseek", "mode": "chat"})
    bare = ("deepseek-x", {"input_cost_per_token": Decimal("3e-07"), "output_cost_per_token": Decimal("1e-06"),
                           "litellm_provider": "deepseek", "mode": "chat"})
    items = [bare, prefixed] if order == "bare first" else [prefixed, bare]
    catalog = parse_litellm_prices(dict(items), version="dupes")
    [entry] = catalog.entries[("deepseek", "deepseek-x")]
    assert entry.prices.input == Decimal("2e-07") and entry.source_key == "deepseek/deepseek-x"
    [skipped] = catalog.skipped
    assert skipped.entry == "deepseek-x" and "deepseek/deepseek-x" in skipped.reason and "differ" in skipped.reason


# --- properties ----------------------------------------------------------------------------------------------

@st.composite
def token_usage(draw: st.DrawFn, max_tokens: int = 10**9) -> dict:
    input_tokens = draw(st.integers(0, max_tokens))
    cached = draw(st.integers(0, input_tokens))
    write = draw(st.integers(0, input_tokens - cached))
    output_tokens = draw(st.integers(0, max_tokens))
    reasoning = draw(st.integers(0, output_tokens))
    return usage(input_tokens, output_tokens, cached=cached, write=write, reasoning=reasoning)


_per_mtok = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False).map(str)


@st.composite
def price_entry(draw: st.DrawFn) -> dict:
    entry = model("m", input_per_mtok=draw(_per_mtok), output_per_mtok=draw(_per_mtok))
    for name in ("cache_read_per_mtok", "cache_write_per_mtok", "reasoning_per_mtok"):
        if draw(st.booleans()):
            entry[name] = draw(_per_mtok)
    return entry


_discount = st.none() | st.decimals(min_value=0, max_value=100, places=2).map(str)


def _catalog(entry: dict, discount: str | None) -> PriceCatalog:
    return catalog_of(entry, overrides=[{"tenant": "t", "discount_pct": discount}] if discount is not None else [])


@settings(max_examples=300, deadline=None)
@given(price_entry(), _discount, token_usage(), token_usage())
def test_pricing_is_linear_in_token_counts(entry, discount, a, b):
    catalog = _catalog(entry, discount)

    def components(tokens: dict) -> dict:
        return price_llm_call(call("acme-ai", "m", at(2026, 1, 1), tenant="t", tokens=tokens), catalog).components

    both = {name: a[name] + b[name] for name in a}
    first, second, combined = components(a), components(b), components(both)
    for kind in KINDS:
        assert combined[kind] == first[kind] + second[kind]
    assert sum(combined.values()) == sum(first.values()) + sum(second.values())
    factor = Decimal(1) if discount is None else (100 - Decimal(discount)) / 100
    assert sum(combined.values()) == expected_from_yaml(entry, both, factor)


@settings(max_examples=300, deadline=None)
@given(price_entry(), _discount, token_usage())
def test_pricing_is_never_negative(entry, discount, tokens):
    priced = price_llm_call(call("acme-ai", "m", at(2026, 1, 1), tenant="t", tokens=tokens), _catalog(entry, discount))
    assert all(value >= 0 for value in priced.components.values())
    assert priced.cost_usd >= 0
    assert priced.cost_usd.as_tuple().exponent == -12
    assert abs(priced.cost_usd - sum(priced.components.values())) <= TWELVE_PLACES / 2
