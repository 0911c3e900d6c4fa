"""Sliding-window latency, error and cost statistics per (provider, model): the rows of the live routing table.

Each model keeps its calls of the last `window_s` seconds (at most `max_samples`, oldest dropped first).
Percentiles are exact nearest-rank over the window, not a mean: routing on p95 needs the tail. Throughput
divides by the window's effective span, min(window_s, now - oldest sample) and at least 1 s, so a model first
seen 10 s ago is not reported 30 times slower than it runs just because the window is 300 s long. Unit costs
are exact: summed Decimal cost over summed tokens, rounded once half-even to 12 places.

A window keeps its totals as it goes (added when a call comes, taken off when it leaves) and its latencies in
sorted lists, so a row costs O(1) sums and O(log n) rank lookups instead of a pass over every sample: the
worker publishes rows every second, and with thousands of calls per model in the window the full pass was 14%
of its CPU under load.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sortedcontainers import SortedList

FAILED_STATUSES = frozenset({"error", "timeout", "rate_limited"})
RATE_LIMITED_STATUS = "rate_limited"
MONEY_PLACES = 12
MIN_SPAN_S = 1.0


def cost_per_thousand(cost_usd: Decimal, tokens: int) -> Decimal | None:
    """cost / tokens x 1000, rounded once half-even to 12 places; None without tokens.

    The quotient is taken as an exact fraction: Decimal division would first round to the context's 28 digits.
    """
    if tokens <= 0:
        return None
    scaled = Fraction(cost_usd) * 1000 * 10**MONEY_PLACES / tokens
    return Decimal(f"{round(scaled)}e-{MONEY_PLACES}")  # Fraction rounds half to even; str -> Decimal is exact


def effective_span_s(window_s: float, oldest: dt.datetime, now: dt.datetime) -> float:
    return max(MIN_SPAN_S, min(window_s, (now - oldest).total_seconds()))


@dataclass
class _Calls:
    """Calls counted together in a window and leaving it together: one observation, or one model's summary of
    the calls of a usage record (model_call_summary). Latencies stay one per call, so percentiles stay exact."""

    at: dt.datetime
    count: int
    failed: int
    rate_limited: int
    tokens: int
    cost_usd: Decimal
    input_tokens: int
    output_tokens: int
    priced_inputs: int
    priced_input_cost: Decimal
    priced_input_tokens: int
    priced_outputs: int
    priced_output_cost: Decimal
    priced_output_tokens: int
    latencies: list[int]
    ttfts: list[int]

    @classmethod
    def of_summary(cls, summary: Mapping[str, Any], at: dt.datetime) -> "_Calls":
        return cls(
            at, summary["calls"], summary["failed"], summary["rate_limited"], summary["tokens"], summary["cost_usd"],
            summary["input_tokens"], summary["output_tokens"], summary["priced_inputs"],
            summary["priced_input_cost_usd"], summary["priced_input_tokens"], summary["priced_outputs"],
            summary["priced_output_cost_usd"], summary["priced_output_tokens"], list(summary["latencies_ms"]),
            list(summary["ttfts_ms"]),
        )


def nearest_rank(values: Sequence[float] | SortedList, q: float) -> float:
    """The nearest-rank q-quantile of values already in order."""
    if not values:
        return 0.0
    return float(values[max(1, math.ceil(q * len(values))) - 1])


def summarize_calls(observations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The model_call_summary records of a usage record's observations: one per (provider, model), in the order
    each model first appears, with every sum exact, latencies in call order and the prices of the last priced
    call. A window fed the summaries holds what it would hold fed the observations one by one."""
    summaries: dict[tuple[str, str], dict[str, Any]] = {}
    for obs in observations:
        key = (obs["provider"], obs["model"])
        summary = summaries.get(key)
        if summary is None:
            summary = summaries[key] = {
                "provider": key[0], "model": key[1], "calls": 0, "failed": 0, "rate_limited": 0, "tokens": 0,
                "input_tokens": 0, "output_tokens": 0, "cost_usd": Decimal(0), "priced_inputs": 0,
                "priced_input_cost_usd": Decimal(0), "priced_input_tokens": 0, "priced_outputs": 0,
                "priced_output_cost_usd": Decimal(0), "priced_output_tokens": 0, "input_price_per_mtok": None,
                "output_price_per_mtok": None, "latencies_ms": [], "ttfts_ms": [],
            }
        status = obs["status"]
        input_tokens, output_tokens = obs.get("input_tokens") or 0, obs.get("output_tokens") or 0
        summary["calls"] += 1
        summary["failed"] += status in FAILED_STATUSES
        summary["rate_limited"] += status == RATE_LIMITED_STATUS
        summary["tokens"] += obs["tokens"]
        summary["input_tokens"] += input_tokens
        summary["output_tokens"] += output_tokens
        summary["cost_usd"] += obs["cost_usd"]
        if obs.get("input_cost_usd") is not None:
            summary["priced_inputs"] += 1
            summary["priced_input_cost_usd"] += obs["input_cost_usd"]
            summary["priced_input_tokens"] += input_tokens
        if obs.get("output_cost_usd") is not None:
            summary["priced_outputs"] += 1
            summary["priced_output_cost_usd"] += obs["output_cost_usd"]
            summary["priced_output_tokens"] += output_tokens
        if obs.get("input_price_per_mtok") is not None:
            summary["input_price_per_mtok"] = obs["input_price_per_mtok"]
            summary["output_price_per_mtok"] = obs["output_price_per_mtok"]
        summary["latencies_ms"].append(obs["latency_ms"])
        if obs.get("ttft_ms") is not None:
            summary["ttfts_ms"].append(obs["ttft_ms"])
    return list(summaries.values())


