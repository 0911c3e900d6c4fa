"""finops/live_stats.py: sliding windows per model, nearest-rank percentiles, publishing cadence."""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prismops.finops.live_stats import (
    LiveModelWindows, ModelWindow, cost_per_thousand, effective_span_s, nearest_rank, summarize_calls,
)
from prismops.streams.codecs import codec_for

T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _obs(latency_ms: int = 100, status: str = "ok", tokens: int = 10, cost: str = "0.000001",
         provider: str = "openai", model: str = "gpt-4o", prices: tuple[str, str] | None = ("2.50", "10.00"),
         ttft_ms: int | None = None, split: tuple[int, int] | None = None,
         split_cost: tuple[str, str] | None = None) -> dict:
    """An observation as model_observation v2 carries it; `split` is (input, output) tokens, default tokens/0."""
    input_tokens, output_tokens = split or (tokens, 0)
    return {
        "provider": provider, "model": model, "event_time": T0, "latency_ms": latency_ms, "status": status,
        "tokens": tokens, "cost_usd": Decimal(cost),
        "input_price_per_mtok": Decimal(prices[0]) if prices else None,
        "output_price_per_mtok": Decimal(prices[1]) if prices else None,
        "ttft_ms": ttft_ms, "input_tokens": input_tokens, "output_tokens": output_tokens,
        "input_cost_usd": Decimal(split_cost[0]) if split_cost else None,
        "output_cost_usd": Decimal(split_cost[1]) if split_cost else None,
    }


def _window(window_s: float = 60, max_samples: int = 1000) -> ModelWindow:
    return ModelWindow("openai", "gpt-4o", window_s, max_samples)


# --- nearest rank ----------------------------------------------------------------------------------------------


def test_nearest_rank_on_a_hand_computed_list():
    values = sorted([15, 20, 35, 40, 50])
    # Nearest rank: the ceil(q * n)-th smallest value. n=5: p30 -> rank 2, p40 -> rank 2, p50 -> rank 3,
    # p100 -> rank 5 (the textbook example).
    assert nearest_rank(values, 0.05) == 15
    assert nearest_rank(values, 0.30) == 20
    assert nearest_rank(values, 0.40) == 20
    assert nearest_rank(values, 0.50) == 35
    assert nearest_rank(values, 1.00) == 50


def test_nearest_rank_of_one_to_twenty():
    values = list(range(1, 21))
    assert nearest_rank(values, 0.50) == 10   # ceil(10)
    assert nearest_rank(values, 0.95) == 19   # ceil(19)
    assert nearest_rank(values, 0.99) == 20   # ceil(19.8)


def test_nearest_rank_of_a_hundred_values():
    values = [v * 10 for v in range(1, 101)]
    assert nearest_rank(values, 0.50) == 500
    assert nearest_rank(values, 0.95) == 950
    assert nearest_rank(values, 0.99) == 990


def test_nearest_rank_edge_cases():
    assert nearest_rank([], 0.5) == 0.0
    assert nearest_rank([7], 0.01) == 7.0
    assert nearest_rank([7], 0.99) == 7.0
    assert nearest_rank([1, 2], 0.0) == 1.0  # rank is at least 1


def test_snapshot_percentiles_are_exact_not_averages():
    window = _window()
    latencies = [120, 80, 3000, 95, 110, 100, 90, 105, 85, 115]  # one slow outlier
    for latency in latencies:
        window.observe(_obs(latency), _at(0))
    snap = window.snapshot(_at(1))
    # sorted: 80 85 90 95 100 105 110 115 120 3000 ; n=10
    assert snap["p50_latency_ms"] == 100.0   # rank 5
    assert snap["p95_latency_ms"] == 3000.0  # rank ceil(9.5) = 10
    assert snap["p99_latency_ms"] == 3000.0  # rank 10
    assert snap["sample_count"] == 10


# --- window contents ------------------------------------------------------------------------------------------


