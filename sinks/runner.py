"""Consumes the sink topics in batches and checkpoints each batch in the order `prismops.sinks.base.Sink` documents.

One confluent-kafka consumer (auto-commit off) reads every routed topic. A batch is: decode, dead-letter the
undecodable records (flushed), write each topic's records through its sink, then commit the next offsets
synchronously. If anything before the commit fails, nothing is committed: the consumer is rewound to the
batch's first offsets and the batch is retried after a back-off, so a record is never lost, and the sinks'
idempotent writes make the retry (or a replay after a crash) write no duplicates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver.errors import NetworkError, SocketTimeoutError
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from opentelemetry import trace
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from prismops.finops.dead_letters import dead_letter_record
from prismops.streams.membership import leave_group
from prismops.settings import Settings
from prismops.sinks.base import Sink, SinkRecord
from prismops.sinks.clickhouse import (
    AnomalySink, BudgetEventSink, CostLineSink, DeadLetterSink, GpuAllocationSink, GpuUsageSink, PolicyAuditSink,
    RoutingDecisionSink, clickhouse_client,
)
from prismops.streams.codecs import BATCH_SCHEMAS, CodecError, batch_codec_for, codec_for
from prismops.streams.metrics import EVENTS_IN
from prismops.streams.telemetry import context_from_headers, links_from
from prismops.streams.topics import (
    ANOMALIES, BUDGET_EVENTS, COST_LINES, DEAD_LETTERS, GPU_ALLOCATIONS, GPU_USAGE, POLICY_AUDIT, ROUTING_DECISIONS,
    TopicSpec,
)

log = logging.getLogger(__name__)

BATCH_ROWS = Histogram("prismops_sink_batch_rows", "records per sink batch",
                       buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000))
BATCH_SECONDS = Histogram("prismops_sink_batch_seconds", "time to decode and write one sink batch",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SINK_FAILURES = PromCounter("prismops_sink_failures_total", "sink batches that failed (retried, not committed)",
                            ["table"])
CONSUMER_LAG = Gauge("prismops_consumer_lag", "records behind the end of the topic", ["group", "topic"])
LAG_INTERVAL_S = 5.0
_tracer = trace.get_tracer("prismops.sinks")

STAGE = "sink.clickhouse"
DLQ_FLUSH_TIMEOUT_S = 30.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
ASSIGNMENT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Route:
    """Records of `topic` (decoded with its schema) are written by `sink`."""

    topic: TopicSpec
    sink: Sink


@dataclass
class SinkCounters:
    batches: int = 0
    records: int = 0
    rows_written: int = 0
    duplicates_skipped: int = 0
    dead_letters: int = 0
    unreadable_dead_letters: int = 0
    failed_batches: int = 0
    failed_commits: int = 0
    write_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BatchReport:
    """One committed batch: what it held and what it did, for progress lines and metrics."""

    records: int
    rows_written: int
    duplicates_skipped: int
    dead_letters: int
    unreadable_dead_letters: int
    seconds: float
    next_offsets: dict[str, dict[int, int]] = field(default_factory=dict)
    items_by_topic: dict[str, int] = field(default_factory=dict)
    """Events per topic: a batch record counts its items."""


class DeadLetterNotDelivered(RuntimeError):
    """The DLQ producer could not confirm a dead letter; the batch must not be committed."""


STORE_OUTAGES = (NetworkError, SocketTimeoutError, ConnectionError, EOFError, DeadLetterNotDelivered)
"""Failures a stopped or restarting store or broker causes; the batch is retried and the log says so in one line."""


def next_offsets(messages: Sequence[Message]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the offset to commit: one past the last message of the batch."""
    offsets: dict[tuple[str, int], int] = {}
    for message in messages:
        position = (message.topic(), message.partition())
        offsets[position] = max(offsets.get(position, 0), message.offset() + 1)
    return offsets