@dataclass
class _Totals:
    """What a window's row sums, kept as calls come and go. Decimal sums stay exact: every cost has at most 12
    decimal places and a window's sum stays far below the context's 28 digits."""

    count: int = 0
    errors: int = 0
    rate_limited: int = 0
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    input_tokens: int = 0
    output_tokens: int = 0
    priced_inputs: int = 0
    priced_input_cost: Decimal = Decimal(0)
    priced_input_tokens: int = 0
    priced_outputs: int = 0
    priced_output_cost: Decimal = Decimal(0)
    priced_output_tokens: int = 0
    latencies: SortedList = field(default_factory=SortedList)
    ttfts: SortedList = field(default_factory=SortedList)

    def change(self, calls: _Calls, sign: int) -> None:
        self.count += sign * calls.count
        self.errors += sign * calls.failed
        self.rate_limited += sign * calls.rate_limited
        self.tokens += sign * calls.tokens
        self.input_tokens += sign * calls.input_tokens
        self.output_tokens += sign * calls.output_tokens
        self.priced_inputs += sign * calls.priced_inputs
        self.priced_input_tokens += sign * calls.priced_input_tokens
        self.priced_outputs += sign * calls.priced_outputs
        self.priced_output_tokens += sign * calls.priced_output_tokens
        if sign > 0:
            self.cost_usd += calls.cost_usd
            self.priced_input_cost += calls.priced_input_cost
            self.priced_output_cost += calls.priced_output_cost
            self.latencies.update(calls.latencies)
            self.ttfts.update(calls.ttfts)
        else:
            self.cost_usd -= calls.cost_usd
            self.priced_input_cost -= calls.priced_input_cost
            self.priced_output_cost -= calls.priced_output_cost
            for latency in calls.latencies:
                self.latencies.remove(latency)
            for ttft in calls.ttfts:
                self.ttfts.remove(ttft)


