"""finops/gpu_windows.py: GPU usage rules, event-time windows with grace, too_late, and processing-time close."""

from __future__ import annotations

import datetime as dt
import json
import time
import unicodedata
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from prismops import schemas
from prismops.errors import FieldRuleError
from prismops.finops.gpu_allocation import attribute_window
from prismops.finops.gpu_pricing import UnknownMigProfile, load_gpu_catalog
from prismops.finops.gpu_windows import (
    TEXT_FIELD_LIMITS as GPU_TEXT_FIELD_LIMITS,
    InvalidGpuUsage,
    PoolWindows,
    split_into_windows,
    to_micros,
    validate_gpu_usage,
    window_bounds,
)
from prismops.finops.text_rules import ID_MAX_CHARS, LABELS_MAX, NAME_MAX_CHARS
from prismops.streams.codecs import codec_for
from prismops.streams.simulation import GpuTrafficGenerator

UTC = dt.timezone.utc
CATALOG = load_gpu_catalog()
T0 = dt.datetime(2026, 5, 1, 10, 0, tzinfo=UTC)  # a window boundary for 60 s and 3600 s windows
NOW = T0 + dt.timedelta(hours=6)
WINDOW_S, GRACE_S = 60, 10
KEY = b"aws-use1/p5-a"


def seconds(n: float) -> dt.timedelta:
    return dt.timedelta(seconds=n)


def raw_event(start: dt.datetime = T0, length_s: float = 30, **overrides) -> dict:
    """A decoded GPU usage event (what the codec hands the validator)."""
    event = {
        "event_id": "gpu-evt-1", "window_start": start, "window_end": start + seconds(length_s),
        "cluster": "aws-use1", "node": "p5-a", "gpu_model": "H100-SXM-80GB", "gpu_index": 0,
        "gpu_fraction": Decimal("1"), "mig_profile": None, "capacity_type": "on_demand", "tenant": "acme",
        "team": "search", "namespace": "ml", "job": "train", "requested_gpu_seconds": Decimal(length_s),
        "used_gpu_seconds": Decimal(length_s) / 2, "memory_bytes": 0, "source": "dcgm", "labels": {},
    }
    event.update(overrides)
    return event


def usage(start: dt.datetime = T0, length_s: float = 30, *, window_s: int = WINDOW_S, **overrides):
    return validate_gpu_usage(raw_event(start, length_s, **overrides), key=KEY, now=NOW, catalog=CATALOG, window_s=window_s)


def new_pool() -> PoolWindows:
    return PoolWindows.new("aws-use1", "p5-a", 2, window_s=WINDOW_S, grace_s=GRACE_S)


# --- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, field, rule", [
    ({"tenant": "  "}, "tenant", "non_empty"),
    ({"cluster": "aws/use1"}, "cluster", "no_pool_separator"),
    ({"window_end": T0}, "window_end", "end_after_start"),
    ({"window_end": T0 + seconds(61)}, "window_end", "within_attribution_window"),
    ({"window_start": NOW + dt.timedelta(minutes=5)}, "window_end", "not_in_future"),
    ({"used_gpu_seconds": Decimal("-1")}, "used_gpu_seconds", "non_negative"),
    ({"gpu_index": -1}, "gpu_index", "non_negative"),
    ({"gpu_fraction": Decimal("0")}, "gpu_fraction", "within_one_gpu"),
    ({"gpu_fraction": Decimal("1.5")}, "gpu_fraction", "within_one_gpu"),
    ({"used_gpu_seconds": Decimal("30.000002")}, "used_gpu_seconds", "within_gpu_share"),
    ({"gpu_fraction": Decimal("0.5"), "requested_gpu_seconds": Decimal("16")}, "requested_gpu_seconds", "within_gpu_share"),
    ({"mig_profile": "9g.90gb", "gpu_fraction": Decimal("0.5")}, "mig_profile", "known_mig_profile"),
    ({"mig_profile": "1g.10gb", "gpu_fraction": Decimal("0.5")}, "gpu_fraction", "matches_mig_profile"),
])
def test_each_broken_rule_is_named_with_its_field(overrides, field, rule):
    overrides = dict(overrides)
    start = overrides.pop("window_start", T0)
    with pytest.raises((InvalidGpuUsage, UnknownMigProfile)) as caught:
        validate_gpu_usage(raw_event(start, **overrides), key=KEY, now=NOW, catalog=CATALOG, window_s=WINDOW_S)
    assert (caught.value.field, caught.value.rule) == (field, rule)


