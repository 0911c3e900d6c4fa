"""Confluent wire format (magic 0 + 4-byte schema id + Avro body) next to Avro single-object on the same topics.

The registry here is either a recorded one (a fixed id -> schema text table, as a registry answered it) or
confluent-kafka's own mock client (for AvroSerializer/AvroDeserializer); the real registry is exercised by
tests/integration/test_schema_registry_on_stack.py.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import MockSchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from prismops import schemas
from prismops.settings import KafkaSettings, Settings
from prismops.streams import schema_registry as registry_module
from prismops.streams.codecs import CodecError, batch_codec_for, codec_for, coerce
from prismops.streams.producer import AVRO_CONFLUENT, CONTENT_TYPE_HEADER, UsageProducer, new_llm_usage_event
from prismops.streams.schema_registry import (
    SchemaRegistry,
    SchemaRegistryUnavailable,
    confluent_header,
    configure_schema_registry,
)

TOPIC = "llm.usage.v1"


class RecordedRegistry:
    """Stands in for SchemaRegistryClient with answers recorded from a registry; counts the lookups."""

    def __init__(self, answers: dict[int, str]):
        self.answers = answers
        self.lookups = 0

    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Schema:
        self.lookups += 1
        if schema_id not in self.answers:
            raise SchemaRegistryError(404, 40403, "Schema not found")
        return Schema(self.answers[schema_id], "AVRO")


class MockRegistry(MockSchemaRegistryClient):
    """confluent-kafka's mock client, which keeps no compatibility levels; this one does."""

    def __init__(self) -> None:
        super().__init__({"url": "mock://prismops-tests"})
        self.compatibility: dict[str | None, str] = {}

    def set_compatibility(self, subject_name: str | None = None, level: str | None = None) -> str:
        self.compatibility[subject_name] = level or ""
        return level or ""

    def get_compatibility(self, subject_name: str | None = None) -> str:
        return self.compatibility[subject_name]


class DownRegistry:
    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Schema:
        raise ConnectionRefusedError("connection refused")


@pytest.fixture()
def no_registry():
    configure_schema_registry(None)
    yield
    registry_module._registry = registry_module._UNSET


@pytest.fixture()
def mock_registry():
    client = MockRegistry()
    registry = configure_schema_registry(SchemaRegistry("mock://prismops-tests", client=client))
    yield registry
    registry_module._registry = registry_module._UNSET


def _recorded(answers: dict[int, str]) -> tuple[SchemaRegistry, RecordedRegistry]:
    client = RecordedRegistry(answers)
    return configure_schema_registry(SchemaRegistry("http://recorded", client=client)), client


@pytest.fixture()
def restore_registry():
    yield
    registry_module._registry = registry_module._UNSET


def _event(**overrides: Any) -> dict[str, Any]:
    return new_llm_usage_event(
        tenant="acme", service="search", feature="rerank", environment="prod", provider="google",
        model="gemini-2.0-flash", input_tokens=2000, output_tokens=30, latency_ms=380, status="ok",
    ) | overrides


def _schema_text(name: str, version: int | None = None) -> str:
    found = schemas.get(name, version) if version else schemas.latest(name)
    return json.dumps(found.definition)


def _serializer(client: Any, name: str, version: int | None = None) -> AvroSerializer:
    return AvroSerializer(client, _schema_text(name, version), conf={"auto.register.schemas": True})


def test_the_frame_is_magic_zero_and_a_big_endian_id():
    assert confluent_header(258) == b"\x00\x00\x00\x01\x02"


def test_a_confluent_value_without_a_registry_is_refused_with_wire_format(no_registry):
    value = confluent_header(7) + codec_for("llm_usage_event").encode_body(_event())
    with pytest.raises(CodecError) as refused:
        codec_for("llm_usage_event").decode(value)
    assert refused.value.rule == "wire_format"
    assert "Confluent-framed value but no schema registry configured" in refused.value.message
    with pytest.raises(CodecError) as refused_in_batch:
        batch_codec_for("llm_usage_event").decode(value)
    assert refused_in_batch.value.rule == "wire_format"


def test_a_recorded_schema_decodes_and_is_fetched_once(restore_registry):
    codec = codec_for("llm_usage_event")
    _, client = _recorded({41: _schema_text("llm_usage_event")})
    events = [_event(input_tokens=n) for n in range(1, 6)]
    for event in events:
        decoded = codec.decode(confluent_header(41) + codec.encode_body(event))
        assert decoded["event_id"] == event["event_id"] and decoded["input_tokens"] == event["input_tokens"]
    assert client.lookups == 1


