"""Issue 15's phenomena, one behaviour each: bursts alert once, steps and sub-hourly jobs are learnt, sparse
quantized series alert on a real burst only, slow drifts raise a drift alert, DST exports are accepted."""

from __future__ import annotations

import datetime as dt
import json
import random

from click.testing import CliRunner

from prismops.cli.app import main
from prismops.detectors.nab import read_corpus
from prismops.detectors.online import DetectorConfig, SeriesDetector
from prismops.detectors.synthetic import ANOMALY_FREE, generate_series
from prismops.settings import Settings

START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)  # a Monday
DAY = 144  # 10-minute windows


def at(i: int, interval_s: int = 600) -> dt.datetime:
    return START + dt.timedelta(seconds=i * interval_s)


def smooth(rng: random.Random, i: int, noise: float = 0.03) -> float:
    hour = (i % DAY) / 6
    return 10.0 * (1 + 0.3 * (1 if 8 <= hour < 20 else 0)) * (1 + noise * rng.gauss(0, 1))


def run(detector: SeriesDetector, values, start: int = 0, interval_s: int = 600):
    return [detector.update(at(start + i, interval_s), v) for i, v in enumerate(values)]


def test_a_three_point_burst_is_one_alert_and_its_return_is_normal():
    rng = random.Random(1)
    detector = SeriesDetector()
    history = run(detector, [smooth(rng, i) for i in range(9 * DAY)])
    burst_at = 9 * DAY + 20
    quiet = run(detector, [smooth(rng, i) for i in range(9 * DAY, burst_at)], 9 * DAY)
    burst = run(detector, [3 * smooth(rng, i) for i in range(burst_at, burst_at + 3)], burst_at)
    after = run(detector, [smooth(rng, i) for i in range(burst_at + 3, burst_at + 3 + DAY)], burst_at + 3)
    assert not any(r.at_least("warning") for r in history[8 * DAY:] + quiet)
    assert [r.is_anomaly for r in burst] == [True, False, False]
    assert all(r.in_excursion for r in burst) and not any(r.level_shift for r in burst)
    assert not any(r.at_least("warning") for r in after)  # the return is no 'level shift' and no alert
    assert abs(float(after[0].expected) - float(quiet[-1].expected)) < 2.0  # the spike did not move the level
    assert 0.0 <= min(r.score for r in burst) and max(r.score for r in burst) <= 1.0 and burst[0].p_value < 1e-4


def test_a_level_shift_alerts_once_then_rebaselines_and_stays_quiet():
    rng = random.Random(2)
    detector = SeriesDetector()
    run(detector, [smooth(rng, i) for i in range(9 * DAY)])
    shifted = run(detector, [2 * smooth(rng, i) for i in range(9 * DAY, 11 * DAY)], 9 * DAY)
    assert shifted[0].at_least("warning")
    assert sum(r.is_anomaly for r in shifted) == 1
    assert any(r.level_shift for r in shifted[:DetectorConfig().shift_confirm_windows + 1])


def test_a_burst_of_moderately_unlikely_windows_is_one_warning_by_persistence_and_no_level_shift():
    """+20 % for four windows at 3 % noise: no window alone reaches the warning line; together they do (once)."""
    rng = random.Random(5)
    detector = SeriesDetector()
    history = run(detector, [smooth(rng, i) for i in range(9 * DAY + 20)])
    burst_at = 9 * DAY + 20
    burst = run(detector, [1.2 * smooth(rng, i) for i in range(burst_at, burst_at + 4)], burst_at)
    after = run(detector, [smooth(rng, i) for i in range(burst_at + 4, burst_at + 4 + DAY)], burst_at + 4)
    assert not any(r.at_least("warning") for r in history[2 * DAY:])
    assert all(r.p_value > DetectorConfig().thresholds.warning for r in burst)  # no single window is a warning...
    assert sum(r.at_least("warning") for r in burst) == 1  # ...but the run is, once
    assert not any(r.level_shift for r in burst + after) and not any(r.is_anomaly for r in after)


