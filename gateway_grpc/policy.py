"""The routing rule: the cheapest allowed model whose live p95 latency is within the caller's SLO.

Plain Python on purpose (no gRPC, no Kafka) so the rule is tested on its own and the server stays a thin
adapter. Rows are decoded ModelLiveStats records (see schemas/model_live_stats.v1.avsc).

The rule, in order:
1. An allowed model is *eligible* when it has live data (a row with at least one call in the window), its
   p95 latency is <= latency_slo_ms, and its cost for this request can be estimated.
2. Among eligible models the cheapest estimated cost wins; ties go to the lower p95, then to the caller's
   order. reason_code `cheapest_within_slo`.
3. With no eligible model, the live model with the lowest p95 wins (ties: caller's order).
   reason_code `no_model_meets_slo`.
4. With no live data for any allowed model, the caller's first allowed model wins. reason_code `no_live_data`.

Estimated cost, in exact Decimal USD: expected_input_tokens x input_price_per_mtok / 1e6 +
expected_output_tokens x output_price_per_mtok / 1e6 when the row carries both prices; otherwise the
window's observed cost per token, cost_usd / tokens x (input + output tokens). The estimate is rounded
once, half-even, to 12 decimal places (the scale of the money fields in the Avro schemas).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from streams.errors import FieldRuleError

CHEAPEST_WITHIN_SLO = "cheapest_within_slo"
NO_MODEL_MEETS_SLO = "no_model_meets_slo"
NO_LIVE_DATA = "no_live_data"

MONEY_QUANTUM = decimal.Decimal("1e-12")
MAX_EXPECTED_TOKENS = 10**12
_MONEY_CONTEXT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
_PER_MTOK = decimal.Decimal(1_000_000)

ModelKey = tuple[str, str]


class PolicyInputError(FieldRuleError):
    """A routing request the rule cannot answer."""


@dataclass(frozen=True)
class RoutingRequest:
    """What a caller asks for, independent of the wire format."""

    tenant: str
    service: str
    feature: str
    allowed_models: tuple[ModelKey, ...]
    latency_slo_ms: float
    expected_input_tokens: int = 0
    expected_output_tokens: int = 0
    request_id: str = ""

    def with_default_tokens(self, input_tokens: int, output_tokens: int) -> "RoutingRequest":
        """Zero token counts mean "the usual request": the gateway's configured defaults stand in."""
        return replace(
            self,
            expected_input_tokens=self.expected_input_tokens or input_tokens,
            expected_output_tokens=self.expected_output_tokens or output_tokens,
        )


@dataclass(frozen=True)
class CandidateVerdict:
    """One allowed model as the rule saw it."""

    provider: str
    model: str
    has_live_data: bool
    p95_latency_ms: float | None
    error_rate: float | None
    sample_count: int
    estimated_cost_usd: decimal.Decimal | None
    eligible: bool
    verdict: str

    @property
    def key(self) -> ModelKey:
        return (self.provider, self.model)


@dataclass(frozen=True)
class RoutingChoice:
    """The rule's answer: the model, why (code + sentence), and every candidate with its verdict."""

    provider: str
    model: str
    reason_code: str
    reason: str
    estimated_cost_usd: decimal.Decimal | None
    candidates: tuple[CandidateVerdict, ...]
    decided_at: dt.datetime

    def decision_record(self, request: RoutingRequest, decision_id: str) -> dict[str, Any]:
        """The routing_decision Avro record (schemas/routing_decision.v1.avsc) for this answer."""
        return {
            "decision_id": decision_id,
            "decided_at": self.decided_at,
            "tenant": request.tenant,
            "service": request.service,
            "feature": request.feature,
            "request_id": request.request_id or None,
            "latency_slo_ms": float(request.latency_slo_ms),
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
                }
                for c in self.candidates
            ],
        }


def validate_request(request: RoutingRequest) -> None:
    """Raise PolicyInputError for the first input the rule cannot work with."""
    if not request.tenant:
        raise PolicyInputError("tenant", "required", "is required: decisions are attributed to a tenant")
    if not request.allowed_models:
        raise PolicyInputError("allowed_models", "non_empty", "must list at least one provider/model")
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
    if not (isinstance(slo, (int, float)) and math.isfinite(slo) and slo > 0):
        raise PolicyInputError("latency_slo_ms", "positive", f"must be a finite number of milliseconds > 0, got {slo}")
    for name in ("expected_input_tokens", "expected_output_tokens"):
        tokens = getattr(request, name)
        if tokens < 0:
            raise PolicyInputError(name, "non_negative", f"must be >= 0, got {tokens}")
        if tokens > MAX_EXPECTED_TOKENS:
            raise PolicyInputError(name, "at_most", f"must be <= {MAX_EXPECTED_TOKENS:,}, got {tokens:,}")


def estimate_cost(row: Mapping[str, Any], input_tokens: int, output_tokens: int) -> decimal.Decimal | None:
    """Exact estimated USD for the request on this row's model, or None when neither prices nor observed
    tokens give a basis (an unknown cost is never treated as zero)."""
    input_price = row.get("input_price_per_mtok")
    output_price = row.get("output_price_per_mtok")
    if input_price is not None and output_price is not None:
        cost = _MONEY_CONTEXT.add(
            _MONEY_CONTEXT.multiply(decimal.Decimal(input_tokens), input_price),
            _MONEY_CONTEXT.multiply(decimal.Decimal(output_tokens), output_price),
        )
        cost = _MONEY_CONTEXT.divide(cost, _PER_MTOK)
    else:
        observed_tokens = row.get("tokens") or 0
        observed_cost = row.get("cost_usd")
        if observed_tokens <= 0 or observed_cost is None:
            return None
        cost = _MONEY_CONTEXT.divide(
            _MONEY_CONTEXT.multiply(observed_cost, decimal.Decimal(input_tokens + output_tokens)),
            decimal.Decimal(observed_tokens),
        )
    return cost.quantize(MONEY_QUANTUM, context=_MONEY_CONTEXT)


