"""The policy engine: which model a request gets, its fallbacks, shadow, experiment arm and every reason.

Plain Python on purpose (no gRPC, no Kafka) so every rule is tested on its own and the servicer stays a thin
adapter. Inputs: the request, the installed policy (`policy_config.RoutingPolicy`), the live model rows
(decoded ModelLiveStats records), the tenant's budget standing, the breaker board and the canary tracker.

The order in which rules apply (each adds its reason code to `reason_codes`):
1. Route: the most specific policy route for service/feature (`route`).
2. Budget: at or above the route's refuse threshold (or a budget at status block) the request is refused
   in MANUAL mode (`budget_blocked`); at or above the downgrade threshold the candidates are restricted to
   the downgrade tier or cheaper (`budget_downgrade`, or `budget_downgrade_unavailable` when no candidate
   qualifies).
2b. Limits (with `state.limits`): the tenant's tier quotas and rate limits, peeked, refuse the request when
   spent (`tier_daily_limit` / `tenant_rate_limited`, with a retry-after); per candidate, the tier's model tiers
   (`tier_model_restricted`; none left: `tier_no_allowed_model`) and the model's RPM/TPM (a spent model is not
   eligible: `rate_limited_skip` when another is chosen, `rate_limited_all_models` when none is left). The
   caller spends the limits of the chosen model (see server.RouterServicer._decide_and_charge).
3. Chain: the complexity class's models (`complexity_simple` / `complexity_complex`), else the route's
   primary and fallbacks; an A/B arm's model moves to the front (`experiment_arm`); a canary's model moves to
   the front for its share of tenants (`canary`), for everyone once promoted (`canary_promoted`), and leaves
   the chain once rolled back (`canary_rolled_back`). A request's allowed_models restrict the chain (or
   form it, when the route names no models).
4. Filters per candidate: capabilities (structured output, vision, region, context window), budget tier,
   circuit breaker, and, with fresh live data, p95 within the SLO and error rate within the limit.
5. Choice: `priority` routes take the first candidate that passes (`primary`, or `primary_skipped` when a
   filter ruled the primary out); `cheapest` routes take the cheapest (`cheapest_within_slo`). With no
   candidate passing the live filters the lowest p95 wins (`no_model_meets_slo`); with no fresh live rows the
   static order is used (`static_policy_stale_tables`, or `no_live_data` when there were never rows); with
   every breaker open the one closest to its probe is answered (`all_breakers_open`).
6. Fallbacks: the other candidates that pass capabilities, tier and breaker, passing ones first in the
   route's order (cheapest first on cheapest routes), then by p95; each with the retry policy.
7. Shadow: the route's shadow model, sampled per decision id at its rate (`shadow_sampled`), never while a
   budget downgrade applies (`shadow_skipped_budget`) nor when it is the chosen model or its breaker is open.

Estimated cost, in exact Decimal USD: expected_input_tokens x input_price_per_mtok / 1e6 +
expected_output_tokens x output_price_per_mtok / 1e6 from the live row's list prices; else the window's
observed cost per token; else the price catalog (`static_prices`). Rounded once, half-even, to 12 places.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prismops.gateway_grpc.breakers import BreakerBoard
from prismops.gateway_grpc.limiter import Limiter
from prismops.gateway_grpc.limits import WINDOW
from prismops.gateway_grpc.experiments import CanaryConfig, CanaryTracker, choose_arm, in_canary, sampled
from prismops.gateway_grpc.policy_config import (
    Canary, ComplexityClass, ModelSpec, RetryConfig, Route, RoutingPolicy, model_name, parse_model_ref,
)
from prismops.errors import FieldRuleError
from prismops.finops.budgets import BudgetStanding

CHEAPEST_WITHIN_SLO = "cheapest_within_slo"
PRIMARY = "primary"
PRIMARY_SKIPPED = "primary_skipped"
NO_MODEL_MEETS_SLO = "no_model_meets_slo"
NO_LIVE_DATA = "no_live_data"
STATIC_POLICY = "static_policy_stale_tables"
ALL_BREAKERS_OPEN = "all_breakers_open"
BREAKER_PROBE = "breaker_probe"
BUDGET_BLOCKED = "budget_blocked"
BUDGET_OVER_NOTIFY = "budget_over_notify_only"
BUDGET_DOWNGRADE = "budget_downgrade"
BUDGET_DOWNGRADE_UNAVAILABLE = "budget_downgrade_unavailable"
COMPLEXITY_PREFIX = "complexity_"
EXPERIMENT_ARM = "experiment_arm"
CANARY = "canary"
CANARY_PROMOTED = "canary_promoted"
CANARY_ROLLED_BACK = "canary_rolled_back"
SHADOW_SAMPLED = "shadow_sampled"
SHADOW_SKIPPED_BUDGET = "shadow_skipped_budget"
RATE_LIMITED_SKIP = "rate_limited_skip"
RATE_LIMITED_ALL = "rate_limited_all_models"
TENANT_RATE_LIMITED = "tenant_rate_limited"
TIER_DAILY_LIMIT = "tier_daily_limit"
TIER_RESTRICTED = "tier_model_restricted"
TIER_NO_MODEL = "tier_no_allowed_model"
CONCURRENCY_LIMITED = "concurrency_limited"

MONEY_QUANTUM = decimal.Decimal("1e-12")
MAX_EXPECTED_TOKENS = 10**12
_MONEY_CONTEXT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
_PER_MTOK = decimal.Decimal(1_000_000)
CHARS_PER_TOKEN = 4

ModelKey = tuple[str, str]
StaticPrices = Callable[[ModelKey, dt.datetime], tuple[decimal.Decimal, decimal.Decimal] | None]


class PolicyInputError(FieldRuleError):
    """A routing request the policy cannot answer; the server turns it into INVALID_ARGUMENT."""


@dataclass(frozen=True)
class RoutingRequest:
    """What a caller asks for, independent of the wire format."""

    tenant: str
    service: str
    feature: str
    allowed_models: tuple[ModelKey, ...] = ()
    latency_slo_ms: float = 0.0
    expected_input_tokens: int = 0
    expected_output_tokens: int = 0
    request_id: str = ""
    session_id: str = ""
    task_type: str = ""
    hints: tuple[str, ...] = ()
    prompt_chars: int = 0
    requires_structured_output: bool = False
    requires_vision: bool = False
    region: str = ""
    customer: str = ""

    def with_default_tokens(self, input_tokens: int, output_tokens: int) -> "RoutingRequest":
        """Zero token counts mean "the usual request": the gateway's configured defaults stand in. A known
        prompt size stands in for unknown input tokens first (about four characters a token)."""
        if self.expected_input_tokens and self.expected_output_tokens and self.prompt_chars:
            return self  # nothing to fill in, and `replace` is a measurable part of a Decide
        from_prompt = math.ceil(self.prompt_chars / CHARS_PER_TOKEN) if self.prompt_chars else 0
        return replace(
            self,
            expected_input_tokens=self.expected_input_tokens or from_prompt or input_tokens,
            expected_output_tokens=self.expected_output_tokens or output_tokens,
            # the size the caller actually stated; a default token count must not look like a known prompt size
            prompt_chars=self.prompt_chars or self.expected_input_tokens * CHARS_PER_TOKEN,
        )


@dataclass(frozen=True)
class CandidateVerdict:
    """One model as the engine saw it."""

    provider: str
    model: str
    has_live_data: bool
    p95_latency_ms: float | None
    error_rate: float | None
    sample_count: int
    estimated_cost_usd: decimal.Decimal | None
    eligible: bool
    verdict: str
    breaker_state: str

    @property
    def key(self) -> ModelKey:
        return (self.provider, self.model)


@dataclass(frozen=True)
class RouteStep:
    provider: str
    model: str
    estimated_cost_usd: decimal.Decimal | None
    retry: RetryConfig


@dataclass(frozen=True)
class RoutingChoice:
    """The engine's answer. `provider`/`model` are None only for a refusal (`refused` holds the budget)."""

    provider: str | None
    model: str | None
    reason_code: str
    reason_codes: tuple[str, ...]
    reason: str
    estimated_cost_usd: decimal.Decimal | None
    candidates: tuple[CandidateVerdict, ...]
    decided_at: dt.datetime
    route: str = ""
    policy_version: int = 0
    retry: RetryConfig | None = None
    fallbacks: tuple[RouteStep, ...] = ()
    shadow: ModelKey | None = None
    experiment: str | None = None
    arm: str | None = None
    budget: BudgetStanding | None = None
    budget_status: str = "ok"
    downgraded: bool = False
    downgrade_tier: str | None = None
    static_fallback: bool = False
    live_table_age_ms: int | None = None
    refused: bool = False
    latency_slo_ms: float | None = None
    # "budget" (FAILED_PRECONDITION), "rate" (RESOURCE_EXHAUSTED, retry after `retry_after_s`) or "tier"
    refusal_kind: str = ""
    retry_after_s: float = 0.0
    tenant_tier: str | None = None
    # what this answer was computed from, when the same inputs are bound to give the same answer (see
    # `MemoFacts`); None when the answer also hung on time, chance or state that the facts do not capture
    memo_facts: "MemoFacts | None" = field(default=None, compare=False, repr=False)

    def decision_record(self, request: RoutingRequest, decision_id: str) -> dict[str, Any]:
        """The routing_decision Avro record (schemas/routing_decision.v2.avsc) for this answer."""
        return {
            "decision_id": decision_id,
            "decided_at": self.decided_at,
            "tenant": request.tenant,
            "service": request.service,
            "feature": request.feature,
            "request_id": request.request_id or None,
            "latency_slo_ms": float(self.latency_slo_ms if self.latency_slo_ms is not None else request.latency_slo_ms),
            "chosen_provider": self.provider,
            "chosen_model": self.model,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "candidates": [
                {
                    "provider": c.provider,
                    "model": c.model,
                    "p95_latency_ms": c.p95_latency_ms,
                    "error_rate": c.error_rate,
                    "estimated_cost_usd": c.estimated_cost_usd,
                    "eligible": c.eligible,
                    "verdict": c.verdict,
                    "breaker_state": c.breaker_state,
                }
                for c in self.candidates
            ],
            "reason_codes": list(self.reason_codes),
            "route": self.route,
            "policy_version": self.policy_version,
            "experiment": self.experiment,
            "arm": self.arm,
            "shadow_provider": self.shadow[0] if self.shadow else None,
            "shadow_model": self.shadow[1] if self.shadow else None,
            "fallbacks": [f"{step.provider}/{step.model}" for step in self.fallbacks],
            "budget_status": self.budget_status if self.budget is not None else None,
            "budget_used_pct": self.budget.used_pct if self.budget is not None else None,
            "downgraded": self.downgraded,
            "static_fallback": self.static_fallback,
            "estimated_cost_usd": self.estimated_cost_usd,
            "customer": request.customer or None,
            "session_id": request.session_id or None,
            "live_table_age_ms": self.live_table_age_ms,
        }


