"""The budget gate on its own, the budget table's follower, and a real server refusing a blocked tenant."""

from __future__ import annotations

import datetime as dt
import socket
from decimal import Decimal

import grpc
import pytest

from gateway_grpc import codegen

codegen.ensure_stubs()

from agents.tagging import load_service_registry  # noqa: E402
from gateway_grpc.budget_gate import BUDGET_BLOCKED, BudgetGate  # noqa: E402
from gateway_grpc.client import RouterClient  # noqa: E402
from gateway_grpc.live_table import BudgetStateTable, LiveModelTable, LiveTableFollower  # noqa: E402
from gateway_grpc.policy import RoutingRequest  # noqa: E402
from gateway_grpc.server import build_server  # noqa: E402
from prismops.settings import Settings  # noqa: E402
from streams.codecs import codec_for  # noqa: E402
from streams.topics import BUDGET_STATE  # noqa: E402

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
TODAY = dt.datetime(2026, 6, 15, tzinfo=dt.timezone.utc)
MINI = ("openai", "gpt-4o-mini")


def state(scope: str, scope_id: str, status: str, *, start: dt.datetime = TODAY, period: str = "daily",
          spent: str = "31", limit: str = "30") -> dict:
    usage = {"budget_id": f"{scope}-{period}-usd", "period": period, "period_start": start, "unit": "usd",
             "limit": Decimal(limit), "spent": Decimal(spent), "used_pct": float(Decimal(spent) * 100 / Decimal(limit)),
             "status": status}
    return {"scope": scope, "scope_id": scope_id, "blocked": status == "block", "blocked_reason": None,
            "budgets": [usage], "updated_at": NOW}


def request(tenant: str = "acme", service: str = "support-bot") -> RoutingRequest:
    return RoutingRequest(tenant, service, "answer", (MINI,), 800.0, 1000, 500)


def gate(*rows: dict, mode: str = "manual") -> BudgetGate:
    table = BudgetStateTable()
    for row in rows:
        table.upsert(row)
    return BudgetGate(table, load_service_registry(), mode)


def test_a_tenant_at_block_in_the_current_period_is_refused_with_the_numbers():
    block = gate(state("tenant", "acme", "block", spent="30.5")).check(request(), NOW)
    assert (block.scope, block.scope_id, block.budget_id) == ("tenant", "acme", "tenant-daily-usd")
    assert block.message == (
        "tenant acme is over budget tenant-daily-usd: spent $30.5 of $30 (101.67%) on 2026-06-15 UTC; "
        "routing refused until 2026-06-16 00:00 UTC (MANUAL mode)"
    )


def test_warn_ok_unknown_tenants_and_notify_mode_are_not_refused():
    assert gate(state("tenant", "acme", "warn")).check(request(), NOW) is None
    assert gate(state("tenant", "acme", "ok")).check(request(), NOW) is None
    assert gate().check(request(), NOW) is None
    assert gate(state("tenant", "acme", "block"), mode="notify").check(request(), NOW) is None


def test_a_block_from_a_period_that_has_ended_no_longer_refuses():
    blocked_yesterday = gate(state("tenant", "acme", "block", start=TODAY - dt.timedelta(days=1)))
    assert blocked_yesterday.check(request(), NOW) is None
    monthly = gate(state("tenant", "acme", "block", period="monthly", start=TODAY.replace(day=1)))
    assert monthly.check(request(), NOW) is not None
    assert monthly.check(request(), dt.datetime(2026, 7, 1, tzinfo=dt.timezone.utc)) is None


def test_the_team_of_the_requests_service_blocks_its_tenants():
    team_blocked = gate(state("team", "customer-experience", "block"))
    block = team_blocked.check(request("globex", "support-bot"), NOW)
    assert (block.scope, block.scope_id) == ("team", "customer-experience")
    assert block.message.startswith("tenant globex's team customer-experience is over budget team-daily-usd")
    assert team_blocked.check(request("globex", "search"), NOW) is None
    assert team_blocked.check(request("globex", "unknown-service"), NOW) is None


def test_the_tenant_is_canonicalized_like_cost_lines():
    assert gate(state("tenant", "acme", "block")).check(request("  Acme Corp "), NOW).tenant == "acme"


def test_the_refusal_decision_record_fits_the_schema():
    block = gate(state("tenant", "acme", "block")).check(request(), NOW)
    record = block.decision_record(request(), "d-1", NOW)
    decoded = codec_for("routing_decision").decode(codec_for("routing_decision").encode(record))
    assert (decoded["reason_code"], decoded["chosen_model"], decoded["reason"]) == (BUDGET_BLOCKED, None, block.message)
    assert [c["eligible"] for c in decoded["candidates"]] == [False]


def test_the_follower_fills_the_budget_table_and_applies_tombstones():
    table = BudgetStateTable()
    follower = LiveTableFollower(Settings(), BUDGET_STATE, table)
    codec = codec_for("budget_state")
    follower.apply(b"tenant/acme", codec.encode(state("tenant", "acme", "block")))
    follower.apply(b"team/a/b", codec.encode(state("team", "a/b", "ok")))
    follower.apply(b"tenant/acme", b"junk")
    follower.apply(b"team/a/b", None)
    assert set(table.snapshot()) == {("tenant", "acme")}
    assert table.get("tenant", "acme")["budgets"][0]["spent"] == Decimal(31)
    assert (follower.records_applied, follower.tombstones_applied, follower.bad_records) == (2, 1, 1)
    assert follower.topic == "routing.budgets.v1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RecordingPublisher:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict]] = []

    def publish(self, tenant: str, record: dict) -> None:
        codec_for("routing_decision").encode(record)
        self.records.append((tenant, record))

    def close(self) -> None:
        pass


def test_the_server_refuses_a_blocked_tenant_with_resource_exhausted_and_publishes_the_refusal():
    settings = Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port()})
    budgets = BudgetStateTable()
    budgets.upsert(state("tenant", "acme", "block", start=dt.datetime.now(dt.timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0)))
    publisher = RecordingPublisher()
    server = build_server(settings, LiveModelTable(), publisher=publisher, budgets=budgets)
    server.start()
    try:
        with RouterClient(f"127.0.0.1:{settings.gateway.port}") as client:
            with pytest.raises(grpc.RpcError) as raised:
                client.decide("acme", "support-bot", "answer", [MINI], latency_slo_ms=800)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert raised.value.details().startswith("tenant acme is over budget tenant-daily-usd: spent $31 of $30")
            [(_, decision)] = publisher.records
            trailing = dict(raised.value.trailing_metadata())
            assert trailing["prismops-decision-id"] == decision["decision_id"]
            assert decision["reason_code"] == BUDGET_BLOCKED and decision["chosen_model"] is None

            allowed = client.decide("globex", "support-bot", "answer", [MINI], latency_slo_ms=800)
            assert (allowed.model.provider, allowed.model.model) == MINI

            with pytest.raises(grpc.RpcError) as invalid:
                client.decide("acme", "support-bot", "answer", [], latency_slo_ms=800)
            assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(0).wait()
    assert [d["reason_code"] for _, d in publisher.records] == [BUDGET_BLOCKED, "no_live_data"]
