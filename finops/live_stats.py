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
from collections.abc import Sequence
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
class _Sample:
    at: dt.datetime
    latency_ms: int
    failed: bool
    rate_limited: bool
    tokens: int
    cost_usd: Decimal
    ttft_ms: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    input_cost_usd: Decimal | None = None
    output_cost_usd: Decimal | None = None


def nearest_rank(values: Sequence[float] | SortedList, q: float) -> float:
    """The nearest-rank q-quantile of values already in order."""
    if not values:
        return 0.0
    return float(values[max(1, math.ceil(q * len(values))) - 1])


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

    def change(self, sample: "_Sample", sign: int) -> None:
        self.count += sign
        self.errors += sign * sample.failed
        self.rate_limited += sign * sample.rate_limited
        self.tokens += sign * sample.tokens
        self.cost_usd += sample.cost_usd if sign > 0 else -sample.cost_usd
        self.input_tokens += sign * sample.input_tokens
        self.output_tokens += sign * sample.output_tokens
        if sample.input_cost_usd is not None:
            self.priced_inputs += sign
            self.priced_input_cost += sample.input_cost_usd if sign > 0 else -sample.input_cost_usd
            self.priced_input_tokens += sign * sample.input_tokens
        if sample.output_cost_usd is not None:
            self.priced_outputs += sign
            self.priced_output_cost += sample.output_cost_usd if sign > 0 else -sample.output_cost_usd
            self.priced_output_tokens += sign * sample.output_tokens
        if sign > 0:
            self.latencies.add(sample.latency_ms)
            if sample.ttft_ms is not None:
                self.ttfts.add(sample.ttft_ms)
        else:
            self.latencies.remove(sample.latency_ms)
            if sample.ttft_ms is not None:
                self.ttfts.remove(sample.ttft_ms)


@dataclass
class ModelWindow:
    provider: str
    model: str
    window_s: float
    max_samples: int
    samples: deque[_Sample] = field(default_factory=deque)
    input_price_per_mtok: Decimal | None = None
    output_price_per_mtok: Decimal | None = None
    totals: _Totals = field(default_factory=_Totals)

    def observe(self, observation: dict[str, Any], received_at: dt.datetime) -> None:
        """Observations written with model_observation v1 (or built without the v2 fields) count as calls
        without a TTFT, direction split or cost split."""
        sample = _Sample(
            received_at, observation["latency_ms"], observation["status"] in FAILED_STATUSES,
            observation["status"] == RATE_LIMITED_STATUS, observation["tokens"], observation["cost_usd"],
            observation.get("ttft_ms"), observation.get("input_tokens") or 0, observation.get("output_tokens") or 0,
            observation.get("input_cost_usd"), observation.get("output_cost_usd"),
        )
        self.samples.append(sample)
        self.totals.change(sample, +1)
        if observation.get("input_price_per_mtok") is not None:
            self.input_price_per_mtok = observation["input_price_per_mtok"]
            self.output_price_per_mtok = observation["output_price_per_mtok"]
        while len(self.samples) > self.max_samples:
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
        key = (observation["provider"], observation["model"])
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = ModelWindow(key[0], key[1], self.window_s, self.max_samples)
        window.observe(observation, received_at)
        self._dirty.add(key)

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
