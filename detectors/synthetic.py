"""Seeded, labelled synthetic cost series in Numenta Anomaly Benchmark format, for tests and `detectors eval`.

Each series is cost per interval (USD, 6 places) with a daily profile, a smoother weekend dip and
multiplicative noise; anomalies are spikes (1–3 intervals), level shifts (the whole profile scales from the
onset on), slow drifts (a linear ramp to a new level over a day, about 0.5 noise-sigma per hour) or none.

Phenomena of issue 15, each a category (and an anomaly-free twin `none_*` for false-alert counts):
- burst: excursions of 3–6 intervals at 8–15 noise-sigmas that return to the old level (one window each);
- steps: a schedule that steps up at 09:00 and down at 18:00 on weekdays (weekends stay low), anomalies spikes;
- sparse: 85 % zeros, values a multiple of a price step (1–4 steps), anomalies a 10x burst;
- subhourly: 5-minute windows with a job at HH:09 every hour (a peak in the HH:05 window), anomalies a
  missing run or a doubled run. Anomaly sizes are drawn in units of
the local noise, so every labelled anomaly is detectable in principle but not trivially by a fixed threshold:
seasonal swings are larger than the noise, and a spike in the night can stay under the daytime peak.

Layout written (NAB's): DIR/<category>/<name>.csv with `timestamp,value` rows, timestamps
"YYYY-MM-DD HH:MM:SS", and DIR/combined_windows.json mapping "<category>/<name>.csv" to a list of
[start, end] timestamp pairs. Windows follow NAB's rule — 10 % of the file's length shared among its
anomalies, centred on each onset — except drifts, whose window starts at the onset and spans the ramp, since
nothing can be seen before a drift has moved.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from prismops.errors import FieldRuleError

CATEGORIES = ("spike", "level_shift", "drift", "none", "burst", "steps", "sparse", "subhourly",
              "none_steps", "none_sparse", "none_subhourly")
ANOMALY_FREE = tuple(c for c in CATEGORIES if c.startswith("none"))
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_START = dt.datetime(2024, 1, 1)  # a Monday


@dataclass(frozen=True)
class Anomaly:
    kind: str
    onset: int
    length: int
    size: float  # spike: extra noise-sigmas; shift/drift: relative change of the level (0.3 = +30 %)


@dataclass(frozen=True)
class LabelledSeries:
    relative_path: str
    timestamps: list[dt.datetime]
    values: list[float]
    anomalies: list[Anomaly]
    windows: list[tuple[int, int]]  # inclusive point indexes


def _points_per_day(interval_s: int) -> int:
    return max(1, 86_400 // interval_s)


def _profile(rng: random.Random, points: int, interval_s: int, start: dt.datetime) -> tuple[list[dt.datetime], list[float]]:
    base = rng.uniform(0.5, 50.0)
    daily_amplitude = rng.uniform(0.2, 0.5)
    peak_hour = rng.uniform(11.0, 17.0)
    weekend_dip = rng.uniform(0.1, 0.4)
    timestamps, means = [], []
    for i in range(points):
        ts = start + dt.timedelta(seconds=i * interval_s)
        hour = ts.hour + ts.minute / 60 + ts.second / 3600
        daily = daily_amplitude * (math.cos(2 * math.pi * (hour - peak_hour) / 24) + 0.3 * math.cos(4 * math.pi * (hour - peak_hour) / 24))
        timestamps.append(ts)
        means.append(base * (1 + daily - weekend_dip * _weekend_weight(ts.weekday() + hour / 24)))
    return timestamps, means


def _weekend_weight(week_position: float) -> float:
    """0 on weekdays, 1 on the weekend, with half-day cosine ramps around Friday and Sunday midnight (0 = Monday 00:00)."""
    def ramp(x: float) -> float:
        return 0.5 - 0.5 * math.cos(math.pi * min(1.0, max(0.0, x)))

    p = week_position if week_position >= 0.25 else week_position + 7
    return ramp((p - 4.75) / 0.5) - ramp((p - 6.75) / 0.5)


def _anomalies(rng: random.Random, category: str, points: int, interval_s: int) -> list[Anomaly]:
    if category == "none":
        return []
    count = rng.randint(1, 3)
    day = _points_per_day(interval_s)
    earliest, latest = max(int(0.15 * points) + day, 2 * day), points - day
    if latest - earliest < count * day:
        raise FieldRuleError("points", "long_enough", f"{points} points of {interval_s}s leave no room for {count} anomalies")
    slot = (latest - earliest) // count
    anomalies = []
    for n in range(count):
        onset = earliest + n * slot + rng.randrange(0, max(1, slot - day))
        if category == "spike":
            anomalies.append(Anomaly("spike", onset, rng.randint(1, 3), rng.uniform(6.0, 12.0)))
        elif category == "level_shift":
            anomalies.append(Anomaly("level_shift", onset, 1, rng.choice((1, 1, -1)) * rng.uniform(0.25, 0.6)))
        else:
            anomalies.append(Anomaly("drift", onset, day, rng.uniform(0.4, 0.8)))
    return anomalies


def _steps_profile(rng: random.Random, points: int, interval_s: int, start: dt.datetime) -> tuple[list[dt.datetime], list[float]]:
    low = rng.uniform(1.0, 20.0)
    high = low * rng.uniform(2.0, 5.0)
    timestamps = [start + dt.timedelta(seconds=i * interval_s) for i in range(points)]
    means = [high if ts.weekday() < 5 and 9 <= ts.hour < 18 else low for ts in timestamps]
    return timestamps, means


def _phenomenon(rng: random.Random, category: str, points: int, interval_s: int,
                start: dt.datetime) -> tuple[list[dt.datetime], list[float], list[Anomaly]]:
    """Series of the issue-15 phenomena: values and their anomalies (sizes as documented on CATEGORIES)."""
    kind = category.removeprefix("none_")
    labelled = not category.startswith("none")
    timestamps = [start + dt.timedelta(seconds=i * interval_s) for i in range(points)]
    onsets = [a.onset for a in _anomalies(rng, "spike", points, interval_s)] if labelled else []
    anomalies: list[Anomaly] = []
    if kind == "burst":
        timestamps, means = _profile(rng, points, interval_s, start)
        noise = rng.uniform(0.03, 0.08)
        extra = [0.0] * points
        for onset in onsets:
            length, size = rng.randint(3, 6), rng.uniform(8.0, 15.0) * rng.choice((1, 1, -0.5))
            anomalies.append(Anomaly("burst", onset, length, size))
            for i in range(onset, min(points, onset + length)):
                extra[i] = size
        values = [max(0.0, m * (1 + noise * (rng.gauss(0, 1) + e))) for m, e in zip(means, extra)]
    elif kind == "steps":
        timestamps, means = _steps_profile(rng, points, interval_s, start)
        noise = rng.uniform(0.0, 0.05)
        extra = [0.0] * points
        for onset in onsets:
            anomalies.append(Anomaly("spike", onset, 1, rng.uniform(8.0, 12.0)))
            extra[onset] = 1.0
        values = [max(0.0, m * (1 + noise * rng.gauss(0, 1)) + e * m * max(noise, 0.05) * 10) for m, e in zip(means, extra)]
    elif kind == "sparse":
        step = rng.choice((0.05, 0.25, 1.0, 2.5))
        zero_share = rng.uniform(0.8, 0.9)
        values = [0.0 if rng.random() < zero_share else step * rng.randint(1, 4) for _ in range(points)]
        for onset in onsets:
            length = rng.randint(1, 2)
            anomalies.append(Anomaly("burst", onset, length, 10.0))
            for i in range(onset, min(points, onset + length)):
                values[i] = step * 4 * 10
    elif kind == "subhourly":
        base = rng.uniform(0.5, 5.0)
        job = base * rng.uniform(4.0, 10.0)
        noise = rng.uniform(0.02, 0.06)
        job_slot = (9 * 60) // interval_s if interval_s < 3600 else 0
        per_hour = max(1, 3600 // interval_s)
        runs = [1.0 if i % per_hour == job_slot else 0.0 for i in range(points)]
        job_points = [i for i in range(points) if runs[i]]
        for onset in onsets:
            at = next(i for i in job_points if i >= onset)
            doubled = rng.random() < 0.5
            anomalies.append(Anomaly("doubled_run" if doubled else "missing_run", at, 1, 2.0 if doubled else 0.0))
            runs[at] = 2.0 if doubled else 0.0
        values = [max(0.0, (base + job * r) * (1 + noise * rng.gauss(0, 1))) for r in runs]
    else:
        raise FieldRuleError("category", "one_of", f"{category!r} is not one of {', '.join(CATEGORIES)}")
    return timestamps, values, anomalies


def default_interval_s(category: str, interval_s: int) -> int:
    """Sub-hourly series are written at 5-minute windows whatever the corpus interval, so the HH:09 job is visible."""
    return min(interval_s, 300) if category.endswith("subhourly") else interval_s


def generate_series(seed: int, category: str, index: int = 0, points: int = 2016, interval_s: int = 600,
                    start: dt.datetime = DEFAULT_START) -> LabelledSeries:
    """One labelled series; the same (seed, category, index) always gives the same values and windows."""
    if category not in CATEGORIES:
        raise FieldRuleError("category", "one_of", f"{category!r} is not one of {', '.join(CATEGORIES)}")
    rng = random.Random(f"{seed}/{category}/{index}")
    if category not in ("spike", "level_shift", "drift", "none"):
        if category.endswith("subhourly") and interval_s > 300:
            points, interval_s = points * interval_s // 300, 300
        timestamps, values, anomalies = _phenomenon(rng, category, points, interval_s, start)
        return LabelledSeries(f"{category}/cost_{category}_{index:02d}.csv", timestamps, values, anomalies,
                              _windows(anomalies, points))
    timestamps, means = _profile(rng, points, interval_s, start)
    noise = rng.uniform(0.03, 0.08)
    anomalies = _anomalies(rng, category, points, interval_s)
    scale = [1.0] * points
    extra_sigmas = [0.0] * points
    for anomaly in anomalies:
        if anomaly.kind == "spike":
            for i in range(anomaly.onset, min(points, anomaly.onset + anomaly.length)):
                extra_sigmas[i] += anomaly.size
        else:
            for i in range(anomaly.onset, points):
                done = min(1.0, (i - anomaly.onset + 1) / anomaly.length)
                scale[i] *= 1 + anomaly.size * done
    values = [max(0.0, m * s * (1 + noise * (rng.gauss(0, 1) + e))) for m, s, e in zip(means, scale, extra_sigmas)]
    return LabelledSeries(f"{category}/cost_{category}_{index:02d}.csv", timestamps, values, anomalies,
                          _windows(anomalies, points))


def _windows(anomalies: list[Anomaly], points: int) -> list[tuple[int, int]]:
    """NAB's rule (10 % of the length shared among the anomalies, centred on each onset); drifts span their ramp."""
    width = max(1, int(0.10 * points / max(1, len(anomalies))))
    windows = []
    for anomaly in anomalies:
        if anomaly.kind == "drift":
            first, last = anomaly.onset, anomaly.onset + max(width, anomaly.length) - 1
        else:
            first, last = anomaly.onset - width // 2, anomaly.onset + width - width // 2 - 1
        windows.append((max(0, first), min(points - 1, last)))
    return windows


def generate_corpus(directory: Path, seed: int, files_per_category: int = 3, points: int = 2016,
                    interval_s: int = 600, categories: tuple[str, ...] = CATEGORIES) -> list[LabelledSeries]:
    """Write a NAB-format corpus under `directory` and return what was written."""
    if files_per_category < 1:
        raise FieldRuleError("files_per_category", "positive", "must be >= 1")
    directory = Path(directory)
    corpus = [generate_series(seed, category, i, points, interval_s) for category in categories for i in range(files_per_category)]
    labels = {}
    for series in corpus:
        path = directory / series.relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["timestamp,value"] + [f"{ts.strftime(TIMESTAMP_FORMAT)},{v:.6f}" for ts, v in zip(series.timestamps, series.values)]
        path.write_text("\n".join(lines) + "\n")
        labels[series.relative_path] = [[series.timestamps[a].strftime(TIMESTAMP_FORMAT), series.timestamps[b].strftime(TIMESTAMP_FORMAT)]
                                        for a, b in series.windows]
    (directory / "combined_windows.json").write_text(json.dumps(labels, indent=2, sort_keys=True) + "\n")
    return corpus
