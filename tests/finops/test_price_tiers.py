"""finops/pricing.py: threshold tiers (long context), service tiers, time-of-day prices, provider namespaces,
ambiguity, the LiteLLM translation of each, and catalog files that cannot be read.

Expected costs are written by hand from the prices in each test, never taken from the code under test.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from prismops.finops.pricing import (
    CatalogError,
    load_catalog,
    parse_catalog,
    parse_litellm_prices,
    price_llm_call,
    price_tokens,
    service_tier_name,
)

UTC = dt.timezone.utc
M = 1_000_000
D = Decimal


def at(*parts: int, tz: dt.tzinfo = UTC) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=tz)


def catalog_of(*models: dict, **document) -> object:
    return parse_catalog({"version": "tiers-v1", "models": list(models), **document})


def cost(catalog, provider, model, when, *, tier=None, tenant=None, **tokens) -> Decimal:
    event = {"provider": provider, "model": model, "event_time": when, "tenant": tenant, "service_tier": tier,
             "input_tokens": tokens.get("input", 0), "output_tokens": tokens.get("output", 0),
             "cached_input_tokens": tokens.get("cached", 0), "cache_write_tokens": tokens.get("write", 0),
             "reasoning_tokens": tokens.get("reasoning", 0)}
    return price_llm_call(event, catalog).cost_usd


LONG = {
    "provider": "google", "model": "long", "effective_from": "2025-01-01",
    "input_per_mtok": "1", "cache_read_per_mtok": "0.1", "output_per_mtok": "10",
    "tiers": [{"above_input_tokens": 200_000, "input_per_mtok": "2", "cache_read_per_mtok": "0.2", "output_per_mtok": "15"}],
}


# --- threshold tiers -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "expected"), [
    # below: 199,999 × $1/M + 1,000 × $10/M
    (199_999, D("0.199999") + D("0.01")),
    # at the threshold: still below (billed above only when the prompt is GREATER than 200k)
    (200_000, D("0.2") + D("0.01")),
    # above: the whole call at the tier price, output included: 200,001 × $2/M + 1,000 × $15/M
    (200_001, D("0.400002") + D("0.015")),
])
def test_below_at_and_above_a_threshold(prompt, expected):
    catalog = catalog_of(LONG)
    assert cost(catalog, "google", "long", at(2026, 1, 1), input=prompt, output=1_000) == expected


def test_above_the_threshold_cache_reads_use_the_tier_price_and_count_toward_the_prompt():
    catalog = catalog_of(LONG)
    # 250k prompt of which 150k cache reads: the prompt (cache included) crosses 200k
    # 100k × $2/M + 150k × $0.2/M + 2k × $15/M
    assert cost(catalog, "google", "long", at(2026, 1, 1), input=250_000, cached=150_000, output=2_000) == \
        D("0.2") + D("0.03") + D("0.03")
    priced = price_llm_call({"provider": "google", "model": "long", "event_time": at(2026, 1, 1), "input_tokens": 250_000,
                             "output_tokens": 0}, catalog)
    assert priced.above_input_tokens == 200_000
    assert priced.price_tier == {"service_tier": "standard", "above_input_tokens": 200_000, "off_peak": False}


def test_several_thresholds_the_highest_crossed_wins_and_kinds_carry_from_below():
    catalog = catalog_of({**LONG, "tiers": [
        {"above_input_tokens": 128_000, "input_per_mtok": "1.5"},
        {"above_input_tokens": 512_000, "output_per_mtok": "30"},
    ]})
    # above 128k: input 1.5, output still 10
    assert cost(catalog, "google", "long", at(2026, 1, 1), input=200_000, output=1_000) == D("0.3") + D("0.01")
    # above 512k: input carried (1.5), output 30
    assert cost(catalog, "google", "long", at(2026, 1, 1), input=600_000, output=1_000) == D("0.9") + D("0.03")


def test_a_kind_without_a_tier_price_keeps_its_price_from_below():
    catalog = catalog_of({**LONG, "tiers": [{"above_input_tokens": 200_000, "input_per_mtok": "2"}]})
    # cache read stays $0.1/M, output $10/M
    assert cost(catalog, "google", "long", at(2026, 1, 1), input=300_000, cached=100_000, output=1_000) == \
        D("0.4") + D("0.01") + D("0.01")


def test_a_missing_cache_price_falls_back_to_the_tier_input_price():
    catalog = catalog_of({"provider": "p", "model": "m", "input_per_mtok": "1", "output_per_mtok": "1",
                          "tiers": [{"above_input_tokens": 10, "input_per_mtok": "3"}]})
    # 20 prompt tokens, 5 cache reads, 5 cache writes: no cache prices, so all at the tier's input price 3
    assert cost(catalog, "p", "m", at(2026, 1, 1), input=20, cached=5, write=5) == D("0.00006")


_per_mtok = st.decimals(min_value=0, max_value=100, places=3).map(str)


@settings(max_examples=200, deadline=None)
@given(threshold=st.integers(0, 10**6), prompt=st.integers(0, 2 * 10**6), output=st.integers(0, 10**6),
       base=st.tuples(_per_mtok, _per_mtok), tier=st.tuples(_per_mtok, _per_mtok))
def test_property_the_whole_call_is_at_one_price_chosen_by_the_prompt(threshold, prompt, output, base, tier):
    catalog = catalog_of({"provider": "p", "model": "m", "input_per_mtok": base[0], "output_per_mtok": base[1],
                          "tiers": [{"above_input_tokens": threshold, "input_per_mtok": tier[0], "output_per_mtok": tier[1]}]})
    input_price, output_price = tier if prompt > threshold else base
    expected = (prompt * D(input_price) + output * D(output_price)) / M
    priced = price_llm_call({"provider": "p", "model": "m", "event_time": at(2026, 1, 1), "input_tokens": prompt,
                             "output_tokens": output}, catalog)
    assert sum(priced.components.values()) == expected
    assert priced.above_input_tokens == (threshold if prompt > threshold else None)


def test_tier_thresholds_must_be_whole_and_unique():
    with pytest.raises(CatalogError, match=r"tiers\[1\].*two tiers above 200000 input tokens \[unique_threshold\]"):
        catalog_of({**LONG, "tiers": [{"above_input_tokens": 200_000, "input_per_mtok": "2"},
                                      {"above_input_tokens": 200_000, "input_per_mtok": "3"}]})
    with pytest.raises(CatalogError, match=r"above_input_tokens must be a whole number.*\[threshold\]"):
        catalog_of({**LONG, "tiers": [{"above_input_tokens": "200k", "input_per_mtok": "2"}]})
    with pytest.raises(CatalogError, match=r"input_per_mtok must be written as a decimal string"):
        catalog_of({**LONG, "tiers": [{"above_input_tokens": 1, "input_per_mtok": 2.5}]})
    with pytest.raises(CatalogError, match=r"inputs_per_mtok is not a tier field \[known_field\]"):
        catalog_of({**LONG, "tiers": [{"above_input_tokens": 1, "inputs_per_mtok": "2"}]})


# --- service tiers -------------------------------------------------------------------------------------------

SERVICE = {
    **LONG,
    "service_tiers": {
        "batch": {"input_per_mtok": "0.5", "output_per_mtok": "5"},
        "priority": {"input_per_mtok": "1.8", "output_per_mtok": "18",
                     "tiers": [{"above_input_tokens": 200_000, "input_per_mtok": "3.6"}]},
    },
}


@pytest.mark.parametrize(("tier", "prompt", "expected"), [
    ("standard", 1_000, D("0.001") + D("0.01")),
    ("batch", 1_000, D("0.0005") + D("0.005")),
    ("batches", 1_000, D("0.0005") + D("0.005")),  # LiteLLM's spelling
    ("priority", 1_000, D("0.0018") + D("0.018")),
    ("fast", 1_000, D("0.0018") + D("0.018")),  # OpenAI's name, billed as priority
    # batch above 200k: its own tiers are none, so the standard tier price at 200k applies to the kinds the
    # standard tier names (input 2, output 15): 300k × 2 + 1k × 15
    ("batch", 300_000, D("0.6") + D("0.015")),
    # priority above 200k: its own tier input 3.6; output from the standard tier at 200k (15)
    ("priority", 300_000, D("1.08") + D("0.015")),
])
def test_service_tiers(tier, prompt, expected):
    catalog = catalog_of(SERVICE)
    assert cost(catalog, "google", "long", at(2026, 1, 1), tier=service_tier_name(tier), input=prompt, output=1_000) == expected


def test_a_service_tier_the_entry_has_no_prices_for_is_priced_standard_and_says_so():
    catalog = catalog_of(SERVICE)
    quote = catalog.quote("google", "long", at(2026, 1, 1), service_tier="flex")
    assert quote.service_tier == "standard" and quote.service_tier_requested == "flex"
    assert price_tokens(quote, input_tokens=1_000, output_tokens=1_000).cost_usd == D("0.011")


def test_a_service_tier_with_its_own_output_price_bills_reasoning_at_it():
    catalog = catalog_of({"provider": "p", "model": "m", "input_per_mtok": "1", "output_per_mtok": "10",
                          "reasoning_per_mtok": "12", "service_tiers": {"flex": {"output_per_mtok": "5"}}})
    assert cost(catalog, "p", "m", at(2026, 1, 1), tier="flex", output=1_000, reasoning=1_000) == D("0.005")
    assert cost(catalog, "p", "m", at(2026, 1, 1), output=1_000, reasoning=1_000) == D("0.012")


@pytest.mark.parametrize("name", ["turbo", "scale", "batch-please"])
def test_unknown_service_tier_names_are_refused(name):
    with pytest.raises(ValueError, match="is not a service tier PrismOps knows"):
        service_tier_name(name)
    with pytest.raises(CatalogError, match=r"\[known_service_tier\]"):
        catalog_of({**LONG, "service_tiers": {name: {"input_per_mtok": "1"}}})


# --- time of day ---------------------------------------------------------------------------------------------

DEEPSEEK = {
    "provider": "deepseek", "model": "chat", "input_per_mtok": "0.27", "cache_read_per_mtok": "0.07",
    "output_per_mtok": "1.10",
    "off_peak": {"timezone": "UTC", "windows": [{"hours": "16:30-00:30"}],
                 "input_per_mtok": "0.135", "cache_read_per_mtok": "0.035", "output_per_mtok": "0.55"},
}
PEAK, OFF_PEAK = D("0.27") + D("0.11"), D("0.135") + D("0.055")  # 1M input + 100k output


@pytest.mark.parametrize(("when", "expected"), [
    (at(2026, 3, 2, 16, 29, 59), PEAK),
    (at(2026, 3, 2, 16, 30), OFF_PEAK),  # the start is inside
    (at(2026, 3, 2, 23, 59, 59), OFF_PEAK),
    (at(2026, 3, 3, 0, 0), OFF_PEAK),  # across midnight
    (at(2026, 3, 3, 0, 29, 59), OFF_PEAK),
    (at(2026, 3, 3, 0, 30), PEAK),  # the end is outside
    (at(2026, 3, 3, 1, 15, tz=dt.timezone(dt.timedelta(hours=1))), OFF_PEAK),  # 00:15 UTC
    (at(2026, 3, 2, 9, 0, tz=ZoneInfo("America/Los_Angeles")), OFF_PEAK),  # 17:00 UTC (PST, UTC-8)
    (at(2026, 3, 2, 21, 59, tz=ZoneInfo("Asia/Kolkata")), PEAK),  # 16:29 UTC (IST, UTC+5:30)
    (at(2026, 3, 2, 22, 0, tz=ZoneInfo("Asia/Kolkata")), OFF_PEAK),  # 16:30 UTC: the window's first instant
])
def test_off_peak_windows_across_midnight_and_time_zones(when, expected):
    catalog = catalog_of(DEEPSEEK)
    assert cost(catalog, "deepseek", "chat", when, input=M, output=100_000) == expected


def test_off_peak_prices_replace_tier_prices_of_the_kinds_they_name():
    catalog = catalog_of({**LONG, "off_peak": {"windows": ["00:00-06:00"], "input_per_mtok": "0.5"}})
    # above 200k at 03:00: input 0.5 (off-peak replaces the tier's 2), output stays the tier's 15
    assert cost(catalog, "google", "long", at(2026, 1, 1, 3), input=300_000, output=1_000) == D("0.15") + D("0.015")
    quote = catalog.quote("google", "long", at(2026, 1, 1, 3))
    assert quote.off_peak is True
    assert catalog.quote("google", "long", at(2026, 1, 1, 6)).off_peak is False


def test_an_off_peak_window_in_a_local_time_zone_follows_its_daylight_saving_time():
    catalog = catalog_of({"provider": "p", "model": "m", "input_per_mtok": "2", "output_per_mtok": "0",
                          "off_peak": {"timezone": "Europe/Berlin", "windows": [{"hours": "22:00-06:00"}],
                                       "input_per_mtok": "1"}})
    # winter (UTC+1): 22:00 Berlin = 21:00 UTC; summer (UTC+2): 22:00 Berlin = 20:00 UTC
    assert cost(catalog, "p", "m", at(2026, 1, 15, 20, 59), input=M) == 2
    assert cost(catalog, "p", "m", at(2026, 1, 15, 21, 0), input=M) == 1
    assert cost(catalog, "p", "m", at(2026, 7, 15, 20, 0), input=M) == 1
    assert cost(catalog, "p", "m", at(2026, 7, 15, 4, 0), input=M) == 2  # 06:00 Berlin: the end, outside


def test_weekdays_are_the_day_of_the_priced_moment_in_the_weekday_time_zone():
    # weekends all day; the weekday read in Shanghai (UTC+8)
    catalog = catalog_of({"provider": "p", "model": "m", "input_per_mtok": "2", "output_per_mtok": "0",
                          "off_peak": {"timezone": "UTC", "weekday_timezone": "Asia/Shanghai",
                                       "windows": [{"hours": "00:00-00:00", "weekdays": ["sat", "sun"]}],
                                       "input_per_mtok": "1"}})
    assert cost(catalog, "p", "m", at(2026, 3, 6, 15, 59), input=M) == 2  # Friday 23:59 in Shanghai
    assert cost(catalog, "p", "m", at(2026, 3, 6, 16, 0), input=M) == 1  # Saturday 00:00 in Shanghai
    assert cost(catalog, "p", "m", at(2026, 3, 8, 16, 0), input=M) == 2  # Monday 00:00 in Shanghai


_times = st.times().map(lambda t: t.replace(second=0, microsecond=0))
_zones = st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata", "Australia/Adelaide", "Pacific/Chatham"])


@settings(max_examples=300, deadline=None)
@given(start=_times, end=_times, zone=_zones,
       moment=st.datetimes(min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2027, 1, 1), timezones=st.just(UTC)))
def test_property_off_peak_matches_minutes_since_local_midnight(start, end, zone, moment):
    catalog = catalog_of({"provider": "p", "model": "m", "input_per_mtok": "2", "output_per_mtok": "0",
                          "off_peak": {"timezone": zone, "windows": [f"{start:%H:%M}-{end:%H:%M}"], "input_per_mtok": "1"}})
    local = moment.astimezone(ZoneInfo(zone))
    minute = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
    a, b = start.hour * 60 + start.minute, end.hour * 60 + end.minute
    inside = True if a == b else (a <= minute < b if a < b else (minute >= a or minute < b))
    assert catalog.quote("p", "m", moment).off_peak is inside


@pytest.mark.parametrize(("block", "rule"), [
    ({"windows": ["25:00-01:00"], "input_per_mtok": "1"}, "window"),
    ({"windows": [], "input_per_mtok": "1"}, "required"),
    ({"windows": ["01:00-02:00"]}, "tier_prices"),
    ({"timezone": "Mars/Olympus", "windows": ["01:00-02:00"], "input_per_mtok": "1"}, "time_zone"),
    ({"windows": [{"hours": "01:00-02:00", "weekdays": [8]}], "input_per_mtok": "1"}, "weekday"),
    ({"window": ["01:00-02:00"], "input_per_mtok": "1"}, "known_field"),
])
def test_bad_off_peak_blocks_name_the_entry_and_the_rule(block, rule):
    with pytest.raises(CatalogError, match=rf"models\[0\] p/m off_peak.*\[{rule}\]"):
        catalog_of({"provider": "p", "model": "m", "input_per_mtok": "1", "output_per_mtok": "1", "off_peak": block})


# --- tenant overrides on top -----------------------------------------------------------------------------------

def test_a_discount_scales_tier_and_off_peak_prices_and_negotiated_prices_are_flat():
    catalog = catalog_of(LONG, tenant_overrides=[
        {"tenant": "hooli", "discount_pct": "50"},
        {"tenant": "initech", "input_per_mtok": "1", "output_per_mtok": "1"},
    ])
    assert cost(catalog, "google", "long", at(2026, 1, 1), tenant="hooli", input=300_000, output=1_000) == \
        (D("0.6") + D("0.015")) / 2
    assert cost(catalog, "google", "long", at(2026, 1, 1), tenant="initech", input=300_000, output=1_000) == D("0.301")


# --- namespaces and ambiguity ----------------------------------------------------------------------------------

TWO_NAMESPACES = [
    {"provider": "openai", "model": "gpt-4.1", "input_per_mtok": "2", "output_per_mtok": "8"},
    {"provider": "azure", "model": "gpt-4.1", "input_per_mtok": "2.2", "output_per_mtok": "8.8"},
]


def test_the_same_model_under_two_providers_is_priced_by_each():
    catalog = catalog_of(*TWO_NAMESPACES)
    assert cost(catalog, "openai", "gpt-4.1", at(2026, 1, 1), input=M, output=M) == 10
    assert cost(catalog, "azure", "gpt-4.1", at(2026, 1, 1), input=M, output=M) == D("11")


def test_a_model_name_without_provider_in_two_namespaces_is_ambiguous_with_its_candidates():
    catalog = catalog_of(*TWO_NAMESPACES)
    lookup = catalog.lookup(None, "GPT-4.1")
    assert lookup.ambiguous and lookup.key is None
    assert lookup.candidates == (("azure", "gpt-4.1"), ("openai", "gpt-4.1"))
    assert catalog.quote(None, "gpt-4.1", at(2026, 1, 1)) is None
    assert catalog.infer_provider("gpt-4.1") is None


def test_provider_aliases_cover_namespaces_and_the_exact_namespace_wins():
    catalog = catalog_of(
        {"provider": "gemini", "model": "g", "input_per_mtok": "1", "output_per_mtok": "1"},
        {"provider": "vertex_ai-language-models", "model": "g", "input_per_mtok": "2", "output_per_mtok": "2"},
        {"provider": "vertex_ai-anthropic_models", "model": "claude", "input_per_mtok": "3", "output_per_mtok": "3"},
        {"provider": "openai", "model": "o", "input_per_mtok": "1", "output_per_mtok": "1"},
        {"provider": "text-completion-openai", "model": "instruct", "input_per_mtok": "1", "output_per_mtok": "1"},
    )
    assert catalog.lookup("google", "g").candidates == (("gemini", "g"), ("vertex_ai-language-models", "g"))
    assert catalog.resolve("gemini", "g") == ("gemini", "g")
    assert catalog.resolve("vertex_ai", "g") == ("vertex_ai-language-models", "g")
    assert catalog.resolve("google", "claude") == ("vertex_ai-anthropic_models", "claude")
    assert catalog.resolve("openai", "instruct") == ("text-completion-openai", "instruct")
    assert catalog.resolve("openai", "o") == ("openai", "o")
    assert catalog.resolve("anthropic", "claude") is None  # anthropic covers no vertex namespace
    # LiteLLM's route prefix in the model name
    assert catalog.resolve(None, "vertex_ai/claude") == ("vertex_ai-anthropic_models", "claude")
    assert catalog.resolve(None, "gemini/g") == ("gemini", "g")
    assert catalog.resolve("gemini", "gemini/g") == ("gemini", "g")


def test_a_catalog_may_add_provider_aliases():
    catalog = catalog_of(*TWO_NAMESPACES, provider_aliases={"msft": ["azure"], "everyone": ["azure", "openai"]})
    assert catalog.resolve("msft", "gpt-4.1") == ("azure", "gpt-4.1")
    assert catalog.lookup("everyone", "gpt-4.1").ambiguous


# --- LiteLLM's keys ------------------------------------------------------------------------------------------

def litellm(name: str, **fields) -> object:
    raw = {"litellm_provider": fields.pop("provider", "openai"), "mode": "chat"}
    raw.update({k: D(v) if isinstance(v, str) else v for k, v in fields.items()})
    return parse_litellm_prices({name: raw}, version="v")


def test_litellm_threshold_keys_become_tiers_and_k_means_thousand():
    catalog = litellm("m", input_cost_per_token="1e-06", output_cost_per_token="2e-06",
                      input_cost_per_token_above_128k_tokens="3e-06", output_cost_per_token_above_256_tokens="4e-06")
    [entry] = catalog.entries[("openai", "m")]
    assert [(t.above_input_tokens, t.prices.input, t.prices.output) for t in entry.tiers] == [
        (256, D("1e-06"), D("4e-06")), (128_000, D("3e-06"), D("4e-06"))]


def test_litellm_xai_thresholds_are_inclusive():
    catalog = litellm("xai/grok", provider="xai", input_cost_per_token="1e-06", output_cost_per_token="0",
                      input_cost_per_token_above_128k_tokens="2e-06")
    assert cost(catalog, "xai", "grok", at(2026, 1, 1), input=127_999) == D("0.127999")
    assert cost(catalog, "xai", "grok", at(2026, 1, 1), input=128_000) == D("0.256")


def test_litellm_priority_above_a_threshold_falls_back_to_the_standard_tier_price():
    catalog = litellm("m", input_cost_per_token="1e-06", output_cost_per_token="1e-05",
                      input_cost_per_token_priority="2e-06", output_cost_per_token_priority="2e-05",
                      input_cost_per_token_above_272k_tokens="3e-06",
                      output_cost_per_token_above_272k_tokens_priority="5e-05")
    # priority above 272k: input from the standard tier (3e-6), output its own tier price (5e-5)
    assert cost(catalog, "openai", "m", at(2026, 1, 1), tier="priority", input=300_000, output=1_000) == \
        D("0.9") + D("0.05")


def test_litellm_batch_prices_halve_a_missing_output_price_and_keep_flat_above_thresholds():
    catalog = litellm("m", input_cost_per_token="1e-06", output_cost_per_token="1e-05",
                      input_cost_per_token_batches="5e-07", input_cost_per_token_above_200k_tokens="2e-06",
                      output_cost_per_token_above_200k_tokens="1.5e-05")
    # batch: input 5e-7 flat (no batch tier key), output half of 1e-5
    assert cost(catalog, "openai", "m", at(2026, 1, 1), tier="batch", input=300_000, output=1_000) == \
        D("0.15") + D("0.005")


def test_litellm_tiered_pricing_ranges():
    catalog = parse_litellm_prices({"dashscope/q": {"litellm_provider": "dashscope", "mode": "chat", "tiered_pricing": [
        {"input_cost_per_token": D("1e-06"), "output_cost_per_token": D("2e-06"), "range": [0, D("32000.0")]},
        {"input_cost_per_token": D("3e-06"), "output_cost_per_token": D("6e-06"), "range": [D("32000.0"), D("128000.0")]},
    ]}}, version="v")
    assert cost(catalog, "dashscope", "q", at(2026, 1, 1), input=32_000, output=1_000) == D("0.032") + D("0.002")
    assert cost(catalog, "dashscope", "q", at(2026, 1, 1), input=32_001, output=1_000) == D("0.096003") + D("0.006")


def test_litellm_off_peak_pricing():
    catalog = litellm("deepseek/c", provider="deepseek", input_cost_per_token="2e-06", output_cost_per_token="0",
                      off_peak_pricing={"hours_utc": ["16:30-00:30", "04:00-06:00"], "input_cost_per_token": D("1e-06")})
    assert cost(catalog, "deepseek", "c", at(2026, 1, 1, 5), input=M) == 1
    assert cost(catalog, "deepseek", "c", at(2026, 1, 1, 6), input=M) == 2
    assert cost(catalog, "deepseek", "c", at(2026, 1, 1, 0, 29), input=M) == 1


# --- catalog files that cannot be read -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "content", "rule"), [
    ("prices.yaml", "models:\n  - {provider: p, model: m\n", "yaml_syntax"),
    ("prices.yaml", "- just\n- a list\n", "top_level_mapping"),
    ("prices.yaml", "", "top_level_mapping"),
    ("prices.yaml", "models: {provider: p}\n", "list"),
    ("prices.yaml", "models:\n  - just a string\n", "mapping"),
    ("prices.json", "[1, 2, 3]", "top_level_object"),
    ("prices.json", "{\"gpt\": {\"input_cost_per_token\": 1e-06,", "json_syntax"),
    ("prices.json", "not json at all", "json_syntax"),
    ("prices.json", "{\"m\": {\"input_cost_per_token\": 1e-06}}", "required"),
    ("prices.json", "{\"m\": {\"litellm_provider\": \"x\", \"input_cost_per_token\": \"cheap\"}}", "decimal"),
])
def test_every_unreadable_catalog_names_the_file_and_the_rule(tmp_path: Path, name, content, rule):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value).startswith(str(path) + ": ")
    assert caught.value.rule == rule and str(caught.value).endswith(f"[{rule}]")
    assert "\n" not in str(caught.value)


def test_a_catalog_that_is_not_utf8_is_refused(tmp_path: Path):
    path = tmp_path / "prices.json"
    path.write_bytes(b"{\"m\": \xff}")
    with pytest.raises(CatalogError, match=r"prices.json: is not UTF-8 text \[utf8\]"):
        load_catalog(path)


def test_an_unknown_field_in_an_entry_is_refused():
    with pytest.raises(CatalogError, match=r"models\[0\] p/m: input_per_mtoks is not a catalog field \[known_field\]"):
        catalog_of({"provider": "p", "model": "m", "input_per_mtok": "1", "output_per_mtok": "1", "input_per_mtoks": "2"})


def test_the_bundled_catalog_round_trips_through_yaml(tmp_path: Path):
    from importlib import resources

    text = resources.files("prismops.finops").joinpath("price_catalog.yaml").read_text()
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(text)))
    assert load_catalog(path).entries == load_catalog().entries