def test_the_message_key_must_be_the_pool():
    with pytest.raises(InvalidGpuUsage) as caught:
        validate_gpu_usage(raw_event(), key=b"acme", now=NOW, catalog=CATALOG, window_s=WINDOW_S)
    assert caught.value.rule == "keyed_by_pool" and "aws-use1/p5-a" in caught.value.message


def test_mig_slices_use_the_exact_profile_fraction():
    # 30 s of a 1g.10gb slice = 30/7 GPU-seconds = 4.285714...; a collector rounding up at 6 places is accepted.
    valid = usage(gpu_fraction=Decimal("0.142857"), mig_profile="1g.10gb",
                  requested_gpu_seconds=Decimal("4.285715"), used_gpu_seconds=Decimal("4.285714"))
    assert valid.gpu_fraction == Fraction(1, 7)
    assert valid.requested_gpu_seconds == Fraction(Decimal("4.285715"))
    with pytest.raises(InvalidGpuUsage, match="within_gpu_share"):
        usage(gpu_fraction=Decimal("0.142857"), mig_profile="1g.10gb", requested_gpu_seconds=Decimal("4.285716"))


def test_tenant_and_team_are_normalized_like_llm_dimensions():
    valid = usage(tenant=" ACME ", team="Search  Team")
    assert (valid.tenant, valid.team, valid.pool) == ("acme", "search team", "aws-use1/p5-a")


def test_every_simulated_gpu_event_is_valid_and_encodes():
    codec = codec_for("gpu_usage_event")
    events = list(GpuTrafficGenerator(seed=5, start=T0).events(600))
    assert len(events) == 600 and len({e["event_id"] for e in events}) == 600
    for event in events:
        decoded = codec.decode(codec.encode(event))
        validate_gpu_usage(decoded, key=f"{event['cluster']}/{event['node']}".encode(), now=NOW, catalog=CATALOG, window_s=3600)
    assert len({e["cluster"] for e in events}) >= 3 and len({e["gpu_model"] for e in events}) >= 3
    assert {e["capacity_type"] for e in events} == {"on_demand", "spot", "on_prem", "reserved"}
    assert any(e["mig_profile"] for e in events) and any(e["gpu_fraction"] == Decimal("0.5") for e in events)
    assert any(e["used_gpu_seconds"] > e["requested_gpu_seconds"] for e in events), "burstable: used beyond request"


def test_simulated_gpu_traffic_attributes_with_idle_capacity():
    pools: dict[str, PoolWindows] = {}
    for offset, event in enumerate(GpuTrafficGenerator(seed=5, start=T0).events(600)):
        valid = validate_gpu_usage(event, key=f"{event['cluster']}/{event['node']}".encode(), now=NOW, catalog=CATALOG,
                                   window_s=300)
        pool = pools.setdefault(valid.pool, PoolWindows.new(valid.cluster, valid.node, 0, window_s=300, grace_s=60))
        pool.add(valid, offset=offset, arrived_at=NOW)
    closed = [w for pool in pools.values() for w in pool.close_quiet(NOW + dt.timedelta(hours=1))]
    assert len({w.pool for w in closed}) == 4
    idle_seen = False
    for window in closed:
        result = attribute_window(window, CATALOG, "bucket", 300)
        assert result.pool_cost.priced
        assert sum(a["cost_usd"] for a in result.allocations) == result.pool_cost.cost_usd
        idle_seen |= any(a["kind"] == "idle" and a["cost_usd"] > 0 for a in result.allocations)
    assert idle_seen


# --- windows ----------------------------------------------------------------------------------------------------


