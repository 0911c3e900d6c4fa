"""finops/llm_usage.py: one message in, a cost line and a model observation out, or a Rejection.

Expected costs are computed here from the numbers in finops/price_catalog.yaml, never taken from the code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import uuid
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from prismops.finops.llm_usage import COST_LINE_NAMESPACE, LlmPricingContext, PricedUsage, Rejection, cost_line_id, process_llm_usage
from prismops.finops.pricing import load_catalog, parse_tenant_overrides
from prismops.finops.tagging import load_service_registry, resolve_dimensions
from prismops.settings import Settings
from prismops.streams.codecs import codec_for

KEY = b"unit-test-hash-key"
PRICING = LlmPricingContext(load_catalog(), load_service_registry(), KEY)
CATALOG_YAML = yaml.safe_load(resources.files("prismops.finops").joinpath("price_catalog.yaml").read_text())
OWNERS = yaml.safe_load(resources.files("prismops.finops").joinpath("service_registry.yaml").read_text())["services"]
HOOLI = next(o for o in CATALOG_YAML["tenant_overrides"] if o["tenant"] == "hooli")
MILLION = Decimal(1_000_000)
EXCERPT = Path(__file__).resolve().parents[1] / "fixtures" / "litellm" / "model_prices_excerpt.json"


def current_entry(provider: str, model: str, at: dt.datetime) -> dict:
    """The YAML entry in effect at `at`: the latest effective_from not after it."""
    entries = [e for e in CATALOG_YAML["models"] if (e["provider"], e["model"]) == (provider, model)
               and dt.datetime.fromisoformat(str(e["effective_from"])).replace(tzinfo=dt.timezone.utc) <= at]
    return max(entries, key=lambda e: str(e["effective_from"]))


def expected_cost(entry: dict, event: dict, factor: Decimal = Decimal(1)) -> Decimal:
    def rate(name: str, fallback: str) -> Decimal:
        return Decimal(str(entry.get(name, entry[fallback])))

    cached, written, reasoning = event["cached_input_tokens"], event["cache_write_tokens"], event["reasoning_tokens"]
    exact = (
        (event["input_tokens"] - cached - written) * rate("input_per_mtok", "input_per_mtok")
        + cached * rate("cache_read_per_mtok", "input_per_mtok")
        + written * rate("cache_write_per_mtok", "input_per_mtok")
        + (event["output_tokens"] - reasoning) * rate("output_per_mtok", "output_per_mtok")
        + reasoning * rate("reasoning_per_mtok", "output_per_mtok")
    ) / MILLION
    return (exact * factor).quantize(Decimal("1e-12"))


def _avro(event: dict, version: int | None = None) -> bytes:
    return codec_for("llm_usage_event").encode(event, version=version)


def _json(event: dict) -> bytes:
    return json.dumps(event, default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v)).encode()


def _process(value, now, pricing: LlmPricingContext = PRICING) -> PricedUsage | Rejection:
    return process_llm_usage(value, pricing, now)


def _everything_stored(result: PricedUsage) -> bytes:
    """Every byte that leaves the worker for this call: the encoded line and observation, and their repr."""
    return b"".join([
        codec_for("cost_line").encode(result.cost_line), codec_for("model_observation").encode(result.observation),
        repr(result.cost_line).encode(), repr(result.observation).encode(),
    ])


# --- the happy path ------------------------------------------------------------------------------------------

def test_good_avro_event_becomes_a_cost_line_that_encodes(make_event, now):
    event = make_event()
    result = _process(_avro(event), now)
    assert isinstance(result, PricedUsage)
    line = result.cost_line
    codec = codec_for("cost_line")
    decoded = codec.decode(codec.encode(line))
    assert {k: decoded[k] for k in line} == line  # cost_line.v4's bill fields (currency, …) decode to their defaults

    expected = expected_cost(current_entry("openai", "gpt-4o", event["event_time"]), event)
    assert expected == Decimal("0.00725")  # 800 × $2.50/M + 200 × $1.25/M + 500 × $10/M, by hand
    assert line["cost_usd"] == expected
    assert line["priced"] is True
    assert line["price_version"] == CATALOG_YAML["version"]
    assert line["source"] == "llm"
    assert line["source_event_id"] == event["event_id"]
    assert line["event_time"] == event["event_time"]
    assert (line["tenant"], line["service"], line["feature"]) == ("acme", "code-assist", "complete")
    assert (line["team"], line["product"]) == (OWNERS["code-assist"]["team"], OWNERS["code-assist"]["product"])
    assert line["tag_source"]["team"] == "inferred"
    assert line["tag_source"]["tenant"] == "explicit"
    assert line["usage_quantity"] == Decimal(1500)
    assert line["usage_unit"] == "token"
    assert (line["input_tokens"], line["output_tokens"], line["cached_input_tokens"]) == (1000, 500, 200)
    assert (line["cache_write_tokens"], line["reasoning_tokens"]) == (0, 0)
    assert line["user_hash"] is None
    assert line["charge_category"] == "Usage"  # FOCUS ChargeCategory casing
    assert line["status"] == "ok"
    assert result.observation["tokens"] == 1000 + 500
    assert result.observation["cost_usd"] == expected
    assert result.dropped_content_fields == ()


def test_the_same_event_as_json_gets_the_same_line(make_event, now):
    event = make_event(user_id="user-1", cache_write_tokens=100, labels={"region": "eu"})
    from_avro = _process(_avro(event), now)
    from_json = _process(_json(event), now)
    assert isinstance(from_json, PricedUsage)
    assert from_json == from_avro


@pytest.mark.parametrize("version", [1, 2])
def test_events_written_with_older_schemas_are_priced(make_event, now, version):
    event = make_event(reasoning_tokens=0)
    result = _process(_avro(event, version=version), now)
    assert isinstance(result, PricedUsage)
    assert result.cost_line["priced"] is True
    assert result.cost_line["cost_usd"] == expected_cost(current_entry("openai", "gpt-4o", event["event_time"]), event)
    assert (result.cost_line["reasoning_tokens"], result.cost_line["cache_write_tokens"]) == (0, 0)
    assert result.cost_line["user_hash"] is None
    assert result.cost_line["line_id"] == cost_line_id("llm", event["event_id"])
    newest = _process(_avro(event), now)
    assert result.cost_line == newest.cost_line
    # llm_usage_event v1 had no time_to_first_token_ms: the observation says so rather than inventing one
    expected_ttft = None if version == 1 else event["time_to_first_token_ms"]
    assert result.observation == {**newest.observation, "ttft_ms": expected_ttft}


def test_every_token_kind_is_priced(make_event, now):
    # claude-sonnet-4 has its own cache read and write prices; reasoning falls back to the output price
    event = make_event(provider="anthropic", model="claude-sonnet-4", input_tokens=50_000, cached_input_tokens=20_000,
                       cache_write_tokens=10_000, output_tokens=3_000, reasoning_tokens=1_000)
    result = _process(_avro(event), now)
    entry = current_entry("anthropic", "claude-sonnet-4", event["event_time"])
    assert result.cost_line["cost_usd"] == expected_cost(entry, event)
    # by hand: 20k × 3 + 20k × 0.30 + 10k × 3.75 + 3k × 15 (per million)
    assert result.cost_line["cost_usd"] == Decimal("0.06") + Decimal("0.006") + Decimal("0.0375") + Decimal("0.045")
    assert result.cost_line["cache_write_tokens"] == 10_000
    assert result.cost_line["reasoning_tokens"] == 1_000


def test_an_aliased_model_is_priced_as_its_target(make_event, now):
    event = make_event(provider="", model="claude-sonnet-4-20250514", input_tokens=1000, cached_input_tokens=0,
                       output_tokens=100)
    result = _process(_avro(event), now)
    entry = current_entry("anthropic", "claude-sonnet-4", event["event_time"])
    assert result.cost_line["cost_usd"] == expected_cost(entry, event)
    assert (result.cost_line["provider"], result.cost_line["tag_source"]["provider"]) == ("anthropic", "inferred")
    assert result.cost_line["model"] == "claude-sonnet-4-20250514"


def test_the_event_time_picks_the_price(make_event, now):
    old = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
    event = make_event(event_time=old)
    result = _process(_avro(event), now)
    assert result.cost_line["cost_usd"] == expected_cost(current_entry("openai", "gpt-4o", old), event)
    assert result.cost_line["cost_usd"] == Decimal("0.0125")  # first gpt-4o entry: 1000 × $5/M + 500 × $15/M
    assert result.observation["input_price_per_mtok"] == Decimal("5.00")


def test_line_id_is_deterministic_per_event(make_event, now):
    first = _process(_avro(make_event(event_id="evt-A")), now).cost_line["line_id"]
    again = _process(_avro(make_event(event_id="evt-A", latency_ms=1)), now).cost_line["line_id"]
    other = _process(_avro(make_event(event_id="evt-B")), now).cost_line["line_id"]
    assert first == again
    assert first != other
    assert uuid.UUID(first)
    assert first == cost_line_id("llm", "evt-A")
    assert cost_line_id("gpu", "evt-A") != first  # the source is part of the identity


# --- tenants ---------------------------------------------------------------------------------------------------

def test_a_tenant_discount_is_applied(make_event, now):
    event = make_event(tenant="Hooli")
    result = _process(_avro(event), now)
    factor = (100 - Decimal(HOOLI["discount_pct"])) / 100
    entry = current_entry("openai", "gpt-4o", event["event_time"])
    assert result.cost_line["cost_usd"] == expected_cost(entry, event, factor)
    assert result.cost_line["cost_usd"] == Decimal("0.0061625")  # 0.00725 × 0.85 by hand
    assert result.cost_line["tenant"] == "hooli"


def test_the_discount_follows_the_resolved_tenant(make_event, now, tmp_path: Path):
    # the tenant as tagging resolved it (from a label, through an alias) is the one whose prices apply
    from_label = _process(_avro(make_event(tenant="", labels={"tenant": "hooli"})), now).cost_line
    assert (from_label["tenant"], from_label["cost_usd"]) == ("hooli", Decimal("0.0061625"))
    path = tmp_path / "registry.yaml"
    path.write_text("services: {}\naliases:\n  tenant:\n    hooli inc: hooli\n")
    pricing = LlmPricingContext(PRICING.catalog, load_service_registry(path), KEY)
    via_alias = _process(_avro(make_event(tenant="Hooli Inc")), now, pricing).cost_line
    assert (via_alias["tenant"], via_alias["cost_usd"]) == ("hooli", Decimal("0.0061625"))


def test_the_observation_carries_list_prices_not_the_tenants(make_event, now):
    event = make_event(tenant="hooli")
    observation = _process(_avro(event), now).observation
    entry = current_entry("openai", "gpt-4o", event["event_time"])
    assert observation["input_price_per_mtok"] == Decimal(entry["input_per_mtok"])
    assert observation["output_price_per_mtok"] == Decimal(entry["output_per_mtok"])
    # the cost and its split are the tenant's (discounted); everything else matches a list-price tenant's call
    money = ("cost_usd", "input_cost_usd", "output_cost_usd")
    assert observation == {**_process(_avro(make_event(tenant="acme")), now).observation,
                           **{name: observation[name] for name in money}}
    factor = (100 - Decimal(HOOLI["discount_pct"])) / 100
    assert observation["input_cost_usd"] == (800 * Decimal(entry["input_per_mtok"])
                                             + 200 * Decimal(entry["cache_read_per_mtok"])) * factor / MILLION


def test_observation_fields(make_event, now):
    event = make_event(provider="OpenAI", model="GPT-4o", latency_ms=1234, status="timeout", error_code="timeout",
                       output_tokens=0)
    result = _process(_avro(event), now)
    observation = result.observation
    assert observation["provider"] == "openai" and observation["model"] == "gpt-4o"  # normalised, like the line
    assert observation["latency_ms"] == 1234
    assert observation["status"] == "timeout"
    assert observation["tokens"] == 1000 + 0
    assert observation["event_time"] == event["event_time"]
    assert observation["cost_usd"] == result.cost_line["cost_usd"]
    entry = current_entry("openai", "gpt-4o", event["event_time"])
    assert observation["input_price_per_mtok"] == Decimal(entry["input_per_mtok"])
    assert observation["output_price_per_mtok"] == Decimal(entry["output_per_mtok"])
    assert (observation["input_tokens"], observation["output_tokens"]) == (1000, 0)
    assert observation["ttft_ms"] == event["time_to_first_token_ms"] == 270
    codec = codec_for("model_observation")
    assert codec.decode(codec.encode(observation)) == observation


def test_the_cost_split_puts_cache_tokens_with_input_and_reasoning_with_output(make_event, now):
    # claude-sonnet-4 has its own cache read and write prices; reasoning falls back to the output price
    event = make_event(provider="anthropic", model="claude-sonnet-4", input_tokens=50_000, cached_input_tokens=20_000,
                       cache_write_tokens=10_000, output_tokens=3_000, reasoning_tokens=1_000)
    result = _process(_avro(event), now)
    entry = current_entry("anthropic", "claude-sonnet-4", event["event_time"])
    rate = {name: Decimal(str(entry[name])) / MILLION for name in
            ("input_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok", "output_per_mtok")}
    expected_input = 20_000 * rate["input_per_mtok"] + 20_000 * rate["cache_read_per_mtok"] \
        + 10_000 * rate["cache_write_per_mtok"]
    expected_output = 3_000 * rate["output_per_mtok"]  # 2,000 plain output + 1,000 reasoning at the output price
    observation = result.observation
    assert observation["input_cost_usd"] == expected_input == Decimal("0.1035")  # 0.06 + 0.006 + 0.0375, by hand
    assert observation["output_cost_usd"] == expected_output == Decimal("0.045")
    assert observation["input_cost_usd"] + observation["output_cost_usd"] == result.cost_line["cost_usd"]
    assert (observation["input_tokens"], observation["output_tokens"]) == (50_000, 3_000)
    codec = codec_for("model_observation")
    assert codec.decode(codec.encode(observation)) == observation


def test_the_cost_split_adds_up_to_the_cost_when_rounding_bites(make_event, now):
    # A 33.333333333% discount on 1 input + 1 output token of gpt-4o leaves 18 decimal places in each part.
    # Rounded alone, input (…1.666666666675e-6) and output (…6.6666666667e-6) both round up and would sum to
    # one 1e-12 more than the rounded total; output is therefore the total minus the rounded input.
    third = parse_tenant_overrides([{"tenant": "third", "discount_pct": "33.333333333"}])
    catalog = PRICING.catalog.with_overrides(third)
    pricing = LlmPricingContext(catalog, PRICING.registry, KEY)
    event = make_event(tenant="third", input_tokens=1, cached_input_tokens=0, output_tokens=1)
    observation = _process(_avro(event), now, pricing).observation
    factor = (100 - Decimal("33.333333333")) / 100
    entry = current_entry("openai", "gpt-4o", event["event_time"])
    exact_input = Decimal(entry["input_per_mtok"]) / MILLION * factor
    exact_output = Decimal(entry["output_per_mtok"]) / MILLION * factor
    money = Decimal("1e-12")
    assert observation["input_cost_usd"] == exact_input.quantize(money) == Decimal("0.000001666667")
    assert observation["cost_usd"] == (exact_input + exact_output).quantize(money) == Decimal("0.000008333333")
    assert observation["output_cost_usd"] == Decimal("0.000006666666") != exact_output.quantize(money)
    assert observation["input_cost_usd"] + observation["output_cost_usd"] == observation["cost_usd"]


# --- tagging through the pipeline ------------------------------------------------------------------------------

def test_missing_tenant_and_feature_are_defaulted_and_say_so(make_event, now):
    event = make_event(tenant="", feature="", service="code-assist")
    line = _process(_avro(event), now).cost_line
    assert (line["tenant"], line["tag_source"]["tenant"]) == ("unallocated", "default")
    assert (line["feature"], line["tag_source"]["feature"]) == (OWNERS["code-assist"]["default_feature"], "inferred")
    assert line["priced"] is True


def test_a_json_event_may_leave_out_tenant_service_feature_and_provider(make_event, now):
    event = make_event()
    for name in ("tenant", "service", "feature", "provider"):
        del event[name]
    line = _process(_json(event), now).cost_line
    assert (line["tenant"], line["service"], line["team"], line["product"]) == ("unallocated",) * 4
    assert (line["feature"], line["tag_source"]["feature"]) == ("unspecified", "default")
    assert (line["provider"], line["tag_source"]["provider"]) == ("openai", "inferred")
    assert line["cost_usd"] == expected_cost(current_entry("openai", "gpt-4o", event["event_time"]), make_event())


def test_labels_drive_team_and_are_copied_onto_the_line(make_event, now):
    result = _process(_avro(make_event(labels={"region": "eu-west-1", "team": "Search Quality"})), now)
    assert result.cost_line["labels"] == {"region": "eu-west-1", "team": "Search Quality"}
    assert result.cost_line["team"] == "search quality"
    assert result.cost_line["tag_source"]["team"] == "explicit"


def test_unknown_model_is_kept_flagged_unpriced(make_event, now):
    result = _process(_avro(make_event(provider="newco", model="mystery-1")), now)
    assert isinstance(result, PricedUsage)
    assert result.cost_line["priced"] is False
    assert result.cost_line["cost_usd"] == 0
    assert result.cost_line["price_version"] == "unpriced"
    assert result.observation["input_price_per_mtok"] is None
    assert result.observation["output_price_per_mtok"] is None
    assert (result.observation["input_cost_usd"], result.observation["output_cost_usd"]) == (None, None)
    assert (result.observation["input_tokens"], result.observation["output_tokens"]) == (1000, 500)
    codec_for("cost_line").encode(result.cost_line)
    codec_for("model_observation").encode(result.observation)


def test_unknown_model_without_provider_is_unpriced_too(make_event, now):
    line = _process(_avro(make_event(provider="", model="mystery-1")), now).cost_line
    assert (line["priced"], line["provider"], line["tag_source"]["provider"]) == (False, "unknown", "default")


# --- personal data ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("user_id", ["user-8675309", "jane.doe@example.com"])
def test_user_id_is_stored_only_as_its_keyed_hash(make_event, now, user_id):
    result = _process(_avro(make_event(user_id=user_id)), now)
    assert result.cost_line["user_hash"] == hmac.new(KEY, user_id.encode(), hashlib.sha256).hexdigest()
    assert user_id.encode() not in _everything_stored(result)
    assert "user_id" not in result.cost_line


def test_the_user_hash_depends_on_the_configured_key(make_event, now):
    other = LlmPricingContext(PRICING.catalog, PRICING.registry, b"another-key")
    event = _avro(make_event(user_id="user-1"))
    assert _process(event, now).cost_line["user_hash"] != _process(event, now, other).cost_line["user_hash"]


def test_emails_and_phone_numbers_in_labels_and_customer_are_masked(make_event, now):
    event = make_event(customer="jane@example.com",
                       labels={"owner": "jane@example.com", "callback": "+1 415 555 0100", "order": "order-12345"})
    result = _process(_avro(event), now)
    assert result.cost_line["labels"] == {"owner": "[email]", "callback": "[phone]", "order": "order-12345"}
    assert result.cost_line["customer"] == "[email]"
    stored = _everything_stored(result)
    assert b"jane@example.com" not in stored and b"415 555 0100" not in stored


PROMPT = "Summarize the contract for Jane Roe, SSN 078-05-1120"


def test_a_json_prompt_is_dropped_and_the_call_still_priced(make_event, now):
    event = {**make_event(), "prompt": PROMPT}
    result = _process(_json(event), now)
    assert isinstance(result, PricedUsage)
    assert result.dropped_content_fields == ["prompt"]
    assert result.cost_line["cost_usd"] == expected_cost(current_entry("openai", "gpt-4o", event["event_time"]), event)
    assert PROMPT.encode() not in _everything_stored(result)
    assert "Jane Roe" not in json.dumps(result.cost_line, default=str)


def test_content_in_labels_is_dropped_too(make_event, now):
    event = make_event(labels={"team": "search", "completion": PROMPT})
    result = _process(_json(event), now)
    assert result.dropped_content_fields == ["labels.completion"]
    assert result.cost_line["labels"] == {"team": "search"}
    assert PROMPT.encode() not in _everything_stored(result)


def test_an_invalid_json_event_with_a_prompt_is_dead_lettered_without_it(make_event, now):
    event = {**make_event(input_tokens=-5, cached_input_tokens=0), "prompt": PROMPT, "messages": [PROMPT]}
    result = _process(_json(event), now)
    assert isinstance(result, Rejection)
    assert (result.field, result.rule) == ("input_tokens", "non_negative")
    assert PROMPT.encode() not in result.value
    assert b"Jane Roe" not in result.value
    assert json.loads(result.value)["event_id"] == event["event_id"]  # the rest is kept for the dead letter


def test_an_undecodable_json_event_with_a_prompt_is_dead_lettered_without_it(make_event, now):
    event = {**make_event(), "prompt": PROMPT, "status": "great"}
    result = _process(_json(event), now)
    assert (result.field, result.rule) == ("status", "enum")
    assert PROMPT.encode() not in result.value


# --- rejections --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "field", "rule"), [
    (b"\x00\x13garbage", None, "wire_format"),
    (b"", None, "non_empty"),
    (None, None, "non_empty"),
    (b"{oops", None, "json_decode"),
    (b"\xc3\x01" + bytes(8) + b"\x00", None, "unknown_schema"),
])
def test_undecodable_values_are_rejected(value, field, rule, now):
    result = _process(value, now)
    assert isinstance(result, Rejection)
    assert (result.field, result.rule) == (field, rule)
    assert result.message
    assert result.value == value  # dead-lettered as received


def test_negative_tokens_in_json_are_rejected_naming_the_field(make_event, now):
    value = _json(make_event(input_tokens=-5, cached_input_tokens=0))
    result = _process(value, now)
    assert result == Rejection("input_tokens", "non_negative", "must be >= 0, got -5", value)


def test_schema_errors_in_json_are_rejected(make_event, now):
    event = make_event()
    del event["model"]
    result = _process(_json(event), now)
    assert (result.field, result.rule) == ("model", "required")
    result = _process(_json(make_event(status="great")), now)
    assert (result.field, result.rule) == ("status", "enum")


@pytest.mark.parametrize(("overrides", "field", "rule"), [
    ({"input_tokens": 100, "cached_input_tokens": 150}, "cached_input_tokens", "within_input_tokens"),
    ({"input_tokens": 100, "cached_input_tokens": 60, "cache_write_tokens": 41}, "cache_write_tokens", "within_input_tokens"),
    ({"output_tokens": 10, "reasoning_tokens": 11}, "reasoning_tokens", "within_output_tokens"),
    ({"model": "  "}, "model", "non_empty"),
])
def test_rule_violations_in_avro_are_rejected(make_event, now, overrides, field, rule):
    value = _avro(make_event(**overrides))
    result = _process(value, now)
    assert (result.field, result.rule) == (field, rule)
    assert result.value == value


def test_an_event_from_the_future_is_rejected(make_event, now):
    result = _process(_avro(make_event(event_time=now + dt.timedelta(hours=1))), now)
    assert (result.field, result.rule) == ("event_time", "not_in_future")


# --- token limits, service tiers, threshold tiers and time of day in the worker ---------------------------------------

@pytest.mark.parametrize("field", ["input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens",
                                   "reasoning_tokens"])
def test_absurd_token_counts_are_dead_lettered_naming_field_and_rule(make_event, now, field):
    value = _avro(make_event(**{field: 10**15}))  # fits an Avro long, beyond the 10^9 default
    result = _process(value, now)
    assert isinstance(result, Rejection)
    assert (result.field, result.rule) == (field, "max_tokens")  # checked before the within_* rules
    assert "10" in result.message and "max_tokens_per_call" in result.message
    assert result.value == value


def test_the_token_limit_comes_from_settings(make_event, now):
    pricing = LlmPricingContext(PRICING.catalog, PRICING.registry, KEY, max_tokens_per_call=1_000)
    assert isinstance(_process(_avro(make_event(input_tokens=1_000)), now, pricing), PricedUsage)
    result = _process(_avro(make_event(input_tokens=1_001)), now, pricing)
    assert (result.field, result.rule) == ("input_tokens", "max_tokens")
    assert LlmPricingContext.from_settings(
        Settings().with_overrides(pricing={"max_tokens_per_call": 5})).max_tokens_per_call == 5


def test_tokens_beyond_an_avro_long_in_json_are_rejected_without_a_traceback(make_event, now):
    result = _process(_json(make_event(input_tokens=10**40, cached_input_tokens=0)), now)
    assert isinstance(result, Rejection)
    assert (result.field, result.rule) == ("input_tokens", "range")


def test_a_batch_record_dead_letters_only_the_absurd_event(make_event, now):
    from prismops.finops.llm_usage import price_usage_record

    good, bad = make_event(event_id="ok"), make_event(event_id="huge", output_tokens=10**12)
    value = json.dumps([json.loads(_json(good)), json.loads(_json(bad))]).encode()
    outcomes = price_usage_record(value, PRICING, now).outcomes
    assert isinstance(outcomes[0], PricedUsage)
    assert (outcomes[1].field, outcomes[1].rule) == ("output_tokens", "max_tokens")


def test_the_service_tier_label_picks_the_batch_prices(make_event, now):
    gpt_4o = current_entry("openai", "gpt-4o", now)
    batch = gpt_4o["service_tiers"]["batch"]
    event = make_event(labels={"service_tier": "batch"})
    line = _process(_avro(event), now).cost_line
    # batch input for all 1000 prompt tokens: the batch tier gives no cache-read price, so the standard one applies
    expected = (800 * Decimal(batch["input_per_mtok"]) + 200 * Decimal(gpt_4o["cache_read_per_mtok"])
                + 500 * Decimal(batch["output_per_mtok"])) / MILLION
    assert line["cost_usd"] == expected.quantize(Decimal("1e-12"))
    assert line["labels"]["service_tier"] == "batch"


def test_an_unknown_service_tier_label_is_dead_lettered(make_event, now):
    result = _process(_avro(make_event(labels={"service_tier": "turbo"})), now)
    assert (result.field, result.rule) == ("labels.service_tier", "known_service_tier")


def test_a_long_prompt_is_billed_at_the_tier_price(make_event, now):
    gemini = current_entry("google", "gemini-2.5-pro", now)
    [tier] = gemini["tiers"]
    event = make_event(provider="google", model="gemini-2.5-pro", input_tokens=tier["above_input_tokens"] + 1,
                       cached_input_tokens=0, output_tokens=1_000)
    line = _process(_avro(event), now).cost_line
    expected = ((tier["above_input_tokens"] + 1) * Decimal(tier["input_per_mtok"])
                + 1_000 * Decimal(tier["output_per_mtok"])) / MILLION
    assert line["cost_usd"] == expected.quantize(Decimal("1e-12"))


def test_the_event_time_picks_off_peak_prices(make_event):
    later = dt.datetime(2025, 6, 1, 17, 0, tzinfo=dt.timezone.utc)  # while DeepSeek had off-peak prices
    deepseek = current_entry("deepseek", "deepseek-chat", later)
    off_peak = deepseek["off_peak"]
    assert off_peak["windows"] == [{"hours": "16:30-00:30"}] and off_peak["timezone"] == "UTC"
    for event_time, prices in ((later - dt.timedelta(minutes=31), deepseek), (later - dt.timedelta(minutes=29), off_peak)):
        event = make_event(provider="deepseek", model="deepseek-chat", event_time=event_time, input_tokens=10_000,
                           cached_input_tokens=0, output_tokens=1_000)
        line = _process(_avro(event), later).cost_line
        expected = (10_000 * Decimal(prices["input_per_mtok"]) + 1_000 * Decimal(prices["output_per_mtok"])) / MILLION
        assert line["cost_usd"] == expected.quantize(Decimal("1e-12")), event_time
    # since 2025-09-05 the same hour costs the standard price
    event = make_event(provider="deepseek", model="deepseek-chat", event_time=dt.datetime(2026, 6, 1, 16, 45, tzinfo=dt.timezone.utc),
                       input_tokens=10_000, cached_input_tokens=0, output_tokens=1_000)
    current = current_entry("deepseek", "deepseek-chat", event["event_time"])
    assert "off_peak" not in current
    line = _process(_avro(event), dt.datetime(2026, 6, 1, 17, 0, tzinfo=dt.timezone.utc)).cost_line
    assert line["cost_usd"] == ((10_000 * Decimal(current["input_per_mtok"]) + 1_000 * Decimal(current["output_per_mtok"]))
                                / MILLION).quantize(Decimal("1e-12"))


# --- settings -------------------------------------------------------------------------------------------------------

@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PRISMOPS_"):
            monkeypatch.delenv(name)


def test_context_from_default_settings(clean_env, make_event, now):
    pricing = LlmPricingContext.from_settings(Settings())
    assert pricing.user_hash_key == b"prismops-development-key"
    assert pricing.catalog.version == CATALOG_YAML["version"]
    line = _process(_avro(make_event(user_id="u1")), now, pricing).cost_line
    assert line["user_hash"] == hmac.new(b"prismops-development-key", b"u1", hashlib.sha256).hexdigest()


def test_context_from_settings_with_litellm_prices_and_a_key(clean_env, make_event, now):
    settings = Settings().with_overrides(pricing={"catalog": EXCERPT}, pii={"hash_key": "s3cret"})
    pricing = LlmPricingContext.from_settings(settings)
    assert pricing.user_hash_key == b"s3cret"
    raw = json.loads(EXCERPT.read_bytes(), parse_float=Decimal)["gpt-4o-mini"]
    event = make_event(model="gpt-4o-mini", input_tokens=1000, cached_input_tokens=400, output_tokens=100)
    line = _process(_avro(event), now, pricing).cost_line
    assert line["cost_usd"] == (600 * raw["input_cost_per_token"] + 400 * raw["cache_read_input_token_cost"]
                                + 100 * raw["output_cost_per_token"])
    assert line["price_version"].startswith("litellm-")


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.sampled_from(["llm", "gpu", "cloud"]), st.text(max_size=80))
def test_a_line_id_is_the_text_of_the_uuid5_of_source_and_event_id(source, event_id):
    assert cost_line_id(source, event_id) == str(uuid.uuid5(COST_LINE_NAMESPACE, f"{source}:{event_id}"))


def test_simulated_traffic_is_priced_as_price_llm_call_prices_the_tagged_event(now):
    """The pricing stage prices with the tagged provider and tenant without copying the event; every simulated call
    costs what price_llm_call gives a copy carrying them, and its list prices are the catalog's per million."""
    from prismops.finops.llm_usage import build_llm_cost_line
    from prismops.finops.pricing import price_llm_call
    from prismops.finops.validation import service_tier_of
    from prismops.streams.simulation import TrafficGenerator

    events = list(TrafficGenerator(seed=7, start=now - dt.timedelta(hours=1)).events(2000))
    for position, event in enumerate(events[::3]):  # some calls on a named tier, in the spellings callers send
        event["labels"] = {**(event.get("labels") or {}), "service_tier": ("batch", "Flex", "priority", "default")[position % 4]}
    assert len({(e["tenant"], e["model"]) for e in events}) > 10
    tiers = set()
    for event in events:
        tier = PRICING.validate(event, now)
        tiers.add(tier)
        result = build_llm_cost_line(event, PRICING, tier)
        dims, _ = resolve_dimensions(event, PRICING.registry, PRICING.catalog.infer_provider)
        reference = price_llm_call({**event, "provider": dims["provider"], "tenant": dims["tenant"],
                                    "service_tier": service_tier_of(event)}, PRICING.catalog)
        assert (result.cost_line["cost_usd"], result.cost_line["priced"]) == (reference.cost_usd, reference.priced)
        list_quote = PRICING.catalog.quote(dims["provider"], dims["model"], event["event_time"])
        per_million = list_quote.prices.per_million() if list_quote else {"input": None, "output": None}
        assert result.observation["input_price_per_mtok"] == per_million["input"]
        assert result.observation["output_price_per_mtok"] == per_million["output"]
    assert tiers == {"standard", "batch", "flex", "priority"}


