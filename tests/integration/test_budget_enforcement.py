"""Budgets on the real stack: a tenant's LLM calls cross 80% and then 100% of its daily budget.

SDK usage events → worker (pricing, then the budget ledger in Faust tables) → budget.events.v1 and the
compacted routing.budgets.v1 → gateway (refuses the blocked tenant), sink (ClickHouse budget_events) and
`prismops alerts` (a webhook served by this test, which fails its first request). All components run as the
real child processes; nothing is injected into any topic by hand.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from clickhouse_driver import Client

from prismops.gateway_grpc.client import RouterClient
from prismops.gateway_grpc.live_table import BudgetStateTable, LiveTableFollower
from prismops.cli.app import main as cli_main
from prismops.infra.components import Components
from prismops.settings import Settings
from prismops.sinks.migrations import apply_migrations
from prismops.streams.producer import UsageProducer, new_llm_usage_event
from prismops.streams.topics import BUDGET_EVENTS, BUDGET_STATE, COST_LINES, LLM_USAGE
from prismops.testing import RecordingWebhook, isolated, read_topic_to_end, wait_drained, worker_progress

TENANT = "budget-tenant"
OTHER = "thrifty-tenant"
MODEL = ("openai", "gpt-4o")
DAILY_USD = Decimal("0.05")
BUDGET = "tenant-daily-usd"
TEAM = "customer-experience"  # owner of support-bot in finops/service_registry.yaml
TEAM_BUDGET = "team-monthly-usd"
WAIT_S = 60.0


@pytest.fixture(scope="module")
def webhook() -> Iterator[RecordingWebhook]:
    hook = RecordingWebhook(first_status=500)
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def budget_pipeline(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory, webhook: RecordingWebhook):
    definitions = tmp_path_factory.mktemp("budgets") / "budgets.yaml"
    definitions.write_text(
        f"budgets:\n  - {{id: {TEAM_BUDGET}, scope: team, scope_id: '*', period: monthly, unit: usd, limit: '1000'}}\n"
    )
    with isolated(stack_settings) as base:
        settings = base.with_overrides(budgets={
            "definitions": definitions,
            "default_tenant_daily_usd": str(DAILY_USD), "default_tenant_daily_tokens": 100_000_000,
            "webhook_url": webhook.url, "webhook_backoff_first_s": 0.2,
            "alerts_group_id": f"prismops-alerts-{uuid.uuid4().hex[:8]}",
        })
        apply_migrations(settings)
        with Components(settings, tmp_path_factory.mktemp("budget-logs")) as components:
            components.start("worker", "sink", "gateway", "alerts")
            with RouterClient(f"{settings.gateway.host}:{settings.gateway.port}") as router:
                if not router.wait_ready(WAIT_S):
                    components.check_alive()
                    raise TimeoutError("the gateway did not report SERVING")
            yield settings, components


class BudgetWatch:
    """The compacted budget topic as the router sees it, followed in this process with the gateway's code."""

    def __init__(self, settings: Settings):
        self.table = BudgetStateTable()
        self.follower = LiveTableFollower(settings, BUDGET_STATE, self.table)
        self.follower.start()

    def usage(self, tenant: str) -> dict[str, Any] | None:
        row = self.table.get("tenant", tenant)
        return next((u for u in row["budgets"] if u["budget_id"] == BUDGET), None) if row else None

    def wait_spent_above(self, tenant: str, spent: Decimal, components: Components) -> tuple[dict, dict]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            usage = self.usage(tenant)
            if usage is not None and usage["spent"] > spent:
                return self.table.get("tenant", tenant), usage
            components.check_alive()
            time.sleep(0.2)
        raise AssertionError(
            f"the budget row of {tenant} never went above {spent}; last: {self.usage(tenant)}\n"
            + worker_progress(components.settings, (LLM_USAGE, COST_LINES, BUDGET_STATE))
            + "\n--- worker stacks:\n" + components.worker_stacks()
        )