def test_windows_are_aligned_to_the_epoch():
    start, end = window_bounds(to_micros(T0 + seconds(61.5)), 60)
    assert (start, end) == (to_micros(T0 + seconds(60)), to_micros(T0 + seconds(120)))


def test_an_event_straddling_a_boundary_is_split_pro_rata_exactly():
    pieces = split_into_windows(to_micros(T0 + seconds(45)), to_micros(T0 + seconds(75)), Fraction(30), Fraction(10), 60)
    assert [(p.requested_gpu_seconds, p.used_gpu_seconds) for p in pieces] == [(15, 5), (15, 5)]
    assert pieces[0].window_end_us == pieces[1].window_start_us == to_micros(T0 + seconds(60))
    pool = new_pool()
    pool.add(usage(T0 + seconds(45), 30), offset=0, arrived_at=NOW)
    assert [start for start, _ in pool.open_windows()] == [T0, T0 + seconds(60)]


def test_usage_accumulates_per_workload_and_is_charged_max_of_requested_and_used():
    pool = new_pool()
    pool.add(usage(T0, 30, requested_gpu_seconds=Decimal(30), used_gpu_seconds=Decimal(10)), offset=0, arrived_at=NOW)
    pool.add(usage(T0 + seconds(30), 30, requested_gpu_seconds=Decimal(0), used_gpu_seconds=Decimal(25)), offset=1, arrived_at=NOW)
    pool.add(usage(T0, 60, tenant="globex", gpu_index=1), offset=2, arrived_at=NOW)
    (window,) = pool.close_quiet(NOW + dt.timedelta(hours=1))
    by_tenant = {w.tenant: w for w in window.workloads}
    assert by_tenant["acme"].requested_gpu_seconds == 30 and by_tenant["acme"].used_gpu_seconds == 35
    assert by_tenant["acme"].charged_gpu_seconds == 35
    assert window.gpus == {0: ("H100-SXM-80GB", "on_demand"), 1: ("H100-SXM-80GB", "on_demand")}
    assert window.events == 3


def test_a_window_closes_when_the_watermark_passes_its_end_not_before():
    pool = new_pool()
    pool.add(usage(T0, 30), offset=0, arrived_at=NOW)
    pool.add(usage(T0 + seconds(60), 9), offset=1, arrived_at=NOW)  # ends at 69 s: watermark 59 s < 60 s
    assert pool.close_due_by_watermark() == []
    pool.add(usage(T0 + seconds(60), 10), offset=2, arrived_at=NOW)  # ends at 70 s: watermark 60 s
    (closed,) = pool.close_due_by_watermark()
    assert (closed.window_start, closed.window_end, closed.closed_by) == (T0, T0 + seconds(60), "watermark")
    assert [start for start, _ in pool.open_windows()] == [T0 + seconds(60)]


def test_late_usage_within_grace_is_counted_and_marks_the_window_late():
    pool = new_pool()
    pool.add(usage(T0, 30), offset=0, arrived_at=NOW)
    pool.add(usage(T0 + seconds(60), 5), offset=1, arrived_at=NOW)  # stream time 65 s > window end 60 s
    pool.add(usage(T0 + seconds(30), 30, tenant="globex"), offset=2, arrived_at=NOW)  # late, within grace
    pool.add(usage(T0 + seconds(60), 20), offset=3, arrived_at=NOW)
    (closed,) = pool.close_due_by_watermark()
    assert closed.late and {w.tenant for w in closed.workloads} == {"acme", "globex"}


def test_usage_for_a_closed_window_is_too_late_and_changes_nothing():
    pool = new_pool()
    pool.add(usage(T0, 30), offset=0, arrived_at=NOW)
    pool.add(usage(T0 + seconds(60), 20), offset=1, arrived_at=NOW)
    assert len(pool.close_due_by_watermark()) == 1
    before = json.dumps(pool.state, sort_keys=True)
    with pytest.raises(InvalidGpuUsage) as caught:
        pool.add(usage(T0 + seconds(30), 30, tenant="globex"), offset=2, arrived_at=NOW)
    assert (caught.value.field, caught.value.rule) == ("window_start", "too_late")
    assert "already closed" in caught.value.message
    assert json.dumps(pool.state, sort_keys=True) == before