# --- call shapes: cost lines written from a template of their tags -------------------------------------------

SHAPE_EVENTS = st.fixed_dictionaries({
    "event_id": st.integers(0, 10**9).map(lambda n: f"call-{n}"),
    "tenant": st.sampled_from(["acme", "ACME ", ""]),  # few tags, so calls that differ in one tag alone come often
    "service": st.just("code-assist"),
    "model": st.sampled_from(["gpt-4o", "no-such-model"]),
    "customer": st.sampled_from([None, "cust-001", "jane@example.com"]),
    "labels": st.sampled_from([{}, {"note": "call +1 415 555 0100"}, {"service_tier": "batch"}]),
    "input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**5),
    "user_id": st.sampled_from([None, "u-1"]), "session_id": st.sampled_from([None, "s-1"]),
    "model_version": st.sampled_from([None, "2024-08-06"]), "prompt_chars": st.sampled_from([0, 12]),
    "cache_hit": st.booleans(), "fallback": st.booleans(), "shadow": st.booleans(),
    "status": st.sampled_from(["ok", "error"]), "latency_ms": st.integers(0, 10**6),
})


@hypothesis_settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(SHAPE_EVENTS, min_size=2, max_size=20))
def test_cost_lines_written_from_their_shapes_template_are_the_bytes_of_writing_them_whole(make_event, now, changes):
    """Whatever the order of shapes, each line equals the line of its event priced alone (no shape remembered), and
    its template bytes equal the compiled writer's bytes of the same line written whole, so neither a shape nor a
    template can carry another call's tags."""
    from prismops.streams.codecs import TemplatedRecord, batch_codec_for

    pricing = LlmPricingContext(PRICING.catalog, PRICING.registry, KEY)
    codec = batch_codec_for("cost_line")
    lines = []
    for change in changes:
        outcome = process_llm_usage(_avro(make_event(**change, cached_input_tokens=0)), pricing, now)
        assert isinstance(outcome, PricedUsage), outcome
        lines.append(outcome.cost_line)
    seen: dict[str, int] = {}
    for line, change in zip(lines, changes):
        personal = change["customer"] == "jane@example.com" or "note" in change["labels"]
        key = repr((change["tenant"], change["model"], change["customer"], sorted(change["labels"].items())))
        assert isinstance(line, TemplatedRecord) is (not personal and seen.get(key, 0) >= 2)  # made from the 2nd
        seen[key] = seen.get(key, 0) + 1
        alone = LlmPricingContext(PRICING.catalog, PRICING.registry, KEY)  # no shape remembered from other events
        assert dict(line) == dict(process_llm_usage(_avro(make_event(**change, cached_input_tokens=0)), alone, now).cost_line)
    for line in lines:
        assert codec.encode_array([line]) == codec.encode_array([dict(line)])
    assert codec.encode_array(lines) == codec.encode_array([dict(line) for line in lines])
    decoded = codec.decode(codec.encode(lines, origin="usage/0", position=0)).items
    assert [item.value for item in decoded] == [dict(line) for line in lines]


