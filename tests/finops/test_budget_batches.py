"""Batches of cost lines: one store write per scope, replays recognized by (origin, position), and the same
spend, crossings and state rows as applying the lines one by one (no Kafka)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given, settings as hypothesis_settings, strategies as st

from prismops.finops.budgets import Budget, BudgetBook, BudgetLedger, Crossing, LedgerOutcome

DAY = dt.datetime(2026, 6, 15, 9, 30, tzinfo=dt.timezone.utc)
NOW = DAY + dt.timedelta(days=1)
ORIGIN = "prismops.usage.llm.v1/3"


def line(line_id: str, *, tenant: str = "acme", team: str = "devtools", cost: str | Decimal = "0",
         input_tokens: int = 0, output_tokens: int = 0, at: dt.datetime = DAY) -> dict[str, Any]:
    return {
        "line_id": line_id, "source": "llm", "event_time": at, "tenant": tenant, "team": team,
        "cost_usd": Decimal(cost), "input_tokens": input_tokens, "output_tokens": output_tokens,
    }


def usd_ledger(limit: str = "30", store: dict | None = None) -> BudgetLedger:
    book = BudgetBook((Budget("spend", "tenant", "*", "daily", "usd", Decimal(limit)),))
    return BudgetLedger(book, {} if store is None else store, scopes=("tenant",))


def crossed(outcome: LedgerOutcome) -> list[tuple[str, int, str, Decimal]]:
    return [(c.action, c.threshold_pct, c.line_id, c.spent) for c in outcome.crossings]


class Crash(Exception):
    """The worker died between two store writes."""


class RecordingStore(dict):
    """A dict store that counts assignments and can die after a given number of them (what was written stays)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.writes_left: int | None = None

    def __setitem__(self, key: str, value: Any) -> None:
        if self.writes_left is not None:
            if self.writes_left == 0:
                raise Crash(key)
            self.writes_left -= 1
        self.writes.append(key)
        super().__setitem__(key, value)


# -- examples ------------------------------------------------------------------------------------------------

def test_a_batch_writes_each_scope_record_once_and_remembers_no_line():
    store = RecordingStore()
    book = BudgetBook((
        Budget("spend", "tenant", "*", "daily", "usd", Decimal("1000")),
        Budget("team-spend", "team", "*", "monthly", "usd", Decimal("1000")),
    ))
    ledger = BudgetLedger(book, store)
    lines = [line(f"l{i}", tenant=("acme", "globex")[i % 2], cost="1") for i in range(50)]
    outcome = ledger.apply_batch(lines, DAY, shard=3, origin=ORIGIN, position=7)
    assert sorted(store.writes) == ["scope|team/devtools", "scope|tenant/acme", "scope|tenant/globex"]
    assert store["scope|tenant/acme"]["origins"] == {ORIGIN: [-1, 7]}
    assert store["scope|tenant/acme"]["shard"] == 3
    spent = {(s["scope"], s["scope_id"]): s["budgets"][0]["spent"] for s in outcome.states}
    assert spent == {("tenant", "acme"): Decimal(25), ("tenant", "globex"): Decimal(25), ("team", "devtools"): Decimal(50)}
    assert not outcome.duplicate and outcome.duplicate_scopes == 0 and outcome.too_late_lines == 0


def test_a_batch_crossing_warn_and_block_names_the_line_that_crossed_each():
    outcome = usd_ledger("30").apply_batch(
        [line("a", cost="10"), line("b", cost="15"), line("c", cost="6"), line("d", cost="100")],
        DAY, origin=ORIGIN, position=0,
    )
    assert crossed(outcome) == [("warn", 80, "b", Decimal(25)), ("block", 100, "c", Decimal(31))]
    [state] = outcome.states
    assert state["blocked"] is True and state["budgets"][0]["spent"] == Decimal(131)


def test_one_line_of_a_batch_can_cross_warn_and_block_at_once():
    outcome = usd_ledger("1").apply_batch([line("small", cost="0.5"), line("big", cost="5")], DAY,
                                          origin=ORIGIN, position=0)
    assert crossed(outcome) == [("warn", 80, "big", Decimal("5.5")), ("block", 100, "big", Decimal("5.5"))]


def test_a_replayed_batch_is_not_counted_again_and_redelivers_its_crossings():
    ledger = usd_ledger("30")
    batch = [line("a", cost="20"), line("b", cost="5")]
    first = ledger.apply_batch(batch, DAY, origin=ORIGIN, position=10)
    later = ledger.apply_batch([line("c", cost="10")], DAY, origin=ORIGIN, position=11)
    assert crossed(first) == [("warn", 80, "b", Decimal(25))]
    assert crossed(later) == [("block", 100, "c", Decimal(35))]
    for position, expected in ((10, first), (11, later)):
        replay = ledger.apply_batch(batch if position == 10 else [line("c", cost="10")], DAY,
                                    origin=ORIGIN, position=position)
        assert replay.duplicate and replay.duplicate_scopes == 1
        assert replay.crossings == ()
        assert replay.redelivered == expected.crossings
        assert replay.states[0]["budgets"][0]["spent"] == Decimal(35)


