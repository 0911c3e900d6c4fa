"""The routing rule on its own: plain rows in, a choice with reasons out."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_grpc.policy import (
    CHEAPEST_WITHIN_SLO,
    NO_LIVE_DATA,
    NO_MODEL_MEETS_SLO,
    PolicyInputError,
    RoutingRequest,
    choose_model,
    estimate_cost,
    format_ms,
    format_usd,
)
from streams.codecs import codec_for

NOW = dt.datetime(2025, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def live_row(
    provider: str,
    model: str,
    p95: float,
    input_price: str | None = "1",
    output_price: str | None = "2",
    *,
    sample_count: int = 100,
    cost_usd: str = "0.5",
    tokens: int = 1_000_000,
    error_rate: float = 0.01,
) -> dict:
    return {
        "provider": provider,
        "model": model,
        "window_seconds": 300.0,
        "sample_count": sample_count,
        "error_count": int(sample_count * error_rate),
        "error_rate": error_rate,
        "p50_latency_ms": p95 / 2,
        "p95_latency_ms": p95,
        "p99_latency_ms": p95 * 1.5,
        "cost_usd": Decimal(cost_usd),
        "tokens": tokens,
        "input_price_per_mtok": Decimal(input_price) if input_price is not None else None,
        "output_price_per_mtok": Decimal(output_price) if output_price is not None else None,
        "updated_at": NOW,
    }


def rows_of(*rows: dict) -> dict:
    return {(r["provider"], r["model"]): r for r in rows}


def request_for(*models: tuple[str, str], slo: float = 800.0, input_tokens: int = 1000, output_tokens: int = 500,
                tenant: str = "acme") -> RoutingRequest:
    return RoutingRequest(
        tenant=tenant, service="chat", feature="summarize", allowed_models=tuple(models), latency_slo_ms=slo,
        expected_input_tokens=input_tokens, expected_output_tokens=output_tokens, request_id="req-1",
    )


MINI = ("openai", "gpt-4o-mini")
GPT4O = ("openai", "gpt-4o")
HAIKU = ("anthropic", "claude-3-5-haiku")


def verdicts(choice) -> dict:
    return {c.key: c.verdict for c in choice.candidates}


def test_cheapest_model_within_slo_wins_with_numbers_in_the_reason():
    rows = rows_of(
        live_row(*GPT4O, p95=600, input_price="2.5", output_price="10"),
        live_row(*MINI, p95=412, input_price="0.15", output_price="0.6"),
        live_row(*HAIKU, p95=500, input_price="0.8", output_price="4"),
    )
    choice = choose_model(request_for(GPT4O, MINI, HAIKU), rows, NOW)

    assert (choice.provider, choice.model) == MINI
    assert choice.reason_code == CHEAPEST_WITHIN_SLO
    assert choice.estimated_cost_usd == Decimal("0.00045")
    assert choice.reason == (
        "openai/gpt-4o-mini is the cheapest of 3 models within the 800 ms p95 SLO (p95 412 ms, est. $0.00045)"
    )
    assert verdicts(choice) == {
        GPT4O: "costlier: $0.0075 > $0.00045",
        MINI: "chosen",
        HAIKU: "costlier: $0.0028 > $0.00045",
    }
    assert all(c.eligible for c in choice.candidates)
    assert [c.key for c in choice.candidates] == [GPT4O, MINI, HAIKU]
    assert choice.decided_at == NOW


def test_slo_excludes_the_cheapest_model():
    rows = rows_of(
        live_row(*MINI, p95=1200, input_price="0.15", output_price="0.6"),
        live_row(*GPT4O, p95=700, input_price="2.5", output_price="10"),
        live_row(*HAIKU, p95=750, input_price="0.8", output_price="4"),
    )
    choice = choose_model(request_for(MINI, GPT4O, HAIKU), rows, NOW)

    assert (choice.provider, choice.model) == HAIKU
    assert choice.reason_code == CHEAPEST_WITHIN_SLO
    assert "cheapest of 2 models within the 800 ms p95 SLO" in choice.reason
    assert verdicts(choice)[MINI] == "p95 1200 ms > SLO 800 ms"
    assert [c.eligible for c in choice.candidates] == [False, True, True]


def test_single_eligible_model_is_called_the_only_one():
    rows = rows_of(live_row(*MINI, p95=1200), live_row(*GPT4O, p95=700))
    choice = choose_model(request_for(MINI, GPT4O), rows, NOW)
    assert choice.reason.startswith("openai/gpt-4o is the only model within the 800 ms p95 SLO (p95 700 ms")


def test_no_model_meets_slo_picks_the_lowest_p95():
    rows = rows_of(
        live_row(*MINI, p95=1500, input_price="0.15", output_price="0.6"),
        live_row(*GPT4O, p95=950, input_price="2.5", output_price="10"),
    )
    choice = choose_model(request_for(MINI, GPT4O, HAIKU), rows, NOW)

    assert (choice.provider, choice.model) == GPT4O
    assert choice.reason_code == NO_MODEL_MEETS_SLO
    assert choice.reason == (
        "none of the 2 models with live data meets the 800 ms p95 SLO; "
        "openai/gpt-4o has the lowest p95 (950 ms, est. $0.0075)"
    )
    assert verdicts(choice) == {MINI: "p95 1500 ms > SLO 800 ms", GPT4O: "chosen", HAIKU: "no live data"}
    assert not any(c.eligible for c in choice.candidates)


def test_no_live_data_answers_the_callers_first_model():
    rows = rows_of(live_row("google", "gemini-flash", p95=100), live_row(*GPT4O, p95=100, sample_count=0))
    choice = choose_model(request_for(MINI, GPT4O), rows, NOW)

    assert (choice.provider, choice.model) == MINI
    assert choice.reason_code == NO_LIVE_DATA
    assert choice.estimated_cost_usd is None
    assert choice.reason == (
        "none of the 2 allowed models has live data; answering the caller's first choice openai/gpt-4o-mini"
    )
    assert verdicts(choice) == {MINI: "chosen", GPT4O: "no calls in the live window"}
    assert [c.has_live_data for c in choice.candidates] == [False, False]


def test_price_fallback_uses_observed_cost_per_token():
    rows = rows_of(
        live_row(*MINI, p95=300, input_price=None, output_price=None, cost_usd="0.03", tokens=90_000),
        live_row(*GPT4O, p95=300, input_price="2.5", output_price=None, cost_usd="1.2", tokens=100_000),
    )
    choice = choose_model(request_for(MINI, GPT4O, input_tokens=1000, output_tokens=500), rows, NOW)

    # 0.03 / 90,000 x 1,500 = 0.0005 exactly; gpt-4o lacks one price, so it falls back too: 1.2 / 100,000 x 1,500
    assert choice.candidates[0].estimated_cost_usd == Decimal("0.0005")
    assert choice.candidates[1].estimated_cost_usd == Decimal("0.018")
    assert (choice.provider, choice.model) == MINI


def test_fallback_rounds_once_half_even_to_twelve_places():
    row = live_row(*MINI, p95=1, input_price=None, output_price=None, cost_usd="1", tokens=3)
    assert estimate_cost(row, 1, 0) == Decimal("0.333333333333")
    row = live_row(*MINI, p95=1, input_price=None, output_price=None, cost_usd="2", tokens=3)
    assert estimate_cost(row, 1, 0) == Decimal("0.666666666667")


def test_unknown_cost_is_never_treated_as_zero():
    rows = rows_of(
        live_row(*MINI, p95=300, input_price=None, output_price=None, cost_usd="0", tokens=0),
        live_row(*GPT4O, p95=400, input_price="2.5", output_price="10"),
    )
    choice = choose_model(request_for(MINI, GPT4O), rows, NOW)

    assert (choice.provider, choice.model) == GPT4O
    assert verdicts(choice)[MINI] == "cost unknown: no prices and no observed tokens"
    assert choice.candidates[0].eligible is False
    assert choice.candidates[0].has_live_data is True


def test_only_unknown_cost_models_within_slo_fall_back_to_lowest_p95_with_an_honest_reason():
    rows = rows_of(live_row(*MINI, p95=300, input_price=None, output_price=None, tokens=0))
    choice = choose_model(request_for(MINI), rows, NOW)
    assert choice.reason_code == NO_MODEL_MEETS_SLO
    assert "is both within the 800 ms p95 SLO and has a known cost" in choice.reason
    assert "cost unknown" in choice.reason


def test_equal_cost_goes_to_lower_p95_then_to_callers_order():
    same_price = {"input_price": "1", "output_price": "1"}
    rows = rows_of(
        live_row(*MINI, p95=500, **same_price),
        live_row(*GPT4O, p95=400, **same_price),
        live_row(*HAIKU, p95=400, **same_price),
    )
    choice = choose_model(request_for(MINI, GPT4O, HAIKU), rows, NOW)
    assert (choice.provider, choice.model) == GPT4O
    assert verdicts(choice) == {
        MINI: "same cost $0.0015, slower: p95 500 ms > 400 ms",
        GPT4O: "chosen",
        HAIKU: "same cost and p95 as openai/gpt-4o, listed after it",
    }

    choice = choose_model(request_for(HAIKU, GPT4O, MINI), rows, NOW)
    assert (choice.provider, choice.model) == HAIKU


def test_p95_exactly_at_the_slo_is_within_it():
    choice = choose_model(request_for(MINI, slo=800), rows_of(live_row(*MINI, p95=800.0)), NOW)
    assert choice.reason_code == CHEAPEST_WITHIN_SLO


def test_costs_are_exact_decimals_not_floats():
    # 0.1 + 0.2 in binary floats is 0.30000000000000004; the estimate must be exactly 0.3
    row = live_row(*MINI, p95=1, input_price="100000", output_price="200000")
    assert estimate_cost(row, 1, 1) == Decimal("0.3")
    huge = live_row(*MINI, p95=1, input_price="0.000000000001", output_price="123456.789")
    assert estimate_cost(huge, 10**12, 10**12) == Decimal("123456789000.000001")
    assert isinstance(choose_model(request_for(MINI), rows_of(row), NOW).estimated_cost_usd, Decimal)


def test_rows_of_models_not_allowed_are_ignored():
    rows = rows_of(live_row(*MINI, p95=100, input_price="0", output_price="0"), live_row(*GPT4O, p95=500))
    choice = choose_model(request_for(GPT4O), rows, NOW)
    assert (choice.provider, choice.model) == GPT4O
    assert [c.key for c in choice.candidates] == [GPT4O]


@pytest.mark.parametrize(
    ("request_", "field", "rule"),
    [
        (request_for(), "allowed_models", "non_empty"),
        (request_for(MINI, slo=0), "latency_slo_ms", "positive"),
        (request_for(MINI, slo=-5), "latency_slo_ms", "positive"),
        (request_for(MINI, slo=math.nan), "latency_slo_ms", "positive"),
        (request_for(MINI, slo=math.inf), "latency_slo_ms", "positive"),
        (request_for(MINI, input_tokens=-1), "expected_input_tokens", "non_negative"),
        (request_for(MINI, output_tokens=-1), "expected_output_tokens", "non_negative"),
        (request_for(MINI, output_tokens=10**13), "expected_output_tokens", "at_most"),
        (request_for(MINI, ("openai", "")), "allowed_models[1].model", "required"),
        (request_for(("", "gpt-4o")), "allowed_models[0].provider", "required"),
        (request_for(MINI, GPT4O, MINI), "allowed_models[2]", "unique"),
        (request_for(MINI, tenant=""), "tenant", "required"),
    ],
)
def test_bad_input_names_the_field_and_the_rule(request_, field, rule):
    with pytest.raises(PolicyInputError) as raised:
        choose_model(request_, rows_of(live_row(*MINI, p95=1)), NOW)
    assert (raised.value.field, raised.value.rule) == (field, rule)
    assert str(raised.value).startswith(f"{field}: ")


def test_default_tokens_fill_only_zero_counts():
    request = request_for(MINI, input_tokens=0, output_tokens=7).with_default_tokens(1000, 500)
    assert (request.expected_input_tokens, request.expected_output_tokens) == (1000, 7)


def test_decision_record_round_trips_through_the_routing_decision_schema():
    rows = rows_of(live_row(*MINI, p95=412, input_price="0.15", output_price="0.6"), live_row(*GPT4O, p95=1200))
    request = request_for(MINI, GPT4O, HAIKU)
    choice = choose_model(request, rows, NOW)
    codec = codec_for("routing_decision")

    decoded = codec.decode(codec.encode(choice.decision_record(request, "d-1")))

    assert decoded["decision_id"] == "d-1"
    assert decoded["decided_at"] == NOW
    assert (decoded["chosen_provider"], decoded["chosen_model"]) == MINI
    assert decoded["reason_code"] == CHEAPEST_WITHIN_SLO
    assert decoded["request_id"] == "req-1"
    assert decoded["candidates"][0]["estimated_cost_usd"] == Decimal("0.00045")
    assert decoded["candidates"][2] == {
        "provider": "anthropic", "model": "claude-3-5-haiku", "p95_latency_ms": None, "error_rate": None,
        "estimated_cost_usd": None, "eligible": False, "verdict": "no live data",
    }


def test_formatting_of_numbers_in_sentences():
    assert format_usd(Decimal("0.000450000000")) == "0.00045"
    assert format_usd(Decimal("100.000000000000")) == "100"
    assert format_usd(Decimal("0E-12")) == "0"
    assert format_ms(412.0) == "412"
    assert format_ms(412.46) == "412.5"


# --- property: whatever the rows, the answer obeys the rule ---------------------------------------------

MODEL_NAMES = [("p1", "a"), ("p1", "b"), ("p2", "a"), ("p2", "c"), ("p3", "d")]
prices = st.one_of(st.none(), st.decimals(min_value=0, max_value=100, places=6))
row_strategy = st.fixed_dictionaries({
    "p95": st.floats(min_value=1, max_value=5000, allow_nan=False),
    "input_price": prices,
    "output_price": prices,
    "sample_count": st.integers(min_value=0, max_value=1000),
    "cost_usd": st.decimals(min_value=0, max_value=1000, places=12),
    "tokens": st.integers(min_value=0, max_value=10**7),
})


@st.composite
def scenarios(draw):
    allowed = draw(st.lists(st.sampled_from(MODEL_NAMES), min_size=1, max_size=5, unique=True))
    rows = {}
    for key in MODEL_NAMES:
        spec = draw(st.one_of(st.none(), row_strategy))
        if spec is not None:
            row = live_row(*key, p95=spec["p95"], sample_count=spec["sample_count"], tokens=spec["tokens"])
            row.update(input_price_per_mtok=spec["input_price"], output_price_per_mtok=spec["output_price"],
                       cost_usd=spec["cost_usd"])
            rows[key] = row
    request = request_for(
        *allowed,
        slo=draw(st.floats(min_value=1, max_value=5000, allow_nan=False)),
        input_tokens=draw(st.integers(min_value=0, max_value=10**6)),
        output_tokens=draw(st.integers(min_value=0, max_value=10**6)),
    )
    return request, rows


def reference_cost(row: dict, input_tokens: int, output_tokens: int) -> Fraction | None:
    if row["input_price_per_mtok"] is not None and row["output_price_per_mtok"] is not None:
        return (Fraction(input_tokens) * Fraction(row["input_price_per_mtok"])
                + Fraction(output_tokens) * Fraction(row["output_price_per_mtok"])) / 10**6
    if row["tokens"] <= 0:
        return None
    return Fraction(row["cost_usd"]) / row["tokens"] * (input_tokens + output_tokens)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_the_choice_obeys_the_rule(scenario):
    request, rows = scenario
    choice = choose_model(request, rows, NOW)
    chosen_key = (choice.provider, choice.model)
    by_key = {c.key: c for c in choice.candidates}

    assert [c.key for c in choice.candidates] == list(request.allowed_models)
    assert [c.verdict for c in choice.candidates].count("chosen") == 1
    assert by_key[chosen_key].verdict == "chosen"

    for candidate in choice.candidates:
        row = rows.get(candidate.key)
        live = row is not None and row["sample_count"] > 0
        assert candidate.has_live_data == live
        exact = reference_cost(row, request.expected_input_tokens, request.expected_output_tokens) if row else None
        if exact is None:
            assert candidate.estimated_cost_usd is None
        else:
            assert abs(Fraction(candidate.estimated_cost_usd) - exact) <= Fraction(1, 2 * 10**12)
        assert candidate.eligible == (
            live and row["p95_latency_ms"] <= request.latency_slo_ms and candidate.estimated_cost_usd is not None
        )

    eligible = [c for c in choice.candidates if c.eligible]
    live = [c for c in choice.candidates if c.has_live_data]
    if eligible:
        assert choice.reason_code == CHEAPEST_WITHIN_SLO
        assert by_key[chosen_key].eligible
        assert all(c.estimated_cost_usd >= choice.estimated_cost_usd for c in eligible)
    elif live:
        assert choice.reason_code == NO_MODEL_MEETS_SLO
        assert by_key[chosen_key].p95_latency_ms == min(c.p95_latency_ms for c in live)
    else:
        assert choice.reason_code == NO_LIVE_DATA
        assert chosen_key == request.allowed_models[0]
