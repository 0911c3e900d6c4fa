"""The producer SDK services use to report usage: Avro single-object values, safe delivery, trace context.

LLM calls travel in batch records (schemas/llm_usage_batch.v1.avsc): events are checked against the schema one
by one as they are recorded, and grouped into one Kafka record per `sdk.batch_max_events` events,
`sdk.batch_max_bytes` bytes or `sdk.batch_linger_ms` milliseconds, whichever comes first, so the worker pays
Kafka's per-record cost once per batch, not once per call. `sdk.batch_max_events: 1` sends single records.

A batch is open per partition of the usage topic, and a call joins the batch of its tenant's partition
(murmur2 of the tenant, the partitioner Java clients, Faust and the single records here use). So one tenant's
calls reach the worker in the order they were recorded, as keyed single records would: event-time windows and
budget order depend on it. A batch sent to whichever partition is free would let a later batch of a tenant
overtake an earlier one on another partition.

With a schema registry (`schema_registry_url`, or the setting `kafka.schema_registry_url`), values are written
in Confluent's wire format instead: magic byte 0, the registry id of the writer schema, the same Avro body. Our
`.avsc` is registered once per process with BACKWARD compatibility on the subject: `<topic>-value` for single
records (Confluent's TopicNameStrategy, what kcat and AvroDeserializer expect), `<topic>-<record full name>` for
batch records (TopicRecordNameStrategy: a batch is another record type on the same topic, which BACKWARD checks
against the item schema would refuse). The bytes are those confluent-kafka's AvroSerializer writes for the same
record and schema id (tests/streams/test_confluent_wire.py). Without a registry, Avro single-object stays the
format.

Delivery is safe by default: idempotent producer, acks=all, retries inside librdkafka. A record that
still cannot be delivered is never dropped quietly: `flush()` raises `DeliveryFailed` listing every
failed event id (every event of a failed batch), and an optional `on_error` callback sees each failure as
it happens.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from prismops import schemas
from prismops.settings import Settings
from prismops.streams.codecs import SINGLE_OBJECT_MAGIC, batch_codec_for, codec_for
from prismops.streams.partitioning import KeyPartitioner
from prismops.streams.schema_registry import (
    SchemaRegistry,
    confluent_header,
    record_full_name,
    registry_for,
    registry_url_from_settings,
)
from prismops.streams.topics import GPU_USAGE, LLM_USAGE, TopicSpec

_tracer = trace.get_tracer("prismops.streams.producer")
_propagator = TraceContextTextMapPropagator()

CONTENT_TYPE_HEADER = "content-type"
AVRO_SINGLE_OBJECT = b"avro/binary; encoding=single-object"
AVRO_CONFLUENT = b"application/vnd.confluent.avro"
BATCH_OVERHEAD_BYTES = 4096
"""Room left under the broker's message limit for the batch framing, key and headers."""


@dataclass(frozen=True)
class DeliveryFailure:
    topic: str
    key: str | None
    event_id: str | None
    error: str


class UsageTopicUnavailable(RuntimeError):
    """The usage topic's partitions could not be learnt from the broker (missing topic or no broker)."""


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
        "partitioner": "murmur2_random",  # as Java clients and Faust: a keyed record meets the batches of its key

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


MAX_TRACE_LINKS = 32
"""Callers' spans a batch's publish span links to besides its parent (the first caller's)."""


@dataclass
class _PendingBatch:
    partition: int
    bodies: list[bytes]
    event_ids: list[str | None]
    size: int
    opened_at: float
    callers: list[trace.SpanContext]


