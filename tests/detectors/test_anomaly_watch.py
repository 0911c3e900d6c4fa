"""AnomalyWatch: usage events in, scored windows out, anomalies explained by dimension, state resumable."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from prismops.detectors.online import DetectorConfig
from prismops.detectors.series import UsageSample
from prismops.detectors.watch import AnomalyWatch

T0 = dt.datetime(2024, 5, 6, 0, 0, tzinfo=dt.timezone.utc)
CONFIGS = {"cost": DetectorConfig(warmup_windows=30), "error_rate": DetectorConfig(warmup_windows=30, direction="up")}


def minute_of_traffic(minute: int, new_version_calls: int = 0) -> list[UsageSample]:
    calls = []
    for n in range(8 + minute % 3):
        calls.append(("v1", f"d{n % 2}", Decimal("0.0100") + Decimal(n % 3) / 10_000))
    calls += [("v2", f"d{n % 2}", Decimal("0.0500")) for n in range(new_version_calls)]
    return [UsageSample.from_usage_event({
        "event_time": T0 + dt.timedelta(minutes=minute, seconds=2 * i), "tenant": "acme", "model": "gpt-x",
        "service": "api", "feature": "chat", "model_version": version, "deployment_id": deployment, "provider": "openai",
        "input_tokens": 100, "output_tokens": 20, "latency_ms": 300, "status": "ok", "prompt_chars": 900,
        "cache_hit": False, "fallback": False}, cost) for i, (version, deployment, cost) in enumerate(calls)]


def run(watch: AnomalyWatch, minutes: range, new_version_calls: int = 0):
    steps = []
    for minute in minutes:
        for sample in minute_of_traffic(minute, new_version_calls if minute == minutes[-1] else 0):
            steps.append(watch.observe(sample))
    steps.append(watch.tick(T0 + dt.timedelta(minutes=minutes[-1] + 2)))
    return [scored for step in steps for scored in step.scored]


def test_a_new_model_version_spike_is_reported_with_model_version_as_the_first_cause():
    watch = AnomalyWatch(window_s=60, grace_s=5, configs=CONFIGS, groupings={"tenant_model": ("tenant", "model")})
    quiet = run(watch, range(0, 120))
    assert len(quiet) == 2 * 120 and not any(s.result.is_anomaly for s in quiet[2 * 40:])
    final = run(watch, range(120, 121), new_version_calls=6)
    (cost,) = [s for s in final if s.metric == "cost"]
    assert cost.result.at_least("warning") and cost.result.actual > cost.result.expected
    assert (cost.causes[0].dimension, cost.causes[0].value) == ("model_version", "v2")
    assert cost.causes[0].new_value and cost.causes[0].share > Decimal("0.9")


def test_state_round_trip_resumes_windows_detectors_and_baselines():
    one = AnomalyWatch(configs=CONFIGS, groupings={"tenant_model": ("tenant", "model")})
    run(one, range(0, 90))
    two = AnomalyWatch.from_bytes(one.to_bytes())
    assert run(two, range(90, 121), new_version_calls=6) == run(one, range(90, 121), new_version_calls=6)


def test_a_window_its_detectors_already_scored_before_a_restart_is_skipped_not_refused():
    watch = AnomalyWatch(window_s=60, grace_s=5, configs=CONFIGS, groupings={"tenant_model": ("tenant", "model")})
    run(watch, range(0, 10))
    saved_detectors = AnomalyWatch.from_bytes(watch.to_bytes()).detectors  # saved after minute 9 closed
    replay = AnomalyWatch(window_s=60, grace_s=5, configs=CONFIGS, groupings={"tenant_model": ("tenant", "model")})
    replay.detectors = saved_detectors  # the open-window record was older: minutes 8-9 come again
    history_before = sum(len(h) for h in replay.baselines.values())
    again = run(replay, range(8, 10))
    assert [s.window_start for s in again] == [], "8 and 9 were scored before the restart"
    assert sum(len(h) for h in replay.baselines.values()) == history_before, "not learnt into the baseline twice"
    later = run(replay, range(10, 11))
    assert {s.window_start for s in later} == {T0 + dt.timedelta(minutes=10)}
