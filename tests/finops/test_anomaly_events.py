"""The plain half of the anomaly agent: LLM cost lines → per-partition watch → anomaly_event records."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

from prismops.finops.anomaly_events import PartitionWatch, anomaly_id, anomaly_record, new_watch, reportable, usage_sample
from prismops.settings import DetectorSettings
from prismops.sinks.webhook import anomaly_slack_payload
from prismops.streams.codecs import codec_for

START = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.timezone.utc)
SETTINGS = DetectorSettings(window_s=60, grace_s=5, warmup_windows=10, baseline_windows=20)


def line(at: dt.datetime, rng: random.Random, *, version: str = "v1", factor: int = 1, source: str = "llm") -> dict:
    tokens = rng.randint(900, 1100) * factor
    return {
        "source": source, "event_time": at, "tenant": "acme", "service": "support-bot", "feature": "answer",
        "provider": "openai", "model": "gpt-4o-mini", "model_version": version, "deployment_id": "eu-1",
        "input_tokens": tokens, "output_tokens": 200 * factor, "latency_ms": rng.randint(300, 500), "status": "ok",
        "prompt_chars": 3500, "cache_hit": False, "fallback": False, "cost_usd": Decimal(tokens) * Decimal("0.00000015"),
    }


def feed(watch: PartitionWatch, windows: int, rng: random.Random, offset: int = 0, *, spike_at: int | None = None):
    scored = []
    for w in range(windows):
        start = START + dt.timedelta(minutes=w)
        lines = [line(start + dt.timedelta(seconds=s * 3), rng) for s in range(20)]
        if w == spike_at:
            lines += [line(start + dt.timedelta(seconds=s + 0.5), rng, version="v2", factor=5) for s in range(40)]
        for item in sorted(lines, key=lambda x: x["event_time"]):
            offset += 1
            scored += watch.observe(usage_sample(item), offset, START).scored
    return scored, offset


def test_only_llm_lines_feed_the_detectors():
    rng = random.Random(1)
    assert usage_sample(line(START, rng, source="gpu")) is None
    sample = usage_sample(line(START, rng))
    assert sample is not None and sample.cost > 0 and sample.dimensions["model_version"] == "v1"


def test_a_new_version_spike_yields_one_cost_anomaly_with_model_version_first_and_a_valid_record():
    rng = random.Random(3)
    watch = PartitionWatch(new_watch(SETTINGS), partition=0)
    scored, _ = feed(watch, 25, rng, spike_at=20)
    anomalies = [s for s in scored if s.result.is_anomaly and s.metric == "cost" and s.key.grouping == "tenant_model"]
    assert [a.window_start for a in anomalies] == [START + dt.timedelta(minutes=20)]
    record = anomaly_record(anomalies[0], START)
    assert (record["series"], record["series_key"], record["tenant"], record["model"]) == (
        "tenant_model", "acme/gpt-4o-mini", "acme", "gpt-4o-mini")
    assert record["contributors"][0]["dimension"] == "model_version" and record["contributors"][0]["value"] == "v2"
    assert isinstance(record["actual_cost_usd"], Decimal) and record["actual_cost_usd"] > record["expected_cost_usd"]
    assert record["anomaly_id"] == anomaly_id(anomalies[0]), "deterministic: a replay repeats the id"
    assert "model_version=v2" in record["message"]
    codec = codec_for("anomaly_event")
    assert codec.decode(codec.encode(record)) == record
    payload = anomaly_slack_payload(record)
    assert record["anomaly_id"] in payload["blocks"][-1]["elements"][0]["text"] and "v2" in payload["blocks"][2]["text"]["text"]


def test_replayed_offsets_are_skipped_and_state_round_trips_without_relearning():
    rng_a, rng_b = random.Random(5), random.Random(5)
    whole = PartitionWatch(new_watch(SETTINGS), partition=1)
    restored = PartitionWatch(new_watch(SETTINGS), partition=1)
    feed(whole, 12, rng_a)
    _, offset = feed(restored, 12, rng_b)
    restored = PartitionWatch.from_bytes(restored.to_bytes(START))
    assert restored.is_replay(offset) and not restored.is_replay(offset + 1)
    later_a = feed(whole, 6, random.Random(9), offset)[0]
    later_b = feed(restored, 6, random.Random(9), offset)[0]
    assert [(s.metric, s.result.z) for s in later_a] == [(s.metric, s.result.z) for s in later_b]


def test_a_quiet_partition_closes_its_window_by_processing_time_without_jumping_to_the_clock():
    rng = random.Random(2)
    watch = PartitionWatch(new_watch(SETTINGS), partition=0)
    arrived = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)  # a backfill: events an hour old
    for s in range(10):
        watch.observe(usage_sample(line(START + dt.timedelta(seconds=s), rng)), s, arrived)
    assert watch.idle_tick(arrived + dt.timedelta(seconds=10), idle_close_s=30).scored == []
    closed = watch.idle_tick(arrived + dt.timedelta(seconds=70), idle_close_s=30).scored
    assert {s.window_start for s in closed} == {START}


def test_severity_floor():
    rng = random.Random(3)
    watch = PartitionWatch(new_watch(SETTINGS), partition=0)
    scored, _ = feed(watch, 25, rng, spike_at=20)
    flagged = [s for s in scored if s.result.is_anomaly]
    assert flagged and all(reportable(s, "info") for s in flagged)
    assert all(not reportable(s, "critical") for s in flagged if s.result.severity != "critical")
