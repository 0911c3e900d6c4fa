"""The response cache on its own (keys, TTL, caps, values that are not ours) and inside call_with_fallback
(a hit calls no model, reports cache_hit with the money saved, gives the lease back)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.gateway_grpc.client import LlmCallOutcome, call_with_fallback  # noqa: E402
from prismops.gateway_grpc.response_cache import (  # noqa: E402
    SAVED_USD_LABEL, CacheError, MemoryCacheStore, ResponseCache, cache_key, embedding_key, uncacheable_reason,
)
from prismops.gateway_grpc.routing.v1 import routing_pb2  # noqa: E402
from prismops.streams.codecs import codec_for  # noqa: E402

MINI = ("openai", "gpt-4o-mini")
MESSAGES = [{"role": "user", "content": "What is FinOps?"}]
PARAMS = {"temperature": 0, "max_tokens": 200}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=5), json_values, max_size=5))
def test_a_key_ignores_mapping_order(document):
    reordered = dict(reversed(list(document.items())))
    assert cache_key("acme", *MINI, document) == cache_key("acme", *MINI, reordered)


@given(st.text(min_size=1, max_size=10), st.text(min_size=1, max_size=10))
def test_tenants_never_share_a_key(a, b):
    if a != b:
        assert cache_key(a, *MINI, MESSAGES) != cache_key(b, *MINI, MESSAGES)


def test_a_key_depends_on_model_request_and_parameters_and_normalizes_unicode():
    base = cache_key("acme", *MINI, MESSAGES, PARAMS)
    assert base != cache_key("acme", "openai", "gpt-4o", MESSAGES, PARAMS)
    assert base != cache_key("acme", *MINI, MESSAGES, {**PARAMS, "max_tokens": 201})
    assert base != cache_key("acme", *MINI, [{"role": "user", "content": "What is FinOps? "}], PARAMS)
    assert cache_key("acme", *MINI, "caf\u00e9") == cache_key("acme", *MINI, "cafe\u0301")
    assert embedding_key("acme", "text-embedding-3-small", "hello") != embedding_key("globex", "text-embedding-3-small", "hello")
    with pytest.raises(CacheError):
        cache_key("acme", *MINI, {"bad": object()})
    with pytest.raises(CacheError):
        cache_key("", *MINI, MESSAGES)


@pytest.mark.parametrize("params, reason", [
    ({"temperature": 0}, None),
    ({"temperature": 0.7}, "non-deterministic sampling (temperature > 0 or unset)"),
    ({}, "non-deterministic sampling (temperature > 0 or unset)"),
    ({"temperature": 0, "stream": True}, "streaming response"),
    ({"temperature": 0, "n": 3}, "several choices (n > 1)"),
])
def test_what_is_not_cached(params, reason):
    assert uncacheable_reason(params) == reason
    assert uncacheable_reason({"temperature": 0.7}, allow_nondeterministic=True) is None


def test_entries_expire_and_the_store_stays_within_its_caps():
    now = [0.0]
    store = MemoryCacheStore(max_entries=2, max_bytes=100, clock=lambda: now[0])
    store.set("a", b"1" * 10, ttl_s=60)
    store.set("b", b"2" * 10, ttl_s=60)
    assert store.get("a") == b"1" * 10  # a is now the most recent
    store.set("c", b"3" * 10, ttl_s=60)
    assert (store.get("a"), store.get("b"), len(store)) == (b"1" * 10, None, 2)
    store.set("big", b"x" * 101, ttl_s=60)
    assert store.get("big") is None
    store.set("d", b"4" * 95, ttl_s=60)  # entries cap drops c, then the bytes cap drops a
    assert store.get("a") is None and store.get("c") is None and store.get("d") == b"4" * 95
    now[0] = 60.0
    assert store.get("d") is None


def test_a_value_that_is_not_ours_is_never_returned():
    store = MemoryCacheStore()
    cache = ResponseCache(store)
    key_a = cache_key("tenant-a", *MINI, MESSAGES, PARAMS)
    key_b = cache_key("tenant-b", *MINI, MESSAGES, PARAMS)
    assert cache.store_response("tenant-a", key_a, *MINI, {"text": "A's answer"})
    assert cache.lookup("tenant-a", key_a).response == {"text": "A's answer"}
    assert cache.lookup("tenant-b", key_a) is None  # B asking for A's key
    store.set(key_b, store.get(key_a), 60)  # A's value planted under B's key
    assert cache.lookup("tenant-b", key_b) is None
    store.set(key_b, b"\xff not json", 60)
    assert cache.lookup("tenant-b", key_b) is None
    store.set(key_b, json.dumps([1, 2]).encode(), 60)
    assert cache.lookup("tenant-b", key_b) is None
    assert not cache.store_response("tenant-a", key_a, *MINI, object())  # not JSON: not kept
    assert not ResponseCache(store, max_value_bytes=50).store_response("tenant-a", key_a, *MINI, "x" * 100)
    with pytest.raises(CacheError):
        ResponseCache(store, ttl_s=0)


class Router:
    def __init__(self, lease_id: str = ""):
        self.reports: list[tuple[Any, str, dict]] = []
        self.lease_id = lease_id

    def decide(self, **kwargs):
        return routing_pb2.DecideResponse(decision_id="dec-1", model=routing_pb2.ModelRef(provider=MINI[0], model=MINI[1]),
                                          estimated_cost_usd="0.00045", lease_id=self.lease_id)

    def report_outcome(self, model, status, **kwargs):
        self.reports.append((model, status, kwargs))


class Producer:
    def __init__(self):
        self.events: list[dict] = []

    def record_llm_call(self, event):
        codec_for("llm_usage_event").encode(event)  # the event fits the schema
        self.events.append(event)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_repeated_call_is_served_from_the_cache_with_its_savings():
    cache = ResponseCache(MemoryCacheStore())
    calls: list[tuple[str, str]] = []

    def invoke(provider, model):
        calls.append((provider, model))
        return LlmCallOutcome(response={"text": "FinOps is..."}, input_tokens=12, output_tokens=40, latency_ms=900)

    request = {"tenant": "acme", "service": "chat", "feature": "faq"}
    hits, saved = counter("prismops_cache_lookups_total", result="hit"), counter("prismops_cache_saved_usd_total")
    producer = Producer()
    router = Router(lease_id="faq/abc")
    first = call_with_fallback(router, request, invoke, producer=producer, usage_defaults={"environment": "prod"},
                               cache=cache, cache_request=MESSAGES, cache_params=PARAMS)
    second = call_with_fallback(router, request, invoke, producer=producer, usage_defaults={"environment": "prod"},
                                cache=cache, cache_request=MESSAGES, cache_params=PARAMS)
    assert calls == [MINI]  # one provider call for two answers
    assert (first.cache_hit, second.cache_hit, second.response, second.saved_usd) == (
        False, True, {"text": "FinOps is..."}, "0.00045")
    assert second.attempts == []
    hit_event = producer.events[-1]
    assert hit_event["cache_hit"] is True and hit_event["labels"][SAVED_USD_LABEL] == "0.00045"
    assert (hit_event["input_tokens"], hit_event["output_tokens"]) == (0, 0)
    assert counter("prismops_cache_lookups_total", result="hit") == hits + 1
    assert counter("prismops_cache_saved_usd_total") == pytest.approx(saved + 0.00045)
    # the hit gave the lease back as a shadow outcome: no breaker moved
    assert router.reports[-1][2]["shadow"] is True and router.reports[-1][2]["lease_id"] == "faq/abc"
    # another tenant asking the same thing is a miss
    call_with_fallback(router, {**request, "tenant": "globex"}, invoke, cache=cache, cache_request=MESSAGES,
                       cache_params=PARAMS)
    assert calls == [MINI, MINI]


def test_sampling_calls_bypass_the_cache():
    cache = ResponseCache(MemoryCacheStore())
    calls = []

    def invoke(provider, model):
        calls.append(model)
        return LlmCallOutcome(response="r")

    for _ in range(2):
        result = call_with_fallback(Router(), {"tenant": "acme", "service": "s", "feature": "f"}, invoke,
                                    cache=cache, cache_request=MESSAGES, cache_params={"temperature": 0.8})
        assert not result.cache_hit
    assert len(calls) == 2
