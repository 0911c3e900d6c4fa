"""Rate limits, daily quotas and concurrency leases: plain arithmetic with an injected clock, no I/O.

Three kinds of counter, all keyed by strings the caller builds (`model:openai/gpt-4o:rpm`,
`tenant:acme:tpm`, `day:acme:requests`, `lease:support-bot`):

* **Token bucket** (RPM and TPM). Capacity = the per-minute limit, refilled continuously at limit / 60 per
  second, starting full. A charge of `cost` passes when the bucket holds at least `min(cost, capacity)`
  (a single request larger than the whole limit may go when the bucket is full, else it could never go);
  the bucket may then go below zero and the debt delays the next charges. The wait of a refused charge is
  the time the refill needs to cover it. `adjust` corrects a charge afterwards (the reported usage minus
  the estimate): positive deltas take more, negative ones give back, never above capacity.
* **Fixed window** (daily requests and tokens): a count per UTC-aligned window of `window_s` seconds;
  refused charges wait until the window ends.
* **Leases** (calls in flight): at most `cap` live lease ids per scope; a lease ends when released or when
  its ttl passes. Releasing an id that is not held answers False (released twice, expired, or never ours).

`LocalLimitStore` keeps them in memory behind one lock: exact for one gateway. `redis_limits.RedisLimitStore`
answers the same calls with Lua scripts on a shared Redis, so several gateways share one limit. Every `take`
is all-or-nothing over its charges: a request is counted against the model, the tenant and the day at once,
or against none of them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from prismops.errors import FieldRuleError

BUCKET = "bucket"
WINDOW = "window"
MAX_LIMIT = 10**15  # absurd limits are refused before they reach the arithmetic


class LimitError(FieldRuleError):
    """A charge, limit or lease the store cannot work with."""


@dataclass(frozen=True)
class Charge:
    """One counter a request spends from. `limit` is per minute for buckets, per window for windows."""

    key: str
    kind: Literal["bucket", "window"]
    limit: float
    cost: float
    window_s: float = 60.0
    label: str = ""  # for people: "tenant acme rpm 600"

    def __post_init__(self) -> None:
        if self.kind not in (BUCKET, WINDOW):
            raise LimitError("kind", "one_of", f"must be bucket or window, got {self.kind!r}")
        for name in ("limit", "cost", "window_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LimitError(name, "finite", f"must be a finite number, got {value!r}")
        if not 0 < self.limit <= MAX_LIMIT:
            raise LimitError("limit", "range", f"must be > 0 and <= {MAX_LIMIT:,}, got {self.limit!r}")
        if self.cost < 0:
            raise LimitError("cost", "non_negative", f"must be >= 0, got {self.cost!r}")
        if self.window_s <= 0:
            raise LimitError("window_s", "positive", f"must be > 0, got {self.window_s!r}")

    @property
    def refill_per_s(self) -> float:
        return self.limit / self.window_s


# -- the arithmetic, shared by the local store and mirrored by the Redis scripts -------------------------------


def bucket_level(level: float, updated_s: float, now_s: float, capacity: float, refill_per_s: float) -> float:
    """The bucket's tokens at `now_s` (a clock that went backwards refills nothing)."""
    return min(capacity, level + max(0.0, now_s - updated_s) * refill_per_s)


def bucket_wait(level: float, cost: float, capacity: float, refill_per_s: float) -> float:
    """Seconds until a bucket at `level` can take `cost`; 0 when it can now."""
    need = min(cost, capacity)
    if level >= need:
        return 0.0
    return (need - level) / refill_per_s


def window_start(now_s: float, window_s: float) -> float:
    return math.floor(now_s / window_s) * window_s


def window_wait(count: float, cost: float, limit: float, now_s: float, window_s: float) -> float:
    """Seconds until a window holding `count` can take `cost`: 0 now, else until the window ends (a cost
    larger than the whole limit passes in an empty window, as with buckets)."""
    if count + cost <= limit or count == 0:
        return 0.0
    return window_start(now_s, window_s) + window_s - now_s


class LimitStore(Protocol):
    def peek(self, charges: Sequence[Charge], now_s: float) -> float: ...

    def peek_each(self, groups: Sequence[Sequence[Charge]], now_s: float) -> list[float]: ...

    def take_unless(self, peeks: Sequence[Sequence[Charge]], take: Sequence[Charge], now_s: float) -> bool: ...

    def take(self, charges: Sequence[Charge], now_s: float) -> tuple[float, Charge | None]: ...

    def adjust(self, charge: Charge, delta: float, now_s: float) -> None: ...

    def acquire_lease(self, scope: str, lease_id: str, cap: int, ttl_s: float, now_s: float) -> bool: ...

    def release_lease(self, scope: str, lease_id: str, now_s: float) -> bool: ...

    def leases_held(self, scope: str, now_s: float) -> int: ...


def check_lease_args(scope: str, lease_id: str, cap: int, ttl_s: float) -> None:
    if not scope or not lease_id:
        raise LimitError("lease_id", "required", "scope and lease id are required")
    if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= 1_000_000:
        raise LimitError("max_in_flight", "range", f"must be an integer in [1, 1000000], got {cap!r}")
    if not (isinstance(ttl_s, (int, float)) and math.isfinite(ttl_s) and ttl_s > 0):
        raise LimitError("lease_ttl_s", "positive", f"must be > 0 seconds, got {ttl_s!r}")


