"""`LimitStore` on a shared Redis, so several gateways enforce one limit (gateway.limits_store = redis).

Each call is one Lua script, atomic on the server: a `take` checks every charge and spends all or none, as
`LocalLimitStore` does, with the same arithmetic (`limits.bucket_level` / `bucket_wait` / `window_wait`). The
script takes its charges in numbered groups: `peek_each` answers each group's longest wait, and `take_unless`
checks every group and spends only the last, so a Decide asks Redis once where it asked five times.
Time is Redis's own clock (`TIME`), not the gateways', so replicas with skewed clocks still agree; the
`now_s` arguments are ignored here. Buckets are hashes {l: level, t: updated} that expire once they would
be full again; windows are hashes {s: window start, c: count} that expire with their window; leases are a
sorted set per scope scored by expiry.

When Redis does not answer, the gateway keeps routing: the store fails open (nothing is refused for a limit),
logs it at most every 10 s, and counts it in `prismops_limit_store_errors_total`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter

from prismops.gateway_grpc.limits import Charge, LimitError, check_lease_args

log = logging.getLogger(__name__)

STORE_ERRORS = Counter("prismops_limit_store_errors_total", "calls to the shared limit store that failed (failed open)")

_CHARGES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local mode, groups = ARGV[1], tonumber(ARGV[2])
local charges = cjson.decode(ARGV[3])
local worst, worst_i = 0, 0
local seen, group_worst = {}, {}
for g = 1, groups do group_worst[g] = 0 end
for i = 1, #KEYS do
  local group, kind, limit, cost, win = unpack(charges[i])
  local wait = 0
  if kind == 'bucket' then
    local h = redis.call('HMGET', KEYS[i], 'l', 't')
    local level = tonumber(h[1]) or limit
    local upd = tonumber(h[2]) or now
    level = math.min(limit, level + math.max(0, now - upd) * limit / win)
    seen[i] = level
    local need = math.min(cost, limit)
    if level < need then wait = (need - level) / (limit / win) end
  else
    local h = redis.call('HMGET', KEYS[i], 's', 'c')
    local start = math.floor(now / win) * win
    local count = 0
    if tonumber(h[1]) == start then count = tonumber(h[2]) or 0 end
    seen[i] = count
    if count + cost > limit and count > 0 then wait = start + win - now end
  end
  if wait > worst then worst, worst_i = wait, i end
  if wait > group_worst[group] then group_worst[group] = wait end
end
if mode == 'peek_each' then
  local waits = {}
  for g = 1, groups do waits[g] = tostring(group_worst[g]) end
  return waits
end
if mode == 'peek' or (mode == 'take' and worst_i > 0) then
  return {tostring(worst), worst_i}
end
-- spend the last group's charges (a take's or an adjust's only group); the groups before it were only checked
for i = 1, #KEYS do
  local group, kind, limit, cost, win = unpack(charges[i])
  if group == groups then
    if kind == 'bucket' then
      local level = math.min(limit, seen[i] - cost)
      redis.call('HSET', KEYS[i], 'l', tostring(level), 't', tostring(now))
      local full_in = (limit - level) / (limit / win)
      redis.call('PEXPIRE', KEYS[i], math.ceil((full_in + 1) * 1000))
    else
      local start = math.floor(now / win) * win
      local count = math.max(0, seen[i] + cost)
      redis.call('HSET', KEYS[i], 's', tostring(start), 'c', tostring(count))
      redis.call('PEXPIRE', KEYS[i], math.ceil((start + win - now + 1) * 1000))
    end
  end
end
return {'0', 0}
"""

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil((ttl + 1) * 1000))
return 1
"""

_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

_HELD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""


class RedisLimitStore:
    """The shared counters. `client` is a redis.Redis; `prefix` starts every key (settings.redis.key_prefix)."""

    def __init__(self, client: Any, prefix: str = "prismops:"):
        self._client = client
        self._prefix = f"{prefix}limits:"
        self._charges = client.register_script(_CHARGES)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._held = client.register_script(_HELD)
        self._last_error_log = 0.0

    @classmethod
    def from_settings(cls, redis_settings: Any) -> "RedisLimitStore":
        import redis

        client = redis.Redis(
            host=redis_settings.host, port=redis_settings.port, db=redis_settings.db, password=redis_settings.password,
            socket_timeout=redis_settings.timeout_s, socket_connect_timeout=redis_settings.timeout_s,
        )
        return cls(client, redis_settings.key_prefix)

    def ping(self) -> bool:
        return bool(self._client.ping())

    def _failed(self, what: str, error: Exception) -> None:
        STORE_ERRORS.inc()
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.warning("shared limit store: %s failed, limits not enforced meanwhile: %s", what, error)

    def _script(self, mode: str, groups: Sequence[Sequence[Charge]], failed_open: Any) -> Any:
        """The limit script's reply for `groups`, or `failed_open` when Redis does not answer (logged, counted)."""
        import redis

        try:
            return self._charges(keys=self._keys(groups), args=self._args(mode, groups))
        except redis.RedisError as error:
            self._failed(mode, error)
            return failed_open

    def _run(self, mode: str, charges: Sequence[Charge]) -> tuple[float, int]:
        wait, index = self._script(mode, [charges], (0.0, 0))
        return float(wait), int(index)

    def _keys(self, groups: Sequence[Sequence[Charge]]) -> list[str]:
        return [self._prefix + charge.key for group in groups for charge in group]

    @staticmethod
    def _args(mode: str, groups: Sequence[Sequence[Charge]]) -> list[Any]:
        """The script's arguments: the mode, the number of groups, and one JSON array with each charge's group
        number, kind, limit, cost and window, in the order of `_keys` (one argument, not five per charge: the
        client packs each argument in Python, and a Decide's dozen charges made packing half of the call)."""
        charges = [[number, charge.kind, float(charge.limit), float(charge.cost), float(charge.window_s)]
                   for number, group in enumerate(groups, 1) for charge in group]
        return [mode, len(groups), json.dumps(charges, separators=(",", ":"))]

    def peek(self, charges: Sequence[Charge], now_s: float) -> float:
        return self._run("peek", charges)[0] if charges else 0.0

    def peek_each(self, groups: Sequence[Sequence[Charge]], now_s: float) -> list[float]:
        """`peek` of each group in one script call: a Decide peeks its tenant and every candidate model, and on a
        loopback Redis each round trip cost about 200 µs of a 1.8 ms Decide that made five."""
        if not any(groups):
            return [0.0] * len(groups)
        return [float(wait) for wait in self._script("peek_each", groups, [0.0] * len(groups))]

    def take_unless(self, peeks: Sequence[Sequence[Charge]], take: Sequence[Charge], now_s: float) -> bool:
        """`LocalLimitStore.take_unless` in one script call: every group checked, the last (`take`) spent."""
        groups = [*peeks, take]
        if not any(groups):
            return True
        _wait, index = self._script("take", groups, (0.0, 0))
        return int(index) == 0

    def take(self, charges: Sequence[Charge], now_s: float) -> tuple[float, Charge | None]:
        if not charges:
            return 0.0, None
        wait, index = self._run("take", charges)
        return (wait, charges[index - 1]) if index else (0.0, None)

    def adjust(self, charge: Charge, delta: float, now_s: float) -> None:
        if delta != delta or delta in (float("inf"), float("-inf")):
            raise LimitError("delta", "finite", f"must be finite, got {delta!r}")
        self._run("adjust", [_with_cost(charge, delta)])

    def acquire_lease(self, scope: str, lease_id: str, cap: int, ttl_s: float, now_s: float) -> bool:
        import redis

        check_lease_args(scope, lease_id, cap, ttl_s)
        try:
            return bool(self._acquire(keys=[f"{self._prefix}lease:{scope}"], args=[lease_id, cap, repr(float(ttl_s))]))
        except redis.RedisError as error:
            self._failed("lease", error)
            return True

    def release_lease(self, scope: str, lease_id: str, now_s: float) -> bool:
        import redis

        try:
            return bool(self._release(keys=[f"{self._prefix}lease:{scope}"], args=[lease_id]))
        except redis.RedisError as error:
            self._failed("lease release", error)
            return False

    def leases_held(self, scope: str, now_s: float) -> int:
        return int(self._held(keys=[f"{self._prefix}lease:{scope}"]))


def _with_cost(charge: Charge, delta: float) -> Charge:
    """`Charge` refuses negative costs; the adjust script takes the signed delta as its cost."""
    copy = object.__new__(Charge)
    for name in ("key", "kind", "limit", "window_s", "label"):
        object.__setattr__(copy, name, getattr(charge, name))
    object.__setattr__(copy, "cost", delta)
    return copy