def test_usage_for_a_never_opened_window_behind_the_watermark_is_too_late():
    pool = new_pool()
    pool.add(usage(T0 + seconds(600), 30), offset=0, arrived_at=NOW)
    with pytest.raises(InvalidGpuUsage, match="too_late"):
        pool.add(usage(T0, 30), offset=1, arrived_at=NOW)


def test_a_straddling_event_with_one_closed_piece_is_rejected_whole():
    pool = new_pool()
    pool.add(usage(T0, 30), offset=0, arrived_at=NOW)
    pool.add(usage(T0 + seconds(60), 20), offset=1, arrived_at=NOW)
    pool.close_due_by_watermark()
    with pytest.raises(InvalidGpuUsage, match="too_late"):
        pool.add(usage(T0 + seconds(50), 20), offset=2, arrived_at=NOW)
    assert pool.state["windows"][str(to_micros(T0 + seconds(60)))]["events"] == 1


def test_processing_time_closes_a_quiet_window_once_past_end_plus_grace():
    pool = new_pool()
    arrived = T0 + seconds(30)  # live: the event arrives as its window is open
    pool.add(usage(T0, 30), offset=0, arrived_at=arrived)
    assert pool.close_quiet(T0 + seconds(69)) == [], "within grace after the window's end"
    (closed,) = pool.close_quiet(T0 + seconds(70))
    assert closed.closed_by == "processing_time" and closed.window_start == T0
    with pytest.raises(InvalidGpuUsage, match="too_late"):
        pool.add(usage(T0 + seconds(40), 10), offset=1, arrived_at=T0 + seconds(71))


def test_processing_time_waits_while_a_backfill_is_still_arriving():
    pool = new_pool()
    pool.add(usage(T0, 30), offset=0, arrived_at=NOW)  # hours after the window ended
    assert pool.close_quiet(NOW + seconds(GRACE_S - 1)) == []
    pool.add(usage(T0 + seconds(30), 30, tenant="globex"), offset=1, arrived_at=NOW + seconds(5))
    assert pool.close_quiet(NOW + seconds(GRACE_S + 1)) == [], "the last event came 6 s ago"
    (closed,) = pool.close_quiet(NOW + seconds(GRACE_S + 5))
    assert {w.tenant for w in closed.workloads} == {"acme", "globex"}


def test_a_gpu_reported_as_another_model_in_the_same_window_is_rejected():
    pool = new_pool()
    pool.add(usage(T0, 30), offset=0, arrived_at=NOW)
    with pytest.raises(InvalidGpuUsage) as caught:
        pool.add(usage(T0 + seconds(30), 30, gpu_model="A100-SXM4-80GB"), offset=1, arrived_at=NOW)
    assert (caught.value.field, caught.value.rule) == ("gpu_model", "consistent_gpu")


def test_replayed_offsets_are_recognized():
    pool = new_pool()
    assert not pool.is_replay(0)
    pool.add(usage(T0, 30), offset=41, arrived_at=NOW)
    assert pool.is_replay(41) and pool.is_replay(3) and not pool.is_replay(42)


def test_state_is_plain_json_and_survives_a_round_trip_like_a_changelog_recovery():
    pool = new_pool()
    pool.add(usage(T0, 30, gpu_fraction=Decimal("0.142857"), mig_profile="1g.10gb",
                   requested_gpu_seconds=Decimal("4.285714"), used_gpu_seconds=Decimal("1")), offset=0, arrived_at=NOW)
    pool.add(usage(T0 + seconds(45), 30, gpu_index=3), offset=1, arrived_at=NOW)  # split: thirds of 30 in sevenths
    text = json.dumps(pool.state)
    recovered = PoolWindows(json.loads(text), window_s=WINDOW_S, grace_s=GRACE_S)
    assert recovered.state == pool.state
    assert [w.workloads for w in recovered.close_quiet(NOW + dt.timedelta(hours=1))] == \
        [w.workloads for w in pool.close_quiet(NOW + dt.timedelta(hours=1))]


