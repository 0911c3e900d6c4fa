"""Every metric the seeds name is exposed with its labels, by the component that knows it: the worker, the sink and
the gateway each serve /metrics, scraped here over HTTP and parsed with Prometheus's own text parser."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from prismops.gateway_grpc.client import RouterClient
from prismops.testing import wait_for
from prismops.streams.producer import UsageProducer, new_llm_usage_event

SEED_METRICS = {  # DESIGN.md: "Prometheus metric names from the seeds"
    "llm_request_duration_seconds": {"service", "node", "provider", "model"},
    "llm_request_total": {"service", "node", "provider", "model", "status"},
    "llm_token_usage_total": {"service", "node", "provider", "model", "direction"},
    "llm_error_rate": {"service", "node", "provider", "model"},
    "llm_cost_daily_usd": {"service", "tenant"},
    "llm_circuit_breaker_state": {"provider", "model"},
    "llm_fallback_total": {"service", "provider", "model"},
}
PIPELINE_METRICS = {
    "prismops_events_in_total": {"topic"}, "prismops_events_out_total": {"topic"},
    "prismops_sink_batch_rows": set(), "prismops_sink_batch_seconds": set(),
    "prismops_consumer_lag": {"group", "topic"}, "prismops_decisions_total": {"reason_code"},
    "prismops_live_table_age_seconds": {"table"},
}


def scrape(url: str) -> dict[str, list]:
    """name -> samples; counters are keyed by their family name (without _total), as the parser reports them."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.samples
        if family.type == "counter":
            families[family.name + "_total"] = [s for s in family.samples if s.name.endswith("_total")]
    return families


def labels_of(samples: list) -> set[str]:
    return {name for sample in samples for name in sample.labels if name not in ("le", "quantile")}


def test_every_seed_metric_is_exposed_with_its_labels(pipeline):
    settings, components = pipeline
    with UsageProducer(settings) as producer:
        for status, fallback in (("ok", False), ("error", False), ("ok", True)):
            producer.record_llm_call(new_llm_usage_event(
                tenant="metrics-tenant", service="support-bot", feature="answer", environment="prod",
                provider="openai", model="gpt-4o-mini", input_tokens=900, output_tokens=100, latency_ms=700,
                status=status, fallback=fallback,
            ))
    with RouterClient(f"{settings.gateway.host}:{settings.gateway.port}") as router:
        router.decide("metrics-tenant", "search", "rerank", [("openai", "gpt-4o-mini")], latency_slo_ms=5000)
        router.report_outcome(("openai", "gpt-4o-mini"), "server_error")

    endpoints = {
        "worker": f"http://127.0.0.1:{settings.worker.web_port}/metrics",
        "sink": f"http://127.0.0.1:{settings.sink.metrics_port}/metrics",
        "gateway": f"http://127.0.0.1:{settings.gateway.metrics_port}/metrics",
    }

    def all_seen():
        merged: dict[str, list] = {}
        for url in endpoints.values():
            try:
                families = scrape(url)
            except OSError:  # not listening yet
                return None
            for name, samples in families.items():
                merged.setdefault(name, []).extend(samples)
        wanted = {**SEED_METRICS, **PIPELINE_METRICS}
        return merged if all(merged.get(name) for name in wanted) else None

    merged: dict[str, Any] = wait_for(all_seen, 60, components, "every metric on the three endpoints")
    for name, labels in {**SEED_METRICS, **PIPELINE_METRICS}.items():
        assert labels_of(merged[name]) == labels, f"{name}: {labels_of(merged[name])} != {labels}"

    requests = {(s.labels["status"], s.value) for s in merged["llm_request_total"]
                if s.labels["service"] == "support-bot" and s.labels["node"] == "answer"}
    assert requests == {("ok", 2.0), ("error", 1.0)}
    assert [s.value for s in merged["llm_fallback_total"] if s.labels["service"] == "support-bot"] == [1.0]
    error_rates = [s.value for s in merged["llm_error_rate"] if s.labels["service"] == "support-bot"]
    assert error_rates and abs(error_rates[0] - 1 / 3) < 1e-9
    assert {s.labels["tenant"] for s in merged["llm_cost_daily_usd"]} == {"metrics-tenant"}
    assert {(s.labels["model"], s.value) for s in merged["llm_circuit_breaker_state"]} >= {("gpt-4o-mini", 0.0)}


def test_the_running_worker_dumps_its_threads_and_agent_tasks_and_keeps_running(pipeline):
    """`Components.worker_stacks` (what a stalled test reports): mode's SIGUSR1 handler, not the default that ends
    a process."""
    settings, components = pipeline

    def stacks_once_ready() -> str | None:
        dump = components.worker_stacks()
        return None if "not logged Ready" in dump else dump

    stacks = wait_for(stacks_once_ready, 60, components, "the worker to be ready")
    assert "THREAD MainThread" in stacks, stacks[-2000:]
    assert "price_llm_usage" in stacks, "the agents' tasks are in the dump"
    components.check_alive()