def test_a_crash_between_two_scope_writes_is_repaired_by_the_replay():
    store = RecordingStore()
    ledger = usd_ledger("10", store=store)
    batch = [line("a1", tenant="acme", cost="9"), line("g1", tenant="globex", cost="11")]
    store.writes_left = 1
    with pytest.raises(Crash):
        ledger.apply_batch(batch, DAY, origin=ORIGIN, position=4)
    store.writes_left = None
    assert "scope|tenant/acme" in store and "scope|tenant/globex" not in store

    replay = usd_ledger("10", store=store).apply_batch(batch, DAY, origin=ORIGIN, position=4)
    assert replay.duplicate_scopes == 1
    assert [(c.scope_id, c.action, c.line_id) for c in replay.redelivered] == [("acme", "warn", "a1")]
    assert [(c.scope_id, c.action, c.line_id) for c in replay.crossings] == [
        ("globex", "warn", "g1"), ("globex", "block", "g1"),
    ]
    spent = {s["scope_id"]: s["budgets"][0]["spent"] for s in replay.states}
    assert spent == {"acme": Decimal(9), "globex": Decimal(11)}


def test_lines_of_a_previous_period_count_toward_their_own_period_and_too_old_ones_not_at_all():
    ledger = usd_ledger("10")
    yesterday, april = DAY - dt.timedelta(days=1), dt.datetime(2026, 4, 30, tzinfo=dt.timezone.utc)
    outcome = ledger.apply_batch(
        [line("y", cost="11", at=yesterday), line("old", cost="50", at=april), line("t", cost="2")],
        DAY, origin=ORIGIN, position=0,
    )
    assert [(c.period_start.day, c.action, c.line_id) for c in outcome.crossings] == [
        (14, "warn", "y"), (14, "block", "y"),
    ]
    assert outcome.too_late and outcome.too_late_lines == 1
    [state] = outcome.states
    assert state["blocked"] is False and state["budgets"][0]["spent"] == Decimal(2)
    assert ledger.state_row("tenant", "acme", yesterday)["budgets"][0]["spent"] == Decimal(11)


def test_a_batch_of_only_too_old_lines_touches_nothing():
    store = RecordingStore()
    outcome = usd_ledger(store=store).apply_batch(
        [line("old", cost="5", at=dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc))], DAY, origin=ORIGIN, position=0,
    )
    assert outcome == LedgerOutcome(too_late=True, too_late_lines=1) and store.writes == []
    assert usd_ledger().apply_batch([], DAY, origin=ORIGIN, position=0) == LedgerOutcome()


def test_a_line_id_repeated_within_a_batch_counts_once():
    outcome = usd_ledger("30").apply_batch([line("a", cost="20"), line("a", cost="20")], DAY,
                                           origin=ORIGIN, position=0)
    assert outcome.crossings == () and outcome.states[0]["budgets"][0]["spent"] == Decimal(20)


def test_each_origin_keeps_its_own_position():
    ledger = usd_ledger("1000")
    ledger.apply_batch([line("a", cost="1")], DAY, origin="usage/0", position=900)
    other = ledger.apply_batch([line("b", cost="2")], DAY, origin="usage/1", position=5)
    assert not other.duplicate and other.states[0]["budgets"][0]["spent"] == Decimal(3)
    assert ledger.apply_batch([line("a", cost="1")], DAY, origin="usage/0", position=900).duplicate
    assert ledger.store["scope|tenant/acme"]["origins"] == {"usage/0": [-1, 900], "usage/1": [-1, 5]}


def test_single_lines_and_batches_share_a_scope_record_without_forgetting_each_other():
    store: dict[str, Any] = {}
    ledger = usd_ledger("30", store=store)
    ledger.apply_batch([line("a", cost="10")], DAY, origin=ORIGIN, position=1)
    ledger.apply(line("gpu-1", cost="5"), DAY)
    ledger.apply_batch([line("b", cost="10")], DAY, origin=ORIGIN, position=2)
    assert store["scope|tenant/acme"]["origins"] == {ORIGIN: [-1, 1, 2]}
    assert ledger.apply(line("gpu-1", cost="5"), DAY).duplicate
    assert ledger.apply_batch([line("a", cost="10")], DAY, origin=ORIGIN, position=1).duplicate
    assert ledger.state_row("tenant", "acme", DAY)["budgets"][0]["spent"] == Decimal(25)


