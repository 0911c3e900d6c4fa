"""Faust agents for budgets: thin shells around `prismops.finops.budgets.BudgetLedger`.

track_tenant_budgets: cost.lines.v1 (keyed by tenant) → the tenant ledger → budget.events.v1 (warn/block
    crossings) + routing.budgets.v1 (the tenant's state row, compacted, read by the router). Lines whose
    team has a budget are forwarded, unchanged, to prismops.budget-team-lines.v1 keyed by team.
track_team_budgets: prismops.budget-team-lines.v1 (keyed by team) → the team ledger → the same two topics.

Each ledger keeps its state in a Faust table whose changelog partitions match the source partitions, so a
scope's spend, remembered line ids and crossings are restored with its partition after a restart or a
rebalance. Outputs go with `event.send`, published before the source offset commits. A crash after the
table write but before publication replays the line; the ledger recognizes it as applied and hands back the
crossings it caused (`redelivered`), which are sent again with their original event ids (consumers dedupe
on them), so no crossing is lost and none is counted twice.
"""

from __future__ import annotations

import datetime as dt
import logging

import faust

from prismops.finops.budgets import BudgetLedger, LedgerOutcome
from prismops.agents.context import WorkerContext, utcnow
from prismops.streams.codecs import CodecError, codec_for
from prismops.streams.topics import BUDGET_EVENTS, BUDGET_STATE, BUDGET_TEAM_LINES, COST_LINES

log = logging.getLogger(__name__)


def register(ctx: WorkerContext) -> None:
    settings = ctx.settings
    tenant_table = ctx.app.Table("budget-ledger-tenant", default=None, help="tenant budget spend and applied lines")
    team_table = ctx.app.Table("budget-ledger-team", default=None, help="team budget spend and applied lines")
    tenant_ledger = BudgetLedger.from_settings(settings.budgets, tenant_table, scopes=("tenant",))
    team_ledger = BudgetLedger.from_settings(settings.budgets, team_table, scopes=("team",))
    cost_topic, team_lines_topic = ctx.topic(COST_LINES), ctx.topic(BUDGET_TEAM_LINES)
    events_topic, state_topic = ctx.topic(BUDGET_EVENTS), ctx.topic(BUDGET_STATE)
    cost_codec, event_codec, state_codec = (
        codec_for(COST_LINES.schema), codec_for(BUDGET_EVENTS.schema), codec_for(BUDGET_STATE.schema)
    )
    team_budgets_exist = team_ledger.book.has_scope("team")
    pruned_on: dict[tuple[str, int], dt.date] = {}

    async def apply(event: faust.types.EventT, ledger: BudgetLedger, stage: str) -> dict | None:
        """Decode, prune once a day per partition, apply, publish; returns the line (None if dead-lettered)."""
        try:
            line = cost_codec.decode(event.value)
        except CodecError as exc:
            await ctx.dead_letter(event, stage, exc.field, exc.rule, exc.message)
            return None
        now, partition = utcnow(), event.message.partition
        if pruned_on.get((stage, partition)) != now.date():
            removed = ledger.prune(now, shard=partition)
            pruned_on[(stage, partition)] = now.date()
            if removed:
                log.info("%s: forgot %d budget entries older than the previous month (partition %d)",
                         stage, removed, partition)
        outcome = ledger.apply(line, now, shard=partition)
        if outcome.too_late:
            log.warning("%s: line %s of %s is older than the previous month; not counted toward budgets",
                        stage, line["line_id"], line["event_time"].isoformat())
        await publish(event, outcome)
        return line

    async def publish(event: faust.types.EventT, outcome: LedgerOutcome) -> None:
        for crossing in outcome.crossings:
            log.info("budget %s: %s", crossing.action, crossing.message)
        for crossing in (*outcome.crossings, *outcome.redelivered):
            await ctx.send(
                event, events_topic, key=crossing.scope_key.encode(), value=event_codec.encode(crossing.event_record())
            )
        for row in outcome.states:
            key = f"{row['scope']}/{row['scope_id']}".encode()
            await ctx.send(event, state_topic, key=key, value=state_codec.encode(row))

    @ctx.app.agent(cost_topic)
    async def track_tenant_budgets(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, "worker.track_tenant_budgets"):
                line = await apply(event, tenant_ledger, "worker.track_tenant_budgets")
                if line is not None and team_budgets_exist and team_ledger.governs(line, "team"):
                    await ctx.send(event, team_lines_topic, key=line["team"].encode(), value=event.value)

    @ctx.app.agent(team_lines_topic)
    async def track_team_budgets(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, "worker.track_team_budgets"):
                await apply(event, team_ledger, "worker.track_team_budgets")
