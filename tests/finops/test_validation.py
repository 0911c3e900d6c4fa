"""finops/validation.py: every rule, each failure naming its field."""

from __future__ import annotations

import datetime as dt
import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from prismops import schemas
from prismops.errors import FieldRuleError
from prismops.finops.text_rules import ID_MAX_CHARS, LABELS_MAX, NAME_MAX_CHARS, TEXT_MAX_CHARS
from prismops.finops.validation import MAX_CLOCK_SKEW, TEXT_FIELD_LIMITS, InvalidEvent, validate_llm_usage


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


# --- length and character rules of every text field (finops/text_rules.py) ------------------------------------

FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
ENUMS = ("environment", "status")


def _text_fields() -> list[str]:
    """Every string, enum or string map field of every LLM usage schema version."""
    names = []
    for version in schemas.versions("llm_usage_event"):
        for field in version.definition["fields"]:
            types = field["type"] if isinstance(field["type"], list) else [field["type"]]
            if any(t == "string" or (isinstance(t, dict) and t.get("type") in ("enum", "map")) for t in types):
                if field["name"] not in names:
                    names.append(field["name"])
    return names


def _text_event(make_event, **overrides):
    """A valid event whose status allows an error code."""
    return make_event(**{"status": "error", **overrides})


def test_every_text_field_of_every_schema_version_has_a_rule():
    fields = _text_fields()
    assert {"event_id", "tenant", "service", "model", "error_code", "decision_id", "user_id", "labels"} <= set(fields)
    assert set(fields) - {"labels"} == set(TEXT_FIELD_LIMITS)


def test_the_limits_are_names_ids_and_free_text():
    names = {"tenant", "service", "feature", "customer", "provider", "model", "model_version", *ENUMS}
    ids = {"event_id", "request_id", "session_id", "user_id", "deployment_id", "decision_id"}
    assert {f for f, n in TEXT_FIELD_LIMITS.items() if n == NAME_MAX_CHARS} == names
    assert {f for f, n in TEXT_FIELD_LIMITS.items() if n == ID_MAX_CHARS} == ids
    assert TEXT_FIELD_LIMITS["error_code"] == TEXT_MAX_CHARS == 1024


@pytest.mark.parametrize("field", sorted(TEXT_FIELD_LIMITS))
def test_one_character_over_the_limit_is_max_length(make_event, now, field):
    limit = TEXT_FIELD_LIMITS[field]
    error = _rejects(_text_event(make_event, **{field: "a" * (limit + 1)}), now)
    assert (error.field, error.rule) == (field, "max_length")
    assert isinstance(error, InvalidEvent) and isinstance(error, FieldRuleError)
    assert f"at most {limit} characters, got {limit + 1}" in error.message


@pytest.mark.parametrize("field", sorted(TEXT_FIELD_LIMITS))
def test_a_value_at_the_limit_passes(make_event, now, field):
    validate_llm_usage(_text_event(make_event, **{field: "a" * TEXT_FIELD_LIMITS[field]}), now)


@pytest.mark.parametrize("field", sorted(TEXT_FIELD_LIMITS))
@pytest.mark.parametrize("char", ["\u0000", "\n", "\u202e", "\u200d", "\u2028", "\ue000", "\U000e0001"],
                         ids=["NUL", "newline", "RLO", "ZWJ", "line-separator", "private-use", "tag-char"])
def test_control_format_and_separator_characters_are_not_printable(make_event, now, field, char):
    error = _rejects(_text_event(make_event, **{field: f"x{char}y"}), now)
    assert (error.field, error.rule) == (field, "printable")
    assert f"U+{ord(char):04X}" in error.message and "at position 1" in error.message


def test_a_129_character_tenant_is_too_long_and_128_passes(make_event, now):
    error = _rejects(make_event(tenant="t" * 129), now)
    assert (error.field, error.rule) == ("tenant", "max_length")
    validate_llm_usage(make_event(tenant="t" * 128), now)


def test_a_right_to_left_override_in_the_tenant_is_refused_without_echoing_the_value(make_event, now):
    error = _rejects(make_event(tenant="acme\u202egnp.exe"), now)
    assert (error.field, error.rule) == ("tenant", "printable")
    assert "U+202E" in error.message and "RIGHT-TO-LEFT OVERRIDE" in error.message
    assert "gnp" not in str(error)


def test_a_nul_in_the_service_is_refused(make_event, now):
    error = _rejects(make_event(service="code\u0000assist"), now)
    assert (error.field, error.rule) == ("service", "printable")
    assert "U+0000" in error.message


def test_a_zero_width_joiner_in_the_model_is_refused(make_event, now):
    error = _rejects(make_event(model="gpt\u200d-4o"), now)
    assert (error.field, error.rule) == ("model", "printable")