def test_a_batch_forgets_the_periods_before_the_retention_horizon():
    store: dict[str, Any] = {}
    ledger = usd_ledger("30", store=store)
    may = dt.datetime(2026, 5, 20, tzinfo=dt.timezone.utc)
    ledger.apply_batch([line("m", cost="1", at=may)], may, origin=ORIGIN, position=0)
    july = dt.datetime(2026, 7, 2, tzinfo=dt.timezone.utc)
    ledger.apply_batch([line("j", cost="2", at=july)], july, origin=ORIGIN, position=1)
    assert list(store["scope|tenant/acme"]["periods"]) == ["spend|2026-07-02T00:00:00+00:00"]


def test_a_scope_record_written_before_batches_existed_takes_its_first_batch():
    store = {"scope|tenant/acme": {"last_line": "x", "shard": 0, "periods": {
        "spend|2026-06-15T00:00:00+00:00": {"spent": "20", "crossed": {}},
    }}}
    outcome = usd_ledger("30", store=store).apply_batch([line("a", cost="5")], DAY, origin=ORIGIN, position=0)
    assert crossed(outcome) == [("warn", 80, "a", Decimal(25))]
    assert store["scope|tenant/acme"]["origins"] == {ORIGIN: [-1, 0]}


# -- batches and single lines agree ----------------------------------------------------------------------------

BOOK = BudgetBook((
    Budget("tenant-daily-usd", "tenant", "*", "daily", "usd", Decimal("30")),
    Budget("tenant-daily-tokens", "tenant", "*", "daily", "tokens", Decimal(400_000)),
    Budget("acme-monthly-usd", "tenant", "acme", "monthly", "usd", Decimal("70")),
    Budget("team-monthly-usd", "team", "*", "monthly", "usd", Decimal("60")),
    Budget("devtools-daily-tokens", "team", "devtools", "daily", "tokens", Decimal(300_000)),
))
TENANTS, TEAMS = ("acme", "globex", "initech"), ("devtools", "search")
TIMES = (
    dt.datetime(2026, 4, 20, 8, tzinfo=dt.timezone.utc),  # older than the previous month: too late
    dt.datetime(2026, 5, 31, 23, 59, tzinfo=dt.timezone.utc),  # previous month
    DAY - dt.timedelta(hours=1), DAY, DAY + dt.timedelta(hours=15), NOW,
)
DAYS = sorted({t.replace(hour=0, minute=0) for t in TIMES})


@st.composite
def cost_lines(draw) -> list[dict[str, Any]]:
    count = draw(st.integers(0, 30))
    return [
        line(
            f"l{i}", tenant=draw(st.sampled_from(TENANTS)), team=draw(st.sampled_from(TEAMS)),
            cost=draw(st.decimals(min_value=0, max_value=25, places=3)),
            input_tokens=draw(st.integers(0, 200_000)), output_tokens=draw(st.integers(0, 50_000)),
            at=draw(st.sampled_from(TIMES)),
        )
        for i in range(count)
    ]


