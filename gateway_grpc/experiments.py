"""Sticky weighted splits, deterministic sampling and staged canaries for the router.

Plain Python (no gRPC, no Kafka) and no clock of its own: the canary takes `now` (tz-aware UTC).

Every random-looking choice here is a hash, not a random number: `unit_interval` maps its parts through
sha256 to a value in [0, 1), so the same caller (sticky key) lands in the same arm, sample and canary bucket
on every gateway replica and after every restart, and a reader can recompute any decision later.

Canary (seed: 10% -> 50% -> 100%, rollback when the error rate is > 10% over 5 minutes or p95 > 30 s): a
stage moves on only when it has lasted `stage_duration_s` AND the live row holds `min_samples` calls, so a
stage nobody called never counts as passed. The next stage starts at the moment it was entered, so every
stage gets its full duration of traffic at its own percent. After the 100% stage has passed the canary is
promoted. A rollback (percent 0) is latched: it holds for that canary name until a config with a different
started_at or stages arrives, which is a new canary.
"""

from __future__ import annotations

import datetime as dt
import bisect
import hashlib
import itertools
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prismops.errors import FieldRuleError

RUNNING = "running"
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
CANARY_STATES = (RUNNING, PROMOTED, ROLLED_BACK)

_UNIT_BITS = 53  # a double holds 53 bits exactly, so the value is exact and never rounds up to 1.0


def _unit_numerator(*parts: str) -> int:
    """The top 53 bits of the first 8 bytes of sha256(parts joined by U+001F)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _UNIT_BITS)


def unit_interval(*parts: str) -> float:
    """A stable, uniform value in [0, 1) for these parts: the same on every process and machine.

    The first 8 bytes of sha256("\\x1f".join(parts)) read as a big-endian integer, divided by 2**64, truncated
    to the 53 bits a float holds (plain division would round the largest values up to exactly 1.0).
    """
    return _unit_numerator(*parts) / 2**_UNIT_BITS


def choose_arm(experiment: str, arms: Sequence[tuple[str, int]], sticky_key: str) -> str:
    """The arm this sticky key gets: arms (name, weight > 0) laid out by cumulative weight over [0, 1)."""
    if not arms:
        raise FieldRuleError("arms", "non_empty", "an experiment needs at least one arm")
    names: set[str] = set()
    for arm in arms:
        if not (isinstance(arm, tuple | list) and len(arm) == 2 and isinstance(arm[0], str) and arm[0]):
            raise FieldRuleError("arms", "name_weight_pairs", f"each arm must be a (name, weight) pair, got {arm!r}")
        name, weight = arm
        if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0:
            raise FieldRuleError("arms", "positive_weight", f"arm {name!r} needs an integer weight > 0, got {weight!r}")
        if name in names:
            raise FieldRuleError("arms", "unique_names", f"arm {name!r} appears more than once")
        names.add(name)
    total = sum(weight for _, weight in arms)
    # point = floor(unit_interval * total), computed exactly in integers; the arm is the first whose
    # cumulative weight exceeds it
    point = (_unit_numerator(experiment, sticky_key) * total) >> _UNIT_BITS
    return arms[bisect.bisect_right(list(itertools.accumulate(weight for _, weight in arms)), point)][0]


def sampled(rate: float, *parts: str) -> bool:
    """Whether these parts fall in the sample: rate 0 never, 1 always, the same answer every time."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise FieldRuleError("rate", "range", f"must be a number in [0, 1], got {rate!r}")
    return unit_interval(*parts) < rate


