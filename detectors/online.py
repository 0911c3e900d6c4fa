"""The online anomaly detector of one windowed series (cost per minute, tokens per request, p95 latency, error rate).

Model (issue 15: "anomaly detection that a FinOps team would leave switched on")
----------------------------------------------------------------------------------
    expected = level + subhour(phase in the hour) + daily(day type, slot of the day) + weekly(hour of the week)
    p_value  = tail probability of (actual - expected) among this series' own last `residual_window` residuals
    score    = 1 - p_value;  severity from p_value (SeverityThresholds), the same thresholds for every series

- Step profiles, no interpolation: daily slots at the series' resolution (at least `min_daily_slot_s`), so a
  schedule that switches at 09:00 and 18:00 is represented exactly. The sub-hour phase (60 slots at most) is used
  only while its recent squared error beats the model without it (a small set chosen by recent error).
  Profiles are fitted hierarchically: the daily profile is the average day of its day type (weekdays, weekend: two
  profiles), the weekly one the deviation of an hour of the week from it; each slot is a bias-corrected exponential
  mean shrunk by a small prior. The hour-of-week profile decays a cycle per cycle, not per window (its six 10-minute
  windows an hour share one week's decay; per window it was a memory of two windows that tracked any shift or drift
  within the hour), learns nothing in the series' first week (no hour of the week has a previous week yet) and is
  centred into the level only once it has seen every hour of the week. The level is the weekdays' level: weekend
  windows teach the weekend profile, and neither it nor what the weekly profile learns on a weekend is centred into
  the level (two quiet weekend days must not drag Monday's forecast down). The sub-hour profile, first in the
  hierarchy on weekdays, learns last on a weekend (the residual the day type and the week leave, nothing on a
  never-seen weekend): first, it met the weekend's dip before the weekend profile and its centring sank a step
  schedule's level over the weekend (22.7 -> 12.8), which cost alerts on Monday nights.
- Calibration: the conformal rank of the residual among recent residuals, with an exponential tail fitted to the
  top 2 % beyond them; spread floors (1 % of the forecast, half the series' quantization step, `min_change`) keep a
  flat or quantized series from alerting on rounding. Zero-inflated series need nothing special: their zeros and
  normal bursts are in the residual distribution, so a normal burst has a large p and a tenfold one a tiny p.
- Debouncing: the first window of an excursion alerts; further windows of it do not (unless the severity rises),
  and are learnt clipped to the residual tail, so the level does not move and the return scores as normal.
- Persistence (change points): a one-sided CUSUM per direction of the calibrated surprise, S = max(0, S - ln p - k)
  with k = `persist_k` (3: only windows with p < 0.05 add), alerts (warning, once per excursion) when S passes
  -ln(warning threshold), the same line a single window must pass: a burst of 3-6 windows, or the first windows of a
  shift, each only somewhat unlikely, is one alert. Its windows (p < 0.05, gaps up to `run_gap_windows`) form the
  excursion's run; a confirmed run (CUSUM alert, or `shift_confirm_windows` windows beyond a severity) that lasts
  `shift_confirm_windows` strong or twice as many windows in all is a level shift: level, seasonal offsets and
  residual spread are rescaled to the run's median (the new data, not the spike), once (level_shift=True, no new
  alert). Bursts shorter than that return and score as normal.
- Slow drift: a two-sided CUSUM of clipped robust z; crossing `drift_h` raises a drift alert (drift=True,
  `drift_severity`) and re-baselines the level on the recent residual mean.
- Warm-up: `warmup_windows` never alert; a slot not seen on a previous cycle needs `unseen_season_evidence` times
  stronger evidence (squared on the first day); a never-seen weekend after the first day is learnt, not alerted.

The previous model (|z| against River's rolling Gaussian, 24 interpolated hourly slots, "3 alerts = level shift")
is kept as detectors/legacy.py for before/after measurement only. River is still the library of the legacy model;
this one needs sorted residuals and step profiles, which are plain Python here.

State
-----
`to_bytes()` / `from_bytes()` pickle the detector behind a header naming the format version (4: persistence CUSUM,
per-cycle profile decay; 3 was day types; older state is refused and relearnt). Pickle runs code on load: restore
only bytes this worker wrote. About 16 KB per series. A round trip continues with bit-identical scores.
"""

from __future__ import annotations

import datetime as dt
import math
import pickle
import statistics
from array import array
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal


from prismops.errors import FieldRuleError

SEVERITIES = ("info", "warning", "critical")
Severity = Literal["info", "warning", "critical"]
Direction = Literal["both", "up", "down"]
MONEY_QUANTUM = Decimal("0.000000000001")  # 12 places, as ClickHouse Decimal(38, 12)

_DAY_S = 86_400
_WEEK_S = 7 * _DAY_S
_MONDAY_OFFSET_S = 4 * _DAY_S  # 1970-01-01 was a Thursday; weekly slot 0 is Monday (UTC)
_STATE_MAGIC = b"PRISMOPS-DETECTOR-STATE"
STATE_FORMAT_VERSION = 5
"""5: profiles and residuals are stored as packed arrays (a series' record pickled ~10x faster than lists of floats)."""