def test_an_older_writer_version_is_resolved_to_the_newest_schema(restore_registry):
    codec = codec_for("llm_usage_event")
    oldest = schemas.get("llm_usage_event", 1)
    _recorded({5: json.dumps(oldest.definition)})
    # an old producer's bytes: the v1 body under the id of the v1 schema
    names = {f["name"] for f in oldest.definition["fields"]}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, oldest.parsed, coerce(oldest.definition, {k: v for k, v in _event().items()
                                                                               if k in names}, path=""))
    decoded = codec.decode(confluent_header(5) + body.getvalue())
    newest_fields = {f["name"] for f in codec.reader.definition["fields"]}
    assert set(decoded) == newest_fields  # fields added after v1 come back with their defaults
    assert decoded["tenant"] == "acme"


def test_an_unknown_id_is_refused_as_unknown_schema(restore_registry):
    _recorded({})
    with pytest.raises(CodecError) as refused:
        codec_for("llm_usage_event").decode(confluent_header(999) + b"\x00")
    assert refused.value.rule == "unknown_schema"
    assert "999" in refused.value.message


def test_another_record_type_is_refused_not_misread(restore_registry):
    _recorded({3: _schema_text("gpu_usage_event")})
    with pytest.raises(CodecError) as refused:
        codec_for("llm_usage_event").decode(confluent_header(3) + b"\x02a")
    assert refused.value.rule in ("unknown_schema", "avro_decode")


def test_an_unreachable_registry_is_transient_not_a_bad_record(restore_registry):
    configure_schema_registry(SchemaRegistry("http://127.0.0.1:1", client=DownRegistry()))
    with pytest.raises(SchemaRegistryUnavailable):
        codec_for("llm_usage_event").decode(confluent_header(12) + b"\x00")


def test_avro_serializer_bytes_are_decoded_by_our_codecs(mock_registry):
    event = _event()
    ctx = SerializationContext(TOPIC, MessageField.VALUE)
    value = _serializer(mock_registry.client, "llm_usage_event")(codec_for("llm_usage_event").decode_json(
        codec_for("llm_usage_event").encode_json(event)), ctx)
    assert value[0] == 0
    decoded = codec_for("llm_usage_event").decode(value)
    assert decoded["event_id"] == event["event_id"] and decoded["model"] == "gemini-2.0-flash"
    [item] = batch_codec_for("llm_usage_event").decode(value).items
    assert item.value["event_id"] == event["event_id"] and item.original == value


def test_the_sdk_writes_the_bytes_avro_serializer_writes_and_registers_backward(mock_registry):
    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1")).with_overrides(sdk={"batch_max_events": 1})
    producer = UsageProducer(settings, producer_config={"log_level": 0}, schema_registry_url=mock_registry.url)
    producer._registry = mock_registry
    sent: list[dict[str, Any]] = []
    producer._produce = lambda topic, key, value, headers, on_delivery, partition=None: sent.append(
        {"topic": topic, "value": value, "headers": dict(headers)})
    event = _event()
    producer.record_llm_call(event)
    [record] = sent
    assert record["headers"][CONTENT_TYPE_HEADER] == AVRO_CONFLUENT
    subject = f"{record['topic']}-value"
    assert mock_registry.client.get_compatibility(subject) == "BACKWARD"
    ctx = SerializationContext(record["topic"], MessageField.VALUE)
    expected = _serializer(mock_registry.client, "llm_usage_event")(
        codec_for("llm_usage_event").decode_json(codec_for("llm_usage_event").encode_json(event)), ctx)
    # the same Avro body; the ids differ only because the mock, unlike a registry, does not dedupe schema texts
    assert record["value"][5:] == expected[5:]
    ours, theirs = (mock_registry.client.get_schema(struct.unpack(">I", v[1:5])[0]) for v in (record["value"], expected))
    assert json.loads(ours.schema_str) == json.loads(theirs.schema_str)
    back = AvroDeserializer(mock_registry.client)(record["value"], ctx)
    assert back["event_id"] == event["event_id"]
    assert codec_for("llm_usage_event").decode(record["value"])["event_id"] == event["event_id"]