@dataclass
class ModelWindow:
    provider: str
    model: str
    window_s: float
    max_samples: int
    samples: deque[_Calls] = field(default_factory=deque)
    input_price_per_mtok: Decimal | None = None
    output_price_per_mtok: Decimal | None = None
    totals: _Totals = field(default_factory=_Totals)

    def observe(self, observation: dict[str, Any], received_at: dt.datetime) -> None:
        """One call. Observations written with model_observation v1 (or built without the v2 fields) count as
        calls without a TTFT, direction split or cost split."""
        self.observe_summary(summarize_calls([{**observation, "provider": self.provider, "model": self.model}])[0],
                             received_at)

    def observe_summary(self, summary: Mapping[str, Any], received_at: dt.datetime) -> None:
        """The calls of one model_call_summary, received together. At most `max_samples` calls stay: the oldest
        summaries leave first, whole (the newest always stays)."""
        calls = _Calls.of_summary(summary, received_at)
        self.samples.append(calls)
        self.totals.change(calls, +1)
        if summary.get("input_price_per_mtok") is not None:
            self.input_price_per_mtok = summary["input_price_per_mtok"]
            self.output_price_per_mtok = summary["output_price_per_mtok"]
        while self.totals.count > self.max_samples and len(self.samples) > 1:
            self.totals.change(self.samples.popleft(), -1)

    def expire(self, now: dt.datetime) -> None:
        horizon = now - dt.timedelta(seconds=self.window_s)
        while self.samples and self.samples[0].at < horizon:
            self.totals.change(self.samples.popleft(), -1)

    def snapshot(self, now: dt.datetime) -> dict[str, Any]:
        self.expire(now)
        totals = self.totals
        count, errors, rate_limited, tokens = totals.count, totals.errors, totals.rate_limited, totals.tokens
        latencies, ttfts = totals.latencies, totals.ttfts
        span_s = effective_span_s(self.window_s, self.samples[0].at, now) if self.samples else MIN_SPAN_S
        return {
            "provider": self.provider,
            "model": self.model,
            "window_seconds": self.window_s,
            "sample_count": count,
            "error_count": errors,
            "error_rate": errors / count if count else 0.0,
            "p50_latency_ms": nearest_rank(latencies, 0.50),
            "p95_latency_ms": nearest_rank(latencies, 0.95),
            "p99_latency_ms": nearest_rank(latencies, 0.99),
            "cost_usd": totals.cost_usd if count else Decimal(0),
            "tokens": tokens,
            "input_price_per_mtok": self.input_price_per_mtok,
            "output_price_per_mtok": self.output_price_per_mtok,
            "updated_at": now,
            "rate_limited_count": rate_limited,
            "rate_limited_rate": rate_limited / count if count else 0.0,
            "p50_ttft_ms": nearest_rank(ttfts, 0.50) if ttfts else None,
            "p95_ttft_ms": nearest_rank(ttfts, 0.95) if ttfts else None,
            "p99_ttft_ms": nearest_rank(ttfts, 0.99) if ttfts else None,
            "requests_per_second": count / span_s,
            "tokens_per_second": tokens / span_s,
            "input_tokens": totals.input_tokens,
            "output_tokens": totals.output_tokens,
            "cost_per_1k_input_usd": (cost_per_thousand(totals.priced_input_cost, totals.priced_input_tokens)
                                      if totals.priced_inputs else None),
            "cost_per_1k_output_usd": (cost_per_thousand(totals.priced_output_cost, totals.priced_output_tokens)
                                       if totals.priced_outputs else None),
        }


class LiveModelWindows:
    """All models' windows in this worker; `due_snapshots` says which rows to publish now."""

    def __init__(self, window_s: float, max_samples: int, refresh_s: float = 10.0):
        self.window_s = window_s
        self.max_samples = max_samples
        self.refresh_s = refresh_s
        self.windows: dict[tuple[str, str], ModelWindow] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._published_at: dict[tuple[str, str], dt.datetime] = {}

    def observe(self, observation: dict[str, Any], received_at: dt.datetime) -> None:
        self._window_of(observation).observe(observation, received_at)

    def observe_summary(self, summary: Mapping[str, Any], received_at: dt.datetime) -> None:
        self._window_of(summary).observe_summary(summary, received_at)

    def _window_of(self, record: Mapping[str, Any]) -> ModelWindow:
        """The window of the record's (provider, model), created on first sight, marked changed."""
        key = (record["provider"], record["model"])
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = ModelWindow(key[0], key[1], self.window_s, self.max_samples)
        self._dirty.add(key)
        return window

    def due_snapshots(self, now: dt.datetime) -> list[dict[str, Any]]:
        """Rows for models that changed, or whose last row is older than refresh_s (so old samples age out)."""
        due = []
        for key, window in self.windows.items():
            last = self._published_at.get(key)
            if key in self._dirty or last is None or (now - last).total_seconds() >= self.refresh_s:
                due.append(window.snapshot(now))
                self._published_at[key] = now
        self._dirty.clear()
        return due
