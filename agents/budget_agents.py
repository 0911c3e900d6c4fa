"""Faust agents for budgets: thin shells around `prismops.finops.budgets.BudgetLedger`.

track_tenant_budgets: cost.lines.v1 (batches and single lines, each line on its tenant's partition) → the tenant
    ledger → budget.events.v1 (warn/block crossings) + routing.budgets.v1 (the tenant's state row, compacted,
    read by the router). Lines whose team has a budget are forwarded to prismops.budget-team-lines.v1, one
    batch per team partition.
track_team_budgets: prismops.budget-team-lines.v1 → the team ledger → the same two topics.
republish_budget_states: when a UTC day starts, every scope's state row again, so no `blocked: true` of
    yesterday outlives midnight in the router.

A batch is applied with one ledger write and one state row per scope it touches (`BudgetLedger.apply_batch`),
identified by the batch's origin and position: a batch replayed after a crash (the same record again, or the
worker's pricing sending it again at a new offset) is recognized per scope and counted once, and the crossings
it caused are sent again with their original event ids (consumers dedupe on them). A single line (bills, GPU
windows) is applied by its line id as before (`BudgetLedger.apply`). Outputs go with `ctx.send`, delivered
before the source offset commits; the day's republish goes through the same producer (`ctx.publish`), so a
scope's rows stay in order. Each ledger keeps its state in a Faust table whose changelog partitions match
the source partitions, so spend and crossings are restored with their partition after a restart.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import faust

from prismops.agents.context import WorkerContext, utcnow
from prismops.finops.budgets import BudgetLedger, LedgerOutcome, load_budget_book
from prismops.streams.codecs import CodecError, DecodedBatch, batch_codec_for, codec_for
from prismops.streams.partitioning import KeyPartitioner
from prismops.streams.topics import BUDGET_EVENTS, BUDGET_STATE, BUDGET_TEAM_LINES, COST_LINES

log = logging.getLogger(__name__)
ROLLOVER_CHECK_S = 1.0


def register(ctx: WorkerContext) -> None:
    settings = ctx.settings
    tenant_table = ctx.table("budget-ledger-tenant", help="tenant budget spend and applied batches")
    team_table = ctx.table("budget-ledger-team", help="team budget spend and applied batches")
    book = load_budget_book(settings.budgets, cache_dir=settings.stack.home / "cache" / "budget-definitions")
    tenant_ledger = BudgetLedger.from_settings(settings.budgets, tenant_table, scopes=("tenant",), book=book)
    team_ledger = BudgetLedger.from_settings(settings.budgets, team_table, scopes=("team",), book=book)
    cost_topic, team_lines_topic = ctx.topic(COST_LINES), ctx.topic(BUDGET_TEAM_LINES)
    events_topic, state_topic = ctx.topic(BUDGET_EVENTS), ctx.topic(BUDGET_STATE)
    lines_codec = batch_codec_for(COST_LINES.schema)
    event_codec, state_codec = codec_for(BUDGET_EVENTS.schema), codec_for(BUDGET_STATE.schema)
    team_budgets_exist = team_ledger.book.has_scope("team")
    team_partition = KeyPartitioner(BUDGET_TEAM_LINES.partitions or settings.kafka.default_partitions)
    pruned_on: dict[tuple[str, int], dt.date] = {}
    published_day: list[dt.date] = [utcnow().date()]

    async def apply(event: faust.types.EventT, ledger: BudgetLedger, stage: str) -> tuple[DecodedBatch, list] | None:
        """Decode, dead-letter refused items, prune once a day per partition, apply, publish; returns the record
        and its lines (None when the whole record was dead-lettered)."""
        try:
            decoded = ctx.decode_batch(event, COST_LINES.schema)
        except CodecError as exc:
            await ctx.dead_letter(event, stage, exc.field, exc.rule, exc.message)
            return None
        for item in decoded.items:
            if item.error is not None:
                await ctx.dead_letter(event, stage, item.error.field, item.error.rule, item.error.message,
                                      value=item.original)
        lines = [item.value for item in decoded.items if item.value is not None]
        now, partition = utcnow(), event.message.partition
        if pruned_on.get((stage, partition)) != now.date():
            removed = ledger.prune(now, shard=partition)
            pruned_on[(stage, partition)] = now.date()
            if removed:
                log.info("%s: forgot %d budget entries older than the previous month (partition %d)",
                         stage, removed, partition)
        if decoded.origin is None:
            outcomes = [ledger.apply(line, now, shard=partition) for line in lines]
        else:
            outcomes = [ledger.apply_batch(lines, now, shard=partition, origin=decoded.origin,
                                           position=decoded.position or 0)]
        too_late = sum(outcome.too_late_lines for outcome in outcomes)
        if too_late:
            log.warning("%s: %d line(s) older than the previous month not counted toward budgets", stage, too_late)
        for outcome in outcomes:
            await publish(event, outcome)
        return decoded, lines

    async def publish(event: faust.types.EventT, outcome: LedgerOutcome) -> None:
        for crossing in outcome.crossings:
            log.info("budget %s: %s", crossing.action, crossing.message)
        for crossing in (*outcome.crossings, *outcome.redelivered):
            await ctx.send(
                event, events_topic, key=crossing.scope_key.encode(), value=event_codec.encode(crossing.event_record())
            )
        for row in outcome.states:
            await ctx.send(event, state_topic, key=state_key(row), value=state_codec.encode_trusted(row))

    def state_key(row: dict[str, Any]) -> bytes:
        return f"{row['scope']}/{row['scope_id']}".encode()

    async def forward_to_teams(event: faust.types.EventT, decoded: DecodedBatch, lines: Sequence[dict]) -> None:
        """Lines of teams with a budget, to the team topic: single lines keyed by team; a batch as one batch per
        team partition, whose origin names this hop so positions keep rising per origin."""
        governed = [line for line in lines if team_ledger.governs(line, "team")]
        if not governed:
            return
        if decoded.origin is None:
            for line in governed:
                await ctx.send(event, team_lines_topic, key=line["team"].encode(), value=lines_codec.items.encode_trusted(line))
            return
        origin = f"{decoded.origin}>{event.message.partition}"
        by_partition: dict[int, list[dict]] = {}
        for line in governed:
            by_partition.setdefault(team_partition(line["team"]), []).append(line)
        for partition, group in sorted(by_partition.items()):
            value = lines_codec.encode(group, origin=origin, position=decoded.position or 0)
            await ctx.send(event, team_lines_topic, key=None, value=value, partition=partition)

    @ctx.app.agent(cost_topic)
    async def track_tenant_budgets(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, "worker.track_tenant_budgets"):
                applied = await apply(event, tenant_ledger, "worker.track_tenant_budgets")
                if applied is not None and team_budgets_exist:
                    await forward_to_teams(event, *applied)

    @ctx.app.agent(team_lines_topic)
    async def track_team_budgets(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, "worker.track_team_budgets"):
                await apply(event, team_ledger, "worker.track_team_budgets")

    @ctx.app.timer(interval=ROLLOVER_CHECK_S)
    async def republish_budget_states() -> None:
        """At the first tick of a new UTC day, every scope's row for the new period (its spend starts at zero)."""
        async with ctx.timer_guard("worker.republish_budget_states"):
            now = utcnow()
            if now.date() == published_day[0] or ctx.app.rebalancing:
                return
            sent = 0
            for ledger in (tenant_ledger, team_ledger):
                for scope, scope_id in ledger.scope_ids():
                    row = ledger.state_row(scope, scope_id, now)
                    if row is not None:
                        await ctx.publish(state_topic, key=state_key(row), value=state_codec.encode(row))
                        sent += 1
            published_day[0] = now.date()
            log.info("a new UTC day: republished %d budget state rows", sent)