def format_usd(amount: decimal.Decimal) -> str:
    """Exact, without trailing zeros or exponent: Decimal('0.000450000000') -> '0.00045'."""
    text = format(amount.normalize(context=_MONEY_CONTEXT), "f")
    return "0" if text in ("-0", "0") else text


def format_ms(value: float) -> str:
    rounded = round(value, 1)
    return f"{rounded:.0f}" if rounded == int(rounded) else f"{rounded:.1f}"


def _name(key: ModelKey) -> str:
    return f"{key[0]}/{key[1]}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@dataclass
class _Assessment:
    """Working state for one candidate before its verdict is written."""

    order: int
    key: ModelKey
    row: Mapping[str, Any] | None
    cost: decimal.Decimal | None

    @property
    def live(self) -> bool:
        return self.row is not None and self.row["sample_count"] > 0

    @property
    def p95(self) -> float:
        return float(self.row["p95_latency_ms"]) if self.row is not None else math.inf


def choose_model(
    request: RoutingRequest, rows: Mapping[ModelKey, Mapping[str, Any] | None], now: dt.datetime
) -> RoutingChoice:
    """Apply the routing rule to the live rows of the allowed models. `rows` may hold other models
    (they are ignored) and miss some (they have no live data). `now` stamps the decision."""
    validate_request(request)
    slo = float(request.latency_slo_ms)
    assessments = []
    for order, key in enumerate(request.allowed_models):
        row = rows.get(key)
        cost = estimate_cost(row, request.expected_input_tokens, request.expected_output_tokens) if row else None
        assessments.append(_Assessment(order, key, row, cost))

    live = [a for a in assessments if a.live]
    eligible = [a for a in live if a.p95 <= slo and a.cost is not None]

    if eligible:
        ranked = sorted(eligible, key=lambda a: (a.cost, a.p95, a.order))
        chosen = ranked[0]
        reason_code = CHEAPEST_WITHIN_SLO
        scope = (
            f"the only model within the {format_ms(slo)} ms p95 SLO"
            if len(eligible) == 1
            else f"the cheapest of {len(eligible)} models within the {format_ms(slo)} ms p95 SLO"
        )
        reason = f"{_name(chosen.key)} is {scope} (p95 {format_ms(chosen.p95)} ms, est. ${format_usd(chosen.cost)})"
    elif live:
        chosen = min(live, key=lambda a: (a.p95, a.order))
        reason_code = NO_MODEL_MEETS_SLO
        cost_text = f"est. ${format_usd(chosen.cost)}" if chosen.cost is not None else "cost unknown"
        if all(a.p95 > slo for a in live):
            lead = f"none of the {_plural(len(live), 'model')} with live data meets the {format_ms(slo)} ms p95 SLO"
        else:
            lead = (
                f"none of the {_plural(len(live), 'model')} with live data is both within the {format_ms(slo)} ms "
                f"p95 SLO and has a known cost"
            )
        reason = f"{lead}; {_name(chosen.key)} has the lowest p95 ({format_ms(chosen.p95)} ms, {cost_text})"
    else:
        chosen = assessments[0]
        reason_code = NO_LIVE_DATA
        reason = (
            f"none of the {_plural(len(assessments), 'allowed model')} has live data; "
            f"answering the caller's first choice {_name(chosen.key)}"
        )

    candidates = tuple(_verdict(a, chosen, slo, eligible) for a in assessments)
    return RoutingChoice(
        provider=chosen.key[0],
        model=chosen.key[1],
        reason_code=reason_code,
        reason=reason,
        estimated_cost_usd=chosen.cost,
        candidates=candidates,
        decided_at=now,
    )


def _verdict(a: _Assessment, chosen: _Assessment, slo: float, eligible: Sequence[_Assessment]) -> CandidateVerdict:
    is_eligible = any(a is e for e in eligible)
    if a is chosen:
        verdict = "chosen"
    elif a.row is None:
        verdict = "no live data"
    elif not a.live:
        verdict = "no calls in the live window"
    elif a.p95 > slo:
        verdict = f"p95 {format_ms(a.p95)} ms > SLO {format_ms(slo)} ms"
    elif a.cost is None:
        verdict = "cost unknown: no prices and no observed tokens"
    elif chosen.cost is not None and a.cost > chosen.cost:
        verdict = f"costlier: ${format_usd(a.cost)} > ${format_usd(chosen.cost)}"
    elif a.p95 > chosen.p95:
        verdict = f"same cost ${format_usd(a.cost)}, slower: p95 {format_ms(a.p95)} ms > {format_ms(chosen.p95)} ms"
    else:
        verdict = f"same cost and p95 as {_name(chosen.key)}, listed after it"
    row = a.row
    return CandidateVerdict(
        provider=a.key[0],
        model=a.key[1],
        has_live_data=a.live,
        p95_latency_ms=float(row["p95_latency_ms"]) if row is not None else None,
        error_rate=float(row["error_rate"]) if row is not None else None,
        sample_count=int(row["sample_count"]) if row is not None else 0,
        estimated_cost_usd=a.cost,
        eligible=is_eligible,
        verdict=verdict,
    )
