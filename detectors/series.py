"""Event-time tumbling windows per series key, with grace for late events: what the detectors are fed.

One watermark for the stream (the newest event time seen, or a time given to advance()); a window
[start, start + window_s) closes once watermark >= its end + grace_s, and closed windows are returned in
(start, key) order. An event whose window has already closed is returned as a LateEvent — counted and
reported, never silently dropped and never folded into a later window. A key with no event in a window
gets no window: the detector sees a gap, not a zero.

A window keeps exact aggregates: Decimal cost, request/error/token counts, every latency sample (for an
exact nearest-rank p95) and per-dimension totals of cost, errors and tokens for root-cause analysis.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

from prismops.detectors.online import dump_state, load_state
from prismops.detectors.rca import ABSENT, DimensionTotals, prompt_length_bucket, shared_rca_dimensions
from prismops.errors import FieldRuleError

# How series are keyed: grouping name -> the event fields that make the key.
GROUPINGS: dict[str, tuple[str, ...]] = {"tenant_model": ("tenant", "model"), "service_feature": ("service", "feature")}
METRICS = ("cost", "tokens_per_request", "latency_p95_ms", "error_rate")
KEY_FIELDS = tuple(sorted({name for fields in GROUPINGS.values() for name in fields}))
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
KEYS_REMEMBERED = 50_000
"""SeriesKey objects kept for reuse per TumblingWindows (a bound, not a limit: past it the memo starts over)."""


@dataclass(frozen=True, order=True)
class SeriesKey:
    grouping: str
    values: tuple[str, ...]

    def __hash__(self) -> int:
        """hash((grouping, values)), as the dataclass's own, remembered: a key is hashed half a dozen times per call
        (its window, its series set, the changed keys). Never pickled (`__getstate__`): a text's hash differs
        between processes."""
        try:
            return self.__dict__["_hash"]  # type: ignore[no-any-return]
        except KeyError:
            value = hash((self.grouping, self.values))
            object.__setattr__(self, "_hash", value)
            return value

    def __getstate__(self) -> dict[str, Any]:
        return {"grouping": self.grouping, "values": self.values}

    def __str__(self) -> str:
        return f"{self.grouping}:{'/'.join(self.values)}"


class UsageSample(NamedTuple):
    """One priced LLM call, reduced to what windows aggregate. A named tuple, not a frozen dataclass: one is made
    per call, and a frozen dataclass's __init__ (eight object.__setattr__ calls) cost 2.5 µs of it."""

    event_time: dt.datetime
    cost: Decimal
    input_tokens: int
    output_tokens: int
    latency_ms: float
    error: bool
    fields: Mapping[str, str]  # key fields (tenant, model, service, feature), shared by equal samples
    dimensions: Mapping[str, str]  # RCA dimensions, shared by equal samples: see rca.shared_rca_dimensions

    @classmethod
    def from_usage_event(cls, event: Mapping[str, object], cost: Decimal) -> "UsageSample":
        """From a decoded llm_usage_event (any version) and the cost the pricing agent gave it."""
        if not isinstance(cost, Decimal):
            raise FieldRuleError("cost", "decimal", f"must be a Decimal, got {type(cost).__name__}")
        event_time = event.get("event_time")
        if not isinstance(event_time, dt.datetime):
            raise FieldRuleError("event_time", "datetime", "must be a datetime")
        fields, dimensions = shared_sample_views(event)
        return cls(
            event_time, cost,
            int(event.get("input_tokens") or 0),  # type: ignore[call-overload]
            int(event.get("output_tokens") or 0),  # type: ignore[call-overload]
            float(event.get("latency_ms") or 0),  # type: ignore[arg-type]
            event.get("status", "ok") != "ok",
            fields, dimensions,
        )


SHARED_VIEWS_KEPT = 4096
"""Distinct (key fields, RCA dimensions) combinations `shared_sample_views` keeps (forgotten all at once when full)."""
_shared_views: dict[tuple[Any, ...], tuple[Mapping[str, str], Mapping[str, str]]] = {}
_VIEW_TEXT = ("tenant", "model", "service", "feature", "model_version", "deployment_id", "provider")
"""The text fields the key fields and the RCA dimensions read (prompt_chars and the two flags are read apart)."""


