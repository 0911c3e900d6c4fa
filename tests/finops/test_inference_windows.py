"""finops/inference_windows.py: an inference pool's node costs and tokens meet per window, close when due, split
exactly, count each batch once and late input as late."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import hypothesis.strategies as st
from hypothesis import given, settings

from prismops.finops.gpu_allocation import InferencePool, inference_pool_allocations
from prismops.finops.inference_windows import InferenceWindows

UTC = dt.timezone.utc
START = dt.datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
END = START + dt.timedelta(hours=1)
SOON = END + dt.timedelta(seconds=30)  # input arrives shortly after its window ends, as in live traffic
POOL = InferencePool("llama-serving", "onprem-dc1", ("dgx-02", "dgx-03"), ("llama-3.1-8b",))


def windows() -> InferenceWindows:
    return InferenceWindows.new(POOL, 1, window_s=3600, grace_s=600, node_wait_s=900)


def node(name: str, cost: str, start: dt.datetime = START) -> dict:
    return {"cluster": "onprem-dc1", "node": name, "pool": f"onprem-dc1/{name}", "window_start": start,
            "kind": "workload", "pool_cost_usd": Decimal(cost), "gpu_model": "H100-SXM-80GB",
            "capacity_type": "on_prem", "price_version": "v@1", "late": False}


def line(tenant: str, tokens: int, minute: int = 5, model: str = "llama-3.1-8b", provider: str = "local") -> dict:
    return {"source": "llm", "tenant": tenant, "provider": provider, "model": model, "input_tokens": tokens,
            "output_tokens": tokens // 2, "event_time": START + dt.timedelta(minutes=minute)}


def test_a_window_closes_when_every_node_reported_and_the_grace_passed_and_matches_the_plain_function():
    state = windows()
    lines = [line("acme", 3000), line("globex", 1000), line("globex", 99_999, provider="openai", model="gpt-4o")]
    assert state.add_lines(lines[:2], "a@1", arrived_at=SOON) == 2
    assert state.add_lines(lines[2:], "a@2", arrived_at=SOON) == 0, "a model the pool does not serve"
    assert state.add_node_window(node("dgx-02", "4.000000000001"), arrived_at=SOON)
    assert state.close_due(END + dt.timedelta(minutes=20)) == [], "one node has not reported"
    assert state.add_node_window(node("dgx-03", "2"), arrived_at=SOON)
    assert state.close_due(END + dt.timedelta(minutes=9)) == [], "still inside the grace period"
    (closed,) = state.close_due(END + dt.timedelta(minutes=10))
    expected = inference_pool_allocations(POOL, START, END, [node("dgx-02", "4.000000000001"), node("dgx-03", "2")],
                                          lines)
    assert closed.allocations == expected
    assert sum(r["cost_usd"] for r in closed.allocations) == Decimal("6.000000000001")
    assert {r["tenant"]: r["tokens"] for r in closed.allocations} == {"acme": 4500, "globex": 1500}
    assert state.state["windows"] == {}
    json.dumps(state.state)  # the table stores it as JSON


def test_a_batch_seen_before_is_not_counted_again_and_late_input_is_counted_as_late():
    state = windows()
    assert state.add_lines([line("acme", 100)], "x@7", arrived_at=SOON) == 1
    assert state.add_lines([line("acme", 100)], "x@7", arrived_at=SOON) == 0
    state.add_node_window(node("dgx-02", "1"), arrived_at=SOON)
    state.add_node_window(node("dgx-02", "1"), arrived_at=SOON)  # the same node window again changes nothing
    state.add_node_window(node("dgx-03", "1"), arrived_at=SOON)
    (closed,) = state.close_due(END + dt.timedelta(hours=1))
    assert [r["tokens"] for r in closed.allocations] == [150]
    assert state.add_lines([line("acme", 100)], "x@8", arrived_at=SOON) == 0 and state.late_lines == 1
    assert not state.add_node_window(node("dgx-03", "1"), arrived_at=SOON) and state.late_node_windows == 1
    assert state.add_lines([line("acme", 100, minute=65)], "x@9", arrived_at=SOON) == 1, "the next window is open"


def test_a_node_that_never_reports_is_waited_for_then_left_out():
    state = windows()
    state.add_lines([line("acme", 10)], "b@1", arrived_at=SOON)
    state.add_node_window(node("dgx-02", "3"), arrived_at=SOON)
    assert state.close_due(END + dt.timedelta(minutes=24)) == []
    (closed,) = state.close_due(END + dt.timedelta(minutes=25))
    assert closed.nodes_reported == 1 and sum(r["cost_usd"] for r in closed.allocations) == Decimal(3)


def test_a_window_with_tokens_but_no_node_cost_closes_with_no_records():
    state = windows()
    state.add_lines([line("acme", 10)], "c@1", arrived_at=SOON)
    (closed,) = state.close_due(END + dt.timedelta(hours=2))
    assert closed.allocations == [] and closed.nodes_reported == 0


def test_a_node_of_another_pool_is_not_taken():
    state = windows()
    assert not state.add_node_window({**node("dgx-09", "5")}, arrived_at=SOON)
    assert state.state["windows"] == {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 10**7)), min_size=1, max_size=30),
       st.integers(1, 10**15), st.integers(0, 10**15))
def test_the_tenants_shares_sum_exactly_to_the_pools_cost(calls, units_a, units_b):
    state = windows()
    for index, (tenant, tokens) in enumerate(calls):
        state.add_lines([line(tenant, tokens, minute=index % 60)], f"h@{index}", arrived_at=SOON)
    cost_a, cost_b = Decimal(units_a).scaleb(-12), Decimal(units_b).scaleb(-12)
    state.add_node_window(node("dgx-02", str(cost_a)), arrived_at=SOON)
    state.add_node_window(node("dgx-03", str(cost_b)), arrived_at=SOON)
    (closed,) = state.close_due(END + dt.timedelta(hours=1))
    assert sum(r["cost_usd"] for r in closed.allocations) == cost_a + cost_b


def test_a_window_long_past_waits_for_its_nodes_from_when_its_input_arrived_not_from_its_end():
    """A backfill or a replay: the lines of a window that ended hours ago arrive first; its node windows come only
    after the GPU agent closes them, so the split must not happen at once with no node cost."""
    state = windows()
    arrived = END + dt.timedelta(hours=3)
    state.add_lines([line("acme", 100)], "d@1", arrived_at=arrived)
    assert state.close_due(arrived + dt.timedelta(seconds=5)) == [], "event time is long settled, the nodes are not in"
    state.add_node_window(node("dgx-02", "2"), arrived_at=arrived + dt.timedelta(seconds=6))
    state.add_node_window(node("dgx-03", "1"), arrived_at=arrived + dt.timedelta(seconds=7))
    (closed,) = state.close_due(arrived + dt.timedelta(seconds=8))
    assert closed.nodes_reported == 2 and sum(r["cost_usd"] for r in closed.allocations) == Decimal(3)
    lonely = windows()
    lonely.add_lines([line("acme", 100)], "d@2", arrived_at=arrived)
    assert lonely.close_due(arrived + dt.timedelta(seconds=899)) == []
    (alone,) = lonely.close_due(arrived + dt.timedelta(seconds=900))  # node_wait_s after the arrival
    assert alone.nodes_reported == 0 and alone.allocations == []