def test_samples_expire_after_the_window():
    window = _window(window_s=60)
    window.observe(_obs(1000), _at(0))
    window.observe(_obs(200), _at(30))
    window.observe(_obs(300), _at(50))
    assert window.snapshot(_at(59))["sample_count"] == 3
    snap = window.snapshot(_at(75))  # the sample from t=0 is now 75 s old
    assert snap["sample_count"] == 2
    assert snap["p99_latency_ms"] == 300.0
    assert window.snapshot(_at(200))["sample_count"] == 0


def test_a_sample_exactly_window_old_is_still_counted():
    window = _window(window_s=60)
    window.observe(_obs(), _at(0))
    assert window.snapshot(_at(60))["sample_count"] == 1


def test_max_samples_keeps_the_newest():
    window = _window(max_samples=3)
    for latency in (1, 2, 3, 4, 5):
        window.observe(_obs(latency), _at(latency))
    snap = window.snapshot(_at(6))
    assert snap["sample_count"] == 3
    assert [latency for calls in window.samples for latency in calls.latencies] == [3, 4, 5]
    assert snap["p50_latency_ms"] == 4.0


def test_error_rate_counts_error_timeout_and_rate_limited():
    window = _window()
    for status in ("ok", "ok", "ok", "ok", "error", "timeout", "rate_limited", "ok"):
        window.observe(_obs(status=status), _at(0))
    snap = window.snapshot(_at(1))
    assert snap["error_count"] == 3
    assert snap["error_rate"] == 3 / 8


def test_empty_window_snapshot():
    snap = _window().snapshot(_at(0))
    assert snap["sample_count"] == 0
    assert snap["error_rate"] == 0.0
    assert snap["p50_latency_ms"] == 0.0
    assert snap["cost_usd"] == 0
    assert snap["tokens"] == 0
    assert (snap["rate_limited_count"], snap["rate_limited_rate"]) == (0, 0.0)
    assert (snap["p50_ttft_ms"], snap["p95_ttft_ms"], snap["p99_ttft_ms"]) == (None, None, None)
    assert (snap["requests_per_second"], snap["tokens_per_second"]) == (0.0, 0.0)
    assert (snap["input_tokens"], snap["output_tokens"]) == (0, 0)
    assert (snap["cost_per_1k_input_usd"], snap["cost_per_1k_output_usd"]) == (None, None)


def test_rate_limits_are_counted_apart_and_still_count_as_errors():
    window = _window()
    for status in ("ok", "rate_limited", "ok", "error", "rate_limited", "ok", "ok", "timeout"):
        window.observe(_obs(status=status), _at(0))
    snap = window.snapshot(_at(1))
    assert (snap["rate_limited_count"], snap["rate_limited_rate"]) == (2, 2 / 8)
    assert snap["error_count"] == 4


# --- time to first token ------------------------------------------------------------------------------------


def test_ttft_percentiles_are_nearest_rank_over_the_calls_that_reported_one():
    window = _window()
    for ttft in (300, None, 120, 90, None, 2000, 150):  # five reported: sorted 90 120 150 300 2000
        window.observe(_obs(latency_ms=5000, ttft_ms=ttft), _at(0))
    snap = window.snapshot(_at(1))
    assert snap["p50_ttft_ms"] == 150.0   # rank ceil(2.5) = 3
    assert snap["p95_ttft_ms"] == 2000.0  # rank ceil(4.75) = 5
    assert snap["p99_ttft_ms"] == 2000.0
    assert snap["p50_latency_ms"] == 5000.0  # latency percentiles still cover all seven calls
    assert snap["sample_count"] == 7


def test_ttft_is_null_when_no_call_in_the_window_reported_one():
    window = _window(window_s=10)
    window.observe(_obs(ttft_ms=200), _at(0))
    window.observe(_obs(ttft_ms=None), _at(8))
    assert window.snapshot(_at(9))["p95_ttft_ms"] == 200.0
    snap = window.snapshot(_at(15))  # the call with a TTFT expired
    assert (snap["p50_ttft_ms"], snap["p95_ttft_ms"], snap["p99_ttft_ms"]) == (None, None, None)
    assert snap["sample_count"] == 1


