"""Confluent wire format against the stack's real schema registry (Apicurio, infra/registry.py), issue 16.

A usage event written by confluent-kafka's AvroSerializer is priced by a real worker; the worker's cost lines
come back through AvroDeserializer; the SDK writes Confluent-framed records; `prismops topics tail` prints every
format on one topic. (kcat with `-s value=avro` needs a kcat built with libserdes, which Debian's is not: see
docs/schema_registry.md.)
Nothing here mocks the registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from prismops import schemas
from prismops.infra.components import Components
from prismops.infra.config import StackPaths
from prismops.infra.registry import RegistryServer
from prismops.settings import Settings, settings_as_env
from prismops.streams import schema_registry as registry_module
from prismops.streams.codecs import batch_codec_for, codec_for
from prismops.streams.producer import UsageProducer, new_llm_usage_event
from prismops.streams.replay import partition_ends
from prismops.streams.schema_registry import configure_schema_registry
from prismops.streams.topics import COST_LINES, LLM_USAGE
from prismops.testing import isolated, wait_for


@pytest.fixture(scope="module")
def registry_url(stack_settings: Settings) -> Iterator[str]:
    """The stack's registry, started here (and stopped again) unless it already runs."""
    server = RegistryServer(stack_settings, StackPaths.from_settings(stack_settings.stack))
    was_running = server.our_pid() is not None
    process = server.start(lambda message: None)
    server.wait_ready(lambda message: None, process)
    configure_schema_registry(server.url)
    yield server.url
    registry_module._registry = registry_module._UNSET
    if not was_running:
        server.stop()


@pytest.fixture(scope="module")
def worker(stack_settings: Settings, registry_url: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Settings, Components]]:
    """A real `prismops worker` child process whose settings name the registry."""
    with isolated(stack_settings) as base:
        settings = base.with_overrides(kafka={"schema_registry_url": registry_url})
        with Components(settings, tmp_path_factory.mktemp("registry-logs")) as components:
            components.start("worker")
            yield settings, components

def _call(tenant: str, **fields: Any) -> dict[str, Any]:
    return new_llm_usage_event(tenant=tenant, service="search", feature="rerank", environment="prod",
                               provider="openai", model="gpt-4o-mini", input_tokens=1200, output_tokens=300,
                               latency_ms=250, status="ok") | fields


def _record(event: dict[str, Any]) -> dict[str, Any]:
    """The event as AvroSerializer takes it: every field of the newest schema, in Avro's Python types."""
    codec = codec_for("llm_usage_event")
    return codec.decode_json(codec.encode_json(event))


def _read_all(settings: Settings, topic: str, timeout_s: float = 10.0) -> list[tuple[int, int, bytes]]:
    consumer = Consumer(settings.kafka_client_config() | {"group.id": f"reader-{uuid.uuid4().hex}",
                                                          "enable.auto.commit": False})
    try:
        try:
            ends = partition_ends(consumer, topic, settings.kafka.admin_timeout_s)
        except KafkaException:  # a topic created a moment ago may not have its leaders yet; callers poll again
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p, end in ends.items() if end > 0])
        found, done = [], {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            found.append((message.partition(), message.offset(), message.value()))
            if message.offset() + 1 >= ends[message.partition()]:
                done.add(message.partition())
        return found
    finally:
        consumer.close()


def test_an_avro_serializer_event_is_priced_and_its_cost_lines_read_back_with_avro_deserializer(worker, registry_url):
    settings, components = worker
    client = SchemaRegistryClient({"url": registry_url})
    usage_topic = LLM_USAGE.name(settings)
    serializer = AvroSerializer(client, json.dumps(schemas.latest("llm_usage_event").definition))
    tenant = f"registry-{uuid.uuid4().hex[:6]}"
    event = _call(tenant)
    value = serializer(_record(event), SerializationContext(usage_topic, MessageField.VALUE))
    assert value[0] == 0, "AvroSerializer writes Confluent's wire format"
    producer = Producer(settings.kafka_client_config())
    producer.produce(usage_topic, key=tenant.encode(), value=value)
    assert producer.flush(30) == 0

    deserializer = AvroDeserializer(client)
    lines_topic = COST_LINES.name(settings)

    def priced() -> list[dict[str, Any]]:
        found = []
        for _, _, raw in _read_all(settings, lines_topic):
            assert raw[0] == 0, "with a registry the worker writes Confluent-framed cost lines"
            batch = deserializer(raw, SerializationContext(lines_topic, MessageField.VALUE))
            found += [line for line in batch["lines"] if line["source_event_id"] == event["event_id"]]
        return found

    [line] = wait_for(priced, 120, components, "the cost line of the AvroSerializer-produced event")
    assert line["tenant"] == tenant and line["model"] == "gpt-4o-mini"
    assert line["cost_usd"] > 0
    assert not components.crashes("worker")


def test_the_sdk_writes_confluent_and_topics_tail_prints_every_format(worker, registry_url):
    settings, components = worker
    tenant = f"tail-{uuid.uuid4().hex[:6]}"
    usage_topic = LLM_USAGE.name(settings)
    batched = [_call(tenant, input_tokens=n) for n in (11, 12, 13)]
    with UsageProducer(settings.with_overrides(sdk={"batch_max_events": 3}), schema_registry_url=registry_url) as sdk:
        assert sdk.wire_format == "confluent"
        for event in batched:
            sdk.record_llm_call(event)
    single = _call(tenant, input_tokens=21)
    plain = _call(tenant, input_tokens=22)
    raw = Producer(settings.kafka_client_config())
    usage = batch_codec_for("llm_usage_event")
    raw.produce(usage_topic, key=tenant.encode(),
                value=b"\xc3\x01" + usage.items.fingerprint + usage.items.encode_body(single))  # single-object
    raw.produce(usage_topic, key=tenant.encode(), value=codec_for("llm_usage_event").encode_json(plain))  # JSON
    assert raw.flush(30) == 0

    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISMOPS_")} | settings_as_env(settings)
    result = subprocess.run(
        [sys.executable, "-m", "prismops", "topics", "tail", usage_topic, "--from-beginning", "--exit-at-end",
         "--timeout", "20", "--registry", registry_url],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    ours = {line["value"]["input_tokens"]: line for line in lines
            if "value" in line and line["value"]["tenant"] == tenant}
    assert set(ours) >= {11, 12, 13, 21, 22}, result.stdout[-3000:]
    assert {ours[n]["format"] for n in (11, 12, 13)} == {"confluent"}
    assert [ours[n]["batch_index"] for n in (11, 12, 13)] == [0, 1, 2]
    assert ours[21]["format"] == "single-object" and ours[22]["format"] == "json"
    assert all(isinstance(ours[n]["partition"], int) and isinstance(ours[n]["offset"], int) for n in ours)

    # the worker's Confluent-framed cost lines, one line per item
    lines_topic = COST_LINES.name(settings)
    wait_for(lambda: _read_all(settings, lines_topic), 120, components, "the worker's first cost lines")
    result = subprocess.run(
        [sys.executable, "-m", "prismops", "topics", "tail", lines_topic, "--from-beginning", "--exit-at-end",
         "--timeout", "20", "--registry", registry_url, "--format", "json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and all(row["format"] == "confluent" and "value" in row for row in rows)