def shared_sample_views(event: Mapping[str, object]) -> tuple[Mapping[str, str], Mapping[str, str]]:
    """(key fields, RCA dimensions) of an event, one pair of mappings per distinct combination of the values they
    are made of, shared and never to be changed: a batch repeats a few dozen combinations, and making the two
    mappings for each call was a third of the anomaly watch. The memo key holds the values read, and the two flags'
    types (1 == True, but the flag True reads "true" and the number 1 reads "1"); a combination is remembered only
    when its text fields are text or absent, as every record's are, so an equal key always means equal views."""
    get = event.get
    fallback, cache_hit = get("fallback"), get("cache_hit")
    texts = tuple([get(name) for name in _VIEW_TEXT])
    key = (texts, prompt_length_bucket(get("prompt_chars")),  # type: ignore[arg-type]
           fallback, type(fallback), cache_hit, type(cache_hit))
    views = _shared_views.get(key)
    if views is None:
        views = ({name: str(get(name) or ABSENT) for name in KEY_FIELDS}, shared_rca_dimensions(event))
        if all(value is None or type(value) is str for value in texts):
            if len(_shared_views) >= SHARED_VIEWS_KEPT:
                _shared_views.clear()
            _shared_views[key] = views
    return views


class MappingMemo:
    """Values remembered per mapping object, for mappings shared between samples (`shared_sample_views`): keyed by
    the mapping's id (and an extra hashable), with the mapping kept beside its value, so the id cannot be reused by
    another mapping while the entry lives. At most `kept` entries (forgotten all at once when full)."""

    __slots__ = ("_entries", "kept")

    def __init__(self, kept: int):
        self._entries: dict[tuple[int, Any], tuple[Mapping[str, str], Any]] = {}
        self.kept = kept

    def get(self, mapping: Mapping[str, str], extra: Any = None) -> Any:
        entry = self._entries.get((id(mapping), extra))
        return entry[1] if entry is not None and entry[0] is mapping else None

    def put(self, mapping: Mapping[str, str], value: Any, extra: Any = None) -> None:
        if len(self._entries) >= self.kept:
            self._entries.clear()
        self._entries[(id(mapping), extra)] = (mapping, value)


@dataclass
class WindowAggregate:
    cost: Decimal = Decimal(0)
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    cost_by_dimension: DimensionTotals = field(default_factory=DimensionTotals)
    errors_by_dimension: DimensionTotals = field(default_factory=DimensionTotals)
    tokens_by_dimension: DimensionTotals = field(default_factory=DimensionTotals)

    def add(self, sample: UsageSample) -> None:
        self.add_many([sample])

    def add_many(self, samples: list[UsageSample]) -> None:
        """`add` for each sample in order, in one pass: samples with the same dimensions (one shared mapping, see
        rca.shared_rca_dimensions) are summed first, and the three per-dimension totals then share one loop over
        each distinct mapping. The sums are exact, so the totals are those of adding sample by sample."""
        zero = Decimal(0)
        cost_by, errors_by, tokens_by = (self.cost_by_dimension.by_value, self.errors_by_dimension.by_value,
                                         self.tokens_by_dimension.by_value)
        cost, errors, tokens_total = self.cost, self.errors, self.tokens
        cost_total, errors_total, tokens_dim_total = (self.cost_by_dimension.total, self.errors_by_dimension.total,
                                                      self.tokens_by_dimension.total)
        latencies = self.latencies_ms
        by_dimensions: dict[int, list[Any]] = {}  # id of the shared mapping -> [mapping, cost, errors, tokens]
        for sample in samples:
            tokens = sample.input_tokens + sample.output_tokens
            error = 1 if sample.error else 0
            amount = sample.cost
            cost += amount
            errors += error
            tokens_total += tokens
            latencies.append(sample.latency_ms)
            cost_total += amount
            errors_total += error
            tokens_dim_total += tokens
            same = by_dimensions.get(id(sample.dimensions))
            if same is None:
                by_dimensions[id(sample.dimensions)] = [sample.dimensions, amount, error, tokens]
            else:
                same[1] += amount
                same[2] += error
                same[3] += tokens
        for dimensions, amount, error, tokens in by_dimensions.values():
            for pair in dimensions.items():
                cost_by[pair] = cost_by.get(pair, zero) + amount
                errors_by[pair] = errors_by.get(pair, zero) + error
                tokens_by[pair] = tokens_by.get(pair, zero) + tokens
        self.cost, self.errors, self.tokens = cost, errors, tokens_total
        self.requests += len(samples)
        self.cost_by_dimension.total = cost_total
        self.errors_by_dimension.total = errors_total
        self.tokens_by_dimension.total = tokens_dim_total

    def latency_p95_ms(self) -> float:
        """Nearest-rank 95th percentile: an actual sample, exact for any count."""
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    def metrics(self) -> dict[str, Decimal | float]:
        """The detector inputs: cost per window (Decimal), tokens per request (input + output), p95 latency, error rate."""
        return {
            "cost": self.cost,
            "tokens_per_request": self.tokens / self.requests,
            "latency_p95_ms": self.latency_p95_ms(),
            "error_rate": self.errors / self.requests,
        }

    def totals_for(self, metric: str) -> DimensionTotals | None:
        """The additive amount RCA splits for a metric; None for p95 latency, which does not add up."""
        return {"cost": self.cost_by_dimension, "error_rate": self.errors_by_dimension,
                "tokens_per_request": self.tokens_by_dimension}.get(metric)