# --- throughput -------------------------------------------------------------------------------------------------


def test_effective_span_is_the_time_since_the_oldest_sample_capped_by_the_window_and_at_least_a_second():
    assert effective_span_s(60, _at(0), _at(30)) == 30.0
    assert effective_span_s(60, _at(0), _at(60)) == 60.0
    assert effective_span_s(10, _at(0), _at(25)) == 10.0
    assert effective_span_s(60, _at(5), _at(5.25)) == 1.0


def test_requests_and_tokens_per_second_divide_by_the_span_seen_so_far():
    window = _window(window_s=60)
    window.observe(_obs(tokens=100), _at(0))
    window.observe(_obs(tokens=300), _at(10))
    window.observe(_obs(tokens=200), _at(15))
    snap = window.snapshot(_at(20))  # oldest sample 20 s old: 3 calls / 20 s, 600 tokens / 20 s
    assert snap["requests_per_second"] == 3 / 20
    assert snap["tokens_per_second"] == 600 / 20
    later = window.snapshot(_at(70))  # the t=0 call expired; the oldest (t=10) is 60 s old: the window caps the span
    assert later["requests_per_second"] == 2 / 60
    assert later["tokens_per_second"] == 500 / 60


def test_a_burst_in_the_last_instant_is_divided_by_one_second_not_zero():
    window = _window(window_s=60)
    for _ in range(4):
        window.observe(_obs(tokens=25), _at(0))
    snap = window.snapshot(_at(0.1))
    assert (snap["requests_per_second"], snap["tokens_per_second"]) == (4.0, 100.0)


# --- tokens and unit costs by direction ----------------------------------------------------------------------


def test_tokens_by_direction_sum_over_the_window():
    window = _window(window_s=10)
    window.observe(_obs(tokens=1500, split=(1000, 500)), _at(0))
    window.observe(_obs(tokens=70, split=(40, 30)), _at(5))
    snap = window.snapshot(_at(6))
    assert (snap["input_tokens"], snap["output_tokens"], snap["tokens"]) == (1040, 530, 1570)
    assert window.snapshot(_at(11))["input_tokens"] == 40


def test_cost_per_1k_tokens_is_the_windows_cost_over_its_tokens():
    window = _window()
    window.observe(_obs(tokens=1500, split=(1000, 500), split_cost=("0.0025", "0.005")), _at(0))
    window.observe(_obs(tokens=3500, split=(3000, 500), split_cost=("0.0075", "0.006")), _at(1))
    snap = window.snapshot(_at(2))
    # input: 0.01 USD / 4000 tokens x 1000 = 0.0025; output: 0.011 / 1000 x 1000 = 0.011
    assert snap["cost_per_1k_input_usd"] == Decimal("0.0025")
    assert snap["cost_per_1k_output_usd"] == Decimal("0.011")
    assert snap["cost_per_1k_input_usd"].as_tuple().exponent == -12


def test_cost_per_1k_tokens_leaves_out_unpriced_calls_and_is_null_without_tokens():
    window = _window()
    window.observe(_obs(tokens=1000, split=(1000, 0), split_cost=("0.003", "0")), _at(0))
    window.observe(_obs(tokens=9000, split=(9000, 0), split_cost=None), _at(1))  # unpriced: no split
    snap = window.snapshot(_at(2))
    assert snap["cost_per_1k_input_usd"] == Decimal("0.003")  # not 0.003 / 10,000 tokens
    assert snap["cost_per_1k_output_usd"] is None  # priced calls, but no output tokens
    assert snap["input_tokens"] == 10_000
    unpriced = _window()
    unpriced.observe(_obs(split=(10, 5), split_cost=None), _at(0))
    assert unpriced.snapshot(_at(1))["cost_per_1k_input_usd"] is None


