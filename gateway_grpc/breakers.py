"""Circuit breakers per (provider, model), so the router stops sending calls to a model that keeps failing.

Plain Python (no gRPC, no Kafka) and no clock of its own: every call takes `now` (tz-aware UTC), so each
transition is tested with an injected clock. The seed rule: 3 consecutive failures open the breaker for 30 s;
then it is half-open and lets ONE probe call through; the probe's success closes it, its failure reopens it
for another 30 s. This holds for route groups with a single model too: the router then refuses with a
reason rather than send a call that will most likely fail.

Besides the calls the gateway sees itself, the streamed live table's error rate can trip a closed breaker
(`observe_live`). Because that rate covers a sliding window, it still holds the failures from before a
successful probe; a breaker therefore has to have been closed for `live_rearm_s` before the live rate may
trip it again.

Outcome names: ok closes/resets, rate_limited / server_error / timeout count as failures, client_error counts
as neither (a bad request is the caller's fault, not the model's).
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from prismops.errors import FieldRuleError

ModelKey = tuple[str, str]


class BreakerState(StrEnum):
    """A breaker's state; the string values are the wire values."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN

OK = "ok"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
CLIENT_ERROR = "client_error"
OUTCOMES = (OK, RATE_LIMITED, SERVER_ERROR, TIMEOUT, CLIENT_ERROR)
FAILURE_OUTCOMES = frozenset({RATE_LIMITED, SERVER_ERROR, TIMEOUT})


