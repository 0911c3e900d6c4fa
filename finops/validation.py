"""Rules a decoded LLM usage event must meet before it is priced; each failure names the field and the rule."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from prismops.errors import FieldRuleError

MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
# tenant, service, feature and provider may be empty: tagging infers them or charges `unallocated`.
_REQUIRED_TEXT = ("event_id", "model")
_NON_NEGATIVE = (
    "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens", "latency_ms", "time_to_first_token_ms",
    "prompt_chars",
)


class InvalidEvent(FieldRuleError):
    """A decodable event that breaks a business rule."""


def validate_llm_usage(event: Mapping[str, Any], now: dt.datetime) -> None:
    """Raise InvalidEvent for the first broken rule."""
    for name in _REQUIRED_TEXT:
        if not str(event.get(name) or "").strip():
            raise InvalidEvent(name, "non_empty", "must be a non-empty string")
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
