from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture()
def now() -> dt.datetime:
    return NOW


@pytest.fixture()
def make_event() -> Callable[..., dict[str, Any]]:
    """A complete, valid LLM usage event as the codec decodes it (every v3 field present)."""

    def make(**overrides: Any) -> dict[str, Any]:
        event = {
            "event_id": "evt-0001",
            "event_time": NOW - dt.timedelta(seconds=30),
            "tenant": "acme",
            "service": "code-assist",
            "feature": "complete",
            "customer": "cust-001",
            "user_id": None,
            "session_id": None,
            "request_id": "req-0001",
            "environment": "prod",
            "provider": "openai",
            "model": "gpt-4o",
            "model_version": None,
            "deployment_id": None,
            "input_tokens": 1000,
            "output_tokens": 500,
            "cached_input_tokens": 200,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "latency_ms": 900,
            "time_to_first_token_ms": 270,
            "status": "ok",
            "error_code": None,
            "cache_hit": False,
            "fallback": False,
            "shadow": False,
            "decision_id": None,
            "prompt_chars": 4000,
            "labels": {},
        }
        event.update(overrides)
        return event

    return make
