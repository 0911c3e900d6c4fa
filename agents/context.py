"""What every agent module shares: the worker's settings and Faust app, its topics, the dead-letter path, and
the guards that keep one message from stopping the worker.

- `guard(event, stage)`: any error while handling one event dead-letters that event (a FieldRuleError with its
  field and rule, anything else as `processing_error` with the exception's class) and the stream goes on.
- `send(event, topic, ...)` / `check_size`: an output record over `kafka.max_message_bytes` is refused before it
  reaches the producer (where it would fail the commit and crash the worker), so its event is dead-lettered. The
  record is delivered before the event's offset commits (the output producer of `worker.output_path` =
  librdkafka, the default, or `event.send` with `faust`).
- `timer_guard(name)`: a timer's error is logged and counted; the timer runs again at its next tick.

Agent modules import this, never `agents.worker`: the worker imports them to register their agents, so
the shared context lives below both.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import faust

from prismops.agents.metrics import AGENT_ERRORS, BATCHES_READ, DEAD_LETTERED
from prismops.errors import FieldRuleError
from prismops.finops.dead_letters import dead_letter_record
from prismops.settings import Settings
from prismops.streams.codecs import DecodedBatch, batch_codec_for, codec_for
from prismops.streams.outputs import OutputProducer
from prismops.streams.produced import RecentlyProduced
from prismops.streams.topics import DEAD_LETTERS, TopicSpec

log = logging.getLogger(__name__)
DECODED_KEPT = 256
"""Decoded records kept for the other agents that read the same record (a few batches of lag between them)."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class OutputTooLarge(FieldRuleError):
    """An output record would exceed the broker's message limit."""


def check_size(topic: str, key: bytes | None, value: bytes | None,
               headers: Sequence[tuple[str, bytes]] | None, max_bytes: int) -> None:
    """Raise OutputTooLarge when key + value + headers exceed `max_bytes`."""
    size = len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers or ())
    if size > max_bytes:
        raise OutputTooLarge(None, "output_max_bytes",
                             f"the {topic} record it produces is {size} bytes, over the {max_bytes}-byte limit")


@dataclass
class WorkerContext:
    settings: Settings
    app: faust.App

    def __post_init__(self) -> None:
        self.outputs: OutputProducer | None = getattr(self.app, "outputs", None)
        self._topics: dict[str, faust.TopicT] = {}
        self._dlq = self.topic(DEAD_LETTERS)
        self._decoded: OrderedDict[tuple[str, int, int], DecodedBatch] = OrderedDict()
        self.produced = RecentlyProduced(self.settings.worker.produced_kept_items)

    def decode_batch(self, event: faust.types.EventT, item_schema: str) -> DecodedBatch:
        """The record's items, decoded once per process: several agents read each cost-line batch (budgets,
        anomalies), and decoding is the larger part of what they spend on it; a record this process wrote is not
        decoded at all (`streams.produced`). Raises CodecError like the codec."""
        message = event.message
        position = (message.topic, message.partition, message.offset)
        decoded = self._decoded.get(position)
        if decoded is None:
            decoded = self.produced.take(message.value) if message.value else None
            if decoded is None:
                decoded = batch_codec_for(item_schema).decode(message.value)
                BATCHES_READ.labels("decoded").inc()
            else:
                BATCHES_READ.labels("kept").inc()
            self._decoded[position] = decoded
            if len(self._decoded) > DECODED_KEPT:
                self._decoded.popitem(last=False)
        return decoded

    def table(self, name: str, help: str) -> faust.TableT:  # noqa: A002 - Faust's name
        """A Faust table whose compacted changelog rolls segments every `kafka.changelog_segment_ms`, so the
        broker's cleaner keeps it near one record per key: with 10,000 tenants a restarted worker read 100,000
        ledger writes (28 s) where 10,000 keys were live. Applies to changelogs Faust creates (new namespaces)."""
        configs = {"segment.ms": str(self.settings.kafka.changelog_segment_ms), "min.cleanable.dirty.ratio": "0.1"}
        return self.app.Table(name, default=None, help=help, extra_topic_configs=configs)

    def topic(self, spec: TopicSpec) -> faust.TopicT:
        """The Faust topic for a registry entry; values are raw bytes, decoded by the agents themselves."""
        name = spec.name(self.settings)
        if name not in self._topics:
            self._topics[name] = self.app.topic(
                name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
            )
        return self._topics[name]

    def check_size(self, topic: faust.TopicT, key: bytes | None, value: bytes | None,
                   headers: Sequence[tuple[str, bytes]] | None = None) -> None:
        check_size(topic.get_topic_name(), key, value, headers, self.settings.kafka.max_message_bytes)

    async def send(self, event: faust.types.EventT, topic: faust.TopicT, *, key: bytes | None, value: bytes,
                   headers: Sequence[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
        """After the size check, `event.send` (published before the event's offset commits) or, with
        `worker.output_path` = librdkafka, the output producer, whose records every commit waits for."""
        self.check_size(topic, key, value, headers)
        if self.outputs is None:
            await event.send(topic, key=key, value=value, headers=headers, partition=partition)
        else:
            await self.outputs.send(topic.get_topic_name(), key=key, value=value, headers=headers, partition=partition)

    async def publish(self, topic: faust.TopicT, *, key: bytes | None, value: bytes) -> None:
        """A timer's record, tied to no source offset, through the same producer as the agents' records."""
        self.check_size(topic, key, value)
        if self.outputs is None:
            await topic.send(key=key, value=value)
        else:
            await self.outputs.send(topic.get_topic_name(), key=key, value=value)

    @contextlib.asynccontextmanager
    async def guard(self, event: faust.types.EventT, stage: str) -> AsyncIterator[None]:
        """Handle one event inside; whatever it raises dead-letters the event instead of stopping the worker."""
        try:
            yield
        except FieldRuleError as exc:
            await self.dead_letter(event, stage, exc.field, exc.rule, exc.message)
        except Exception as exc:  # one message must never stop the worker; the DLQ and the log say why
            AGENT_ERRORS.labels(stage).inc()
            log.exception("%s failed on %s[%s]@%s", stage, event.message.topic, event.message.partition,
                          event.message.offset)
            await self.dead_letter(event, stage, None, "processing_error", f"{type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def timer_guard(self, name: str) -> AsyncIterator[None]:
        try:
            yield
        except Exception:
            AGENT_ERRORS.labels(name).inc()
            log.exception("timer %s failed; it runs again at its next tick", name)

    async def dead_letter(
        self, event: faust.types.EventT, stage: str, field: str | None, rule: str, message: str,
        value: bytes | None = None,
    ) -> None:
        """Send the event's original bytes (or `value`, a copy with prompts removed) to the DLQ with the
        reason; acknowledged before its offset commits."""
        msg = event.message
        DEAD_LETTERED.labels(stage, rule).inc()
        record = dead_letter_record(
            stage=stage, topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key,
            value=msg.value if value is None else value,
            headers=[(k, v) for k, v in (msg.headers or [])], field=field, rule=rule, message=message,
            redaction=self.settings.pii.dead_letter_redaction,
        )
        log.warning("dead letter from %s[%s]@%s: %s [%s]", msg.topic, msg.partition, msg.offset, message, rule)
        await self.send(event, self._dlq, key=msg.topic.encode(), value=codec_for(DEAD_LETTERS.schema).encode(record))