@dataclass(frozen=True)
class ClosedWindow:
    key: SeriesKey
    start: dt.datetime
    end: dt.datetime
    aggregate: WindowAggregate


@dataclass(frozen=True)
class LateEvent:
    key: SeriesKey
    event_time: dt.datetime
    window_start: dt.datetime
    watermark: dt.datetime


@dataclass(frozen=True)
class WindowAdvance:
    closed: list[ClosedWindow]
    late: list[LateEvent]


def _utc(moment: dt.datetime, field_name: str) -> dt.datetime:
    if not isinstance(moment, dt.datetime):
        raise FieldRuleError(field_name, "datetime", "must be a datetime")
    zone = moment.tzinfo
    if zone is dt.timezone.utc:  # what fastavro reads and what pricing writes: nothing to convert
        return moment
    return moment.replace(tzinfo=dt.timezone.utc) if zone is None else moment.astimezone(dt.timezone.utc)


MEMO_ATTRIBUTES = frozenset({"_keys", "_keys_by_fields", "_span", "_closing_span"})
"""What TumblingWindows remembers to save work, not state: never pickled."""


class TumblingWindows:
    """Open windows per (key, start); add() and advance() return what closed (and add() what came too late)."""

    def __init__(self, window_s: int = 60, grace_s: int = 30, groupings: Mapping[str, tuple[str, ...]] | None = None):
        if window_s < 1:
            raise FieldRuleError("window_s", "positive", "must be >= 1 second")
        if grace_s < 0:
            raise FieldRuleError("grace_s", "non_negative", "must be >= 0 seconds")
        self.window_s = window_s
        self.grace_s = grace_s
        self.groupings = dict(groupings or GROUPINGS)
        self.open: dict[tuple[SeriesKey, dt.datetime], WindowAggregate] = {}
        self.watermark: dt.datetime | None = None
        self.late_count = 0

    def window_start(self, moment: dt.datetime) -> dt.datetime:
        """The start of the window `moment` falls in. The last window found is remembered: traffic stays in one
        window for a while, and two comparisons cost less than the arithmetic."""
        span = self.__dict__.get("_span")
        if span is not None and span[0] <= moment < span[1]:
            return span[0]
        start = self._floor_window(moment)
        self._span = (start, start + dt.timedelta(seconds=self.window_s))
        return start

    def _floor_window(self, moment: dt.datetime) -> dt.datetime:
        seconds = (moment - _EPOCH) // dt.timedelta(seconds=1)
        return _EPOCH + dt.timedelta(seconds=seconds - seconds % self.window_s)

    def _is_closed(self, start: dt.datetime) -> bool:
        """Whether the window starting at `start` (a window start) is closed: its end plus the grace is at or before
        the watermark, that is, it is not after the newest window start the watermark closes."""
        return self.watermark is not None and start <= self._closing()

    def keys_of(self, sample: UsageSample) -> list[SeriesKey]:
        """The series a sample counts in, one per grouping. Samples share their key-fields mapping
        (shared_sample_views), so the keys are remembered per mapping (`MappingMemo`)."""
        fields = sample.fields
        by_fields = self.__dict__.get("_keys_by_fields")
        if by_fields is None:  # the live shared mappings are at most SHARED_VIEWS_KEPT: keep no more alive
            by_fields = self._keys_by_fields = MappingMemo(SHARED_VIEWS_KEPT)
        remembered = by_fields.get(fields)
        if remembered is not None:
            return list(remembered)
        keys = []
        known = self.__dict__.setdefault("_keys", {})  # one SeriesKey per series: building a frozen dataclass costs
        for grouping, names in self.groupings.items():
            values = tuple([fields.get(name, "(none)") for name in names])
            key = known.get((grouping, values))
            if key is None:
                if len(known) >= KEYS_REMEMBERED:
                    known.clear()
                key = known[(grouping, values)] = SeriesKey(grouping, values)
            keys.append(key)
        by_fields.put(fields, tuple(keys))
        return keys

    def add(self, sample: UsageSample, skip: frozenset[SeriesKey] | set[SeriesKey] = frozenset()) -> WindowAdvance:
        """Count the sample in each of its series' window, except the series in `skip` (their restored state
        already holds it); the watermark moves on either way."""
        event_time = _utc(sample.event_time, "event_time")
        start = self.window_start(event_time)
        late = []
        for key in self.keys_of(sample):
            if key in skip:
                continue
            if self._is_closed(start):
                late.append(LateEvent(key, event_time, start, self.watermark))  # type: ignore[arg-type]
                continue
            self.open.setdefault((key, start), WindowAggregate()).add(sample)
        self.late_count += len(late)
        return WindowAdvance(self.advance(event_time), late)

    def add_batch(self, samples: list[tuple[UsageSample, list[SeriesKey]]]) -> list[WindowAdvance]:
        """`add` for each (sample, the keys to count it in) in order, with the same result: a sample's window
        closes only when the watermark crosses a window boundary, so between crossings the samples of one
        (key, window) are added together; returns one WindowAdvance per crossing (and one for the rest)."""
        advances: list[WindowAdvance] = []
        pending: dict[tuple[SeriesKey, dt.datetime], list[UsageSample]] = {}
        late: list[LateEvent] = []
        window_start = self.window_start
        # `_is_closed(start)` for the samples of the batch: `start <= closing`, computed again as the watermark moves
        closing = None if self.watermark is None else self._closing()
        for sample, keys in samples:
            event_time = _utc(sample.event_time, "event_time")
            start = window_start(event_time)
            if closing is not None and start <= closing:
                late.extend(LateEvent(key, event_time, start, self.watermark) for key in keys)  # type: ignore[arg-type]
            else:
                for key in keys:
                    pending.setdefault((key, start), []).append(sample)
            if self.watermark is None or event_time > self.watermark:
                self.watermark = event_time
                closing = self._closing()
            if closing == self.__dict__.get("_scanned_through"):
                continue
            self._add_pending(pending)
            self.late_count += len(late)
            advances.append(WindowAdvance(self.advance(event_time), late))
            late = []
        self._add_pending(pending)
        self.late_count += len(late)
        if late or not advances:
            advances.append(WindowAdvance([], late))
        return advances

    def _add_pending(self, pending: dict[tuple[SeriesKey, dt.datetime], list[UsageSample]]) -> None:
        for window, group in pending.items():
            aggregate = self.open.get(window)
            if aggregate is None:
                aggregate = self.open[window] = WindowAggregate()
            aggregate.add_many(group)
        pending.clear()

    def advance(self, watermark: dt.datetime) -> list[ClosedWindow]:
        """Move the watermark forward (never back), e.g. on a wall-clock tick when traffic is idle; return closed windows.

        Window starts are multiples of window_s, so which windows are closed changes only when the watermark
        crosses the next boundary: open windows are scanned then, not on every sample (with 100,000 series the
        scan on every sample was quadratic and took two thirds of the worker)."""
        watermark = _utc(watermark, "watermark")
        if self.watermark is None or watermark > self.watermark:
            self.watermark = watermark
        closing = self._closing()
        if closing == self.__dict__.get("_scanned_through"):
            return []
        self._scanned_through = closing
        return self._close(lambda start: self._is_closed(start))

    def _closing(self) -> dt.datetime:
        """The newest window start the watermark closes: windows close only when this moves. It is `c` for every
        watermark from c + window + grace up to the next window's, so that span is remembered."""
        watermark = self.watermark
        span = self.__dict__.get("_closing_span")
        if span is not None and span[0] <= watermark < span[1]:  # type: ignore[operator]
            return span[2]
        delay = dt.timedelta(seconds=self.window_s + self.grace_s)
        closing = self._floor_window(watermark - delay)  # type: ignore[operator]
        self._closing_span = (closing + delay, closing + delay + dt.timedelta(seconds=self.window_s), closing)
        return closing

    def flush(self) -> list[ClosedWindow]:
        """Close every open window now (shutdown); the watermark moves past them, so later events for them are late."""
        if self.open:
            newest = max(start for _, start in self.open) + dt.timedelta(seconds=self.window_s + self.grace_s)
            self.watermark = newest if self.watermark is None else max(self.watermark, newest)
        return self._close(lambda start: True)

    def _close(self, closes) -> list[ClosedWindow]:  # type: ignore[no-untyped-def]
        ready = sorted(((start, key) for key, start in self.open if closes(start)), key=lambda pair: (pair[0], str(pair[1])))
        width = dt.timedelta(seconds=self.window_s)
        return [ClosedWindow(key, start, start + width, self.open.pop((key, start))) for start, key in ready]

    def __getstate__(self) -> dict:
        return {name: value for name, value in self.__dict__.items() if name not in MEMO_ATTRIBUTES}

    def to_bytes(self) -> bytes:
        return dump_state(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> "TumblingWindows":
        return load_state(data, cls)