def test_pool_windows_never_mutate_the_state_they_were_given():
    stored = new_pool().state
    snapshot = json.dumps(stored, sort_keys=True)
    working = PoolWindows(stored, window_s=WINDOW_S, grace_s=GRACE_S)
    working.add(usage(T0, 30), offset=0, arrived_at=NOW)
    working.close_quiet(NOW + dt.timedelta(hours=1))
    assert json.dumps(stored, sort_keys=True) == snapshot


# --- length and character rules of every text field (finops/text_rules.py) ------------------------------------

GPU_ENUMS = ("capacity_type", "source")


def _gpu_text_fields() -> list[str]:
    """Every string, enum or string map field of the GPU usage schema."""
    names = []
    for field in schemas.latest("gpu_usage_event").definition["fields"]:
        types = field["type"] if isinstance(field["type"], list) else [field["type"]]
        if any(t == "string" or (isinstance(t, dict) and t.get("type") in ("enum", "map")) for t in types):
            names.append(field["name"])
    return names


def rejected(**overrides) -> InvalidGpuUsage:
    event = raw_event(**overrides)
    key = f"{event['cluster']}/{event['node']}".encode()
    with pytest.raises(InvalidGpuUsage) as caught:
        validate_gpu_usage(event, key=key, now=NOW, catalog=CATALOG, window_s=WINDOW_S)
    return caught.value


def accepted(**overrides):
    event = raw_event(**overrides)
    key = f"{event['cluster']}/{event['node']}".encode()
    return validate_gpu_usage(event, key=key, now=NOW, catalog=CATALOG, window_s=WINDOW_S)


def test_every_text_field_of_the_gpu_schema_has_a_rule():
    fields = _gpu_text_fields()
    assert {"event_id", "cluster", "node", "gpu_model", "tenant", "team", "namespace", "job", "labels"} <= set(fields)
    assert set(fields) - {"labels"} == set(GPU_TEXT_FIELD_LIMITS)
    assert {f for f, n in GPU_TEXT_FIELD_LIMITS.items() if n == ID_MAX_CHARS} == {"event_id", "job"}
    assert all(n == NAME_MAX_CHARS for f, n in GPU_TEXT_FIELD_LIMITS.items() if f not in ("event_id", "job"))


@pytest.mark.parametrize("field", sorted(GPU_TEXT_FIELD_LIMITS))
def test_one_character_over_the_limit_is_max_length_for_gpu_events(field):
    limit = GPU_TEXT_FIELD_LIMITS[field]
    error = rejected(**{field: "a" * (limit + 1)})
    assert (error.field, error.rule) == (field, "max_length")
    assert isinstance(error, FieldRuleError) and f"got {limit + 1}" in error.message


@pytest.mark.parametrize("field", sorted(set(GPU_TEXT_FIELD_LIMITS) - {"mig_profile"}))  # a profile must be known
def test_a_value_at_the_limit_passes_for_gpu_events(field):
    accepted(**{field: "a" * GPU_TEXT_FIELD_LIMITS[field]})


@pytest.mark.parametrize("field", sorted(GPU_TEXT_FIELD_LIMITS))
@pytest.mark.parametrize("char", ["\u0000", "\t", "\u202e", "\u200d", "\u2029", "\U000f0000"],
                         ids=["NUL", "tab", "RLO", "ZWJ", "paragraph-separator", "private-use"])
def test_control_format_and_separator_characters_are_not_printable_in_gpu_events(field, char):
    error = rejected(**{field: f"x{char}y"})
    assert (error.field, error.rule) == (field, "printable")
    assert f"U+{ord(char):04X}" in error.message


def test_a_129_character_gpu_tenant_is_too_long_and_128_passes():
    error = rejected(tenant="t" * 129)
    assert (error.field, error.rule) == ("tenant", "max_length")
    assert accepted(tenant="t" * 128).tenant == "t" * 128


def test_a_right_to_left_override_in_the_gpu_tenant_is_refused():
    error = rejected(tenant="acme\u202e")
    assert (error.field, error.rule) == ("tenant", "printable") and "U+202E" in error.message


