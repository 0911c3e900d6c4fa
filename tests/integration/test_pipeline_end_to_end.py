"""The walking skeleton on the real stack: SDK → Kafka → Faust worker → ClickHouse, and bad input → DLQ.

Worker, sink and gateway run as the real `prismops` commands in child processes (see the `pipeline` fixture).
"""

from __future__ import annotations

import hashlib
import json
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import resources

import yaml
from click.testing import CliRunner
from confluent_kafka import Producer

from prismops.cli.app import main
from prismops.testing import clickhouse, read_topic_to_end, wait_drained, wait_for
from prismops.streams.codecs import codec_for
from prismops.streams.producer import UsageProducer, new_llm_usage_event
from prismops.streams.simulation import TrafficGenerator
from prismops.streams.topics import COST_LINES, DEAD_LETTERS, LLM_USAGE

EVENTS = 10_000


def independent_cost(event: dict, catalog: dict) -> Decimal:
    """The cost of one call computed here from the catalog YAML's numbers, without prismops.finops.pricing:
    the entry in effect at the event's time, the cache-read price (else input), the tenant's discount."""
    when = event["event_time"].date().isoformat()
    entries = [m for m in catalog["models"] if (m["provider"], m["model"]) == (event["provider"], event["model"])]
    price = max((m for m in entries if str(m["effective_from"]) <= when), key=lambda m: str(m["effective_from"]))
    cache_read = price.get("cache_read_per_mtok", price["input_per_mtok"])
    uncached = event["input_tokens"] - event["cached_input_tokens"]
    total = (
        uncached * Decimal(price["input_per_mtok"])
        + event["cached_input_tokens"] * Decimal(cache_read)
        + event["output_tokens"] * Decimal(price["output_per_mtok"])
    ) / Decimal(10**6)
    for override in catalog.get("tenant_overrides", []):
        if override["tenant"] == event["tenant"] and override["provider"] in ("*", event["provider"]) \
                and override.get("model", "*") in ("*", event["model"]) and str(override["effective_from"]) <= when:
            total = total * (100 - Decimal(override["discount_pct"])) / 100
    return total.quantize(Decimal("1e-12"), rounding=ROUND_HALF_EVEN)


def bundled_prices() -> dict:
    return yaml.safe_load(resources.files("prismops.finops").joinpath("price_catalog.yaml").read_text())


