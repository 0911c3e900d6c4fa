"""Circuit breakers with an injected clock: every transition, the live-rate trip and its rearm rule."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prismops.gateway_grpc.breakers import (
    CLIENT_ERROR,
    CLOSED,
    FAILURE_OUTCOMES,
    HALF_OPEN,
    OK,
    OPEN,
    OUTCOMES,
    RATE_LIMITED,
    SERVER_ERROR,
    TIMEOUT,
    BreakerBoard,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    classify_outcome,
)
from prismops.errors import FieldRuleError

T0 = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
MINI = ("openai", "gpt-4o-mini")
HAIKU = ("anthropic", "claude-3-haiku")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def opened_breaker(opened_at_s: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker()
    for _ in range(3):
        breaker.record_failure(at(opened_at_s))
    assert breaker.state(at(opened_at_s)) is OPEN
    return breaker


def test_states_are_their_wire_values():
    assert [CLOSED, OPEN, HALF_OPEN] == ["closed", "open", "half_open"]
    assert BreakerState("half_open") is HALF_OPEN


def test_closed_breaker_opens_after_exactly_three_consecutive_failures():
    breaker = CircuitBreaker()
    breaker.record_failure(at(0))
    breaker.record_failure(at(1))
    assert breaker.state(at(1)) is CLOSED
    assert breaker.would_allow(at(1)) and breaker.acquire(at(1))
    assert breaker.consecutive_failures == 2
    breaker.record_failure(at(2))
    assert breaker.state(at(2)) is OPEN
    assert not breaker.would_allow(at(2))
    assert not breaker.acquire(at(2))
    assert breaker.consecutive_failures == 3
    assert breaker.opened_reason == "3 consecutive failures"


def test_a_success_resets_the_failure_run():
    breaker = CircuitBreaker()
    for outcome_at in (0, 1):
        breaker.record_failure(at(outcome_at))
    breaker.record_success(at(2))
    assert breaker.consecutive_failures == 0
    breaker.record_failure(at(3))
    breaker.record_failure(at(4))
    assert breaker.state(at(4)) is CLOSED
    breaker.record_failure(at(5))
    assert breaker.state(at(5)) is OPEN


def test_open_turns_half_open_at_30_seconds_not_before():
    breaker = opened_breaker()
    assert breaker.state(at(29.9)) is OPEN
    assert not breaker.acquire(at(29.9))
    assert breaker.retry_in_s(at(29.9)) == pytest.approx(0.1)
    assert breaker.retry_in_s(at(10)) == pytest.approx(20.0)
    assert breaker.state(at(30)) is HALF_OPEN
    assert breaker.retry_in_s(at(30)) == 0.0
    assert breaker.opened_reason == "3 consecutive failures"


def test_half_open_lets_exactly_one_probe_through():
    breaker = opened_breaker()
    assert breaker.would_allow(at(30)) and breaker.would_allow(at(30)), "would_allow must not take the slot"
    assert breaker.acquire(at(30))
    assert not breaker.would_allow(at(31))
    assert not breaker.acquire(at(31))
    assert breaker.state(at(31)) is HALF_OPEN
    assert breaker.retry_in_s(at(31)) == pytest.approx(29.0)


def test_probe_success_closes():
    breaker = opened_breaker()
    assert breaker.acquire(at(30))
    breaker.record_success(at(31))
    assert breaker.state(at(31)) is CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.opened_reason is None
    assert all(breaker.acquire(at(31)) for _ in range(5))


def test_probe_failure_reopens_for_another_30_seconds():
    breaker = opened_breaker()
    assert breaker.acquire(at(30))
    breaker.record_failure(at(31))
    assert breaker.state(at(31)) is OPEN
    assert breaker.state(at(60.9)) is OPEN
    assert breaker.retry_in_s(at(60.9)) == pytest.approx(0.1)
    assert breaker.state(at(61)) is HALF_OPEN
    assert breaker.opened_reason.startswith("half-open probe failed")


def test_a_probe_whose_outcome_never_arrives_frees_its_slot_after_the_probe_timeout():
    breaker = opened_breaker()
    assert breaker.acquire(at(30))
    assert not breaker.acquire(at(59.9))
    assert breaker.acquire(at(60))
    assert not breaker.acquire(at(60))


def test_outcomes_while_open_change_nothing():
    breaker = opened_breaker()
    breaker.record_failure(at(20))
    breaker.record_success(at(25))
    assert breaker.state(at(29.9)) is OPEN
    assert breaker.state(at(30)) is HALF_OPEN
    assert breaker.consecutive_failures == 3


@pytest.mark.parametrize("failure", [RATE_LIMITED, SERVER_ERROR, TIMEOUT])
def test_board_counts_rate_limits_server_errors_and_timeouts_as_failures(failure):
    board = BreakerBoard()
    assert board.record_outcome(MINI, failure, at(0)) is CLOSED
    assert board.record_outcome(MINI, failure, at(1)) is CLOSED
    assert board.record_outcome(MINI, failure, at(2)) is OPEN
    assert board.state(HAIKU, at(2)) is CLOSED, "one model's failures never open another's breaker"


def test_client_errors_neither_count_nor_reset():
    board = BreakerBoard()
    for second in range(10):
        board.record_outcome(MINI, CLIENT_ERROR, at(second))
    assert board.state(MINI, at(10)) is CLOSED
    board.record_outcome(MINI, SERVER_ERROR, at(11))
    board.record_outcome(MINI, SERVER_ERROR, at(12))
    board.record_outcome(MINI, CLIENT_ERROR, at(13))
    assert board.status(MINI, at(13))["consecutive_failures"] == 2
    assert board.record_outcome(MINI, SERVER_ERROR, at(14)) is OPEN


def test_client_error_in_half_open_neither_closes_nor_reopens():
    board = BreakerBoard()
    for second in range(3):
        board.record_outcome(MINI, TIMEOUT, at(second))
    assert board.acquire(MINI, at(32))
    assert board.record_outcome(MINI, CLIENT_ERROR, at(33)) is HALF_OPEN
    assert board.record_outcome(MINI, OK, at(34)) is CLOSED


def test_live_error_rate_trips_a_never_opened_breaker():
    breaker = CircuitBreaker()
    assert breaker.observe_live(0.62, 40, at(0))
    assert breaker.state(at(0)) is OPEN
    assert breaker.opened_reason == "live error rate 62% over 40 calls >= 50%"
    assert breaker.state(at(30)) is HALF_OPEN


@pytest.mark.parametrize(
    ("error_rate", "sample_count", "trips"),
    [(0.5, 20, True), (0.49, 1000, False), (1.0, 19, False), (0.0, 500, False)],
)
def test_live_trip_needs_the_rate_and_the_samples(error_rate, sample_count, trips):
    breaker = CircuitBreaker()
    assert breaker.observe_live(error_rate, sample_count, at(0)) is trips
    assert breaker.state(at(0)) is (OPEN if trips else CLOSED)


def test_live_rate_cannot_retrip_a_breaker_closed_less_than_the_rearm_time():
    breaker = opened_breaker()
    assert breaker.acquire(at(30))
    breaker.record_success(at(31))
    assert not breaker.observe_live(0.9, 100, at(31))
    assert not breaker.observe_live(0.9, 100, at(31 + 299.9))
    assert breaker.state(at(31 + 299.9)) is CLOSED
    assert breaker.observe_live(0.9, 100, at(331))
    assert breaker.state(at(331)) is OPEN


def test_live_rate_leaves_open_and_half_open_breakers_alone():
    breaker = opened_breaker()
    assert not breaker.observe_live(0.9, 100, at(10))
    assert breaker.state(at(30)) is HALF_OPEN
    assert not breaker.observe_live(0.9, 100, at(30))
    assert breaker.acquire(at(30)), "a live observation must not take or spend the probe"
    assert breaker.opened_reason == "3 consecutive failures"


def test_board_observe_live_reads_a_live_table_row():
    board = BreakerBoard()
    assert not board.observe_live(MINI, None, at(0))
    assert board.observe_live(MINI, {"error_rate": 0.75, "sample_count": 40, "p95_latency_ms": 900.0}, at(0))
    assert board.status(MINI, at(0))["opened_reason"] == "live error rate 75% over 40 calls >= 50%"
    with pytest.raises(FieldRuleError) as excinfo:
        board.observe_live(HAIKU, {"error_rate": 0.75}, at(0))
    assert (excinfo.value.field, excinfo.value.rule) == ("sample_count", "required")
    with pytest.raises(FieldRuleError) as excinfo:
        board.observe_live(HAIKU, {"error_rate": 1.5, "sample_count": 40}, at(0))
    assert (excinfo.value.field, excinfo.value.rule) == ("error_rate", "range")


@pytest.mark.parametrize(
    ("status", "http_status", "expected"),
    [
        (None, 200, OK),
        (None, 204, OK),
        (None, 429, RATE_LIMITED),
        (None, 500, SERVER_ERROR),
        (None, 503, SERVER_ERROR),
        (None, 599, SERVER_ERROR),
        (None, 400, CLIENT_ERROR),
        (None, 401, CLIENT_ERROR),
        (None, 404, CLIENT_ERROR),
        (None, 422, CLIENT_ERROR),
        ("timeout", None, TIMEOUT),
        ("ok", 500, OK),
        ("server_error", 200, SERVER_ERROR),
        (" Rate_Limited ", None, RATE_LIMITED),
        ("client_error", 429, CLIENT_ERROR),
    ],
)
def test_classify_outcome(status, http_status, expected):
    assert classify_outcome(status, http_status) == expected


@pytest.mark.parametrize(
    ("status", "http_status", "field", "rule"),
    [
        ("bogus", 200, "status", "one_of"),
        ("", None, "status", "one_of"),
        (None, None, "status", "required"),
        (None, 302, "http_status", "outcome_class"),
        (None, 100, "http_status", "outcome_class"),
        (None, "500", "http_status", "integer"),
    ],
)
def test_classify_outcome_rejects(status, http_status, field, rule):
    with pytest.raises(FieldRuleError) as excinfo:
        classify_outcome(status, http_status)
    assert (excinfo.value.field, excinfo.value.rule) == (field, rule)


def test_board_rejects_unknown_outcomes_bad_keys_and_naive_clocks():
    board = BreakerBoard()
    with pytest.raises(FieldRuleError) as excinfo:
        board.record_outcome(MINI, "exploded", at(0))
    assert (excinfo.value.field, excinfo.value.rule) == ("status", "one_of")
    with pytest.raises(FieldRuleError) as excinfo:
        board.acquire(("openai",), at(0))
    assert (excinfo.value.field, excinfo.value.rule) == ("key", "provider_model")
    with pytest.raises(FieldRuleError) as excinfo:
        board.state(MINI, dt.datetime(2026, 6, 15, 12, 0))
    assert (excinfo.value.field, excinfo.value.rule) == ("now", "tz_aware")


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("failure_threshold", 0, "positive_int"),
        ("half_open_probes", 1.5, "positive_int"),
        ("open_s", 0, "positive"),
        ("probe_timeout_s", float("inf"), "positive"),
        ("error_rate_trip", 1.2, "range"),
        ("live_rearm_s", -1, "non_negative"),
    ],
)
def test_breaker_config_names_the_bad_field(field, value, rule):
    with pytest.raises(FieldRuleError) as excinfo:
        BreakerConfig(**{field: value})
    assert (excinfo.value.field, excinfo.value.rule) == (field, rule)


def test_snapshot_lists_every_known_model_sorted():
    board = BreakerBoard()
    for second in range(3):
        board.record_outcome(MINI, SERVER_ERROR, at(second))
    board.record_outcome(HAIKU, OK, at(2))
    assert board.snapshot(at(12)) == [
        {"provider": "anthropic", "model": "claude-3-haiku", "state": "closed", "consecutive_failures": 0,
         "retry_in_s": 0.0, "opened_reason": None},
        {"provider": "openai", "model": "gpt-4o-mini", "state": "open", "consecutive_failures": 3,
         "retry_in_s": pytest.approx(20.0), "opened_reason": "3 consecutive failures"},
    ]
    assert [row["state"] for row in board.snapshot(at(32))] == ["closed", "half_open"]


def test_replace_config_keeps_states_and_applies_new_limits():
    board = BreakerBoard()
    for second in range(3):
        board.record_outcome(MINI, SERVER_ERROR, at(second))
    board.record_outcome(HAIKU, SERVER_ERROR, at(2))
    board.replace_config(BreakerConfig(open_s=60.0, failure_threshold=2))
    assert board.config.open_s == 60.0
    assert board.state(MINI, at(40)) is OPEN
    assert board.state(MINI, at(62)) is HALF_OPEN
    assert board.record_outcome(HAIKU, SERVER_ERROR, at(3)) is OPEN, "the kept count meets the new threshold"
    assert board.record_outcome(("google", "gemini-flash"), TIMEOUT, at(3)) is CLOSED


def test_board_hands_out_one_probe_to_many_threads():
    board = BreakerBoard()
    for second in range(3):
        board.record_outcome(MINI, TIMEOUT, at(second))
    grants: list[bool] = []
    start = threading.Barrier(16)

    def try_probe() -> None:
        start.wait()
        for _ in range(50):
            grants.append(board.acquire(MINI, at(40)))

    threads = [threading.Thread(target=try_probe) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert grants.count(True) == 1 and len(grants) == 800


STEP_TENTHS = st.sampled_from([0, 1, 50, 299, 300, 450])
ACTIONS = st.sampled_from(OUTCOMES + ("acquire",))


def trailing_failures(counted: list[str]) -> int:
    run = 0
    for outcome in reversed(counted):
        if outcome not in FAILURE_OUTCOMES:
            break
        run += 1
    return run


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(STEP_TENTHS, ACTIONS), max_size=80))
def test_random_outcome_sequences_keep_the_breaker_rules(steps):
    board = BreakerBoard()
    tenths = 0
    counted: list[str] = []  # outcomes the breaker took into account: fed while not open, client errors left out
    opened_at: int | None = None
    last_probe_at: int | None = None
    previous = CLOSED
    for step, action in steps:
        tenths += step
        now = T0 + dt.timedelta(milliseconds=100 * tenths)
        before = board.state(MINI, now)
        assert not (previous is OPEN and before is CLOSED), "an open breaker closes only through a probe"
        if before is HALF_OPEN and previous is OPEN:
            assert tenths - opened_at >= 300, "half-open only once the open time has passed"
        if before is not HALF_OPEN:
            last_probe_at = None
        if action == "acquire":
            allowed = board.would_allow(MINI, now)
            granted = board.acquire(MINI, now)
            assert granted == allowed
            if before is CLOSED:
                assert granted
            elif before is OPEN:
                assert not granted
            elif granted:
                assert last_probe_at is None or tenths - last_probe_at >= 300, "one probe at a time"
                last_probe_at = tenths
            after = board.state(MINI, now)
            assert after is before
        else:
            after = board.record_outcome(MINI, action, now)
            if before is OPEN or action == CLIENT_ERROR:
                assert after is before
            else:
                counted.append(action)
            if before is CLOSED and after is OPEN:
                assert len(counted) >= 3 and all(o in FAILURE_OUTCOMES for o in counted[-3:])
            if before is HALF_OPEN and after is OPEN:
                assert action in FAILURE_OUTCOMES
            if after is CLOSED and before is not CLOSED:
                assert before is HALF_OPEN and action == OK
            if after is OPEN and before is not OPEN:
                opened_at = tenths
        row = board.status(MINI, now)
        assert row["consecutive_failures"] == trailing_failures(counted)
        if after is OPEN:
            assert row["retry_in_s"] == pytest.approx((opened_at + 300 - tenths) / 10)
        else:
            assert (after is CLOSED) == (row["opened_reason"] is None)
        if after is not HALF_OPEN:
            last_probe_at = None
        previous = after


@given(st.lists(st.tuples(st.sampled_from(["outcome", "live", "no_row"]), st.sampled_from(OUTCOMES),
                          st.floats(min_value=0, max_value=1), st.integers(min_value=0, max_value=60),
                          st.integers(min_value=0, max_value=400)), max_size=40))
@settings(deadline=None)
def test_live_state_answers_as_observe_live_then_state_then_would_allow(steps):
    config = BreakerConfig(open_s=30.0, error_rate_trip=0.5, error_rate_min_samples=20, live_rearm_s=60.0)
    combined, separate = BreakerBoard(config), BreakerBoard(config)
    tenths = 0
    for kind, outcome, error_rate, samples, advance in steps:
        tenths += advance
        now = at(tenths / 10)
        if kind == "outcome":
            assert combined.record_outcome(MINI, outcome, now) is separate.record_outcome(MINI, outcome, now)
            continue
        row = {"error_rate": error_rate, "sample_count": samples} if kind == "live" else None
        state, allows = combined.live_state(MINI, row, now)
        separate.observe_live(MINI, row, now)
        assert (state, allows) == (separate.state(MINI, now), separate.would_allow(MINI, now))
        assert combined.status(MINI, now) == separate.status(MINI, now)


def test_live_state_checks_the_row_like_observe_live():
    with pytest.raises(FieldRuleError) as raised:
        BreakerBoard().live_state(MINI, {"error_rate": 0.1}, T0)
    assert (raised.value.field, raised.value.rule) == ("sample_count", "required")
