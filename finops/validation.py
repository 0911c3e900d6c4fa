"""Rules a decoded LLM usage event must meet before it is priced; each failure names the field and the rule."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from prismops.errors import FieldRuleError
from prismops.finops.pricing import service_tier_name
from prismops.finops.text_rules import ID_MAX_CHARS, NAME_MAX_CHARS, TEXT_MAX_CHARS, check_labels, check_text

MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
DEFAULT_MAX_TOKENS_PER_CALL = 10**9
"""The default of settings.pricing.max_tokens_per_call: more tokens than any model reads or writes in one call."""
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens")
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
            value = event.get(name)
            if value and (len(value) > max_chars or not value.isprintable()):  # only then find the rule it breaks
                check_text(name, value, max_chars, allow_tabs=name in FREE_TEXT_FIELDS)
        check_labels("labels", event.get("labels"))
    except FieldRuleError as exc:
        raise InvalidEvent(exc.field, exc.rule, exc.message) from None


def _count_text(value: int) -> str:
    """A token count for a message: digits, or 10^k-style for absurd ones (10**40 has 41 digits)."""
    text = str(value)
    return text if len(text) <= 24 else f"a {len(text)}-digit number"


def check_token_counts(event: Mapping[str, Any], max_tokens: int = DEFAULT_MAX_TOKENS_PER_CALL) -> None:
    """Raise InvalidEvent for the first token count that breaks a rule, in TOKEN_FIELDS order: `integer` (a
    whole number, not a bool, float or text), `non_negative`, `max_tokens` (at most `max_tokens` per call, per
    field: settings.pricing.max_tokens_per_call), then `within_input_tokens` (cache reads and writes are part
    of the prompt) and `within_output_tokens` (reasoning is part of the output). input_tokens and
    output_tokens are required; the others count as 0 when absent or null."""
    counts = {}
    for name in TOKEN_FIELDS:
        value = event.get(name)
        if value is None:
            if name in ("input_tokens", "output_tokens"):
                raise InvalidEvent(name, "required", "is required")
            value = 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidEvent(name, "integer", f"must be a whole number of tokens, got {type(value).__name__}")
        if value < 0:
            raise InvalidEvent(name, "non_negative", f"must be >= 0, got {_count_text(value)}")
        if value > max_tokens:
            raise InvalidEvent(name, "max_tokens", f"{_count_text(value)} is more than the {max_tokens} tokens one call "
                               "may count (settings: pricing.max_tokens_per_call)")
        counts[name] = value
    cached, written, prompt = counts["cached_input_tokens"], counts["cache_write_tokens"], counts["input_tokens"]
    if cached + written > prompt:
        field = "cached_input_tokens" if cached > prompt else "cache_write_tokens"
        raise InvalidEvent(
            field, "within_input_tokens",
            f"{cached} cache-read + {written} cache-write tokens exceed {prompt} input tokens "
            "(input_tokens counts the whole prompt)",
        )
    if counts["reasoning_tokens"] > counts["output_tokens"]:
        raise InvalidEvent(
            "reasoning_tokens", "within_output_tokens",
            f"{counts['reasoning_tokens']} reasoning tokens exceed {counts['output_tokens']} output tokens",
        )


def validate_llm_usage(event: Mapping[str, Any], now: dt.datetime,
                       max_tokens: int = DEFAULT_MAX_TOKENS_PER_CALL) -> None:
    """Raise InvalidEvent for the first broken rule.

    Order: event_id and model present (a blank value is reported as non_empty even when it holds a tab or a
    newline), then every text field's length and character rule, before any other rule reads a value; then
    the other counts' non_negative rule, the token counts (check_token_counts: non_negative, max_tokens,
    within_input_tokens, within_output_tokens), the event time and the error code."""
    for name in _REQUIRED_TEXT:
        if not str(event.get(name) or "").strip():
            raise InvalidEvent(name, "non_empty", "must be a non-empty string")
    check_text_fields(event)
    for name in _NON_NEGATIVE:
        value = event.get(name)
        if value is not None and value < 0:
            raise InvalidEvent(name, "non_negative", f"must be >= 0, got {_count_text(value)}")
    check_token_counts(event, max_tokens)
    if event["event_time"] > now + MAX_CLOCK_SKEW:
        raise InvalidEvent("event_time", "not_in_future", f"{event['event_time'].isoformat()} is more than 5 minutes ahead")
    if event["status"] == "ok" and event.get("error_code"):
        raise InvalidEvent("error_code", "only_on_failure", "must be empty when status is ok")


def llm_usage_errors(event: Mapping[str, Any], now: dt.datetime,
                     max_tokens: int = DEFAULT_MAX_TOKENS_PER_CALL) -> list[InvalidEvent]:
    """Every field that breaks a rule of `validate_llm_usage`, each once with the first rule it breaks, for callers
    that answer a person (HTTP ingest) rather than dead-letter a record: the rules run again with each broken
    field set to a value that passes, until none is left."""
    passing: dict[str, Any] = {"event_time": now, "error_code": None, "labels": {}}
    current = dict(event)
    errors: list[InvalidEvent] = []
    for _ in range(len(current) + len(TOKEN_FIELDS) + 2):
        try:
            validate_llm_usage(current, now, max_tokens)
            return errors
        except InvalidEvent as exc:
            if any(seen.field == exc.field for seen in errors):  # a stand-in that still fails: stop, do not loop
                return errors
            errors.append(exc)
            name = exc.field or ""
            if name in passing:
                current[name] = passing[name]
            elif name in TOKEN_FIELDS or name in _NON_NEGATIVE:
                current[name] = 0
            elif name == "status":
                current[name] = "ok"
            else:
                current[name] = "-"
    return errors


SERVICE_TIER_LABEL = "service_tier"
"""The label an LLM usage event names its service tier with (batch, flex, priority; absent: standard); the
Avro schema has no field for it, so labels carry it (JSON events too: unknown top-level fields are dropped)."""


def service_tier_of(event: Mapping[str, Any]) -> str:
    """The catalog's service tier of an event (labels.service_tier, standard when absent); InvalidEvent (rule
    known_service_tier) for a name PrismOps does not know."""
    labels = event.get("labels") or {}
    value = labels.get(SERVICE_TIER_LABEL)
    try:
        return service_tier_name(value)
    except ValueError as exc:
        raise InvalidEvent(f"labels.{SERVICE_TIER_LABEL}", "known_service_tier", str(exc)) from None