def report_call(settings: Settings, tenant: str) -> None:
    with UsageProducer(settings) as usage:
        usage.record_llm_call(new_llm_usage_event(
            tenant=tenant, service="support-bot", feature="answer", environment="prod", provider=MODEL[0],
            model=MODEL[1], input_tokens=4000, output_tokens=1000, latency_ms=300, status="ok",
        ))


def spend_until(settings, watch: BudgetWatch, components, tenant: str, status: str) -> tuple[dict, dict, int]:
    """One call at a time, each awaited in the budget row, until the tenant's USD budget reaches `status`."""
    calls = 0
    usage = watch.usage(tenant)
    spent = usage["spent"] if usage else Decimal(0)
    while usage is None or usage["status"] != status:
        assert calls < 20, f"{tenant} never reached {status}: {usage}"
        report_call(settings, tenant)
        calls += 1
        row, usage = watch.wait_spent_above(tenant, spent, components)
        spent = usage["spent"]
    return row, usage, calls


def budget_events(settings: Settings) -> list[tuple[bytes, dict[str, Any]]]:
    """Every record on budget.events.v1, read from the beginning to the current end."""
    return read_topic_to_end(settings, BUDGET_EVENTS)


def wait_for(what: str, probe, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def refusal(router: RouterClient, tenant: str) -> grpc.RpcError | None:
    try:
        router.decide(tenant, "support-bot", "answer", [MODEL, ("openai", "gpt-4o-mini")], latency_slo_ms=2000)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
            return error
        raise
    return None


def test_a_tenant_past_80_and_100_percent_gets_one_warn_one_block_and_is_refused(budget_pipeline, webhook):
    settings, components = budget_pipeline
    watch = BudgetWatch(settings)
    clickhouse = Client(settings.clickhouse_host, port=settings.clickhouse_port, database=settings.clickhouse.database)
    try:
        report_call(settings, OTHER)
        watch.wait_spent_above(OTHER, Decimal(0), components)

        row, usage, _ = spend_until(settings, watch, components, TENANT, "warn")
        assert usage["used_pct"] >= 80 and usage["spent"] < DAILY_USD and row["blocked"] is False, usage
        warn_only = wait_for("the warn event", lambda: [e for _, e in budget_events(settings) if e["scope_id"] == TENANT])
        assert [e["action"] for e in warn_only] == ["warn"]

        # past 80%: the router downgrades the tenant to the route's economy tier (bundled policy, support-chat)
        with RouterClient(f"{settings.gateway.host}:{settings.gateway.port}") as router:
            def downgraded_answer():
                answer = router.decide(TENANT, "support-bot", "answer")
                return answer if answer.budget.downgraded else None

            answer = wait_for("the router to downgrade the tenant", downgraded_answer)
            assert (answer.model.provider, answer.model.model) == ("openai", "gpt-4o-mini")
            assert (answer.budget.status, answer.budget.tier, answer.budget.budget_id) == ("warn", "economy", BUDGET)
            assert 80 <= answer.budget.used_pct < 100 and "budget_downgrade" in answer.reason_codes
            assert not answer.HasField("shadow"), "no shadow spend while downgraded"
            other = router.decide(OTHER, "support-bot", "answer")
            assert (other.model.model, other.budget.downgraded) == ("gpt-4o", False)

        row, usage, _ = spend_until(settings, watch, components, TENANT, "block")
        assert usage["spent"] >= DAILY_USD and row["blocked"] is True
        assert row["blocked_reason"].startswith(f"budget {BUDGET}: ${usage['spent'].normalize()} of $0.05")

        # spending goes on past the block (calls already in flight): no further event
        report_call(settings, TENANT)
        watch.wait_spent_above(TENANT, usage["spent"], components)

        # the worker restarts: its tables come back from their changelogs, so spend continues and nothing is re-sent
        before_restart = watch.usage(TENANT)["spent"]
        worker = components.processes["worker"]
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        components.start("worker")
        report_call(settings, TENANT)
        _, after = watch.wait_spent_above(TENANT, before_restart, components)
        assert after["spent"] - before_restart < Decimal("0.03"), "the restarted worker forgot the earlier spend"

        # exactly one warn and one block, on the topic...
        events = [(key, e) for key, e in budget_events(settings) if e["scope_id"] == TENANT]
        assert [e["action"] for _, e in events] == ["warn", "block"]
        assert {key for key, _ in events} == {f"tenant/{TENANT}".encode()}
        warn, block = (e for _, e in events)
        assert (warn["threshold_pct"], block["threshold_pct"]) == (80, 100)
        assert warn["limit"] == block["limit"] == DAILY_USD
        assert warn["spent"] >= Decimal("0.04") and block["spent"] >= DAILY_USD
        assert "routing is blocked until" in block["message"]
        assert not [e for _, e in budget_events(settings) if e["scope_id"] == OTHER]

        # ...and in ClickHouse
        def stored_events():
            rows = clickhouse.execute(
                "SELECT event_id, action, budget_limit, spent FROM budget_events WHERE scope_id = %(t)s ORDER BY threshold_pct",
                {"t": TENANT},
            )
            return rows if len(rows) >= 2 else None

        stored = wait_for("budget_events rows", stored_events)
        assert [(r[0], r[1], r[2], r[3]) for r in stored] == [
            (e["event_id"], e["action"], e["limit"], e["spent"]) for e in (warn, block)
        ]

        # the router refuses the tenant and still answers the other one
        with RouterClient(f"{settings.gateway.host}:{settings.gateway.port}") as router:
            refused = wait_for("the gateway to refuse the blocked tenant", lambda: refusal(router, TENANT))
            details = refused.details()
            assert details.startswith(f"tenant {TENANT} is over budget {BUDGET}: spent $"), details
            assert "of $0.05 (" in details and "routing refused until" in details
            answer = router.decide(OTHER, "support-bot", "answer", [MODEL], latency_slo_ms=2000)
            assert (answer.model.provider, answer.model.model) == MODEL

        decisions = wait_for("the refusal in routing_decisions", lambda: clickhouse.execute(
            "SELECT tenant, chosen_model, reason FROM routing_decisions WHERE reason_code = 'budget_blocked'"
        ))
        assert decisions[0][0] == TENANT and decisions[0][1] is None and decisions[0][2] == details

        # the budget table the router reads, as `prismops budgets status` prints it
        result = CliRunner().invoke(cli_main, ["budgets", "status", "--blocked", "--format", "json"], obj=settings)
        assert result.exit_code == 0, result.output
        assert {(r["scope_id"], r["budget_id"], r["status"]) for r in json.loads(result.output)} >= {
            (TENANT, BUDGET, "block"),
        }

        # the team budget adds up both tenants' lines, repartitioned by team through the worker's internal topic
        def team_spent_is_the_sum():
            team = watch.table.get("team", TEAM)
            total = watch.usage(TENANT)["spent"] + watch.usage(OTHER)["spent"]
            return team is not None and team["budgets"][0]["spent"] == total and team

        team = wait_for("the team row to add up both tenants", team_spent_is_the_sum)
        assert (team["budgets"][0]["budget_id"], team["blocked"]) == (TEAM_BUDGET, False)

        # the webhook: the first post failed with 500 and was retried; exactly two alerts accepted, once each
        wait_for("two delivered alerts", lambda: len(webhook.accepted()) >= 2)
        # drained: `prismops alerts` commits an alert only after its post succeeded, so no post is still to come
        wait_drained(settings, components, {settings.alerts_group_id: (BUDGET_EVENTS,)})
        accepted = webhook.accepted()
        assert sorted(r["alert_id"] for r in accepted) == sorted([warn["event_id"], block["event_id"]])
        assert webhook.requests[0]["status"] == 500 and webhook.requests[1]["alert_id"] == webhook.requests[0]["alert_id"]
        assert len(webhook.requests) == 3
        for request in accepted:
            assert set(request["body"]) == {"text", "blocks"} and TENANT in request["body"]["text"]
        delivered = clickhouse.execute(
            "SELECT event_id, attempts FROM alert_deliveries WHERE status = 'delivered' ORDER BY attempts DESC"
        )
        assert sorted(d[0] for d in delivered) == sorted([warn["event_id"], block["event_id"]])
        assert delivered[0][1] == 2
    finally:
        watch.follower.stop()
        clickhouse.disconnect()