def test_ten_thousand_sdk_events_land_in_clickhouse_exactly_once_with_exact_cost(pipeline):
    settings, components = pipeline
    prices = bundled_prices()
    events = list(TrafficGenerator(seed=2026).events(EVENTS))
    expected_cost = sum((independent_cost(e, prices) for e in events), Decimal(0))
    with UsageProducer(settings) as producer:
        for event in events:
            producer.record_llm_call(event)
    assert producer.delivered == EVENTS

    client = clickhouse(settings)
    count_sql = "SELECT count() FROM cost_lines WHERE source = 'llm'"
    wait_for(lambda: client.execute(count_sql)[0][0] >= EVENTS, 300, components, f"{EVENTS} cost lines")
    # drained: every usage record priced and every cost line stored, so a duplicate would be a row already
    wait_drained(settings, components, {settings.worker_app_id: (LLM_USAGE,), settings.sink_group_id: (COST_LINES,)})

    (rows, distinct_events, cost), = client.execute(
        "SELECT count(), uniqExact(source_event_id), sum(cost_usd) FROM cost_lines WHERE source = 'llm'"
    )
    assert rows == EVENTS, "every event exactly once: no row missing, none duplicated (count without FINAL)"
    assert distinct_events == EVENTS
    stored_ids = {row[0] for row in client.execute("SELECT source_event_id FROM cost_lines")}
    assert stored_ids == {e["event_id"] for e in events}
    assert Decimal(cost) == expected_cost

    by_tenant = dict(client.execute("SELECT tenant, sum(cost_usd) FROM cost_lines GROUP BY tenant"))
    for tenant in {e["tenant"] for e in events}:
        expected = sum((independent_cost(e, prices) for e in events if e["tenant"] == tenant), Decimal(0))
        assert Decimal(by_tenant[tenant]) == expected, tenant
    client.disconnect()

    # "what did team X cost today": one command over the one cost-line table
    owners = yaml.safe_load(resources.files("prismops.finops").joinpath("service_registry.yaml").read_text())["services"]
    team = owners[events[0]["service"]]["team"]
    expected_team = sum((independent_cost(e, prices) for e in events if owners[e["service"]]["team"] == team), Decimal(0))
    result = CliRunner().invoke(
        main, ["report", "costs", "--by", "team", "--by", "source", "--where", f"team={team}", "--format", "json"],
        obj=settings,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["columns"] == ["team", "source", "lines", "cost_usd", "unpriced_lines"]
    assert [(r["team"], r["source"], Decimal(r["cost_usd"])) for r in report["rows"]] == [(team, "llm", expected_team)]
    assert Decimal(report["total"]["cost_usd"]) == expected_team


def test_malformed_and_invalid_input_goes_to_dlq_and_processing_continues(pipeline):
    settings, components = pipeline
    topic = LLM_USAGE.name(settings)
    garbage = b"\x00\x01not an event at all"
    negative = new_llm_usage_event(
        tenant="dlq-tenant", service="search", feature="rerank", environment="prod", provider="openai",
        model="gpt-4o-mini", input_tokens=-5, output_tokens=10, latency_ms=120, status="ok",
    )
    negative_json = json.dumps({**negative, "event_time": negative["event_time"].isoformat()}).encode()
    good = new_llm_usage_event(
        tenant="dlq-tenant", service="search", feature="rerank", environment="prod", provider="openai",
        model="gpt-4o-mini", input_tokens=100, output_tokens=10, latency_ms=120, status="ok",
    )
    raw = Producer(settings.kafka_client_config())
    raw.produce(topic, key=b"dlq-tenant", value=garbage)
    raw.produce(topic, key=b"dlq-tenant", value=negative_json)
    raw.produce(topic, key=b"dlq-tenant", value=codec_for("llm_usage_event").encode_json(good))
    assert raw.flush(30) == 0

    client = clickhouse(settings)
    wait_for(
        lambda: client.execute("SELECT count() FROM cost_lines WHERE source_event_id = %(id)s", {"id": good["event_id"]})[0][0],
        120, components, "the good event after the bad ones",
    )

    def both_letters() -> list[dict]:  # read by assignment to the topic's end, again until both are there
        found = [letter for _key, letter in read_topic_to_end(settings, DEAD_LETTERS)]
        return found if len(found) >= 2 else []
    letters = wait_for(both_letters, 60, components, "the two dead letters")

    by_rule = {letter["error_rule"]: letter for letter in letters}
    assert set(by_rule) == {"wire_format", "non_negative"}
    unparsable = json.loads(by_rule["wire_format"]["original_value"])
    assert unparsable["redacted"] == "unparsable", "bytes that parse as nothing are never stored verbatim"
    assert unparsable["sha256"] == hashlib.sha256(garbage).hexdigest() and unparsable["length"] == len(garbage)
    assert by_rule["non_negative"]["error_field"] == "input_tokens"
    assert json.loads(by_rule["non_negative"]["original_value"]) == json.loads(negative_json), \
        "a parsable event without personal data is kept whole"
    assert all(letter["source_topic"] == topic and letter["stage"] == "worker.price_llm_usage" for letter in letters)

    (dlq_rows,), = wait_for(
        lambda: [r for r in client.execute("SELECT count() FROM dead_letters") if r[0] >= 2], 60, components,
        "dead letters in ClickHouse",
    )
    assert dlq_rows == 2
    client.disconnect()