@dataclass(frozen=True)
class SeverityThresholds:
    """Calibrated tail probability (p) at or under which a window becomes info / warning / critical.

    p is the per-series probability of a residual at least this extreme (see `SeriesDetector`), so one set of
    thresholds means the same on a smooth CPU-like cost series and on a sparse, quantized count series.
    Measured on the anomaly-free files of the synthetic corpus (seed 15, 13 files per category; `prismops detectors
    eval`, docs/anomalies.md): 0 warning+ alerts per 10,000 points after debouncing (0.18 on seed 7; 1.26 before day
    types, 0.54 before the sub-hour profile learnt last on weekends).
    """

    info: float = 1e-3
    warning: float = 1e-5
    critical: float = 1e-6

    def __post_init__(self) -> None:
        if not 1 > self.info >= self.warning >= self.critical > 0:
            raise FieldRuleError("thresholds", "ordered", "need 1 > info >= warning >= critical > 0 (tail probabilities)")

    def severity_of(self, p_value: float, evidence: float = 1.0) -> Severity | None:
        """Severity of a tail probability; evidence > 1 demands that many times stronger evidence (warm-up ramp)."""
        p = p_value * evidence
        if p <= self.critical:
            return "critical"
        if p <= self.warning:
            return "warning"
        if p <= self.info:
            return "info"
        return None


@dataclass(frozen=True)
class DetectorConfig:
    """How one series is learnt and judged; rates are half-lives in event time so the window size does not matter."""

    warmup_windows: int = 120
    level_half_life_s: float = 24 * 3600
    min_daily_slot_s: int = 1800
    daily_half_life_days: float = 7.0
    weekly_half_life_weeks: float = 1.0
    subhour_half_life_hours: float = 12.0
    residual_window: int = 720
    thresholds: SeverityThresholds = field(default_factory=SeverityThresholds)
    shift_confirm_windows: int = 6
    direction: Direction = "both"
    log_offset: float | None = None
    relative_sigma_floor: float = 0.01
    absolute_sigma_floor: float = 1e-9
    min_change: float = 0.0
    relative_residuals: bool = False
    alert_cooldown_windows: int = 12
    run_gap_windows: int = 3
    drift_k: float = 1.0
    drift_h: float = 36.0
    drift_severity: Severity = "warning"
    drift_cooldown_s: float = 6 * 3600
    unseen_season_evidence: float = 10.0
    persist_k: float = 3.0

    def __post_init__(self) -> None:
        if self.warmup_windows < 0:
            raise FieldRuleError("warmup_windows", "non_negative", "must be >= 0")
        for name in ("level_half_life_s", "daily_half_life_days", "weekly_half_life_weeks", "subhour_half_life_hours",
                     "drift_k", "drift_h", "unseen_season_evidence", "persist_k"):
            if not getattr(self, name) > 0:
                raise FieldRuleError(name, "positive", "must be > 0")
        if self.min_daily_slot_s < 60 or _DAY_S % self.min_daily_slot_s:
            raise FieldRuleError("min_daily_slot_s", "divides_day", "must be >= 60 and divide 86400 seconds")
        if self.residual_window < 20:
            raise FieldRuleError("residual_window", "at_least_twenty", "needs >= 20 residuals for a tail")
        if self.shift_confirm_windows < 1:
            raise FieldRuleError("shift_confirm_windows", "positive", "must be >= 1")
        if self.direction not in ("both", "up", "down"):
            raise FieldRuleError("direction", "one_of", "must be both, up or down")
        if self.min_change < 0:
            raise FieldRuleError("min_change", "non_negative", "must be >= 0 (absolute units of the series)")
        if self.drift_severity not in SEVERITIES:
            raise FieldRuleError("drift_severity", "one_of", f"must be one of {', '.join(SEVERITIES)}")


@dataclass(frozen=True)
class DetectionResult:
    """One scored window. actual/expected are Decimal (12 places) when the series is money, floats otherwise.

    score = 1 - p_value (calibrated per series); severity is set only on the window that opens an alert (an
    excursion of several windows is one alert); drift=True marks a slow-drift alert (CUSUM), not a spike.
    """

    window_start: dt.datetime
    actual: Decimal | float
    expected: Decimal | float
    z: float
    score: float
    severity: Severity | None
    warming_up: bool
    level_shift: bool
    p_value: float = 1.0
    drift: bool = False
    in_excursion: bool = False

    @property
    def is_anomaly(self) -> bool:
        return self.severity is not None

    def at_least(self, severity: Severity) -> bool:
        return self.severity is not None and SEVERITIES.index(self.severity) >= SEVERITIES.index(severity)


