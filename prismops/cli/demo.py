"""`prismops demo`: the whole path on the local stack, from a service's SDK call to ClickHouse and the router.

Steps: stack up → topics + migrations → worker, sink and gateway as child processes → simulated traffic →
wait until every event is a row in ClickHouse → spend by tenant and model → a few routing decisions →
stop the children (and the stack, if the demo started it).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from prismops.gateway_grpc.client import RouterClient, wait_for_router
from prismops.infra.stack import LocalStack
from prismops.infra.components import Components
from prismops.settings import Settings
from prismops.sinks.clickhouse import clickhouse_client
from prismops.sinks.migrations import apply_migrations
from prismops.sinks.reports import count_cost_lines, spend_by_tenant_and_model
from prismops.streams.producer import UsageProducer
from prismops.streams.replay import group_lag
from prismops.streams.simulation import TrafficGenerator, simulate
from prismops.streams.topics import COST_LINES, INFERENCE_LINES, LLM_USAGE, delete_topics, ensure_topics

Progress = Callable[[str], None]

ROUTING_SCENARIOS: tuple[dict[str, Any], ...] = (
    # default route, roomy SLO: the cheapest of the caller's qualifying models wins
    {"tenant": "globex", "service": "search", "feature": "rerank", "latency_slo_ms": 1200,
     "allowed": [("openai", "gpt-4o-mini"), ("google", "gemini-2.0-flash")]},
    # the support-chat route: its primary unless a filter rules it out, fallbacks in order, a sampled shadow
    {"tenant": "globex", "service": "support-bot", "feature": "answer", "latency_slo_ms": 0, "allowed": []},
    # a simple question (hint) goes to the route's cheap tier
    {"tenant": "initech", "service": "support-bot", "feature": "answer", "latency_slo_ms": 0, "allowed": [],
     "hints": ["simple"]},
    # the summaries A/B test: the arm is sticky per tenant
    {"tenant": "initech", "service": "doc-summarizer", "feature": "summarize", "latency_slo_ms": 0, "allowed": []},
    # free self-hosted models tie on cost: the lower p95 wins
    {"tenant": "hooli", "service": "code-assist", "feature": "complete", "latency_slo_ms": 900,
     "allowed": [("local", "llama-3.1-8b"), ("local", "mistral-7b"), ("openai", "gpt-4o")]},
    # nothing is fast enough: the fastest model, said plainly
    {"tenant": "umbrella", "service": "search", "feature": "triage", "latency_slo_ms": 100,
     "allowed": [("openai", "gpt-4o-mini"), ("google", "gemini-2.0-flash")]},
    # the biggest spender of the simulation is over its daily USD budget by now: refused, with the numbers
    {"tenant": "acme", "service": "support-bot", "feature": "answer", "latency_slo_ms": 0, "allowed": []},
)


@dataclass
class DemoReport:
    events: int
    produce_seconds: float
    end_to_end_seconds: float
    spend: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    database: str
    logs: Path
    notes: list[str] = field(default_factory=list)
    gpu_recommendation: dict[str, Any] | None = None
    inference_costs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def produce_events_per_s(self) -> float:
        return self.events / self.produce_seconds

    @property
    def end_to_end_events_per_s(self) -> float:
        return self.events / self.end_to_end_seconds


DEMO_POOL = {"name": "demo-llama", "cluster": "demo-dc", "nodes": ["gpu-node-1", "gpu-node-2"],
             "models": ["llama-3.1-8b"]}
DEMO_WINDOW_S = 60


def write_demo_pools(directory: Path) -> Path:
    """The demo's inference pool file: two on-prem GPU nodes serving the self-hosted llama-3.1-8b."""
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "inference_pools.yaml"
    path.write_text(yaml.safe_dump({"pools": [DEMO_POOL]}, sort_keys=False), encoding="utf-8")
    return path


def send_inference_traffic(settings: Settings, producer: UsageProducer, now: dt.datetime, timeout_s: float) -> None:
    """A past minute of the demo pool: self-hosted calls of three tenants, counted by the worker, then both nodes'
    GPU use. In that order the pool's window holds every call's tokens when its nodes complete it; the minute is
    over, so the split follows as soon as the GPU agent closes the nodes' windows."""
    from decimal import Decimal

    from prismops.streams.producer import new_llm_usage_event

    start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=2)
    for second, (tenant, input_tokens, output_tokens) in enumerate(
            [("hooli", 1800, 600), ("initech", 900, 300), ("hooli", 2400, 800), ("globex", 300, 100)] * 5):
        producer.record_llm_call(new_llm_usage_event(
            tenant=tenant, service="code-assist", feature="complete", environment="prod", provider="local",
            model="llama-3.1-8b", input_tokens=input_tokens, output_tokens=output_tokens, latency_ms=180,
            status="ok", event_time=start + dt.timedelta(seconds=2 * second + 1)))
    producer.flush()
    for topic in (LLM_USAGE, COST_LINES, INFERENCE_LINES):
        wait_for_group_caught_up(settings, settings.worker_app_id, topic.name(settings), timeout_s)
    for index, node in enumerate(DEMO_POOL["nodes"]):
        producer.record_gpu_usage({
            "event_id": str(uuid.uuid4()), "window_start": start, "window_end": start + dt.timedelta(seconds=DEMO_WINDOW_S),
            "cluster": DEMO_POOL["cluster"], "node": node, "gpu_model": "H100-SXM-80GB", "gpu_index": 0,
            "gpu_fraction": Decimal(1), "mig_profile": None, "capacity_type": "on_demand", "tenant": "platform",
            "team": "ml-platform", "namespace": "serving", "job": "vllm-llama",
            "requested_gpu_seconds": Decimal(DEMO_WINDOW_S), "used_gpu_seconds": Decimal(40 + 10 * index),
            "source": "dcgm"})
    producer.flush()