@dataclass(frozen=True)
class CanaryConfig:
    """One canary rollout; started_at and stages together say which rollout it is."""

    started_at: dt.datetime
    stages: tuple[int, ...] = (10, 50, 100)
    stage_duration_s: float = 600.0
    min_samples: int = 50
    max_error_rate: float = 0.10
    max_p95_ms: float = 30000.0

    def __post_init__(self) -> None:
        if not isinstance(self.started_at, dt.datetime) or self.started_at.utcoffset() is None:
            raise FieldRuleError(
                "started_at", "tz_aware", f"must be a timezone-aware datetime, got {self.started_at!r}"
            )
        stages = tuple(self.stages) if isinstance(self.stages, Sequence) and not isinstance(self.stages, str) else None
        if not stages:
            raise FieldRuleError(
                "stages", "non_empty", f"must be a non-empty sequence of percents, got {self.stages!r}"
            )
        for percent in stages:
            if isinstance(percent, bool) or not isinstance(percent, int) or not 0 < percent <= 100:
                raise FieldRuleError(
                    "stages", "percent", f"each stage must be an integer percent in 1..100, got {percent!r}"
                )
        if any(later <= earlier for earlier, later in zip(stages, stages[1:])):
            raise FieldRuleError("stages", "increasing", f"stages must strictly increase, got {stages}")
        if stages[-1] != 100:
            raise FieldRuleError("stages", "ends_at_100", f"the last stage must be 100 to promote, got {stages[-1]}")
        object.__setattr__(self, "stages", stages)
        if not _is_number(self.stage_duration_s) or self.stage_duration_s <= 0:
            raise FieldRuleError("stage_duration_s", "positive", f"must be seconds > 0, got {self.stage_duration_s!r}")
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) or self.min_samples < 1:
            raise FieldRuleError("min_samples", "positive_int", f"must be an integer >= 1, got {self.min_samples!r}")
        if not _is_number(self.max_error_rate) or not 0 <= self.max_error_rate <= 1:
            raise FieldRuleError("max_error_rate", "range", f"must be a rate in [0, 1], got {self.max_error_rate!r}")
        if not _is_number(self.max_p95_ms) or self.max_p95_ms <= 0:
            raise FieldRuleError("max_p95_ms", "positive", f"must be milliseconds > 0, got {self.max_p95_ms!r}")

    @property
    def rollout(self) -> tuple[dt.datetime, tuple[int, ...]]:
        """What makes it the same canary: thresholds may change under a running canary, these may not."""
        return (self.started_at, self.stages)


@dataclass(frozen=True)
class CanaryStatus:
    """Where a canary stands: the percent of sticky keys it gets, and why."""

    percent: int
    state: str
    stage_index: int
    reason: str


@dataclass
class _CanaryProgress:
    config: CanaryConfig
    stage_index: int
    stage_started_at: dt.datetime
    status: CanaryStatus


class CanaryTracker:
    """The progress of every named canary, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress: dict[str, _CanaryProgress] = {}

    def evaluate(
        self, name: str, config: CanaryConfig, row: Mapping[str, Any] | None, now: dt.datetime
    ) -> CanaryStatus:
        """Advance, hold, promote or roll back the canary `name` given its model's live row now."""
        _require_aware(now)
        if not isinstance(config, CanaryConfig):
            raise FieldRuleError("config", "type", f"must be a CanaryConfig, got {type(config).__name__}")
        stats = _read_row(row)
        with self._lock:
            progress = self._progress.get(name)
            if progress is None or progress.config.rollout != config.rollout:
                progress = self._progress[name] = _CanaryProgress(
                    config, 0, config.started_at, _running(config, 0, "starting")
                )
            progress.config = config
            if progress.status.state in (ROLLED_BACK, PROMOTED):
                return progress.status
            progress.status = _next_status(progress, stats, now)
            return progress.status

    def status(self, name: str) -> CanaryStatus | None:
        """The last status `evaluate` gave for this name."""
        with self._lock:
            progress = self._progress.get(name)
            return progress.status if progress else None

    def forget(self, name: str) -> bool:
        """Drop a canary whose config is gone; True when there was one."""
        with self._lock:
            return self._progress.pop(name, None) is not None

    def snapshot(self) -> list[dict[str, Any]]:
        """One row per canary, sorted by name."""
        with self._lock:
            return [
                {
                    "name": name,
                    "percent": p.status.percent,
                    "state": p.status.state,
                    "stage_index": p.status.stage_index,
                    "reason": p.status.reason,
                    "stages": list(p.config.stages),
                    "started_at": p.config.started_at,
                    "stage_started_at": p.stage_started_at,
                }
                for name, p in sorted(self._progress.items())
            ]


