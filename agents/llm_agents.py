"""Faust agents for LLM usage: thin shells around `prismops.finops.llm_usage` and `prismops.finops.live_stats`.

price_llm_usage:     usage.llm.v1 → cost.lines.v1 + model observations (keyed provider/model) | DLQ
track_model_health:  model observations → sliding windows per model
publish_live_table:  every interval, changed rows → routing.tables.v1 (compacted, keyed provider/model)
"""

from __future__ import annotations

import faust
from opentelemetry import trace

from prismops.finops.live_stats import LiveModelWindows
from prismops.agents.metrics import CONTENT_FIELDS_DROPPED, LlmCallMetrics, record_cost_line
from prismops.finops.llm_usage import LlmPricingContext, Rejection, process_llm_usage
from prismops.finops.privacy import CONTENT_FIELDS
from prismops.agents.context import WorkerContext, utcnow
from prismops.streams.codecs import codec_for
from prismops.streams.metrics import EVENTS_IN, EVENTS_OUT
from prismops.streams.telemetry import context_from_headers, trace_headers
from prismops.streams.topics import COST_LINES, LLM_USAGE, MODEL_OBSERVATIONS, ROUTING_TABLES


_tracer = trace.get_tracer("prismops.agents.llm")
PRICE_STAGE = "worker.price_llm_usage"


def register(ctx: WorkerContext) -> None:
    settings = ctx.settings
    pricing = LlmPricingContext.from_settings(settings)
    windows = LiveModelWindows(settings.worker.live_window_s, settings.worker.live_window_max_samples)
    usage_topic, cost_topic = ctx.topic(LLM_USAGE), ctx.topic(COST_LINES)
    observations_topic, tables_topic = ctx.topic(MODEL_OBSERVATIONS), ctx.topic(ROUTING_TABLES)
    cost_codec, observation_codec = codec_for(COST_LINES.schema), codec_for(MODEL_OBSERVATIONS.schema)
    stats_codec = codec_for(ROUTING_TABLES.schema)
    llm_metrics = LlmCallMetrics(settings.worker.metrics_top_tenants)
    usage_name, cost_name = LLM_USAGE.name(settings), COST_LINES.name(settings)

    @ctx.app.agent(usage_topic)
    async def price_llm_usage(stream: faust.StreamT) -> None:
        async for event in stream.events():
            EVENTS_IN.labels(usage_name).inc()
            async with ctx.guard(event, PRICE_STAGE):
                await price_one(event)

    async def price_one(event: faust.types.EventT) -> None:
        parent = context_from_headers(event.message.headers)
        with _tracer.start_as_current_span("price_llm_usage", context=parent, kind=trace.SpanKind.CONSUMER) as span:
            outcome = process_llm_usage(event.value, pricing, utcnow())
            headers = trace_headers()
            if isinstance(outcome, Rejection):
                span.set_attribute("prismops.rejected_rule", outcome.rule)
        if isinstance(outcome, Rejection):
            await ctx.dead_letter(event, PRICE_STAGE, outcome.field, outcome.rule, outcome.message, value=outcome.value)
            return
        line, obs = outcome.cost_line, outcome.observation
        line_key, line_value = line["tenant"].encode(), cost_codec.encode(line)
        obs_key, obs_value = f"{obs['provider']}/{obs['model']}".encode(), observation_codec.encode(obs)
        ctx.check_size(cost_topic, line_key, line_value, headers)  # both checked before either is sent
        ctx.check_size(observations_topic, obs_key, obs_value)
        record_cost_line(line)
        llm_metrics.record(line, utcnow())
        for name in outcome.dropped_content_fields:
            # the path's last name when it is a known one: a caller's arbitrary key paths would be endless labels
            last = name.rsplit(".", 1)[-1].removesuffix("[]").lower()
            CONTENT_FIELDS_DROPPED.labels(last if last in CONTENT_FIELDS else "other").inc()
        await event.send(cost_topic, key=line_key, value=line_value, headers=headers)
        EVENTS_OUT.labels(cost_name).inc()
        await event.send(observations_topic, key=obs_key, value=obs_value)

    @ctx.app.agent(observations_topic)
    async def track_model_health(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, "worker.track_model_health"):
                windows.observe(observation_codec.decode(event.value), utcnow())

    @ctx.app.timer(interval=settings.worker.live_publish_interval_s)
    async def publish_live_table() -> None:
        async with ctx.timer_guard("worker.publish_live_table"):
            for row in windows.due_snapshots(utcnow()):
                key, value = f"{row['provider']}/{row['model']}".encode(), stats_codec.encode(row)
                ctx.check_size(tables_topic, key, value)
                await tables_topic.send(key=key, value=value)