def test_a_moderate_level_shift_alerts_once_then_rebaselines_by_change_point_and_stays_quiet():
    """-15 % from one window on (5 noise-sigmas): one warning, a level shift once the run persists, then quiet."""
    rng = random.Random(5)
    detector = SeriesDetector()
    run(detector, [smooth(rng, i) for i in range(9 * DAY + 20)])
    shift_at = 9 * DAY + 20
    shifted = run(detector, [0.85 * smooth(rng, i) for i in range(shift_at, shift_at + 2 * DAY)], shift_at)
    assert sum(r.at_least("warning") for r in shifted) == 1 and shifted[1].at_least("warning")
    shifts = [i for i, r in enumerate(shifted) if r.level_shift]
    assert len(shifts) == 1 and shifts[0] <= 2 * DetectorConfig().shift_confirm_windows
    assert not any(r.is_anomaly for r in shifted[shifts[0]:])
    assert abs(float(shifted[-1].expected) / float(shifted[-1].actual) - 1) < 0.15  # the new level is the forecast


def steps(rng: random.Random, i: int, noise: float, weekends: bool = False) -> float:
    ts = at(i)
    high = 9 <= ts.hour < 18 and not (weekends and ts.weekday() >= 5)
    return (40.0 if high else 12.0) * (1 + noise * rng.gauss(0, 1))


def test_a_0900_1800_step_schedule_without_anomalies_is_quiet_after_warm_up():
    for noise in (0.0, 0.03):
        rng = random.Random(3)
        detector = SeriesDetector()
        results = run(detector, [steps(rng, i, noise) for i in range(21 * DAY)])
        assert [r.window_start for r in results[2 * DAY:] if r.at_least("warning")] == [], noise
        # the steps are in the forecast, not smoothed across the hour
        assert abs(float(results[-DAY + 9 * 6].expected) - 40.0) < 3 and abs(float(results[-DAY + 8 * 6 + 5].expected) - 12.0) < 3


def test_a_weekday_step_schedule_with_quiet_weekends_alerts_rarely_and_never_in_the_first_weekend():
    rng = random.Random(3)
    detector = SeriesDetector()
    results = run(detector, [steps(rng, i, 0.03, weekends=True) for i in range(21 * DAY)])
    first_weekend = results[5 * DAY:7 * DAY]
    assert not any(r.at_least("warning") for r in first_weekend)  # never seen: learnt, not alerted
    # day types: the weekend teaches the weekend profile, not the level or the weekdays' 09:00-18:00 profile, so the
    # Monday after the first weekend is forecast at weekday level (before: 2 alerts per series on that Monday)
    assert not any(r.at_least("warning") for r in results[7 * DAY:8 * DAY])
    assert all(abs(float(r.expected) - r.actual) < 0.2 * r.actual for r in results[7 * DAY + 9 * 6:7 * DAY + 18 * 6])
    # issue 15: a step schedule without anomalies -> no alert. The sub-hour profile learns last on a weekend (what the
    # day type and the week leave), so its centring no longer carries the weekend's dip into the weekdays' level
    # (before: the level sank 22.7 -> 12.8 over the first weekend and 3 alerts followed on Monday nights and weekends)
    assert [r.window_start for r in results[2 * DAY:] if r.at_least("warning")] == []
    # and the weekdays' level survives the weekends: the Monday nights after them are forecast at the low step
    # (12; before: 3.4-7.1 after the first weekend, 7.5-8.6 after the second)
    for monday in (7, 14):
        assert all(abs(float(r.expected) - 12.0) < 0.15 * 12.0 for r in results[monday * DAY:monday * DAY + 8 * 6])


def test_a_sparse_quantized_series_ignores_its_normal_bursts_and_alerts_on_a_tenfold_one():
    rng = random.Random(4)
    values = [0.0 if rng.random() < 0.85 else 0.25 * rng.randint(1, 4) for _ in range(14 * DAY)]
    burst_at = 12 * DAY + 7
    values[burst_at] = 10.0  # ten times the largest normal value
    detector = SeriesDetector()
    results = run(detector, values)
    alerts = [i for i, r in enumerate(results) if r.at_least("warning") and i >= 2 * DAY]
    assert alerts == [burst_at]


