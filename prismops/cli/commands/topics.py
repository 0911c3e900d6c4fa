"""`prismops topics`: create and list the registered topics."""

from __future__ import annotations

import click

from confluent_kafka import KafkaException
from rich.markup import escape

from prismops.cli.errors import describe_kafka_error
from prismops.cli.output import FORMAT_OPTION, emit, fail
from prismops.settings import Settings
from prismops.streams.topics import ALL_TOPICS, TopicsNotReady, ensure_topics


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
