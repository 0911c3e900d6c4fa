"""The policy engine with rate limits, daily quotas and tenant tiers: each reason code on its own, with an
in-memory store and an injected moment (limits are peeked by `decide`, spent by the caller)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import yaml

from prismops.gateway_grpc.breakers import BreakerBoard
from prismops.gateway_grpc.experiments import CanaryTracker
from prismops.gateway_grpc.limiter import Limiter
from prismops.gateway_grpc.limits import LocalLimitStore
from prismops.gateway_grpc.policy import (
    CHEAPEST_WITHIN_SLO, PRIMARY, RATE_LIMITED_ALL, RATE_LIMITED_SKIP, TENANT_RATE_LIMITED, TIER_DAILY_LIMIT,
    TIER_NO_MODEL, TIER_RESTRICTED, RoutingChoice, RoutingState, decide,
)
from prismops.gateway_grpc.policy_config import RoutingPolicy, parse_policy

from decimal import Decimal

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
GPT4O, CLAUDE, O3, MINI = ("openai", "gpt-4o"), ("anthropic", "claude"), ("openai", "o3-mini"), ("openai", "gpt-4o-mini")
# (p95 ms, input $/Mtok, output $/Mtok)
FACTS = {GPT4O: (600.0, "2.5", "10"), CLAUDE: (700.0, "3", "15"), O3: (500.0, "1.1", "4.4"), MINI: (400.0, "0.15", "0.6")}
CATALOG: dict[str, Any] = {
    "tiers": ["premium", "standard", "economy", "local"],
    "defaults": {"latency_slo_ms": 1000, "live": {"max_age_s": 60, "min_samples": 5, "max_error_rate": 0.2}},
    "models": {"openai/gpt-4o": {"tier": "premium"}, "anthropic/claude": {"tier": "premium"},
               "openai/o3-mini": {"tier": "standard"}, "openai/gpt-4o-mini": {"tier": "economy"},
               "local/llama": {"tier": "local"}},
}


def name(key: tuple[str, str]) -> str:
    return f"{key[0]}/{key[1]}"


def chat_route() -> dict[str, Any]:
    return {"name": "chat", "match": {"service": "chat"}, "strategy": "priority", "primary": name(GPT4O),
            "fallbacks": [name(CLAUDE), name(O3), name(MINI)]}


def healthy(at: dt.datetime) -> dict:
    return {key: {"provider": key[0], "model": key[1], "window_seconds": 300.0, "sample_count": 100, "error_count": 1,
                  "error_rate": 0.01, "p50_latency_ms": p95 / 2, "p95_latency_ms": p95, "p99_latency_ms": p95 * 1.5,
                  "cost_usd": Decimal("0.5"), "tokens": 1_000_000, "input_price_per_mtok": Decimal(i),
                  "output_price_per_mtok": Decimal(o), "updated_at": at}
            for key, (p95, i, o) in FACTS.items()}


def ask(**fields: Any):
    from prismops.gateway_grpc.policy import RoutingRequest

    base = {"tenant": "acme", "service": "chat", "feature": "answer", "expected_input_tokens": 1000,
            "expected_output_tokens": 500, "request_id": "req-1"}
    return RoutingRequest(**{**base, **fields})

NOW_S = NOW.timestamp()


def make(limits: dict[str, Any] | None = None, tenant_tiers: dict[str, Any] | None = None,
         routes: list[dict[str, Any]] | None = None) -> RoutingPolicy:
    document = {**CATALOG, "routes": routes or [chat_route()]}
    if limits:
        document["limits"] = limits
    if tenant_tiers:
        document["tenant_tiers"] = tenant_tiers
    return parse_policy(yaml.safe_dump(document))


def run(policy: RoutingPolicy, limiter: Limiter, at: dt.datetime = NOW, **request: Any) -> RoutingChoice:
    state = RoutingState(policy=policy, rows=healthy(at), breakers=BreakerBoard(), canaries=CanaryTracker(),
                         policy_version=3, limits=limiter)
    return decide(ask(**request), state, "d-1", at)


def spend(limiter: Limiter, policy: RoutingPolicy, key: tuple[str, str], requests: int, tokens: int = 1500) -> None:
    for _ in range(requests):
        assert limiter.take(limiter.model_charges(policy, key, tokens), NOW_S) is None


def test_without_limits_nothing_changes():
    choice = run(make(), Limiter(LocalLimitStore()))
    assert (choice.provider, choice.model, choice.reason_code) == (*GPT4O, PRIMARY)
    assert choice.tenant_tier is None


def test_a_model_at_its_rpm_is_skipped_for_the_next_with_rate_limited_skip():
    policy = make(limits={"models": {name(GPT4O): {"rpm": 2}}})
    limiter = Limiter(LocalLimitStore())
    spend(limiter, policy, GPT4O, 2)
    choice = run(policy, limiter)
    assert (choice.provider, choice.model) == CLAUDE
    assert choice.reason_code == RATE_LIMITED_SKIP and RATE_LIMITED_SKIP in choice.reason_codes
    verdict = {c.key: c.verdict for c in choice.candidates}[GPT4O]
    assert verdict == "rate limited: openai/gpt-4o rpm 2 spent, free in 30.0 s"
    assert GPT4O not in [(s.provider, s.model) for s in choice.fallbacks]
    # a minute later the bucket has refilled
    assert (run(policy, limiter, NOW + dt.timedelta(seconds=60)).model) == GPT4O[1]


def test_a_model_at_its_tpm_is_skipped_by_the_request_size():
    policy = make(limits={"models": {name(GPT4O): {"tpm": 10_000}}})
    limiter = Limiter(LocalLimitStore())
    spend(limiter, policy, GPT4O, 6)  # 9,000 of 10,000 tokens
    assert run(policy, limiter, expected_input_tokens=500, expected_output_tokens=400).model == GPT4O[1]
    assert run(policy, limiter).model == CLAUDE[1]  # 1,500 do not fit


def test_on_a_cheapest_route_the_cheapest_unlimited_model_wins():
    route = {"name": "cheap", "match": {"service": "chat"}, "strategy": "cheapest", "primary": name(MINI),
             "fallbacks": [name(O3), name(GPT4O)]}
    policy = make(limits={"models": {name(MINI): {"rpm": 1}}}, routes=[route])
    limiter = Limiter(LocalLimitStore())
    spend(limiter, policy, MINI, 1)
    choice = run(policy, limiter)
    assert choice.model == O3[1] and choice.reason_code == CHEAPEST_WITHIN_SLO
    assert RATE_LIMITED_SKIP in choice.reason_codes


def test_every_model_limited_refuses_with_the_shortest_wait():
    policy = make(limits={"models": {name(m): {"rpm": 1 if m != CLAUDE else 2} for m in (GPT4O, CLAUDE, O3, MINI)}})
    limiter = Limiter(LocalLimitStore())
    for model in (GPT4O, O3, MINI):
        spend(limiter, policy, model, 1)
    spend(limiter, policy, CLAUDE, 2)
    choice = run(policy, limiter)
    assert choice.refused and choice.refusal_kind == "rate" and choice.reason_code == RATE_LIMITED_ALL
    assert choice.retry_after_s == pytest.approx(30.0)  # claude refills one request every 30 s
    assert choice.provider is None and "every allowed model's rate limit is spent" in choice.reason


def test_a_tenant_at_its_tpm_is_refused_with_a_retry_after():
    policy = make(limits={"tenants": {"acme": {"tpm": 3000}}})
    limiter = Limiter(LocalLimitStore())
    charges = limiter.tenant_charges(policy, "acme", 1500)
    assert limiter.take(charges, NOW_S) is None and limiter.take(charges, NOW_S) is None
    choice = run(policy, limiter)
    assert choice.refused and choice.reason_code == TENANT_RATE_LIMITED
    assert choice.retry_after_s == pytest.approx(1500 / (3000 / 60))
    assert choice.reason == "tenant acme: tenant acme tpm 3,000 spent; retry in 30.0 s"
    assert not run(policy, limiter, tenant="other").refused  # limits are per tenant


def test_the_star_tenant_limit_applies_to_each_tenant_separately():
    policy = make(limits={"tenants": {"*": {"rpm": 1}}})
    limiter = Limiter(LocalLimitStore())
    assert limiter.take(limiter.tenant_charges(policy, "acme", 10), NOW_S) is None
    assert run(policy, limiter).reason_code == TENANT_RATE_LIMITED
    assert not run(policy, limiter, tenant="globex").refused


TIERS = {
    "default": "premium",
    "tiers": {"free": {"model_tiers": ["local", "economy"], "daily_requests": 2},
              "premium": {"model_tiers": ["standard", "economy", "local"]}, "enterprise": {}},
    "tenants": {"hobby": "free", "bigco": "enterprise", "tiny": "free"},
}


def test_a_tier_restricts_the_model_classes_with_a_reason():
    policy = make(tenant_tiers=TIERS)
    limiter = Limiter(LocalLimitStore())
    free = run(policy, limiter, tenant="hobby")
    assert free.model == MINI[1] and TIER_RESTRICTED in free.reason_codes and free.tenant_tier == "free"
    assert {c.key: c.verdict for c in free.candidates}[GPT4O] == \
        "tenant tier free allows economy, local models, not premium"
    premium = run(policy, limiter)  # acme: the default tier
    assert premium.model == O3[1] and premium.tenant_tier == "premium"
    enterprise = run(policy, limiter, tenant="bigco")
    assert enterprise.model == GPT4O[1] and TIER_RESTRICTED not in enterprise.reason_codes


def test_a_tier_with_no_model_on_the_route_refuses_with_the_tier_named():
    tiers = {**TIERS, "tiers": {**TIERS["tiers"], "free": {"model_tiers": ["local"]}}}
    choice = run(make(tenant_tiers=tiers), Limiter(LocalLimitStore()), tenant="hobby")
    assert choice.refused and choice.refusal_kind == "tier" and choice.reason_code == TIER_NO_MODEL
    assert "tier free allows none of route chat's models" in choice.reason


def test_a_daily_request_quota_refuses_until_midnight():
    policy = make(tenant_tiers=TIERS)
    limiter = Limiter(LocalLimitStore())
    for _ in range(2):
        assert limiter.take(limiter.tenant_charges(policy, "hobby", 100), NOW_S) is None
    choice = run(policy, limiter, tenant="hobby")
    assert choice.refused and choice.reason_code == TIER_DAILY_LIMIT
    assert choice.retry_after_s == pytest.approx(12 * 3600)
    assert not run(policy, limiter, tenant="tiny").refused  # quotas are per tenant, not per tier
    assert not run(policy, limiter, NOW + dt.timedelta(hours=12), tenant="hobby").refused


def test_decide_only_peeks():
    policy = make(limits={"models": {name(GPT4O): {"rpm": 1}}, "tenants": {"acme": {"rpm": 1}}})
    limiter = Limiter(LocalLimitStore())
    for _ in range(5):
        assert run(policy, limiter).model == GPT4O[1]


def test_the_decision_record_carries_a_limit_refusal():
    policy = make(limits={"tenants": {"acme": {"rpm": 1}}})
    limiter = Limiter(LocalLimitStore())
    limiter.take(limiter.tenant_charges(policy, "acme", 1), NOW_S)
    choice = run(policy, limiter)
    record = choice.decision_record(ask(), "d-1")
    assert record["reason_code"] == TENANT_RATE_LIMITED and record["chosen_model"] is None
    from prismops.streams.codecs import codec_for

    codec = codec_for("routing_decision")
    assert codec.decode(codec.encode(record))["reason_code"] == TENANT_RATE_LIMITED
