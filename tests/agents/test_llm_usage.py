"""agents/llm_usage.py: one message in, a cost line and a model observation out, or a Rejection."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from importlib import resources

import pytest
import yaml

from agents.llm_usage import LlmPricingContext, PricedUsage, Rejection, cost_line_id, process_llm_usage
from agents.pricing import load_price_table
from agents.tagging import load_service_registry
from streams.codecs import codec_for

TABLE = load_price_table()
REGISTRY = load_service_registry()
PRICES = {e["model"]: e for e in yaml.safe_load(resources.files("agents").joinpath("price_table.yaml").read_text())["models"]}
OWNERS = yaml.safe_load(resources.files("agents").joinpath("service_registry.yaml").read_text())["services"]


def _avro(event: dict) -> bytes:
    return codec_for("llm_usage_event").encode(event)


def _json(event: dict) -> bytes:
    return json.dumps(event, default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v)).encode()


def _process(value, now) -> PricedUsage | Rejection:
    return process_llm_usage(value, LlmPricingContext(TABLE, REGISTRY), now)


def test_good_avro_event_becomes_a_cost_line_that_encodes(make_event, now):
    event = make_event()
    result = _process(_avro(event), now)
    assert isinstance(result, PricedUsage)
    line = result.cost_line
    codec = codec_for("cost_line")
    assert codec.decode(codec.encode(line)) == line

    price = PRICES["gpt-4o"]
    expected_cost = (
        800 * Decimal(price["input_per_mtok"]) + 200 * Decimal(price["cached_input_per_mtok"])
        + 500 * Decimal(price["output_per_mtok"])
    ) / 1_000_000
    assert line["cost_usd"] == expected_cost
    assert line["priced"] is True
    assert line["price_version"] == TABLE.version
    assert line["source"] == "llm"
    assert line["source_event_id"] == event["event_id"]
    assert line["event_time"] == event["event_time"]
    assert (line["tenant"], line["service"], line["feature"]) == ("acme", "code-assist", "complete")
    assert (line["team"], line["product"]) == (OWNERS["code-assist"]["team"], OWNERS["code-assist"]["product"])
    assert line["tag_source"]["team"] == "inferred"
    assert line["usage_quantity"] == Decimal(1500)
    assert line["usage_unit"] == "token"
    assert (line["input_tokens"], line["output_tokens"], line["cached_input_tokens"]) == (1000, 500, 200)
    assert line["status"] == "ok"
    assert result.observation["tokens"] == 1000 + 500
    assert result.observation["cost_usd"] == expected_cost


def test_line_id_is_deterministic_per_event(make_event, now):
    first = _process(_avro(make_event(event_id="evt-A")), now).cost_line["line_id"]
    again = _process(_avro(make_event(event_id="evt-A", latency_ms=1)), now).cost_line["line_id"]
    other = _process(_avro(make_event(event_id="evt-B")), now).cost_line["line_id"]
    assert first == again
    assert first != other
    assert uuid.UUID(first)
    assert first == cost_line_id("llm", "evt-A")
    assert cost_line_id("gpu", "evt-A") != first  # the source is part of the identity


def test_the_same_event_as_json_gets_the_same_line(make_event, now):
    event = make_event()
    from_avro = _process(_avro(event), now)
    from_json = _process(_json(event), now)
    assert from_json == from_avro


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
    assert observation["input_price_per_mtok"] == Decimal(PRICES["gpt-4o"]["input_per_mtok"])
    assert observation["output_price_per_mtok"] == Decimal(PRICES["gpt-4o"]["output_per_mtok"])
    codec = codec_for("model_observation")
    assert codec.decode(codec.encode(observation)) == observation


def test_unknown_model_is_kept_flagged_unpriced(make_event, now):
    result = _process(_avro(make_event(provider="newco", model="mystery-1")), now)
    assert isinstance(result, PricedUsage)
    assert result.cost_line["priced"] is False
    assert result.cost_line["cost_usd"] == 0
    assert result.cost_line["price_version"] == "unpriced"
    assert result.observation["input_price_per_mtok"] is None
    assert result.observation["output_price_per_mtok"] is None
    codec_for("cost_line").encode(result.cost_line)
    codec_for("model_observation").encode(result.observation)


def test_v1_event_bytes_are_priced(make_event, now):
    event = make_event()
    result = _process(codec_for("llm_usage_event").encode(event, version=1), now)
    assert isinstance(result, PricedUsage)
    assert result.cost_line["reasoning_tokens"] == 0
    assert result.cost_line["line_id"] == cost_line_id("llm", event["event_id"])


def test_labels_are_copied_onto_the_line(make_event, now):
    result = _process(_avro(make_event(labels={"region": "eu-west-1", "team": "Search Quality"})), now)
    assert result.cost_line["labels"] == {"region": "eu-west-1", "team": "Search Quality"}
    assert result.cost_line["team"] == "search quality"
    assert result.cost_line["tag_source"]["team"] == "explicit"


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


def test_negative_tokens_in_json_are_rejected_naming_the_field(make_event, now):
    result = _process(_json(make_event(input_tokens=-5, cached_input_tokens=0)), now)
    assert result == Rejection("input_tokens", "non_negative", "must be >= 0, got -5")


def test_schema_errors_in_json_are_rejected(make_event, now):
    event = make_event()
    del event["tenant"]
    result = _process(_json(event), now)
    assert (result.field, result.rule) == ("tenant", "required")
    result = _process(_json(make_event(status="great")), now)
    assert (result.field, result.rule) == ("status", "enum")


def test_rule_violations_in_avro_are_rejected(make_event, now):
    result = _process(_avro(make_event(input_tokens=100, cached_input_tokens=150)), now)
    assert (result.field, result.rule) == ("cached_input_tokens", "within_input_tokens")
    result = _process(_avro(make_event(event_time=now + dt.timedelta(hours=1))), now)
    assert (result.field, result.rule) == ("event_time", "not_in_future")
