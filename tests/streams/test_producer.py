"""streams/producer.py: safe librdkafka settings, event helpers, validation before sending, trace headers.

No broker: UsageProducer is pointed at 127.0.0.1:1 (construction does not connect) and, where a send is
observed, its librdkafka producer is swapped for a recorder.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from prismops.settings import KafkaSettings, Settings
from prismops.streams.codecs import CodecError, batch_codec_for, codec_for
from prismops.streams.producer import (
    AVRO_SINGLE_OBJECT,
    CONTENT_TYPE_HEADER,
    DeliveryFailed,
    DeliveryFailure,
    UsageProducer,
    UsageTopicUnavailable,
    new_llm_usage_event,
    safe_producer_config,
)
from prismops.streams.partitioning import KeyPartitioner
from prismops.streams.topics import LLM_USAGE

UTC = dt.timezone.utc
TRACEPARENT = re.compile(r"^00-(?P<trace_id>[0-9a-f]{32})-(?P<parent_id>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})$")


class RecordingProducer:
    """Stands in for confluent_kafka.Producer: remembers what would have been sent; topics have 4 partitions."""

    def __init__(self, partitions: int = 4) -> None:
        self.produced: list[dict[str, Any]] = []
        self.polls = 0
        self.partitions = partitions

    def list_topics(self, topic: str, timeout: float = 0) -> Any:
        metadata = SimpleNamespace(error=None, partitions={p: None for p in range(self.partitions)})
        return SimpleNamespace(topics={topic: metadata} if self.partitions else {})

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.produced.append({"topic": topic, **kwargs})

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


def _unreachable(**kafka: Any) -> Settings:
    return Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", **kafka))


def _recording(settings: Settings) -> UsageProducer:
    usage = UsageProducer(settings, producer_config={"log_level": 0})
    usage._producer = RecordingProducer()
    return usage


@pytest.fixture()
def producer() -> UsageProducer:
    """Batches close on flush (or a full batch) only: the linger is an hour."""
    return _recording(_unreachable().with_overrides(sdk={"batch_linger_ms": 3_600_000}))


def _batch_ids(sent: dict[str, Any]) -> list[str]:
    return [item.value["event_id"] for item in batch_codec_for("llm_usage_event").decode(sent["value"]).items]


def _event(**overrides: Any) -> dict[str, Any]:
    return new_llm_usage_event(
        tenant="acme", service="search", feature="rerank", environment="prod", provider="google",
        model="gemini-2.0-flash", input_tokens=2000, output_tokens=30, latency_ms=380, status="ok",
    ) | overrides


# --- configuration -----------------------------------------------------------------------------------------


def test_safe_config_is_idempotent_with_acks_all():
    conf = safe_producer_config(_unreachable())
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["bootstrap.servers"] == "127.0.0.1:1"


def test_safe_config_keeps_the_sasl_and_tls_settings():
    settings = Settings(kafka=KafkaSettings(
        bootstrap_servers="b1:9093,b2:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc-metering", sasl_password="s3cret", ssl_ca_location="/etc/ssl/ca.pem",
    ))
    conf = safe_producer_config(settings)
    assert conf["bootstrap.servers"] == "b1:9093,b2:9093"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "svc-metering"
    assert conf["sasl.password"] == "s3cret"
    assert conf["ssl.ca.location"] == "/etc/ssl/ca.pem"
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"


def test_safe_config_without_sasl_has_no_sasl_keys():
    conf = safe_producer_config(_unreachable())
    assert not any(key.startswith("sasl.") for key in conf)


def test_overrides_are_applied():
    conf = safe_producer_config(_unreachable(), **{"linger.ms": 50, "client.id": "svc"})
    assert conf["linger.ms"] == 50 and conf["client.id"] == "svc"
    assert conf["enable.idempotence"] is True


# --- new_llm_usage_event -------------------------------------------------------------------------------------


def test_new_event_fills_id_time_and_request_id():
    before = dt.datetime.now(UTC)
    event = new_llm_usage_event(tenant="acme")
    after = dt.datetime.now(UTC)
    assert uuid.UUID(event["event_id"]).version == 4
    assert before <= event["event_time"] <= after
    assert event["event_time"].utcoffset() == dt.timedelta(0)
    assert event["request_id"] == event["event_id"]
    assert event["tenant"] == "acme"


def test_new_events_get_distinct_ids():
    assert new_llm_usage_event()["event_id"] != new_llm_usage_event()["event_id"]


def test_given_fields_win():
    moment = dt.datetime(2026, 1, 1, tzinfo=UTC)
    event = new_llm_usage_event(event_id="e-1", event_time=moment, request_id="req-9")
    assert (event["event_id"], event["event_time"], event["request_id"]) == ("e-1", moment, "req-9")
    # An empty request id is replaced by the event id.
    assert new_llm_usage_event(event_id="e-2", request_id="")["request_id"] == "e-2"


def test_a_new_event_with_the_call_fields_satisfies_the_schema():
    event = _event()
    decoded = codec_for("llm_usage_event").decode(codec_for("llm_usage_event").encode(event))
    assert decoded["event_id"] == event["event_id"]
    assert decoded["request_id"] == event["event_id"]


# --- UsageProducer -------------------------------------------------------------------------------------------


def test_construction_does_not_need_a_broker():
    usage = UsageProducer(_unreachable(), producer_config={"log_level": 0})
    assert usage.delivered == 0


def test_invalid_event_raises_codec_error_before_anything_is_sent(producer):
    with pytest.raises(CodecError) as info:
        producer.record_llm_call(_event(input_tokens="lots"))
    assert (info.value.field, info.value.rule) == ("input_tokens", "type")
    with pytest.raises(CodecError) as info:
        producer.record_llm_call({k: v for k, v in _event().items() if k != "model"})
    assert (info.value.field, info.value.rule) == ("model", "required")
    assert producer._producer.produced == []


def test_calls_travel_as_one_batch_record_per_partition_sent_on_flush(producer):
    assert KeyPartitioner(4)("acme") == KeyPartitioner(4)("stark")  # two tenants that share a partition
    events = [_event(), _event(tenant="stark"), _event()]
    for event in events:
        producer.record_llm_call(event)
    assert producer._producer.produced == []
    producer.flush()
    [sent] = producer._producer.produced
    assert sent["topic"] == LLM_USAGE.name(producer._settings)
    assert sent["key"] is None  # a batch may hold several tenants of its partition
    assert sent["partition"] == KeyPartitioner(4)("acme")
    assert _batch_ids(sent) == [e["event_id"] for e in events]
    assert callable(sent["on_delivery"])
    assert producer._producer.polls >= 1


def test_a_tenants_calls_keep_their_order_on_their_tenants_partition_across_batches():
    """Batches that went to any free partition would let a tenant's later batch overtake its earlier one."""
    usage = _recording(_unreachable().with_overrides(sdk={"batch_max_events": 3, "batch_linger_ms": 3_600_000}))
    tenants = ["acme", "globex", "umbrella", "hooli", "initech", "stark"]
    events = [_event(tenant=tenants[i % len(tenants)]) for i in range(60)]
    for event in events:
        usage.record_llm_call(event)
    usage.flush()
    partition_of = KeyPartitioner(4)
    assert len({partition_of(t) for t in tenants}) > 1
    decoded = batch_codec_for("llm_usage_event")
    seen: dict[str, list[str]] = {}
    for sent in usage._producer.produced:
        items = [item.value for item in decoded.decode(sent["value"]).items]
        assert {partition_of(item["tenant"]) for item in items} == {sent["partition"]}
        for item in items:
            seen.setdefault(item["tenant"], []).append(item["event_id"])
    for tenant in tenants:
        assert seen[tenant] == [e["event_id"] for e in events if e["tenant"] == tenant]


