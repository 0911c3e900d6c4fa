"""Rules a decoded LLM usage event must meet before it is priced; each failure names the field and the rule."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from prismops.errors import FieldRuleError
from prismops.finops.text_rules import ID_MAX_CHARS, NAME_MAX_CHARS, TEXT_MAX_CHARS, check_labels, check_text

MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
# tenant, service, feature and provider may be empty: tagging infers them or charges `unallocated`.
_REQUIRED_TEXT = ("event_id", "model")
_NON_NEGATIVE = (
    "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens", "latency_ms", "time_to_first_token_ms",
    "prompt_chars",
)


# The longest value each text field may hold (finops/text_rules.py), in schema order: names (they become state
# keys, metric labels and ClickHouse columns) 128 characters, ids 256, the free-text error code 1024. The enums
# environment and status are checked as names too, so no text field is left without a rule.
TEXT_FIELD_LIMITS: dict[str, int] = {
    "event_id": ID_MAX_CHARS,
    "tenant": NAME_MAX_CHARS,
    "service": NAME_MAX_CHARS,
    "feature": NAME_MAX_CHARS,
    "customer": NAME_MAX_CHARS,
    "user_id": ID_MAX_CHARS,
    "session_id": ID_MAX_CHARS,
    "request_id": ID_MAX_CHARS,
    "environment": NAME_MAX_CHARS,
    "provider": NAME_MAX_CHARS,
    "model": NAME_MAX_CHARS,
    "model_version": NAME_MAX_CHARS,
    "deployment_id": ID_MAX_CHARS,
    "status": NAME_MAX_CHARS,
    "error_code": TEXT_MAX_CHARS,
    "decision_id": ID_MAX_CHARS,
}
FREE_TEXT_FIELDS = frozenset({"error_code"})
"""Free text: tabs allowed, like label values."""


class InvalidEvent(FieldRuleError):
    """A decodable event that breaks a business rule."""


def check_text_fields(event: Mapping[str, Any]) -> None:
    """Raise InvalidEvent (rule max_length, printable or max_entries) for the first text field, in schema order,
    that is too long or holds a forbidden character; then the labels map. Reads each value once, uses none."""
    try:
        for name, max_chars in TEXT_FIELD_LIMITS.items():
            check_text(name, event.get(name), max_chars, allow_tabs=name in FREE_TEXT_FIELDS)
        check_labels("labels", event.get("labels"))
    except FieldRuleError as exc:
        raise InvalidEvent(exc.field, exc.rule, exc.message) from None


def validate_llm_usage(event: Mapping[str, Any], now: dt.datetime) -> None:
    """Raise InvalidEvent for the first broken rule.

    Order: event_id and model present (a blank value is reported as non_empty even when it holds a tab or a
    newline), then every text field's length and character rule, before any other rule reads a value."""
    for name in _REQUIRED_TEXT:
        if not str(event.get(name) or "").strip():
            raise InvalidEvent(name, "non_empty", "must be a non-empty string")
    check_text_fields(event)
    for name in _NON_NEGATIVE:
        value = event.get(name)
        if value is not None and value < 0:
            raise InvalidEvent(name, "non_negative", f"must be >= 0, got {value}")
    cached, written = event["cached_input_tokens"], event.get("cache_write_tokens") or 0
    if cached + written > event["input_tokens"]:
        field = "cached_input_tokens" if cached > event["input_tokens"] else "cache_write_tokens"
        raise InvalidEvent(
            field, "within_input_tokens",
            f"{cached} cache-read + {written} cache-write tokens exceed {event['input_tokens']} input tokens "
            "(input_tokens counts the whole prompt)",
        )
    if event.get("reasoning_tokens", 0) > event["output_tokens"]:
        raise InvalidEvent(
            "reasoning_tokens", "within_output_tokens",
            f"{event['reasoning_tokens']} reasoning tokens exceed {event['output_tokens']} output tokens",
        )
    if event["event_time"] > now + MAX_CLOCK_SKEW:
        raise InvalidEvent("event_time", "not_in_future", f"{event['event_time'].isoformat()} is more than 5 minutes ahead")
    if event["status"] == "ok" and event.get("error_code"):
        raise InvalidEvent("error_code", "only_on_failure", "must be empty when status is ok")