def test_a_900_kb_service_is_refused_fast_before_any_other_rule(make_event, now):
    service = "s" * 900_000
    event = make_event(service=service, input_tokens=-1, event_time=now + dt.timedelta(days=1))
    started = time.perf_counter()
    error = _rejects(event, now)
    elapsed = time.perf_counter() - started
    assert (error.field, error.rule) == ("service", "max_length")
    assert "got 900000" in error.message and len(str(error)) < 200, "the value itself is never in the message"
    assert elapsed < 0.5


def test_text_rules_run_before_the_business_rules(make_event, now):
    error = _rejects(make_event(tenant="a\u0007", status="ok", error_code="500", input_tokens=-5), now)
    assert (error.field, error.rule) == ("tenant", "printable")


def test_blank_required_fields_stay_non_empty_even_with_a_tab(make_event, now):
    error = _rejects(make_event(event_id="\t", tenant="a" * 500), now)
    assert (error.field, error.rule) == ("event_id", "non_empty")


@pytest.mark.parametrize("value", ["café", "東京", "Zürich-Ålesund", "مرحبا", "support bot", "a-b_c.d:e/f"])
def test_letters_of_any_script_and_spaces_pass(make_event, now, value):
    validate_llm_usage(make_event(tenant=value, service=value, feature=value, model=value, customer=value,
                                  labels={value: value}), now)


def test_an_emoji_without_joiners_passes(make_event, now):
    validate_llm_usage(make_event(feature="chat 💬"), now)


def test_the_error_code_is_free_text_a_tab_is_allowed(make_event, now):
    validate_llm_usage(_text_event(make_event, error_code="upstream\ttimeout after 30 s"), now)
    error = _rejects(_text_event(make_event, error_code="upstream\ntimeout"), now)
    assert (error.field, error.rule) == ("error_code", "printable")


def test_65_labels_are_too_many_and_64_pass(make_event, now):
    error = _rejects(make_event(labels={f"k{i}": "v" for i in range(LABELS_MAX + 1)}), now)
    assert (error.field, error.rule) == ("labels", "max_entries")
    assert LABELS_MAX == 64 and "got 65" in error.message
    validate_llm_usage(make_event(labels={f"k{i}": "v" for i in range(LABELS_MAX)}), now)


def test_a_tab_in_a_label_value_is_allowed_but_not_in_its_key(make_event, now):
    validate_llm_usage(make_event(labels={"note": "a\tb"}), now)
    error = _rejects(make_event(labels={"no\tte": "ab"}), now)
    assert (error.field, error.rule) == ("labels.key", "printable")


def test_label_values_are_free_text_of_at_most_1024_characters(make_event, now):
    validate_llm_usage(make_event(labels={"note": "n" * TEXT_MAX_CHARS}), now)
    error = _rejects(make_event(labels={"note": "n" * (TEXT_MAX_CHARS + 1)}), now)
    assert (error.field, error.rule) == ("labels.note", "max_length")
    error = _rejects(make_event(labels={"note": "a\u202eb"}), now)
    assert (error.field, error.rule) == ("labels.note", "printable")


def test_label_keys_are_names(make_event, now):
    validate_llm_usage(make_event(labels={"k" * NAME_MAX_CHARS: "v"}), now)
    error = _rejects(make_event(labels={"k" * (NAME_MAX_CHARS + 1): "v"}), now)
    assert (error.field, error.rule) == ("labels.key", "max_length")


def _printable(value: str, limit: int) -> bool:
    return len(value) <= limit and not any(unicodedata.category(c) in FORBIDDEN_CATEGORIES for c in value)


_any_text = st.one_of(
    st.text(max_size=140),
    st.text(st.characters(categories=["Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs", "L", "N", "P", "S", "M"]),
            max_size=140),
    st.text(st.characters(max_codepoint=0x7F), min_size=120, max_size=140),
)


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_any_text)
def test_a_tenant_is_accepted_exactly_when_short_and_printable(make_event, now, value):
    """Property: any accepted tenant has at most 128 characters and none of category Cc/Cf/Cs/Co/Cn/Zl/Zp; any
    rejected one breaks one of those two rules, and says which."""
    try:
        validate_llm_usage(make_event(tenant=value), now)
    except InvalidEvent as error:
        assert error.field == "tenant" and not _printable(value, NAME_MAX_CHARS)
        assert error.rule == ("max_length" if len(value) > NAME_MAX_CHARS else "printable")
    else:
        assert _printable(value, NAME_MAX_CHARS)


@hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(st.characters(categories=["Cc", "Cf", "Zs", "L"]), max_size=40))
def test_a_label_value_is_accepted_exactly_when_printable_but_for_tabs(make_event, now, value):
    try:
        validate_llm_usage(make_event(labels={"note": value}), now)
    except InvalidEvent as error:
        assert (error.field, error.rule) == ("labels.note", "printable")
        assert not _printable(value.replace("\t", ""), TEXT_MAX_CHARS)
    else:
        assert _printable(value.replace("\t", ""), TEXT_MAX_CHARS)