@st.composite
def batches_of(draw, lines: list[dict[str, Any]]) -> list[tuple[str, int, list[dict[str, Any]]]]:
    """Any split of the lines, in order, into batches, each from one of two origins at increasing positions."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(lines) - 1)), max_size=len(lines))))
    bounds = [0, *[c for c in cuts if c < len(lines)], len(lines)]
    positions = {"usage/0": draw(st.integers(0, 5)), "usage/1>2": draw(st.integers(0, 5))}
    batches = []
    for start, end in zip(bounds, bounds[1:]):
        origin = draw(st.sampled_from(sorted(positions)))
        positions[origin] += draw(st.integers(1, 3))
        batches.append((origin, positions[origin], lines[start:end]))
    return batches


def one_by_one(lines: list[dict[str, Any]]) -> tuple[BudgetLedger, list[Crossing], int]:
    ledger = BudgetLedger(BOOK, {})
    outcomes = [ledger.apply(item, NOW) for item in lines]
    return ledger, [c for o in outcomes for c in o.crossings], sum(o.too_late for o in outcomes)


def spend_by_scope(ledger: BudgetLedger) -> dict[str, dict[str, Any]]:
    return {key: value["periods"] for key, value in ledger.store.items() if key.startswith("scope|")}


def rows(ledger: BudgetLedger) -> dict[tuple[str, str, dt.datetime], dict[str, Any]]:
    return {
        (scope, scope_id, day): ledger.state_row(scope, scope_id, day)
        for scope, scope_id in ledger.scope_ids() for day in DAYS
    }


def by_event_id(crossings: list[Crossing]) -> dict[str, Crossing]:
    found = {c.event_id: c for c in crossings}
    assert len(found) == len(crossings), "a crossing was decided twice"
    return found


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.data())
def test_batches_spend_cross_and_report_exactly_like_the_same_lines_one_by_one(data):
    lines = data.draw(cost_lines())
    batches = data.draw(batches_of(lines))
    replays = data.draw(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=3))
    delivery = []
    for index in range(len(batches)):
        delivery.append(index)
        for crash_after, back in replays:
            if crash_after == index:
                delivery.extend(range(max(0, index - back), index + 1))

    expected_ledger, expected_crossings, expected_too_late = one_by_one(lines)
    ledger = BudgetLedger(BOOK, {})
    first: dict[int, LedgerOutcome] = {}
    last_rows: dict[tuple[str, str], dict[str, Any]] = {}
    for index in delivery:
        origin, position, batch = batches[index]
        outcome = ledger.apply_batch(batch, NOW, origin=origin, position=position)
        if index in first:
            assert outcome.crossings == () and outcome.redelivered == first[index].crossings
            assert outcome.duplicate_scopes == len(outcome.states)
        else:
            first[index] = outcome
        last_rows.update({(s["scope"], s["scope_id"]): s for s in outcome.states})

    assert by_event_id([c for o in first.values() for c in o.crossings]) == by_event_id(expected_crossings)
    decided = [c for index in sorted(first) for c in first[index].crossings]
    for scope_key in {c.scope_key for c in expected_crossings}:  # a scope id's crossings come in line order
        assert [c.event_id for c in decided if c.scope_key == scope_key] == \
            [c.event_id for c in expected_crossings if c.scope_key == scope_key]
    assert spend_by_scope(ledger) == spend_by_scope(expected_ledger)
    assert ledger.scope_ids() == expected_ledger.scope_ids()
    assert rows(ledger) == rows(expected_ledger)
    assert last_rows == {(s, i): expected_ledger.state_row(s, i, NOW) for s, i in expected_ledger.scope_ids()}
    assert sum(o.too_late_lines for o in first.values()) == expected_too_late


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_crash_at_any_write_then_a_replay_publishes_every_crossing_and_counts_every_line_once(data):
    lines = data.draw(cost_lines())
    batches = data.draw(batches_of(lines))
    assume(batches)
    crash_at = data.draw(st.integers(0, len(batches) - 1))
    restart_at = data.draw(st.integers(0, crash_at))
    store = RecordingStore()
    ledger = BudgetLedger(BOOK, store)
    published: set[str] = set()
    decided: list[Crossing] = []

    def deliver(worker: BudgetLedger, origin: str, position: int, batch: list[dict[str, Any]]) -> None:
        outcome = worker.apply_batch(batch, NOW, origin=origin, position=position)
        decided.extend(outcome.crossings)
        published.update(c.event_id for c in (*outcome.crossings, *outcome.redelivered))

    for origin, position, batch in batches[:crash_at]:
        deliver(ledger, origin, position, batch)
    store.writes_left = data.draw(st.integers(0, 5))
    try:
        deliver(ledger, *batches[crash_at])
    except Crash:
        pass
    store.writes_left = None
    restarted = BudgetLedger(BOOK, store)
    for origin, position, batch in batches[restart_at:]:
        deliver(restarted, origin, position, batch)

    expected_ledger, expected_crossings, _ = one_by_one(lines)
    assert set(by_event_id(decided)) <= set(by_event_id(expected_crossings))
    assert published == set(by_event_id(expected_crossings))
    assert spend_by_scope(restarted) == spend_by_scope(expected_ledger)


def test_state_rows_encode_the_same_through_the_compiled_writer_as_through_fastavro():
    """The worker writes budget state rows with `encode_trusted`: every shape a row takes (under, warned, blocked,
    tokens and USD budgets, several per scope) must be the bytes the checked encoder writes."""
    from prismops.streams.codecs import codec_for
    from prismops.streams.topics import BUDGET_STATE

    book = BudgetBook((Budget("spend", "tenant", "*", "daily", "usd", Decimal("1")),
                       Budget("tokens", "tenant", "acme", "monthly", "tokens", Decimal("1000"))))
    ledger = BudgetLedger(book, {}, scopes=("tenant",))
    codec = codec_for(BUDGET_STATE.schema)
    rows = []
    for position, cost in enumerate(["0.5", "0.35", "0.2", "0"], start=1):
        outcome = ledger.apply_batch([line(f"l{position}", cost=cost, input_tokens=300)], NOW, shard=0,
                                     origin=ORIGIN, position=position)
        rows.extend(outcome.states)
    assert {row["blocked"] for row in rows} == {False, True}
    for row in rows:
        assert codec.encode_trusted(row) == codec.encode(row)