@dataclass(frozen=True)
class MemoFacts:
    """The live inputs one answer was computed from, for a caller that remembers answers (the gateway's
    decision memo): the same request, on the same installed policy and budget standing, gets the same answer
    as long as each candidate's live row is still this very row object (the live table replaces rows, it never
    edits one) and still fresh, no breaker has changed state since (every candidate's was closed, and no row
    could trip one), and none of `peeks` (the tenant's and every candidate's rate limits) is spent. Only
    decided_at and live_table_age_ms move with the clock. Answers that also hang on a canary's state, a
    shadow's per-decision sampling, an open or half-open breaker, a spent limit, a stale row or the price
    catalog's date carry no facts."""

    keys: tuple[ModelKey, ...]
    rows: tuple[Mapping[str, Any], ...]
    max_age_s: float
    peeks: tuple[Sequence[Any], ...]


def _memo_facts(work: "_Decision", candidates: list["_Candidate"], chosen: "_Candidate", tokens: int) -> MemoFacts | None:
    route, state, request = work.route, work.state, work.request
    if route.canary is not None or route.shadow is not None:
        return None
    config = state.breakers.config
    for c in candidates:
        row = c.row
        if not c.fresh or row is None or c.breaker_state != "closed" or c.limit_problem is not None:
            return None
        if int(row["sample_count"]) >= config.error_rate_min_samples and \
                float(row["error_rate"]) >= config.error_rate_trip:
            return None  # observing this row again could trip the breaker once its re-arm time has passed
        if estimate_cost(row, request.expected_input_tokens, request.expected_output_tokens) is None:
            return None  # priced from the catalog, which depends on the date
    if chosen.limit_problem is not None:
        return None
    peeks: list[Sequence[Any]] = []
    limits = state.limits
    if limits is not None:
        tenant = limits.tenant_charges(work.policy, request.tenant, tokens)
        if tenant:
            peeks.append(tenant)
        for c in candidates:
            charges = limits.model_charges(work.policy, c.key, tokens)
            if charges:
                peeks.append(charges)
    return MemoFacts(
        keys=tuple(c.key for c in candidates), rows=tuple(c.row for c in candidates),  # type: ignore[misc]
        max_age_s=float(work.policy.defaults.live.max_age_s), peeks=tuple(peeks),
    )


