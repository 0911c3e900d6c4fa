"""`prismops topics`: create and list the registered topics, and tail one as JSON."""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from typing import Any

import click

from confluent_kafka import KafkaException
from rich.markup import escape

from prismops.cli.errors import describe_kafka_error
from prismops.cli.output import FORMAT_OPTION, emit, fail
from prismops.settings import Settings
from prismops.streams.topics import ALL_TOPICS, TopicSpec, TopicsNotReady, ensure_topics


@click.group("topics")
def command() -> None:
    """The Kafka topics PrismOps uses."""


@command.command("create")
@FORMAT_OPTION
@click.pass_obj
def create(settings: Settings, fmt: str) -> None:
    """Create missing topics (existing ones are left alone)."""
    try:
        created = set(ensure_topics(settings))
    except KafkaException as error:
        fail(escape(describe_kafka_error(settings, error)))
    except TopicsNotReady as error:
        fail(escape(str(error)))
    emit(
        [{"topic": s.name(settings), "schema": s.schema, "created": s.name(settings) in created,
          "compacted": s.compacted} for s in ALL_TOPICS],
        fmt, title="PrismOps topics",
    )


@command.command("list")
@FORMAT_OPTION
@click.pass_obj
def list_topics(settings: Settings, fmt: str) -> None:
    """The topic registry: name, value schema, key and purpose."""
    emit(
        [{"topic": s.name(settings), "schema": s.schema, "key": s.key, "compacted": s.compacted, "purpose": s.doc}
         for s in ALL_TOPICS],
        fmt, title="PrismOps topics",
    )


def _spec_of(settings: Settings, topic: str) -> TopicSpec | None:
    """The registry entry of a topic named in full, by its base name, or under another namespace (`<ns>.<base>`)."""
    exact = next((s for s in ALL_TOPICS if topic in (s.name(settings), s.base_name)), None)
    return exact or next((s for s in ALL_TOPICS if topic.endswith(s.base_name)), None)


@command.command("tail")
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="start at each partition's first offset (default: only new records)")
@click.option("--max", "max_lines", type=click.IntRange(min=1), default=None,
              help="stop after N lines (a batch record gives one line per item)")
@click.option("--exit-at-end", "-e", is_flag=True, help="stop once every partition is read to its end (as kcat -e)")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
              help="stop after this many seconds without a record")
@click.option("--schema", "schema_name", default=None,
              help="value schema for a topic not in the registry (default: the topic's registered schema)")
@click.option("--registry", "registry_url", default=None,
              help="schema registry URL for Confluent-framed values (default: kafka.schema_registry_url)")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "json"]), default="jsonl", show_default=True,
              help="jsonl: one JSON object a line as records arrive; json: one array when the tail ends")
@click.pass_obj
def tail(settings: Settings, topic: str, from_beginning: bool, max_lines: int | None, exit_at_end: bool,
         timeout_s: float | None, schema_name: str | None, registry_url: str | None, fmt: str) -> None:
    """Print a topic's records as JSON, decoded from whichever format wrote them: Avro single-object,
    Confluent wire format (needs a schema registry), JSON, and batch records (one line per item).

    Each line: topic, partition, offset, key, timestamp, format, batch_index (items of a batch), schema_id
    (Confluent), value, or error {field, rule, message} for a record the topic's codec refuses."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

    from prismops.streams.readable import readable_values
    from prismops.streams.schema_registry import (
        SchemaRegistryUnavailable,
        configure_from_settings,
        configure_schema_registry,
    )

    spec = _spec_of(settings, topic)
    schema = schema_name or (spec.schema if spec else None)
    if schema is None:
        fail(escape(f"{topic} is not a PrismOps topic (see `prismops topics list`); name its value schema with --schema"))
    name = spec.name(settings) if spec and topic == spec.base_name else topic
    if registry_url:
        configure_schema_registry(registry_url)
    else:
        configure_from_settings(settings)  # kafka.schema_registry_url, the stack's, or $PRISMOPS_KAFKA__SCHEMA_REGISTRY_URL
    consumer = Consumer(settings.kafka_client_config() | {
        "group.id": f"prismops-tail-{uuid.uuid4()}", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "enable.partition.eof": True,
    })
    try:
        metadata = consumer.list_topics(name, timeout=settings.kafka.admin_timeout_s).topics.get(name)
    except KafkaException as error:
        consumer.close()
        fail(escape(describe_kafka_error(settings, error)))
    if metadata is None or metadata.error is not None or not metadata.partitions:
        consumer.close()
        fail(escape(f"topic {name} does not exist on {settings.kafka_bootstrap} (create it: `prismops topics create`)"))
    partitions = sorted(metadata.partitions)
    consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING if from_beginning else OFFSET_END) for p in partitions])
    at_end: set[int] = set()
    printed = 0
    collected: list[dict[str, Any]] = []
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, _stop)
    last_record = time.monotonic()
    try:
        while not stop:
            message = consumer.poll(0.5)
            if message is None:
                if timeout_s is not None and time.monotonic() - last_record >= timeout_s:
                    break
                continue
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    if exit_at_end and at_end >= set(partitions):
                        break
                    continue
                fail(escape(f"reading {name}: {message.error().str()}"))
            at_end.discard(message.partition())
            last_record = time.monotonic()
            key = message.key()
            stamp_type, stamp = message.timestamp()
            base = {"topic": name, "partition": message.partition(), "offset": message.offset(),
                    "key": key.decode(errors="replace") if key is not None else None,
                    "timestamp_ms": stamp if stamp_type else None}
            try:
                rows = readable_values(schema, message.value())
            except SchemaRegistryUnavailable as error:
                fail(escape(str(error)))
            for row in rows:
                line = base | row
                if fmt == "json":
                    collected.append(line)
                else:
                    sys.stdout.write(json.dumps(line, separators=(",", ":"), default=str) + "\n")
                    sys.stdout.flush()
                printed += 1
                if max_lines is not None and printed >= max_lines:
                    stop = True
                    break
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        consumer.close()
    if fmt == "json":
        sys.stdout.write(json.dumps(collected, indent=2, default=str) + "\n")