def test_cost_per_thousand_rounds_once_half_even_to_12_places():
    assert cost_per_thousand(Decimal("0.000000000001"), 2000) == Decimal("0")          # 0.5e-12: tie, to even
    assert cost_per_thousand(Decimal("0.000000000003"), 2000) == Decimal("2E-12")      # 1.5e-12: tie, to even
    assert cost_per_thousand(Decimal("0.000000000001"), 3) == Decimal("0.000000000333")
    assert cost_per_thousand(Decimal("0.000000000002"), 3) == Decimal("0.000000000667")
    assert cost_per_thousand(Decimal("1"), 0) is None
    # 28 significant digits (Decimal's default context) would round this quotient before the final rounding
    big = Decimal("1234567890123456.000000000001")
    assert cost_per_thousand(big, 7) == Decimal("176366841446208000.000000000143")


@given(st.decimals(min_value=0, max_value=Decimal("1e15"), places=12, allow_nan=False, allow_infinity=False),
       st.integers(min_value=1, max_value=10**12))
def test_cost_per_thousand_matches_a_high_precision_quotient(cost, tokens):
    with localcontext() as context:
        context.prec = 120
        expected = (cost * 1000 / tokens).quantize(Decimal("1e-12"), rounding=ROUND_HALF_EVEN)
    assert cost_per_thousand(cost, tokens) == expected


def test_v1_observations_count_without_the_v2_figures():
    codec = codec_for("model_observation")
    v1 = {k: v for k, v in _obs(latency_ms=250, tokens=40).items()
          if k not in ("ttft_ms", "input_tokens", "output_tokens", "input_cost_usd", "output_cost_usd")}
    decoded = codec.decode(codec.encode(v1, version=1))
    assert (decoded["ttft_ms"], decoded["input_tokens"], decoded["input_cost_usd"]) == (None, 0, None)
    window = _window()
    window.observe(decoded, _at(0))
    window.observe(v1, _at(0))  # a dict without the v2 keys at all
    snap = window.snapshot(_at(1))
    assert (snap["sample_count"], snap["tokens"], snap["p50_latency_ms"]) == (2, 80, 250.0)
    assert (snap["input_tokens"], snap["p50_ttft_ms"], snap["cost_per_1k_input_usd"]) == (0, None, None)


def test_cost_and_tokens_sum_exactly_over_the_window():
    window = _window(window_s=10)
    window.observe(_obs(tokens=100, cost="0.000000000001"), _at(0))
    window.observe(_obs(tokens=250, cost="0.1"), _at(5))
    window.observe(_obs(tokens=50, cost="0.2"), _at(6))
    snap = window.snapshot(_at(7))
    assert snap["tokens"] == 400
    assert snap["cost_usd"] == Decimal("0.300000000001")
    assert window.snapshot(_at(12))["cost_usd"] == Decimal("0.3")  # first sample expired


def test_prices_stick_from_the_last_priced_observation():
    window = _window()
    window.observe(_obs(prices=("2.50", "10.00")), _at(0))
    window.observe(_obs(prices=None), _at(1))  # an unpriced call does not erase the known price
    snap = window.snapshot(_at(2))
    assert snap["input_price_per_mtok"] == Decimal("2.50")
    assert snap["output_price_per_mtok"] == Decimal("10.00")
    window.observe(_obs(prices=("3.00", "12.00")), _at(3))
    assert window.snapshot(_at(4))["input_price_per_mtok"] == Decimal("3.00")


def test_snapshot_encodes_with_the_model_live_stats_schema():
    window = _window()
    for latency, status in ((100, "ok"), (250, "error"), (900, "rate_limited")):
        window.observe(_obs(latency, status, cost="0.00725", ttft_ms=latency // 3, split=(7, 3),
                            split_cost=("0.00225", "0.005")), _at(0))
    snap = window.snapshot(_at(1))
    assert snap["cost_per_1k_input_usd"] == Decimal("0.321428571429")  # 0.00675 USD / 21 tokens x 1000
    codec = codec_for("model_live_stats")
    assert codec.decode(codec.encode(snap)) == snap
    empty = _window().snapshot(_at(1))
    assert codec.decode(codec.encode(empty))["sample_count"] == 0


# --- LiveModelWindows publishing cadence ---------------------------------------------------------------------


