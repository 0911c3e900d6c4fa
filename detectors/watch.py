"""The whole per-event path a Faust agent wraps: usage samples → windows → detectors → anomalies with root-cause hints.

An agent calls observe() per priced event and tick() on a timer (so quiet streams still close windows), publishes
what comes back, and persists to_bytes() in its state store; from_bytes() resumes windows, detectors and RCA
baselines as they were. Nothing here touches Kafka.

The RCA baseline of a key is the sum of its last `baseline_windows` windows in which no metric alerted (an
anomaly must not become its own baseline), scaled to one window.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from prismops.detectors.online import DetectionResult, DetectorBank, DetectorConfig, dump_state, load_state
from prismops.detectors.rca import Contribution, DimensionTotals, explain
from prismops.detectors.series import METRICS, ClosedWindow, LateEvent, SeriesKey, TumblingWindows, UsageSample, WindowAggregate
from prismops.errors import FieldRuleError


@dataclass(frozen=True)
class ScoredWindow:
    metric: str
    key: SeriesKey
    window_start: dt.datetime
    window_end: dt.datetime
    result: DetectionResult
    causes: list[Contribution]  # empty unless the result is an anomaly (and the metric adds up; p95 does not)


@dataclass(frozen=True)
class WatchStep:
    scored: list[ScoredWindow] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)

    @property
    def anomalies(self) -> list[ScoredWindow]:
        return [s for s in self.scored if s.result.is_anomaly]


class AnomalyWatch:
    def __init__(self, window_s: int = 60, grace_s: int = 30, baseline_windows: int = 60,
                 configs: Mapping[str, DetectorConfig] | None = None,
                 groupings: Mapping[str, tuple[str, ...]] | None = None):
        if baseline_windows < 1:
            raise FieldRuleError("baseline_windows", "positive", "must be >= 1")
        self.windows = TumblingWindows(window_s, grace_s, groupings)
        self.detectors = DetectorBank(configs)
        self.baseline_windows = baseline_windows
        self.baselines: dict[SeriesKey, deque[dict[str, DimensionTotals]]] = {}

    def observe(self, sample: UsageSample, skip: frozenset[SeriesKey] | set[SeriesKey] = frozenset()) -> WatchStep:
        advance = self.windows.add(sample, skip)
        return WatchStep(self._score(advance.closed), advance.late)

    def observe_batch(self, samples: list[tuple[UsageSample, list[SeriesKey]]]) -> list[WatchStep]:
        """`observe` for each (sample, the series to count it in) in order, with the same windows, scores and
        late events; the samples of one series window are added together (see `TumblingWindows.add_batch`)."""
        return [WatchStep(self._score(advance.closed), advance.late) for advance in self.windows.add_batch(samples)]

    def tick(self, now: dt.datetime) -> WatchStep:
        return WatchStep(self._score(self.windows.advance(now)))

    def _score(self, closed: list[ClosedWindow]) -> list[ScoredWindow]:
        scored = []
        for window in closed:
            history = self.baselines.setdefault(window.key, deque(maxlen=self.baseline_windows))
            values = window.aggregate.metrics()
            results = {}
            for metric in METRICS:
                if metric not in self.detectors.configs:
                    continue
                try:
                    results[metric] = self.detectors.update(metric, str(window.key), window.start, values[metric])
                except FieldRuleError as refusal:
                    if refusal.rule != "increasing":
                        raise
                    # Scored before a restart (the detectors were saved after this window closed, its open-window
                    # record before): its anomaly, if any, went out then with the same id. Not learnt twice.
            if not results:
                continue
            for metric, result in results.items():
                causes = self._explain(metric, window.aggregate, history) if result.is_anomaly else []
                scored.append(ScoredWindow(metric, window.key, window.start, window.end, result, causes))
            if not any(r.is_anomaly for r in results.values()):
                history.append({metric: totals for metric in METRICS
                                if (totals := window.aggregate.totals_for(metric)) is not None})
        return scored

    @staticmethod
    def _explain(metric: str, aggregate: WindowAggregate, history: deque[dict[str, DimensionTotals]]) -> list[Contribution]:
        totals = aggregate.totals_for(metric)
        if totals is None or not history:
            return []
        baseline = DimensionTotals()
        for past in history:
            baseline.merge(past[metric])
        return explain(totals, baseline, Decimal(1) / Decimal(len(history)))

    def to_bytes(self) -> bytes:
        return dump_state(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> "AnomalyWatch":
        return load_state(data, cls)
