"""HTTP bodies → usage events checked by the worker's rules, every broken field of an event named at once."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prismops.gateway_http.events import (
    CLOUDEVENT_TYPE, CLOUDEVENTS_BATCH_JSON, CLOUDEVENTS_JSON, RequestError, check_request,
)
from prismops.streams.codecs import batch_codec_for

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.timezone.utc)


def usage(**overrides) -> dict:
    return {
        "event_id": "e-1", "event_time": "2026-12-05T11:59:00Z", "service": "search", "feature": "rerank",
        "environment": "prod", "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1200,
        "output_tokens": 80, "latency_ms": 420, "status": "ok",
    } | overrides


def check(body, content_type="application/json", headers=None, tenant="acme"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return check_request(raw, content_type, headers or {}, tenant=tenant, now=NOW, max_tokens=10**9, max_events=100)


def test_a_plain_json_event_passes_with_the_tokens_tenant_and_its_event_id_as_request_id():
    [event] = check(usage())
    assert event.errors == []
    assert event.value["tenant"] == "acme" and event.value["request_id"] == "e-1"
    assert event.value["event_time"] == dt.datetime(2026, 12, 5, 11, 59, tzinfo=dt.timezone.utc)
    codec = batch_codec_for("llm_usage_event")
    assert codec.decode(codec.frame([codec.items.encode_body(event.value)])).items[0].value == event.value


def test_every_broken_field_of_an_event_is_named_at_once_schema_and_worker_rules_alike():
    [event] = check(usage(input_tokens="many", output_tokens=-5, environment="moon", model="",
                          cached_input_tokens=5000, event_time="yesterday", tenant="globex"))
    found = {(e.field, e.rule) for e in event.errors}
    assert {("input_tokens", "type"), ("environment", "enum"), ("event_time", "timestamp"),
            ("tenant", "token_tenant"), ("model", "non_empty"), ("output_tokens", "non_negative")} <= found, found
    assert len({e.field for e in event.errors}) == len(event.errors), "each field once"
    assert event.value is None


def test_a_missing_required_field_is_named():
    [event] = check({k: v for k, v in usage().items() if k not in ("model", "latency_ms")})
    assert {(e.field, e.rule) for e in event.errors} >= {("model", "required"), ("latency_ms", "required")}


def test_a_structured_cloudevent_gives_id_and_time_to_the_event():
    data = {k: v for k, v in usage().items() if k not in ("event_id", "event_time")}
    [event] = check({"specversion": "1.0", "id": "ce-7", "source": "/svc/search", "type": CLOUDEVENT_TYPE,
                     "time": "2026-12-05T11:58:00+01:00", "data": data}, CLOUDEVENTS_JSON)
    assert event.errors == []
    assert event.value["event_id"] == "ce-7"
    assert event.value["event_time"] == dt.datetime(2026, 12, 5, 10, 58, tzinfo=dt.timezone.utc)


def test_a_cloudevents_batch_checks_each_event_alone():
    good = {"specversion": "1.0", "id": "a", "source": "/s", "type": CLOUDEVENT_TYPE, "data": usage(event_id="a")}
    wrong_type = good | {"id": "b", "type": "com.example.other"}
    no_source = {k: v for k, v in good.items() if k != "source"} | {"id": "c"}
    events = check([good, wrong_type, no_source], CLOUDEVENTS_BATCH_JSON)
    assert [e.errors == [] for e in events] == [True, False, False]
    assert (events[1].errors[0].field, events[1].errors[0].rule) == ("type", "supported")
    assert (events[2].errors[0].field, events[2].errors[0].rule) == ("source", "required")


def test_a_binary_mode_cloudevent_reads_its_attributes_from_headers():
    headers = {"ce-specversion": "1.0", "ce-id": "bin-1", "ce-source": "/s", "ce-type": CLOUDEVENT_TYPE}
    [event] = check({k: v for k, v in usage().items() if k != "event_id"}, "application/json", headers)
    assert event.errors == [] and event.value["event_id"] == "bin-1"


@pytest.mark.parametrize(("body", "content_type", "rule"), [
    (b"{not json", "application/json", "json_decode"),
    (b"{}", "text/plain", "supported"),
    (b"{}", CLOUDEVENTS_BATCH_JSON, "type"),
    (json.dumps([usage()] * 101).encode(), "application/json", "max_events"),
])
def test_an_unreadable_body_is_refused_as_a_whole(body, content_type, rule):
    with pytest.raises(RequestError) as info:
        check(body, content_type)
    assert info.value.rule == rule


def test_content_fields_never_pass_through():
    [event] = check(usage(prompt="my secret prompt", completion="an answer"))
    assert event.errors == [] and "prompt" not in event.value and "completion" not in event.value


@given(st.integers(min_value=-10**12, max_value=10**12), st.integers(min_value=-10**12, max_value=10**12))
def test_token_counts_are_accepted_exactly_when_the_worker_would(input_tokens, output_tokens):
    from prismops.finops.validation import InvalidEvent, validate_llm_usage

    [event] = check(usage(input_tokens=input_tokens, output_tokens=output_tokens))
    [reference] = check(usage())
    candidate = reference.value | {"input_tokens": input_tokens, "output_tokens": output_tokens}
    try:
        validate_llm_usage(candidate, NOW, 10**9)
        worker_accepts = True
    except InvalidEvent:
        worker_accepts = False
    assert (event.errors == []) == worker_accepts
