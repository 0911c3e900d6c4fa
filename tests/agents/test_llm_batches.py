"""agents/llm_agents: how one usage record's outputs are cut into batch records (pure parts, no Faust run)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from aiokafka.partitioner import DefaultPartitioner

from prismops.agents.context import OutputTooLarge
from prismops.agents.llm_agents import CHUNKS_PER_RECORD, call_summary_batches, cost_line_batches, encode_chunks
from prismops.finops.llm_usage import LlmPricingContext, PricedUsage, price_usage_record
from prismops.settings import Settings
from prismops.streams.codecs import batch_codec_for
from prismops.streams.partitioning import KeyPartitioner
from prismops.streams.produced import RecentlyProduced
from prismops.streams.simulation import TrafficGenerator

LINES = batch_codec_for("cost_line")


def _priced(count: int) -> list[PricedUsage]:
    usage = batch_codec_for("llm_usage_event")
    events = list(TrafficGenerator(seed=9).events(count))
    priced = price_usage_record(usage.frame([usage.items.encode_body(e) for e in events]),
                                LlmPricingContext.from_settings(Settings()), dt.datetime.now(dt.timezone.utc))
    return [o for o in priced.outcomes if isinstance(o, PricedUsage)]


def _lines(count: int) -> list[dict]:
    return [p.cost_line for p in _priced(count)]


def test_each_models_call_summary_goes_to_its_models_partition_and_sums_its_calls():
    observations, partition_of = [p.observation for p in _priced(300)], KeyPartitioner(4)
    codec = batch_codec_for("model_call_summary")
    batches = call_summary_batches(codec, observations, partition_of, max_bytes=5_000)
    summaries = [(partition, item.value) for partition, value in batches for item in codec.decode(value).items]
    assert all(partition_of(f"{s['provider']}/{s['model']}") == partition for partition, s in summaries)
    models = {(o["provider"], o["model"]) for o in observations}
    assert sorted((s["provider"], s["model"]) for _, s in summaries) == sorted(models), "one summary per model"
    for _, summary in summaries:
        calls = [o for o in observations if (o["provider"], o["model"]) == (summary["provider"], summary["model"])]
        assert summary["calls"] == len(calls)
        assert summary["latencies_ms"] == [o["latency_ms"] for o in calls]
        assert summary["cost_usd"] == sum((o["cost_usd"] for o in calls), Decimal(0))
    assert all(len(value) <= 5_000 + 64 for _, value in batches)


def test_every_batch_of_a_record_has_a_position_of_its_own_and_each_line_its_tenants_partition():
    lines, partition_of = _lines(300), KeyPartitioner(4)
    batches = cost_line_batches(LINES, lines, partition_of, "usage/2", offset=17, max_bytes=20_000)
    decoded = [(partition, LINES.decode(value)) for partition, value in batches]
    positions = [d.position for _, d in decoded]
    assert len(set(positions)) == len(positions) > 4, "split batches and partitions never share a position"
    assert all(17 * CHUNKS_PER_RECORD <= p < 18 * CHUNKS_PER_RECORD for p in positions)
    assert {d.origin for _, d in decoded} == {"usage/2"}
    assert all(partition_of(item.value["tenant"]) == partition for partition, d in decoded for item in d.items)
    assert sorted(item.value["line_id"] for _, d in decoded for item in d.items) == sorted(l["line_id"] for l in lines)
    assert all(len(value) <= 20_000 + 64 for _, value in batches)


def test_a_replay_cuts_the_same_batches():
    lines = _lines(120)
    assert cost_line_batches(LINES, lines, KeyPartitioner(4), "u/0", 5, 10_000) == \
        cost_line_batches(LINES, lines, KeyPartitioner(4), "u/0", 5, 10_000)


def test_one_item_over_the_limit_is_refused():
    with pytest.raises(OutputTooLarge):
        encode_chunks(LINES.encode_array, _lines(1), 50)


def test_the_partitioner_agrees_with_the_producers_murmur2():
    ours, theirs = KeyPartitioner(6), DefaultPartitioner()
    assert all(ours(key) == theirs(key.encode(), list(range(6)), list(range(6)))
               for key in ("acme", "globex", "initech", "t" * 100, "ünï"))


def test_the_lines_a_worker_keeps_for_its_own_consumers_are_what_decoding_its_records_gives():
    """The budget ledger and anomaly watch of the worker that wrote a record use the lines as pricing built them
    (streams.produced) instead of decoding it: they must be the decoded lines, field for field, type for type."""
    lines, produced = _lines(600), RecentlyProduced(max_items=10_000)
    batches = cost_line_batches(LINES, lines, KeyPartitioner(4), "usage/1", offset=3, max_bytes=30_000,
                                produced=produced)
    for _, value in batches:
        kept, decoded = produced.take(value), LINES.decode(value)
        assert (kept.origin, kept.position) == (decoded.origin, decoded.position)
        assert len(kept.items) == len(decoded.items)
        for mine, read in zip(kept.items, decoded.items):
            assert mine.value == read.value
            assert {k: (type(v), repr(v)) for k, v in mine.value.items()} == \
                   {k: (type(v), repr(v)) for k, v in read.value.items()}