class LocalLimitStore:
    """Every counter in this process, behind one lock. Exact for a single gateway."""

    MAX_KEYS = 200_000  # tenants come from callers: past this, idle full buckets and old windows are dropped

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (level, updated_s)
        self._windows: dict[str, tuple[float, float]] = {}  # key -> (window start, count)
        self._leases: dict[str, dict[str, float]] = {}  # scope -> lease id -> expires_s

    def _level(self, charge: Charge, now_s: float) -> float:
        level, updated = self._buckets.get(charge.key, (charge.limit, now_s))
        return bucket_level(level, updated, now_s, charge.limit, charge.refill_per_s)

    def _count(self, charge: Charge, now_s: float) -> float:
        start, count = self._windows.get(charge.key, (math.nan, 0.0))
        return count if start == window_start(now_s, charge.window_s) else 0.0

    def _wait(self, charge: Charge, now_s: float) -> float:
        if charge.kind == BUCKET:
            return bucket_wait(self._level(charge, now_s), charge.cost, charge.limit, charge.refill_per_s)
        return window_wait(self._count(charge, now_s), charge.cost, charge.limit, now_s, charge.window_s)

    def peek(self, charges: Sequence[Charge], now_s: float) -> float:
        """The longest wait any of the charges has now; 0 when all would pass. Changes nothing. A bucket
        never charged is full, and a full bucket takes any cost (a cost above the limit passes when full), so
        it is passed over without the arithmetic: the common case of a model nobody has called lately."""
        worst = 0.0
        with self._lock:
            buckets = self._buckets
            for charge in charges:
                if charge.kind == BUCKET and charge.key not in buckets:
                    continue
                wait = self._wait(charge, now_s)
                if wait > worst:
                    worst = wait
        return worst

    def peek_each(self, groups: Sequence[Sequence[Charge]], now_s: float) -> list[float]:
        """`peek` of each group (what a Decide asks of the tenant's limits and every candidate's at once)."""
        return [self.peek(group, now_s) for group in groups]

    def take_unless(self, peeks: Sequence[Sequence[Charge]], take: Sequence[Charge], now_s: float) -> bool:
        """Spend all of `take` when none of it and none of the `peeks` groups would wait; True when spent. A
        remembered Decide checks its tenant's and every candidate's limits and spends its choice's in one ask. A
        bucket never charged is passed over, as in `peek` (11.6% of a remembered Decide's instructions went to
        the buckets of candidates nobody had called)."""
        with self._lock:
            buckets = self._buckets
            for group in (*peeks, take):
                for charge in group:
                    if charge.kind == BUCKET and charge.key not in buckets:
                        continue
                    if self._wait(charge, now_s) > 0:
                        return False
            self._trim()
            for charge in take:
                self._apply(charge, charge.cost, now_s)
            return True

    def take(self, charges: Sequence[Charge], now_s: float) -> tuple[float, Charge | None]:
        """All charges or none: (0, None) when taken, else (wait, the charge with the longest wait)."""
        with self._lock:
            worst: tuple[float, Charge | None] = (0.0, None)
            for charge in charges:
                wait = self._wait(charge, now_s)
                if wait > worst[0]:
                    worst = (wait, charge)
            if worst[1] is not None:
                return worst
            self._trim()
            for charge in charges:
                self._apply(charge, charge.cost, now_s)
            return 0.0, None

    def adjust(self, charge: Charge, delta: float, now_s: float) -> None:
        """Add `delta` (may be negative) to what `charge` spent, e.g. reported tokens minus the estimate."""
        if not math.isfinite(delta):
            raise LimitError("delta", "finite", f"must be finite, got {delta!r}")
        with self._lock:
            self._apply(charge, delta, now_s)

    def _apply(self, charge: Charge, amount: float, now_s: float) -> None:
        if charge.kind == BUCKET:
            level = self._level(charge, now_s) - amount
            self._buckets[charge.key] = (min(level, charge.limit), now_s)
        else:
            start = window_start(now_s, charge.window_s)
            self._windows[charge.key] = (start, max(0.0, self._count(charge, now_s) + amount))

    def _trim(self) -> None:
        if len(self._buckets) + len(self._windows) < self.MAX_KEYS:
            return
        self._buckets.clear()  # buckets start full: forgetting one only forgives a recent debt
        self._windows.clear()

    def acquire_lease(self, scope: str, lease_id: str, cap: int, ttl_s: float, now_s: float) -> bool:
        check_lease_args(scope, lease_id, cap, ttl_s)
        with self._lock:
            held = self._live(scope, now_s)
            if lease_id in held:
                return True
            if len(held) >= cap:
                return False
            held[lease_id] = now_s + ttl_s
            return True

    def release_lease(self, scope: str, lease_id: str, now_s: float) -> bool:
        with self._lock:
            return self._live(scope, now_s).pop(lease_id, None) is not None

    def leases_held(self, scope: str, now_s: float) -> int:
        with self._lock:
            return len(self._live(scope, now_s))

    def _live(self, scope: str, now_s: float) -> dict[str, float]:
        held = self._leases.setdefault(scope, {})
        for lease_id in [i for i, expires in held.items() if expires <= now_s]:
            del held[lease_id]
        return held
