"""Sticky splits, sampling and canaries: hashed choices within statistical bounds, stages on an injected clock."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prismops.gateway_grpc.experiments import (
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    CanaryConfig,
    CanaryStatus,
    CanaryTracker,
    choose_arm,
    in_canary,
    sampled,
    unit_interval,
)
from prismops.errors import FieldRuleError

T0 = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
KEYS = [f"tenant-{n}" for n in range(20_000)]
CONFIG = CanaryConfig(started_at=T0)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def within_binomial_bounds(hits: int, n: int, p: float, sds: float = 4.0) -> bool:
    return abs(hits - n * p) <= sds * math.sqrt(n * p * (1 - p))


def live_row(samples: int = 100, error_rate: float = 0.01, p95_ms: float = 1200.0, window_s: float = 300.0) -> dict:
    return {"sample_count": samples, "error_rate": error_rate, "p95_latency_ms": p95_ms, "window_seconds": window_s,
            "provider": "openai", "model": "gpt-4o-mini"}


def test_unit_interval_is_the_sha256_of_the_joined_parts():
    for parts in [("a",), ("exp", "tenant-1"), ("canary", "mini", "user/42"), ("", "")]:
        digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
        exact = int.from_bytes(digest[:8], "big") / 2**64
        value = unit_interval(*parts)
        assert 0 <= value < 1
        assert abs(value - exact) < 2**-52


def test_unit_interval_keeps_parts_apart():
    assert unit_interval("ab", "c") != unit_interval("a", "bc")
    assert unit_interval("a", "b") != unit_interval("b", "a")


def test_unit_interval_is_the_same_in_another_process():
    parts = [["exp", key] for key in KEYS[:20]]
    script = (
        "import json, sys; from prismops.gateway_grpc.experiments import unit_interval; "
        "print(json.dumps([unit_interval(*p) for p in json.loads(sys.argv[1])]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(parts)], capture_output=True, text=True,
                         check=True, env=env, cwd=os.getcwd())
    assert json.loads(out.stdout) == [unit_interval(*p) for p in parts]


def test_unit_interval_is_uniform_over_deciles():
    values = [unit_interval("uniformity", key) for key in KEYS]
    for decile in range(10):
        hits = sum(1 for v in values if decile / 10 <= v < (decile + 1) / 10)
        assert within_binomial_bounds(hits, len(values), 0.1)


def test_split_70_30_is_within_four_standard_deviations():
    arms = [("control", 70), ("treatment", 30)]
    picks = [choose_arm("prompt-v2", arms, key) for key in KEYS]
    assert set(picks) == {"control", "treatment"}
    assert within_binomial_bounds(picks.count("treatment"), len(KEYS), 0.3)


def test_three_way_split_is_within_bounds_per_arm():
    arms = [("a", 1), ("b", 2), ("c", 7)]
    picks = [choose_arm("three-way", arms, key) for key in KEYS]
    for name, weight in arms:
        assert within_binomial_bounds(picks.count(name), len(KEYS), weight / 10)


def test_choice_is_sticky_and_independent_of_call_order():
    arms = [("control", 70), ("treatment", 30)]
    first = {key: choose_arm("prompt-v2", arms, key) for key in KEYS[:2000]}
    shuffled = KEYS[:2000]
    random.Random(7).shuffle(shuffled)
    assert {key: choose_arm("prompt-v2", arms, key) for key in shuffled} == first
    assert all(choose_arm("prompt-v2", arms, key) == first[key] for key in KEYS[:200])


def test_experiments_split_the_same_keys_independently():
    arms = [("control", 70), ("treatment", 30)]
    agree = sum(choose_arm("exp-1", arms, key) == choose_arm("exp-2", arms, key) for key in KEYS)
    assert within_binomial_bounds(agree, len(KEYS), 0.7**2 + 0.3**2)


def test_choose_arm_follows_the_cumulative_weights():
    arms = [("a", 1), ("b", 2), ("c", 7)]
    for key in KEYS[:2000]:
        u = unit_interval("layout", key)
        expected = "a" if u < 0.1 else "b" if u < 0.3 else "c"
        assert choose_arm("layout", arms, key) == expected


def test_a_single_arm_always_wins():
    assert {choose_arm("solo", [("only", 5)], key) for key in KEYS[:500]} == {"only"}


@pytest.mark.parametrize(
    ("arms", "rule"),
    [
        ([], "non_empty"),
        ([("a", 0)], "positive_weight"),
        ([("a", 3), ("b", -1)], "positive_weight"),
        ([("a", 0.5)], "positive_weight"),
        ([("a", True)], "positive_weight"),
        ([("a", 1), ("a", 2)], "unique_names"),
        ([("a",)], "name_weight_pairs"),
        ([("", 1)], "name_weight_pairs"),
    ],
)
def test_choose_arm_rejects_bad_arms(arms, rule):
    with pytest.raises(FieldRuleError) as excinfo:
        choose_arm("exp", arms, "tenant-1")
    assert (excinfo.value.field, excinfo.value.rule) == ("arms", rule)


def test_sampled_rate_is_within_bounds_and_stable():
    hits = [sampled(0.1, "req", key) for key in KEYS]
    assert within_binomial_bounds(sum(hits), len(KEYS), 0.1)
    assert [sampled(0.1, "req", key) for key in KEYS[:500]] == hits[:500]


def test_sampled_rate_zero_never_and_one_always():
    assert not any(sampled(0, "req", key) for key in KEYS)
    assert all(sampled(1, "req", key) for key in KEYS)


@given(low=st.floats(0, 1), high=st.floats(0, 1), key=st.text(max_size=20))
def test_a_key_sampled_at_a_rate_is_sampled_at_every_higher_rate(low, high, key):
    low, high = sorted((low, high))
    assert not sampled(low, key) or sampled(high, key)


@pytest.mark.parametrize("rate", [-0.01, 1.01, float("nan"), "0.5", None])
def test_sampled_rejects_rates_outside_zero_to_one(rate):
    with pytest.raises(FieldRuleError) as excinfo:
        sampled(rate, "req")
    assert (excinfo.value.field, excinfo.value.rule) == ("rate", "range")


def test_canary_advances_one_stage_per_duration_and_promotes_after_the_last():
    tracker = CanaryTracker()
    expected = [
        (0, 10, RUNNING, 0),
        (599.9, 10, RUNNING, 0),
        (600, 50, RUNNING, 1),
        (1199.9, 50, RUNNING, 1),
        (1200, 100, RUNNING, 2),
        (1799.9, 100, RUNNING, 2),
        (1800, 100, PROMOTED, 2),
    ]
    for seconds, percent, state, stage_index in expected:
        status = tracker.evaluate("mini-canary", CONFIG, live_row(), at(seconds))
        assert (status.percent, status.state, status.stage_index) == (percent, state, stage_index), seconds
    assert tracker.evaluate("mini-canary", CONFIG, live_row(error_rate=0.9), at(1900)).state == PROMOTED


def test_canary_holds_a_stage_without_enough_calls_and_says_so():
    tracker = CanaryTracker()
    tracker.evaluate("c", CONFIG, None, at(0))
    held = tracker.evaluate("c", CONFIG, live_row(samples=49), at(600))
    assert (held.percent, held.state, held.stage_index) == (10, RUNNING, 0)
    assert "49 calls" in held.reason and "50 needed" in held.reason
    no_row = tracker.evaluate("c", CONFIG, None, at(650))
    assert no_row.percent == 10 and "no live row" in no_row.reason
    advanced = tracker.evaluate("c", CONFIG, live_row(samples=50), at(700))
    assert (advanced.percent, advanced.stage_index) == (50, 1)
    assert tracker.evaluate("c", CONFIG, live_row(), at(1299.9)).percent == 50, "the new stage starts when entered"
    assert tracker.evaluate("c", CONFIG, live_row(), at(1300)).percent == 100


def test_a_late_evaluation_advances_one_stage_only():
    tracker = CanaryTracker()
    status = tracker.evaluate("c", CONFIG, live_row(), at(5000))
    assert (status.percent, status.stage_index) == (50, 1)


def test_canary_before_its_start_gets_no_traffic():
    status = CanaryTracker().evaluate("c", CONFIG, live_row(), at(-10))
    assert (status.percent, status.state) == (0, RUNNING)
    assert "not started" in status.reason


def test_canary_rolls_back_on_error_rate():
    tracker = CanaryTracker()
    tracker.evaluate("c", CONFIG, live_row(), at(0))
    status = tracker.evaluate("c", CONFIG, live_row(samples=60, error_rate=0.14, window_s=300), at(120))
    assert status == CanaryStatus(0, ROLLED_BACK, 0, "error rate 14.0% > 10% over 300 s")


def test_canary_rolls_back_on_p95():
    tracker = CanaryTracker()
    tracker.evaluate("c", CONFIG, live_row(), at(600))
    status = tracker.evaluate("c", CONFIG, live_row(p95_ms=31200.0), at(700))
    assert status == CanaryStatus(0, ROLLED_BACK, 1, "p95 31200 ms > 30000 ms")


def test_rollback_reason_names_both_breaches():
    status = CanaryTracker().evaluate("c", CONFIG, live_row(error_rate=0.5, p95_ms=45000.0), at(0))
    assert status.state == ROLLED_BACK
    assert status.reason == "error rate 50.0% > 10% over 300 s; p95 45000 ms > 30000 ms"


@pytest.mark.parametrize(
    "row",
    [
        live_row(error_rate=0.10),
        live_row(p95_ms=30000.0),
        live_row(samples=49, error_rate=0.9, p95_ms=90000.0),
    ],
)
def test_no_rollback_at_the_limits_or_without_enough_calls(row):
    status = CanaryTracker().evaluate("c", CONFIG, row, at(0))
    assert (status.percent, status.state) == (10, RUNNING)


def test_rollback_is_latched_until_a_new_rollout():
    tracker = CanaryTracker()
    tracker.evaluate("c", CONFIG, live_row(error_rate=0.2), at(0))
    for seconds in (600, 1200, 5000):
        assert tracker.evaluate("c", CONFIG, live_row(), at(seconds)).state == ROLLED_BACK
    looser = CanaryConfig(started_at=T0, max_error_rate=0.5)
    still = tracker.evaluate("c", looser, live_row(), at(5100))
    assert (still.state, still.percent) == (ROLLED_BACK, 0)
    restarted = tracker.evaluate("c", CanaryConfig(started_at=at(6000)), live_row(), at(6000))
    assert (restarted.state, restarted.percent, restarted.stage_index) == (RUNNING, 10, 0)
    assert tracker.evaluate("c", CanaryConfig(started_at=at(6000)), live_row(), at(6600)).percent == 50


def test_new_stages_make_a_new_canary():
    tracker = CanaryTracker()
    tracker.evaluate("c", CONFIG, live_row(error_rate=0.2), at(0))
    status = tracker.evaluate("c", CanaryConfig(started_at=T0, stages=[5, 100]), live_row(), at(10))
    assert (status.state, status.percent) == (RUNNING, 5)


def test_canaries_are_tracked_per_name():
    tracker = CanaryTracker()
    tracker.evaluate("bad", CONFIG, live_row(error_rate=0.2), at(0))
    assert tracker.evaluate("good", CONFIG, live_row(), at(0)).state == RUNNING
    assert tracker.status("bad").state == ROLLED_BACK
    assert tracker.status("missing") is None
    assert [(row["name"], row["state"], row["percent"]) for row in tracker.snapshot()] == [
        ("bad", ROLLED_BACK, 0),
        ("good", RUNNING, 10),
    ]
    assert tracker.forget("bad") and not tracker.forget("bad")
    assert tracker.evaluate("bad", CONFIG, live_row(), at(1)).state == RUNNING


def test_concurrent_evaluations_advance_a_stage_once():
    tracker = CanaryTracker()
    tracker.evaluate("c", CONFIG, live_row(), at(0))
    start = threading.Barrier(8)
    results: list[CanaryStatus] = []

    def evaluate() -> None:
        start.wait()
        for step in range(100):
            results.append(tracker.evaluate("c", CONFIG, live_row(), at(600 + step / 1000)))

    threads = [threading.Thread(target=evaluate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {status.stage_index for status in results} == {1}
    assert tracker.status("c").percent == 50


@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        ({"started_at": dt.datetime(2026, 6, 15)}, "started_at", "tz_aware"),
        ({"stages": ()}, "stages", "non_empty"),
        ({"stages": (50, 10, 100)}, "stages", "increasing"),
        ({"stages": (10, 50)}, "stages", "ends_at_100"),
        ({"stages": (0, 100)}, "stages", "percent"),
        ({"stage_duration_s": 0}, "stage_duration_s", "positive"),
        ({"min_samples": 0}, "min_samples", "positive_int"),
        ({"max_error_rate": 1.5}, "max_error_rate", "range"),
        ({"max_p95_ms": -1}, "max_p95_ms", "positive"),
    ],
)
def test_canary_config_names_the_bad_field(kwargs, field, rule):
    with pytest.raises(FieldRuleError) as excinfo:
        CanaryConfig(**{"started_at": T0, **kwargs})
    assert (excinfo.value.field, excinfo.value.rule) == (field, rule)


def test_canary_rejects_a_row_without_its_numbers_and_a_naive_clock():
    tracker = CanaryTracker()
    with pytest.raises(FieldRuleError) as excinfo:
        tracker.evaluate("c", CONFIG, {"sample_count": 100, "p95_latency_ms": 10.0}, at(0))
    assert (excinfo.value.field, excinfo.value.rule) == ("error_rate", "non_negative")
    with pytest.raises(FieldRuleError) as excinfo:
        tracker.evaluate("c", CONFIG, live_row(), dt.datetime(2026, 6, 15, 12, 0))
    assert (excinfo.value.field, excinfo.value.rule) == ("now", "tz_aware")


@pytest.mark.parametrize("percent", [10, 50])
def test_in_canary_takes_the_stage_percent_of_keys(percent):
    status = CanaryStatus(percent, RUNNING, 0, "")
    hits = sum(in_canary("mini-canary", status, key) for key in KEYS)
    assert within_binomial_bounds(hits, len(KEYS), percent / 100)


def test_in_canary_keeps_its_keys_as_the_percent_grows():
    by_percent = {
        percent: {key for key in KEYS if in_canary("mini-canary", CanaryStatus(percent, RUNNING, 0, ""), key)}
        for percent in (0, 10, 50, 100)
    }
    assert by_percent[0] == set()
    assert by_percent[10] < by_percent[50] < by_percent[100] == set(KEYS)
    rolled_back = CanaryStatus(0, ROLLED_BACK, 1, "p95 31200 ms > 30000 ms")
    assert not any(in_canary("mini-canary", rolled_back, key) for key in KEYS)


def test_in_canary_matches_its_unit_interval_rule():
    status = CanaryStatus(37, RUNNING, 0, "")
    for key in KEYS[:2000]:
        assert in_canary("c", status, key) == (unit_interval("canary", "c", key) * 100 < 37)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 900), st.integers(0, 200), st.sampled_from([0.0, 0.05, 0.2])),
                      max_size=30))
def test_random_canary_histories_never_skip_stages_or_leave_a_rollback(steps):
    tracker = CanaryTracker()
    seconds, previous = 0, None
    for advance, samples, error_rate in steps:
        seconds += advance
        status = tracker.evaluate("c", CONFIG, live_row(samples=samples, error_rate=error_rate), at(seconds))
        assert status.percent == (0 if status.state == ROLLED_BACK else CONFIG.stages[status.stage_index])
        if previous is not None:
            if previous.state in (ROLLED_BACK, PROMOTED):
                assert status == previous
            elif status.state == RUNNING:
                assert status.stage_index - previous.stage_index in (0, 1)
        if status.state == ROLLED_BACK:
            assert error_rate > 0.10 and samples >= 50 or previous.state == ROLLED_BACK
        previous = status
