"""`prismops topics`: create and list the registered topics."""

from __future__ import annotations

import click

from prismops.output import FORMAT_OPTION, emit, fail
from prismops.settings import Settings
from streams.topics import ALL_TOPICS, ensure_topics


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
    except Exception as exc:
        fail(f"cannot create topics on {settings.kafka_bootstrap}: {exc}")
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