@dataclass
class RoutingState:
    """What the engine reads besides the request: the policy and the gateway's live state."""

    policy: RoutingPolicy
    rows: Mapping[ModelKey, Mapping[str, Any]]
    breakers: BreakerBoard
    canaries: CanaryTracker
    policy_version: int = 0
    budget: BudgetStanding | None = None
    budget_mode: str = "manual"
    static_prices: StaticPrices | None = None
    limits: Limiter | None = None


def validate_request(request: RoutingRequest) -> None:
    """Raise PolicyInputError for the first input the engine cannot work with."""
    if not request.tenant:
        raise PolicyInputError("tenant", "required", "is required: decisions are attributed to a tenant")
    seen: set[ModelKey] = set()
    for index, (provider, model) in enumerate(request.allowed_models):
        if not provider:
            raise PolicyInputError(f"allowed_models[{index}].provider", "required", "is required")
        if not model:
            raise PolicyInputError(f"allowed_models[{index}].model", "required", "is required")
        if (provider, model) in seen:
            raise PolicyInputError(f"allowed_models[{index}]", "unique", f"{provider}/{model} is listed twice")
        seen.add((provider, model))
    slo = request.latency_slo_ms
    if not (isinstance(slo, (int, float)) and math.isfinite(slo) and slo >= 0):
        raise PolicyInputError(
            "latency_slo_ms", "non_negative", f"must be a finite number of milliseconds >= 0 (0: the route's), got {slo}"
        )
    for name in ("expected_input_tokens", "expected_output_tokens", "prompt_chars"):
        value = getattr(request, name)
        if value < 0:
            raise PolicyInputError(name, "non_negative", f"must be >= 0, got {value}")
        if value > MAX_EXPECTED_TOKENS:
            raise PolicyInputError(name, "at_most", f"must be <= {MAX_EXPECTED_TOKENS:,}, got {value:,}")


def estimate_cost(row: Mapping[str, Any], input_tokens: int, output_tokens: int) -> decimal.Decimal | None:
    """Exact estimated USD for the request on this row's model, or None when neither prices nor observed
    tokens give a basis (an unknown cost is never treated as zero)."""
    input_price = row.get("input_price_per_mtok")
    output_price = row.get("output_price_per_mtok")
    if input_price is not None and output_price is not None:
        return cost_from_prices(input_price, output_price, input_tokens, output_tokens)
    observed_tokens = row.get("tokens") or 0
    observed_cost = row.get("cost_usd")
    if observed_tokens <= 0 or observed_cost is None:
        return None
    cost = _MONEY_CONTEXT.divide(
        _MONEY_CONTEXT.multiply(observed_cost, decimal.Decimal(input_tokens + output_tokens)),
        decimal.Decimal(observed_tokens),
    )
    return cost.quantize(MONEY_QUANTUM, context=_MONEY_CONTEXT)


_costs: dict[tuple[decimal.Decimal, decimal.Decimal, int, int], decimal.Decimal] = {}