class UsageProducer:
    """Report LLM calls and GPU usage to PrismOps from a service."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_error: Callable[[DeliveryFailure], None] | None = None,
        producer_config: Mapping[str, Any] | None = None,
        schema_registry_url: str | None = None,
    ):
        self._settings = settings
        url = schema_registry_url if schema_registry_url is not None else registry_url_from_settings(settings)
        self._registry: SchemaRegistry | None = registry_for(url) if url else None
        self._schema_ids: dict[tuple[str, str], int] = {}
        self._producer = Producer(safe_producer_config(settings, **dict(producer_config or {})))
        self._on_error = on_error
        self._failures: list[DeliveryFailure] = []
        self._lock = threading.Lock()
        self.delivered = 0
        """Events (not records) the broker acknowledged."""
        self._usage = batch_codec_for(LLM_USAGE.schema)
        sdk = settings.sdk
        self._batch_max_events = sdk.batch_max_events
        self._batch_max_bytes = min(sdk.batch_max_bytes, settings.kafka.max_message_bytes - BATCH_OVERHEAD_BYTES)
        self._linger_s = sdk.batch_linger_ms / 1000
        self._pending: dict[int, _PendingBatch] = {}
        self._partitioner: KeyPartitioner | None = None
        self._closed = threading.Event()
        self._linger_thread: threading.Thread | None = None

    def record_llm_call(self, event: Mapping[str, Any]) -> None:
        """Queue one LLM usage event (see schemas/llm_usage_event.v*.avsc); raises CodecError if it breaks the schema."""
        if self._batch_max_events == 1:
            self._send(LLM_USAGE, event, key=str(event.get("tenant", "")))
            return
        body = self._usage.items.encode_body(event)
        partition = self._usage_partition(str(event.get("tenant", "")))
        event_id = event.get("event_id")
        caller = trace.get_current_span().get_span_context()
        full = None
        with self._lock:
            pending = self._pending.get(partition)
            if pending is not None and pending.size + len(body) > self._batch_max_bytes:
                full, pending = pending, None
            if pending is None:
                pending = self._pending[partition] = _PendingBatch(partition, [], [], 0, time.monotonic(), [])
            pending.bodies.append(body)
            if caller.is_valid and len(pending.callers) <= MAX_TRACE_LINKS:
                pending.callers.append(caller)
            pending.event_ids.append(str(event_id) if event_id else None)
            pending.size += len(body)
            if len(pending.bodies) >= self._batch_max_events or pending.size >= self._batch_max_bytes:
                del self._pending[partition]
                ready = [b for b in (full, pending) if b is not None]
            else:
                ready = [full] if full is not None else []
        for batch in ready:
            self._send_batch(batch)
        self._start_linger()

    def _usage_partition(self, tenant: str) -> int:
        """The usage topic's partition of a tenant; the partition count is asked of the broker once."""
        if self._partitioner is None:
            topic = LLM_USAGE.name(self._settings)
            timeout_s = self._settings.kafka.admin_timeout_s
            try:
                metadata = self._producer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            except KafkaException as exc:
                raise UsageTopicUnavailable(
                    f"cannot learn the partitions of {topic} from {self._settings.kafka.bootstrap_servers}: "
                    f"{exc.args[0].str() if exc.args else exc}") from None
            if metadata is None or metadata.error is not None or not metadata.partitions:
                why = metadata.error.str() if metadata is not None and metadata.error is not None else "no partitions"
                raise UsageTopicUnavailable(f"the usage topic {topic} is not available ({why}); "
                                            "is the stack up (`prismops stack up`) and the topic created?")
            self._partitioner = KeyPartitioner(len(metadata.partitions))
        return self._partitioner(tenant)

    def record_gpu_usage(self, event: Mapping[str, Any]) -> None:
        self._send(GPU_USAGE, event, key=f"{event.get('cluster', '')}/{event.get('node', '')}")

    def _start_linger(self) -> None:
        if self._linger_thread is None:
            self._linger_thread = threading.Thread(target=self._linger, name="prismops-sdk-linger", daemon=True)
            self._linger_thread.start()

    def _linger(self) -> None:
        """Send a batch that has waited `batch_linger_ms`, so a quiet service's calls are not held back."""
        tick = max(0.001, self._linger_s / 2)
        while not self._closed.wait(tick):
            self._send_pending(older_than_s=self._linger_s)

    def _send_pending(self, older_than_s: float = 0.0) -> None:
        with self._lock:
            now = time.monotonic()
            due = [p for p, batch in self._pending.items() if now - batch.opened_at >= older_than_s]
            ready = [self._pending.pop(p) for p in due]
        for batch in ready:
            self._send_batch(batch)

    @property
    def wire_format(self) -> str:
        """"confluent" with a schema registry, else "single-object"."""
        return "confluent" if self._registry is not None else "single-object"

    def _confluent_id(self, topic: str, schema_name: str, batch: bool = False) -> int:
        """The registry id of our newest `schema_name` under its subject on `topic` (registered once)."""
        key = (topic, schema_name)
        schema_id = self._schema_ids.get(key)
        if schema_id is None:
            definition = schemas.latest(schema_name).definition
            subject = f"{topic}-{record_full_name(definition)}" if batch else f"{topic}-value"
            assert self._registry is not None
            schema_id = self._schema_ids[key] = self._registry.register(subject, definition)
        return schema_id

    def _send_batch(self, batch: _PendingBatch) -> None:
        topic = LLM_USAGE.name(self._settings)
        prefix = None if self._registry is None else confluent_header(
            self._confluent_id(topic, self._usage.batch.schema_name, batch=True))
        value = self._usage.frame(batch.bodies, prefix)
        count = len(batch.bodies)

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                with self._lock:
                    self.delivered += count
                return
            failures = [DeliveryFailure(topic, None, event_id, err.str()) for event_id in batch.event_ids]
            with self._lock:
                self._failures.extend(failures)
            if self._on_error:
                for failure in failures:
                    self._on_error(failure)

        self._produce(topic, None, value, self._headers(topic, batch.callers), on_delivery, batch.partition)

    def _headers(self, topic: str, callers: list[trace.SpanContext] | None = None) -> list[tuple[str, bytes]]:
        """Content type and W3C trace context. A batch's publish span continues its first caller's trace and
        links to the other callers' spans, so each call's trace still leads to the record that carried it."""
        parent = trace.set_span_in_context(trace.NonRecordingSpan(callers[0])) if callers else None
        links = [trace.Link(context) for context in (callers or [])[1:]]
        with _tracer.start_as_current_span(f"{topic} publish", context=parent, kind=trace.SpanKind.PRODUCER,
                                           links=links) as span:
            span.set_attribute("messaging.system", "kafka")
            span.set_attribute("messaging.destination.name", topic)
            carrier: dict[str, str] = {}
            _propagator.inject(carrier)
        content_type = AVRO_SINGLE_OBJECT if self._registry is None else AVRO_CONFLUENT
        return [(CONTENT_TYPE_HEADER, content_type)] + [(k, v.encode()) for k, v in carrier.items()]

    def _produce(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]],
                 on_delivery: Callable[[KafkaError | None, Message], None], partition: int | None = None) -> None:
        where = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery, **where)
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _send(self, spec: TopicSpec, event: Mapping[str, Any], key: str) -> None:
        topic = spec.name(self._settings)
        codec = codec_for(spec.schema)
        if self._registry is None:
            value = SINGLE_OBJECT_MAGIC + codec.fingerprint + codec.encode_body(event)
        else:
            value = confluent_header(self._confluent_id(topic, spec.schema)) + codec.encode_body(event)
        event_id = event.get("event_id")

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                with self._lock:
                    self.delivered += 1
                return
            failure = DeliveryFailure(topic, key, str(event_id) if event_id else None, err.str())
            with self._lock:
                self._failures.append(failure)
            if self._on_error:
                self._on_error(failure)

        self._produce(topic, key.encode(), value, self._headers(topic), on_delivery)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Send the open batch, wait for every queued record; raise DeliveryFailed if any was not delivered."""
        self._send_pending()
        remaining = self._producer.flush(timeout_s)
        with self._lock:
            failures, self._failures = self._failures, []
        if remaining:
            failures.append(DeliveryFailure("*", None, None, f"{remaining} record(s) still queued after {timeout_s}s"))
        if failures:
            raise DeliveryFailed(failures)

    def close(self) -> None:
        self._closed.set()
        self.flush()

    def __enter__(self) -> "UsageProducer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
