"""streams/simulation.py: the traffic generator is deterministic and realistic enough to exercise the pipeline."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict

import pytest

from prismops.finops.validation import validate_llm_usage
from prismops.streams.codecs import codec_for
from prismops.streams.simulation import TrafficGenerator

UTC = dt.timezone.utc
START = dt.datetime(2026, 5, 1, tzinfo=UTC)
COUNT = 4000


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return list(TrafficGenerator(seed=11, start=START).events(COUNT))


def _nearest_rank(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_same_seed_same_events():
    first = list(TrafficGenerator(seed=3, start=START).events(200))
    second = list(TrafficGenerator(seed=3, start=START).events(200))
    assert first == second


def test_different_seed_different_events():
    first = list(TrafficGenerator(seed=3, start=START).events(50))
    second = list(TrafficGenerator(seed=4, start=START).events(50))
    assert [e["event_id"] for e in first] != [e["event_id"] for e in second]
    assert [e["latency_ms"] for e in first] != [e["latency_ms"] for e in second]


def test_event_ids_are_unique_and_times_advance_from_start(events):
    assert len({e["event_id"] for e in events}) == len(events)
    assert events[0]["event_time"] == START
    assert all(a["event_time"] < b["event_time"] for a, b in zip(events, events[1:]))


def test_every_event_is_valid_and_encodes(events):
    codec = codec_for("llm_usage_event")
    now = START + dt.timedelta(hours=1)
    for event in events:
        validate_llm_usage(event, now)
        assert codec.decode(codec.encode(event))["event_id"] == event["event_id"]


def test_several_tenants_services_and_models_appear(events):
    assert len({e["tenant"] for e in events}) >= 4
    assert len({e["service"] for e in events}) >= 4
    assert len({e["model"] for e in events}) >= 5
    assert len({e["provider"] for e in events}) >= 3


def test_latency_has_a_long_tail_beyond_the_log_normal_body(events):
    # The body alone is log-normal with sigma 0.35: its p99/p50 is exp(z_0.99 * 0.35) ~= 2.26.
    body_only_ratio = math.exp(2.3263 * 0.35)
    by_model = defaultdict(list)
    for event in events:
        by_model[event["model"]].append(event["latency_ms"])
    busy = {model: v for model, v in by_model.items() if len(v) >= 500}
    assert len(busy) >= 3
    for model, latencies in busy.items():
        ratio = _nearest_rank(latencies, 0.99) / _nearest_rank(latencies, 0.50)
        assert ratio > 1.3 * body_only_ratio, f"{model}: p99/p50 = {ratio:.2f}"


def test_some_calls_fail_with_error_codes(events):
    failed = [e for e in events if e["status"] != "ok"]
    statuses = Counter(e["status"] for e in failed)
    assert set(statuses) == {"error", "timeout", "rate_limited"}
    assert 0.002 * COUNT < len(failed) < 0.1 * COUNT
    assert all(e["error_code"] for e in failed)
    assert all(e["error_code"] is None for e in events if e["status"] == "ok")


def test_failed_calls_have_no_output_tokens(events):
    failed = [e for e in events if e["status"] != "ok"]
    assert failed
    assert all(e["output_tokens"] == 0 for e in failed)
    assert all(e["time_to_first_token_ms"] is None for e in failed)
    assert any(e["output_tokens"] > 0 for e in events if e["status"] == "ok")


def test_cached_tokens_never_exceed_input_and_local_models_have_none(events):
    assert all(0 <= e["cached_input_tokens"] <= e["input_tokens"] for e in events)
    assert all(e["cached_input_tokens"] == 0 for e in events if e["provider"] == "local")
    assert any(e["cached_input_tokens"] > 0 for e in events)


def test_latency_scale_slows_one_model_only():
    base = list(TrafficGenerator(seed=5, start=START).events(300))
    slowed = list(TrafficGenerator(seed=5, start=START, latency_scale={"gpt-4o": 10.0}).events(300))
    for a, b in zip(base, slowed):
        assert a["model"] == b["model"]
        if a["model"] == "gpt-4o":
            assert b["latency_ms"] >= 10 * a["latency_ms"]
        else:
            assert b["latency_ms"] == a["latency_ms"]
