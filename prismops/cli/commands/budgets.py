"""`prismops budgets list|status`: the budget definitions, and the live budget state the router reads."""

from __future__ import annotations

import logging

import click
from rich.markup import escape

from prismops.cli.output import FORMAT_OPTION, emit, fail
from prismops.settings import Settings

DEFINITION_COLUMNS = ["budget_id", "scope", "scope_id", "period", "unit", "limit"]
STATUS_COLUMNS = ["scope", "scope_id", "blocked", "budget_id", "period", "period_start", "unit", "limit", "spent",
                  "used_pct", "status"]


@click.group(name="budgets")
def command() -> None:
    """Budgets per tenant and team: definitions and live state (exact Decimal money; JSON prints it as strings)."""


@command.command(name="list")
@FORMAT_OPTION
@click.pass_obj
def list_budgets(settings: Settings, fmt: str) -> None:
    """The budgets in force: the tenant seeds plus budgets.definitions."""
    from prismops.finops.budgets import BudgetDefinitionError, load_budget_book

    try:
        book = load_budget_book(settings.budgets)
    except (BudgetDefinitionError, OSError) as error:
        fail(escape(f"budget definitions: {error}"))
    rows = [
        {"budget_id": b.budget_id, "scope": b.scope, "scope_id": b.scope_id, "period": b.period, "unit": b.unit,
         "limit": b.limit}
        for b in book.budgets
    ]
    emit(rows, fmt, title="budgets", columns=DEFINITION_COLUMNS)


@command.command()
@click.option("--scope", type=click.Choice(["tenant", "team"]), default=None, help="only tenants or only teams")
@click.option("--blocked", "only_blocked", is_flag=True, help="only scopes that are blocked")
@click.option("--timeout", "timeout_s", type=float, default=20.0, show_default=True,
              help="how long to wait for the compacted topic to be read")
@FORMAT_OPTION
@click.pass_obj
def status(settings: Settings, scope: str | None, only_blocked: bool, timeout_s: float, fmt: str) -> None:
    """Budget state per scope and budget, read from the compacted topic the router follows (routing.budgets.v1)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from prismops.gateway_grpc.live_table import BudgetStateTable, LiveTableFollower
    from prismops.streams.topics import BUDGET_STATE

    topic = BUDGET_STATE.name(settings)
    try:
        topics = AdminClient(settings.kafka_client_config()).list_topics(timeout=min(timeout_s, 10.0)).topics
    except KafkaException as error:
        fail(escape(f"Kafka at {settings.kafka_bootstrap}: {error}"))
    if topic not in topics:
        fail(f"topic {topic} does not exist: run `prismops topics create` (and the worker, which fills it)")
    logging.getLogger("prismops.gateway_grpc.live_table").setLevel(logging.ERROR)  # its progress lines are for the gateway
    table = BudgetStateTable()
    follower = LiveTableFollower(settings, BUDGET_STATE, table)
    follower.start()
    try:
        caught_up = follower.wait_caught_up(timeout_s)
    finally:
        follower.stop()
    if not caught_up:
        fail(f"could not read {follower.topic} within {timeout_s:.0f} s (is Kafka at {settings.kafka_bootstrap} up?)")
    rows = []
    for (row_scope, scope_id), row in sorted(table.snapshot().items()):
        if (scope and row_scope != scope) or (only_blocked and not row["blocked"]):
            continue
        for usage in row["budgets"]:
            rows.append({
                "scope": row_scope, "scope_id": scope_id, "blocked": row["blocked"], **usage,
                "blocked_reason": row["blocked_reason"], "updated_at": row["updated_at"],
            })
    emit(rows, fmt, title=f"budget state ({follower.topic})", columns=STATUS_COLUMNS)
