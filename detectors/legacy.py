"""The detector as it was before issue 15 (|z| against a rolling Gaussian, 24 interpolated hourly slots, "3 points" level shifts).

Kept only so `prismops detectors eval --detector legacy` can score before/after on the same corpus; not used by the stream.

Original docstring: the online anomaly detector of one windowed series (cost per minute, tokens per request, p95 latency, error rate).

Model
-----
Each closed window's value is forecast by a seasonal baseline, and the forecast residual is scored against
the recent residual spread::

    expected = level + daily(time of day) + weekly(time of week)    additive, linearly interpolated between slots
    z        = (actual - expected) / residual_rms                   residual_rms: River utils.Rolling(proba.Gaussian)
    score    = erf(|z| / sqrt 2)                                     GaussianScorer's 2·|CDF(z) - 0.5|
    severity = info / warning / critical when |z| passes calibrated thresholds (SeverityThresholds)

Level, daily slots (24 hourly) and weekly slots (56 three-hourly) are backfitted in turn, each a
bias-corrected exponential mean, so a fresh slot is a plain average of its first visits (a profile after the
first day, a weekend offset after the first weekend) and then forgets with its half-life. With `log_offset`
set, the model runs on log(value + offset) — multiplicative seasonality and noise — and reports `expected`
back in the series' unit; on the synthetic corpus (seeds 1-3) the linear model scored higher (NAB 66 vs 47 at warning,
it caught 14 of 22 drifts where log caught none), so linear is the default.

Why these River parts and not the others
----------------------------------------
- Seasons are keyed on event time (hour of day, day of week), not on the point index as in River's
  `time_series.HoltWinters` / `SNARIMAX`: a per-minute series has a 1,440-point daily and a 10,080-point
  weekly period, which SNARIMAX cannot carry cheaply and HoltWinters carries only one of, and a quiet minute
  with no window would shift an index-based season. Learning rates are half-lives in seconds for the same
  reason, so one config serves 1-minute and 1-hour windows and gaps decay state by the time that passed.
- `anomaly.PredictiveAnomalyDetection` compares squared errors with a running mean + n·std of squared errors
  and returns 1.0 above it: no tail to calibrate, and anomalies are learnt into its threshold.
- `anomaly.HalfSpaceTrees` scores the mass of multivariate features scaled to [0, 1]; a univariate seasonal
  series would need hand-made features, and it has no "expected" value to show a person.
- The residual spread is River's rolling `proba.Gaussian` — what `anomaly.GaussianScorer(window_size=…)`
  holds — scored here rather than through `GaussianScorer.score_one` because (1) residuals are measured from
  0, not from their own rolling mean, or a slow drift is absorbed into that mean and never scores; (2) a
  sigma floor relative to the expected value keeps a flat series from alerting on a rounding-level change;
  (3) GaussianScorer's score is exactly 1.0 for every |z| > 8.3, which would erase warning vs critical.

Robustness
----------
- Warm-up: the first `warmup_windows` windows learn and never alert.
- An alerting value is learnt clipped to expected ± learn_clip_z·sigma, so a spike does not drag the
  baseline or inflate the residual spread (which would hide the next spike).
- `shift_confirm_windows` consecutive alerts of one sign are a level shift: the level jumps to the new
  regime (the result says level_shift=True) and alerts stop, instead of paging for a day while the level
  creeps up.

State
-----
`to_bytes()` / `from_bytes()` pickle the detector (River objects included) behind a header naming the format
version. Pickle runs code on load: restore only bytes this worker wrote (its own state store / changelog).
A round trip continues with bit-identical scores, so a restarted worker resumes without relearning.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from dataclasses import dataclass, field
from decimal import Decimal

from river import proba, utils

from prismops.errors import FieldRuleError
from prismops.detectors.online import (  # the shared vocabulary and state format; only the model is old
    SEVERITIES, _DAY_S, DetectorBank, _MONDAY_OFFSET_S, _WEEK_S, Direction, Severity, _as_float, _epoch_seconds,
    _money, dump_state, load_state,
)


@dataclass(frozen=True)
class SeverityThresholds:
    """|z| at which a window becomes info / warning / critical.

    Calibrated on 30 anomaly-free synthetic cost series (daily + weekly seasonality, 3–8 % noise, two weeks
    of 10-minute windows each, 56,880 windows after warm-up, default LegacyDetectorConfig): info fired on 0.30 %
    of windows, warning on 0.039 % (about one per 2,600 windows, mostly in the first week while the weekly
    profile is still being learnt) and critical on none (the largest |z| was 7.0). Residual tails are
    heavier than Gaussian (a Gaussian would give 0.047 % and 0.0007 %), which is why the thresholds are
    set on measured rates rather than on tail probabilities. tests/detectors/test_online_detector.py keeps
    warning+ under 0.1 % and critical at zero on another seed.
    """

    info: float = 3.5
    warning: float = 4.5
    critical: float = 8.0

    def __post_init__(self) -> None:
        if not 0 < self.info <= self.warning <= self.critical:
            raise FieldRuleError("thresholds", "ordered", "need 0 < info <= warning <= critical")

    def severity_of(self, abs_z: float) -> Severity | None:
        if abs_z >= self.critical:
            return "critical"
        if abs_z >= self.warning:
            return "warning"
        if abs_z >= self.info:
            return "info"
        return None


@dataclass(frozen=True)
class LegacyDetectorConfig:
    """How one series is learnt and judged; rates are half-lives in event time so the window size does not matter."""

    warmup_windows: int = 120
    level_half_life_s: float = 6 * 3600
    daily_slots: int = 24
    daily_half_life_days: float = 1.0
    weekly_slots: int = 56
    weekly_half_life_weeks: float = 1.0
    residual_window: int = 288
    thresholds: SeverityThresholds = field(default_factory=SeverityThresholds)
    learn_clip_z: float = 3.0
    shift_confirm_windows: int = 3
    direction: Direction = "both"
    log_offset: float | None = None
    relative_sigma_floor: float = 0.01
    absolute_sigma_floor: float = 1e-9

    def __post_init__(self) -> None:
        if self.warmup_windows < 0:
            raise FieldRuleError("warmup_windows", "non_negative", "must be >= 0")
        for name in ("level_half_life_s", "daily_half_life_days", "weekly_half_life_weeks", "learn_clip_z"):
            if not getattr(self, name) > 0:
                raise FieldRuleError(name, "positive", "must be > 0")
        if self.daily_slots < 1 or _DAY_S % self.daily_slots:
            raise FieldRuleError("daily_slots", "divides_day", "must be >= 1 and divide 86400 seconds")
        if self.weekly_slots < 1 or _WEEK_S % self.weekly_slots:
            raise FieldRuleError("weekly_slots", "divides_week", "must be >= 1 and divide 604800 seconds")
        if self.residual_window < 2:
            raise FieldRuleError("residual_window", "at_least_two", "needs >= 2 residuals for a spread")
        if self.shift_confirm_windows < 1:
            raise FieldRuleError("shift_confirm_windows", "positive", "must be >= 1")
        if self.direction not in ("both", "up", "down"):
            raise FieldRuleError("direction", "one_of", "must be both, up or down")


@dataclass(frozen=True)
class DetectionResult:
    """One scored window. actual/expected are Decimal (12 places) when the series is money, floats otherwise."""

    window_start: dt.datetime
    actual: Decimal | float
    expected: Decimal | float
    z: float
    score: float
    severity: Severity | None
    warming_up: bool
    level_shift: bool

    @property
    def is_anomaly(self) -> bool:
        return self.severity is not None

    def at_least(self, severity: Severity) -> bool:
        return self.severity is not None and SEVERITIES.index(self.severity) >= SEVERITIES.index(severity)


def _interpolated_slots(position: float, slots: int) -> tuple[int, float, int, float]:
    """Two neighbouring slot indexes and weights for a position measured in slots, slot centres at i + 0.5."""
    centred = position - 0.5
    lower = math.floor(centred)
    upper_weight = centred - lower
    return lower % slots, 1.0 - upper_weight, (lower + 1) % slots, upper_weight


def _slot_value(offsets: list[float], slots: tuple[int, float, int, float]) -> float:
    i, wi, j, wj = slots
    return wi * offsets[i] + wj * offsets[j]


def _learn_slots(offsets: list[float], weights: list[float], slots: tuple[int, float, int, float], error: float,
                 decay_half_lives: float) -> None:
    """Move the two interpolated slots toward making their forecast `error` closer, each by its own bias-corrected rate."""
    i, wi, j, wj = slots
    for slot, share in ((i, wi), (j, wj)):
        if share > 0.0:
            weights[slot] = 0.5 ** (share * decay_half_lives) * weights[slot] + share
            offsets[slot] += share / weights[slot] * error


def _centre(offsets: list[float]) -> float:
    """Shift offsets to mean 0 (returning the mean) so level + offsets stays the same forecast with a readable level."""
    mean = sum(offsets) / len(offsets)
    for i in range(len(offsets)):
        offsets[i] -= mean
    return mean


class LegacySeriesDetector:
    """Score-then-learn detector for one series; feed windows in increasing window_start order."""

    def __init__(self, config: LegacyDetectorConfig | None = None):
        self.config = config or LegacyDetectorConfig()
        self.windows_seen = 0
        self.level: float | None = None
        self.level_weight = 0.0
        self.daily = [0.0] * self.config.daily_slots
        self.daily_weight = [0.0] * self.config.daily_slots
        self.weekly = [0.0] * self.config.weekly_slots
        self.weekly_weight = [0.0] * self.config.weekly_slots
        self.residuals = utils.Rolling(proba.Gaussian, window_size=self.config.residual_window)
        self.last_epoch_s: float | None = None
        self.shift_run: list[float] = []
        self.shift_sign = 0

    def _daily_slots(self, epoch_s: float) -> tuple[int, float, int, float]:
        return _interpolated_slots((epoch_s % _DAY_S) / (_DAY_S / self.config.daily_slots), self.config.daily_slots)

    def _weekly_slots(self, epoch_s: float) -> tuple[int, float, int, float]:
        slots = self.config.weekly_slots
        return _interpolated_slots(((epoch_s - _MONDAY_OFFSET_S) % _WEEK_S) / (_WEEK_S / slots), slots)

    def _seasonal(self, epoch_s: float) -> float:
        return _slot_value(self.daily, self._daily_slots(epoch_s)) + _slot_value(self.weekly, self._weekly_slots(epoch_s))

    def _to_model(self, value: float) -> float:
        offset = self.config.log_offset
        if offset is None:
            return value
        if value + offset <= 0:
            raise FieldRuleError("value", "above_minus_log_offset", f"{value} is not > -{offset} (series on a log scale)")
        return math.log(value + offset)

    def _from_model(self, modelled: float) -> float:
        offset = self.config.log_offset
        return modelled if offset is None else math.exp(modelled) - offset

    def expected_at(self, window_start: dt.datetime) -> float | None:
        """The baseline forecast for a window in the series' own unit, or None before the first window."""
        if self.level is None:
            return None
        return self._from_model(self.level + self._seasonal(_epoch_seconds(window_start)))

    def _sigma(self, expected: float) -> float:
        """Residual spread in model space, floored: a flat series would otherwise alert on a rounding-level change."""
        gaussian = self.residuals.obj
        rms = math.sqrt(gaussian.sigma ** 2 + gaussian.mu ** 2) if gaussian.n_samples >= 2 else 0.0
        relative_floor = self.config.relative_sigma_floor * (1.0 if self.config.log_offset is not None else abs(expected))
        return max(rms, relative_floor, self.config.absolute_sigma_floor)

    def update(self, window_start: dt.datetime, value: Decimal | float | int) -> DetectionResult:
        """Score this window against what was learnt so far, then learn it."""
        epoch_s = _epoch_seconds(window_start)
        actual = _as_float(value)
        modelled = self._to_model(actual)
        if self.last_epoch_s is not None and epoch_s <= self.last_epoch_s:
            raise FieldRuleError("window_start", "increasing",
                                 f"{window_start.isoformat()} is not after the previous window of this series")
        config = self.config
        if self.level is None:
            forecast, z = modelled, 0.0
            self.level, self.level_weight = modelled, 1.0
        else:
            forecast = self.level + self._seasonal(epoch_s)
            z = (modelled - forecast) / self._sigma(forecast)
        warming_up = self.windows_seen < config.warmup_windows
        severity = None if warming_up else config.thresholds.severity_of(self._directed(z))
        level_shift = self._learn(epoch_s, modelled, forecast, z, alerting=severity is not None) if self.windows_seen else False
        self.windows_seen += 1
        self.last_epoch_s = epoch_s
        expected = self._from_model(forecast)
        return DetectionResult(
            window_start=window_start, actual=_money(value) if isinstance(value, Decimal) else actual,
            expected=_money(Decimal(repr(expected))) if isinstance(value, Decimal) else expected,
            z=z, score=math.erf(abs(z) / math.sqrt(2)), severity=severity, warming_up=warming_up,
            level_shift=level_shift,
        )

    def _directed(self, z: float) -> float:
        return {"both": abs(z), "up": z, "down": -z}[self.config.direction]

    def _learn(self, epoch_s: float, modelled: float, forecast: float, z: float, alerting: bool) -> bool:
        """Backfit level, daily and weekly offsets in turn, each a bias-corrected exponential mean.

        Bias-corrected (weight-normalised) means learn a fresh slot from its first visits as a plain average, so
        the first day already yields a daily profile and the first weekend a weekend offset, and then forget
        with the configured half-life.
        """
        config = self.config
        sigma = self._sigma(forecast)
        clip = config.learn_clip_z
        learnt = forecast + math.copysign(clip * sigma, z) if abs(z) > clip else modelled
        self.residuals.update(learnt - forecast)

        elapsed = epoch_s - self.last_epoch_s  # type: ignore[operator]
        daily_slots = self._daily_slots(epoch_s)
        weekly_slots = self._weekly_slots(epoch_s)
        daily_now = _slot_value(self.daily, daily_slots)
        weekly_now = _slot_value(self.weekly, weekly_slots)

        self.level_weight = 0.5 ** (elapsed / config.level_half_life_s) * self.level_weight + 1.0
        self.level += (learnt - daily_now - weekly_now - self.level) / self.level_weight  # type: ignore[operator]
        _learn_slots(self.daily, self.daily_weight, daily_slots, learnt - self.level - weekly_now - daily_now,
                     elapsed / (config.daily_half_life_days * _DAY_S / config.daily_slots))
        daily_now = _slot_value(self.daily, daily_slots)
        _learn_slots(self.weekly, self.weekly_weight, weekly_slots, learnt - self.level - daily_now - weekly_now,
                     elapsed / (config.weekly_half_life_weeks * _WEEK_S / config.weekly_slots))
        self.level += _centre(self.daily) + _centre(self.weekly)
        return self._follow_level_shift(epoch_s, modelled, z, alerting)

    def _follow_level_shift(self, epoch_s: float, modelled: float, z: float, alerting: bool) -> bool:
        sign = 1 if z > 0 else -1
        if not alerting or sign != self.shift_sign:
            self.shift_run = []
            self.shift_sign = sign if alerting else 0
        if not alerting:
            return False
        self.shift_run.append(modelled - self._seasonal(epoch_s))
        if len(self.shift_run) < self.config.shift_confirm_windows:
            return False
        self.level = statistics.median(self.shift_run)
        self.shift_run, self.shift_sign = [], 0
        return True

    def to_bytes(self) -> bytes:
        return dump_state(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> "LegacySeriesDetector":
        return load_state(data, cls)


# Per-metric defaults: cost can spike or collapse; latency, error rate and tokens per request page when they rise.
METRIC_CONFIGS: dict[str, LegacyDetectorConfig] = {
    "cost": LegacyDetectorConfig(direction="both"),
    "tokens_per_request": LegacyDetectorConfig(direction="up"),
    "latency_p95_ms": LegacyDetectorConfig(direction="up"),
    "error_rate": LegacyDetectorConfig(direction="up", log_offset=None, absolute_sigma_floor=0.005),
}


class LegacyDetectorBank(DetectorBank):
    """The bank of the old detector, for before/after scores in the same eval run."""

    detector_type = LegacySeriesDetector
    default_configs = METRIC_CONFIGS


