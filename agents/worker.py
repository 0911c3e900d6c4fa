"""The Faust worker: one app, and one module of thin agents per domain.

Each domain module exposes `register(ctx: WorkerContext)`, which declares its topics, agents and timers:
- agents.llm_agents:     LLM usage → cost lines, model observations, the live model table
- agents.gpu_agents:     GPU usage → event-time windows → allocations and GPU cost lines
- agents.billing_agents: FOCUS cloud cost lines → cost lines
- agents.budget_agents:  cost lines → budget state (for the router) and warn/block events
- agents.anomaly_agents: LLM cost lines → windows → online detectors → anomalies with root causes

Agents send output with `event.send(...)`, so Faust publishes it before committing the source offset.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import faust
import faust.web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.metrics import DEAD_LETTERED
from prismops.settings import Settings
from streams.codecs import codec_for
from streams.dead_letters import dead_letter_record
from streams.faust_app import create_app
from streams.telemetry import configure_tracing
from streams.topics import DEAD_LETTERS, TopicSpec

log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class WorkerContext:
    settings: Settings
    app: faust.App

    def __post_init__(self) -> None:
        self._topics: dict[str, faust.TopicT] = {}
        self._dlq = self.topic(DEAD_LETTERS)

    def topic(self, spec: TopicSpec) -> faust.TopicT:
        """The Faust topic for a registry entry; values are raw bytes, decoded by the agents themselves."""
        name = spec.name(self.settings)
        if name not in self._topics:
            self._topics[name] = self.app.topic(
                name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
            )
        return self._topics[name]

    async def dead_letter(
        self, event: faust.types.EventT, stage: str, field: str | None, rule: str, message: str,
        value: bytes | None = None,
    ) -> None:
        """Send the event's original bytes (or `value`, a copy with prompts removed) to the DLQ with the
        reason; published before its offset commits."""
        msg = event.message
        DEAD_LETTERED.labels(stage, rule).inc()
        record = dead_letter_record(
            stage=stage, topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key,
            value=msg.value if value is None else value,
            headers=[(k, v) for k, v in (msg.headers or [])], field=field, rule=rule, message=message,
        )
        log.warning("dead letter from %s[%s]@%s: %s [%s]", msg.topic, msg.partition, msg.offset, message, rule)
        await event.send(self._dlq, key=msg.topic.encode(), value=codec_for(DEAD_LETTERS.schema).encode(record))


def build_worker_app(settings: Settings) -> faust.App:
    from agents import anomaly_agents, billing_agents, budget_agents, gpu_agents, llm_agents

    context = WorkerContext(settings, create_app(settings))

    @context.app.page("/metrics")
    async def metrics(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        # aiohttp refuses a charset inside content_type; the exposition format's full header goes as a header
        return web.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    for domain in (llm_agents, gpu_agents, billing_agents, budget_agents, anomaly_agents):
        domain.register(context)
    return context.app


def run_worker(settings: Settings, loglevel: str = "INFO") -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM."""
    configure_tracing(settings, "worker")
    app = build_worker_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
