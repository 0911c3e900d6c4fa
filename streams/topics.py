"""The one registry of PrismOps topics: name, value schema, partitioning and retention."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from prismops.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    base_name: str
    schema: str
    key: str
    doc: str
    compacted: bool = False
    partitions: int | None = None
    config: dict[str, str] = field(default_factory=dict)

    def name(self, settings: Settings) -> str:
        return f"{settings.kafka.topic_namespace}{self.base_name}"


LLM_USAGE = TopicSpec("usage.llm.v1", "llm_usage_event", "tenant", "one LLM call, from services via the SDK")
GPU_USAGE = TopicSpec("usage.gpu.v1", "gpu_usage_event", "cluster/node", "GPU use per workload per window")
CLOUD_BILLING = TopicSpec("billing.cloud.v1", "cloud_cost_line", "BillingAccountId", "FOCUS cost-and-usage rows")
COST_LINES = TopicSpec("cost.lines.v1", "cost_line", "tenant", "priced, tagged cost lines from every source")
MODEL_SUMMARIES = TopicSpec(
    "prismops.model-call-summaries.v1", "model_call_summary", "provider/model",
    "per usage record, each model's validated LLM calls summed (latencies kept), repartitioned by model for the "
    "live table",
)
ROUTING_TABLES = TopicSpec(
    "routing.tables.v1", "model_live_stats", "provider/model", "live per-model latency/error/cost rows",
    compacted=True, partitions=1,
    config={"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"},
)
GPU_ALLOCATIONS = TopicSpec(
    "cost.allocations.v1", "gpu_allocation", "pool", "each workload's (and idle's) share of a GPU pool-window's cost",
)
BUDGET_EVENTS = TopicSpec("budget.events.v1", "budget_event", "scope/scope_id", "budget thresholds crossed: warn, block")
BUDGET_STATE = TopicSpec(
    "routing.budgets.v1", "budget_state", "scope/scope_id", "live budget rows per tenant and team, read by the router",
    compacted=True, partitions=1,
    config={"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"},
)
ROUTING_DECISIONS = TopicSpec("routing.decisions.v1", "routing_decision", "tenant", "every Decide answer with its reasons")
POLICY_AUDIT = TopicSpec("audit.policy.v1", "policy_audit", "audit_id", "every routing policy change: who, when, diff")
ANOMALIES = TopicSpec(
    "cost.anomalies.v1", "anomaly_event", "series_key", "anomalous windows with expectation, severity and root causes",
)
DEAD_LETTERS = TopicSpec("prismops.dlq.v1", "dead_letter", "source topic", "rejected input with reason and original bytes")
BUDGET_TEAM_LINES = TopicSpec(
    "prismops.budget-team-lines.v1", "cost_line", "team", "cost lines repartitioned by team for team budgets",
)
INFERENCE_NODE_WINDOWS = TopicSpec(
    "prismops.inference-node-windows.v1", "gpu_allocation", "inference pool",
    "one allocation of each closed GPU node window of an inference pool's nodes, repartitioned by inference pool",
)
INFERENCE_LINES = TopicSpec(
    "prismops.inference-lines.v1", "cost_line", "inference pool",
    "LLM cost lines of self-hosted models, repartitioned by the inference pool that serves them",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    LLM_USAGE, GPU_USAGE, CLOUD_BILLING, COST_LINES, GPU_ALLOCATIONS, MODEL_SUMMARIES, ROUTING_TABLES,
    BUDGET_EVENTS, BUDGET_STATE, ROUTING_DECISIONS, DEAD_LETTERS, BUDGET_TEAM_LINES, POLICY_AUDIT, ANOMALIES,
    INFERENCE_NODE_WINDOWS, INFERENCE_LINES,
)


@dataclass(frozen=True)
class TopicPlan:
    """A concrete topic that must exist before a component starts: name, partitions and configs."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


class TopicsNotReady(RuntimeError):
    """A topic could not be created, has the wrong partition count, or never showed up in the metadata."""


def plans_for(settings: Settings, specs: tuple[TopicSpec, ...] = ALL_TOPICS) -> list[TopicPlan]:
    return [
        TopicPlan(spec.name(settings), spec.partitions or settings.kafka.default_partitions, dict(spec.config))
        for spec in specs
    ]