@dataclass(frozen=True)
class BreakerConfig:
    """One config for every breaker on a board; the defaults are the seed facts."""

    failure_threshold: int = 3
    open_s: float = 30.0
    half_open_probes: int = 1
    probe_timeout_s: float = 30.0
    error_rate_trip: float = 0.5
    error_rate_min_samples: int = 20
    live_rearm_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "half_open_probes", "error_rate_min_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FieldRuleError(name, "positive_int", f"must be an integer >= 1, got {value!r}")
        for name in ("open_s", "probe_timeout_s"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise FieldRuleError(name, "positive", f"must be a finite number of seconds > 0, got {value!r}")
        if not _is_number(self.live_rearm_s) or self.live_rearm_s < 0:
            raise FieldRuleError("live_rearm_s", "non_negative", f"must be seconds >= 0, got {self.live_rearm_s!r}")
        if not _is_number(self.error_rate_trip) or not 0 < self.error_rate_trip <= 1:
            raise FieldRuleError("error_rate_trip", "range", f"must be in (0, 1], got {self.error_rate_trip!r}")


class CircuitBreaker:
    """The breaker of one model. Not thread-safe on its own: `BreakerBoard` serializes every call.

    OPEN turns HALF_OPEN by itself once `open_s` has passed; reads (`state`, `would_allow`, `retry_in_s`)
    compute that without changing anything, writes settle it first.
    """

    def __init__(self, config: BreakerConfig | None = None):
        self.config = config or BreakerConfig()
        self._state = CLOSED
        self._opened_at: dt.datetime | None = None
        self._closed_since: dt.datetime | None = None  # None: never opened, closed since forever
        self._consecutive_failures = 0
        self._probes_taken_at: list[dt.datetime] = []
        self._opened_reason: str | None = None
        self._open_for_s: float | None = None  # a provider's Retry-After: open exactly this long

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    @property
    def opened_reason(self) -> str | None:
        """Why it last opened, while it is open or half-open; None while closed."""
        return self._opened_reason

    def state(self, now: dt.datetime) -> BreakerState:
        _require_aware(now)
        if self._state is OPEN and _seconds(self._opened_at, now) >= self._open_duration():
            return HALF_OPEN
        return self._state

    def would_allow(self, now: dt.datetime) -> bool:
        """Whether a call may go now, without taking the probe slot."""
        state = self.state(now)
        if state is HALF_OPEN:
            return self._free_probe_slots(now) > 0
        return state is CLOSED

    def acquire(self, now: dt.datetime) -> bool:
        """Like `would_allow`, but a half-open breaker hands out its probe slot."""
        state = self._settle(now)
        if state is CLOSED:
            return True
        if state is OPEN or self._free_probe_slots(now) == 0:
            return False
        self._probes_taken_at = [t for t in self._probes_taken_at if not self._probe_expired(t, now)] + [now]
        return True

    def record_success(self, now: dt.datetime) -> None:
        """Closed: the failure run ends. Half-open: the probe worked, so close. Open: a late answer, ignored."""
        state = self._settle(now)
        if state is CLOSED:
            self._consecutive_failures = 0
        elif state is HALF_OPEN:
            self._state = CLOSED
            self._closed_since = now
            self._opened_at = None
            self._opened_reason = None
            self._probes_taken_at = []
            self._consecutive_failures = 0

    def record_failure(self, now: dt.datetime) -> None:
        """Closed: count, open at the threshold. Half-open: the probe failed, reopen. Open: ignored."""
        state = self._settle(now)
        if state is OPEN:
            return
        self._consecutive_failures += 1
        if state is HALF_OPEN:
            self._open(now, f"half-open probe failed ({self._consecutive_failures} consecutive failures)")
        elif self._consecutive_failures >= self.config.failure_threshold:
            self._open(now, f"{self._consecutive_failures} consecutive failures")

    def observe_live(self, error_rate: float, sample_count: int, now: dt.datetime) -> bool:
        """Trip a closed breaker from the live table's window; True when it tripped it."""
        if not _is_number(error_rate) or not 0 <= error_rate <= 1:
            raise FieldRuleError("error_rate", "range", f"must be a rate in [0, 1], got {error_rate!r}")
        if isinstance(sample_count, bool) or not isinstance(sample_count, int) or sample_count < 0:
            raise FieldRuleError("sample_count", "non_negative_int", f"must be an integer >= 0, got {sample_count!r}")
        config = self.config
        if self._settle(now) is not CLOSED:
            return False
        if sample_count < config.error_rate_min_samples or error_rate < config.error_rate_trip:
            return False
        if self._closed_since is not None and _seconds(self._closed_since, now) < config.live_rearm_s:
            return False
        self._open(
            now,
            f"live error rate {_trimmed_pct(error_rate)} over {sample_count} calls"
            f" >= {_trimmed_pct(config.error_rate_trip)}",
        )
        return True

    def retry_in_s(self, now: dt.datetime) -> float:
        """Seconds until a call may go again: 0 when one may go now."""
        state = self.state(now)
        if state is OPEN:
            return max(0.0, self._open_duration() - _seconds(self._opened_at, now))
        if state is HALF_OPEN and self._free_probe_slots(now) == 0:
            return max(0.0, min(self.config.probe_timeout_s - _seconds(t, now) for t in self._live_probes(now)))
        return 0.0

    def _settle(self, now: dt.datetime) -> BreakerState:
        state = self.state(now)
        if state is HALF_OPEN and self._state is OPEN:
            self._state = HALF_OPEN
            self._probes_taken_at = []
        return state

    def _open(self, now: dt.datetime, reason: str, open_for_s: float | None = None) -> None:
        self._state = OPEN
        self._opened_at = now
        self._opened_reason = reason
        self._probes_taken_at = []
        self._open_for_s = open_for_s

    def _open_duration(self) -> float:
        return self._open_for_s if self._open_for_s is not None else self.config.open_s

    def open_for(self, now: dt.datetime, seconds: float) -> None:
        """A 429 with Retry-After: open now for exactly `seconds` (not the configured open_s), whatever the
        failure count; then half-open with its probe as usual. A later, longer Retry-After extends it."""
        if not _is_number(seconds) or seconds <= 0:
            raise FieldRuleError("retry_after_ms", "positive", f"must be a finite number of seconds > 0, got {seconds!r}")
        self._consecutive_failures += 1
        if self._settle(now) is OPEN and self.retry_in_s(now) >= seconds:
            return
        self._open(now, f"provider asked to retry after {seconds:g} s (429)", open_for_s=seconds)

    def _probe_expired(self, taken_at: dt.datetime, now: dt.datetime) -> bool:
        return _seconds(taken_at, now) >= self.config.probe_timeout_s

    def _live_probes(self, now: dt.datetime) -> list[dt.datetime]:
        return [t for t in self._probes_taken_at if not self._probe_expired(t, now)]

    def _free_probe_slots(self, now: dt.datetime) -> int:
        return max(0, self.config.half_open_probes - len(self._live_probes(now)))


def classify_outcome(status: str | None = None, http_status: int | None = None) -> str:
    """The outcome name of one call: an explicit status wins; otherwise the HTTP status decides."""
    if status is not None:
        name = status.strip().lower() if isinstance(status, str) else status
        if name not in OUTCOMES:
            raise FieldRuleError("status", "one_of", f"must be one of {', '.join(OUTCOMES)}, got {status!r}")
        return name
    if http_status is None:
        raise FieldRuleError("status", "required", "give an outcome status or an HTTP status")
    if isinstance(http_status, bool) or not isinstance(http_status, int):
        raise FieldRuleError("http_status", "integer", f"must be an integer HTTP status, got {http_status!r}")
    if 200 <= http_status < 300:
        return OK
    if http_status == 429:
        return RATE_LIMITED
    if 400 <= http_status < 500:
        return CLIENT_ERROR
    if 500 <= http_status < 600:
        return SERVER_ERROR
    raise FieldRuleError(
        "http_status", "outcome_class", f"must be 2xx, 4xx or 5xx to name an outcome, got {http_status}"
    )


class BreakerBoard:
    """Every model's breaker behind one lock, created on first use with the board's config.

    `state_version` grows whenever any breaker leaves or enters a state (or the config changes), and only
    then: while it stays put, a breaker that was closed is still closed (a closed breaker has no timer), which
    is what the gateway's decision memo checks instead of asking every breaker on every Decide. A counted
    failure that does not open the breaker leaves it alone."""

    def __init__(self, config: BreakerConfig | None = None):
        self._lock = threading.Lock()
        self._config = config or BreakerConfig()
        self._breakers: dict[ModelKey, CircuitBreaker] = {}
        self.state_version = 0

    @property
    def config(self) -> BreakerConfig:
        return self._config

    def state(self, key: ModelKey, now: dt.datetime) -> BreakerState:
        with self._lock:
            return self._breaker(key).state(now)

    def would_allow(self, key: ModelKey, now: dt.datetime) -> bool:
        with self._lock:
            return self._breaker(key).would_allow(now)

    def acquire(self, key: ModelKey, now: dt.datetime) -> bool:
        with self._lock:
            breaker = self._breaker(key)
            before = breaker._state
            try:
                return breaker.acquire(now)
            finally:
                self._note(before, breaker)

    def retry_in_s(self, key: ModelKey, now: dt.datetime) -> float:
        with self._lock:
            return self._breaker(key).retry_in_s(now)

    def record_outcome(
        self, key: ModelKey, status: str, now: dt.datetime, retry_after_s: float | None = None
    ) -> BreakerState:
        """Feed one call's outcome name (see `classify_outcome`); returns the state after it. A rate_limited
        outcome with `retry_after_s` opens the breaker for exactly that long."""
        outcome = classify_outcome(status)
        with self._lock:
            breaker = self._breaker(key)
            before = breaker._state
            try:
                if outcome == RATE_LIMITED and retry_after_s:
                    breaker.open_for(now, retry_after_s)
                elif outcome == OK:
                    breaker.record_success(now)
                elif outcome in FAILURE_OUTCOMES:
                    breaker.record_failure(now)
            finally:
                self._note(before, breaker)
            return breaker.state(now)

    def observe_live(self, key: ModelKey, row: Mapping[str, Any] | None, now: dt.datetime) -> bool:
        """Feed a live-table row (error_rate, sample_count); True when it tripped the breaker."""
        if row is None:
            return False
        _require_live_fields(row)
        with self._lock:
            breaker = self._breaker(key)
            before = breaker._state
            try:
                return breaker.observe_live(row["error_rate"], row["sample_count"], now)
            finally:
                self._note(before, breaker)

    def live_state(self, key: ModelKey, row: Mapping[str, Any] | None, now: dt.datetime) -> tuple[BreakerState, bool]:
        """`observe_live(key, row)` (a None row feeds nothing), then `state` and `would_allow`, under one lock:
        the policy engine asks all three of every candidate on every decision."""
        if row is not None:
            _require_live_fields(row)
        with self._lock:
            breaker = self._breaker(key)
            if row is not None:
                before = breaker._state
                try:
                    breaker.observe_live(row["error_rate"], row["sample_count"], now)
                finally:
                    self._note(before, breaker)
            state = breaker.state(now)
            return state, state is CLOSED or breaker.would_allow(now)

    def status(self, key: ModelKey, now: dt.datetime) -> dict[str, Any]:
        """One model's snapshot row."""
        with self._lock:
            return _status_row(key, self._breaker(key), now)

    def snapshot(self, now: dt.datetime) -> list[dict[str, Any]]:
        """Every known model's row, sorted by provider then model."""
        with self._lock:
            return [_status_row(key, self._breakers[key], now) for key in sorted(self._breakers)]

    def replace_config(self, config: BreakerConfig) -> None:
        """New thresholds for every breaker; states, counts and open times stay."""
        if not isinstance(config, BreakerConfig):
            raise FieldRuleError("config", "type", f"must be a BreakerConfig, got {type(config).__name__}")
        with self._lock:
            self._config = config
            for breaker in self._breakers.values():
                breaker.config = config
            self.state_version += 1

    def _note(self, before: BreakerState, breaker: CircuitBreaker) -> None:
        """Under the lock: count a change of the breaker's stored state (see `state_version`)."""
        if breaker._state is not before:
            self.state_version += 1

    def _breaker(self, key: ModelKey) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(p, str) and p for p in key)):
                raise FieldRuleError("key", "provider_model", f"must be a (provider, model) pair of names, got {key!r}")
            breaker = self._breakers[key] = CircuitBreaker(self._config)
        return breaker


def _status_row(key: ModelKey, breaker: CircuitBreaker, now: dt.datetime) -> dict[str, Any]:
    return {
        "provider": key[0],
        "model": key[1],
        "state": breaker.state(now).value,
        "consecutive_failures": breaker.consecutive_failures,
        "retry_in_s": breaker.retry_in_s(now),
        "opened_reason": breaker.opened_reason,
    }


def _require_live_fields(row: Mapping[str, Any]) -> None:
    for name in ("error_rate", "sample_count"):
        if row.get(name) is None:
            raise FieldRuleError(name, "required", "a live-table row needs error_rate and sample_count")


def _require_aware(now: dt.datetime) -> None:
    if not isinstance(now, dt.datetime) or now.utcoffset() is None:
        raise FieldRuleError("now", "tz_aware", f"must be a timezone-aware datetime, got {now!r}")


def _seconds(since: dt.datetime, now: dt.datetime) -> float:
    return (now - since).total_seconds()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _trimmed_pct(rate: float) -> str:
    """0.62 -> "62%", 0.625 -> "62.5%"."""
    return f"{rate * 100:.1f}".rstrip("0").rstrip(".") + "%"

