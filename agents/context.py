"""What every agent module shares: the worker's settings and Faust app, its topics, and the dead-letter path.

Agent modules import this, never `agents.worker`: the worker imports them to register their agents, so
the shared context lives below both.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import faust

from prismops.agents.metrics import DEAD_LETTERED
from prismops.settings import Settings
from prismops.streams.codecs import codec_for
from prismops.streams.dead_letters import dead_letter_record
from prismops.streams.topics import DEAD_LETTERS, TopicSpec

log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class WorkerContext:
    settings: Settings
    app: faust.App

    def __post_init__(self) -> None:
        self._topics: dict[str, faust.TopicT] = {}
        self._dlq = self.topic(DEAD_LETTERS)

    def topic(self, spec: TopicSpec) -> faust.TopicT:
        """The Faust topic for a registry entry; values are raw bytes, decoded by the agents themselves."""
        name = spec.name(self.settings)
        if name not in self._topics:
            self._topics[name] = self.app.topic(
                name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
            )
        return self._topics[name]

    async def dead_letter(
        self, event: faust.types.EventT, stage: str, field: str | None, rule: str, message: str,
        value: bytes | None = None,
    ) -> None:
        """Send the event's original bytes (or `value`, a copy with prompts removed) to the DLQ with the
        reason; published before its offset commits."""
        msg = event.message
        DEAD_LETTERED.labels(stage, rule).inc()
        record = dead_letter_record(
            stage=stage, topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key,
            value=msg.value if value is None else value,
            headers=[(k, v) for k, v in (msg.headers or [])], field=field, rule=rule, message=message,
        )
        log.warning("dead letter from %s[%s]@%s: %s [%s]", msg.topic, msg.partition, msg.offset, message, rule)
        await event.send(self._dlq, key=msg.topic.encode(), value=codec_for(DEAD_LETTERS.schema).encode(record))