def wait_for_inference_costs(settings: Settings, components: Components, timeout_s: float) -> list[dict[str, Any]]:
    """The demo pool's split by tokens, once the worker has closed its window and the sink stored it."""
    from prismops.sinks.reports import inference_pool_costs

    client = clickhouse_client(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            components.check_alive()
            rows = inference_pool_costs(client, settings.clickhouse.database).rows
            if rows:
                return rows
            time.sleep(0.5)
    finally:
        client.disconnect()
    raise TimeoutError(f"the inference pool's split by tokens did not reach ClickHouse within {timeout_s:.0f}s")


def demo_settings(settings: Settings) -> Settings:
    """The demo runs in its own topic namespace and ClickHouse database, so it never mixes with real data.

    20,000 simulated calls in a minute are far more tokens than a day's seed budget, so the demo raises the
    token budget and keeps the $30/day one: the biggest spender gets blocked, the others are routed."""
    run = uuid.uuid4().hex[:6]
    return settings.with_overrides(
        kafka={"topic_namespace": f"demo-{run}."},
        clickhouse={"database": "prismops_demo"},
        sink={"group_id": f"prismops-demo-sink-{run}"},
        worker={"app_id": f"prismops-demo-worker-{run}", "live_publish_interval_s": 0.5},
        budgets={"default_tenant_daily_tokens": 20_000_000},
        gpu={"window_s": DEMO_WINDOW_S, "grace_s": 5, "inference_node_wait_s": 120},
    )


def wait_for_rows(settings: Settings, expected: int, components: Components, timeout_s: float) -> float:
    """Poll ClickHouse until `expected` cost lines are stored; return when that happened (perf_counter)."""
    client = clickhouse_client(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            components.check_alive()
            if count_cost_lines(client, settings.clickhouse.database) >= expected:
                return time.perf_counter()
            time.sleep(0.25)
    finally:
        client.disconnect()
    raise TimeoutError(f"fewer than {expected} cost lines reached ClickHouse within {timeout_s:.0f}s")


def wait_for_group_caught_up(settings: Settings, group_id: str, topic: str, timeout_s: float) -> float:
    """Wait until `group_id` has committed every partition of `topic` up to its end; seconds waited.

    The budget agent reads cost lines after the sink sees them; the router must see its verdicts."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if group_lag(settings, group_id, topic) == 0:
            return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"consumer group {group_id} did not catch up on {topic} within {timeout_s:.0f}s")


def routing_decisions(target: str) -> list[dict[str, Any]]:
    rows = []
    with RouterClient(target) as client:
        for scenario in ROUTING_SCENARIOS:
            hints = scenario.get("hints", [])
            row = {
                "tenant": scenario["tenant"],
                "request": f"{scenario['service']}/{scenario['feature']}" + "".join(f" +{h}" for h in hints),
                "slo_p95_ms": scenario["latency_slo_ms"] or "route",
            }
            try:
                answer = client.decide(
                    scenario["tenant"], scenario["service"], scenario["feature"], scenario["allowed"],
                    latency_slo_ms=scenario["latency_slo_ms"], expected_input_tokens=1000, expected_output_tokens=300,
                    hints=hints,
                )
            except grpc.RpcError as refusal:
                if refusal.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                rows.append(row | {"chosen": "(refused)", "route": "", "reason_codes": "budget_blocked",
                                   "fallbacks": "", "reason": refusal.details()})
                continue
            arm = f" arm={answer.arm}" if answer.arm else ""
            shadow = f" shadow={answer.shadow.provider}/{answer.shadow.model}" if answer.HasField("shadow") else ""
            rows.append(row | {
                "chosen": f"{answer.model.provider}/{answer.model.model}",
                "route": answer.route + arm + shadow,
                "reason_codes": " ".join(answer.reason_codes),
                "fallbacks": ", ".join(f"{f.model.provider}/{f.model.model}" for f in answer.fallbacks),
                "reason": answer.reason,
            })
    return rows


def demo_gpu_recommendation(seed: int = 7, hours: int = 6, now: dt.datetime | None = None) -> dict[str, Any] | None:
    """One GPU recommendation from the simulated fleet's usage windows (streams.simulation.GpuTrafficGenerator):
    the job with the largest saving, from a cheaper type or from spot + checkpoints (60 s checkpoints assumed)."""
    import dataclasses
    from decimal import Decimal

    from prismops.finops.gpu_pricing import load_gpu_catalog
    from prismops.finops.gpu_recommendations import load_gpu_types, profiles_from_events, recommend
    from prismops.streams.simulation import GpuTrafficGenerator

    now = now or dt.datetime.now(dt.timezone.utc)
    generator = GpuTrafficGenerator(seed=seed, start=now - dt.timedelta(hours=hours), interval_s=60)
    profiles = profiles_from_events(generator.events(hours * 60 * len(generator.busy)))
    types, prices = load_gpu_types(), load_gpu_catalog()
    results = [recommend(dataclasses.replace(p, checkpoint_cost_s=p.checkpoint_cost_s or Decimal(60)), types, prices, at=now)
               for p in profiles]
    results = [r for r in results if r.recommended is not None]
    if not results:
        return None

    def saving(r: Any) -> Decimal:
        return (r.savings_usd or Decimal(0)) + (r.spot.savings_usd if r.spot else Decimal(0))

    best = max(results, key=saving)
    spot = best.spot
    return {
        "tenant": best.tenant, "job": best.job,
        "now": f"{best.profile.gpus}x {best.profile.gpu_model} {best.profile.capacity_type}",
        "recommended": f"{best.recommended.gpus}x {best.recommended.gpu_model}"
                       + (f" {best.recommended.mig_profile}" if best.recommended.mig_profile else ""),
        "saves_usd": best.savings_usd,
        "spot_checkpoint_every_s": spot.checkpoint_interval_s if spot else None,
        "spot_overhead": spot.expected_overhead if spot else None,
        "spot_saves_usd": spot.savings_usd if spot else None,
        "flags": ",".join(best.flags),
    }


def run_demo(base: Settings, events: int, progress: Progress, keep_stack: bool = False, timeout_s: float = 600) -> DemoReport:
    stack = LocalStack(base)
    already_running = all(s.state != "stopped" for s in stack.status())
    progress("bringing the stack up (Kafka, ClickHouse)…")
    stack.up(progress)
    logs = Path(base.stack.home).resolve() / "logs" / f"demo-{dt.datetime.now():%Y%m%d-%H%M%S}"
    settings = demo_settings(base).with_overrides(gpu={"inference_pools": write_demo_pools(logs)})
    try:
        ensure_topics(settings)
        client = clickhouse_client(settings, database="")
        client.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
        client.disconnect()
        apply_migrations(settings)
        with Components(settings, logs) as components:
            progress(f"starting worker, sink and gateway (logs in {logs})…")
            components.start("worker", "sink", "gateway")
            target = wait_for_router(f"{settings.gateway.host}:{settings.gateway.port}", components.check_alive)
            progress(f"simulating {events} LLM calls from 5 tenants through the SDK…")
            producer = UsageProducer(settings)
            generator = TrafficGenerator(seed=int(time.time()))
            started = time.perf_counter()
            produced = simulate(producer, generator.events(events),
                                progress=lambda n: progress(f"  produced {n}/{events}") if n % 5000 == 0 else None)
            progress(f"produced {produced.events} events in {produced.seconds:.1f}s; waiting for ClickHouse…")
            finished = wait_for_rows(settings, events, components, timeout_s)
            progress("a minute of the self-hosted inference pool: GPU use of its two nodes and 20 calls…")
            send_inference_traffic(settings, producer, dt.datetime.now(dt.timezone.utc), timeout_s)
            waited = wait_for_group_caught_up(settings, settings.worker_app_id, COST_LINES.name(settings), timeout_s)
            progress(f"budgets caught up {waited:.1f}s after the last row; asking the router…")
            time.sleep(2 * settings.worker.live_publish_interval_s + 1)
            decisions = routing_decisions(target)
            client = clickhouse_client(settings)
            spend = spend_by_tenant_and_model(client, settings.clickhouse.database)
            client.disconnect()
            inference_costs = wait_for_inference_costs(settings, components, 120)
            progress("stopping worker, sink and gateway…")
        crashed = {name: lines for name in ("worker", "sink", "gateway") if (lines := components.crashes(name))}
        if crashed:
            details = "; ".join(f"{name}: {lines[0].strip()} ({len(lines)} crash lines)" for name, lines in crashed.items())
            raise RuntimeError(f"the run finished, but components crashed on the way: {details}; logs in {logs}")
        return DemoReport(
            events=events, produce_seconds=produced.seconds, end_to_end_seconds=finished - started,
            spend=spend, decisions=decisions, database=settings.clickhouse.database, logs=logs,
            gpu_recommendation=demo_gpu_recommendation(), inference_costs=inference_costs,
        )
    finally:
        try:
            delete_topics(settings)
        except Exception as exc:  # cleanup must not hide the real outcome
            progress(f"could not delete the demo topics: {exc}")
        if not already_running and not keep_stack:
            progress("stopping the stack (it was started by the demo)…")
            stack.down()
