"""An inference pool on the real stack: GPU usage of its two nodes and calls of the self-hosted model it serves,
from two tenants, through the Faust worker (node windows and lines repartitioned by pool, joined in a
changelog-backed table) and the sink: gpu_allocations holds one `inference_tenant` row per tenant whose costs
sum exactly to the two nodes' pool-window costs, with the tenant's tokens and $ per million tokens.

Windows are 60 s with 3 s of grace, events three hours in the past: every window closes by processing time. The
calls are sent first and counted by the worker before the GPU usage is sent, so the pool's window holds every
token when its nodes complete it; a node that never came would be waited for 600 s.
The expected split is computed here by hand from tokens and the nodes' stored pool costs."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from prismops.infra.components import Components
from prismops.settings import Settings, settings_as_env
from prismops.sinks.migrations import apply_migrations
from prismops.streams.producer import UsageProducer, new_llm_usage_event
from prismops.streams.replay import group_lag
from prismops.streams.topics import COST_LINES, INFERENCE_LINES, LLM_USAGE
from prismops.testing import clickhouse, isolated, wait_for

WINDOW_S = 60
UTC = dt.timezone.utc
W1 = dt.datetime.now(UTC).replace(second=0, microsecond=0) - dt.timedelta(hours=3)
POOLS_YAML = """pools:
  - name: it-llama
    cluster: it-dc
    nodes: [gpu-a, gpu-b]
    models: [llama-3.1-8b]
"""


@pytest.fixture(scope="module")
def inference_pipeline(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Components]]:
    home = tmp_path_factory.mktemp("inference")
    pools = Path(home / "pools.yaml")
    pools.write_text(POOLS_YAML)
    with isolated(stack_settings) as isolated_settings:
        settings = isolated_settings.with_overrides(gpu={
            "window_s": WINDOW_S, "grace_s": 3, "inference_pools": pools, "inference_node_wait_s": 600})
        apply_migrations(settings)
        try:
            with Components(settings, home / "logs") as components:
                components.start("worker", "sink")
                yield settings, components
        finally:
            admin = AdminClient(settings.kafka_client_config())
            doomed = [n for n in admin.list_topics(timeout=10).topics if n.startswith(f"{settings.worker_app_id}-")]
            for future in (admin.delete_topics(doomed, operation_timeout=10).values() if doomed else ()):
                future.result()


def gpu_event(node: str, tenant: str, used: str) -> dict:
    return {
        "event_id": str(uuid.uuid4()), "window_start": W1, "window_end": W1 + dt.timedelta(seconds=WINDOW_S),
        "cluster": "it-dc", "node": node, "gpu_model": "H100-SXM-80GB", "gpu_index": 0, "gpu_fraction": Decimal(1),
        "mig_profile": None, "capacity_type": "on_demand", "tenant": tenant, "team": None, "namespace": "serving",
        "job": "vllm", "requested_gpu_seconds": Decimal(WINDOW_S), "used_gpu_seconds": Decimal(used), "source": "dcgm",
    }


def local_call(tenant: str, input_tokens: int, output_tokens: int, second: int, model: str = "llama-3.1-8b") -> dict:
    return new_llm_usage_event(
        tenant=tenant, service="assistant", feature="chat", environment="prod", provider="local", model=model,
        input_tokens=input_tokens, output_tokens=output_tokens, latency_ms=200, status="ok",
        event_time=W1 + dt.timedelta(seconds=second))


def test_an_inference_pools_gpu_cost_is_split_by_tokens_exactly(inference_pipeline):
    settings, components = inference_pipeline
    calls = [local_call("acme", 3000, 1500, 5), local_call("globex", 1000, 500, 10), local_call("acme", 200, 100, 50),
             local_call("hooli", 9000, 9000, 20, model="mistral-7b")]  # a model the pool does not serve
    with UsageProducer(settings) as producer:
        for event in calls:
            producer.record_llm_call(event)
    # the calls' tokens are in the pool's window before its nodes report, so the split cannot come first
    client = clickhouse(settings)
    wait_for(lambda: client.execute("SELECT count() FROM cost_lines WHERE provider = 'local'")[0][0] == 4
             and all(group_lag(settings, settings.worker_app_id, spec.name(settings)) == 0
                     for spec in (LLM_USAGE, COST_LINES, INFERENCE_LINES)),
             120, components, "the calls counted by the worker")
    with UsageProducer(settings) as producer:
        producer.record_gpu_usage(gpu_event("gpu-a", "acme", "45"))
        producer.record_gpu_usage(gpu_event("gpu-b", "globex", "30"))
    rows = wait_for(
        lambda: client.execute(
            "SELECT tenant, tokens, cost_usd, usd_per_mtok, pool_cost_usd, share FROM gpu_allocations FINAL"
            " WHERE kind = 'inference_tenant' AND pool = 'it-llama' ORDER BY tenant") or None,
        240, components, "the inference pool's split")
    (node_costs,) = client.execute(
        "SELECT sum(pool_cost) FROM (SELECT pool, any(pool_cost_usd) AS pool_cost FROM gpu_allocations FINAL"
        " WHERE pool IN ('it-dc/gpu-a', 'it-dc/gpu-b') AND kind != 'inference_tenant' GROUP BY pool)")
    pool_cost = Decimal(node_costs[0])
    assert pool_cost > 0
    tokens = {"acme": 3000 + 1500 + 200 + 100, "globex": 1500}
    assert [(tenant, count) for tenant, count, *_ in rows] == sorted(tokens.items())
    assert sum(Decimal(cost) for _, _, cost, *_ in rows) == pool_cost, "the shares sum exactly to the nodes' cost"
    total = sum(tokens.values())
    for tenant, count, cost, per_mtok, stored_pool_cost, share in rows:
        assert Decimal(stored_pool_cost) == pool_cost
        exact = Fraction(pool_cost) * count / total
        assert abs(Fraction(cost) - exact) < Fraction(1, 10**12), tenant  # largest remainder: within one unit
        expected_rate = (Decimal(cost) * 1_000_000 / count).quantize(Decimal("1e-12"), ROUND_HALF_EVEN)
        assert Decimal(per_mtok) == expected_rate, tenant

    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISMOPS_")} | settings_as_env(settings)
    shown = subprocess.run([sys.executable, "-m", "prismops", "report", "inference", "--since",
                            W1.date().isoformat(), "--format", "json"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert {(r["tenant"], r["tokens"], Decimal(r["cost_usd"])) for r in report["rows"]} == {
        (tenant, count, Decimal(cost)) for tenant, count, cost, *_ in rows}
    assert Decimal(report["total"]["cost_usd"]) == pool_cost