def test_a_missing_usage_topic_is_a_clear_error_not_a_random_partition():
    usage = UsageProducer(_unreachable(), producer_config={"log_level": 0})
    usage._producer = RecordingProducer(partitions=0)
    with pytest.raises(UsageTopicUnavailable, match="usage.llm.v1 is not available"):
        usage.record_llm_call(_event())


def test_a_full_batch_is_sent_without_waiting():
    usage = _recording(_unreachable().with_overrides(sdk={"batch_max_events": 3, "batch_linger_ms": 3_600_000}))
    events = [_event() for _ in range(7)]
    for event in events:
        usage.record_llm_call(event)
    assert [len(_batch_ids(sent)) for sent in usage._producer.produced] == [3, 3]
    usage.flush()
    assert [i for sent in usage._producer.produced for i in _batch_ids(sent)] == [e["event_id"] for e in events]


def test_a_batch_never_outgrows_its_byte_limit():
    usage = _recording(_unreachable().with_overrides(sdk={"batch_max_bytes": 2048, "batch_linger_ms": 3_600_000}))
    for _ in range(40):
        usage.record_llm_call(_event(labels={"k": "v" * 100}))
    usage.flush()
    sizes = [len(sent["value"]) for sent in usage._producer.produced]
    assert len(sizes) > 1 and max(sizes) <= 2048 + 64  # the bodies fit the limit; framing adds a few bytes
    assert sum(len(_batch_ids(sent)) for sent in usage._producer.produced) == 40


def test_a_quiet_service_batch_leaves_after_the_linger():
    usage = _recording(_unreachable().with_overrides(sdk={"batch_linger_ms": 10}))
    usage.record_llm_call(_event())
    deadline = time.monotonic() + 10
    while not usage._producer.produced and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(usage._producer.produced) == 1
    usage.close()