def _epoch_seconds(window_start: dt.datetime) -> float:
    if not isinstance(window_start, dt.datetime):
        raise FieldRuleError("window_start", "datetime", f"must be a datetime, got {type(window_start).__name__}")
    if window_start.tzinfo is None:
        window_start = window_start.replace(tzinfo=dt.timezone.utc)
    return window_start.timestamp()


def _as_float(value: Decimal | float | int) -> float:
    if isinstance(value, bool) or not isinstance(value, (Decimal, float, int)):
        raise FieldRuleError("value", "number", f"must be a Decimal, float or int, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise FieldRuleError("value", "finite", f"must be finite, got {value}")
    return number


_PRIOR_WEIGHT = 0.5
_MIN_RESIDUALS = 8  # a tail needs this many residuals; fewer score p = 1 (no alert)


def _is_weekend(epoch_s: float) -> bool:
    return ((epoch_s - _MONDAY_OFFSET_S) % _WEEK_S) >= 5 * _DAY_S


class _Profile:
    """Step-capable seasonal offsets: one bias-corrected exponential mean per slot, no interpolation between slots."""

    __slots__ = ("period_s", "origin_s", "raw", "bias", "visited_sum", "visited_count", "weights", "visits",
                 "half_life_s", "days", "per_cycle")

    # A visited slot's offset is raw[slot] + bias and an unvisited one's is 0: centring (shifting every visited offset by
    # their mean) is then one change of `bias`, O(1) instead of O(slots) per window; visited_sum is the visited offsets' sum.
    def __init__(self, period_s: float, slots: int, half_life_s: float, origin_s: float = 0.0, days: str | None = None,
                 interval_s: float | None = None):
        self.period_s, self.origin_s, self.half_life_s, self.days = period_s, origin_s, half_life_s, days
        # windows that fall in one slot per cycle (an hour-of-week slot holds six 10-minute windows)
        self.per_cycle = max(1.0, period_s / slots / interval_s) if interval_s else 1.0
        self.raw = array("d", bytes(8 * slots))  # arrays, not lists: a series' state pickles as bytes
        self.bias = 0.0
        self.visited_sum = 0.0
        self.visited_count = 0
        self.weights = array("d", bytes(8 * slots))
        self.visits = array("q", bytes(8 * slots))

    def __getstate__(self):
        return (self.period_s, self.origin_s, self.raw, self.bias, self.visited_sum, self.visited_count, self.weights,
                self.visits, self.half_life_s, self.days, self.per_cycle)

    def __setstate__(self, state):
        (self.period_s, self.origin_s, self.raw, self.bias, self.visited_sum, self.visited_count, self.weights,
         self.visits, self.half_life_s, self.days, self.per_cycle) = state

    def get(self, slot: int) -> float:
        return self.raw[slot] + self.bias if self.visits[slot] else 0.0

    @property
    def offsets(self) -> list[float]:
        return [self.get(i) for i in range(len(self.raw))]

    @offsets.setter
    def offsets(self, values: list[float]) -> None:
        self.raw = array("d", [v if n else 0.0 for v, n in zip(values, self.visits)])
        self.bias = 0.0
        self.visited_sum = sum(self.raw)

    def slot(self, epoch_s: float) -> int:
        slots = len(self.raw)
        return min(slots - 1, int(((epoch_s - self.origin_s) % self.period_s) / self.period_s * slots))

    def learn(self, slot: int, error: float, elapsed_s: float) -> None:
        # decay by the time since the slot's last visit, approximated by one period shared among the windows that fall in
        # the slot each cycle (decaying a whole period per window made an hour-of-week slot of six windows a memory of
        # about two windows: it tracked a level shift or a drift within the hour)
        self.weights[slot] = 0.5 ** (self.period_s / self.half_life_s / self.per_cycle) * self.weights[slot] + 1.0
        if not self.visits[slot]:
            self.raw[slot] = -self.bias  # offset 0 before this first visit
            self.visited_count += 1
        # shrunk toward 0 by PRIOR_WEIGHT pseudo-cycles: one noisy first visit must not become the profile
        step = error / (self.weights[slot] + _PRIOR_WEIGHT * self.per_cycle)
        self.raw[slot] += step
        self.visited_sum += step
        self.visits[slot] += 1

    def centre(self) -> float:
        """Shift visited offsets to mean 0 (returning the mean) so level + offsets stays the same forecast."""
        if not self.visited_count:
            return 0.0
        mean = self.visited_sum / self.visited_count
        self.bias -= mean
        self.visited_sum = 0.0
        return mean


class SeriesDetector:
    """Score-then-learn detector for one series; feed windows in increasing window_start order.

    Forecast: level + sub-hour phase (any series finer than an hour, used when it helps) + daily
    slot (the series' resolution, at least `min_daily_slot_s`) + hour-of-week slot, each a step profile.
    Score: the calibrated tail probability of the residual among this series' own recent residuals (conformal
    rank, with an exponential tail fitted to the top 2 % beyond the observed extremes), two-sided unless the
    metric has a direction. Alerts: the first window of an excursion alerts; the rest of the excursion does not,
    and is learnt clipped so the level is not moved. An excursion that persists `shift_confirm_windows` windows
    is a level shift: the level moves to the run's median and the run ends quietly. Slow drifts: a two-sided
    CUSUM of robust z (clipped) with its own severity. Seasons never visited demand `unseen_season_evidence`
    times stronger evidence, so the first day and week do not flood.
    """

    def __init__(self, config: DetectorConfig | None = None):
        self.config = config or DetectorConfig()
        self.windows_seen = 0
        self.level: float | None = None
        self.level_weight = 0.0
        self.last_epoch_s: float | None = None
        self.first_epoch_s = 0.0
        self._visited = False
        self.interval_s: float | None = None
        self.profiles: list[_Profile] | None = None
        self.ring: deque[float] = deque()
        self.sorted_residuals: list[float] = []
        self.quantum = math.inf
        self.last_value: float | None = None
        self.run_sign = 0
        self.run_residuals: list[float] = []
        self.run_rank = -1
        self.run_forecasts: list[float] = []
        self.run_gap = 0
        self.cusum_up = 0.0
        self.cusum_down = 0.0
        self.drift_quiet_until = -math.inf
        self.residual_ewma = 0.0
        self.subhour_error = 0.0
        self.plain_error = 0.0
        self.use_subhour = False
        self.last_alert_sign = 0
        self.last_alert_rank = -1
        self.since_alert = 0
        self.weekday_seen = False
        self.persist_up = 0.0
        self.persist_down = 0.0
        self.run_confirmed = False
        self.run_strong = 0

    _PACKED = ("sorted_residuals", "run_residuals", "run_forecasts")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["ring"] = array("d", self.ring)
        for name in self._PACKED:
            state[name] = array("d", state[name])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.ring = deque(state["ring"].tolist())
        for name in self._PACKED:
            setattr(self, name, state[name].tolist())

    # -- model space ---------------------------------------------------------------------------------------------
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

    def _build_profiles(self, interval_s: float) -> list[_Profile]:
        config = self.config
        profiles = []
        if interval_s < 3600:
            slots = max(2, min(60, int(round(3600 / interval_s))))
            profiles.append(_Profile(3600, slots, config.subhour_half_life_hours * 3600))
        daily_slot_s = max(config.min_daily_slot_s, interval_s)
        # two day types (weekdays, weekend): a business-hours schedule is a different day on Saturday, and two weekend
        # days must not pull the weekdays' 09:00-18:00 profile down before Monday
        for days in ("weekday", "weekend"):
            profiles.append(_Profile(_DAY_S, max(1, int(_DAY_S // daily_slot_s)), config.daily_half_life_days * _DAY_S,
                                     days=days))
        weekly_slot_s = max(daily_slot_s, 3600)
        profiles.append(_Profile(_WEEK_S, max(1, int(_WEEK_S // weekly_slot_s)), config.weekly_half_life_weeks * _WEEK_S,
                                 _MONDAY_OFFSET_S, interval_s=interval_s))
        return profiles

    def _seasonal(self, epoch_s: float) -> tuple[float, bool]:
        """Sum of the seasonal offsets and whether every slot used has been visited before."""
        return self._seasonal_seen(epoch_s)[:2]

    def _seasonal_seen(self, epoch_s: float) -> tuple[float, bool, bool, tuple[list[_Profile], list[int]] | None]:
        """Seasonal offsets, whether all their slots were visited, whether all but the weekly one were, and the
        profiles of this day type with their slots (for _learn, so slots are computed once a window)."""
        self._visited = bool(self.profiles)
        if not self.profiles:
            return 0.0, False, False, None
        total, seen = 0.0, True
        short_seen = True
        weekend = _is_weekend(epoch_s)
        used: list[_Profile] = []
        slots: list[int] = []
        for profile in self.profiles:
            if profile.days is not None and (profile.days == "weekend") != weekend:
                continue
            slot = profile.slot(epoch_s)
            used.append(profile)
            slots.append(slot)
            if profile.period_s == 3600 and not self.use_subhour:
                continue
            total += profile.get(slot)
            # seen: visited, and a whole period of this profile has passed (its slots were seen on another cycle)
            visited = profile.visits[slot] > 0 and epoch_s - self.first_epoch_s >= profile.period_s
            self._visited = self._visited and (profile.visits[slot] > 0 or profile.period_s >= _WEEK_S)
            seen = seen and visited
            if profile.period_s < _WEEK_S:
                short_seen = short_seen and visited
        return total, seen, short_seen, (used, slots)

    def expected_at(self, window_start: dt.datetime) -> float | None:
        """The baseline forecast for a window in the series' own unit, or None before the first window."""
        if self.level is None:
            return None
        return self._from_model(self.level + self._seasonal(_epoch_seconds(window_start))[0])

    # -- residual distribution -----------------------------------------------------------------------------------
    def _floor(self, forecast: float) -> float:
        config = self.config
        relative = config.relative_sigma_floor * (1.0 if config.log_offset is not None else abs(forecast))
        quantum = self.quantum / 2 if math.isfinite(self.quantum) else 0.0
        return max(relative, quantum, config.absolute_sigma_floor, config.min_change)

    def _norm(self, forecast: float) -> float:
        if self.config.log_offset is not None or not self.config.relative_residuals:
            return 1.0
        quantum = self.quantum if math.isfinite(self.quantum) else 0.0
        return max(abs(forecast), 0.1 * abs(self.level or 0.0), quantum, self.config.absolute_sigma_floor)

    def _scale(self, forecast: float) -> float:
        """Robust residual spread: half the 16-84 % inter-quantile range, floored."""
        data, n = self.sorted_residuals, len(self.sorted_residuals)
        spread = 0.0 if n < 5 else (data[int(0.84 * (n - 1))] - data[int(0.16 * (n - 1))]) / 2
        return max(spread, self._floor(forecast))

    def _upper_tail(self, r: float, floor: float, scale: float) -> float:
        """P(R >= r) among recent residuals: conformal rank, exponential tail beyond the top k."""
        data, n = self.sorted_residuals, len(self.sorted_residuals)
        if n < _MIN_RESIDUALS:
            return 1.0
        k = max(3, n // 50)
        u = data[n - k]
        if r <= u:
            return min(1.0, (n - bisect_left(data, r) + 1) / (n + 1))
        beta = max(sum(data[n - k:]) / k - u, floor, 0.4 * scale)
        return k / (n + 1) * math.exp(-(r - u) / beta)

    def _p_value(self, r: float, floor: float, scale: float) -> float:
        return self._p_values(r, floor, scale)[0]

    def _p_values(self, r: float, floor: float, scale: float) -> tuple[float, float, float]:
        """(p of the direction(s) watched, upper tail P(R >= r), lower tail P(R <= r)); an unwatched side reads 1."""
        direction = self.config.direction
        up = self._upper_tail(r, floor, scale) if direction != "down" else 1.0
        down = _Negated(self.sorted_residuals).upper_tail(-r, floor, scale) if direction != "up" else 1.0
        if direction == "up":
            return up, up, 1.0
        if direction == "down":
            return down, 1.0, down
        return min(1.0, 2 * min(up, down)), up, down

    def _remember(self, residual: float) -> None:
        ring, data = self.ring, self.sorted_residuals
        if len(ring) >= self.config.residual_window:
            old = ring.popleft()
            del data[bisect_left(data, old)]
        ring.append(residual)
        insort(data, residual)

    # -- update --------------------------------------------------------------------------------------------------
    def update(self, window_start: dt.datetime, value: Decimal | float | int) -> DetectionResult:
        """Score this window against what was learnt so far, then learn it."""
        epoch_s = _epoch_seconds(window_start)
        actual = _as_float(value)
        modelled = self._to_model(actual)
        if self.last_epoch_s is not None and epoch_s <= self.last_epoch_s:
            raise FieldRuleError("window_start", "increasing",
                                 f"{window_start.isoformat()} is not after the previous window of this series")
        config = self.config
        if self.last_value is not None and actual != self.last_value:
            self.quantum = min(self.quantum, abs(actual - self.last_value))
        self.last_value = actual
        if self.last_epoch_s is not None:
            gap = epoch_s - self.last_epoch_s
            self.interval_s = gap if self.interval_s is None else min(self.interval_s, gap)
            if self.profiles is None:
                self.profiles = self._build_profiles(self.interval_s)
        warming_up = self.windows_seen < config.warmup_windows
        level_shift = drift = in_excursion = False
        severity: Severity | None = None
        if self.level is None:
            self.first_epoch_s = epoch_s
            forecast, z, p_value = modelled, 0.0, 1.0
            self.level, self.level_weight = modelled, 1.0
        else:
            seasonal, seen, short_seen, used = self._seasonal_seen(epoch_s)
            forecast = self.level + seasonal
            r_units = modelled - forecast
            # residuals are kept relative to the forecast's magnitude (noise grows with the level: a night-time burst
            # is as rare as a daytime one of the same relative size); floors keep a near-zero forecast meaningful
            norm = self._norm(forecast)
            r = r_units / norm
            floor = self._floor(forecast) / norm
            scale = max(self._scale(0.0), floor)
            z = r / scale
            if abs(r_units) > config.min_change:
                p_value, p_up, p_down = self._p_values(r, floor, scale)
            else:
                p_value = p_up = p_down = 1.0
            evidence = 1.0 if seen else config.unseen_season_evidence
            # a weekend (or first day) the profiles have never seen says nothing about what is normal there: learn it
            blind = not seen and _is_weekend(epoch_s) and epoch_s - self.first_epoch_s > _DAY_S
            if not short_seen:
                evidence *= config.unseen_season_evidence
            candidate = None if blind else config.thresholds.severity_of(p_value, evidence)
            sign = 1 if r > 0 else -1
            # persistence (a CUSUM of per-window surprise, -ln p of the side the residual is on): a burst or a shift of
            # several windows, each only somewhat unlikely, is one alert; calibrated like the spike score
            # (not before each day type's slots have been seen once: there the residuals measure an unlearnt profile)
            watching = not warming_up and not blind and short_seen
            surprise_up = -math.log(max(1e-300, min(1.0, p_up * evidence))) if watching else 0.0
            surprise_down = -math.log(max(1e-300, min(1.0, p_down * evidence))) if watching else 0.0
            k = config.persist_k
            self.persist_up = max(0.0, self.persist_up + surprise_up - k) if watching else 0.0
            self.persist_down = max(0.0, self.persist_down + surprise_down - k) if watching else 0.0
            strong = candidate is not None and not warming_up
            weak = watching and (surprise_up if sign > 0 else surprise_down) > k
            if strong or weak:
                if sign != self.run_sign:
                    self.run_sign, self.run_residuals, self.run_rank, self.run_forecasts = sign, [], -1, []
                    self.run_confirmed, self.run_strong = False, 0
                self.run_gap = 0
                self.run_residuals.append(r_units)
                self.run_forecasts.append(forecast)
            if strong:
                in_excursion = True
                rank = SEVERITIES.index(candidate)  # type: ignore[arg-type]
                if rank > self.run_rank:
                    self.run_rank = rank
                    repeat = sign == self.last_alert_sign and self.since_alert < config.alert_cooldown_windows
                    if not repeat or rank > self.last_alert_rank:
                        severity = candidate
                        self.last_alert_sign, self.last_alert_rank, self.since_alert = sign, rank, 0
            if strong or weak:
                persist = self.persist_up if sign > 0 else self.persist_down
                if persist > -math.log(config.thresholds.warning):
                    # several unlikely windows in a row: one warning for the excursion (unless it already alerted)
                    self.run_confirmed = True
                    self.persist_up, self.persist_down = (0.0, self.persist_down) if sign > 0 else (self.persist_up, 0.0)
                    warning = SEVERITIES.index("warning")
                    alerted = (sign == self.last_alert_sign and self.since_alert < config.alert_cooldown_windows
                               and self.last_alert_rank >= warning)
                    if not alerted and (severity is None or SEVERITIES.index(severity) < warning):
                        severity = "warning"
                        self.last_alert_sign, self.last_alert_rank, self.since_alert = sign, warning, 0
                    self.run_rank = max(self.run_rank, warning)
                strong_count = self.run_strong = self.run_strong + strong
                if strong_count >= config.shift_confirm_windows and not self.run_confirmed:
                    # persistence is evidence: several unlikely windows in a row are a shift worth one warning
                    warning = SEVERITIES.index("warning")
                    if self.run_rank < warning and not (sign == self.last_alert_sign and self.last_alert_rank >= warning
                                                        and self.since_alert < config.alert_cooldown_windows):
                        severity = "warning"
                        self.last_alert_sign, self.last_alert_rank, self.since_alert = sign, warning, 0
                    self.run_confirmed = True
                if self.run_confirmed and (strong_count >= config.shift_confirm_windows
                                           or len(self.run_residuals) >= 2 * config.shift_confirm_windows):
                    # a confirmed excursion that persists is a level shift: re-baseline on the run (the new data), once
                    self._shift(statistics.median(self.run_residuals), statistics.median(self.run_forecasts))
                    level_shift = True
                    self.run_sign, self.run_residuals, self.run_rank, self.run_forecasts = 0, [], -1, []
                    self.run_confirmed, self.run_strong = False, 0
                    self.cusum_up = self.cusum_down = self.persist_up = self.persist_down = 0.0
            if strong:
                learnt_r = self._clip(r)
            else:
                if not weak:
                    self.run_gap += 1
                    if self.run_gap > config.run_gap_windows:
                        self.run_sign, self.run_residuals, self.run_rank, self.run_forecasts = 0, [], -1, []
                        self.run_confirmed, self.run_strong = False, 0
                learnt_r = r
                drift = self._drift(epoch_s, r, scale, warming_up or not short_seen, 1.0 if seen else 2.0)
                if blind:
                    self.cusum_up = self.cusum_down = 0.0
                if drift and not level_shift:
                    severity = severity or config.drift_severity
                    self.level += self.residual_ewma * norm  # re-baseline on the drifted data
                    self.residual_ewma = 0.0
            if not level_shift:
                self._learn(epoch_s, forecast + learnt_r * norm, forecast, blind, used)
            if self._visited and not blind:  # residuals of a never-seen slot measure the unlearnt profile, not the noise
                self._remember(learnt_r if not level_shift else 0.0)
            self.residual_ewma += 0.1 * (learnt_r - self.residual_ewma)
        self.windows_seen += 1
        self.since_alert += 1
        self.last_epoch_s = epoch_s
        expected = self._from_model(forecast)
        return DetectionResult(
            window_start=window_start, actual=_money(value) if isinstance(value, Decimal) else actual,
            expected=_money(Decimal(repr(expected))) if isinstance(value, Decimal) else expected,
            z=z, score=1.0 - p_value, severity=severity, warming_up=warming_up, level_shift=level_shift,
            p_value=p_value, drift=drift, in_excursion=in_excursion,
        )

    def _shift(self, residual: float, forecast: float) -> None:
        """Accept a new level: scale level and seasonal offsets together when both levels are positive (cost moves
        by a factor: twice the traffic is twice the daily swing), else move the level by the run's median residual."""
        level = self.level or 0.0
        if self.config.log_offset is None and level > 0 and forecast > 0 and forecast + residual > 0:
            ratio = (forecast + residual) / forecast
            self.level = level * ratio
            for profile in self.profiles or []:
                profile.offsets = [o * ratio for o in profile.offsets]
            self.ring = deque(r * ratio for r in self.ring)  # the noise scales with the level too
            self.sorted_residuals = [r * ratio for r in self.sorted_residuals]
        else:
            self.level = level + residual

    def _clip(self, r: float) -> float:
        data, n = self.sorted_residuals, len(self.sorted_residuals)
        if n < _MIN_RESIDUALS:
            return 0.0
        k = max(3, n // 50)
        return min(max(r, data[k - 1]), data[n - k])

    def _drift(self, epoch_s: float, r: float, scale: float, warming_up: bool, evidence: float = 1.0) -> bool:
        """Two-sided CUSUM of clipped robust z: a slow, sustained deviation the spike score does not see."""
        config = self.config
        zc = max(-3.0, min(3.0, r / scale))
        self.cusum_up = max(0.0, self.cusum_up + zc - config.drift_k)
        self.cusum_down = max(0.0, self.cusum_down - zc - config.drift_k)
        if warming_up or epoch_s < self.drift_quiet_until:
            self.cusum_up = min(self.cusum_up, config.drift_h)
            self.cusum_down = min(self.cusum_down, config.drift_h)
            return False
        direction = config.direction
        limit = config.drift_h * evidence
        fired = (self.cusum_up > limit and direction != "down") or (self.cusum_down > limit and direction != "up")
        if fired:
            self.cusum_up = self.cusum_down = 0.0
            self.drift_quiet_until = epoch_s + config.drift_cooldown_s
        return fired

    def _learn(self, epoch_s: float, learnt: float, forecast: float, blind: bool = False,
               used: tuple[list[_Profile], list[int]] | None = None) -> None:
        """Backfit level and each seasonal profile in turn, each a bias-corrected exponential mean.

        blind (a weekend never seen before): the level does not learn (the weekend profiles do), so the first Monday
        after the first weekend is not forecast at the weekend's level."""
        config = self.config
        elapsed = epoch_s - self.last_epoch_s  # type: ignore[operator]
        weekend = _is_weekend(epoch_s)
        if used is not None:
            profiles, slots = used
        else:
            profiles = [p for p in self.profiles or [] if p.days is None or (p.days == "weekend") == weekend]
            slots = [p.slot(epoch_s) for p in profiles]
        seasonal = sum(p.get(s) for p, s in zip(profiles, slots))
        if profiles and profiles[0].period_s == 3600:
            # sub-hour phase: used only while it forecasts better than the model without it (chosen by recent error)
            with_sub = learnt - self.level - seasonal  # type: ignore[operator]
            without_sub = with_sub + profiles[0].get(slots[0])
            self.subhour_error += 0.01 * (with_sub * with_sub - self.subhour_error)
            self.plain_error += 0.01 * (without_sub * without_sub - self.plain_error)
            self.use_subhour = self.subhour_error < 0.8 * self.plain_error
        # the level is the weekdays' level: weekend days teach the weekend profile (a series that starts on a weekend
        # learns its level there until it has seen a weekday)
        if not weekend:
            self.weekday_seen = True
        level_learns = not blind and (not weekend or not self.weekday_seen)
        if level_learns:
            self.level_weight = 0.5 ** (elapsed / config.level_half_life_s) * self.level_weight + 1.0
            self.level += (learnt - seasonal - self.level) / self.level_weight  # type: ignore[operator]
        # hierarchical: each profile learns what the level and the profiles before it (shorter periods) leave, so the
        # daily profile is the average day (of its day type) and the weekly one only the deviation of this hour of the
        # week from it
        explained = self.level
        first_week = epoch_s - self.first_epoch_s < _WEEK_S
        for profile, slot in zip(profiles, slots):
            if first_week and profile.period_s >= _WEEK_S:
                # no hour of the week has a previous week yet: learning it now only tracks the current hour, which
                # absorbed a level shift within the hour (and the evidence of every slow change with it)
                continue
            if profile.period_s < _DAY_S and not level_learns:
                # first in the hierarchy, the sub-hour phase would meet the weekend's dip before the weekend profile
                # does, and its centring would carry the dip into the weekdays' level (a step schedule's level sank
                # 22.7 -> 12.8 over its first weekend and Monday nights were forecast low): when the level does not
                # learn, the sub-hour phase learns last (below), only what the day type and the week leave
                explained += profile.get(slot)  # type: ignore[operator]
                continue
            profile.learn(slot, learnt - explained - profile.get(slot), elapsed)  # type: ignore[operator]
            explained += profile.get(slot)  # type: ignore[operator]
        if profiles and profiles[0].period_s < _DAY_S and not level_learns and not blind:
            # weekend (not a never-seen one): the whole model's residual, so a real change of level over a weekend
            # (a drift) still reaches the level through the centring, the weekend's dip does not
            profiles[0].learn(slots[0], learnt - explained, elapsed)  # type: ignore[operator]
        for profile in profiles:
            # the weekend day type is an offset from the weekdays' level, and so is what the hour-of-week profile learns
            # on a weekend: neither is centred into the level
            # (nor is the hour-of-week profile before it has visited every hour of the week: centring a part of the week
            # would move the level by the visited hours' mean while the unvisited hours still read 0)
            if profile.days != "weekend" and not (weekend and profile.period_s >= _WEEK_S) and not (
                    profile.period_s >= _WEEK_S and profile.visited_count < len(profile.raw)):
                self.level += profile.centre()  # type: ignore[operator]

    def to_bytes(self) -> bytes:
        return dump_state(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> "SeriesDetector":
        return load_state(data, cls)


class _Negated:
    """The lower tail of the residuals as the upper tail of their negation, without copying the sorted list."""

    def __init__(self, data: list[float]):
        self.data = data

    def upper_tail(self, r: float, floor: float, scale: float) -> float:
        data, n = self.data, len(self.data)
        if n < _MIN_RESIDUALS:
            return 1.0
        k = max(3, n // 50)
        u = -data[k - 1]
        if r <= u:
            return min(1.0, (bisect_right(data, -r) + 1) / (n + 1))
        beta = max(-sum(data[:k]) / k - u, floor, 0.4 * scale)
        return k / (n + 1) * math.exp(-(r - u) / beta)


def _money(amount: Decimal) -> Decimal:
    """Money in, money out: a Decimal series reports actual/expected as Decimal at 12 places; only the model is float."""
    return amount.quantize(MONEY_QUANTUM)


# Per-metric defaults: cost can spike or collapse; latency, error rate and tokens per request page when they rise.
METRIC_CONFIGS: dict[str, DetectorConfig] = {
    "cost": DetectorConfig(direction="both"),
    "tokens_per_request": DetectorConfig(direction="up"),
    "latency_p95_ms": DetectorConfig(direction="up"),
    "error_rate": DetectorConfig(direction="up", log_offset=None, absolute_sigma_floor=0.005),
}


class DetectorBank:
    """One SeriesDetector per (metric, series key), created on first sight with that metric's config."""

    detector_type: type = SeriesDetector
    default_configs: Mapping[str, Any] = METRIC_CONFIGS

    def __init__(self, configs: Mapping[str, DetectorConfig] | None = None):
        self.configs = dict(configs or self.default_configs)
        self.detectors: dict[tuple[str, str], SeriesDetector] = {}

    def update(self, metric: str, key: str, window_start: dt.datetime, value: Decimal | float | int) -> DetectionResult:
        detector = self.detectors.get((metric, key))
        if detector is None:
            if metric not in self.configs:
                raise FieldRuleError("metric", "configured", f"{metric!r} has no detector config (known: {sorted(self.configs)})")
            detector = self.detectors[(metric, key)] = self.detector_type(self.configs[metric])
        return detector.update(window_start, value)

    def __len__(self) -> int:
        return len(self.detectors)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.detectors)

    def to_bytes(self) -> bytes:
        return dump_state(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> "DetectorBank":
        return load_state(data, cls)


def dump_state(obj: object) -> bytes:
    """Header (magic, format version, class name) + pickle; the header lets a reader refuse bytes it does not know."""
    header = b"%s %d %s\n" % (_STATE_MAGIC, STATE_FORMAT_VERSION, type(obj).__name__.encode())
    return header + pickle.dumps(obj, protocol=5)


def load_state(data: bytes, cls: type):
    header, _, body = bytes(data).partition(b"\n")
    parts = header.split(b" ")
    if len(parts) != 3 or parts[0] != _STATE_MAGIC:
        raise FieldRuleError("state", "header", "is not PrismOps detector state")
    if parts[1] != str(STATE_FORMAT_VERSION).encode():
        raise FieldRuleError("state", "format_version",
                             f"format {parts[1].decode(errors='replace')} is not {STATE_FORMAT_VERSION}; relearn from scratch")
    if parts[2] != cls.__name__.encode():
        raise FieldRuleError("state", "kind", f"holds a {parts[2].decode(errors='replace')}, not a {cls.__name__}")
    restored = pickle.loads(body)
    if not isinstance(restored, cls):
        raise FieldRuleError("state", "kind", f"unpickled a {type(restored).__name__}, not a {cls.__name__}")
    return restored
