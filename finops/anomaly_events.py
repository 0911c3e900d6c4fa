"""Cost lines in, anomaly events out: the plain half of the anomaly agent (no Faust here).

`PartitionWatch` wraps one source partition's `prismops.detectors.watch.AnomalyWatch` with what a stream consumer needs
around it: the last applied offset (a replayed line is skipped, never counted twice), the newest event time and
when the last line arrived. When a partition goes quiet for `idle_close_s`, event time is assumed to move on
with the clock from the newest event seen — not jump to the clock — so a backfill of old events is never cut
short by a timer, yet a quiet series still closes its last window.

`anomaly_record` turns a scored window into the anomaly_event Avro record (schemas/anomaly_event.v1.avsc), with
a deterministic id so a replay repeats the same id and the sink keeps one row.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

from prismops.detectors.online import METRIC_CONFIGS, SEVERITIES, dump_state, load_state
from prismops.detectors.series import GROUPINGS, UsageSample
from prismops.detectors.watch import AnomalyWatch, ScoredWindow, WatchStep
from prismops.settings import DetectorSettings

ANOMALY_NAMESPACE = uuid.UUID("5a1f3c2e-9b7d-4e61-8a0f-2d4c6b8e1f30")
METRIC_LABELS = {
    "cost": "cost (USD)", "tokens_per_request": "tokens per request", "latency_p95_ms": "p95 latency (ms)",
    "error_rate": "error rate",
}


def new_watch(settings: DetectorSettings) -> AnomalyWatch:
    configs = {metric: replace(config, warmup_windows=settings.warmup_windows) for metric, config in METRIC_CONFIGS.items()}
    return AnomalyWatch(settings.window_s, settings.grace_s, settings.baseline_windows, configs=configs)


def usage_sample(line: Mapping[str, Any]) -> UsageSample | None:
    """The detectors' view of an LLM cost line; None for GPU and cloud-bill lines (other series, other rules)."""
    if line.get("source") != "llm":
        return None
    return UsageSample.from_usage_event(line, Decimal(line["cost_usd"]))


class PartitionWatch:
    """One source partition's detectors, windows and replay guard; pickled whole into the state table."""

    def __init__(self, watch: AnomalyWatch, partition: int):
        self.watch = watch
        self.partition = partition
        self.last_offset = -1
        self.max_event_time: dt.datetime | None = None
        self.last_arrival: dt.datetime | None = None
        self.saved_at: dt.datetime | None = None
        self.dirty = False

    def is_replay(self, offset: int) -> bool:
        return offset <= self.last_offset

    def observe(self, sample: UsageSample, offset: int, arrived_at: dt.datetime) -> WatchStep:
        step = self.watch.observe(sample)
        self.dirty = True
        self.last_offset = offset
        self.last_arrival = arrived_at
        if self.max_event_time is None or sample.event_time > self.max_event_time:
            self.max_event_time = sample.event_time
        return step

    def idle_tick(self, now: dt.datetime, idle_close_s: float) -> WatchStep:
        """Advance event time by the processing time the partition has been quiet, once it is quiet long enough."""
        if self.last_arrival is None or self.max_event_time is None:
            return WatchStep()
        quiet = now - self.last_arrival
        if quiet.total_seconds() < idle_close_s:
            return WatchStep()
        return self.watch.tick(self.max_event_time + quiet)

    def save_due(self, now: dt.datetime, interval_s: float) -> bool:
        return self.saved_at is None or (now - self.saved_at).total_seconds() >= interval_s

    def to_bytes(self, now: dt.datetime) -> bytes:
        self.saved_at, self.dirty = now, False
        return dump_state(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> "PartitionWatch":
        return load_state(data, cls)


def reportable(scored: ScoredWindow, min_severity: str) -> bool:
    return scored.result.severity is not None and \
        SEVERITIES.index(scored.result.severity) >= SEVERITIES.index(min_severity)


def anomaly_id(scored: ScoredWindow) -> str:
    return str(uuid.uuid5(ANOMALY_NAMESPACE, f"{scored.metric}|{scored.key}|{scored.window_start.isoformat()}"))


def _number(value: Decimal | float) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return f"{value:.4g}"


def anomaly_record(scored: ScoredWindow, detected_at: dt.datetime) -> dict[str, Any]:
    """The anomaly_event record of one anomalous window."""
    result, key = scored.result, scored.key
    fields = dict(zip(GROUPINGS.get(key.grouping, ()), key.values))
    series_key = "/".join(key.values)
    causes = [
        {"dimension": c.dimension, "value": c.value, "window_value": float(c.actual),
         "baseline_value": float(c.baseline), "delta": float(c.delta), "share": float(c.share)}
        for c in scored.causes
    ]
    top = (f"; top cause {scored.causes[0].dimension}={scored.causes[0].value} "
           f"({float(scored.causes[0].share):.0%} of the change)") if scored.causes else ""
    message = (
        f"{METRIC_LABELS.get(scored.metric, scored.metric)} of {key.grouping} {series_key} in "
        f"{scored.window_start:%Y-%m-%d %H:%M}-{scored.window_end:%H:%M} UTC was {_number(result.actual)} against "
        f"{_number(result.expected)} expected (z {result.z:.1f}, {result.severity}){top}"
    )
    is_money = isinstance(result.actual, Decimal)
    return {
        "anomaly_id": anomaly_id(scored),
        "detected_at": detected_at,
        "metric": scored.metric,
        "series": key.grouping,
        "series_key": series_key,
        "tenant": fields.get("tenant"),
        "service": fields.get("service"),
        "feature": fields.get("feature"),
        "provider": fields.get("provider"),
        "model": fields.get("model"),
        "window_start": scored.window_start,
        "window_end": scored.window_end,
        "actual": float(result.actual),
        "expected": float(result.expected),
        "actual_cost_usd": result.actual if is_money else None,
        "expected_cost_usd": result.expected if is_money else None,
        "score": float(result.score),
        "severity": result.severity,
        "contributors": causes,
        "message": message,
    }