def test_single_records_keyed_by_tenant_when_batching_is_off():
    usage = _recording(_unreachable().with_overrides(sdk={"batch_max_events": 1}))
    event = _event()
    usage.record_llm_call(event)
    [sent] = usage._producer.produced
    assert sent["key"] == b"acme"
    assert codec_for("llm_usage_event").decode(sent["value"])["event_id"] == event["event_id"]


def test_topic_namespace_prefixes_the_topic():
    usage = _recording(_unreachable(topic_namespace="staging."))
    usage.record_llm_call(_event())
    usage.flush()
    assert usage._producer.produced[0]["topic"] == "staging." + LLM_USAGE.base_name


def test_gpu_usage_is_keyed_by_cluster_and_node(producer):
    producer.record_gpu_usage({
        "event_id": "g1", "window_start": dt.datetime(2026, 1, 1, tzinfo=UTC),
        "window_end": dt.datetime(2026, 1, 1, 0, 1, tzinfo=UTC), "cluster": "eu-1", "node": "gpu-07",
        "gpu_model": "H100-SXM-80GB", "gpu_index": 0, "gpu_fraction": Decimal("1"), "capacity_type": "reserved",
        "tenant": "acme", "requested_gpu_seconds": Decimal("60"), "used_gpu_seconds": Decimal("55.5"),
        "source": "nvml",
    })
    assert producer._producer.produced[0]["key"] == b"eu-1/gpu-07"


def test_delivery_failures_are_reported_and_raised_on_flush(producer):
    seen: list[DeliveryFailure] = []
    producer._on_error = seen.append
    event, other = _event(), _event()
    producer.record_llm_call(event)
    producer._send_pending()
    producer.record_llm_call(other)
    producer._send_pending()

    class FakeError:
        def str(self) -> str:
            return "Broker: Not enough in-sync replicas"

    first, second = producer._producer.produced
    first["on_delivery"](FakeError(), None)
    second["on_delivery"](None, None)
    assert producer.delivered == 1
    assert [f.event_id for f in seen] == [event["event_id"]]
    with pytest.raises(DeliveryFailed) as info:
        producer.flush()
    assert event["event_id"] in str(info.value)
    assert info.value.failures[0].error == "Broker: Not enough in-sync replicas"
    producer.flush()  # failures are reported once


# --- W3C trace context -------------------------------------------------------------------------------------


@pytest.fixture()
def spans() -> InMemorySpanExporter:
    """An SDK TracerProvider installed as the global one (OpenTelemetry allows setting it only once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def test_traceparent_header_continues_the_callers_trace(producer, spans):
    tracer = trace.get_tracer("tests.producer")
    with tracer.start_as_current_span("handle request") as outer:
        producer.record_llm_call(_event())
    producer.flush()
    headers = dict(producer._producer.produced[0]["headers"])

    match = TRACEPARENT.match(headers["traceparent"].decode())
    assert match, headers["traceparent"]
    assert int(match["trace_id"], 16) == outer.get_span_context().trace_id
    assert int(match["flags"], 16) & 0x01  # the "sampled" bit

    # The parent id is the SDK's own "publish" span, a child of the caller's span.
    publish = [s for s in spans.get_finished_spans() if s.name.endswith("publish")]
    assert len(publish) == 1
    assert publish[0].parent.span_id == outer.get_span_context().span_id
    assert int(match["parent_id"], 16) == publish[0].context.span_id
    assert publish[0].attributes["messaging.system"] == "kafka"
    assert publish[0].attributes["messaging.destination.name"] == LLM_USAGE.name(producer._settings)

    assert headers[CONTENT_TYPE_HEADER] == AVRO_SINGLE_OBJECT
    assert CONTENT_TYPE_HEADER == "content-type"
    assert b"avro" in AVRO_SINGLE_OBJECT and b"single-object" in AVRO_SINGLE_OBJECT


def test_a_batch_links_every_callers_span(producer, spans):
    tracer = trace.get_tracer("tests.producer")
    with tracer.start_as_current_span("first request") as first:
        producer.record_llm_call(_event())
    with tracer.start_as_current_span("second request") as second:
        producer.record_llm_call(_event())
    producer.flush()
    [publish] = [s for s in spans.get_finished_spans() if s.name.endswith("publish")]
    assert publish.parent.span_id == first.get_span_context().span_id
    assert [link.context.span_id for link in publish.links] == [second.get_span_context().span_id]


def test_each_record_gets_a_trace_of_its_own_outside_a_span(producer, spans):
    producer.record_llm_call(_event())
    producer.flush()
    producer.record_llm_call(_event())
    producer.flush()
    trace_ids = [
        TRACEPARENT.match(dict(sent["headers"])["traceparent"].decode())["trace_id"]
        for sent in producer._producer.produced
    ]
    assert trace_ids[0] != trace_ids[1]
