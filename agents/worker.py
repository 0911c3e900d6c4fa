"""The Faust worker: thin agents around `agents.llm_usage` and `agents.live_stats`.

price_llm_usage:     usage.llm.v1 → cost.lines.v1 (+ model observations, keyed by provider/model) | DLQ
track_model_health:  model observations → sliding windows per model
publish_live_table:  every interval, changed rows → routing.tables.v1 (compacted, keyed provider/model)
"""

from __future__ import annotations

import datetime as dt
import logging

import faust

from agents.live_stats import LiveModelWindows
from agents.llm_usage import Rejection, process_llm_usage
from agents.pricing import load_price_table
from agents.tagging import load_service_registry
from prismops.settings import Settings
from streams.codecs import CodecError, codec_for
from streams.dead_letters import dead_letter_record
from streams.faust_app import create_app
from streams.topics import COST_LINES, DEAD_LETTERS, LLM_USAGE, MODEL_OBSERVATIONS, ROUTING_TABLES

log = logging.getLogger(__name__)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def build_worker_app(settings: Settings) -> faust.App:
    app = create_app(settings)
    prices = load_price_table(settings.worker.price_table)
    registry = load_service_registry()
    windows = LiveModelWindows(settings.worker.live_window_s, settings.worker.live_window_max_samples)

    def topic(spec):  # type: ignore[no-untyped-def]
        return app.topic(spec.name(settings), key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    usage_topic, cost_topic = topic(LLM_USAGE), topic(COST_LINES)
    observations_topic, tables_topic, dlq_topic = topic(MODEL_OBSERVATIONS), topic(ROUTING_TABLES), topic(DEAD_LETTERS)
    cost_codec, observation_codec = codec_for(COST_LINES.schema), codec_for(MODEL_OBSERVATIONS.schema)
    stats_codec, dlq_codec = codec_for(ROUTING_TABLES.schema), codec_for(DEAD_LETTERS.schema)

    async def dead_letter(event: faust.types.EventT, stage: str, field: str | None, rule: str, message: str) -> None:
        msg = event.message
        record = dead_letter_record(
            stage=stage, topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key, value=msg.value,
            headers=[(k, v) for k, v in (msg.headers or [])], field=field, rule=rule, message=message,
        )
        log.warning("dead letter from %s[%s]@%s: %s [%s]", msg.topic, msg.partition, msg.offset, message, rule)
        await event.send(dlq_topic, key=msg.topic.encode(), value=dlq_codec.encode(record))

    @app.agent(usage_topic)
    async def price_llm_usage(stream: faust.StreamT) -> None:
        async for event in stream.events():
            outcome = process_llm_usage(event.value, prices, registry, _utcnow())
            if isinstance(outcome, Rejection):
                await dead_letter(event, "worker.price_llm_usage", outcome.field, outcome.rule, outcome.message)
                continue
            line, obs = outcome.cost_line, outcome.observation
            await event.send(cost_topic, key=line["tenant"].encode(), value=cost_codec.encode(line))
            await event.send(
                observations_topic, key=f"{obs['provider']}/{obs['model']}".encode(), value=observation_codec.encode(obs)
            )

    @app.agent(observations_topic)
    async def track_model_health(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                windows.observe(observation_codec.decode(event.value), _utcnow())
            except CodecError as exc:
                await dead_letter(event, "worker.track_model_health", exc.field, exc.rule, exc.message)

    @app.timer(interval=settings.worker.live_publish_interval_s)
    async def publish_live_table() -> None:
        for row in windows.due_snapshots(_utcnow()):
            await tables_topic.send(key=f"{row['provider']}/{row['model']}".encode(), value=stats_codec.encode(row))

    return app


def run_worker(settings: Settings, loglevel: str = "INFO") -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM."""
    app = build_worker_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