def _keys(rows: list[dict]) -> set[tuple[str, str]]:
    return {(r["provider"], r["model"]) for r in rows}


def test_due_snapshots_returns_changed_models_only():
    live = LiveModelWindows(window_s=60, max_samples=100, refresh_s=10)
    live.observe(_obs(model="gpt-4o"), _at(0))
    live.observe(_obs(model="gpt-4o-mini"), _at(0))
    assert _keys(live.due_snapshots(_at(1))) == {("openai", "gpt-4o"), ("openai", "gpt-4o-mini")}
    assert live.due_snapshots(_at(2)) == []  # nothing changed, nothing stale
    live.observe(_obs(model="gpt-4o-mini"), _at(3))
    rows = live.due_snapshots(_at(4))
    assert _keys(rows) == {("openai", "gpt-4o-mini")}
    assert rows[0]["sample_count"] == 2


def test_stale_rows_are_republished_after_refresh_so_old_samples_age_out():
    live = LiveModelWindows(window_s=5, max_samples=100, refresh_s=10)
    live.observe(_obs(), _at(0))
    assert live.due_snapshots(_at(1))[0]["sample_count"] == 1
    assert live.due_snapshots(_at(10.9)) == []  # 9.9 s since the last row: not yet
    [row] = live.due_snapshots(_at(11))          # 10 s: re-published, and the sample has expired
    assert row["sample_count"] == 0
    assert row["updated_at"] == _at(11)
    assert live.due_snapshots(_at(12)) == []


def test_windows_are_kept_per_provider_and_model():
    live = LiveModelWindows(window_s=60, max_samples=100)
    live.observe(_obs(latency_ms=100, provider="openai", model="m"), _at(0))
    live.observe(_obs(latency_ms=900, provider="local", model="m"), _at(0))
    rows = {(r["provider"], r["model"]): r for r in live.due_snapshots(_at(1))}
    assert rows[("openai", "m")]["p50_latency_ms"] == 100.0
    assert rows[("local", "m")]["p50_latency_ms"] == 900.0
    assert rows[("openai", "m")]["window_seconds"] == 60


@pytest.mark.parametrize("max_samples", [1, 2])
def test_live_windows_apply_the_sample_cap(max_samples):
    live = LiveModelWindows(window_s=60, max_samples=max_samples)
    for latency in (10, 20, 30):
        live.observe(_obs(latency_ms=latency), _at(0))
    [row] = live.due_snapshots(_at(1))
    assert row["sample_count"] == max_samples


def recomputed_row(window: ModelWindow, now: dt.datetime) -> dict:
    """The row computed from the window's calls in one pass (how rows were built before the running totals)."""
    samples = list(window.samples)
    latencies = sorted(latency for calls in samples for latency in calls.latencies)
    ttfts = sorted(ttft for calls in samples for ttft in calls.ttfts)

    def unit(priced: int, cost: Decimal, tokens: int):
        return cost_per_thousand(cost, tokens) if priced else None

    return {
        "sample_count": sum(s.count for s in samples), "error_count": sum(s.failed for s in samples),
        "rate_limited_count": sum(s.rate_limited for s in samples), "tokens": sum(s.tokens for s in samples),
        "cost_usd": sum((s.cost_usd for s in samples), Decimal(0)),
        "p50_latency_ms": nearest_rank(latencies, 0.5), "p95_latency_ms": nearest_rank(latencies, 0.95),
        "p99_latency_ms": nearest_rank(latencies, 0.99),
        "p95_ttft_ms": nearest_rank(ttfts, 0.95) if ttfts else None,
        "input_tokens": sum(s.input_tokens for s in samples), "output_tokens": sum(s.output_tokens for s in samples),
        "cost_per_1k_input_usd": unit(sum(s.priced_inputs for s in samples),
                                      sum((s.priced_input_cost for s in samples), Decimal(0)),
                                      sum(s.priced_input_tokens for s in samples)),
        "cost_per_1k_output_usd": unit(sum(s.priced_outputs for s in samples),
                                       sum((s.priced_output_cost for s in samples), Decimal(0)),
                                       sum(s.priced_output_tokens for s in samples)),
    }


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(
    st.integers(0, 20),  # seconds after the previous call
    st.integers(1, 5000), st.sampled_from(["ok", "ok", "error", "rate_limited", "timeout"]),
    st.integers(0, 10**12), st.one_of(st.none(), st.integers(0, 3000)), st.integers(0, 5000), st.integers(0, 2000),
    st.booleans(), st.booleans()), min_size=1, max_size=120), st.integers(1, 40))
