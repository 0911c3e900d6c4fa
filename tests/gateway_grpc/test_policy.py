"""The policy engine on its own: each rule of `decide` in isolation, with plain rows, an injected clock and
decision-level assertions (model, reason codes, fallbacks, shadow, arm, budget, candidate verdicts)."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from prismops.gateway_grpc.breakers import BreakerBoard, BreakerConfig
from prismops.gateway_grpc.budget_gate import BudgetStanding
from prismops.gateway_grpc.experiments import CanaryTracker
from prismops.gateway_grpc.policy import (
    ALL_BREAKERS_OPEN,
    BREAKER_PROBE,
    BUDGET_BLOCKED,
    BUDGET_DOWNGRADE,
    BUDGET_DOWNGRADE_UNAVAILABLE,
    BUDGET_OVER_NOTIFY,
    CANARY,
    CANARY_PROMOTED,
    CANARY_ROLLED_BACK,
    CHEAPEST_WITHIN_SLO,
    EXPERIMENT_ARM,
    NO_LIVE_DATA,
    NO_MODEL_MEETS_SLO,
    PRIMARY,
    PRIMARY_SKIPPED,
    SHADOW_SAMPLED,
    SHADOW_SKIPPED_BUDGET,
    STATIC_POLICY,
    PolicyInputError,
    RoutingChoice,
    RoutingRequest,
    RoutingState,
    classify_complexity,
    cost_from_prices,
    decide,
    estimate_cost,
    format_ms,
    format_usd,
)
from prismops.gateway_grpc.policy_config import BUNDLED_POLICY, ComplexityClass, RoutingPolicy, load_policy_file, parse_policy
from prismops.streams.codecs import codec_for

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
T0 = NOW  # canaries start here

GPT4O = ("openai", "gpt-4o")
CLAUDE = ("anthropic", "claude")
O3 = ("openai", "o3-mini")
MINI = ("openai", "gpt-4o-mini")
FLASH = ("google", "flash")
LLAMA = ("local", "llama")

# (p95 ms, input $/Mtok, output $/Mtok); for 1000 in + 500 out tokens the costs are:
# gpt-4o 0.0075, claude 0.0105, o3-mini 0.0033, gpt-4o-mini 0.00045, flash 0.0003, llama 0.000015
MODEL_FACTS = {
    GPT4O: (600.0, "2.5", "10"),
    CLAUDE: (700.0, "3", "15"),
    O3: (500.0, "1.1", "4.4"),
    MINI: (400.0, "0.15", "0.6"),
    FLASH: (300.0, "0.1", "0.4"),
    LLAMA: (900.0, "0.01", "0.01"),
}
COST = {
    GPT4O: Decimal("0.0075"), CLAUDE: Decimal("0.0105"), O3: Decimal("0.0033"), MINI: Decimal("0.00045"),
    FLASH: Decimal("0.0003"), LLAMA: Decimal("0.000015"),
}

CATALOG: dict[str, Any] = {
    "tiers": ["premium", "standard", "economy", "local"],
    "defaults": {"latency_slo_ms": 1000, "live": {"max_age_s": 60, "min_samples": 5, "max_error_rate": 0.2}},
    "models": {
        "openai/gpt-4o": {"tier": "premium", "context_window": 128000, "structured_output": True, "vision": True,
                          "regions": ["us", "eu"]},
        "anthropic/claude": {"tier": "premium", "context_window": 200000, "vision": True, "regions": ["us"]},
        "openai/o3-mini": {"tier": "standard", "context_window": 200000, "structured_output": True, "regions": ["us"]},
        "openai/gpt-4o-mini": {"tier": "economy", "context_window": 128000, "structured_output": True, "vision": True,
                               "regions": ["us", "eu"]},
        "google/flash": {"tier": "economy", "context_window": 1000000},
        "local/llama": {"tier": "local", "context_window": 8192},
    },
}
CHAT_CHAIN = [GPT4O, CLAUDE, O3, MINI]


def name(key: tuple[str, str]) -> str:
    return f"{key[0]}/{key[1]}"


def chat_route(**extra: Any) -> dict[str, Any]:
    """The workhorse route: priority gpt-4o → claude → o3-mini → gpt-4o-mini for service `chat`."""
    return {"name": "chat", "match": {"service": "chat"}, "strategy": "priority", "primary": name(GPT4O),
            "fallbacks": [name(CLAUDE), name(O3), name(MINI)], **extra}


def make_policy(*routes: dict[str, Any], **defaults: Any) -> RoutingPolicy:
    document = {**CATALOG, "routes": list(routes)}
    document["defaults"] = {**CATALOG["defaults"], **defaults}
    return parse_policy(yaml.safe_dump(document))


def live_row(key: tuple[str, str], *, p95: float | None = None, samples: int = 100, error_rate: float = 0.01,
             age_s: float = 0.0, at: dt.datetime = NOW, prices: tuple[str, str] | None | bool = True,
             cost_usd: str = "0.5", tokens: int = 1_000_000) -> dict[str, Any]:
    default_p95, input_price, output_price = MODEL_FACTS.get(key, (500.0, "1", "1"))
    if isinstance(prices, tuple):
        input_price, output_price = prices
    with_prices = prices is not None and prices is not False
    return {
        "provider": key[0], "model": key[1], "window_seconds": 300.0, "sample_count": samples,
        "error_count": round(samples * error_rate), "error_rate": error_rate,
        "p50_latency_ms": (p95 or default_p95) / 2, "p95_latency_ms": p95 or default_p95,
        "p99_latency_ms": (p95 or default_p95) * 1.5, "cost_usd": Decimal(cost_usd), "tokens": tokens,
        "input_price_per_mtok": Decimal(input_price) if with_prices else None,
        "output_price_per_mtok": Decimal(output_price) if with_prices else None,
        "updated_at": at - dt.timedelta(seconds=age_s),
    }


def healthy(at: dt.datetime = NOW) -> dict:
    """A fresh, healthy row for every model of the catalog."""
    return {key: live_row(key, at=at) for key in MODEL_FACTS}


def ask(**fields: Any) -> RoutingRequest:
    base = {"tenant": "acme", "service": "chat", "feature": "answer", "expected_input_tokens": 1000,
            "expected_output_tokens": 500, "request_id": "req-1"}
    return RoutingRequest(**{**base, **fields})


def state_for(policy: RoutingPolicy, rows: dict, *, breakers: BreakerBoard | None = None,
              canaries: CanaryTracker | None = None, budget: BudgetStanding | None = None, mode: str = "manual",
              static_prices: Any = None) -> RoutingState:
    return RoutingState(
        policy=policy, rows=rows, breakers=breakers or BreakerBoard(), canaries=canaries or CanaryTracker(),
        policy_version=7, budget=budget, budget_mode=mode, static_prices=static_prices,
    )


def run(policy: RoutingPolicy, rows: dict | None = None, request: RoutingRequest | None = None, *,
        now: dt.datetime = NOW, decision_id: str = "d-1", **state: Any) -> RoutingChoice:
    return decide(request or ask(), state_for(policy, healthy(now) if rows is None else rows, **state),
                  decision_id, now)


def standing(used_pct: float, status: str = "ok", budget_id: str = "tenant-daily-usd") -> BudgetStanding:
    limit = Decimal("30")
    return BudgetStanding(
        tenant="acme", scope="tenant", scope_id="acme", budget_id=budget_id, period="daily",
        period_start=NOW.replace(hour=0), unit="usd", limit=limit, spent=limit * Decimal(str(used_pct)) / 100,
        used_pct=used_pct, status=status,
    )


def chosen(choice: RoutingChoice) -> tuple[str | None, str | None]:
    return (choice.provider, choice.model)


def fallback_keys(choice: RoutingChoice) -> list[tuple[str, str]]:
    return [(step.provider, step.model) for step in choice.fallbacks]


def verdicts(choice: RoutingChoice) -> dict[tuple[str, str], str]:
    return {c.key: c.verdict for c in choice.candidates}


def eligible(choice: RoutingChoice) -> dict[tuple[str, str], bool]:
    return {c.key: c.eligible for c in choice.candidates}


def within_binomial_bounds(hits: int, n: int, p: float, sds: float = 4.0) -> bool:
    return abs(hits - n * p) <= sds * math.sqrt(n * p * (1 - p))


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


# --- 1. route matching --------------------------------------------------------------------------------------

SPECIFICITY_POLICY = [
    {"name": "everything", "primary": name(FLASH)},
    {"name": "summaries", "match": {"feature": "summarize"}, "primary": name(MINI)},
    {"name": "chat-any", "match": {"service": "chat"}, "primary": name(GPT4O)},
    {"name": "chat-summaries", "match": {"service": "chat", "feature": "summarize"}, "primary": name(O3)},
    {"name": "chat-any-later", "match": {"service": "chat"}, "primary": name(CLAUDE)},
    {"name": "chat-glob", "match": {"service": "chat-*", "feature": "summarize"}, "primary": name(LLAMA)},
]


@pytest.mark.parametrize(
    ("service", "feature", "route", "model"),
    [
        ("chat", "summarize", "chat-summaries", O3),  # service and feature beat either alone
        ("chat", "answer", "chat-any", GPT4O),  # a tie of specificity goes to the first in the file
        ("search", "summarize", "summaries", MINI),
        ("search", "answer", "everything", FLASH),
        ("chat-eu", "summarize", "summaries", MINI),  # a glob is not an exact service: feature-only tie, first wins
        ("chat-eu", "answer", "everything", FLASH),
    ],
)
def test_the_most_specific_route_answers(service, feature, route, model):
    choice = run(make_policy(*SPECIFICITY_POLICY), request=ask(service=service, feature=feature))
    assert choice.route == route
    assert chosen(choice) == model
    assert choice.reason_code == PRIMARY
    assert [c.key for c in choice.candidates] == [model]
    assert choice.policy_version == 7


def test_an_exact_service_beats_an_exact_feature_whatever_the_file_order():
    policy = make_policy(
        {"name": "summaries", "match": {"feature": "summarize"}, "primary": name(MINI)},
        {"name": "chat-any", "match": {"service": "chat"}, "primary": name(GPT4O)},
    )
    choice = run(policy, request=ask(feature="summarize"))
    assert (choice.route, chosen(choice)) == ("chat-any", GPT4O)


def test_without_a_matching_route_the_implicit_route_serves_the_callers_models_cheapest_first():
    policy = make_policy(chat_route())
    choice = run(policy, request=ask(service="search", allowed_models=(GPT4O, MINI, O3)))
    assert choice.route == "__implicit__"
    assert chosen(choice) == MINI
    assert choice.reason_code == CHEAPEST_WITHIN_SLO
    assert fallback_keys(choice) == [O3, GPT4O]

    with pytest.raises(PolicyInputError) as raised:
        run(policy, request=ask(service="search"))
    assert (raised.value.field, raised.value.rule) == ("allowed_models", "non_empty")
    assert "route __implicit__ names no models" in raised.value.message


# --- 2. budget ----------------------------------------------------------------------------------------------

BUDGET_ROUTE = chat_route(budget={"downgrade_at_pct": 80, "downgrade_to_tier": "economy", "refuse_at_pct": 100})


@pytest.mark.parametrize(("used_pct", "status"), [(100.0, "warn"), (130.0, "block"), (60.0, "block")])
def test_manual_mode_refuses_at_the_refuse_threshold_or_a_blocking_budget(used_pct, status):
    budget = standing(used_pct, status)
    choice = run(make_policy(BUDGET_ROUTE), budget=budget)

    assert choice.refused is True
    assert chosen(choice) == (None, None)
    assert choice.reason_code == BUDGET_BLOCKED
    assert choice.reason_codes[0] == BUDGET_BLOCKED
    assert choice.reason == budget.message
    assert "over budget tenant-daily-usd" in choice.reason
    assert (choice.budget_status, choice.budget) == ("block", budget)
    assert choice.estimated_cost_usd is None
    assert (choice.fallbacks, choice.shadow, choice.downgraded) == ((), None, False)
    assert [c.key for c in choice.candidates] == CHAT_CHAIN
    assert set(verdicts(choice).values()) == {"not weighed: budget tenant-daily-usd blocks"}
    assert not any(eligible(choice).values())
    assert (choice.route, choice.policy_version) == ("chat", 7)


def test_the_routes_own_refuse_threshold_applies():
    strict = make_policy(chat_route(budget={"downgrade_at_pct": 50, "refuse_at_pct": 90}))
    lenient = make_policy(chat_route())  # defaults: 80 / 100
    assert run(strict, budget=standing(95.0)).refused is True
    relaxed = run(lenient, budget=standing(95.0))
    assert relaxed.refused is False
    assert relaxed.budget_status == "warn"


def test_notify_mode_routes_over_budget_tenants_with_a_reason_and_still_downgrades():
    choice = run(make_policy(BUDGET_ROUTE), budget=standing(120.0, "block"), mode="notify")

    assert choice.refused is False
    assert chosen(choice) == MINI
    assert choice.budget_status == "block"
    assert BUDGET_OVER_NOTIFY in choice.reason_codes
    assert BUDGET_DOWNGRADE in choice.reason_codes
    assert (choice.downgraded, choice.downgrade_tier) == (True, "economy")


def test_at_the_downgrade_threshold_only_the_downgrade_tier_or_cheaper_is_used():
    choice = run(make_policy(BUDGET_ROUTE), budget=standing(80.0, "warn"))

    assert chosen(choice) == MINI
    assert choice.reason_code == PRIMARY_SKIPPED
    assert choice.reason_codes == (PRIMARY_SKIPPED, BUDGET_DOWNGRADE)
    assert (choice.budget_status, choice.downgraded, choice.downgrade_tier) == ("warn", True, "economy")
    above = "budget downgrade: above the economy tier"
    assert verdicts(choice) == {GPT4O: above, CLAUDE: above, O3: above, MINI: "chosen"}
    assert eligible(choice) == {GPT4O: False, CLAUDE: False, O3: False, MINI: True}
    assert choice.fallbacks == ()  # a model above the tier is no fallback either
    assert choice.reason.startswith(f"openai/gpt-4o skipped ({above}); openai/gpt-4o-mini is the next on route chat")
    assert choice.estimated_cost_usd == COST[MINI]


def test_just_below_the_downgrade_threshold_nothing_changes():
    choice = run(make_policy(BUDGET_ROUTE), budget=standing(79.99))
    assert chosen(choice) == GPT4O
    assert choice.reason_codes == (PRIMARY,)
    assert (choice.budget_status, choice.downgraded, choice.downgrade_tier) == ("ok", False, None)
    assert fallback_keys(choice) == [CLAUDE, O3, MINI]


def test_without_a_downgrade_tier_the_cheapest_tier_on_the_route_is_used():
    policy = make_policy({"name": "chat", "match": {"service": "chat"}, "primary": name(GPT4O),
                          "fallbacks": [name(CLAUDE), name(O3)]})
    choice = run(policy, budget=standing(85.0))
    assert chosen(choice) == O3
    assert (choice.downgraded, choice.downgrade_tier) == (True, "standard")
    assert verdicts(choice)[CLAUDE] == "budget downgrade: above the standard tier"


def test_no_model_in_the_downgrade_tier_leaves_the_chain_and_says_so():
    premium_only = make_policy({"name": "chat", "match": {"service": "chat"}, "primary": name(GPT4O),
                                "fallbacks": [name(CLAUDE)], "budget": {"downgrade_to_tier": "economy"}})
    choice = run(premium_only, budget=standing(90.0))
    assert chosen(choice) == GPT4O
    assert choice.reason_codes == (PRIMARY, BUDGET_DOWNGRADE_UNAVAILABLE)
    assert (choice.budget_status, choice.downgraded, choice.downgrade_tier) == ("warn", False, None)
    assert fallback_keys(choice) == [CLAUDE]


def test_a_downgrade_tier_model_that_cannot_serve_the_request_does_not_count():
    policy = make_policy({"name": "chat", "match": {"service": "chat"}, "primary": name(GPT4O),
                          "fallbacks": [name(FLASH)], "budget": {"downgrade_to_tier": "economy"}})
    choice = run(policy, request=ask(requires_structured_output=True), budget=standing(90.0))
    assert chosen(choice) == GPT4O
    assert BUDGET_DOWNGRADE_UNAVAILABLE in choice.reason_codes
    assert verdicts(choice)[FLASH] == "no strict structured output"


# --- 3a. complexity -----------------------------------------------------------------------------------------

COMPLEXITY_ROUTE = chat_route(complexity={
    "simple": {"hints": ["simple"], "task_types": ["classification"], "max_prompt_chars": 2000,
               "models": [name(MINI), name(LLAMA)]},
    "complex": {"hints": ["complex"], "task_types": ["reasoning"], "min_prompt_chars": 20000,
                "models": [name(CLAUDE), name(GPT4O)]},
})


@pytest.mark.parametrize(
    ("fields", "label"),
    [
        ({"hints": ("simple",)}, "simple"),
        ({"hints": (" SIMPLE ",)}, "simple"),
        ({"hints": ("simple",), "task_type": "reasoning", "prompt_chars": 50000}, "simple"),  # hints win
        ({"hints": ("complex",), "task_type": "classification"}, "complex"),
        ({"hints": ("simple", "complex")}, "complex"),  # both hinted: the stronger class, never the weaker
        ({"task_type": "classification", "prompt_chars": 50000}, "simple"),  # task type beats prompt size
        ({"task_type": "Reasoning", "prompt_chars": 10}, "complex"),
        ({"prompt_chars": 2000}, "simple"),
        ({"prompt_chars": 20000}, "complex"),
        ({"prompt_chars": 0, "expected_input_tokens": 5000}, "complex"),  # 5000 tokens ~ 20000 characters
        ({"prompt_chars": 0, "expected_input_tokens": 500}, "simple"),
        ({"prompt_chars": 2001}, None),
        ({"hints": ("urgent",), "task_type": "chat", "prompt_chars": 19999}, None),
        ({"hints": ("urgent",), "task_type": "chat", "prompt_chars": 0}, None),  # unknown size: no class
    ],
)
def test_complexity_picks_the_class_models_by_hints_then_task_type_then_prompt_size(fields, label):
    # as the server does: caller-given input tokens stand for the prompt size, gateway defaults never do
    choice = run(make_policy(COMPLEXITY_ROUTE), request=ask(**fields).with_default_tokens(1000, 500))
    codes = [code for code in choice.reason_codes if code.startswith("complexity_")]
    if label is None:
        assert codes == []
        assert [c.key for c in choice.candidates] == CHAT_CHAIN
        assert chosen(choice) == GPT4O
    else:
        expected = {"simple": [MINI, LLAMA], "complex": [CLAUDE, GPT4O]}[label]
        assert codes == [f"complexity_{label}"]
        assert [c.key for c in choice.candidates] == expected
        assert chosen(choice) == expected[0]
        assert fallback_keys(choice) == expected[1:]


def test_classify_complexity_without_rules_or_signals_is_none():
    simple = ComplexityClass(hints=("simple",), models=("openai/gpt-4o-mini",))
    assert classify_complexity(ask(hints=("simple",)), None, None) is None
    assert classify_complexity(ask(prompt_chars=10), simple, None) is None  # no size rule on the class
    assert classify_complexity(ask(hints=("simple",)), simple, None) == "simple"


# --- 3b. experiments ----------------------------------------------------------------------------------------

def ab_route(sticky_by: str = "tenant", weights: tuple[int, int] = (30, 70)) -> dict[str, Any]:
    return {"name": "summaries-ab", "match": {"feature": "summarize"}, "primary": name(MINI),
            "fallbacks": [name(FLASH)],
            "experiment": {"name": "mini-vs-flash", "sticky_by": sticky_by, "arms": [
                {"name": "mini", "model": name(MINI), "weight": weights[0]},
                {"name": "flash", "model": name(FLASH), "weight": weights[1]}]}}


ARM_MODEL = {"mini": MINI, "flash": FLASH}


def test_experiment_arms_through_decide_follow_the_weights_within_four_sigma():
    state = state_for(make_policy(ab_route()), healthy())
    n, flash = 4000, 0
    for i in range(n):
        choice = decide(ask(tenant=f"tenant-{i}", feature="summarize"), state, f"d-{i}", NOW)
        assert choice.experiment == "mini-vs-flash"
        assert EXPERIMENT_ARM in choice.reason_codes
        assert chosen(choice) == ARM_MODEL[choice.arm]
        assert fallback_keys(choice) == [k for k in (MINI, FLASH) if k != ARM_MODEL[choice.arm]]
        flash += choice.arm == "flash"
    assert within_binomial_bounds(flash, n, 0.7), flash


def test_an_experiment_sticky_by_tenant_gives_each_tenant_one_arm_whatever_the_session():
    state = state_for(make_policy(ab_route()), healthy())
    arms_seen = set()
    for i in range(200):
        arms = {decide(ask(tenant=f"tenant-{i}", feature="summarize", session_id=f"s-{j}"), state, f"d-{i}-{j}",
                       NOW).arm for j in range(5)}
        assert len(arms) == 1
        arms_seen |= arms
    assert arms_seen == {"mini", "flash"}


def test_an_experiment_sticky_by_session_splits_one_tenants_sessions_and_keeps_each_session():
    state = state_for(make_policy(ab_route("session", (50, 50))), healthy())
    n = 4000
    arms = [decide(ask(feature="summarize", session_id=f"s-{i}"), state, f"d-{i}", NOW).arm for i in range(n)]
    assert within_binomial_bounds(arms.count("flash"), n, 0.5), arms.count("flash")
    for i in range(100):
        again = decide(ask(tenant=f"other-{i}", feature="summarize", session_id=f"s-{i}"), state, "x", NOW)
        assert again.arm == arms[i]


def test_an_experiment_sticky_by_session_falls_back_to_the_tenant_without_a_session():
    by_session = state_for(make_policy(ab_route("session")), healthy())
    by_tenant = state_for(make_policy(ab_route("tenant")), healthy())
    for i in range(200):
        request = ask(tenant=f"tenant-{i}", feature="summarize", session_id="")
        assert decide(request, by_session, "d", NOW).arm == decide(request, by_tenant, "d", NOW).arm


# --- 3c. canaries -------------------------------------------------------------------------------------------

CANARY_ROUTE = chat_route(fallbacks=[name(CLAUDE), name(O3)], canary={  # o3 leaves the chain unless canaried
    "model": name(O3), "started_at": T0.isoformat(), "stages": [10, 50, 100], "stage_duration_s": 600,
    "min_samples": 50, "max_error_rate": 0.1, "max_p95_ms": 30000,
})


def canary_share(state: RoutingState, now: dt.datetime, n: int) -> tuple[int, dict[str, set[str]]]:
    """How many of n tenants get the canary now, and which tenants landed in which arm."""
    in_canary, arms = 0, {"canary": set(), "baseline": set()}
    for i in range(n):
        tenant = f"tenant-{i}"
        choice = decide(ask(tenant=tenant), state, f"d-{i}", now)
        assert choice.experiment == "canary:chat"
        arms[choice.arm].add(tenant)
        if choice.arm == "canary":
            assert chosen(choice) == O3
            assert CANARY in choice.reason_codes
            assert fallback_keys(choice) == [GPT4O, CLAUDE]
            in_canary += 1
        else:
            assert chosen(choice) == GPT4O
            assert CANARY not in choice.reason_codes
            assert O3 not in [c.key for c in choice.candidates]
    return in_canary, arms


def test_a_canary_gets_its_stage_share_of_tenants_and_is_promoted_on_an_injected_clock():
    state = state_for(make_policy(CANARY_ROUTE), healthy(at(1)))

    hits, first = canary_share(state, at(1), 4000)
    assert within_binomial_bounds(hits, 4000, 0.10), hits

    state.rows = healthy(at(601))  # 600 s with 100 calls: on to 50 %
    hits, second = canary_share(state, at(601), 4000)
    assert within_binomial_bounds(hits, 4000, 0.50), hits
    assert first["canary"] <= second["canary"]  # a tenant once in the canary stays in it

    state.rows = healthy(at(1201))
    hits, _ = canary_share(state, at(1201), 500)
    assert hits == 500  # the 100 % stage

    state.rows = healthy(at(1801))
    for i in range(200):
        choice = decide(ask(tenant=f"tenant-{i}"), state, f"d-{i}", at(1801))
        assert chosen(choice) == O3
        assert choice.reason_codes == (PRIMARY, CANARY_PROMOTED)
        assert (choice.experiment, choice.arm) == (None, None)
        assert fallback_keys(choice) == [GPT4O, CLAUDE]


def test_a_canary_holds_its_stage_while_its_model_has_too_few_calls():
    state = state_for(make_policy(CANARY_ROUTE), healthy(at(1)))
    canary_share(state, at(1), 10)
    state.rows = {**healthy(at(700)), O3: live_row(O3, samples=10, at=at(700))}
    hits, _ = canary_share(state, at(700), 4000)
    assert within_binomial_bounds(hits, 4000, 0.10), hits


@pytest.mark.parametrize("bad", [{"error_rate": 0.15}, {"p95": 31000.0}])
def test_a_canary_is_rolled_back_on_errors_or_latency_and_stays_rolled_back(bad):
    state = state_for(make_policy(CANARY_ROUTE), healthy(at(1)))
    canary_share(state, at(1), 10)

    state.rows = {**healthy(at(120)), O3: live_row(O3, at=at(120), **bad)}
    for i in range(300):
        choice = decide(ask(tenant=f"tenant-{i}"), state, f"d-{i}", at(120))
        assert chosen(choice) == GPT4O
        assert choice.reason_codes == (PRIMARY, CANARY_ROLLED_BACK)
        assert [c.key for c in choice.candidates] == [GPT4O, CLAUDE]
        assert (choice.experiment, choice.arm) == (None, None)

    state.rows = healthy(at(5000))  # a healthy row later does not bring a rolled-back canary back
    choice = decide(ask(tenant="tenant-1"), state, "d", at(5000))
    assert CANARY_ROLLED_BACK in choice.reason_codes
    assert O3 not in [c.key for c in choice.candidates]


# --- 3d. allowed models and request errors ------------------------------------------------------------------

def test_allowed_models_restrict_the_route_chain_in_route_order():
    choice = run(make_policy(chat_route()), request=ask(allowed_models=(MINI, CLAUDE)))
    assert [c.key for c in choice.candidates] == [CLAUDE, MINI]
    assert chosen(choice) == CLAUDE
    assert choice.reason_code == PRIMARY
    assert fallback_keys(choice) == [MINI]


def test_allowed_models_form_the_chain_of_a_route_without_models_in_the_callers_order():
    policy = make_policy({"name": "default", "strategy": "priority"})
    choice = run(policy, request=ask(service="search", allowed_models=(FLASH, MINI, GPT4O)))
    assert choice.route == "default"
    assert [c.key for c in choice.candidates] == [FLASH, MINI, GPT4O]
    assert chosen(choice) == FLASH
    assert fallback_keys(choice) == [MINI, GPT4O]


def test_allowed_models_outside_the_route_are_an_error_naming_the_route():
    with pytest.raises(PolicyInputError) as raised:
        run(make_policy(chat_route()), request=ask(allowed_models=(FLASH,)))
    assert (raised.value.field, raised.value.rule) == ("allowed_models", "in_route")
    assert "none of google/flash is among route chat's models" in raised.value.message


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"tenant": ""}, "tenant", "required"),
        ({"allowed_models": (("", "gpt-4o"),)}, "allowed_models[0].provider", "required"),
        ({"allowed_models": (MINI, ("openai", ""))}, "allowed_models[1].model", "required"),
        ({"allowed_models": (MINI, GPT4O, MINI)}, "allowed_models[2]", "unique"),
        ({"latency_slo_ms": -1.0}, "latency_slo_ms", "non_negative"),
        ({"latency_slo_ms": math.nan}, "latency_slo_ms", "non_negative"),
        ({"latency_slo_ms": math.inf}, "latency_slo_ms", "non_negative"),
        ({"expected_input_tokens": -1}, "expected_input_tokens", "non_negative"),
        ({"expected_output_tokens": 10**12 + 1}, "expected_output_tokens", "at_most"),
        ({"prompt_chars": -5}, "prompt_chars", "non_negative"),
    ],
)
def test_bad_requests_name_the_field_and_the_rule(fields, field, rule):
    with pytest.raises(PolicyInputError) as raised:
        run(make_policy(chat_route()), request=ask(**fields))
    assert (raised.value.field, raised.value.rule) == (field, rule)
    assert str(raised.value).startswith(f"{field}: ")


def test_a_zero_slo_means_the_routes():
    choice = run(make_policy(chat_route(latency_slo_ms=550)), request=ask(latency_slo_ms=0))
    assert chosen(choice) == O3  # gpt-4o 600 ms and claude 700 ms are over the route's 550 ms
    assert verdicts(choice)[GPT4O] == "p95 600 ms > SLO 550 ms"


def test_default_tokens_fill_only_zero_counts_and_a_known_prompt_size_comes_first():
    request = ask(expected_input_tokens=0, expected_output_tokens=7).with_default_tokens(1000, 500)
    assert (request.expected_input_tokens, request.expected_output_tokens) == (1000, 7)
    from_prompt = ask(expected_input_tokens=0, prompt_chars=4001).with_default_tokens(1000, 500)
    assert from_prompt.expected_input_tokens == 1001  # ceil(4001 / 4)
    kept = ask(expected_input_tokens=42, expected_output_tokens=0).with_default_tokens(1000, 500)
    assert (kept.expected_input_tokens, kept.expected_output_tokens) == (42, 500)


# --- 4a. capability filters ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("fields", "ruled_out", "winner"),
    [
        ({"requires_structured_output": True}, {CLAUDE: "no strict structured output"}, GPT4O),
        ({"requires_vision": True}, {O3: "no vision"}, GPT4O),
        ({"region": "eu"}, {CLAUDE: "not in region eu (us)", O3: "not in region eu (us)"}, GPT4O),
        ({"expected_input_tokens": 150_000},
         {GPT4O: "150,500 tokens > context window 128,000", MINI: "150,500 tokens > context window 128,000"}, CLAUDE),
    ],
)
def test_capability_filters_rule_models_out_of_the_choice_and_the_fallbacks(fields, ruled_out, winner):
    choice = run(make_policy(chat_route()), request=ask(**fields))
    assert chosen(choice) == winner
    assert choice.reason_code == (PRIMARY if winner == GPT4O else PRIMARY_SKIPPED)
    for key, verdict in ruled_out.items():
        assert verdicts(choice)[key] == verdict
        assert eligible(choice)[key] is False
        assert key not in fallback_keys(choice)
    assert fallback_keys(choice) == [k for k in CHAT_CHAIN if k not in ruled_out and k != winner]


def test_a_model_listing_no_regions_serves_any_region():
    policy = make_policy(chat_route(primary=name(CLAUDE), fallbacks=[name(FLASH)]))
    choice = run(policy, request=ask(region="ap"))
    assert chosen(choice) == FLASH
    assert verdicts(choice)[CLAUDE] == "not in region ap (us)"


def test_a_model_outside_the_catalog_cannot_promise_a_capability():
    policy = make_policy()
    mistral = ("mistral", "small")
    choice = run(policy, request=ask(allowed_models=(mistral, MINI), requires_vision=True))
    assert chosen(choice) == MINI
    assert verdicts(choice)[mistral] == "not in the policy catalog, so it cannot promise vision"
    plain = run(policy, request=ask(allowed_models=(mistral,)))
    assert chosen(plain) == mistral


@pytest.mark.parametrize(
    ("allowed", "fields", "field"),
    [
        ((CLAUDE,), {"requires_structured_output": True}, "requires_structured_output"),
        ((O3,), {"requires_vision": True}, "requires_vision"),
        ((CLAUDE, O3), {"region": "eu"}, "region"),
        ((MINI,), {"expected_input_tokens": 200_000}, "expected_input_tokens"),
    ],
)
def test_no_model_able_to_serve_the_request_is_an_error_naming_the_need(allowed, fields, field):
    with pytest.raises(PolicyInputError) as raised:
        run(make_policy(chat_route()), request=ask(allowed_models=allowed, **fields))
    assert (raised.value.field, raised.value.rule) == (field, "capability")
    assert raised.value.message.startswith(f"no model on route chat can serve this request ({name(allowed[0])}: ")


# --- 4b. circuit breakers -----------------------------------------------------------------------------------

def open_breaker(board: BreakerBoard, key: tuple[str, str], when: dt.datetime) -> None:
    for _ in range(3):
        board.record_outcome(key, "server_error", when)


def test_an_open_breaker_skips_the_model_and_keeps_it_out_of_the_fallbacks():
    board = BreakerBoard(BreakerConfig())
    open_breaker(board, GPT4O, NOW - dt.timedelta(seconds=5))
    choice = run(make_policy(chat_route()), breakers=board)

    assert chosen(choice) == CLAUDE
    assert choice.reason_codes == (PRIMARY_SKIPPED,)
    assert choice.reason.startswith("openai/gpt-4o skipped (breaker open); anthropic/claude is the next on route chat")
    assert choice.candidates[0].breaker_state == "open"
    assert verdicts(choice)[GPT4O] == "breaker open"
    assert eligible(choice)[GPT4O] is False
    assert fallback_keys(choice) == [O3, MINI]


def test_a_half_open_breaker_lets_exactly_one_probe_through():
    board = BreakerBoard(BreakerConfig(open_s=30, probe_timeout_s=30))
    open_breaker(board, GPT4O, NOW - dt.timedelta(seconds=31))
    policy = make_policy(chat_route())

    probe = run(policy, breakers=board, now=NOW)
    assert chosen(probe) == GPT4O
    assert probe.reason_codes == (PRIMARY, BREAKER_PROBE)
    assert probe.candidates[0].breaker_state == "half_open"

    for seconds in (0, 1, 10):
        later = run(policy, breakers=board, now=NOW + dt.timedelta(seconds=seconds))
        assert chosen(later) == CLAUDE
        assert later.reason_codes == (PRIMARY_SKIPPED,)
        assert verdicts(later)[GPT4O] == "breaker half_open"
        assert GPT4O not in fallback_keys(later)

    board.record_outcome(GPT4O, "ok", NOW + dt.timedelta(seconds=12))
    closed = run(policy, breakers=board, now=NOW + dt.timedelta(seconds=13))
    assert chosen(closed) == GPT4O
    assert closed.reason_codes == (PRIMARY,)
    assert closed.candidates[0].breaker_state == "closed"


def test_a_failed_probe_reopens_the_breaker_and_an_unanswered_probe_expires():
    board = BreakerBoard(BreakerConfig(open_s=30, probe_timeout_s=30))
    open_breaker(board, GPT4O, NOW - dt.timedelta(seconds=31))
    policy = make_policy(chat_route())

    assert BREAKER_PROBE in run(policy, breakers=board, now=NOW).reason_codes
    board.record_outcome(GPT4O, "timeout", NOW + dt.timedelta(seconds=2))
    reopened = run(policy, breakers=board, now=NOW + dt.timedelta(seconds=3))
    assert verdicts(reopened)[GPT4O] == "breaker open"

    again = run(policy, breakers=board, now=NOW + dt.timedelta(seconds=33))  # open for 30 s: half-open again
    assert again.reason_codes == (PRIMARY, BREAKER_PROBE)
    silent = run(policy, breakers=board, now=NOW + dt.timedelta(seconds=63))  # that probe never reported back
    assert silent.reason_codes == (PRIMARY, BREAKER_PROBE)


def test_with_every_breaker_open_the_model_closest_to_its_probe_is_answered():
    board = BreakerBoard(BreakerConfig(open_s=30))
    for key, ago in ((GPT4O, 20), (CLAUDE, 25), (O3, 10), (MINI, 5)):
        open_breaker(board, key, NOW - dt.timedelta(seconds=ago))
    choice = run(make_policy(chat_route()), breakers=board)

    assert chosen(choice) == CLAUDE
    assert choice.reason_codes == (ALL_BREAKERS_OPEN,)
    assert choice.reason == ("every usable model's circuit breaker is open; anthropic/claude is the first to allow a "
                             "probe again (in 5 s)")
    assert choice.fallbacks == ()
    assert not any(eligible(choice).values())
    assert verdicts(choice) == {GPT4O: "breaker open", CLAUDE: "chosen", O3: "breaker open", MINI: "breaker open"}
    assert {c.breaker_state for c in choice.candidates} == {"open"}


def test_a_live_error_rate_trips_a_closed_breaker():
    board = BreakerBoard(BreakerConfig(error_rate_trip=0.5, error_rate_min_samples=20))
    rows = {**healthy(), GPT4O: live_row(GPT4O, samples=40, error_rate=0.6)}
    choice = run(make_policy(chat_route()), rows, breakers=board)

    assert chosen(choice) == CLAUDE
    assert verdicts(choice)[GPT4O] == "breaker open"
    assert choice.candidates[0].breaker_state == "open"
    status = board.status(GPT4O, NOW)
    assert status["state"] == "open"
    assert status["opened_reason"] == "live error rate 60% over 40 calls >= 50%"


def test_a_high_error_rate_on_few_calls_or_a_stale_row_trips_no_breaker():
    board = BreakerBoard(BreakerConfig(error_rate_trip=0.5, error_rate_min_samples=20))
    few = {**healthy(), GPT4O: live_row(GPT4O, samples=10, error_rate=0.6)}
    choice = run(make_policy(chat_route()), few, breakers=board)
    assert verdicts(choice)[GPT4O] == "error rate 60.0% > 20% over 10 calls"  # the live filter, not the breaker
    assert choice.candidates[0].breaker_state == "closed"

    stale = {**healthy(), GPT4O: live_row(GPT4O, samples=400, error_rate=0.9, age_s=61)}
    choice = run(make_policy(chat_route()), stale, breakers=board)
    assert board.state(GPT4O, NOW) == "closed"
    assert chosen(choice) == GPT4O


# --- 4c/5. live data: staleness, SLO and error rate ---------------------------------------------------------

def catalog_prices(calls: list | None = None):
    def static_prices(key: tuple[str, str], when: dt.datetime) -> tuple[Decimal, Decimal] | None:
        if calls is not None:
            calls.append((key, when))
        facts = MODEL_FACTS.get(key)
        return (Decimal(facts[1]), Decimal(facts[2])) if facts else None
    return static_prices


def test_stale_rows_fall_back_to_the_static_order_with_catalog_prices():
    rows = {key: live_row(key, age_s=61) for key in CHAT_CHAIN}
    rows[GPT4O] = live_row(GPT4O, age_s=75, p95=9000)  # a stale p95 over the SLO rules nothing out
    choice = run(make_policy(chat_route()), rows, static_prices=catalog_prices())

    assert chosen(choice) == GPT4O
    assert choice.reason_codes == (STATIC_POLICY,)
    assert choice.static_fallback is True
    assert choice.live_table_age_ms == 61_000
    assert choice.reason == ("the live rows of the 4 models are older than 60 s; static policy order on route chat "
                             "answers openai/gpt-4o")
    assert fallback_keys(choice) == [CLAUDE, O3, MINI]
    assert verdicts(choice) == {GPT4O: "chosen", CLAUDE: "no fresh live data", O3: "no fresh live data",
                                MINI: "no fresh live data"}
    assert all(c.has_live_data is False and c.p95_latency_ms is None and c.sample_count == 0
               for c in choice.candidates)
    assert {c.key: c.estimated_cost_usd for c in choice.candidates} == {k: COST[k] for k in CHAT_CHAIN}


def test_never_any_rows_is_no_live_data_not_a_static_fallback():
    choice = run(make_policy(chat_route()), {})
    assert chosen(choice) == GPT4O
    assert choice.reason_codes == (NO_LIVE_DATA,)
    assert (choice.static_fallback, choice.live_table_age_ms) == (False, None)
    assert choice.reason == ("none of the 4 models has live data; static policy order on route chat answers "
                             "openai/gpt-4o")
    assert set(verdicts(choice).values()) == {"chosen", "no live data"}
    assert choice.estimated_cost_usd is None
    assert "cost unknown" not in choice.reason


def test_without_live_data_a_cheapest_route_ranks_by_catalog_price():
    policy = make_policy({"name": "chat", "match": {"service": "chat"}, "strategy": "cheapest",
                          "primary": name(GPT4O), "fallbacks": [name(MINI), name(O3)]})
    calls: list = []
    choice = run(policy, {}, static_prices=catalog_prices(calls))
    assert chosen(choice) == MINI
    assert choice.reason_code == NO_LIVE_DATA
    assert fallback_keys(choice) == [O3, GPT4O]
    assert [step.estimated_cost_usd for step in choice.fallbacks] == [COST[O3], COST[GPT4O]]
    assert {when for _, when in calls} == {NOW}


def test_one_fresh_row_means_live_routing_and_rows_with_few_calls_are_not_measured():
    rows = {GPT4O: live_row(GPT4O, age_s=120), CLAUDE: live_row(CLAUDE, samples=3, p95=5000)}
    choice = run(make_policy(chat_route()), rows)
    assert choice.static_fallback is False
    assert choice.reason_code == PRIMARY
    assert choice.live_table_age_ms == 0
    by_key = {c.key: c for c in choice.candidates}
    assert by_key[CLAUDE].has_live_data is False  # 3 calls < min_samples 5: its p95 judges nothing
    assert by_key[CLAUDE].eligible is True
    assert by_key[CLAUDE].sample_count == 3


def test_a_primary_over_the_slo_is_skipped_and_becomes_the_last_fallback():
    rows = {**healthy(), GPT4O: live_row(GPT4O, p95=1200)}
    choice = run(make_policy(chat_route()), rows)
    assert chosen(choice) == CLAUDE
    assert choice.reason_code == PRIMARY_SKIPPED
    assert choice.reason == ("openai/gpt-4o skipped (p95 1200 ms > SLO 1000 ms); anthropic/claude is the next on "
                             "route chat (p95 700 ms, est. $0.0105)")
    assert verdicts(choice)[GPT4O] == "p95 1200 ms > SLO 1000 ms"
    assert fallback_keys(choice) == [O3, MINI, GPT4O]


@pytest.mark.parametrize(
    ("route_slo", "request_slo", "primary_p95", "winner"),
    [
        (None, 0, 1000.0, GPT4O),  # exactly at the defaults' 1000 ms is within it
        (None, 0, 1000.5, CLAUDE),
        (500, 0, 600.0, O3),  # the route's SLO beats the defaults'; claude 700 and gpt-4o 600 are over it
        (500, 650, 600.0, GPT4O),  # the caller's SLO beats the route's
    ],
)
def test_the_slo_comes_from_the_request_then_the_route_then_the_defaults(route_slo, request_slo, primary_p95, winner):
    route = chat_route(latency_slo_ms=route_slo) if route_slo else chat_route()
    rows = {**healthy(), GPT4O: live_row(GPT4O, p95=primary_p95)}
    choice = run(make_policy(route), rows, request=ask(latency_slo_ms=request_slo))
    assert chosen(choice) == winner


def test_a_model_over_the_error_rate_limit_is_skipped():
    rows = {**healthy(), GPT4O: live_row(GPT4O, samples=10, error_rate=0.3)}
    choice = run(make_policy(chat_route()), rows)
    assert chosen(choice) == CLAUDE
    assert verdicts(choice)[GPT4O] == "error rate 30.0% > 20% over 10 calls"
    assert choice.candidates[0].breaker_state == "closed"


def test_when_no_model_meets_the_slo_the_lowest_p95_wins_and_fallbacks_go_by_p95():
    rows = {GPT4O: live_row(GPT4O, p95=3000), CLAUDE: live_row(CLAUDE, p95=1500), O3: live_row(O3, p95=2500),
            MINI: live_row(MINI, p95=1200, samples=10, error_rate=0.3)}
    choice = run(make_policy(chat_route()), rows)
    assert chosen(choice) == MINI
    assert choice.reason_code == NO_MODEL_MEETS_SLO
    assert choice.reason == ("none of the 4 usable models passes the live checks (4 with live data, SLO 1000 ms); "
                             "openai/gpt-4o-mini has the lowest p95 (p95 1200 ms, est. $0.00045)")
    assert fallback_keys(choice) == [CLAUDE, O3, GPT4O]
    assert not any(eligible(choice).values())


# --- 5. strategy --------------------------------------------------------------------------------------------

def test_priority_takes_the_primary_cheapest_takes_the_cheapest_within_the_slo():
    priority = run(make_policy(chat_route()))
    assert (chosen(priority), priority.reason_codes) == (GPT4O, (PRIMARY,))
    assert fallback_keys(priority) == [CLAUDE, O3, MINI]
    assert verdicts(priority) == {GPT4O: "chosen", CLAUDE: "costlier: $0.0105 > $0.0075",
                                  O3: "fallback after openai/gpt-4o", MINI: "fallback after openai/gpt-4o"}

    cheapest = run(make_policy(chat_route(strategy="cheapest")))
    assert (chosen(cheapest), cheapest.reason_codes) == (MINI, (CHEAPEST_WITHIN_SLO,))
    assert cheapest.reason == ("openai/gpt-4o-mini is the cheapest of 4 models within the 1000 ms p95 SLO "
                               "(p95 400 ms, est. $0.00045)")
    assert fallback_keys(cheapest) == [O3, GPT4O, CLAUDE]
    assert verdicts(cheapest) == {GPT4O: "costlier: $0.0075 > $0.00045", CLAUDE: "costlier: $0.0105 > $0.00045",
                                  O3: "costlier: $0.0033 > $0.00045", MINI: "chosen"}
    assert all(eligible(cheapest).values())


def test_cheapest_skips_models_over_the_slo_and_unmeasured_ones_but_keeps_them_as_fallbacks():
    rows = {**healthy(), MINI: live_row(MINI, p95=1500)}
    rows.pop(O3)
    choice = run(make_policy(chat_route(strategy="cheapest")), rows, static_prices=catalog_prices())
    assert chosen(choice) == GPT4O
    assert choice.reason_code == CHEAPEST_WITHIN_SLO
    assert "cheapest of 2 models within" in choice.reason
    assert fallback_keys(choice) == [CLAUDE, MINI, O3]  # passing by price, then the rest by p95 (unmeasured last)


def test_cheapest_breaks_cost_ties_by_p95_then_route_order():
    same = ("1", "1")
    rows = {GPT4O: live_row(GPT4O, prices=same, p95=500), CLAUDE: live_row(CLAUDE, prices=same, p95=400),
            O3: live_row(O3, prices=same, p95=400), MINI: live_row(MINI, prices=same, p95=450)}
    choice = run(make_policy(chat_route(strategy="cheapest")), rows)
    assert chosen(choice) == CLAUDE
    assert fallback_keys(choice) == [O3, MINI, GPT4O]


# --- cost estimation ----------------------------------------------------------------------------------------

def test_costs_are_exact_decimals_for_the_choice_the_fallbacks_and_the_candidates():
    choice = run(make_policy(chat_route()))
    assert isinstance(choice.estimated_cost_usd, Decimal)
    assert choice.estimated_cost_usd == Decimal("0.0075")
    assert choice.estimated_cost_usd.as_tuple().exponent == -12
    assert [step.estimated_cost_usd for step in choice.fallbacks] == [COST[CLAUDE], COST[O3], COST[MINI]]
    assert {c.key: c.estimated_cost_usd for c in choice.candidates} == {k: COST[k] for k in CHAT_CHAIN}
    # 0.1 + 0.2 as binary floats is 0.30000000000000004; exact decimals make it 0.3
    assert estimate_cost(live_row(MINI, prices=("100000", "200000")), 1, 1) == Decimal("0.3")


@pytest.mark.parametrize(
    ("input_price", "expected"),
    [("0.0000005", "0E-12"), ("0.0000015", "2E-12"), ("0.0000025", "2E-12"), ("0.0000035", "4E-12"),
     ("0.0000025000001", "3E-12")],
)
def test_prices_round_once_half_even_to_twelve_places(input_price, expected):
    cost = estimate_cost(live_row(MINI, prices=(input_price, "0")), 1, 0)
    assert cost == Decimal(expected)
    assert cost.as_tuple().exponent == -12


def test_without_prices_the_observed_cost_per_token_estimates_rounded_half_even():
    thirds = live_row(MINI, prices=None, cost_usd="1", tokens=3)
    assert estimate_cost(thirds, 1, 0) == Decimal("0.333333333333")
    assert estimate_cost(live_row(MINI, prices=None, cost_usd="2", tokens=3), 1, 0) == Decimal("0.666666666667")
    # 0.000000000005 / 2 = 2.5e-12 per token: a tie at the 13th place goes to the even neighbour
    assert estimate_cost(live_row(MINI, prices=None, cost_usd="0.000000000005", tokens=2), 1, 0) == Decimal("2E-12")
    assert estimate_cost(live_row(MINI, prices=None, cost_usd="0.000000000007", tokens=2), 1, 0) == Decimal("4E-12")
    # 0.03 / 90,000 x 1,500 = 0.0005 exactly
    assert estimate_cost(live_row(MINI, prices=None, cost_usd="0.03", tokens=90_000), 1000, 500) == Decimal("0.0005")
    one_price = live_row(MINI, prices=None, cost_usd="1.2", tokens=100_000)
    one_price["input_price_per_mtok"] = Decimal("2.5")  # one price alone is no price
    assert estimate_cost(one_price, 1000, 500) == Decimal("0.018")
    assert estimate_cost(live_row(MINI, prices=None, tokens=0), 1000, 500) is None


def test_catalog_prices_stand_in_when_no_fresh_row_prices_the_model_and_live_prices_win_otherwise():
    rows = {GPT4O: live_row(GPT4O), MINI: live_row(MINI, prices=("100", "100"), age_s=3600)}
    calls: list = []
    choice = run(make_policy(chat_route(primary=name(GPT4O), fallbacks=[name(MINI), name(O3)])), rows,
                 static_prices=catalog_prices(calls))
    by_key = {c.key: c.estimated_cost_usd for c in choice.candidates}
    assert by_key == {GPT4O: COST[GPT4O], MINI: COST[MINI], O3: COST[O3]}
    assert sorted(key for key, _ in calls) == [MINI, O3]  # the fresh row's own prices won for gpt-4o


def test_an_unknown_cost_is_never_zero_and_the_reason_says_so():
    choice = run(make_policy(chat_route()), {GPT4O: live_row(GPT4O, prices=None, tokens=0)})
    assert choice.estimated_cost_usd is None
    assert choice.reason == "openai/gpt-4o is route chat's first choice (p95 600 ms, cost unknown)"


@settings(max_examples=200, deadline=None)
@given(
    input_price=st.decimals(min_value=0, max_value=1000, places=9),
    output_price=st.decimals(min_value=0, max_value=1000, places=9),
    input_tokens=st.integers(min_value=0, max_value=10**12),
    output_tokens=st.integers(min_value=0, max_value=10**12),
)
def test_cost_is_the_exact_value_rounded_half_even_to_twelve_places(input_price, output_price, input_tokens,
                                                                     output_tokens):
    exact = (Fraction(input_tokens) * Fraction(input_price) + Fraction(output_tokens) * Fraction(output_price)) / 10**6
    expected = Fraction(round(exact * 10**12), 10**12)  # round() on a Fraction rounds half to even
    assert Fraction(cost_from_prices(input_price, output_price, input_tokens, output_tokens)) == expected


# --- 7. shadow ----------------------------------------------------------------------------------------------

def test_the_shadow_is_sampled_at_its_rate_per_decision_id():
    state = state_for(make_policy(chat_route(shadow={"model": name(FLASH), "sample_rate": 0.25})), healthy())
    n, sampled_ids = 4000, []
    for i in range(n):
        choice = decide(ask(), state, f"decision-{i}", NOW)
        if choice.shadow is not None:
            assert choice.shadow == FLASH
            assert choice.reason_codes == (PRIMARY, SHADOW_SAMPLED)
            sampled_ids.append(f"decision-{i}")
        else:
            assert SHADOW_SAMPLED not in choice.reason_codes
    assert within_binomial_bounds(len(sampled_ids), n, 0.25), len(sampled_ids)
    for decision_id in sampled_ids[:50]:
        assert decide(ask(tenant="someone-else"), state, decision_id, NOW).shadow == FLASH


@pytest.mark.parametrize(("rate", "expected"), [(0.0, 0), (1.0, 300)])
def test_a_shadow_rate_of_zero_never_and_of_one_always_samples(rate, expected):
    state = state_for(make_policy(chat_route(shadow={"model": name(FLASH), "sample_rate": rate})), healthy())
    assert sum(decide(ask(), state, f"d-{i}", NOW).shadow is not None for i in range(300)) == expected


def test_no_shadow_while_a_budget_downgrade_applies():
    route = chat_route(shadow={"model": name(FLASH), "sample_rate": 1.0},
                       budget={"downgrade_at_pct": 80, "downgrade_to_tier": "economy"})
    choice = run(make_policy(route), budget=standing(85.0))
    assert choice.shadow is None
    assert choice.reason_codes == (PRIMARY_SKIPPED, BUDGET_DOWNGRADE, SHADOW_SKIPPED_BUDGET)


def test_the_shadow_is_never_the_chosen_model_nor_behind_an_open_breaker():
    policy = make_policy(chat_route(shadow={"model": name(GPT4O), "sample_rate": 1.0}))
    as_primary = run(policy)
    assert chosen(as_primary) == GPT4O
    assert as_primary.shadow is None
    assert as_primary.reason_codes == (PRIMARY,)

    skipped = run(policy, {**healthy(), GPT4O: live_row(GPT4O, p95=2000)})
    assert chosen(skipped) == CLAUDE
    assert skipped.shadow == GPT4O  # over the SLO for serving, fine for a background comparison

    board = BreakerBoard()
    open_breaker(board, GPT4O, NOW)
    assert run(policy, breakers=board).shadow is None


# --- the decision record ------------------------------------------------------------------------------------

def test_the_decision_record_encodes_with_the_routing_decision_codec_and_round_trips():
    route = chat_route(shadow={"model": name(FLASH), "sample_rate": 1.0}, canary={
        "model": name(O3), "started_at": T0.isoformat(), "stages": [100]})
    request = ask(customer="bigco", session_id="s-1", hints=("x",))
    choice = run(make_policy(route), request=request, budget=standing(42.5))
    record = choice.decision_record(request, "d-1")
    codec = codec_for("routing_decision")

    decoded = codec.decode(codec.encode(record))

    assert decoded == record
    assert decoded["decided_at"] == NOW
    assert (decoded["chosen_provider"], decoded["chosen_model"]) == O3
    assert decoded["reason_codes"] == [PRIMARY, CANARY, SHADOW_SAMPLED]
    assert (decoded["experiment"], decoded["arm"]) == ("canary:chat", "canary")
    assert (decoded["shadow_provider"], decoded["shadow_model"]) == FLASH
    assert decoded["fallbacks"] == ["openai/gpt-4o", "anthropic/claude", "openai/gpt-4o-mini"]
    assert (decoded["budget_status"], decoded["budget_used_pct"]) == ("ok", 42.5)
    assert (decoded["route"], decoded["policy_version"], decoded["customer"], decoded["session_id"]) == (
        "chat", 7, "bigco", "s-1")
    assert decoded["estimated_cost_usd"] == COST[O3]
    assert [c["breaker_state"] for c in decoded["candidates"]] == ["closed"] * 4
    assert decoded["live_table_age_ms"] == 0


def test_a_refusal_and_a_no_live_data_decision_encode_too():
    codec = codec_for("routing_decision")
    refusal = run(make_policy(chat_route()), budget=standing(101.0))
    record = refusal.decision_record(ask(), "d-2")
    decoded = codec.decode(codec.encode(record))
    assert decoded == record
    assert (decoded["chosen_model"], decoded["reason_code"], decoded["budget_status"]) == (
        None, BUDGET_BLOCKED, "block")

    empty = run(make_policy(chat_route()), {})
    decoded = codec.decode(codec.encode(empty.decision_record(ask(request_id=""), "d-3")))
    assert (decoded["request_id"], decoded["budget_status"], decoded["live_table_age_ms"]) == (None, None, None)
    assert decoded["candidates"][1] == {
        "provider": "anthropic", "model": "claude", "p95_latency_ms": None, "error_rate": None,
        "estimated_cost_usd": None, "eligible": True, "verdict": "no live data", "breaker_state": "closed",
    }


def test_the_bundled_policy_routes_its_example_services():
    policy, _ = load_policy_file(BUNDLED_POLICY)
    rows = {key: live_row(key) for key in [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4"),
                                          ("openai", "gpt-4o-mini"), ("google", "gemini-2.0-flash")]}
    support = run(policy, rows, ask(service="support-bot", prompt_chars=5000))
    assert (support.route, chosen(support), support.reason_code) == ("support-chat", ("openai", "gpt-4o"), PRIMARY)
    assert support.retry is not None and support.retry.backoff_ms == (1000, 2000, 4000)
    summaries = run(policy, rows, ask(service="search", feature="summarize"))
    assert (summaries.route, summaries.experiment) == ("summaries-ab", "summarize-mini-vs-flash")
    allowed = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"))
    fallback = run(policy, rows, ask(service="search", allowed_models=allowed))
    assert (fallback.route, chosen(fallback), fallback.reason_code) == (
        "default", ("openai", "gpt-4o-mini"), CHEAPEST_WITHIN_SLO)


def test_each_policy_object_answers_with_its_own_routes_and_models():
    """The engine remembers route lookups and parsed model names per installed policy: a new policy (a file
    reload or SetPolicy) must be read afresh, and going back to an earlier one must find its routes again."""
    first = make_policy(chat_route())
    second = make_policy({**chat_route(), "name": "chat-v2", "primary": name(MINI), "fallbacks": [name(GPT4O)]})
    for _ in range(2):
        before, after = run(first), run(second)
        assert (before.route, chosen(before), [c.model for c in before.candidates]) == (
            "chat", GPT4O, [key[1] for key in CHAT_CHAIN])
        assert (after.route, chosen(after), [c.model for c in after.candidates]) == ("chat-v2", MINI, ["gpt-4o-mini", "gpt-4o"])
    assert run(first, request=ask(service="other", allowed_models=(FLASH,))).route == "__implicit__"


def test_formatting_of_numbers_in_sentences():
    assert format_usd(Decimal("0.000450000000")) == "0.00045"
    assert format_usd(Decimal("100.000000000000")) == "100"
    assert format_usd(Decimal("0E-12")) == "0"
    # remembered per amount: equal amounts in any exponent print alike, whichever came first
    assert format_usd(Decimal("0.00045")) == format_usd(Decimal("0.000450")) == "0.00045"
    assert format_usd(Decimal("-0")) == format_usd(Decimal("0.000")) == "0"
    assert format_ms(412.0) == "412"
    assert format_ms(412.46) == "412.5"


# --- property: whatever the rows and breakers, a decision is internally consistent ---------------------------

row_strategy = st.one_of(st.none(), st.fixed_dictionaries({
    "p95": st.floats(min_value=1, max_value=3000, allow_nan=False),
    "samples": st.integers(min_value=0, max_value=200),
    "error_rate": st.sampled_from([0.0, 0.05, 0.3, 0.7]),
    "age_s": st.sampled_from([0.0, 30.0, 90.0]),
}))


@settings(max_examples=150, deadline=None)
@given(
    specs=st.lists(row_strategy, min_size=4, max_size=4),
    open_keys=st.sets(st.sampled_from(CHAT_CHAIN)),
    strategy=st.sampled_from(["priority", "cheapest"]),
    used_pct=st.one_of(st.none(), st.floats(min_value=0, max_value=99)),
)
def test_every_decision_is_consistent(specs, open_keys, strategy, used_pct):
    rows = {key: live_row(key, **spec) for key, spec in zip(CHAT_CHAIN, specs) if spec is not None}
    board = BreakerBoard()
    for key in open_keys:
        open_breaker(board, key, NOW)
    policy = make_policy(chat_route(strategy=strategy, shadow={"model": name(MINI), "sample_rate": 0.5}))
    choice = run(policy, rows, breakers=board, budget=standing(used_pct) if used_pct is not None else None)

    keys = [c.key for c in choice.candidates]
    assert keys == CHAT_CHAIN
    assert [c.verdict for c in choice.candidates].count("chosen") == 1
    assert verdicts(choice)[chosen(choice)] == "chosen"
    assert choice.reason_codes[0] == choice.reason_code
    assert len(set(choice.reason_codes)) == len(choice.reason_codes)
    assert chosen(choice) not in fallback_keys(choice)
    assert len(set(fallback_keys(choice))) == len(choice.fallbacks)
    assert not set(fallback_keys(choice)) & open_keys
    assert choice.shadow != chosen(choice)
    if choice.reason_code == ALL_BREAKERS_OPEN:
        assert choice.fallbacks == ()
    else:
        assert chosen(choice) not in open_keys
    if choice.downgraded:
        assert all(policy.tier_rank(k) >= policy.tiers.index(choice.downgrade_tier)
                   for k in [chosen(choice), *fallback_keys(choice)])
    by_key = {c.key: c for c in choice.candidates}
    assert choice.estimated_cost_usd == by_key[chosen(choice)].estimated_cost_usd
