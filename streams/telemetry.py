"""Tracing: W3C trace context in Kafka headers (and gRPC metadata) from the producer SDK through the agents to
the sink, exported where `telemetry.exporter` says.

Every component calls `configure_tracing` once at start. Exporters: `none` (default: spans are not recorded,
the hot path pays nothing), `console` (stderr, for local runs), `file` (JSON lines, one span each, for tests and
offline looks), `otlp` (OTLP/HTTP to `telemetry.otlp_endpoint`, e.g. a collector or Jaeger). Each hop extracts
the context its input carried, opens its span as a child, and injects its own context into what it sends on.

Propagation needs only opentelemetry-api (a service's light install); recording and exporting spans needs the
SDK of the platform extra, imported when a component configures an exporter.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

from prismops.settings import Settings

PROPAGATOR = TraceContextTextMapPropagator()
TRACE_HEADERS = ("traceparent", "tracestate")
_configured: list[str] = []


def _json_line(span: Any) -> str:
    return span.to_json(indent=None) + "\n"


def span_exporter(settings: Settings) -> SpanExporter | None:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    telemetry = settings.telemetry
    if telemetry.exporter == "console":
        return ConsoleSpanExporter(out=sys.stderr, formatter=_json_line)
    if telemetry.exporter == "file":
        if telemetry.spans_file is None:
            raise ValueError("telemetry.exporter is file but telemetry.spans_file is not set")
        telemetry.spans_file.parent.mkdir(parents=True, exist_ok=True)
        stream: IO[str] = open(telemetry.spans_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        return ConsoleSpanExporter(out=stream, formatter=_json_line)
    if telemetry.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=telemetry.otlp_endpoint)
    return None


def configure_tracing(settings: Settings, component: str) -> None:
    """Install the tracer provider for this process (once); without an exporter nothing is recorded."""
    if _configured:
        return
    _configured.append(component)
    exporter = span_exporter(settings)
    if exporter is None:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"prismops-{component}"}))
    # file and console write each span as it ends, so a killed process loses none; OTLP batches
    processor = BatchSpanProcessor(exporter) if settings.telemetry.exporter == "otlp" else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)


def context_from_headers(headers: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> otel_context.Context:
    """The trace context a Kafka record (or gRPC metadata) carries; an empty context when there is none."""
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    carrier = {}
    for key, value in items:
        if key.lower() in TRACE_HEADERS and value is not None:
            carrier[key.lower()] = value.decode() if isinstance(value, bytes) else str(value)
    return PROPAGATOR.extract(carrier)


def trace_headers() -> list[tuple[str, bytes]]:
    """Kafka headers carrying the current span's context (none when nothing is being recorded)."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return [(key, value.encode()) for key, value in carrier.items()]


def links_from(contexts: Sequence[otel_context.Context], limit: int = 64) -> list[trace.Link]:
    """Span links to the traces of a batch's records, beyond the first (which becomes the parent)."""
    links = []
    for ctx in contexts[:limit]:
        span_context = trace.get_current_span(ctx).get_span_context()
        if span_context.is_valid:
            links.append(trace.Link(span_context))
    return links