def ensure_topics(settings: Settings, specs: tuple[TopicSpec, ...] = ALL_TOPICS) -> list[str]:
    """Create the missing registry topics and wait until the broker serves them; return the names created."""
    return ensure_topic_plans(settings, plans_for(settings, specs))


def ensure_topic_plans(settings: Settings, plans: list[TopicPlan]) -> list[str]:
    """Create the missing topics, then wait until every partition of every planned topic has a leader.

    Existing topics are left as they are, but one whose partition count differs from the plan is an error
    (Faust refuses a changelog whose partitions differ from its source's, and would crash-loop later).
    Waiting for the metadata here, before any consumer starts, is what keeps a first run from racing the
    broker: a client that starts while a new topic is still missing from the metadata gives up on it."""
    timeout_s = settings.kafka.admin_timeout_s
    admin = AdminClient(settings.kafka_client_config())
    existing = admin.list_topics(timeout=timeout_s).topics
    wanted = [
        NewTopic(plan.name, num_partitions=plan.partitions, replication_factor=settings.kafka.replication_factor,
                 config=dict(plan.config))
        for plan in plans
        if plan.name not in existing
    ]
    created = create_topics(admin, wanted, timeout_s)
    wait_for_topics(admin, plans, timeout_s)
    return created


TRANSIENT_ADMIN_ERRORS = frozenset({
    KafkaError._DESTROY_BROKER, KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN,
    KafkaError.NOT_CONTROLLER, KafkaError.REQUEST_TIMED_OUT,
})
"""Errors after which a creation is asked again. librdkafka (2.16) drops the bootstrap connection once it
learns the brokers' ids, failing a request in flight on it with _DESTROY_BROKER; a cluster whose controller
just moved answers NOT_CONTROLLER."""


def create_topics(admin: AdminClient, wanted: list[NewTopic], timeout_s: float) -> list[str]:
    """Create `wanted`, asking again for those that failed with a transient error until `timeout_s`. Returns the
    names created: a topic that already exists is fine, and counts as created when an earlier try of ours may have
    created it. Any other error, or a transient one past the deadline, raises TopicsNotReady."""
    deadline = time.monotonic() + timeout_s
    created: list[str] = []
    asked_before: set[str] = set()
    while wanted:
        retry: list[NewTopic] = []
        futures = admin.create_topics(wanted, operation_timeout=timeout_s)
        for topic in wanted:
            try:
                futures[topic.topic].result()
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    if topic.topic in asked_before:
                        created.append(topic.topic)
                elif error.code() in TRANSIENT_ADMIN_ERRORS and time.monotonic() < deadline:
                    retry.append(topic)
                else:
                    raise TopicsNotReady(f"could not create topic {topic.topic}: {error.str()}") from exc
            else:
                created.append(topic.topic)
        asked_before.update(topic.topic for topic in retry)
        wanted = retry
        if wanted:
            time.sleep(0.5)
    return created


def wait_for_topics(admin: AdminClient, plans: list[TopicPlan], timeout_s: float) -> None:
    """Poll the cluster metadata until each planned topic has its partitions, each with a leader."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s).topics
        problems = []
        for plan in plans:
            topic = metadata.get(plan.name)
            if topic is None or topic.error is not None:
                problems.append(f"{plan.name}: not in the cluster metadata yet")
                continue
            if len(topic.partitions) != plan.partitions:
                raise TopicsNotReady(
                    f"topic {plan.name} has {len(topic.partitions)} partitions, {plan.partitions} expected; "
                    "delete it (its data is derived) or use another topic namespace / worker app id"
                )
            leaderless = [p for p, meta in topic.partitions.items() if meta.leader < 0]
            if leaderless:
                problems.append(f"{plan.name}: partitions {leaderless} have no leader yet")
        if not problems:
            return
        if time.monotonic() >= deadline:
            raise TopicsNotReady(f"topics not ready after {timeout_s:.0f}s: " + "; ".join(problems))
        time.sleep(0.2)


def delete_topics(settings: Settings, specs: tuple[TopicSpec, ...] = ALL_TOPICS) -> None:
    timeout_s = settings.kafka.admin_timeout_s
    admin = AdminClient(settings.kafka_client_config())
    names = [spec.name(settings) for spec in specs]
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    doomed = [n for n in names if n in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=timeout_s).values():
            future.result()
