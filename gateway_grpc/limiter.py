"""From the policy's `limits` and `tenant_tiers` to the counters a request spends (`limits.Charge`).

No I/O of its own: the store (`LocalLimitStore` in memory, or `RedisLimitStore` shared) does the counting.
`share` > 1 is the share-per-replica mode: each of N gateways enforces 1/N of every limit and cap on its own,
which holds the total only while the load is spread evenly (see docs/routing.md, "Several gateways").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from prismops.gateway_grpc.limits import BUCKET, WINDOW, Charge, LimitError, LimitStore
from prismops.gateway_grpc.policy_config import ConcurrencyCap, RoutingPolicy, TenantTier

ModelKey = tuple[str, str]
DAY_S = 86_400.0


@dataclass(frozen=True)
class Blocked:
    """A refused charge: how long until it would pass, and which limit said no."""

    wait_s: float
    charge: Charge


class Limiter:
    def __init__(self, store: LimitStore, share: int = 1):
        if isinstance(share, bool) or not isinstance(share, int) or share < 1:
            raise LimitError("share", "positive_int", f"must be an integer >= 1, got {share!r}")
        self.store = store
        self.share = share
        # charges are immutable and a Decide builds the same few again and again: remembered per installed
        # policy (by identity), tenant or model, and token count; bounded, since tenants come from callers
        self._memo_policy: RoutingPolicy | None = None
        self._memo: dict[tuple[str, object, int], list[Charge]] = {}

    MEMO_ENTRIES = 8192

    def _remembered(self, policy: RoutingPolicy, key: tuple[str, object, int]) -> list[Charge] | None:
        if policy is not self._memo_policy:
            self._memo = {}
            self._memo_policy = policy
        return self._memo.get(key)

    def _remember(self, key: tuple[str, object, int], charges: list[Charge]) -> list[Charge]:
        if len(self._memo) >= self.MEMO_ENTRIES:
            self._memo = {}
        self._memo[key] = charges
        return charges

    def _charge(self, key: str, kind: str, limit: int, cost: float, window_s: float, label: str) -> Charge:
        return Charge(key, kind, limit / self.share, cost, window_s, label)  # type: ignore[arg-type]

    @staticmethod
    def tier_of(policy: RoutingPolicy, tenant: str) -> tuple[str | None, TenantTier | None]:
        return policy.tenant_tiers.tier_of(tenant)

    def tenant_charges(self, policy: RoutingPolicy, tenant: str, tokens: int) -> list[Charge]:
        """Daily quotas and rate limits of the tenant's tier, then its own (or '*') rate limits."""
        remembered = self._remembered(policy, ("tenant", tenant, tokens))
        if remembered is not None:
            return remembered  # shared: callers never mutate charge lists
        return self._remember(("tenant", tenant, tokens), self._tenant_charges(policy, tenant, tokens))

    def _tenant_charges(self, policy: RoutingPolicy, tenant: str, tokens: int) -> list[Charge]:
        charges: list[Charge] = []
        tier_name, tier = self.tier_of(policy, tenant)
        if tier is not None:
            if tier.daily_requests:
                charges.append(self._charge(f"day:{tenant}:requests", WINDOW, tier.daily_requests, 1, DAY_S,
                                            f"tier {tier_name} daily requests {tier.daily_requests:,}"))
            if tier.daily_tokens:
                charges.append(self._charge(f"day:{tenant}:tokens", WINDOW, tier.daily_tokens, tokens, DAY_S,
                                            f"tier {tier_name} daily tokens {tier.daily_tokens:,}"))
            if tier.rpm:
                charges.append(self._charge(f"tier:{tenant}:rpm", BUCKET, tier.rpm, 1, 60.0,
                                            f"tier {tier_name} rpm {tier.rpm:,}"))
            if tier.tpm:
                charges.append(self._charge(f"tier:{tenant}:tpm", BUCKET, tier.tpm, tokens, 60.0,
                                            f"tier {tier_name} tpm {tier.tpm:,}"))
        own = policy.limits.tenants.get(tenant) or policy.limits.tenants.get("*")
        if own is not None:
            if own.rpm:
                charges.append(self._charge(f"tenant:{tenant}:rpm", BUCKET, own.rpm, 1, 60.0,
                                            f"tenant {tenant} rpm {own.rpm:,}"))
            if own.tpm:
                charges.append(self._charge(f"tenant:{tenant}:tpm", BUCKET, own.tpm, tokens, 60.0,
                                            f"tenant {tenant} tpm {own.tpm:,}"))
        return charges

    def model_charges(self, policy: RoutingPolicy, key: ModelKey, tokens: int) -> list[Charge]:
        remembered = self._remembered(policy, ("model", key, tokens))
        if remembered is not None:
            return remembered
        return self._remember(("model", key, tokens), self._model_charges(policy, key, tokens))

    def _model_charges(self, policy: RoutingPolicy, key: ModelKey, tokens: int) -> list[Charge]:
        name = f"{key[0]}/{key[1]}"
        limit = policy.limits.models.get(name)
        if limit is None:
            return []
        charges = []
        if limit.rpm:
            charges.append(self._charge(f"model:{name}:rpm", BUCKET, limit.rpm, 1, 60.0, f"{name} rpm {limit.rpm:,}"))
        if limit.tpm:
            charges.append(self._charge(f"model:{name}:tpm", BUCKET, limit.tpm, tokens, 60.0, f"{name} tpm {limit.tpm:,}"))
        return charges

    def blocked(self, charges: Sequence[Charge], now_s: float) -> Blocked | None:
        """Which of `charges` would refuse now (the longest wait), without spending anything."""
        if not charges:
            return None
        if len(charges) == 1 or self.store.peek(charges, now_s) <= 0:  # the common case: one call, all pass
            wait = self.store.peek(charges, now_s) if len(charges) == 1 else 0.0
            return Blocked(wait, charges[0]) if wait > 0 else None
        worst: Blocked | None = None
        for charge in charges:
            wait = self.store.peek([charge], now_s)
            if wait > 0 and (worst is None or wait > worst.wait_s):
                worst = Blocked(wait, charge)
        return worst

    def blocked_each(self, groups: Sequence[Sequence[Charge]], now_s: float) -> list[Blocked | None]:
        """`blocked` of each group, asking the store once for all of them (and again only for a group that would
        wait and has several charges, to name the one with the longest wait)."""
        waits = self.store.peek_each(groups, now_s)
        return [None if wait <= 0 else Blocked(wait, group[0]) if len(group) == 1 else self.blocked(group, now_s)
                for group, wait in zip(groups, waits, strict=True)]

    def any_blocked(self, groups: Sequence[Sequence[Charge]], now_s: float) -> bool:
        """Whether any group would wait now, asked of the store once."""
        return any(wait > 0 for wait in self.store.peek_each(groups, now_s))

    def take_unless_blocked(self, peeks: Sequence[Sequence[Charge]], take: Sequence[Charge], now_s: float) -> bool:
        """Spend `take` when neither it nor any of `peeks` would wait, in one ask of the store; True when spent."""
        return self.store.take_unless(peeks, take, now_s)

    def take(self, charges: Sequence[Charge], now_s: float) -> Blocked | None:
        """Spend all of `charges` or none; the refusing charge when none."""
        if not charges:
            return None
        wait, charge = self.store.take(charges, now_s)
        return Blocked(wait, charge) if charge is not None else None

    def lease_cap(self, cap: ConcurrencyCap) -> int:
        return max(1, math.floor(cap.max_in_flight / self.share))


def token_charges(charges: Sequence[Charge]) -> list[Charge]:
    """The charges that count tokens (their cost is the token estimate), for the correction at ReportOutcome."""
    return [c for c in charges if c.key.endswith(":tpm") or c.key.endswith(":tokens")]
