"""The limit arithmetic on its own (`limits`): token buckets, fixed windows and leases with an injected clock,
checked for properties with hypothesis; then the policy's limits and tenant tiers (`limiter`, policy_config)."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from prismops.gateway_grpc.limiter import Limiter, token_charges
from prismops.gateway_grpc.limits import (
    BUCKET, WINDOW, Charge, LimitError, LocalLimitStore, bucket_level, bucket_wait, window_wait,
)
from prismops.gateway_grpc.policy_config import PolicyConfigError, parse_policy

T0 = 1_781_524_800.0  # 2026-06-15T12:00:00Z, a whole day boundary + 12 h


def bucket(key: str = "k", limit: float = 10, cost: float = 1) -> Charge:
    return Charge(key, BUCKET, limit, cost)


# -- token buckets --------------------------------------------------------------------------------------------


def test_a_bucket_starts_full_and_refuses_the_request_past_its_limit():
    store = LocalLimitStore()
    for _ in range(10):
        assert store.take([bucket()], T0) == (0.0, None)
    wait, charge = store.take([bucket()], T0)
    assert charge == bucket() and wait == pytest.approx(6.0)  # 10 rpm refills one request every 6 s
    assert store.take([bucket()], T0 + 5.9)[1] is not None
    assert store.take([bucket()], T0 + 6.0) == (0.0, None)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 10_000),
    costs=st.lists(st.tuples(st.floats(0, 120), st.integers(0, 500)), min_size=1, max_size=40),
)
def test_a_bucket_never_lets_more_than_its_limit_plus_refill_through(limit, costs):
    """Over any stretch of time, what passed is at most the capacity plus what the refill added (a single
    charge larger than the capacity may pass only from a full bucket, so it counts as the capacity)."""
    store = LocalLimitStore()
    now, passed = T0, 0.0
    for gap, cost in costs:
        now += gap
        charge = Charge("k", BUCKET, limit, cost)
        wait, refused = store.take([charge], now)
        if refused is None:
            passed += min(cost, limit)
            assert wait == 0
        else:
            assert wait > 0
    assert passed <= limit + (now - T0) * limit / 60 + 1e-6


@given(level=st.floats(-1e6, 1e6), cost=st.floats(0, 1e6), capacity=st.floats(1, 1e6), rate=st.floats(0.01, 1e4))
def test_after_the_wait_the_bucket_can_take_the_charge(level, cost, capacity, rate):
    level = min(level, capacity)
    wait = bucket_wait(level, cost, capacity, rate)
    assert wait >= 0
    later = bucket_level(level, 0.0, wait, capacity, rate)
    assert later >= min(cost, capacity) - 1e-6 * max(1.0, capacity)


def test_take_is_all_or_nothing():
    store = LocalLimitStore()
    small = Charge("tenant", BUCKET, 1, 1)
    big = Charge("model", BUCKET, 100, 1)
    assert store.take([small, big], T0) == (0.0, None)
    wait, refused = store.take([big, small], T0)
    assert refused is small and wait == pytest.approx(60.0)
    # the model's bucket was not charged by the refused take: 99 left
    for _ in range(99):
        assert store.take([big], T0)[1] is None
    assert store.take([big], T0)[1] is big


def test_adjust_gives_back_and_takes_more():
    store = LocalLimitStore()
    tpm = Charge("tpm", BUCKET, 1000, 800)
    assert store.take([tpm], T0)[1] is None
    store.adjust(tpm, -700, T0)  # the call used 100 tokens, not 800: 900 left
    assert store.peek([Charge("tpm", BUCKET, 1000, 900)], T0) == 0
    store.adjust(tpm, 1500, T0)  # it used far more: the bucket owes 600
    assert store.peek([Charge("tpm", BUCKET, 1000, 1)], T0) == pytest.approx(601 / (1000 / 60))
    store.adjust(tpm, -10**9, T0)  # never above capacity
    assert store.peek([Charge("tpm", BUCKET, 1000, 1000)], T0) == 0
    with pytest.raises(LimitError):
        store.adjust(tpm, math.nan, T0)


def test_a_request_larger_than_the_limit_passes_only_from_a_full_bucket():
    store = LocalLimitStore()
    assert store.take([Charge("k", BUCKET, 100, 250)], T0)[1] is None
    wait, refused = store.take([Charge("k", BUCKET, 100, 250)], T0)
    assert refused is not None and wait == pytest.approx(250 * 60 / 100)  # the 150 debt, then 100


@pytest.mark.parametrize("bad", [
    dict(limit=0), dict(limit=-5), dict(limit=math.inf), dict(limit=10**16), dict(cost=-1), dict(cost=math.nan),
    dict(window_s=0), dict(kind="leaky"),
])
def test_absurd_charges_are_refused_with_the_field_named(bad):
    fields = dict(key="k", kind=BUCKET, limit=10, cost=1, window_s=60.0) | bad
    with pytest.raises(LimitError) as raised:
        Charge(**fields)
    assert raised.value.field in bad


# -- fixed windows (daily quotas) -----------------------------------------------------------------------------


def test_a_daily_window_refuses_until_midnight_utc_then_starts_again():
    store = LocalLimitStore()
    day = Charge("day:acme:requests", WINDOW, 3, 1, 86_400)
    for _ in range(3):
        assert store.take([day], T0)[1] is None
    wait, refused = store.take([day], T0)
    assert refused is day and wait == pytest.approx(12 * 3600)
    assert store.take([day], T0 + 12 * 3600)[1] is None  # a new day


@given(count=st.floats(0, 1e6), cost=st.floats(0, 1e6), limit=st.floats(1, 1e6), now=st.floats(0, 1e9))
def test_a_window_wait_ends_at_the_window_end(count, cost, limit, now):
    wait = window_wait(count, cost, limit, now, 86_400)
    assert wait == 0 or 0 < wait <= 86_400


# -- leases ---------------------------------------------------------------------------------------------------


def test_leases_cap_calls_in_flight_release_once_and_expire():
    store = LocalLimitStore()
    assert all(store.acquire_lease("svc", f"l{i}", 3, 60, T0) for i in range(3))
    assert not store.acquire_lease("svc", "l3", 3, 60, T0)
    assert store.acquire_lease("svc", "l0", 3, 60, T0)  # the same lease again is still held
    assert store.release_lease("svc", "l0", T0) is True
    assert store.release_lease("svc", "l0", T0) is False  # released twice: answered, nothing else happens
    assert store.acquire_lease("svc", "l3", 3, 60, T0)
    assert store.leases_held("svc", T0) == 3
    assert store.leases_held("svc", T0 + 60) == 0  # expired
    assert store.release_lease("svc", "l1", T0 + 60) is False
    assert store.leases_held("other", T0) == 0


@pytest.mark.parametrize("cap, ttl", [(0, 60), (-1, 60), (True, 60), (3, 0), (3, math.inf)])
def test_bad_lease_arguments_are_refused(cap, ttl):
    with pytest.raises(LimitError):
        LocalLimitStore().acquire_lease("svc", "l", cap, ttl, T0)


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["acquire", "release"]), st.integers(0, 9)), max_size=60),
       cap=st.integers(1, 5))
def test_leases_never_exceed_the_cap(ops, cap):
    store = LocalLimitStore()
    for op, lease in ops:
        if op == "acquire":
            store.acquire_lease("s", f"l{lease}", cap, 60, T0)
        else:
            store.release_lease("s", f"l{lease}", T0)
        assert store.leases_held("s", T0) <= cap


# -- the policy's limits and tenant tiers ----------------------------------------------------------------------

POLICY = {
    "tiers": ["premium", "standard", "economy", "local"],
    "models": {"openai/gpt-4o": {"tier": "premium"}, "local/llama": {"tier": "local"}},
    "limits": {
        "models": {"openai/gpt-4o": {"rpm": 10000, "tpm": 2000000}},
        "tenants": {"*": {"rpm": 600}, "big": {"rpm": 6000, "tpm": 100000}},
        "concurrency": [{"name": "support", "match": {"service": "support-bot"}, "max_in_flight": 3},
                        {"name": "triage", "match": {"service": "support-bot", "feature": "triage"},
                         "max_in_flight": 5}],
    },
    "tenant_tiers": {
        "default": "premium",
        "tiers": {"free": {"model_tiers": ["local"], "daily_requests": 100, "daily_tokens": 50000, "rpm": 10},
                  "premium": {"model_tiers": ["standard", "economy", "local"]}, "enterprise": {}},
        "tenants": {"hobbyist": "free", "bigco": "enterprise"},
    },
}


def policy(**changes):
    document = yaml.safe_load(yaml.safe_dump(POLICY))
    for path, value in changes.items():
        node = document
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return parse_policy(yaml.safe_dump(document))


class CountingStore(LocalLimitStore):
    """The local store, counting how often the limiter asks it (each ask is a round trip on a shared store)."""

    def __init__(self) -> None:
        super().__init__()
        self.asks = 0

    def peek(self, charges, now_s):
        self.asks += 1
        return super().peek(charges, now_s)

    def peek_each(self, groups, now_s):
        self.asks += 1
        return [LocalLimitStore.peek(self, group, now_s) for group in groups]


KEYS = ("a", "b", "c")


@settings(max_examples=60, deadline=None)
@given(spent=st.lists(st.tuples(st.sampled_from(KEYS), st.integers(1, 6)), max_size=8),
       groups=st.lists(st.lists(st.sampled_from(KEYS), max_size=3), max_size=5))
def test_blocked_each_names_what_blocked_names_group_by_group_in_one_ask(spent, groups):
    store = CountingStore()
    limiter = Limiter(store)
    for key, cost in spent:
        store.take([bucket(key, limit=5, cost=cost)], T0)
    charge_groups = [[bucket(key, limit=5, cost=2) for key in group] for group in groups]

    store.asks = 0
    each = limiter.blocked_each(charge_groups, T0 + 1)
    asks = store.asks
    one_by_one = [limiter.blocked(group, T0 + 1) for group in charge_groups]

    assert each == one_by_one
    assert limiter.any_blocked(charge_groups, T0 + 1) == any(b is not None for b in one_by_one)
    # one ask for all the groups; a waiting group of several charges is asked again, charge by charge, to name
    # the one with the longest wait (rare: a limit that refuses)
    naming = sum(1 + len(group) for group, b in zip(charge_groups, each) if b is not None and len(group) > 1)
    assert asks == 1 + naming


@settings(max_examples=60, deadline=None)
@given(spent=st.lists(st.tuples(st.sampled_from(KEYS), st.integers(1, 6)), max_size=8),
       peeks=st.lists(st.lists(st.sampled_from(KEYS), max_size=3), max_size=4),
       take=st.lists(st.sampled_from(KEYS), max_size=3))
def test_take_unless_spends_the_take_only_when_nothing_checked_would_wait(spent, peeks, take):
    asked, twin = LocalLimitStore(), LocalLimitStore()
    for key, cost in spent:
        for store in (asked, twin):
            store.take([bucket(key, limit=5, cost=cost)], T0)
    peek_groups = [[bucket(key, limit=5, cost=2) for key in group] for group in peeks]
    take_charges = [bucket(key, limit=5, cost=1) for key in take]
    clear = all(twin.peek([charge], T0 + 1) == 0 for group in (*peek_groups, take_charges) for charge in group)

    taken = Limiter(asked).take_unless_blocked(peek_groups, take_charges, T0 + 1)

    assert taken == clear
    if clear:
        assert twin.take(take_charges, T0 + 1) == (0.0, None)
    assert (asked._buckets, asked._windows) == (twin._buckets, twin._windows)  # spent exactly what take would


def test_tenant_charges_follow_the_tier_then_the_tenant():
    limiter = Limiter(LocalLimitStore())
    p = policy()
    labels = [c.label for c in limiter.tenant_charges(p, "hobbyist", 700)]
    assert labels == ["tier free daily requests 100", "tier free daily tokens 50,000", "tier free rpm 10",
                      "tenant hobbyist rpm 600"]
    assert [c.label for c in limiter.tenant_charges(p, "big", 1)] == ["tenant big rpm 6,000", "tenant big tpm 100,000"]
    assert [c.label for c in token_charges(limiter.tenant_charges(p, "big", 1))] == ["tenant big tpm 100,000"]
    assert limiter.tier_of(p, "bigco") == ("enterprise", p.tenant_tiers.tiers["enterprise"])
    assert limiter.tier_of(p, "someone")[0] == "premium"
    assert [c.label for c in limiter.model_charges(p, ("openai", "gpt-4o"), 5)] == [
        "openai/gpt-4o rpm 10,000", "openai/gpt-4o tpm 2,000,000"]
    assert limiter.model_charges(p, ("local", "llama"), 5) == []


def test_share_per_replica_divides_every_limit_and_cap():
    limiter = Limiter(LocalLimitStore(), share=4)
    p = policy()
    assert [c.limit for c in limiter.model_charges(p, ("openai", "gpt-4o"), 1)] == [2500, 500000]
    assert limiter.lease_cap(p.limits.concurrency[0]) == 1  # 3 / 4, at least one
    with pytest.raises(LimitError):
        Limiter(LocalLimitStore(), share=0)


def test_the_most_specific_concurrency_cap_applies():
    limits = policy().limits
    assert limits.concurrency_for("support-bot", "triage").name == "triage"
    assert limits.concurrency_for("support-bot", "chat").name == "support"
    assert limits.concurrency_for("search", "chat") is None


@pytest.mark.parametrize("path, value, field, rule", [
    ("limits.models", {"openai/gpt-4o": {"rpm": -5}}, "limits.models.openai/gpt-4o.rpm", "greater_than"),
    ("limits.models", {"openai/gpt-4o": {"tpm": 10**13}}, "limits.models.openai/gpt-4o.tpm", "less_than_equal"),
    ("limits.models", {"gpt-4o": {"rpm": 5}}, "limits.models.gpt-4o", "provider_model"),
    ("limits.concurrency", [{"name": "a", "max_in_flight": 0}], "limits.concurrency[0].max_in_flight",
     "greater_than_equal"),
    ("limits.concurrency", [{"name": "a", "max_in_flight": 1}, {"name": "a", "max_in_flight": 2}],
     "limits.concurrency", "unique"),
    ("tenant_tiers.default", "gold", "tenant_tiers.default", "known_tenant_tier"),
    ("tenant_tiers.tenants", {"acme": "platinum"}, "tenant_tiers.tenants.acme", "known_tenant_tier"),
    ("tenant_tiers.tiers", {"free": {"model_tiers": ["frontier"]}}, "tenant_tiers.tiers.free.model_tiers[0]",
     "known_tier"),
    ("tenant_tiers.tiers", {"free": {"daily_requests": 0}}, "tenant_tiers.tiers.free.daily_requests",
     "greater_than"),
])
def test_bad_limits_and_tiers_name_the_field_and_rule(path, value, field, rule):
    with pytest.raises(PolicyConfigError) as raised:
        if path == "tenant_tiers.tiers":
            policy(**{path: value, "tenant_tiers.default": None, "tenant_tiers.tenants": {}})
        else:
            policy(**{path: value})
    assert (raised.value.field, raised.value.rule) == (field, rule)
