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
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from prismops.detectors.online import METRIC_CONFIGS, SEVERITIES, SeriesDetector, dump_state, load_state
from prismops.detectors.series import GROUPINGS, MappingMemo, SeriesKey, UsageSample, WindowAggregate
from prismops.detectors.watch import AnomalyWatch, ScoredWindow, WatchStep
from prismops.errors import FieldRuleError
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


FOLDED_FIELDS_KEPT = 4096
"""Folded key-fields mappings a PartitionWatch keeps (forgotten all at once when full)."""
OTHER_SERIES = "(other)"
"""The key value of a grouping's series that holds the traffic of series beyond `max_series_per_partition`."""
CANDIDATE_WINDOWS = 1440
"""Windows (a day at one minute) a series not watched yet is remembered after its last traffic."""
STATE_META = "meta"
"""The state table key suffix of a partition's own record (offsets, clocks); series records use the series key."""
LATENCY_SAMPLES_KEPT = 1024
"""When a series' state would not fit in one record, each open window keeps this many latency samples."""


class StateTooLarge(FieldRuleError):
    """A series' state does not fit in one record even after shedding what can be shed."""


@dataclass
class SeriesState:
    """One series' share of a partition's detector state: its open windows, detectors and RCA baseline, and the
    partition offset through which they include lines (`applied_offset`)."""

    key: SeriesKey
    applied_offset: int
    open: dict[dt.datetime, WindowAggregate]
    detectors: dict[str, SeriesDetector]
    baseline: deque | None


@dataclass
class WatchMeta:
    last_offset: int
    max_event_time: dt.datetime | None
    last_arrival: dt.datetime | None
    watermark: dt.datetime | None
    late_count: int