def test_running_totals_equal_a_full_pass_over_the_samples(calls, max_samples):
    window = ModelWindow("openai", "gpt-4o", window_s=60, max_samples=max_samples)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for gap, latency, status, cost_units, ttft, input_tokens, output_tokens, priced_in, priced_out in calls:
        now += dt.timedelta(seconds=gap)
        cost = Decimal(cost_units).scaleb(-12)
        window.observe({
            "latency_ms": latency, "status": status, "tokens": input_tokens + output_tokens, "cost_usd": cost,
            "ttft_ms": ttft, "input_tokens": input_tokens, "output_tokens": output_tokens,
            "input_cost_usd": cost / 2 if priced_in else None, "output_cost_usd": cost - cost / 2 if priced_out else None,
        }, now)
        row = window.snapshot(now)
        assert {key: row[key] for key in recomputed_row(window, now)} == recomputed_row(window, now)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["gpt-4o", "gpt-4o-mini", "claude"]), st.integers(1, 5000),
    st.sampled_from(["ok", "ok", "error", "rate_limited", "timeout"]), st.integers(0, 10**9),
    st.one_of(st.none(), st.integers(0, 3000)), st.integers(0, 5000), st.integers(0, 2000), st.booleans(),
    st.one_of(st.none(), st.sampled_from([("2.50", "10.00"), ("0.15", "0.60")]))), min_size=1, max_size=150),
    st.lists(st.integers(1, 40), min_size=1, max_size=10))
def test_a_window_fed_summaries_of_records_holds_what_it_holds_fed_each_call(calls, cuts):
    observations = [_obs(latency, status, input_tokens + output_tokens, str(Decimal(cost).scaleb(-12)), model=model,
                         prices=prices, ttft_ms=ttft, split=(input_tokens, output_tokens),
                         split_cost=(str(Decimal(cost).scaleb(-13)), str(Decimal(cost).scaleb(-13))) if priced else None)
                    for model, latency, status, cost, ttft, input_tokens, output_tokens, priced, prices in calls]
    one_by_one, summed = LiveModelWindows(window_s=60, max_samples=10**6), LiveModelWindows(window_s=60, max_samples=10**6)
    at, sizes = 0, cuts * len(observations)
    for size in sizes:
        if at >= len(observations):
            break
        record = observations[at:at + size]
        for observation in record:
            one_by_one.observe(observation, _at(at))
        for summary in summarize_calls(record):
            summed.observe_summary(summary, _at(at))
        at += size
    for now in (_at(at), _at(at + 45)):  # and after the oldest records left the window
        assert {(r["provider"], r["model"]): r for r in summed.due_snapshots(now)} == {
            (r["provider"], r["model"]): r for r in one_by_one.due_snapshots(now)}


def test_call_summaries_travel_as_model_call_summary_batches():
    from prismops.streams.codecs import batch_codec_for

    summaries = summarize_calls([_obs(120, ttft_ms=40, split=(7, 3), split_cost=("0.000001", "0.000002")),
                                 _obs(340, "timeout", prices=None), _obs(90, model="gpt-4o-mini")])
    codec = batch_codec_for("model_call_summary")
    assert [item.value for item in codec.decode(codec.encode(summaries)).items] == summaries
    gpt4o = summaries[0]
    assert (gpt4o["calls"], gpt4o["failed"], gpt4o["latencies_ms"], gpt4o["ttfts_ms"]) == (2, 1, [120, 340], [40])
    assert gpt4o["input_price_per_mtok"] == Decimal("2.50")  # the last priced call's prices
