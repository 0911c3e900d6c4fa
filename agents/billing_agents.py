"""Faust agent for FOCUS bills: a thin shell around `prismops.finops.focus_billing.process_cloud_cost_line`.

cost_cloud_billing:  billing.cloud.v1 → cost.lines.v1 (keyed by tenant) | DLQ (undecodable or rule-breaking rows)
"""

from __future__ import annotations

import faust

from prismops.finops.focus_billing import process_cloud_cost_line
from prismops.finops.llm_usage import Rejection
from prismops.agents.context import WorkerContext
from prismops.streams.codecs import codec_for
from prismops.streams.topics import CLOUD_BILLING, COST_LINES

STAGE = "worker.cost_cloud_billing"


def register(ctx: WorkerContext) -> None:
    billing_topic, cost_topic = ctx.topic(CLOUD_BILLING), ctx.topic(COST_LINES)
    cost_codec = codec_for(COST_LINES.schema)

    @ctx.app.agent(billing_topic)
    async def cost_cloud_billing(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, STAGE):
                outcome = process_cloud_cost_line(event.value)
                if isinstance(outcome, Rejection):
                    await ctx.dead_letter(event, STAGE, outcome.field, outcome.rule, outcome.message)
                    continue
                await ctx.send(event, cost_topic, key=outcome["tenant"].encode(), value=cost_codec.encode(outcome))