def cost_from_prices(
    input_price: decimal.Decimal, output_price: decimal.Decimal, input_tokens: int, output_tokens: int
) -> decimal.Decimal:
    """Remembered per prices and token counts: every Decide prices each candidate, mostly with the same few
    list prices and request sizes, and the Decimal arithmetic is a visible part of its time."""
    key = (input_price, output_price, input_tokens, output_tokens)
    cost = _costs.get(key)
    if cost is None:
        total = _MONEY_CONTEXT.add(
            _MONEY_CONTEXT.multiply(decimal.Decimal(input_tokens), input_price),
            _MONEY_CONTEXT.multiply(decimal.Decimal(output_tokens), output_price),
        )
        cost = _remember(_costs, key, _MONEY_CONTEXT.divide(total, _PER_MTOK).quantize(MONEY_QUANTUM, context=_MONEY_CONTEXT))
    return cost


_usd_texts: dict[decimal.Decimal, str] = {}


def format_usd(amount: decimal.Decimal) -> str:
    """Exact, without trailing zeros or exponent: Decimal('0.000450000000') -> '0.00045'. Remembered per
    amount (equal amounts print alike): a Decide prints the same few estimates into its reason and response."""
    text = _usd_texts.get(amount)
    if text is None:
        text = format(amount.normalize(context=_MONEY_CONTEXT), "f")
        text = _remember(_usd_texts, amount, "0" if text in ("-0", "0") else text)
    return text


def format_ms(value: float) -> str:
    rounded = round(value, 1)
    return f"{rounded:.0f}" if rounded == int(rounded) else f"{rounded:.1f}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def classify_complexity(request: RoutingRequest, simple: ComplexityClass | None, complex_: ComplexityClass | None) -> str | None:
    """"simple", "complex" or None. Hints win, then the task type, then the prompt size."""
    rules = [("complex", complex_), ("simple", simple)]
    hints = {hint.strip().lower() for hint in request.hints}
    for label, rule in rules:
        if rule and hints & {h.lower() for h in rule.hints}:
            return label
    task = request.task_type.strip().lower()
    for label, rule in rules:
        if rule and task and task in {t.lower() for t in rule.task_types}:
            return label
    chars = request.prompt_chars  # with_default_tokens fills it from caller-given input tokens only
    if chars:
        if complex_ and complex_.min_prompt_chars is not None and chars >= complex_.min_prompt_chars:
            return "complex"
        if simple and simple.max_prompt_chars is not None and chars <= simple.max_prompt_chars:
            return "simple"
    return None


def canary_config(canary: Canary) -> CanaryConfig:
    return CanaryConfig(
        stages=canary.stages, stage_duration_s=canary.stage_duration_s, min_samples=canary.min_samples,
        max_error_rate=canary.max_error_rate, max_p95_ms=canary.max_p95_ms, started_at=canary.started_at,
    )


def _sticky_key(request: RoutingRequest, sticky_by: str) -> str:
    return request.session_id if sticky_by == "session" and request.session_id else request.tenant


def _to_front(chain: list[ModelKey], key: ModelKey) -> list[ModelKey]:
    return [key, *[k for k in chain if k != key]]


class _PolicyIndex:
    """Lookups every decision repeats on one installed policy (the route for a service/feature, parsed
    model names, model specs), remembered so a Decide does not redo the pattern matching and parsing.
    Each memo is bounded: services, features and allowed models come from callers."""

    MAX_ENTRIES = 4096

    def __init__(self, policy: RoutingPolicy):
        self.policy = policy
        self._routes: dict[tuple[str, str], Route] = {}
        self._keys: dict[str, ModelKey] = {}
        self._specs: dict[ModelKey, ModelSpec | None] = {}

    def route_for(self, service: str, feature: str) -> Route:
        route = self._routes.get((service, feature))
        if route is None:
            route = _remember(self._routes, (service, feature), self.policy.route_for(service, feature))
        return route

    def key(self, name: str) -> ModelKey:
        key = self._keys.get(name)
        if key is None:
            key = _remember(self._keys, name, parse_model_ref(name))
        return key

    def spec(self, key: ModelKey) -> ModelSpec | None:
        try:
            return self._specs[key]
        except KeyError:
            return _remember(self._specs, key, self.policy.model_spec(key))