def in_canary(name: str, status: CanaryStatus, sticky_key: str) -> bool:
    """Whether this sticky key goes to canary `name` at its current percent (sticky across stages)."""
    # unit_interval(...) * 100 < percent, computed exactly in integers
    return _unit_numerator("canary", name, sticky_key) * 100 < status.percent * 2**_UNIT_BITS


def _next_status(progress: _CanaryProgress, stats: dict[str, float] | None, now: dt.datetime) -> CanaryStatus:
    config = progress.config
    stages = config.stages
    if now < config.started_at:
        return CanaryStatus(0, RUNNING, 0, f"not started: starts at {config.started_at.isoformat()}")
    enough = stats is not None and stats["sample_count"] >= config.min_samples
    if enough:
        breaches = _breaches(config, stats)
        if breaches:
            return CanaryStatus(0, ROLLED_BACK, progress.stage_index, "; ".join(breaches))
    in_stage_s = (now - progress.stage_started_at).total_seconds()
    label = f"stage {progress.stage_index + 1}/{len(stages)} at {stages[progress.stage_index]}%"
    if in_stage_s < config.stage_duration_s:
        return _running(config, progress.stage_index, f"{label}: {in_stage_s:.0f} s of {config.stage_duration_s:.0f} s")
    if not enough:
        seen = "no live row for the canary model" if stats is None else f"{stats['sample_count']:.0f} calls"
        reason = f"{label}: holding, {seen} < {config.min_samples} needed to advance"
        return _running(config, progress.stage_index, reason)
    if progress.stage_index == len(stages) - 1:
        reason = f"promoted after {label} with {stats['sample_count']:.0f} calls"
        return CanaryStatus(100, PROMOTED, progress.stage_index, reason)
    progress.stage_index += 1
    progress.stage_started_at = now
    return _running(
        config,
        progress.stage_index,
        f"advanced to stage {progress.stage_index + 1}/{len(stages)} at {stages[progress.stage_index]}% "
        f"after {stats['sample_count']:.0f} calls",
    )


def _breaches(config: CanaryConfig, stats: dict[str, float]) -> list[str]:
    breaches = []
    if stats["error_rate"] > config.max_error_rate:
        over = f" over {stats['window_seconds']:.0f} s" if stats.get("window_seconds") is not None else ""
        breaches.append(f"error rate {stats['error_rate'] * 100:.1f}% > {_trimmed_pct(config.max_error_rate)}{over}")
    if stats["p95_latency_ms"] > config.max_p95_ms:
        breaches.append(f"p95 {stats['p95_latency_ms']:.0f} ms > {config.max_p95_ms:.0f} ms")
    return breaches


def _running(config: CanaryConfig, stage_index: int, reason: str) -> CanaryStatus:
    return CanaryStatus(config.stages[stage_index], RUNNING, stage_index, reason)


def _read_row(row: Mapping[str, Any] | None) -> dict[str, float] | None:
    """The numbers the canary reads from a live-table row, checked; window_seconds is optional."""
    if row is None:
        return None
    stats: dict[str, float] = {}
    for name in ("sample_count", "error_rate", "p95_latency_ms", "window_seconds"):
        value = row.get(name)
        if value is None and name == "window_seconds":
            continue
        if not _is_number(value) or value < 0:
            raise FieldRuleError(name, "non_negative", f"the canary's live row needs {name} >= 0, got {value!r}")
        stats[name] = value
    return stats


def _require_aware(now: dt.datetime) -> None:
    if not isinstance(now, dt.datetime) or now.utcoffset() is None:
        raise FieldRuleError("now", "tz_aware", f"must be a timezone-aware datetime, got {now!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _trimmed_pct(rate: float) -> str:
    """0.1 -> "10%", 0.125 -> "12.5%"."""
    return f"{rate * 100:.1f}".rstrip("0").rstrip(".") + "%"