def test_a_nul_in_the_node_and_a_zero_width_joiner_in_the_gpu_model_are_refused():
    error = rejected(node="p5\u0000a")
    assert (error.field, error.rule) == ("node", "printable") and "U+0000" in error.message
    error = rejected(gpu_model="H100\u200d")
    assert (error.field, error.rule) == ("gpu_model", "printable") and "U+200D" in error.message


def test_a_900_kb_cluster_is_refused_fast_before_it_becomes_a_pool_key():
    event = raw_event(cluster="c" * 900_000, used_gpu_seconds=Decimal("-1"))
    started = time.perf_counter()
    with pytest.raises(InvalidGpuUsage) as caught:  # the key b"aws-use1/p5-a" does not match: checked later
        validate_gpu_usage(event, key=KEY, now=NOW, catalog=CATALOG, window_s=WINDOW_S)
    assert time.perf_counter() - started < 0.5
    assert (caught.value.field, caught.value.rule) == ("cluster", "max_length")
    assert len(str(caught.value)) < 200


def test_a_huge_message_key_is_shown_by_its_size_only():
    with pytest.raises(InvalidGpuUsage) as caught:
        validate_gpu_usage(raw_event(), key=b"k" * 900_000, now=NOW, catalog=CATALOG, window_s=WINDOW_S)
    assert caught.value.rule == "keyed_by_pool" and "a 900000-byte key" in caught.value.message
    assert len(caught.value.message) < 300


def test_gpu_text_rules_run_before_the_other_rules():
    error = rejected(team="ml\u0007", window_end=T0, gpu_fraction=Decimal("2"))
    assert (error.field, error.rule) == ("team", "printable")


@pytest.mark.parametrize("value", ["café", "東京", "équipe-Ø"])
def test_letters_of_any_script_pass_in_gpu_events(value):
    valid = accepted(cluster=value, node=value, tenant=value, team=value, namespace=value, job=value,
                     labels={value: value})
    assert valid.pool == f"{value}/{value}"


def test_65_gpu_labels_are_too_many_and_64_pass_and_a_tab_in_a_label_value_is_fine():
    error = rejected(labels={f"k{i}": "v" for i in range(LABELS_MAX + 1)})
    assert (error.field, error.rule) == ("labels", "max_entries")
    accepted(labels={f"k{i}": "v" for i in range(LABELS_MAX)})
    accepted(labels={"note": "a\tb"})
    error = rejected(labels={"note": "a\nb"})
    assert (error.field, error.rule) == ("labels.note", "printable")


@hypothesis_settings(max_examples=200, deadline=None)
@given(value=st.one_of(
    st.text(max_size=140),
    st.text(st.characters(categories=["Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs", "L"]), max_size=140),
    st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=120, max_size=140),
))
def test_a_gpu_namespace_is_accepted_exactly_when_short_and_printable(value):
    printable = len(value) <= NAME_MAX_CHARS and not any(
        unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"} for c in value)
    try:
        accepted(namespace=value)
    except InvalidGpuUsage as error:
        assert error.field == "namespace" and not printable
        assert error.rule == ("max_length" if len(value) > NAME_MAX_CHARS else "printable")
    else:
        assert printable


# --- the worker side ---------------------------------------------------------------------------------------------


def test_the_quiet_window_timer_runs_a_few_times_per_grace_period():
    from prismops.agents.gpu_agents import quiet_check_interval_s

    assert quiet_check_interval_s(600) == 30.0 and quiet_check_interval_s(20) == 5.0 and quiet_check_interval_s(0) == 1.0


def test_the_worker_registers_the_gpu_agent_table_and_timer_and_refuses_bad_settings():
    from prismops.agents.worker import build_worker_app
    from prismops.settings import Settings

    app = build_worker_app(Settings())
    assert "prismops.agents.gpu_agents.attribute_gpu_usage" in app.agents and "gpu_pool_windows" in app.tables
    for bad in ({"idle_policy": "greedy"}, {"window_s": 0}, {"grace_s": -1}):
        with pytest.raises(ValueError, match="gpu\\."):
            build_worker_app(Settings().with_overrides(gpu=bad))