def first_offsets(messages: Sequence[Message]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the batch's first offset, where a retry starts again."""
    offsets: dict[tuple[str, int], int] = {}
    for message in messages:
        position = (message.topic(), message.partition())
        offsets[position] = min(offsets.get(position, message.offset()), message.offset())
    return offsets


def default_routes(settings: Settings, client: Client | None = None) -> list[Route]:
    """Cost lines, routing decisions, dead letters, budget events, GPU allocations, GPU usage windows, policy
    changes and anomalies into their tables, through one ClickHouse connection."""
    client = client or clickhouse_client(settings)
    database = settings.clickhouse.database
    return [
        Route(COST_LINES, CostLineSink(client, database)),
        Route(ROUTING_DECISIONS, RoutingDecisionSink(client, database)),
        Route(DEAD_LETTERS, DeadLetterSink(client, database)),
        Route(BUDGET_EVENTS, BudgetEventSink(client, database)),
        Route(GPU_ALLOCATIONS, GpuAllocationSink(client, database)),
        Route(GPU_USAGE, GpuUsageSink(client, database)),
        Route(POLICY_AUDIT, PolicyAuditSink(client, database)),
        Route(ANOMALIES, AnomalySink(client, database)),
    ]


class SinkRunner:
    """Runs routes (topic → sink) with one consumer in group `settings.sink_group_id` (the namespaced `sink.group_id`)."""

    def __init__(
        self,
        settings: Settings,
        routes: Sequence[Route],
        *,
        on_batch: Callable[[BatchReport], None] | None = None,
        stage: str = STAGE,
    ) -> None:
        if not routes:
            raise ValueError("a SinkRunner needs at least one route")
        self.settings = settings
        self.stage = stage
        self.on_batch = on_batch
        self.counters = SinkCounters()
        self._routes: dict[str, Route] = {route.topic.name(settings): route for route in routes}
        self._dlq_topic = DEAD_LETTERS.name(settings)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._assigned_at: float | None = None
        self._failures_in_row = 0
        self._lag_measured_at = 0.0

    @property
    def topics(self) -> list[str]:
        return list(self._routes)

    def run(self, stop_event: threading.Event) -> SinkCounters:
        """Consume and write until `stop_event` is set; then leave the group (nothing uncommitted is lost)."""
        return self._run(stop_event, lambda: False)

    def run_until_idle(self, idle_s: float, *, max_s: float | None = None) -> SinkCounters:
        """Consume until no record arrived for `idle_s` after the partitions were assigned (tests, demo).

        `max_s` bounds the whole run; a consumer that gets no partitions within a minute raises.
        """
        started = time.monotonic()
        last_activity: list[float] = []

        def idle() -> bool:
            now = time.monotonic()
            if max_s is not None and now - started >= max_s:
                return True
            if self._assigned_at is None:
                if now - started > ASSIGNMENT_TIMEOUT_S:
                    raise TimeoutError(
                        f"no partitions of {', '.join(self.topics)} assigned within {ASSIGNMENT_TIMEOUT_S:.0f}s"
                    )
                return False
            return now - max([self._assigned_at, *last_activity]) >= idle_s

        return self._run(threading.Event(), idle, last_activity)

    def close(self) -> None:
        """Flush the DLQ producer and close the sinks."""
        if self._producer is not None:
            self._producer.flush(DLQ_FLUSH_TIMEOUT_S)
            self._producer = None
        for route in self._routes.values():
            route.sink.close()

    def __enter__(self) -> "SinkRunner":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(
        self, stop_event: threading.Event, idle: Callable[[], bool], activity: list[float] | None = None,
    ) -> SinkCounters:
        for route in self._routes.values():
            route.sink.open()
        self._consumer = self._new_consumer()
        try:
            while not stop_event.is_set() and not idle():
                if self._step(stop_event) and activity is not None:
                    activity[:] = [time.monotonic()]
        finally:
            self._consumer.close()
            self._consumer = None
            self._assigned_at = None
            # a static member does not leave on close; a clean stop hands its partitions over now
            leave_group(self.settings, self.settings.sink_group_id, self._instance_id)
        return self.counters

    @property
    def _instance_id(self) -> str | None:
        sink = self.settings.sink
        return self.settings.group_instance_id(self.settings.sink_group_id, sink.instance_id, sink.metrics_port)

    def _new_consumer(self) -> Consumer:
        consumer = Consumer({
            **self.settings.kafka_client_config(),
            **self.settings.consumer_group_config(
                self.settings.sink_group_id, instance=self.settings.sink.instance_id, port=self.settings.sink.metrics_port),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "client.id": f"prismops-{self.stage}",
        })
        consumer.subscribe(self.topics, on_assign=self._on_assign)
        return consumer

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned_at = time.monotonic()
        self._expect_replays()
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "no partitions")

    def _dlq_producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer({
                **self.settings.kafka_client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "client.id": f"prismops-{self.stage}-dlq",
            })
        return self._producer

    def _step(self, stop_event: threading.Event) -> int:
        """One batch; returns how many records it held (0 when the poll timed out empty)."""
        assert self._consumer is not None
        polled = self._consumer.consume(
            num_messages=self.settings.sink.batch_max_rows, timeout=self.settings.sink.batch_max_wait_s,
        )
        messages = []
        for message in polled:
            error = message.error()
            if error is None:
                messages.append(message)
            elif error.fatal() or error.code() == KafkaError._FATAL:
                # librdkafka hands a fatal error to the message as a plain _FATAL copy (fatal() False): seen
                # when a broker restart timed the session out and the static member was fenced. That consumer
                # never reads again; a new one resumes from the committed offsets.
                self._rejoin(f"the consumer failed for good ({error.str()})")
                return 0
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", error)
        self._measure_lag()
        if not messages:
            return 0
        try:
            report = self._process(messages)
        except Exception as error:
            for topic in {m.topic() for m in messages}:
                SINK_FAILURES.labels(self._routes[topic].sink.table).inc()
            self.counters.failed_batches += 1
            self._failures_in_row += 1
            self._expect_replays()
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._failures_in_row - 1))
            if isinstance(error, STORE_OUTAGES):  # expected during an outage: one line, no traceback
                log.warning("batch of %d records not written (%s: %s); nothing committed, retrying in %.1fs",
                            len(messages), type(error).__name__, error, delay)
            else:
                log.exception("batch of %d records failed; nothing committed, retrying in %.1fs", len(messages), delay)
            self._rewind(first_offsets(messages))
            stop_event.wait(delay)
            return len(messages)
        self._failures_in_row = 0
        self._commit(report.next_offsets)
        BATCH_ROWS.observe(report.records)
        BATCH_SECONDS.observe(report.seconds)
        for topic, count in report.items_by_topic.items():
            EVENTS_IN.labels(topic).inc(count)
        self.counters.batches += 1
        self.counters.records += report.records
        self.counters.rows_written += report.rows_written
        self.counters.duplicates_skipped += report.duplicates_skipped
        self.counters.dead_letters += report.dead_letters
        self.counters.unreadable_dead_letters += report.unreadable_dead_letters
        self.counters.write_seconds += report.seconds
        if self.on_batch:
            self.on_batch(report)
        return len(messages)

    def _expect_replays(self) -> None:
        for route in self._routes.values():
            route.sink.expect_replays()

    def _measure_lag(self) -> None:
        """Records between the committed position and the end of each topic, every LAG_INTERVAL_S at most."""
        now = time.monotonic()
        if self._consumer is None or now - self._lag_measured_at < LAG_INTERVAL_S:
            return
        self._lag_measured_at = now
        lag: dict[str, int] = {}
        try:
            for tp in self._consumer.position(self._consumer.assignment()):
                if tp.offset < 0:  # nothing consumed there yet
                    continue
                _, high = self._consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - tp.offset)
        except KafkaException as exc:
            log.debug("lag not measured: %s", exc)
            return
        for topic, behind in lag.items():
            CONSUMER_LAG.labels(self.settings.sink_group_id, topic).set(behind)

    def _process(self, messages: Sequence[Message]) -> BatchReport:
        started = time.perf_counter()
        decoded: dict[str, list[SinkRecord]] = {}
        rejects: list[dict[str, Any]] = []
        unreadable_dead_letters = 0
        for message in messages:
            topic = message.topic()
            route = self._routes[topic]
            try:
                records, refused = self._decode(route, message)
            except CodecError as error:
                if topic == self._dlq_topic:
                    unreadable_dead_letters += 1
                    log.error("unreadable dead letter at %s[%d]@%d, skipped: %s",
                              topic, message.partition(), message.offset(), error)
                    continue
                refused = [(error, message.value())]
                records = []
            decoded.setdefault(topic, []).extend(records)
            rejects.extend(dead_letter_record(
                stage=self.stage, topic=topic, partition=message.partition(), offset=message.offset(),
                key=message.key(), value=original, headers=message.headers(),
                field=error.field, rule=error.rule, message=error.message,
                redaction=self.settings.pii.dead_letter_redaction,
            ) for error, original in refused)
        self._send_dead_letters(rejects)
        items_by_topic = {topic: len(records) for topic, records in decoded.items()}
        for reject in rejects:
            items_by_topic[reject["source_topic"]] = items_by_topic.get(reject["source_topic"], 0) + 1
        rows_written = duplicates_skipped = 0
        contexts = [context_from_headers(m.headers()) for m in messages if m.headers()]
        parent = contexts[0] if contexts else None
        with _tracer.start_as_current_span("sink.write", context=parent, kind=trace.SpanKind.CONSUMER,
                                           links=links_from(contexts[1:])) as span:
            span.set_attribute("messaging.batch.message_count", len(messages))
            for topic, records in decoded.items():
                result = self._routes[topic].sink.write(records)
                rows_written += result.rows_written
                duplicates_skipped += result.duplicates_skipped
        offsets: dict[str, dict[int, int]] = {}
        for (topic, partition), offset in next_offsets(messages).items():
            offsets.setdefault(topic, {})[partition] = offset
        return BatchReport(
            records=len(messages), rows_written=rows_written, duplicates_skipped=duplicates_skipped,
            dead_letters=len(rejects), unreadable_dead_letters=unreadable_dead_letters,
            seconds=time.perf_counter() - started, next_offsets=offsets, items_by_topic=items_by_topic,
        )

    def _decode(self, route: Route, message: Message) -> tuple[list[SinkRecord], list[tuple[CodecError, bytes | None]]]:
        """The records of one Kafka record (one, or each item of a batch), and the items refused with the bytes
        to dead-letter for each; raises CodecError when the record as a whole is unreadable."""
        topic, partition, offset, key = message.topic(), message.partition(), message.offset(), message.key()
        if route.topic.schema not in BATCH_SCHEMAS:
            value = codec_for(route.topic.schema).decode(message.value())
            return [SinkRecord(topic, partition, offset, key, value)], []
        codec = batch_codec_for(route.topic.schema)
        decoded = codec.decode(message.value())
        batch_id = f"{decoded.origin}@{decoded.position}" if decoded.origin is not None else None
        records, refused = [], []
        for item in decoded.items:
            if item.value is None:
                refused.append((item.error or CodecError(None, "json_decode", "not a record"), item.original))
            else:
                records.append(SinkRecord(topic, partition, offset, key, item.value, batch_id))
        return records, refused

    def _send_dead_letters(self, rejects: Sequence[Mapping[str, Any]]) -> None:
        """Produce and flush; raise unless the broker acknowledged every one (acks=all, idempotent)."""
        if not rejects:
            return
        producer = self._dlq_producer()
        codec = codec_for(DEAD_LETTERS.schema)
        failures: list[str] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(str(error))

        for record in rejects:
            producer.produce(
                self._dlq_topic, key=record["source_topic"].encode(), value=codec.encode(record), on_delivery=delivered,
            )
            producer.poll(0)
        remaining = producer.flush(DLQ_FLUSH_TIMEOUT_S)
        if remaining or failures:
            raise DeadLetterNotDelivered(
                f"{remaining} dead letters unconfirmed after {DLQ_FLUSH_TIMEOUT_S:.0f}s, {len(failures)} failed"
                + (f": {failures[0]}" if failures else "")
            )
        for record in rejects:
            log.warning("dead-lettered %s[%d]@%d: %s %s", record["source_topic"], record["source_partition"],
                        record["source_offset"], record["error_rule"], record["error_message"])

    def _commit(self, offsets: Mapping[str, Mapping[int, int]]) -> None:
        """Synchronous commit. A failed commit (e.g. the partitions moved in a rebalance) loses nothing: the
        rows are stored, and whoever replays the batch finds them and skips them."""
        assert self._consumer is not None
        partitions = [
            TopicPartition(topic, partition, offset)
            for topic, by_partition in offsets.items() for partition, offset in by_partition.items()
        ]
        try:
            self._consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as exc:
            self.counters.failed_commits += 1
            log.warning("commit failed (rows are stored; a replay will skip them): %s", exc)

    def _rewind(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Seek back to the failed batch's first offsets; if the partitions moved, start a fresh consumer,
        which resumes from the committed offsets (the batch was not committed, so it is read again)."""
        assert self._consumer is not None
        try:
            for (topic, partition), offset in offsets.items():
                self._consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            self._rejoin(f"rewind by seek failed ({exc})")

    def _rejoin(self, reason: str) -> None:
        """A fresh consumer in place of this one; it starts from the committed offsets, so what was written and
        not committed is read again and recognized (`expect_replays`)."""
        log.warning("%s; re-joining the group", reason)
        assert self._consumer is not None
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:  # a fatal consumer may refuse to leave cleanly
            log.debug("closing the old consumer: %s", exc)
        self._assigned_at = None
        self._expect_replays()
        self._consumer = self._new_consumer()
