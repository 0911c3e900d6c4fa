"""The Faust worker: one app, and one module of thin agents per domain.

Each domain module exposes `register(ctx: WorkerContext)`, which declares its topics, agents and timers:
- prismops.agents.llm_agents:     LLM usage → cost lines, model observations, the live model table
- prismops.agents.gpu_agents:     GPU usage → event-time windows → allocations and GPU cost lines
- prismops.agents.billing_agents: FOCUS cloud cost lines → cost lines
- prismops.agents.budget_agents:  cost lines → budget state (for the router) and warn/block events
- prismops.agents.anomaly_agents: LLM cost lines → windows → online detectors → anomalies with root causes
- prismops.agents.inference_agents: self-hosted models' lines + GPU node windows → inference-pool cost by tokens

Agents send output with `ctx.send(event, ...)`: it is delivered before the offset of the event that made it commits
(by default the output producer, `worker.output_path` = librdkafka; Faust's `event.send` with `faust`).
"""

from __future__ import annotations

import faust
import faust.web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from prismops.agents import anomaly_agents, billing_agents, budget_agents, gpu_agents, inference_agents, llm_agents
from prismops.agents.context import WorkerContext
from prismops.settings import Settings
from prismops.streams.faust_app import create_app
from prismops.streams.garbage_collector import tune_collector
from prismops.streams.membership import leave_group
from prismops.streams.telemetry import configure_tracing
from prismops.streams.topics import TopicPlan, ensure_topic_plans, ensure_topics


def build_worker_app(settings: Settings) -> faust.App:
    context = WorkerContext(settings, create_app(settings))

    @context.app.page("/metrics")
    async def metrics(web: faust.web.Web, request: faust.web.Request) -> faust.web.Response:
        # `?name[]=...` renders only those series, as prometheus_client's own exporters do: a full page with
        # per-tenant series costs the worker real CPU, and a poller that wants one counter should not pay it.
        names = request.query.getall("name[]", []) if hasattr(request.query, "getall") else []
        registry = REGISTRY.restricted_registry(names) if names else REGISTRY
        # aiohttp refuses a charset inside content_type; the exposition format's full header goes as a header
        return web.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    for domain in (llm_agents, gpu_agents, billing_agents, budget_agents, anomaly_agents, inference_agents):
        domain.register(context)
    return context.app


def internal_topic_plans(app: faust.App) -> list[TopicPlan]:
    """Faust's own topics for this app: every table's changelog (partitions and cleanup policy as Faust would
    declare them) and the leader-assignor topic."""
    plans = []
    for table in app.tables.values():
        topic = table.changelog_topic
        cleanup = ",".join(flag for flag, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on)
        config = {"cleanup.policy": cleanup} if cleanup else {}
        if topic.retention:
            config["retention.ms"] = str(int(topic.retention * 1000))
        config.update({name: str(value) for name, value in (topic.config or {}).items()})  # the table's own
        plans.append(TopicPlan(topic.get_topic_name(), topic.partitions or app.conf.topic_partitions, config))
    plans.append(TopicPlan(f"{app.conf.id}-__assignor-__leader", 1))
    return plans


def run_worker(settings: Settings, loglevel: str = "INFO") -> None:
    """Run the worker in the foreground until SIGINT/SIGTERM.

    Every topic the worker touches exists, with the right partitions, before any agent starts: the
    registry topics and Faust's changelog and assignor topics (Faust's own lazy creation races the
    broker's metadata on a fresh cluster and crash-loops the table agents with PartitionsMismatch)."""
    configure_tracing(settings, "worker")
    tune_collector(settings.worker.gc_gen0_threshold)
    app = build_worker_app(settings)
    ensure_topics(settings)
    ensure_topic_plans(settings, internal_topic_plans(app))
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    finally:
        # a static member does not leave when Faust stops its consumer; a clean stop hands its partitions over
        # now (a crash never gets here, and its restart takes them back as the same member)
        leave_group(settings, app.conf.id, app.conf.consumer_group_instance_id)
