"""One trace from a service's SDK call to the ClickHouse write: the producer span, the worker's pricing span and the
sink's write span share a trace id and chain parent to child, carried by W3C trace context in Kafka headers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from prismops.gateway_grpc.client import RouterClient
from prismops.infra.components import Components
from prismops.settings import Settings
from prismops.testing import isolated, wait_for
from prismops.sinks.migrations import apply_migrations
from prismops.streams.producer import UsageProducer, new_llm_usage_event


@pytest.fixture(scope="module")
def traced_pipeline(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Settings, Components, Path]]:
    spans_file = tmp_path_factory.mktemp("spans") / "spans.jsonl"
    with isolated(stack_settings) as base:
        settings = base.with_overrides(telemetry={"exporter": "file", "spans_file": str(spans_file)})
        apply_migrations(settings)
        with Components(settings, tmp_path_factory.mktemp("trace-logs")) as components:
            components.start("worker", "sink", "gateway")
            with RouterClient(f"{settings.gateway.host}:{settings.gateway.port}") as router:
                assert router.wait_ready(60), "the gateway did not report SERVING"
            yield settings, components, spans_file


def exported_spans(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_one_trace_connects_the_producer_span_to_the_sink_span(traced_pipeline):
    settings, components, spans_file = traced_pipeline
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("a-service")
    with tracer.start_as_current_span("handle support request") as root:
        trace_id = f"0x{root.get_span_context().trace_id:032x}"
        root_span_id = f"0x{root.get_span_context().span_id:016x}"
        with UsageProducer(settings) as producer:
            producer.record_llm_call(new_llm_usage_event(
                tenant="traced-tenant", service="support-bot", feature="answer", environment="prod",
                provider="openai", model="gpt-4o-mini", input_tokens=500, output_tokens=50, latency_ms=400, status="ok",
            ))
        with RouterClient(f"{settings.gateway.host}:{settings.gateway.port}") as router:
            router.decide("traced-tenant", "search", "rerank", [("openai", "gpt-4o-mini")], latency_slo_ms=5000)

    def chain():
        spans = [s for s in exported_spans(spans_file) if s["context"]["trace_id"] == trace_id]
        names = {s["name"] for s in spans}
        return spans if {"price_llm_usage", "sink.write", "routing.v1.Router/Decide"} <= names else None

    spans = wait_for(chain, 60, components, "the worker, sink and gateway spans of the trace")
    by_name = {s["name"]: s for s in spans}
    worker, sink, gateway = by_name["price_llm_usage"], by_name["sink.write"], by_name["routing.v1.Router/Decide"]
    assert worker["parent_id"] == root_span_id, "the worker continues the producer's context from the Kafka headers"
    assert sink["parent_id"] == worker["context"]["span_id"], "the sink continues the worker's context"
    assert gateway["parent_id"] == root_span_id, "Decide continues the caller's context from gRPC metadata"
    assert worker["resource"]["attributes"]["service.name"] == "prismops-worker"
    assert sink["resource"]["attributes"]["service.name"] == "prismops-sink"
    assert [s.name for s in exporter.get_finished_spans()] == ["handle support request"]
    provider.shutdown()