class PartitionWatch:
    """One source partition's detectors, windows and replay guard.

    Its state is stored per key, never as one blob: per series a windows record (`w|<key>`: its open
    windows, rewritten whenever a line arrives) and a model record (`m|<key>`: its detectors and RCA baseline,
    some 25 KB, rewritten only when one of its windows closes), and a small record of the partition's offsets
    and clocks (`STATE_META`), written after the series records it covers. Each windows record says through
    which offset it holds lines, so a restore that lost the newest records (a crash mid-save) re-applies a
    read-back line only to the series that lack it. A crash between a model record and its windows record
    can score one window twice on replay: the anomaly repeats its deterministic id and the sink keeps one row.
    """

    def __init__(self, watch: AnomalyWatch, partition: int, max_series: int | None = None,
                 promote_after_windows: int = 1):
        self.watch = watch
        self.partition = partition
        self.max_series = max_series
        self.promote_after_windows = promote_after_windows
        self.series: dict[str, set[SeriesKey]] = {}  # per grouping: the series watched on their own
        # series not watched yet: (windows with traffic, the last of them); forgotten CANDIDATE_WINDOWS after it
        self.candidates: dict[SeriesKey, tuple[int, int]] = {}
        self._candidates_pruned_at = 0
        self.folded = 0  # samples counted in a grouping's (other) series since start
        self.relearning = False  # some stored state was of another format and was dropped
        self.last_offset = -1
        self.max_event_time: dt.datetime | None = None
        self.last_arrival: dt.datetime | None = None
        self.saved_at: dt.datetime | None = None
        self.dirty_keys: set[SeriesKey] = set()  # open windows changed
        self.dirty_models: set[SeriesKey] = set()  # detectors or baseline changed (a window closed)
        self.series_applied: dict[SeriesKey, int] = {}  # restored series ahead of last_offset
        self.shed: list[str] = []  # what the last save had to drop to fit, for logs and metrics
        # a shared key-fields mapping folded into (other) for some groupings: one mapping per (original, groupings)
        self._folded_fields = MappingMemo(FOLDED_FIELDS_KEPT)

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_keys)

    def is_replay(self, offset: int) -> bool:
        return offset <= self.last_offset

    def _load(self, data: bytes, cls: type) -> Any:
        """A stored record, or None when it was written in another state format (a detector upgrade): that series
        learns again from scratch, and the watch says so (`relearning`), instead of the worker failing to start."""
        try:
            return load_state(data, cls)
        except FieldRuleError as refusal:
            if refusal.rule != "format_version":
                raise
            self.relearning = True
            return None

    def admit(self, sample: UsageSample) -> tuple[UsageSample, list[SeriesKey]]:
        """The sample as the watch counts it, and the series it counts in. A series is watched on its own once it
        had traffic in `promote_after_windows` windows (a series seen once a day cannot be learnt, and 100,000 such
        series, each with four detectors and two records per window, were most of a restarted worker's catch-up),
        and while its grouping has fewer than `max_series` in this partition (100,000 tenant x model series took
        1.4 GiB and two thirds of the worker's time); until then its traffic counts in the grouping's `(other)`
        series, so memory, state and CPU stay bounded however many tenants and models come."""
        keys_of = self.watch.windows.keys_of
        keys = keys_of(sample)
        if self.max_series is None and self.promote_after_windows <= 1:
            return sample, keys
        folded_groupings: list[str] = []
        window = int(sample.event_time.timestamp() // self.watch.windows.window_s)
        self._forget_candidates(window)
        for key in keys:
            known = self.series.setdefault(key.grouping, set())
            if key in known:
                continue
            if all(value == OTHER_SERIES for value in key.values) or (
                    (self.max_series is None or len(known) < self.max_series) and self._recurring(key, window)):
                known.add(key)
                self.candidates.pop(key, None)
                continue
            folded_groupings.append(key.grouping)
        if not folded_groupings:
            return sample, keys
        self.folded += 1
        folded = sample._replace(fields=self._folded(sample.fields, tuple(folded_groupings)))
        return folded, keys_of(folded)

    def _folded(self, fields: Mapping[str, str], groupings: tuple[str, ...]) -> dict[str, str]:
        """`fields` with the key fields of `groupings` set to the (other) series, one mapping per combination."""
        folded = self._folded_fields.get(fields, groupings)
        if folded is None:
            folded = dict(fields)
            for grouping in groupings:
                folded.update({name: OTHER_SERIES for name in self.watch.windows.groupings[grouping]})
            self._folded_fields.put(fields, folded, groupings)
        return folded

    def _recurring(self, key: SeriesKey, window: int) -> bool:
        """Count the window for a series not watched yet; whether it has had traffic in enough windows."""
        if self.promote_after_windows <= 1:
            return True
        seen, last = self.candidates.get(key, (0, None))
        if last != window:
            seen += 1
            self.candidates[key] = (seen, window)
        return seen >= self.promote_after_windows

    def _forget_candidates(self, window: int) -> None:
        """Once per window of event time, drop candidates quiet for CANDIDATE_WINDOWS (memory stays bounded)."""
        if window <= self._candidates_pruned_at:
            return
        self._candidates_pruned_at = window
        horizon = window - CANDIDATE_WINDOWS
        if self.candidates:
            self.candidates = {key: seen for key, seen in self.candidates.items() if seen[1] >= horizon}

    def observe(self, sample: UsageSample, offset: int, arrived_at: dt.datetime) -> WatchStep:
        sample, keys = self.admit(sample)
        skip = {key for key in keys if self.series_applied.get(key, -1) >= offset}
        step = self.watch.observe(sample, skip)
        self.dirty_keys.update(key for key in keys if key not in skip)
        self._closed(step)
        self.last_offset = offset
        self.last_arrival = arrived_at
        if self.max_event_time is None or sample.event_time > self.max_event_time:
            self.max_event_time = sample.event_time
        if self.series_applied and offset > max(self.series_applied.values()):  # a batch shares one offset
            self.series_applied.clear()
        return step

    def observe_batch(self, samples: list[UsageSample], offset: int, arrived_at: dt.datetime) -> list[WatchStep]:
        """`observe` for each sample of one record (they share its offset), in order, with the same result: the
        samples of a series window are counted together, one update per window instead of one per sample."""
        applied = self.series_applied
        counted: list[tuple[UsageSample, list[SeriesKey]]] = []
        newest = self.max_event_time
        admit = self.admit
        for sample in samples:
            sample, keys = admit(sample)
            if applied:
                keys = [key for key in keys if applied.get(key, -1) < offset]
            self.dirty_keys.update(keys)
            if newest is None or sample.event_time > newest:
                newest = sample.event_time
            counted.append((sample, keys))
        steps = self.watch.observe_batch(counted)
        for step in steps:
            self._closed(step)
        if counted:
            self.last_offset = offset
            self.last_arrival = arrived_at
            self.max_event_time = newest
            if applied and offset > max(applied.values()):
                applied.clear()
        return steps

    def idle_tick(self, now: dt.datetime, idle_close_s: float) -> WatchStep:
        """Advance event time by the processing time the partition has been quiet, once it is quiet long enough."""
        if self.last_arrival is None or self.max_event_time is None:
            return WatchStep()
        quiet = now - self.last_arrival
        if quiet.total_seconds() < idle_close_s:
            return WatchStep()
        step = self.watch.tick(self.max_event_time + quiet)
        self._closed(step)
        return step

    def _closed(self, step: WatchStep) -> None:
        closed = {scored.key for scored in step.scored}
        self.dirty_keys |= closed
        self.dirty_models |= closed

    def save_due(self, now: dt.datetime, interval_s: float) -> bool:
        return self.saved_at is None or (now - self.saved_at).total_seconds() >= interval_s

    def changed_records(self, now: dt.datetime, max_bytes: int) -> list[tuple[str, bytes]]:
        """(key, value) of every series changed since the last call, then the partition record; each value at
        most `max_bytes` (see `fit_series_state`). A series that cannot fit is reset and logged in `shed`."""
        self.shed = []
        open_by_key: dict[SeriesKey, dict[dt.datetime, WindowAggregate]] = {}
        for (key, start), aggregate in self.watch.windows.open.items():
            if key in self.dirty_keys:
                open_by_key.setdefault(key, {})[start] = aggregate
        detectors_by_key: dict[str, dict[str, SeriesDetector]] = {}
        for (metric, key_text), detector in self.watch.detectors.detectors.items():
            detectors_by_key.setdefault(key_text, {})[metric] = detector
        parts = [(f"m|{key}", SeriesState(key, self.last_offset, {}, detectors_by_key.get(str(key), {}),
                                          self.watch.baselines.get(key))) for key in sorted(self.dirty_models)]
        parts += [(f"w|{key}", SeriesState(key, self.last_offset, open_by_key.get(key, {}), {}, None))
                  for key in sorted(self.dirty_keys)]
        records = []
        for name, state in parts:
            try:
                value, shed = fit_series_state(state, max_bytes)
            except StateTooLarge as exc:
                self._forget_series(state.key)
                self.shed.append(f"{state.key}: reset ({exc.message})")
                value = dump_state(SeriesState(state.key, self.last_offset, {}, {}, None))
            else:
                self.shed.extend(f"{state.key}: {what}" for what in shed)
            records.append((name, value))
        meta = WatchMeta(self.last_offset, self.max_event_time, self.last_arrival, self.watch.windows.watermark,
                         self.watch.windows.late_count)
        records.append((STATE_META, dump_state(meta)))
        self.saved_at, self.dirty_keys, self.dirty_models = now, set(), set()
        return records

    def _forget_series(self, key: SeriesKey) -> None:
        for window_key in [k for k in self.watch.windows.open if k[0] == key]:
            del self.watch.windows.open[window_key]
        for detector_key in [k for k in self.watch.detectors.detectors if k[1] == str(key)]:
            del self.watch.detectors.detectors[detector_key]
        self.watch.baselines.pop(key, None)

    @classmethod
    def restore(cls, watch: AnomalyWatch, partition: int, records: Mapping[str, bytes],
                max_series: int | None = None, promote_after_windows: int = 1) -> "PartitionWatch":
        """A watch from the records `changed_records` wrote (the newest value per key). Candidates are not stored:
        after a restart a series not watched yet counts its windows from zero again."""
        restored = cls(watch, partition, max_series, promote_after_windows)
        meta_bytes = records.get(STATE_META)
        meta = restored._load(meta_bytes, WatchMeta) if meta_bytes else None
        for name, value in records.items():
            if name == STATE_META:
                continue
            state = restored._load(value, SeriesState)
            if state is None:
                continue
            restored.series.setdefault(state.key.grouping, set()).add(state.key)
            for start, aggregate in state.open.items():
                watch.windows.open[(state.key, start)] = aggregate
            for metric, detector in state.detectors.items():
                watch.detectors.detectors[(metric, str(state.key))] = detector
            if state.baseline is not None:
                watch.baselines[state.key] = state.baseline
            if name.startswith("w|"):  # the windows record is the one lines are applied to
                restored.series_applied[state.key] = state.applied_offset
        if meta is not None:
            restored.last_offset = meta.last_offset
            restored.max_event_time, restored.last_arrival = meta.max_event_time, meta.last_arrival
            watch.windows.watermark, watch.windows.late_count = meta.watermark, meta.late_count
        elif restored.series_applied:
            restored.last_offset = max(restored.series_applied.values())
        restored.series_applied = {k: v for k, v in restored.series_applied.items() if v > restored.last_offset}
        return restored


def fit_series_state(state: SeriesState, max_bytes: int) -> tuple[bytes, list[str]]:
    """The serialized series state, at most `max_bytes`: by design a busy series sheds, in this order, exact
    latency samples (each open window keeps LATENCY_SAMPLES_KEPT evenly spaced ones of the sorted samples, so
    its p95 stays close), its RCA baseline, and its open windows' per-dimension totals. Raises StateTooLarge
    when even that does not fit. What was shed is also dropped from `state`, so memory matches the record."""
    shed: list[str] = []
    value = dump_state(state)
    if len(value) <= max_bytes:
        return value, shed
    for aggregate in state.open.values():
        if len(aggregate.latencies_ms) > LATENCY_SAMPLES_KEPT:
            ordered = sorted(aggregate.latencies_ms)
            step = len(ordered) / LATENCY_SAMPLES_KEPT
            aggregate.latencies_ms[:] = [ordered[int(i * step)] for i in range(LATENCY_SAMPLES_KEPT)]
    shed.append(f"latency samples thinned to {LATENCY_SAMPLES_KEPT} per window")
    value = dump_state(state)
    if len(value) <= max_bytes:
        return value, shed
    if state.baseline:
        state.baseline.clear()
        shed.append("RCA baseline dropped")
        value = dump_state(state)
        if len(value) <= max_bytes:
            return value, shed
    for aggregate in state.open.values():
        for totals in (aggregate.cost_by_dimension, aggregate.errors_by_dimension, aggregate.tokens_by_dimension):
            totals.by_value.clear()
    shed.append("per-dimension totals of open windows dropped")
    value = dump_state(state)
    if len(value) <= max_bytes:
        return value, shed
    raise StateTooLarge("state", "max_bytes", f"{len(value)} bytes after shedding, over the {max_bytes}-byte limit")


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
