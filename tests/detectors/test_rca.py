"""Contribution analysis: which dimension values explain an anomalous window, with their share of the delta."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prismops.detectors.rca import ABSENT, DimensionTotals, explain, explain_rows, prompt_length_bucket, rca_dimensions
from prismops.errors import FieldRuleError


def call(model_version="v1", deployment="d1", feature="chat", prompt_chars=2_000, cache_hit=False, fallback=False):
    return rca_dimensions({"model": "gpt-x", "model_version": model_version, "deployment_id": deployment,
                           "provider": "openai", "feature": feature, "prompt_chars": prompt_chars,
                           "cache_hit": cache_hit, "fallback": fallback})


def baseline_rows():
    """An hour of normal traffic: v1 only, deployments and features mixed, each call $0.01."""
    rows = []
    for minute in range(60):
        for n in range(10):
            rows.append((call(deployment=f"d{n % 3}", feature=("chat", "search")[n % 2], prompt_chars=500 + 300 * n),
                         Decimal("0.01")))
    return rows


def test_a_spike_from_a_new_model_version_is_blamed_on_that_version_first():
    window = [(call(deployment=f"d{n % 3}", feature=("chat", "search")[n % 2], prompt_chars=500 + 300 * n), Decimal("0.01"))
              for n in range(10)]
    window += [(call(model_version="v2", deployment=f"d{n % 3}", feature=("chat", "search")[n % 2],
                     prompt_chars=500 + 300 * n), Decimal("0.05")) for n in range(6)]
    top = explain_rows(window, baseline_rows(), window_s=60, baseline_s=3600)
    assert len(top) <= 3
    first = top[0]
    assert (first.dimension, first.value) == ("model_version", "v2")
    assert first.new_value and first.baseline == 0
    assert first.actual == Decimal("0.30") and first.delta == Decimal("0.30")
    assert first.share == Decimal("1.0000")  # the window cost 0.40 against a baseline of 0.10 a minute
    assert all(c.dimension != "provider" for c in top)  # openai carries all traffic: no surprise, no cause


def test_shares_are_rounded_half_even_to_four_places_and_the_rest_is_ranked_by_surprise():
    window = DimensionTotals.of_rows([({"feature": "chat"}, Decimal("2")), ({"feature": "search"}, Decimal("1")),
                                      ({"feature": "new"}, Decimal("1"))])
    baseline = DimensionTotals.of_rows([({"feature": "chat"}, Decimal("1")), ({"feature": "search"}, Decimal("0"))])
    top = explain(window, baseline, min_share=Decimal(0))
    assert [(c.value, c.share) for c in top] == [("new", Decimal("0.3333")), ("search", Decimal("0.3333")),
                                                 ("chat", Decimal("0.3333"))]
    assert top[0].surprise > top[2].surprise


def test_a_drop_is_explained_by_what_fell():
    baseline = DimensionTotals.of_rows([({"feature": "chat"}, Decimal("5")), ({"feature": "search"}, Decimal("5"))])
    window = DimensionTotals.of_rows([({"feature": "chat"}, Decimal("5")), ({"feature": "search"}, Decimal("1"))])
    (cause,) = explain(window, baseline)
    assert (cause.value, cause.delta, cause.share) == ("search", Decimal("-4.000000000000"), Decimal("1.0000"))


def test_no_change_has_no_explanation():
    rows = [({"feature": "chat"}, Decimal("3"))]
    assert explain_rows(rows, rows, window_s=60, baseline_s=60) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["x", "y"]),
                          st.decimals(min_value=0, max_value=100, places=4)), min_size=1, max_size=30),
       st.lists(st.tuples(st.sampled_from(["a", "b", "d"]), st.sampled_from(["x", "y"]),
                          st.decimals(min_value=0, max_value=100, places=4)), min_size=1, max_size=30))
def test_each_dimensions_deltas_add_up_to_the_total_delta(window_rows, baseline_rows):
    window = DimensionTotals.of_rows(({"one": a, "two": b}, v) for a, b, v in window_rows)
    baseline = DimensionTotals.of_rows(({"one": a, "two": b}, v) for a, b, v in baseline_rows)
    total_delta = window.total - baseline.total
    every = explain(window, baseline, top=100, min_share=Decimal("-Infinity"))
    if total_delta == 0:
        assert every == []
        return
    for dimension in ("one", "two"):
        assert sum(c.delta for c in every if c.dimension == dimension) == total_delta


@pytest.mark.parametrize("chars, bucket", [(None, ABSENT), (0, "<1k tok"), (3_999, "<1k tok"), (4_000, "1k-4k tok"),
                                           (63_999, "4k-16k tok"), (255_999, "16k-64k tok"), (256_000, ">=64k tok")])
def test_prompt_length_buckets(chars, bucket):
    assert prompt_length_bucket(chars) == bucket


def test_dimensions_of_an_event_fill_gaps_and_spell_flags():
    dims = rca_dimensions({"model": "m", "cache_hit": True, "fallback": False, "prompt_chars": 10, "deployment_id": ""})
    assert dims["cache_hit"] == "true" and dims["fallback"] == "false"
    assert dims["model_version"] == ABSENT and dims["deployment_id"] == ABSENT and dims["prompt_length"] == "<1k tok"
    with pytest.raises(FieldRuleError) as error:
        rca_dimensions({"prompt_chars": -1})
    assert error.value.field == "prompt_chars"


def test_durations_must_be_positive():
    with pytest.raises(FieldRuleError) as error:
        explain_rows([], [], window_s=60, baseline_s=0)
    assert error.value.field == "baseline_s"