def _remember(memo: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(memo) >= _PolicyIndex.MAX_ENTRIES:
        memo.clear()
    memo[key] = value
    return value


_policy_indexes: dict[int, _PolicyIndex] = {}


def _index_of(policy: RoutingPolicy) -> _PolicyIndex:
    """The index of this very policy object: by id, checked by identity (the index holds the policy, so its
    id cannot be reused while the entry lives). Policies change rarely; a few are kept."""
    index = _policy_indexes.get(id(policy))
    if index is None or index.policy is not policy:
        if len(_policy_indexes) >= 8:
            _policy_indexes.clear()
        index = _policy_indexes[id(policy)] = _PolicyIndex(policy)
    return index


@dataclass(eq=False)
class _Candidate:
    """Working state for one candidate before its verdict is written. Compared by identity (each is one
    position of the chain): a generated __eq__ would compare every field, rows included, on each `in`."""

    order: int
    key: ModelKey
    row: Mapping[str, Any] | None
    fresh: bool
    live: bool
    cost: decimal.Decimal | None
    breaker_state: str
    breaker_allows: bool
    capability_problem: str | None = None
    tier_problem: str | None = None
    live_problem: str | None = None
    class_problem: str | None = None  # the tenant's tier does not allow this model's tier
    limit_problem: str | None = None  # the model's rate limit is spent
    limit_wait_s: float = 0.0

    @property
    def p95(self) -> float:
        return float(self.row["p95_latency_ms"]) if self.live and self.row is not None else math.inf

    @property
    def usable(self) -> bool:
        """Passes what no live number can change: capabilities, budget tier and breaker."""
        return (self.capability_problem is None and self.tier_problem is None and self.breaker_allows
                and self.class_problem is None and self.limit_problem is None)

    @property
    def passes(self) -> bool:
        return self.usable and self.live_problem is None


class _Decision:
    """Working state of one decision; `decide` drives it through the rules in the module docstring."""

    def __init__(self, request: RoutingRequest, state: RoutingState, decision_id: str, now: dt.datetime):
        self.request = request
        self.state = state
        self.policy = state.policy
        self.index = _index_of(state.policy)
        self.decision_id = decision_id
        self.now = now
        self.codes: list[str] = []
        self.route: Route = self.index.route_for(request.service, request.feature)
        self.experiment: str | None = None
        self.arm: str | None = None

    def add(self, code: str) -> None:
        if code not in self.codes:
            self.codes.append(code)

    # -- 3. the chain -----------------------------------------------------------------------------------------
    def chain(self) -> list[ModelKey]:
        route, request = self.route, self.request
        chain: list[ModelKey] = [self.index.key(name) for name in route.model_names()]
        complexity = route.complexity
        label = classify_complexity(request, complexity.simple, complexity.complex) if complexity else None
        if label is not None:
            rule = getattr(complexity, label)
            chain = [self.index.key(name) for name in rule.models]
            self.add(COMPLEXITY_PREFIX + label)
        elif route.experiment is not None:
            experiment = route.experiment
            arm = choose_arm(
                experiment.name, [(a.name, a.weight) for a in experiment.arms],
                _sticky_key(request, experiment.sticky_by),
            )
            arm_model = self.index.key(next(a.model for a in experiment.arms if a.name == arm))
            chain = _to_front(chain, arm_model)
            self.experiment, self.arm = experiment.name, arm
            self.add(EXPERIMENT_ARM)
        if route.canary is not None:
            chain = self._apply_canary(route.canary, chain)
        if request.allowed_models:
            allowed = list(request.allowed_models)
            if not chain:
                chain = allowed
            else:
                chain = [key for key in chain if key in set(allowed)]
                if not chain:
                    raise PolicyInputError(
                        "allowed_models", "in_route",
                        f"none of {', '.join(map(model_name, allowed))} is among route {route.name}'s models "
                        f"({', '.join(route.model_names())})",
                    )
        if not chain:
            raise PolicyInputError(
                "allowed_models", "non_empty",
                f"must list at least one provider/model: route {route.name} names no models",
            )
        return chain

    def _apply_canary(self, canary: Canary, chain: list[ModelKey]) -> list[ModelKey]:
        key = self.index.key(canary.model)
        name = f"{self.route.name}:{canary.model}"
        row = self.state.rows.get(key)
        if row is not None and (self.now - row["updated_at"]).total_seconds() > self.policy.defaults.live.max_age_s:
            row = None  # a stale row says nothing about the canary now
        status = self.state.canaries.evaluate(name, canary_config(canary), row, self.now)
        if status.state == "rolled_back":
            self.add(CANARY_ROLLED_BACK)
            return [k for k in chain if k != key]
        if status.state == "promoted":
            self.add(CANARY_PROMOTED)
            return _to_front(chain, key)
        self.experiment = f"canary:{self.route.name}"
        if in_canary(name, status, _sticky_key(self.request, canary.sticky_by)):
            self.arm = "canary"
            self.add(CANARY)
            return _to_front(chain, key)
        self.arm = "baseline"
        return [k for k in chain if k != key]

    # -- 4. filters ---------------------------------------------------------------------------------------------
    def assess(self, chain: Sequence[ModelKey], slo: float) -> list[_Candidate]:
        live_config = self.policy.defaults.live
        rows, breakers, now = self.state.rows, self.state.breakers, self.now
        assessed = []
        for order, key in enumerate(chain):
            row = rows.get(key)
            fresh = row is not None and (now - row["updated_at"]).total_seconds() <= live_config.max_age_s
            live = fresh and int(row["sample_count"]) >= live_config.min_samples  # type: ignore[index]
            breaker_state, breaker_allows = breakers.live_state(key, row if fresh else None, now)
            candidate = _Candidate(
                order, key, row, fresh, live, self._cost(key, row if fresh else None), str(breaker_state), breaker_allows,
            )
            candidate.capability_problem = self.capability_problem(key)
            if live:
                p95, error_rate = float(row["p95_latency_ms"]), float(row["error_rate"])  # type: ignore[index]
                if p95 > slo:
                    candidate.live_problem = f"p95 {format_ms(p95)} ms > SLO {format_ms(slo)} ms"
                elif error_rate > live_config.max_error_rate:
                    candidate.live_problem = (
                        f"error rate {error_rate:.1%} > {live_config.max_error_rate:.0%} over "
                        f"{int(row['sample_count'])} calls"  # type: ignore[index]
                    )
            assessed.append(candidate)
        return assessed

    def capability_problem(self, key: ModelKey) -> str | None:
        request, spec = self.request, self.index.spec(key)
        if spec is None:
            needs = [
                name for name, wanted in (
                    ("structured output", request.requires_structured_output), ("vision", request.requires_vision),
                    (f"region {request.region}", bool(request.region)),
                ) if wanted
            ]
            return f"not in the policy catalog, so it cannot promise {', '.join(needs)}" if needs else None
        if request.requires_structured_output and not spec.structured_output:
            return "no strict structured output"
        if request.requires_vision and not spec.vision:
            return "no vision"
        if request.region and spec.regions and request.region not in spec.regions:
            return f"not in region {request.region} ({', '.join(spec.regions)})"
        tokens = request.expected_input_tokens + request.expected_output_tokens
        if tokens > spec.context_window:
            return f"{tokens:,} tokens > context window {spec.context_window:,}"
        return None

    def _cost(self, key: ModelKey, row: Mapping[str, Any] | None) -> decimal.Decimal | None:
        request = self.request
        if row is not None:
            cost = estimate_cost(row, request.expected_input_tokens, request.expected_output_tokens)
            if cost is not None:
                return cost
        prices = self.state.static_prices(key, self.now) if self.state.static_prices else None
        if prices is None:
            return None
        return cost_from_prices(prices[0], prices[1], request.expected_input_tokens, request.expected_output_tokens)

    def apply_limits(self, candidates: list[_Candidate], tier_name: str | None, tokens: int, now_s: float) -> None:
        """The tenant tier's model tiers, then each model's own rate limits (peeked all at once, nothing spent)."""
        limits, policy = self.state.limits, self.policy
        assert limits is not None
        _, tier = limits.tier_of(policy, self.request.tenant)
        allowed = set(tier.model_tiers) if tier is not None and tier.model_tiers else None
        limited: list[_Candidate] = []
        for candidate in candidates:
            if allowed is not None:
                spec = self.index.spec(candidate.key)
                if spec is None or spec.tier not in allowed:
                    candidate.class_problem = (f"tenant tier {tier_name} allows {', '.join(sorted(allowed))} models, "
                                               f"not {spec.tier if spec else 'models outside the catalog'}")
                    continue
            limited.append(candidate)
        groups = [limits.model_charges(policy, candidate.key, tokens) for candidate in limited]
        for candidate, blocked in zip(limited, limits.blocked_each(groups, now_s)):
            if blocked is not None:
                candidate.limit_problem = f"rate limited: {blocked.charge.label} spent, free in {blocked.wait_s:.1f} s"
                candidate.limit_wait_s = blocked.wait_s

    def apply_budget_tier(self, candidates: list[_Candidate], rule_tier: str | None) -> str | None:
        """Restrict to the downgrade tier or cheaper; returns the tier, or None when no candidate qualifies."""
        ranks = [self.policy.tier_rank(c.key) for c in candidates]
        known = [rank for rank in ranks if rank is not None]
        if not known:
            return None
        target = self.policy.tiers.index(rule_tier) if rule_tier else max(known)
        qualifying = [c for c, rank in zip(candidates, ranks) if rank is not None and rank >= target
                      and c.capability_problem is None]
        if not qualifying:
            return None
        tier_name = self.policy.tiers[target]
        for candidate, rank in zip(candidates, ranks):
            if rank is None or rank < target:
                candidate.tier_problem = f"budget downgrade: above the {tier_name} tier"
        return tier_name


def decide(request: RoutingRequest, state: RoutingState, decision_id: str, now: dt.datetime) -> RoutingChoice:
    """Apply the policy to one request. Raises PolicyInputError for requests it cannot answer."""
    validate_request(request)
    work = _Decision(request, state, decision_id, now)
    route, policy = work.route, state.policy
    budget_rule = route.budget or policy.defaults.budget
    retry = route.retry or policy.defaults.retry
    slo = float(request.latency_slo_ms or route.latency_slo_ms or policy.defaults.latency_slo_ms)

    standing = state.budget
    budget_status, downgrade = "ok", False
    if standing is not None:
        if standing.status == "block" or standing.used_pct >= budget_rule.refuse_at_pct:
            budget_status = "block"
            if state.budget_mode == "manual":
                return _refusal(request, work, standing, now, slo)
            work.add(BUDGET_OVER_NOTIFY)
            downgrade = True  # past the refuse threshold is past the downgrade threshold too
        elif standing.used_pct >= budget_rule.downgrade_at_pct:
            budget_status, downgrade = "warn", True

    limits = state.limits
    tier_name = None
    tokens = request.expected_input_tokens + request.expected_output_tokens
    now_s = now.timestamp()
    if limits is not None:
        tier_name, _tier = limits.tier_of(policy, request.tenant)
        blocked = limits.blocked(limits.tenant_charges(policy, request.tenant, tokens), now_s)
        if blocked is not None:
            code = TIER_DAILY_LIMIT if blocked.charge.kind == WINDOW else TENANT_RATE_LIMITED
            reason = (f"tenant {request.tenant}: {blocked.charge.label} spent; "
                      f"retry in {blocked.wait_s:.1f} s")
            return _limit_refusal(request, work, now, slo, code, reason, "rate", blocked.wait_s, tier_name)

    chain = work.chain()
    candidates = work.assess(chain, slo)
    if limits is not None:
        work.apply_limits(candidates, tier_name, tokens, now_s)
    downgrade_tier = None
    if downgrade:
        downgrade_tier = work.apply_budget_tier(candidates, budget_rule.downgrade_to_tier)
        work.add(BUDGET_DOWNGRADE if downgrade_tier else BUDGET_DOWNGRADE_UNAVAILABLE)

    capable = [c for c in candidates if c.capability_problem is None]
    if not capable:
        first = candidates[0]
        raise PolicyInputError(
            _capability_field(request), "capability",
            f"no model on route {route.name} can serve this request ({model_name(first.key)}: {first.capability_problem})",
        )
    if limits is not None:
        allowed = [c for c in capable if c.class_problem is None]
        if not allowed:
            reason = (f"tenant {request.tenant}'s tier {tier_name} allows none of route {route.name}'s models "
                      f"({'; '.join(f'{model_name(c.key)}: {c.class_problem}' for c in capable)})")
            return _limit_refusal(request, work, now, slo, TIER_NO_MODEL, reason, "tier", 0.0, tier_name)
        if any(c.class_problem for c in capable):
            work.add(TIER_RESTRICTED)
        open_ = [c for c in allowed if c.limit_problem is None and c.tier_problem is None]
        if not open_ and any(c.limit_problem for c in allowed):
            limited = [c for c in allowed if c.limit_problem]
            wait = min(c.limit_wait_s for c in limited)
            reason = ("every allowed model's rate limit is spent ("
                      + "; ".join(f"{model_name(c.key)}: {c.limit_problem}" for c in limited) + ")")
            return _limit_refusal(request, work, now, slo, RATE_LIMITED_ALL, reason, "rate", wait, tier_name)
        capable = [c for c in allowed if c.limit_problem is None] or allowed
    usable = [c for c in candidates if c.usable]
    any_rows = any(c.row is not None for c in candidates)
    any_fresh = any(c.fresh for c in candidates)
    static = not any_fresh
    ranked_passing: list[_Candidate]

    if not usable:
        chosen = min([c for c in capable if c.tier_problem is None] or capable,
                     key=lambda c: (state.breakers.retry_in_s(c.key, now), c.order))
        lead_code = ALL_BREAKERS_OPEN
        reason = (f"every usable model's circuit breaker is open; {model_name(chosen.key)} is the first to allow a "
                  f"probe again (in {state.breakers.retry_in_s(chosen.key, now):.0f} s)")
        ranked_passing = []
    elif static:
        ranked_passing = _rank(usable, route.strategy, live=False)
        chosen = ranked_passing[0]
        lead_code = STATIC_POLICY if any_rows else NO_LIVE_DATA
        why = (f"the live rows of the {_plural(len(candidates), 'model')} are older than "
               f"{policy.defaults.live.max_age_s:g} s" if any_rows else
               f"none of the {_plural(len(candidates), 'model')} has live data")
        reason = f"{why}; static policy order on route {route.name} answers {model_name(chosen.key)}"
        if not candidates[0].usable:
            work.add(PRIMARY_SKIPPED)
            reason += f" ({model_name(candidates[0].key)} skipped: {_problem(candidates[0])})"
    else:
        passing = [c for c in usable if c.passes]
        if route.strategy == "cheapest":  # compare measured models only; unmeasured ones stay fallbacks
            passing = [c for c in passing if c.live]
        if passing:
            ranked_passing = _rank(passing, route.strategy, live=True)
            chosen = ranked_passing[0]
            if route.strategy == "cheapest":
                lead_code = CHEAPEST_WITHIN_SLO
                scope = (f"the only model within the {format_ms(slo)} ms p95 SLO" if len(passing) == 1 else
                         f"the cheapest of {len(passing)} models within the {format_ms(slo)} ms p95 SLO")
                reason = f"{model_name(chosen.key)} is {scope}{_numbers(chosen)}"
            elif chosen is candidates[0]:
                lead_code = PRIMARY
                reason = f"{model_name(chosen.key)} is route {route.name}'s first choice{_numbers(chosen)}"
            else:
                lead_code = PRIMARY_SKIPPED
                skipped = candidates[0]
                reason = (f"{model_name(skipped.key)} skipped ({_problem(skipped)}); {model_name(chosen.key)} is the "
                          f"next on route {route.name}{_numbers(chosen)}")
        else:
            ranked_passing = []
            chosen = min(usable, key=lambda c: (c.p95, c.order))
            lead_code = NO_MODEL_MEETS_SLO
            live_count = sum(1 for c in usable if c.live)
            reason = (f"none of the {_plural(len(usable), 'usable model')} passes the live checks "
                      f"({live_count} with live data, SLO {format_ms(slo)} ms); {model_name(chosen.key)} has the "
                      f"lowest p95{_numbers(chosen)}")

    if chosen.breaker_state == "half_open" and state.breakers.acquire(chosen.key, now):
        work.add(BREAKER_PROBE)
    if any(c.limit_problem for c in candidates) and chosen.limit_problem is None:
        work.add(RATE_LIMITED_SKIP)
        if lead_code == PRIMARY_SKIPPED and candidates[0].limit_problem:
            lead_code = RATE_LIMITED_SKIP
    fallbacks = _fallbacks(chosen, ranked_passing, usable, retry)
    shadow = _shadow(work, route, chosen, downgrade)
    work.codes.insert(0, lead_code)
    verdicts = tuple(_verdict(c, chosen) for c in candidates)
    ages = [(now - c.row["updated_at"]).total_seconds() for c in candidates if c.row is not None]
    facts = _memo_facts(work, candidates, chosen, tokens) if BREAKER_PROBE not in work.codes else None
    return RoutingChoice(
        provider=chosen.key[0], model=chosen.key[1], reason_code=lead_code, reason_codes=tuple(work.codes),
        reason=reason, estimated_cost_usd=chosen.cost, candidates=verdicts, decided_at=now, route=route.name,
        policy_version=state.policy_version, retry=retry, fallbacks=fallbacks, shadow=shadow,
        experiment=work.experiment, arm=work.arm, budget=standing, budget_status=budget_status,
        downgraded=downgrade_tier is not None, downgrade_tier=downgrade_tier, static_fallback=static and any_rows,
        live_table_age_ms=int(min(ages) * 1000) if ages else None, latency_slo_ms=slo, tenant_tier=tier_name,
        memo_facts=facts,
    )


def _capability_field(request: RoutingRequest) -> str:
    if request.requires_structured_output:
        return "requires_structured_output"
    if request.requires_vision:
        return "requires_vision"
    if request.region:
        return "region"
    return "expected_input_tokens"


def _rank(candidates: list[_Candidate], strategy: str, *, live: bool) -> list[_Candidate]:
    if strategy == "cheapest":
        return sorted(candidates, key=lambda c: (c.cost is None, c.cost or 0, c.p95 if live else 0, c.order))
    return sorted(candidates, key=lambda c: c.order)


def _fallbacks(chosen: _Candidate, ranked_passing: list[_Candidate], usable: list[_Candidate],
               retry: RetryConfig) -> tuple[RouteStep, ...]:
    # a half-open model takes only its one probe, as a chosen model: never as a fallback others may pile onto
    candidates = [c for c in usable if c.breaker_state != "half_open"]
    rest = [c for c in ranked_passing if c is not chosen and c in candidates]
    rest += sorted((c for c in candidates if c is not chosen and c not in rest), key=lambda c: (c.p95, c.order))
    return tuple(RouteStep(c.key[0], c.key[1], c.cost, retry) for c in rest)


def _shadow(work: _Decision, route: Route, chosen: _Candidate, downgrade: bool) -> ModelKey | None:
    if route.shadow is None:
        return None
    key = work.index.key(route.shadow.model)
    if key == chosen.key or not work.state.breakers.would_allow(key, work.now):
        return None
    if work.capability_problem(key) is not None:  # a shadow may not break the request's region or needs either
        return None
    if not sampled(route.shadow.sample_rate, "shadow", route.name, work.decision_id):
        return None
    if downgrade:
        work.add(SHADOW_SKIPPED_BUDGET)
        return None
    work.add(SHADOW_SAMPLED)
    return key


def _numbers(candidate: _Candidate) -> str:
    parts = []
    if candidate.live:
        parts.append(f"p95 {format_ms(candidate.p95)} ms")
    parts.append(f"est. ${format_usd(candidate.cost)}" if candidate.cost is not None else "cost unknown")
    return f" ({', '.join(parts)})"


def _problem(candidate: _Candidate) -> str:
    if candidate.capability_problem:
        return candidate.capability_problem
    if candidate.class_problem:
        return candidate.class_problem
    if candidate.tier_problem:
        return candidate.tier_problem
    if candidate.limit_problem:
        return candidate.limit_problem
    if not candidate.breaker_allows:
        return f"breaker {candidate.breaker_state}"
    return candidate.live_problem or "passes"


def _verdict(candidate: _Candidate, chosen: _Candidate) -> CandidateVerdict:
    if candidate is chosen:
        verdict = "chosen"
    elif not candidate.passes:
        verdict = _problem(candidate)
    elif not candidate.fresh:
        verdict = "no fresh live data" if candidate.row is not None else "no live data"
    elif chosen.cost is not None and candidate.cost is not None and candidate.cost > chosen.cost:
        verdict = f"costlier: ${format_usd(candidate.cost)} > ${format_usd(chosen.cost)}"
    elif candidate.order > chosen.order:
        verdict = f"fallback after {model_name(chosen.key)}"
    else:
        verdict = f"passes; {model_name(chosen.key)} ranked first"
    row = candidate.row if candidate.fresh else None
    return CandidateVerdict(
        provider=candidate.key[0], model=candidate.key[1], has_live_data=candidate.live,
        p95_latency_ms=float(row["p95_latency_ms"]) if row is not None else None,
        error_rate=float(row["error_rate"]) if row is not None else None,
        sample_count=int(row["sample_count"]) if row is not None else 0,
        estimated_cost_usd=candidate.cost, eligible=candidate.passes, verdict=verdict,
        breaker_state=candidate.breaker_state,
    )


def _limit_refusal(
    request: RoutingRequest, work: _Decision, now: dt.datetime, slo: float, code: str, reason: str, kind: str,
    wait_s: float, tier_name: str | None,
) -> RoutingChoice:
    """A refusal by a rate limit, quota or tenant tier: no model; `retry_after_s` says when to come back."""
    work.codes.insert(0, code)
    return RoutingChoice(
        provider=None, model=None, reason_code=code, reason_codes=tuple(work.codes), reason=reason,
        estimated_cost_usd=None, candidates=(), decided_at=now, route=work.route.name,
        policy_version=work.state.policy_version, refused=True, latency_slo_ms=slo, refusal_kind=kind,
        retry_after_s=max(0.0, wait_s), tenant_tier=tier_name,
    )


def _refusal(
    request: RoutingRequest, work: _Decision, standing: BudgetStanding, now: dt.datetime, slo: float
) -> RoutingChoice:
    """A MANUAL-mode budget refusal: no model, the route's models left unweighed (no experiment or canary
    is consulted, so a refused tenant never moves a canary's numbers)."""
    route_models = [parse_model_ref(name) for name in work.route.model_names()]
    keys = [k for k in route_models if not request.allowed_models or k in request.allowed_models] or \
        list(request.allowed_models) or route_models
    verdict = f"not weighed: budget {standing.budget_id} blocks"
    candidates = tuple(
        CandidateVerdict(k[0], k[1], False, None, None, 0, None, False, verdict, "closed") for k in keys
    )
    work.codes.insert(0, BUDGET_BLOCKED)
    return RoutingChoice(
        provider=None, model=None, reason_code=BUDGET_BLOCKED, reason_codes=tuple(work.codes), reason=standing.message,
        estimated_cost_usd=None, candidates=candidates, decided_at=now, route=work.route.name,
        policy_version=work.state.policy_version, budget=standing, budget_status="block", refused=True,
        latency_slo_ms=slo, refusal_kind="budget",
    )
