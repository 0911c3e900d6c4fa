"""SeriesDetector: warm-up, seasonal baseline, severity calibration, level shifts, exact money out, state round trip."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest

from prismops.detectors.online import (
    MONEY_QUANTUM, DetectorBank, DetectorConfig, SeriesDetector, STATE_FORMAT_VERSION, SeverityThresholds, dump_state,
)
from prismops.detectors.synthetic import generate_series
from prismops.errors import FieldRuleError

START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def seasonal_cost(i: int, interval_s: int = 600) -> Decimal:
    """A deterministic daily sawtooth-ish profile with small wiggle: money, so Decimal."""
    minute_of_day = (i * interval_s // 60) % 1440
    daily = Decimal(abs(720 - minute_of_day)) / Decimal(720)  # 1 at midnight, 0 at noon
    wiggle = Decimal((i * 7919) % 13 - 6) / Decimal(400)
    return (Decimal("10") + Decimal("4") * daily + wiggle).quantize(Decimal("0.000001"))


def feed(detector: SeriesDetector, values, start_index: int = 0, interval_s: int = 600):
    return [detector.update(START + dt.timedelta(seconds=(start_index + i) * interval_s), v) for i, v in enumerate(values)]


def test_warm_up_never_alerts_even_on_an_absurd_value():
    detector = SeriesDetector(DetectorConfig(warmup_windows=50))
    results = feed(detector, [seasonal_cost(i) for i in range(49)] + [Decimal("100000")])
    assert all(r.warming_up and r.severity is None for r in results)
    assert results[-1].z > 100  # it was scored, only not alerted


def test_a_spike_after_learning_a_daily_profile_is_critical_and_money_stays_decimal():
    detector = SeriesDetector()
    history = feed(detector, [seasonal_cost(i) for i in range(3 * 144)])
    assert [r.severity for r in history[200:]] == [None] * (len(history) - 200)
    spike = detector.update(START + dt.timedelta(seconds=3 * 144 * 600), Decimal("40.123456789012345"))
    assert spike.severity == "critical" and spike.is_anomaly and spike.at_least("warning")
    assert spike.actual == Decimal("40.123456789012")  # quantized to 12 places, not through a float
    assert isinstance(spike.expected, Decimal) and spike.expected == spike.expected.quantize(MONEY_QUANTUM)
    assert abs(spike.expected - seasonal_cost(3 * 144)) < Decimal("0.6")  # the seasonal forecast (30-min steps), not the mean
    assert 0.999 < spike.score <= 1.0


def test_the_daily_profile_is_learnt_so_a_normal_night_peak_is_no_anomaly():
    detector = SeriesDetector(DetectorConfig(warmup_windows=0))
    results = feed(detector, [seasonal_cost(i) for i in range(5 * 144)])
    last_day = results[-144:]
    assert max(abs(r.z) for r in last_day) < 3.5
    errors = [abs(float(r.actual) - float(r.expected)) for r in last_day]
    # the profile swings by 4 a day; a slot learns a little slower since a slot's several windows a day share one
    # cycle's decay (mean error 0.12 on day 5, was 0.09 when each window decayed a whole day)
    assert sum(errors) / len(errors) < 0.15 and max(errors) < 0.5


def test_float_series_report_floats():
    result = SeriesDetector().update(START, 12.5)
    assert result.actual == 12.5 and isinstance(result.expected, float)


def test_severity_thresholds_keep_anomaly_free_synthetic_series_quiet():
    """The calibration claim of SeverityThresholds, measured: warning+ on at most 0.1 % of windows, never critical."""
    windows = warnings = criticals = 0
    for index in range(3):
        series = generate_series(seed=11, category="none", index=index)
        detector = SeriesDetector()
        for ts, value in zip(series.timestamps, series.values):
            result = detector.update(ts, value)
            if not result.warming_up:
                windows += 1
                warnings += result.at_least("warning")
                criticals += result.severity == "critical"
    assert windows > 5000
    assert warnings / windows <= 0.001
    assert criticals == 0


def test_a_level_shift_is_followed_so_alerts_stop():
    detector = SeriesDetector()
    feed(detector, [seasonal_cost(i) for i in range(3 * 144)])
    shifted = feed(detector, [seasonal_cost(i) + Decimal(8) for i in range(3 * 144, 3 * 144 + 48)], start_index=3 * 144)
    alerting = [r for r in shifted if r.is_anomaly]
    assert shifted[0].at_least("warning")
    assert any(r.level_shift for r in shifted[:DetectorConfig().shift_confirm_windows + 1])
    assert len(alerting) <= DetectorConfig().shift_confirm_windows + 2
    assert not any(r.is_anomaly for r in shifted[-24:])


def test_direction_up_ignores_drops():
    up, both = SeriesDetector(DetectorConfig(direction="up")), SeriesDetector(DetectorConfig(direction="both"))
    values = [seasonal_cost(i) for i in range(3 * 144)] + [Decimal("0.5")]
    assert feed(up, values)[-1].severity is None
    assert feed(both, values)[-1].severity == "critical"


def test_windows_must_move_forward():
    detector = SeriesDetector()
    detector.update(START, 1.0)
    with pytest.raises(FieldRuleError) as error:
        detector.update(START, 1.0)
    assert error.value.field == "window_start" and error.value.rule == "increasing"


@pytest.mark.parametrize("value, rule", [(float("nan"), "finite"), ("12", "number"), (True, "number")])
def test_values_must_be_finite_numbers(value, rule):
    with pytest.raises(FieldRuleError) as error:
        SeriesDetector().update(START, value)
    assert (error.value.field, error.value.rule) == ("value", rule)


def test_config_errors_name_the_field():
    with pytest.raises(FieldRuleError) as error:
        SeverityThresholds(info=1e-4, warning=1e-3, critical=1e-6)
    assert error.value.rule == "ordered"
    with pytest.raises(FieldRuleError) as error:
        DetectorConfig(min_daily_slot_s=7)
    assert error.value.field == "min_daily_slot_s"


def test_state_round_trip_continues_with_identical_scores():
    series = generate_series(seed=5, category="spike", index=0)
    values = [Decimal(f"{v:.6f}") for v in series.values]
    split = 1100  # after the warm-up, before the series ends
    uninterrupted = SeriesDetector()
    expected = [uninterrupted.update(ts, v) for ts, v in zip(series.timestamps, values)]

    first_worker = SeriesDetector()
    for ts, v in zip(series.timestamps[:split], values[:split]):
        first_worker.update(ts, v)
    restarted = SeriesDetector.from_bytes(first_worker.to_bytes())
    resumed = [restarted.update(ts, v) for ts, v in zip(series.timestamps[split:], values[split:])]

    assert resumed == expected[split:]  # z, score, expected, severity: all bit-identical
    assert any(r.is_anomaly for r in resumed)  # and the comparison covered alerts, not only quiet windows
    fresh = SeriesDetector()
    relearnt = [fresh.update(ts, v) for ts, v in zip(series.timestamps[split:], values[split:])]
    assert relearnt != expected[split:]  # a detector that forgot would be told apart


def test_bank_keeps_one_detector_per_metric_and_key_and_round_trips():
    bank = DetectorBank()
    for i in range(200):
        ts = START + dt.timedelta(minutes=i)
        bank.update("cost", "tenant_model:acme/gpt", ts, seasonal_cost(i, 60))
        bank.update("error_rate", "tenant_model:acme/gpt", ts, 0.01 if i % 10 else 0.02)
        bank.update("cost", "tenant_model:beta/gpt", ts, seasonal_cost(i + 5, 60))
    assert sorted(bank) == [("cost", "tenant_model:acme/gpt"), ("cost", "tenant_model:beta/gpt"),
                            ("error_rate", "tenant_model:acme/gpt")]
    restored = DetectorBank.from_bytes(bank.to_bytes())
    ts = START + dt.timedelta(minutes=200)
    key = "tenant_model:acme/gpt"
    assert restored.update("cost", key, ts, Decimal("30")) == bank.update("cost", key, ts, Decimal("30"))
    with pytest.raises(FieldRuleError) as error:
        bank.update("carbon", "k", ts, 1.0)
    assert error.value.field == "metric"


@pytest.mark.parametrize("data, rule", [
    (b"not state at all", "header"),
    (dump_state(SeriesDetector()).replace(b" %d " % STATE_FORMAT_VERSION, b" 99 ", 1), "format_version"),
    (dump_state(SeriesDetector()).replace(b" %d " % STATE_FORMAT_VERSION, b" 2 ", 1), "format_version"),  # before day types
    (dump_state(SeriesDetector()).replace(b" %d " % STATE_FORMAT_VERSION, b" 3 ", 1), "format_version"),  # before persistence
    (dump_state(DetectorBank()), "kind"),
])
def test_foreign_or_future_state_is_refused_by_rule(data, rule):
    with pytest.raises(FieldRuleError) as error:
        SeriesDetector.from_bytes(data)
    assert (error.value.field, error.value.rule) == ("state", rule)


def test_profile_centring_in_constant_time_keeps_every_visited_offset():
    from prismops.detectors.online import _Profile

    profile, naive = _Profile(86_400, 48, 7 * 86_400), [0.0] * 48
    rng = random.Random(5)
    visited = set()
    for _ in range(500):
        slot = rng.randrange(0, 30)
        before = profile.get(slot)
        profile.learn(slot, rng.gauss(3, 2), 600)
        naive[slot] += profile.get(slot) - before
        visited.add(slot)
        if rng.random() < 0.3:
            mean = profile.centre()
            expected_mean = sum(naive[i] for i in visited) / len(visited)
            assert abs(mean - expected_mean) < 1e-9
            naive = [v - expected_mean if i in visited else 0.0 for i, v in enumerate(naive)]
    assert all(abs(a - b) < 1e-9 for a, b in zip(profile.offsets, naive))
    assert all(profile.get(i) == 0.0 for i in range(30, 48))  # never visited: offset 0
