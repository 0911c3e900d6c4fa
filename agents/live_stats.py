"""Sliding-window latency, error and cost statistics per (provider, model): the rows of the live routing table.

Each model keeps its calls of the last `window_s` seconds (at most `max_samples`, oldest dropped first).
Percentiles are exact nearest-rank over the window, not a mean: routing on p95 needs the tail.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

FAILED_STATUSES = frozenset({"error", "timeout", "rate_limited"})


def nearest_rank(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[rank - 1])


@dataclass
class _Sample:
    at: dt.datetime
    latency_ms: int
    failed: bool
    tokens: int
    cost_usd: Decimal


@dataclass
class ModelWindow:
    provider: str
    model: str
    window_s: float
    max_samples: int
    samples: deque[_Sample] = field(default_factory=deque)
    input_price_per_mtok: Decimal | None = None
    output_price_per_mtok: Decimal | None = None

    def observe(self, observation: dict[str, Any], received_at: dt.datetime) -> None:
        self.samples.append(_Sample(
            received_at, observation["latency_ms"], observation["status"] in FAILED_STATUSES,
            observation["tokens"], observation["cost_usd"],
        ))
        if observation.get("input_price_per_mtok") is not None:
            self.input_price_per_mtok = observation["input_price_per_mtok"]
            self.output_price_per_mtok = observation["output_price_per_mtok"]
        while len(self.samples) > self.max_samples:
            self.samples.popleft()

    def expire(self, now: dt.datetime) -> None:
        horizon = now - dt.timedelta(seconds=self.window_s)
        while self.samples and self.samples[0].at < horizon:
            self.samples.popleft()

    def snapshot(self, now: dt.datetime) -> dict[str, Any]:
        self.expire(now)
        latencies = sorted(s.latency_ms for s in self.samples)
        count = len(self.samples)
        errors = sum(1 for s in self.samples if s.failed)
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
            "cost_usd": sum((s.cost_usd for s in self.samples), Decimal(0)),
            "tokens": sum(s.tokens for s in self.samples),
            "input_price_per_mtok": self.input_price_per_mtok,
            "output_price_per_mtok": self.output_price_per_mtok,
            "updated_at": now,
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
