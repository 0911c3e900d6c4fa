"""Event-time tumbling windows: grace, ordered closing, late events reported, exact aggregates, state round trip."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prismops.detectors.rca import rca_dimensions
from prismops.detectors.series import SeriesKey, TumblingWindows, UsageSample, WindowAggregate
from prismops.errors import FieldRuleError

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def sample(seconds: float, cost: str = "0.001", tenant: str = "acme", latency: float = 100.0, error: bool = False,
           tokens: tuple[int, int] = (100, 50), model_version: str = "v1") -> UsageSample:
    return UsageSample.from_usage_event({
        "event_time": T0 + dt.timedelta(seconds=seconds), "tenant": tenant, "model": "gpt-x", "service": "api",
        "feature": "chat", "input_tokens": tokens[0], "output_tokens": tokens[1], "latency_ms": latency,
        "status": "error" if error else "ok", "model_version": model_version, "prompt_chars": 1200,
        "provider": "openai", "cache_hit": False, "fallback": False,
    }, Decimal(cost))


def test_a_window_closes_only_after_its_grace_and_carries_exact_metrics():
    windows = TumblingWindows(window_s=60, grace_s=30, groupings={"tenant_model": ("tenant", "model")})
    for i, latency in enumerate([100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400, 1500,
                                 1600, 1700, 1800, 1900, 5000]):
        advance = windows.add(sample(i, cost="0.000000000001", latency=latency, error=i % 4 == 0, tokens=(i, 10)))
        assert advance.closed == [] and advance.late == []
    assert windows.add(sample(89)).closed == []  # 12:01:29 is inside the grace of [12:00, 12:01)
    (closed,) = windows.add(sample(90)).closed
    assert closed.key == SeriesKey("tenant_model", ("acme", "gpt-x")) and str(closed.key) == "tenant_model:acme/gpt-x"
    assert (closed.start, closed.end) == (T0, T0 + dt.timedelta(minutes=1))
    metrics = closed.aggregate.metrics()
    assert metrics["cost"] == Decimal("0.000000000020")  # twenty picodollars, not a float sum
    assert metrics["tokens_per_request"] == (sum(range(20)) + 200) / 20
    assert metrics["latency_p95_ms"] == 1900  # nearest rank: the 19th of 20 sorted samples
    assert metrics["error_rate"] == 5 / 20


def test_late_events_beyond_grace_are_reported_not_merged():
    windows = TumblingWindows(window_s=60, grace_s=10)
    windows.add(sample(5))
    closed = windows.add(sample(75)).closed  # watermark 12:01:15 closes [12:00, 12:01) for both groupings
    assert [str(c.key) for c in closed] == ["service_feature:api/chat", "tenant_model:acme/gpt-x"]
    advance = windows.add(sample(30, cost="9"))
    assert advance.closed == []
    assert [(str(late.key), late.window_start) for late in advance.late] == [
        ("tenant_model:acme/gpt-x", T0), ("service_feature:api/chat", T0)]
    assert windows.late_count == 2
    assert all(a.cost != Decimal(9) for a in windows.open.values())


def test_closed_windows_come_out_in_time_then_key_order():
    windows = TumblingWindows(window_s=60, grace_s=120, groupings={"tenant_model": ("tenant", "model")})
    for seconds, tenant in [(70, "zeta"), (10, "beta"), (65, "alpha"), (20, "alpha")]:
        assert windows.add(sample(seconds, tenant=tenant)).late == []
    closed = windows.advance(T0 + dt.timedelta(minutes=5))
    assert [(c.start.minute, c.key.values[0]) for c in closed] == [(0, "alpha"), (0, "beta"), (1, "alpha"), (1, "zeta")]
    assert windows.advance(T0) == []  # the watermark never goes back


def test_flush_closes_everything_and_later_events_for_those_windows_are_late():
    windows = TumblingWindows(window_s=60, grace_s=30, groupings={"tenant_model": ("tenant", "model")})
    windows.add(sample(1))
    assert len(windows.flush()) == 1 and windows.open == {}
    assert len(windows.add(sample(2)).late) == 1


def test_state_round_trip_keeps_open_windows_and_the_watermark():
    windows = TumblingWindows(window_s=60, grace_s=30)
    windows.add(sample(1, cost="0.5"))
    restored = TumblingWindows.from_bytes(windows.to_bytes())
    restored.add(sample(2, cost="0.25"))
    closed = restored.advance(T0 + dt.timedelta(minutes=3))
    assert [c.aggregate.cost for c in closed] == [Decimal("0.75"), Decimal("0.75")]


def test_windows_keep_rca_totals_per_dimension():
    windows = TumblingWindows(window_s=60, grace_s=0, groupings={"tenant_model": ("tenant", "model")})
    windows.add(sample(1, cost="1", model_version="v1"))
    windows.add(sample(2, cost="3", model_version="v2", error=True))
    (closed,) = windows.advance(T0 + dt.timedelta(minutes=1))
    totals = closed.aggregate.totals_for("cost")
    assert totals.by_value[("model_version", "v2")] == Decimal(3) and totals.total == Decimal(4)
    assert closed.aggregate.totals_for("error_rate").by_value[("model_version", "v2")] == 1
    assert closed.aggregate.totals_for("latency_p95_ms") is None


def test_bad_configuration_and_events_name_the_field():
    with pytest.raises(FieldRuleError) as error:
        TumblingWindows(window_s=0)
    assert error.value.field == "window_s"
    with pytest.raises(FieldRuleError) as error:
        UsageSample.from_usage_event({"event_time": T0}, 0.5)  # type: ignore[arg-type]
    assert (error.value.field, error.value.rule) == ("cost", "decimal")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=600), st.integers(min_value=0, max_value=10_000)),
                min_size=1, max_size=60),
       st.integers(min_value=0, max_value=120))
def test_every_event_is_counted_exactly_once_or_reported_late(events, grace_s):
    windows = TumblingWindows(window_s=60, grace_s=grace_s, groupings={"tenant_model": ("tenant", "model")})
    closed, late_total, late_count, newest = [], Decimal(0), 0, None
    for seconds, micros in events:
        advance = windows.add(sample(seconds, cost=f"0.{micros:06d}"))
        closed += advance.closed
        window_end = seconds - seconds % 60 + 60
        assert bool(advance.late) == (newest is not None and window_end + grace_s <= newest)
        newest = seconds if newest is None else max(newest, seconds)
        if advance.late:
            late_total += Decimal(f"0.{micros:06d}")
            late_count += 1
    closed += windows.flush()
    assert sum(c.aggregate.requests for c in closed) + late_count == len(events)
    assert sum((c.aggregate.cost for c in closed), Decimal(0)) + late_total == sum(Decimal(f"0.{m:06d}") for _, m in events)
    starts = [(c.start, str(c.key)) for c in closed]
    assert starts == sorted(starts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-10**9, max_value=10**9)
                | st.integers(min_value=-2000, max_value=2000).map(lambda seconds: seconds * 10**6),  # on boundaries
                min_size=1, max_size=40),
       st.sampled_from([1, 2, 60]) | st.integers(min_value=1, max_value=3600), st.integers(min_value=0, max_value=600))
def test_remembered_window_spans_give_what_the_arithmetic_gives(offsets_us, window_s, grace_s):
    """window_start and the closing window remember their last span; in any order of moments, to the microsecond,
    they equal the floor arithmetic, and a restored copy (which remembers nothing) agrees."""
    windows = TumblingWindows(window_s=window_s, grace_s=grace_s)
    width, tick = dt.timedelta(seconds=window_s), dt.timedelta(microseconds=1)
    moments = []
    for offset in offsets_us:  # each moment, then the edges of its window and of the next
        moment = T0 + dt.timedelta(microseconds=offset)
        floor = (moment - EPOCH) // dt.timedelta(seconds=1)
        start = EPOCH + dt.timedelta(seconds=floor - floor % window_s)
        moments += [moment, start + width - tick, start + width, start, start - tick]
    for moment in moments:
        floor = (moment - EPOCH) // dt.timedelta(seconds=1)
        assert windows.window_start(moment) == EPOCH + dt.timedelta(seconds=floor - floor % window_s)
        windows.watermark = moment
        shifted = (moment - dt.timedelta(seconds=window_s + grace_s) - EPOCH) // dt.timedelta(seconds=1)
        closing = EPOCH + dt.timedelta(seconds=shifted - shifted % window_s)
        assert windows._closing() == closing
        for start in (closing, closing + dt.timedelta(seconds=window_s)):
            assert windows._is_closed(start) == (start + dt.timedelta(seconds=window_s + grace_s) <= moment)
        restored = TumblingWindows.from_bytes(windows.to_bytes())
        assert "_span" not in restored.__dict__ and restored._closing() == closing


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["0.001", "0.25", "1.000000000001", "7"]), st.booleans(),
                          st.sampled_from(["v1", "v2", ""]), st.integers(0, 5000)), min_size=1, max_size=40))
def test_samples_added_together_give_the_totals_of_adding_them_one_by_one(rows):
    """add_many sums the samples that share their (shared) dimensions first; every total, per dimension value
    included, equals adding the same samples one at a time, with samples whose dimensions are separate copies."""
    shared = [sample(1, cost, error=error, model_version=version, tokens=(tokens, 7)) for cost, error, version, tokens in rows]
    copies = [UsageSample(s.event_time, s.cost, s.input_tokens, s.output_tokens, s.latency_ms, s.error, s.fields,
                          dict(s.dimensions)) for s in shared]
    together, one_by_one = WindowAggregate(), WindowAggregate()
    together.add_many(shared)
    for each in copies:
        one_by_one.add(each)
    assert together == one_by_one
    assert list(together.cost_by_dimension.by_value) == list(one_by_one.cost_by_dimension.by_value)


def test_equal_dimension_values_share_one_mapping_equal_to_rca_dimensions():
    first, second, other = sample(1), sample(2, cost="9"), sample(3, model_version="v9")
    assert first.dimensions is second.dimensions and first.dimensions is not other.dimensions
    assert first.dimensions == rca_dimensions({"model": "gpt-x", "model_version": "v1", "prompt_chars": 1200,
                                               "provider": "openai", "feature": "chat", "cache_hit": False,
                                               "fallback": False})


VIEW_VALUES = st.one_of(st.none(), st.sampled_from(["", "acme", "gpt-x", "1", "True", "true"]), st.booleans(),
                        st.sampled_from([0, 1, 1.0, Decimal(1)]))


@settings(max_examples=300)
@given(st.lists(st.fixed_dictionaries({name: VIEW_VALUES for name in (
    "tenant", "model", "service", "feature", "model_version", "deployment_id", "provider", "fallback", "cache_hit")},
    optional={"prompt_chars": st.sampled_from([None, 10, 5_000, 300_000])}), min_size=1, max_size=30))
def test_shared_views_equal_the_views_made_afresh_whatever_came_before(events):
    """The memo never answers for another combination: 1 == True == 1.0, but the flag True reads "true", the number
    1 "1" and 1.0 "1.0"; the views always equal the key fields and rca_dimensions made for the event alone."""
    from prismops.detectors.series import KEY_FIELDS, shared_sample_views

    for event in events:
        fields, dimensions = shared_sample_views(event)
        assert fields == {name: str(event.get(name) or "(none)") for name in KEY_FIELDS}
        assert dimensions == rca_dimensions(event)


def test_equal_events_share_their_key_fields_and_text_fields_of_other_types_are_not_remembered():
    from prismops.detectors.series import shared_sample_views

    event = {"tenant": "acme", "model": "gpt-x", "service": "api", "feature": "chat", "fallback": True}
    assert shared_sample_views(event)[0] is shared_sample_views(dict(event))[0]
    assert shared_sample_views(event | {"tenant": 1})[0]["tenant"] == "1"
    assert shared_sample_views(event | {"tenant": 1.0})[0]["tenant"] == "1.0"
    assert shared_sample_views(event | {"fallback": 1})[1]["fallback"] == "1"


def test_keys_remembered_per_fields_mapping_stay_right_when_a_mapping_is_gone_and_its_id_comes_back():
    """keys_of remembers keys by the id of a sample's shared fields mapping, with the mapping kept beside them: a
    new mapping at a reused id (the memo of shared views started over) still gets its own keys."""
    windows = TumblingWindows(groupings={"tenant_model": ("tenant", "model")})
    for index in range(2_000):  # fresh mappings, dropped at once: CPython hands their ids out again
        fields = {"tenant": f"t{index}", "model": "gpt-x"}
        made = UsageSample(T0, Decimal(0), 1, 1, 1.0, False, fields, {})
        assert windows.keys_of(made) == [SeriesKey("tenant_model", (f"t{index}", "gpt-x"))]
        assert windows.keys_of(made) == windows.keys_of(made) and windows.keys_of(made) is not windows.keys_of(made)


def test_a_series_key_hashes_as_its_fields_and_its_remembered_hash_is_never_pickled():
    """A key restored in another process (another hash seed) must hash as that process hashes its fields."""
    import pickle
    import subprocess
    import sys

    key = SeriesKey("tenant_model", ("acme", "gpt-x"))
    assert hash(key) == hash(("tenant_model", ("acme", "gpt-x"))) == hash(key)
    data = pickle.dumps({key: 1}, protocol=5)
    assert b"_hash" not in data
    script = ("import pickle, sys; from prismops.detectors.series import SeriesKey; "
              "table = pickle.loads(sys.stdin.buffer.read()); key = SeriesKey('tenant_model', ('acme', 'gpt-x')); "
              "(restored,) = table; print(table.get(key), hash(restored) == hash(('tenant_model', ('acme', 'gpt-x'))))")
    for seed in ("1", "2"):
        answer = subprocess.run([sys.executable, "-c", script], input=data, capture_output=True, check=True,
                                env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"})
        assert answer.stdout.split() == [b"1", b"True"]
