"""finops/validation.py: every rule, each failure naming its field."""

from __future__ import annotations

import datetime as dt

import pytest

from prismops import schemas
from prismops.finops.validation import MAX_CLOCK_SKEW, InvalidEvent, validate_llm_usage


def _rejects(event, now) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        validate_llm_usage(event, now)
    return info.value


def _counter_fields() -> list[str]:
    """Every count or duration in the newest LLM usage schema: token counts, *_ms latencies, sizes."""
    names = []
    for field in schemas.latest("llm_usage_event").definition["fields"]:
        types = field["type"] if isinstance(field["type"], list) else [field["type"]]
        if "long" in types and field["name"].endswith(("_tokens", "_ms", "_chars")):
            names.append(field["name"])
    return names


def test_the_counter_field_list_covers_tokens_and_latency():
    fields = _counter_fields()
    assert {"input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens",
            "latency_ms"} <= set(fields)


def test_a_valid_event_passes(make_event, now):
    assert validate_llm_usage(make_event(), now) is None


@pytest.mark.parametrize("field", ["event_id", "model"])
@pytest.mark.parametrize("blank", ["", "   ", "\t\n", None])
def test_event_id_and_model_must_be_non_empty(make_event, now, field, blank):
    error = _rejects(make_event(**{field: blank}), now)
    assert (error.field, error.rule) == (field, "non_empty")
    assert field in str(error) and "non_empty" in str(error)


@pytest.mark.parametrize("field", ["tenant", "service", "feature", "provider"])
@pytest.mark.parametrize("blank", ["", "   ", None])
def test_tenant_service_feature_and_provider_may_be_empty(make_event, now, field, blank):
    # tagging infers them or charges the call to `unallocated`
    validate_llm_usage(make_event(**{field: blank}), now)


def test_an_event_with_only_id_and_model_named_passes(make_event, now):
    validate_llm_usage(make_event(tenant="", service="", feature="", provider=""), now)


@pytest.mark.parametrize("field", _counter_fields())
def test_counts_and_latencies_must_be_non_negative(make_event, now, field):
    error = _rejects(make_event(**{field: -1}), now)
    assert (error.field, error.rule) == (field, "non_negative")
    assert "-1" in error.message


@pytest.mark.parametrize("field", _counter_fields())
def test_zero_is_allowed(make_event, now, field):
    event = make_event(**{field: 0})
    if field == "input_tokens":
        event["cached_input_tokens"] = event["cache_write_tokens"] = 0
    if field == "output_tokens":
        event["reasoning_tokens"] = 0
    validate_llm_usage(event, now)


def test_missing_optional_latency_is_fine(make_event, now):
    validate_llm_usage(make_event(time_to_first_token_ms=None), now)


def test_cached_tokens_cannot_exceed_input_tokens(make_event, now):
    error = _rejects(make_event(input_tokens=100, cached_input_tokens=101), now)
    assert (error.field, error.rule) == ("cached_input_tokens", "within_input_tokens")
    assert "101 cache-read + 0 cache-write tokens exceed 100 input tokens" in error.message
    validate_llm_usage(make_event(input_tokens=100, cached_input_tokens=100), now)


def test_cache_write_tokens_cannot_exceed_input_tokens(make_event, now):
    error = _rejects(make_event(input_tokens=100, cached_input_tokens=0, cache_write_tokens=101), now)
    assert (error.field, error.rule) == ("cache_write_tokens", "within_input_tokens")
    validate_llm_usage(make_event(input_tokens=100, cached_input_tokens=0, cache_write_tokens=100), now)


@pytest.mark.parametrize(("cached", "written", "ok"), [
    (60, 40, True),    # together exactly the prompt
    (60, 41, False),   # each fits, together they do not: blamed on the writes
    (0, 0, True),
    (100, 0, True),
])
def test_cache_reads_and_writes_together_are_within_input_tokens(make_event, now, cached, written, ok):
    event = make_event(input_tokens=100, cached_input_tokens=cached, cache_write_tokens=written)
    if ok:
        validate_llm_usage(event, now)
    else:
        error = _rejects(event, now)
        assert (error.field, error.rule) == ("cache_write_tokens", "within_input_tokens")
        assert "60 cache-read + 41 cache-write tokens exceed 100 input tokens" in error.message


def test_a_negative_cache_write_count_is_refused_before_the_sum_rule(make_event, now):
    error = _rejects(make_event(input_tokens=100, cached_input_tokens=150, cache_write_tokens=-60), now)
    assert (error.field, error.rule) == ("cache_write_tokens", "non_negative")


def test_an_event_without_cache_write_tokens_is_checked_too(make_event, now):
    event = make_event()
    del event["cache_write_tokens"]
    validate_llm_usage(event, now)
    event["cached_input_tokens"] = event["input_tokens"] + 1
    assert _rejects(event, now).field == "cached_input_tokens"


def test_reasoning_tokens_cannot_exceed_output_tokens(make_event, now):
    error = _rejects(make_event(output_tokens=50, reasoning_tokens=51), now)
    assert (error.field, error.rule) == ("reasoning_tokens", "within_output_tokens")
    validate_llm_usage(make_event(output_tokens=50, reasoning_tokens=50), now)


def test_a_v1_event_without_reasoning_tokens_is_checked_too(make_event, now):
    event = make_event()
    del event["reasoning_tokens"]
    validate_llm_usage(event, now)


def test_event_time_may_not_be_more_than_the_allowed_skew_ahead(make_event, now):
    assert MAX_CLOCK_SKEW == dt.timedelta(minutes=5)
    validate_llm_usage(make_event(event_time=now + dt.timedelta(minutes=5)), now)
    validate_llm_usage(make_event(event_time=now - dt.timedelta(days=30)), now)
    error = _rejects(make_event(event_time=now + dt.timedelta(minutes=5, microseconds=1)), now)
    assert (error.field, error.rule) == ("event_time", "not_in_future")


def test_error_code_only_on_failure(make_event, now):
    error = _rejects(make_event(status="ok", error_code="500"), now)
    assert (error.field, error.rule) == ("error_code", "only_on_failure")
    for status in ("error", "timeout", "rate_limited"):
        validate_llm_usage(make_event(status=status, error_code="429", output_tokens=0, reasoning_tokens=0), now)
    validate_llm_usage(make_event(status="ok", error_code=""), now)


def test_invalid_event_is_a_value_error_naming_field_and_rule():
    error = InvalidEvent("latency_ms", "non_negative", "must be >= 0, got -3")
    assert isinstance(error, ValueError)
    assert str(error) == "latency_ms: must be >= 0, got -3 [non_negative]"