@pytest.mark.parametrize("tag, values", [("customer", [None, "cust-001", "cust-002"]), ("tenant", ["acme", "ACME ", ""]),
                                         ("labels", [{}, {"team": "search"}, {"team": "ads"}]),
                                         ("feature", ["complete", "", "chat"]), ("environment", ["prod", "dev"])])
def test_calls_that_differ_in_one_tag_get_lines_of_their_own_tags(make_event, now, tag, values):
    pricing = LlmPricingContext(PRICING.catalog, PRICING.registry, KEY)
    for _ in range(2):
        for index, value in enumerate(values):
            line = process_llm_usage(_avro(make_event(event_id=f"e{index}", **{tag: value})), pricing, now).cost_line
            alone = LlmPricingContext(PRICING.catalog, PRICING.registry, KEY)
            assert dict(line) == dict(process_llm_usage(_avro(make_event(event_id=f"e{index}", **{tag: value})), alone,
                                                        now).cost_line)


def test_a_shape_whose_customer_or_labels_hold_personal_data_is_kept_nowhere(make_event, now):
    """Masked for every call and remembered by neither the shapes nor the tagging memo, as mask_personal_data
    keeps no text that held personal data; a plain shape is remembered and its lines share a template."""
    from prismops.streams.codecs import TemplatedRecord

    pricing = LlmPricingContext(PRICING.catalog, PRICING.registry, KEY)
    for index, change in enumerate([{"customer": "jane@example.com"}, {"labels": {"note": "mail jane@example.com"}}]):
        outcome = process_llm_usage(_avro(make_event(event_id=f"p{index}", **change)), pricing, now)
        assert "jane@example.com" not in json.dumps(outcome.cost_line, default=str)
        assert not isinstance(outcome.cost_line, TemplatedRecord)
    assert "jane@example.com" not in repr(pricing._shapes)
    first, second, third, fourth = (process_llm_usage(_avro(make_event(event_id=f"k{index}")), pricing, now)
                                    for index in range(4))
    assert not isinstance(first.cost_line, TemplatedRecord) and not isinstance(second.cost_line, TemplatedRecord)
    assert isinstance(third.cost_line, TemplatedRecord) and third.cost_line.template is fourth.cost_line.template
    assert third.cost_line["labels"] is not fourth.cost_line["labels"], "each line owns its maps"