def test_sdk_batches_are_confluent_framed_under_their_own_subject(mock_registry):
    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1")).with_overrides(
        sdk={"batch_max_events": 3, "batch_linger_ms": 3_600_000})
    producer = UsageProducer(settings, producer_config={"log_level": 0}, schema_registry_url=mock_registry.url)
    producer._registry = mock_registry
    producer._partitioner = lambda tenant: 0
    sent: list[bytes] = []
    producer._produce = lambda topic, key, value, headers, on_delivery, partition=None: sent.append(value)
    events = [_event(input_tokens=n) for n in (1, 2, 3)]
    for event in events:
        producer.record_llm_call(event)
    [value] = sent
    assert value[0] == 0
    schema_id = struct.unpack(">I", value[1:5])[0]
    registered = mock_registry.client.get_schema(schema_id)
    assert json.loads(registered.schema_str)["name"] == "LlmUsageBatch"
    decoded = batch_codec_for("llm_usage_event").decode(value)
    assert [i.value["input_tokens"] for i in decoded.items] == [1, 2, 3]
    # any Confluent consumer reads it with the registered schema
    back = AvroDeserializer(mock_registry.client)(value, SerializationContext(TOPIC, MessageField.VALUE))
    assert [e["event_id"] for e in back["events"]] == [e["event_id"] for e in events]


def test_single_object_stays_the_default_without_a_registry():
    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"))
    producer = UsageProducer(settings, producer_config={"log_level": 0})
    assert producer.wire_format == "single-object"


# --- readable values (`prismops topics tail`) ---------------------------------------------------------------


def test_readable_values_decode_every_format_we_write(restore_registry):
    from prismops.streams.readable import readable_values, wire_format

    usage = batch_codec_for("llm_usage_event")
    events = [_event(input_tokens=n) for n in (1, 2, 3)]
    configure_schema_registry(None)  # written as without a registry, read with one
    batch = usage.frame([usage.items.encode_body(e) for e in events])
    values = {
        "single-object": usage.items.encode(events[0]),
        "json": usage.items.encode_json(events[0]),
        "confluent": confluent_header(7) + usage.items.encode_body(events[0]),
    }
    _recorded({7: _schema_text("llm_usage_event")})
    for fmt, value in values.items():
        [row] = readable_values("llm_usage_event", value)
        assert wire_format(value) == fmt and row["format"] == fmt and row["batch_index"] is None
        assert row["value"]["event_id"] == events[0]["event_id"]
        assert row["value"]["event_time"].endswith("Z")  # plain JSON, as the codecs accept on input
    rows = readable_values("llm_usage_event", batch)
    assert [r["batch_index"] for r in rows] == [0, 1, 2]
    assert [r["value"]["input_tokens"] for r in rows] == [1, 2, 3]
    json_array = json.dumps([json.loads(usage.items.encode_json(e)) for e in events]).encode()
    assert [r["value"]["input_tokens"] for r in readable_values("llm_usage_event", json_array)] == [1, 2, 3]
    [confluent_row] = readable_values("llm_usage_event", values["confluent"])
    assert confluent_row["schema_id"] == 7
    # a topic without batches, and records that cannot be read
    [line] = readable_values("dead_letter", b"\x01garbage")
    assert line["error"]["rule"] == "wire_format"


def test_readable_values_name_the_missing_registry(no_registry):
    from prismops.streams.readable import readable_values

    [row] = readable_values("cost_line", confluent_header(3) + b"\x00")
    assert row["format"] == "confluent" and row["schema_id"] == 3
    assert row["error"] == {"field": None, "rule": "wire_format",
                            "message": "Confluent-framed value but no schema registry configured"}


def test_codecs_write_confluent_frames_when_a_registry_is_configured(mock_registry):
    """What the worker does with a registry: its cost-line batches carry the registry id of CostLineBatch,
    registered under the record's full name with BACKWARD compatibility, and read back by AvroDeserializer."""
    lines = batch_codec_for("cost_line")
    codec = codec_for("cost_line")
    header = lines.batch.header()
    assert header[0] == 0
    subject = "dev.prismops.cost.CostLineBatch"
    assert mock_registry.client.get_compatibility(subject) == "BACKWARD"
    empty = lines.frame_array(lines.encode_array([]), origin="usage/0", position=4)
    back = AvroDeserializer(mock_registry.client)(empty, SerializationContext("cost.lines.v1", MessageField.VALUE))
    assert back == {"origin": "usage/0", "position": 4, "lines": []}
    assert lines.decode(empty).origin == "usage/0"
    assert codec.header()[0] == 0 and codec.header() != header
