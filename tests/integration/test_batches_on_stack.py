"""Batch records through the real pipeline (issue 13): a bad event inside a batch goes to the DLQ alone, a cost-line
batch sent again is stored and counted once, and the same calls as single records and as batches give the same
cost lines and budget spend. (kill -9 of the worker mid-batch: tests/integration/test_chaos_short.py.)"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from confluent_kafka import Producer

from prismops.finops.llm_usage import LlmPricingContext, PricedUsage, price_usage_record
from prismops.streams.codecs import batch_codec_for, codec_for
from prismops.streams.producer import UsageProducer, new_llm_usage_event
from prismops.streams.topics import BUDGET_STATE, COST_LINES, DEAD_LETTERS, LLM_USAGE
from prismops.testing import clickhouse, read_topic_to_end, wait_drained, wait_for

USAGE = batch_codec_for("llm_usage_event")


# The batch guarantees hold on both ways out: the shared pipeline fixture, once per `worker.output_path`.
pytestmark = pytest.mark.parametrize("pipeline", ["librdkafka", "faust"], indirect=True, scope="module")


def _call(tenant: str, **fields) -> dict:
    return new_llm_usage_event(tenant=tenant, service="search", feature="rerank", environment="prod",
                               provider="openai", model="gpt-4o-mini", input_tokens=1200, output_tokens=300,
                               latency_ms=250, status="ok") | fields


def _rows(client, tenant: str) -> int:
    return client.execute("SELECT count() FROM cost_lines WHERE tenant = %(t)s", {"t": tenant})[0][0]


def _budget_spent(settings, tenant: str) -> Decimal | None:
    """The tenant's daily USD spend in its newest state row (None before the first)."""
    rows = [v for _, v in read_topic_to_end(settings, BUDGET_STATE) if v["scope"] == "tenant" and v["scope_id"] == tenant]
    if not rows:
        return None
    usd = [b for b in rows[-1]["budgets"] if b["unit"] == "usd" and b["period"] == "daily"]
    return usd[0]["spent"]


def test_a_bad_event_inside_a_batch_goes_to_the_dlq_alone_and_the_rest_is_priced(pipeline):
    settings, components = pipeline
    tenant = f"batch-dlq-{uuid.uuid4().hex[:6]}"
    events = [_call(tenant) for _ in range(5)]
    events[2] = _call(tenant, input_tokens=-5)
    raw = Producer(settings.kafka_client_config())
    raw.produce(LLM_USAGE.name(settings), value=USAGE.frame([USAGE.items.encode_body(e) for e in events]))
    assert raw.flush(30) == 0

    client = clickhouse(settings)
    wait_for(lambda: _rows(client, tenant) >= 4, 120, components, "the four good events of the batch")
    stored = {r[0] for r in client.execute("SELECT source_event_id FROM cost_lines WHERE tenant = %(t)s", {"t": tenant})}
    assert stored == {e["event_id"] for i, e in enumerate(events) if i != 2}

    def letters() -> list[dict]:
        return [v for _, v in read_topic_to_end(settings, DEAD_LETTERS) if v["error_rule"] == "non_negative"
                and v["source_topic"] == LLM_USAGE.name(settings)]
    found = wait_for(lambda: [l for l in letters() if codec_for("llm_usage_event").decode(l["original_value"])
                              ["event_id"] == events[2]["event_id"]], 60, components, "the bad event's dead letter")
    [letter] = found
    assert letter["error_field"] == "input_tokens"
    assert codec_for("llm_usage_event").decode(letter["original_value"])["tenant"] == tenant, \
        "the dead letter holds that one event, re-encoded alone, not its whole batch"
    client.disconnect()


def test_a_cost_line_batch_sent_again_is_stored_and_counted_once(pipeline):
    """What the worker does after a crash: the same batch (same origin and position) again, at a new offset."""
    settings, components = pipeline
    tenant = f"batch-replay-{uuid.uuid4().hex[:6]}"
    pricing = LlmPricingContext.from_settings(settings)
    priced = price_usage_record(USAGE.encode([codec_for("llm_usage_event").decode(codec_for("llm_usage_event").encode(
        _call(tenant))) for _ in range(20)]), pricing, dt.datetime.now(dt.timezone.utc))
    lines = [o.cost_line for o in priced.outcomes if isinstance(o, PricedUsage)]
    value = batch_codec_for("cost_line").encode(lines, origin=f"test-replay/{tenant}", position=41)
    raw = Producer(settings.kafka_client_config())
    topic = COST_LINES.name(settings)
    raw.produce(topic, value=value, key=tenant.encode())
    assert raw.flush(30) == 0
    client = clickhouse(settings)
    wait_for(lambda: _rows(client, tenant) >= 20, 120, components, "the batch's rows")
    raw.produce(topic, value=value, key=tenant.encode())
    assert raw.flush(30) == 0
    marker = _call(tenant + "-after")  # same partition order is not needed: wait until a later batch is stored
    with UsageProducer(settings) as producer:
        producer.record_llm_call(marker)
    wait_for(lambda: _rows(client, tenant + "-after") >= 1, 120, components, "a later event")
    wait_drained(settings, components, {settings.sink_group_id: (COST_LINES,)})  # the batch sent again was read
    assert _rows(client, tenant) == 20, "raw rows, no FINAL: the batch sent again wrote nothing"
    expected = sum((line["cost_usd"] for line in lines), Decimal(0))
    assert wait_for(lambda: _budget_spent(settings, tenant) == expected, 60, components, "the tenant's budget row")
    client.disconnect()


def test_the_same_calls_as_singles_and_as_batches_give_the_same_lines_and_budgets(pipeline):
    settings, components = pipeline
    run = uuid.uuid4().hex[:6]
    single_tenant, batch_tenant = f"singles-{run}", f"batches-{run}"
    shapes = [dict(input_tokens=100 + 37 * i, output_tokens=11 * i, cached_input_tokens=(50 if i % 3 else 0),
                   model=("gpt-4o-mini", "gpt-4o")[i % 2], latency_ms=100 + i) for i in range(60)]
    singles = [_call(single_tenant, **shape) for shape in shapes]
    batches = [_call(batch_tenant, **shape) | {"event_time": s["event_time"]} for shape, s in zip(shapes, singles)]
    with UsageProducer(settings.with_overrides(sdk={"batch_max_events": 1})) as producer:
        for event in singles:
            producer.record_llm_call(event)
    with UsageProducer(settings.with_overrides(sdk={"batch_max_events": 7})) as producer:
        for event in batches:
            producer.record_llm_call(event)
    client = clickhouse(settings)
    for tenant in (single_tenant, batch_tenant):
        wait_for(lambda t=tenant: _rows(client, t) >= 60, 120, components, f"{tenant}'s rows")
    compared = ("event_time, provider, model, input_tokens, output_tokens, cached_input_tokens, usage_quantity, "
                "cost_usd, priced, price_version, status, latency_ms, team, service, feature")
    by_tenant = {t: client.execute(f"SELECT {compared} FROM cost_lines WHERE tenant = %(t)s ORDER BY latency_ms",
                                   {"t": t}) for t in (single_tenant, batch_tenant)}
    assert len(by_tenant[single_tenant]) == 60 and by_tenant[single_tenant] == by_tenant[batch_tenant]
    total = sum((row[7] for row in by_tenant[single_tenant]), Decimal(0))
    for tenant in (single_tenant, batch_tenant):
        assert wait_for(lambda t=tenant: _budget_spent(settings, t) == total, 60, components, f"{tenant}'s budget")
    client.disconnect()
