"""The budget gate on its own, the budget table's follower, and a real server applying a tenant's standing:
FAILED_PRECONDITION in MANUAL mode at the block, a cheaper tier at the warning, a reason in NOTIFY mode."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import grpc
import pytest

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.finops.pricing import load_catalog  # noqa: E402
from prismops.finops.tagging import load_service_registry  # noqa: E402
from prismops.gateway_grpc.budget_gate import BUDGET_BLOCKED, BudgetGate, BudgetStanding, current_usages  # noqa: E402
from prismops.gateway_grpc.client import RouterClient  # noqa: E402
from prismops.gateway_grpc.live_table import BudgetStateTable, LiveModelTable, LiveTableFollower  # noqa: E402
from prismops.gateway_grpc.policy import RoutingRequest  # noqa: E402
from prismops.gateway_grpc.server import GatewayState, build_server, open_policy_store  # noqa: E402
from prismops.settings import Settings  # noqa: E402
from prismops.streams.codecs import codec_for  # noqa: E402
from prismops.streams.topics import BUDGET_STATE  # noqa: E402

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
TODAY = dt.datetime(2026, 6, 15, tzinfo=dt.timezone.utc)
GPT4O = ("openai", "gpt-4o")
MINI = ("openai", "gpt-4o-mini")


def usage(status: str, *, spent: str = "31", limit: str = "30", period: str = "daily", start: dt.datetime = TODAY,
          budget_id: str | None = None, scope: str = "tenant") -> dict:
    return {"budget_id": budget_id or f"{scope}-{period}-usd", "period": period, "period_start": start, "unit": "usd",
            "limit": Decimal(limit), "spent": Decimal(spent),
            "used_pct": float(Decimal(spent) * 100 / Decimal(limit)), "status": status}


def state(scope: str, scope_id: str, status: str = "block", *, budgets: list[dict] | None = None, **kwargs) -> dict:
    budgets = budgets or [usage(status, scope=scope, **kwargs)]
    return {"scope": scope, "scope_id": scope_id, "blocked": any(b["status"] == "block" for b in budgets),
            "blocked_reason": None, "budgets": budgets, "updated_at": NOW}


def request(tenant: str = "acme", service: str = "support-bot") -> RoutingRequest:
    return RoutingRequest(tenant, service, "answer", (MINI,), 800.0, 1000, 500)


def gate(*rows: dict) -> BudgetGate:
    table = BudgetStateTable()
    for row in rows:
        table.upsert(row)
    return BudgetGate(table, load_service_registry())


def test_a_blocked_tenants_standing_carries_the_numbers_and_the_refusal_sentence():
    standing = gate(state("tenant", "acme", "block", spent="30.5")).standing(request(), NOW)
    assert isinstance(standing, BudgetStanding)
    assert (standing.scope, standing.scope_id, standing.budget_id, standing.status) == (
        "tenant", "acme", "tenant-daily-usd", "block")
    assert (standing.limit, standing.spent, round(standing.used_pct, 2)) == (Decimal("30"), Decimal("30.5"), 101.67)
    assert standing.message == (
        "tenant acme is over budget tenant-daily-usd: spent $30.5 of $30 (101.67%) on 2026-06-15 UTC; "
        "routing refused until 2026-06-16 00:00 UTC (MANUAL mode)"
    )


@pytest.mark.parametrize(("status", "spent"), [("warn", "25"), ("ok", "3")])
def test_a_tenant_under_its_limit_still_has_a_standing_for_the_engine_to_weigh(status, spent):
    standing = gate(state("tenant", "acme", status, spent=spent)).standing(request(), NOW)
    assert (standing.status, standing.spent, standing.used_pct) == (
        status, Decimal(spent), float(Decimal(spent) * 100 / 30))


def test_a_tenant_without_budgets_has_no_standing():
    assert gate().standing(request(), NOW) is None
    assert gate(state("tenant", "other", "block")).standing(request(), NOW) is None


def test_a_budget_from_a_period_that_has_ended_no_longer_counts():
    yesterday = gate(state("tenant", "acme", "block", start=TODAY - dt.timedelta(days=1)))
    assert yesterday.standing(request(), NOW) is None
    monthly = gate(state("tenant", "acme", "block", period="monthly", start=TODAY.replace(day=1)))
    assert monthly.standing(request(), NOW).period == "monthly"
    assert monthly.standing(request(), dt.datetime(2026, 7, 1, tzinfo=dt.timezone.utc)) is None
    assert current_usages(state("tenant", "acme", start=TODAY - dt.timedelta(days=1)), NOW) == []


def test_the_most_used_budget_wins_and_a_block_outranks_any_share():
    two = state("tenant", "acme", budgets=[
        usage("ok", spent="12", budget_id="daily-usd"),
        usage("warn", spent="27", limit="30", period="monthly", start=TODAY.replace(day=1), budget_id="monthly-usd"),
    ])
    assert gate(two).standing(request(), NOW).budget_id == "monthly-usd"

    blocked_team = state("team", "customer-experience", "block", spent="10")  # the worker says block at 33%
    warned_tenant = state("tenant", "acme", "warn", spent="29")
    standing = gate(blocked_team, warned_tenant).standing(request(), NOW)
    assert (standing.scope, standing.scope_id, standing.status) == ("team", "customer-experience", "block")


def test_the_team_of_the_requests_service_counts_for_its_tenants():
    team_blocked = gate(state("team", "customer-experience", "block"))
    standing = team_blocked.standing(request("globex", "support-bot"), NOW)
    assert (standing.scope, standing.scope_id, standing.tenant) == ("team", "customer-experience", "globex")
    assert standing.message.startswith("tenant globex's team customer-experience is over budget team-daily-usd")
    assert team_blocked.standing(request("globex", "search"), NOW) is None
    assert team_blocked.standing(request("globex", "unknown-service"), NOW) is None


def test_the_tenant_is_canonicalized_like_cost_lines():
    assert gate(state("tenant", "acme", "block")).standing(request("  Acme Corp "), NOW).tenant == "acme"


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


# --- through a real server ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RecordingPublisher:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict]] = []

    def publish(self, key: str, record: Mapping[str, Any]) -> None:
        codec = codec_for("routing_decision")
        self.records.append((key, codec.decode(codec.encode(record))))

    def publish_and_wait(self, key: str, record: Mapping[str, Any], timeout_s: float) -> None:
        self.publish(key, record)

    def close(self) -> None:
        pass


def live_row(key: tuple[str, str], p95: float, input_price: str, output_price: str) -> dict:
    return {
        "provider": key[0], "model": key[1], "window_seconds": 300.0, "sample_count": 100, "error_count": 1,
        "error_rate": 0.01, "p50_latency_ms": p95 / 2, "p95_latency_ms": p95, "p99_latency_ms": p95 * 1.4,
        "cost_usd": Decimal("0.25"), "tokens": 400_000, "input_price_per_mtok": Decimal(input_price),
        "output_price_per_mtok": Decimal(output_price), "updated_at": NOW,
    }


def budget_gateway(budgets: BudgetStateTable, publisher: RecordingPublisher, mode: str = "manual"):
    settings = Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port()}, budgets={"mode": mode})
    table = LiveModelTable()
    table.upsert(live_row(GPT4O, 600, "2.5", "10"))
    table.upsert(live_row(MINI, 400, "0.15", "0.6"))
    holder: dict[str, GatewayState] = {}
    gateway_state = holder["state"] = GatewayState(
        settings, table, open_policy_store(settings, None, holder), budgets=budgets, clock=lambda: NOW,
        catalog=load_catalog(),
    )
    server = build_server(settings, table, publisher=publisher, budgets=budgets, state=gateway_state)
    server.start()
    return server, f"127.0.0.1:{settings.gateway.port}"


@pytest.fixture()
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture()
def budgets() -> BudgetStateTable:
    table = BudgetStateTable()
    table.upsert(state("tenant", "acme", "block"))
    table.upsert(state("tenant", "initech", "warn", spent="25.5"))
    return table


@pytest.fixture()
def manual(budgets, publisher) -> Iterator[RouterClient]:
    server, target = budget_gateway(budgets, publisher)
    with RouterClient(target) as client:
        yield client
    server.stop(0).wait()


def test_the_server_refuses_a_blocked_tenant_with_failed_precondition_and_publishes_the_refusal(manual, publisher):
    with pytest.raises(grpc.RpcError) as raised:
        manual.decide("acme", "support-bot", "answer", [MINI])
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == (
        "tenant acme is over budget tenant-daily-usd: spent $31 of $30 (103.33%) on 2026-06-15 UTC; "
        "routing refused until 2026-06-16 00:00 UTC (MANUAL mode)")
    [(tenant, decision)] = publisher.records
    assert tenant == "acme"
    assert dict(raised.value.trailing_metadata())["prismops-decision-id"] == decision["decision_id"]
    assert (decision["reason_code"], decision["chosen_model"], decision["budget_status"]) == (
        BUDGET_BLOCKED, None, "block")
    assert decision["reason_codes"] == [BUDGET_BLOCKED]
    assert [(c["model"], c["eligible"], c["verdict"]) for c in decision["candidates"]] == [
        ("gpt-4o-mini", False, "not weighed: budget tenant-daily-usd blocks")]


def test_get_tables_lists_the_budget_rows_with_exact_amounts(manual):
    rows = {(row.scope, row.scope_id): row for row in manual.get_tables().budgets}
    assert set(rows) == {("tenant", "acme"), ("tenant", "initech")}
    acme = rows[("tenant", "acme")]
    assert (acme.budget_id, acme.period, acme.unit, acme.limit, acme.spent, acme.status) == (
        "tenant-daily-usd", "daily", "usd", "30", "31", "block")
    assert rows[("tenant", "initech")].used_pct == 85.0


def test_other_tenants_route_and_bad_input_is_still_invalid_argument(manual, publisher):
    allowed = manual.decide("globex", "support-bot", "answer", [MINI])
    assert (allowed.model.provider, allowed.model.model) == MINI
    assert allowed.budget.status == "ok"

    with pytest.raises(grpc.RpcError) as invalid:
        manual.decide("acme", "support-bot", "answer", [MINI], latency_slo_ms=-1)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [d["reason_code"] for _, d in publisher.records] == ["primary"]


def test_a_tenant_at_its_warning_is_downgraded_to_the_routes_tier(manual, publisher):
    response = manual.decide("initech", "support-bot", "answer", prompt_chars=5000)
    assert (response.model.provider, response.model.model) == MINI
    # the bundled support route samples a 5% shadow by random decision id; under a downgrade it is skipped
    assert [c for c in response.reason_codes if c != "shadow_skipped_budget"] == ["primary_skipped", "budget_downgrade"]
    assert not response.HasField("shadow")
    budget = response.budget
    assert (budget.status, budget.budget_id, budget.scope, budget.scope_id) == (
        "warn", "tenant-daily-usd", "tenant", "initech")
    assert (budget.used_pct, budget.downgraded, budget.tier) == (85.0, True, "economy")
    assert [c.verdict for c in response.candidates][:2] == ["budget downgrade: above the economy tier"] * 2
    [(_, decision)] = publisher.records
    assert (decision["budget_status"], decision["budget_used_pct"], decision["downgraded"]) == ("warn", 85.0, True)


def test_notify_mode_routes_a_blocked_tenant_and_says_why(budgets, publisher):
    server, target = budget_gateway(budgets, publisher, mode="notify")
    try:
        with RouterClient(target) as client:
            response = client.decide("acme", "support-bot", "answer", prompt_chars=5000)
    finally:
        server.stop(0).wait()
    assert (response.model.provider, response.model.model) == MINI
    assert "budget_over_notify_only" in response.reason_codes
    assert (response.budget.status, response.budget.downgraded) == ("block", True)
    assert [d["budget_status"] for _, d in publisher.records] == ["block"]
