"""The producer SDK services use to report usage: Avro single-object values, safe delivery, trace context.

Delivery is safe by default: idempotent producer, acks=all, retries inside librdkafka. A record that
still cannot be delivered is never dropped quietly: `flush()` raises `DeliveryFailed` listing every
failed event id, and an optional `on_error` callback sees each failure as it happens.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from prismops.settings import Settings
from prismops.streams.codecs import codec_for
from prismops.streams.topics import GPU_USAGE, LLM_USAGE, TopicSpec

_tracer = trace.get_tracer("prismops.streams.producer")
_propagator = TraceContextTextMapPropagator()

CONTENT_TYPE_HEADER = "content-type"
AVRO_SINGLE_OBJECT = b"avro/binary; encoding=single-object"


@dataclass(frozen=True)
class DeliveryFailure:
    topic: str
    key: str | None
    event_id: str | None
    error: str


class DeliveryFailed(RuntimeError):
    def __init__(self, failures: list[DeliveryFailure]):
        shown = "; ".join(f"{f.event_id or f.key}: {f.error}" for f in failures[:5])
        super().__init__(f"{len(failures)} record(s) were not delivered: {shown}")
        self.failures = failures


def safe_producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings for a producer that neither loses nor duplicates on retry."""
    conf = settings.kafka_client_config() | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 120_000,
    }
    conf.update(overrides)
    return conf


def new_llm_usage_event(**fields: Any) -> dict[str, Any]:
    """An LLM usage event with a fresh event_id and event_time=now unless given; the schema fills other defaults."""
    event = {"event_id": str(uuid.uuid4()), "event_time": dt.datetime.now(dt.timezone.utc), "request_id": ""}
    event.update(fields)
    if not event["request_id"]:
        event["request_id"] = event["event_id"]
    return event


class UsageProducer:
    """Report LLM calls and GPU usage to PrismOps from a service."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_error: Callable[[DeliveryFailure], None] | None = None,
        producer_config: Mapping[str, Any] | None = None,
    ):
        self._settings = settings
        self._producer = Producer(safe_producer_config(settings, **dict(producer_config or {})))
        self._on_error = on_error
        self._failures: list[DeliveryFailure] = []
        self._lock = threading.Lock()
        self.delivered = 0

    def record_llm_call(self, event: Mapping[str, Any]) -> None:
        """Queue one LLM usage event (see schemas/llm_usage_event.v*.avsc); raises CodecError if it breaks the schema."""
        self._send(LLM_USAGE, event, key=str(event.get("tenant", "")))

    def record_gpu_usage(self, event: Mapping[str, Any]) -> None:
        self._send(GPU_USAGE, event, key=f"{event.get('cluster', '')}/{event.get('node', '')}")

    def _send(self, spec: TopicSpec, event: Mapping[str, Any], key: str) -> None:
        value = codec_for(spec.schema).encode(event)
        topic = spec.name(self._settings)
        event_id = event.get("event_id")
        with _tracer.start_as_current_span(f"{topic} publish", kind=trace.SpanKind.PRODUCER) as span:
            span.set_attribute("messaging.system", "kafka")
            span.set_attribute("messaging.destination.name", topic)
            carrier: dict[str, str] = {}
            _propagator.inject(carrier)
        headers = [(CONTENT_TYPE_HEADER, AVRO_SINGLE_OBJECT)] + [(k, v.encode()) for k, v in carrier.items()]

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                self.delivered += 1
                return
            failure = DeliveryFailure(topic, key, str(event_id) if event_id else None, err.str())
            with self._lock:
                self._failures.append(failure)
            if self._on_error:
                self._on_error(failure)

        while True:
            try:
                self._producer.produce(topic, key=key.encode(), value=value, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait for every queued record; raise DeliveryFailed if any was not delivered."""
        remaining = self._producer.flush(timeout_s)
        with self._lock:
            failures, self._failures = self._failures, []
        if remaining:
            failures.append(DeliveryFailure("*", None, None, f"{remaining} record(s) still queued after {timeout_s}s"))
        if failures:
            raise DeliveryFailed(failures)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "UsageProducer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
