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
    every = explain(window, baseline, top=100, min_share=Decimal("-Infinity"), explained=None, prune=False)
    if total_delta == 0:
        assert every == []
        return
    for dimension in ("one", "two"):
        assert sum(c.delta for c in every if c.dimension == dimension) == total_delta


def cube_row(model, version, provider, deployment, feature):
    return {"model": model, "model_version": version, "provider": provider, "deployment_id": deployment, "feature": feature}


def cube(factor_of=lambda row: 1):
    """Two models of two versions each, two providers of two deployments each, three features; $1 a cell."""
    rows = []
    for m in ("m0", "m1"):
        for v in ("v0", "v1"):
            for p in ("p0", "p1"):
                for d in ("d0", "d1"):
                    for f in ("chat", "search", "code"):
                        row = cube_row(m, f"{m}@{v}", p, f"{p}/{d}", f)
                        rows.append((row, Decimal(factor_of(row))))
    return DimensionTotals.of_rows(rows)


def test_a_single_cause_is_listed_alone_not_padded_with_its_parent_or_its_spread():
    baseline = cube()
    window = cube(lambda row: 3 if row["model_version"] == "m1@v0" else 1)
    assert [(c.dimension, c.value) for c in explain(window, baseline)] == [("model_version", "m1@v0")]
    every = explain(window, baseline, explained=None, prune=False, top=10)
    assert ("model", "m1") in {(c.dimension, c.value) for c in every}  # the parent tells the same story


def test_when_the_parent_is_the_cause_its_children_are_not_listed():
    baseline = cube()
    window = cube(lambda row: 0 if row["provider"] == "p1" else 1)  # every deployment of p1 fell
    assert [(c.dimension, c.value) for c in explain(window, baseline)] == [("provider", "p1")]


def test_a_new_version_is_blamed_not_the_model_whose_traffic_it_took_and_two_new_values_are_both_listed():
    baseline = cube()
    rows = []
    for row, amount in ((r, Decimal(1)) for r in _rows_of_cube()):
        if row["model"] == "m0" and row["model_version"] == "m0@v0":
            rows.append((dict(row, model_version="m0@new"), Decimal(3)))  # all of v0's traffic, at 3x the cost
        elif row["provider"] == "p0" and row["deployment_id"] == "p0/d0" and row["feature"] == "chat":
            rows.append((dict(row, deployment_id="p0/new"), Decimal(4)))
        else:
            rows.append((row, amount))
    top = explain(DimensionTotals.of_rows(rows), baseline)
    assert {(c.dimension, c.value) for c in top} == {("model_version", "m0@new"), ("deployment_id", "p0/new")}
    assert all(c.new_value for c in top)


def _rows_of_cube():
    return [cube_row(m, f"{m}@{v}", p, f"{p}/{d}", f) for m in ("m0", "m1") for v in ("v0", "v1") for p in ("p0", "p1")
            for d in ("d0", "d1") for f in ("chat", "search", "code")]


def test_two_causes_in_different_dimensions_are_both_listed():
    baseline = cube()
    window = cube(lambda row: (4 if row["deployment_id"] == "p1/d0" else 1) * (4 if row["feature"] == "code" else 1))
    assert {(c.dimension, c.value) for c in explain(window, baseline)} == {("deployment_id", "p1/d0"),
                                                                          ("feature", "code")}


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