def subhourly(rng: random.Random, i: int, runs: float = 1.0) -> float:
    job = 1.0 if (i % 12) == 1 else 0.0  # 5-minute windows: the HH:09 job lands in the HH:05 window
    return 1.0 + 6.0 * job * runs + 0.03 * rng.gauss(0, 1)  # additive noise (see docs/anomalies.md: weak spots)


def test_an_hourly_job_at_hh09_is_learnt_and_a_missing_or_doubled_run_alerts():
    rng = random.Random(5)
    per_day = 288
    detector = SeriesDetector()
    normal = run(detector, [subhourly(rng, i) for i in range(9 * per_day)], interval_s=300)
    assert not any(r.at_least("warning") for r in normal[2 * per_day:])
    missing_at = 9 * per_day + 12 * 5 + 1
    quiet = run(detector, [subhourly(rng, i) for i in range(9 * per_day, missing_at)], 9 * per_day, 300)
    missing = detector.update(at(missing_at, 300), subhourly(rng, missing_at, runs=0.0))
    between = run(detector, [subhourly(rng, i) for i in range(missing_at + 1, missing_at + 48)], missing_at + 1, 300)
    doubled = detector.update(at(missing_at + 48, 300), subhourly(rng, missing_at + 48, runs=2.0))
    assert not any(r.at_least("warning") for r in quiet + between)
    assert missing.at_least("warning") and missing.z < 0
    assert doubled.at_least("warning") and doubled.z > 0


def test_a_slow_drift_of_half_a_sigma_per_hour_raises_a_drift_alert_within_thirty_hours():
    rng = random.Random(6)
    sigma = 0.3  # noise of smooth(): 3 % of 10
    detector = SeriesDetector()
    run(detector, [smooth(rng, i) for i in range(9 * DAY)])
    onset = 9 * DAY
    ramp = [smooth(rng, i) + 0.5 * sigma * (i - onset) / 6 for i in range(onset, onset + 2 * DAY)]
    results = run(detector, ramp, onset)
    first = next(i for i, r in enumerate(results) if r.at_least("warning"))
    assert first <= 30 * 6 and results[first].drift  # measured: 26 hours (weak: see docs/anomalies.md)
    assert sum(r.at_least("warning") for r in results) <= 4  # a drift alert every cooldown at most, not a flood


def test_repeated_and_backward_timestamps_are_sorted_merged_and_warned(tmp_path):
    rows = ["timestamp,value"]
    for i in range(300):
        rows.append(f"{(dt.datetime(2024, 10, 27) + dt.timedelta(minutes=10 * i)):%Y-%m-%d %H:%M:%S},{1 + (i % 6)}")
    rows[20:20] = [rows[15], rows[16]]  # a DST hour repeated, going back in time
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "a.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "combined_windows.json").write_text(json.dumps({"dst/a.csv": []}))
    (series,) = read_corpus(tmp_path)
    assert len(series.timestamps) == 300 and series.timestamps == sorted(set(series.timestamps))
    assert any("went back" in w for w in series.warnings) and any("2 repeated" in w for w in series.warnings)
    result = CliRunner().invoke(main, ["detectors", "eval", str(tmp_path), "--format", "json"], obj=Settings())
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["warnings"]) == 2 and "went back" in result.stderr


def test_the_generator_labels_every_phenomenon_and_the_anomaly_free_twins_stay_quiet():
    for category in ("burst", "steps", "sparse", "subhourly"):
        series = generate_series(1, category)
        assert series.anomalies and len(series.windows) == len(series.anomalies)
        for anomaly, (first, last) in zip(series.anomalies, series.windows):
            assert first <= anomaly.onset <= last
    points = alerts = 0
    for category in ANOMALY_FREE:
        series = generate_series(21, category)
        detector = SeriesDetector()
        results = [detector.update(ts, v) for ts, v in zip(series.timestamps, series.values)]
        scored = results[int(0.15 * len(results)):]
        points += len(scored)
        alerts += sum(r.at_least("warning") for r in scored)
    assert points > 8000 and alerts <= 4  # anomaly-free corpus: a handful of alerts at most
