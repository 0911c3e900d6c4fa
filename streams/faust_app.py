"""Faust app factory: one place that turns Settings into a configured faust.App.

Values travel as raw bytes; agents decode them with `prismops.streams.codecs` themselves so a bad message can be
sent to the dead-letter topic with its original bytes instead of being skipped inside Faust.

By default (`worker.output_path` = librdkafka) outputs and table changelog records go through one confluent-kafka
producer (`WorkerApp.outputs`, `streams.outputs`), and every commit first waits until what was produced before it
is acknowledged. With `faust`, agents send with `event.send(...)`: with `stream_publish_on_commit` Faust attaches
those messages to the source offset, publishes them in bulk, and waits for their delivery before it commits that
offset. Either way output is never lost on a crash (at-least-once) and the sink and the budget ledger
recognize replays.

That promise needs one repair in Faust's offset bookkeeping (`ContiguousCommitConsumer`): Faust 0.15 commits the
run of acked offsets even when the offset right after the last commit was never acked (its head-gap check is off
by one), and it acks the messages it skips during a rebalance as if they had been processed. Together they let
a kill -9 and restart drop one record for good (seen in the chaos run: 50 events of one usage record missing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import faust
from faust.tables import TableManager
from faust.transport.consumer import CONSUMER_WAIT_EMPTY
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AiokafkaConsumer
from mode import Service
from faust.types import TP, Message
from prometheus_client import Counter

from prismops.settings import Settings
from prismops.streams.codecs import codec_for
from prismops.streams.outputs import OutputDeliveryFailed, OutputProducer
from prismops.streams.producer import safe_producer_config

log = logging.getLogger(__name__)

REREADS = Counter("prismops_worker_offset_rereads_total",
                  "partitions sought back to their committed offset because a record there was never processed",
                  ["topic"])
STALE_ACKS = Counter("prismops_worker_stale_acks_total",
                     "acks refused for records skipped during a rebalance (they are read again, never committed)",
                     ["topic"])


STOP_WAIT_S = 5.0
"""How long a stopping worker waits for the records in flight to be processed before its last commit."""
STOP_POLL_S = 0.05


class ContiguousCommitConsumer(AiokafkaConsumer):
    """Faust's consumer, committing only what was processed, from the committed offset on without a hole.

    - An ack of a record that Faust skipped (flow stopped for a rebalance, or a record of an earlier group
      generation) does not count: that record is read again after the rebalance and acked then. Faust's compiled
      stream iterator (used when its Cython extension loads, as on our installs) acks inline without calling
      `ack` and already leaves skipped records unacked; the override covers its pure-Python iterator.
    - The seek of every partition to its committed offset (`perform_seek`, at the end of every recovery) stops the
      flow first, so no record reaches an agent's queue just before Faust empties those queues.
    - A clean stop waits `STOP_WAIT_S` at most for the records in flight (`wait_empty`), not for ever.
    - A commit needs the record at the committed offset acked. When it is not, while later ones are, the
      record was lost inside Faust: the partition is sought back to the committed offset (on the second commit
      that finds the hole, so a record still being handed over is not read twice for nothing),
      and the records after it are processed again; every stage downstream dedupes by batch identity.
    - The records read again get through. Faust's fetch loop drops every record below the last offset it
      handed over, and a seek only lowers that mark once: records fetched before the seek, still being handed
      over, raise it again, and the record sought back to was dropped. A bench run stalled 45 s on one such
      hole, sought back to twice. So the seek is remembered per partition (`_rewinds`) and the first record
      read again lowers the mark itself, when it arrives (`_admit_rewound`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rewinds: dict[TP, int] = {}

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        async for tp, message in super().getmany(timeout):
            if self._rewinds:
                self._admit_rewound(tp, message.offset)
            yield tp, message

    def _admit_rewound(self, tp: TP, offset: int) -> None:
        """Lower the fetch loop's read mark for the first record at or after a pending rewind that the loop
        would drop (it is below the mark, so it was fetched after the seek), or for the record itself."""
        target = self._rewinds.get(tp)
        if target is None or offset < target:
            return
        read = self._read_offset.get(tp)
        if offset == target or (read is not None and offset < read):
            del self._rewinds[tp]
            self._read_offset[tp] = offset

    async def perform_seek(self) -> None:
        """Faust's seek of every partition to its committed offset, with the flow stopped first.

        Recovery seeks, then `flow_control.resume()` empties every agent's queue, then resumes the flow. The
        fetcher runs all along (it read the changelogs), and the seek takes one round trip per partition: a record
        handed to an agent after its partition was sought, and still queued at the clear, was dropped, never acked,
        never read again (a restarted worker then sat on the last record of a partition until the next one came,
        seen as a budget that stopped moving). With the flow stopped nothing is handed over until the callers'
        `resume_flow()`, and what was handed over before is sought back to and read again. Every partition goes
        back to its committed offset, and the read marks with it (`_rewinds`); a commit made meanwhile stays the
        local committed offset, not the older one the broker answered before it."""
        self.stop_flow()
        self._rewinds.clear()
        before = dict(self._committed_offset)
        await super().perform_seek()
        for tp, offset in before.items():
            fetched = self._committed_offset.get(tp)
            if offset is not None and fetched is not None and offset > fetched:
                self._committed_offset[tp] = offset

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """aiokafka seeks only partitions committed past offset 0; a stream partition without a commit (or at 0) is
        sought to its start too, so records handed over from it before the seek are read again as well."""
        committed = await super().seek_to_committed()
        for tp, offset in committed.items():
            if not offset and not self._is_changelog_tp(tp):
                await self._seek(tp, 0)
        return committed

    def ack(self, message: Message) -> bool:
        generation = getattr(message, "generation_id", None)
        stale = generation is not None and generation != self.app.consumer_generation_id
        if (not message.acked and (stale or not self.app.flow_control.is_active())
                and self.app.topics.acks_enabled_for(message.topic)):
            message.acked = True
            self._unacked_messages.discard(message)
            STALE_ACKS.labels(message.topic).inc()
            return False
        return super().ack(message)

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        """Faust's commit, after every output record produced so far is acknowledged (`WorkerApp.outputs`): the
        offsets being committed were acked after their events' records were produced. A record refused for good
        stops the worker before anything more commits, as Faust does when its own producer fails."""
        outputs = getattr(self.app, "outputs", None)
        if outputs is not None:
            try:
                await outputs.delivered()
            except OutputDeliveryFailed as exc:
                await self.crash(exc)
                return False
        return await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)

    @Service.transitions_to(CONSUMER_WAIT_EMPTY)
    async def wait_empty(self) -> None:
        """Faust's wait at a clean stop for the records in flight to be acked, bounded by `STOP_WAIT_S`, then the
        last commit. Faust waited for ever: a record one agent had processed while another skipped its copy
        (the flow was already suspended) or lost it (Faust empties the agents' queues when it stops) is never
        acked, and a SIGTERMed worker hung until SIGKILL (chaos `rebalance`, a cost-line record with one of two
        acks missing). What is still unacked stays uncommitted: the partition's next owner reads it again, and
        every stage downstream recognizes a replay."""
        deadline = time.monotonic() + STOP_WAIT_S
        while self._unacked_messages and not self.should_stop and time.monotonic() < deadline:
            await self.commit()
            if not self._unacked_messages:
                break
            await asyncio.sleep(STOP_POLL_S)
            self._clean_unacked_messages()
        if self._unacked_messages:
            log.warning("stopping with %d record(s) in flight not processed; the next owner of their partitions "
                        "reads them again", len(self._unacked_messages))
        await self.commit_and_end_transactions()

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return ShortFetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: TP) -> int | None:
        committed = self._committed_offset.get(tp)
        acked = self._acked.get(tp)
        if committed is not None and acked:
            head = min(acked)
            gap = self._gap.get(tp)
            if gap:
                head = min(head, min(interval.begin for interval in gap))
            if head > committed:
                self._on_hole(tp, committed, head)
                return None
        return super()._new_offset(tp)

    def _on_hole(self, tp: TP, committed: int, head: int) -> None:
        holes: dict[TP, tuple[int, int]] = self.__dict__.setdefault("_holes_seen", {})
        seen_at, count = holes.get(tp, (committed, 0))
        count = count + 1 if seen_at == committed else 1
        holes[tp] = (committed, count)
        if count == 2 or count % 30 == 0:
            log.warning("%s[%d]: offsets %d..%d acked but %d never was; reading again from %d",
                        tp.topic, tp.partition, head, max(self._acked[tp]), committed, committed)
            REREADS.labels(tp.topic).inc()
            self._rewinds[tp] = committed
            asyncio.ensure_future(self.seek(tp, committed))


class ShortFetchWaitConsumerThread(AIOKafkaConsumerThread):
    """Faust's consumer thread, building aiokafka's consumer with the app's `fetch_max_wait_ms` instead of
    Faust's fixed 1,500 ms (`worker.fetch_max_wait_ms`)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms  # read by AIOKafkaConsumer.start() for its Fetcher
        return consumer


class _Sent:
    """What Faust reads back from `send_changelog`: `.message.partition`, for its key expiry bookkeeping."""

    __slots__ = ("message", "partition")

    def __init__(self, partition: int):
        self.message = self
        self.partition = partition


class OutputChangelogTable(faust.Table):
    """A Faust table whose changelog records go through the worker's output producer (`WorkerApp.outputs`):
    with 10,000 tenants every event writes a ledger entry, and aiokafka's Python path for those records filled
    Faust's producer buffer ("producer buffer full") and held the streams back. The commit waits for the output
    producer before it commits offsets, as it waited for Faust's producer. Faust restores the table from the
    changelog topic as before, whoever wrote it. For the in-memory store only: Faust's callback that keeps a
    RocksDB store's persisted offset is not called."""

    def send_changelog(self, partition: int | None, key: Any, value: Any, key_serializer: Any = None,
                       value_serializer: Any = None) -> Any:
        outputs = getattr(self.app, "outputs", None)
        if outputs is None or partition is None:
            return super().send_changelog(partition, key, value, key_serializer, value_serializer)
        serializers = self.app.serializers
        key_bytes = serializers.dumps_key(self.key_type, key, serializer=key_serializer or self.key_serializer)
        value_bytes = None if value is None else serializers.dumps_value(
            self.value_type, value, serializer=value_serializer or self.value_serializer)
        outputs.produce(self.changelog_topic.get_topic_name(), key=key_bytes, value=value_bytes, partition=partition)
        return _Sent(partition)


class PreregisteredTableManager(TableManager):
    """Faust's TableManager without its one-second wait at start for tables declared late: the worker declares
    every table while it builds the app, before Faust starts, so the wait only delayed a restarted worker's
    restore by a second."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class WorkerApp(faust.App):
    """faust.App whose consumer is the ContiguousCommitConsumer, whose producer buffer holds
    `worker.producer_buffer_messages` changelog records before it makes the streams wait, whose aiokafka consumer waits `worker.fetch_max_wait_ms` on a quiet fetch, and whose `outputs`
    (with `worker.output_path` = librdkafka; None otherwise) carries the agents' records and the tables'
    changelogs."""

    producer_buffer_messages = 100
    fetch_max_wait_ms = 1500
    outputs: OutputProducer | None = None

    def _new_producer(self) -> Any:
        producer = super()._new_producer()
        producer.buffer.max_messages = self.producer_buffer_messages
        return producer

    def _new_consumer(self) -> Any:
        transport = self.transport
        return ContiguousCommitConsumer(
            transport, callback=self.topics.on_message, loop=transport.loop,
            on_partitions_revoked=self._on_partitions_revoked, on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
        )


def create_app(settings: Settings) -> faust.App:
    # Faust's default data dir is "<app id>-data" in the working directory; keep it with the rest of our state
    faust_home = settings.stack.home.expanduser().resolve() / "faust"
    faust_home.mkdir(parents=True, exist_ok=True)
    app_id = settings.worker_app_id  # namespaced: its group, changelogs and assignor topic share nothing across namespaces
    through_librdkafka = settings.worker.output_path == "librdkafka"
    app = WorkerApp(
        app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=None,
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(faust_home / f"{app_id}-data"),
        web_enabled=True,
        web_port=settings.worker.web_port,
        web_bind="127.0.0.1",
        producer_acks=-1,
        stream_publish_on_commit=True,
        broker_commit_every=5000,
        broker_commit_interval=settings.worker.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        # A restarted worker takes its partitions back at once (static member); a crashed one that does not
        # come back holds them for the session timeout only.
        consumer_group_instance_id=settings.group_instance_id(app_id, settings.worker.instance_id, settings.worker.web_port),
        broker_session_timeout=settings.kafka.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.kafka.session_timeout_s / 4),
        producer_max_request_size=settings.kafka.max_message_bytes + 16384,  # record overhead above our own check
        producer_max_batch_size=settings.worker.producer_batch_bytes,
        producer_linger=settings.worker.producer_linger_ms / 1000,
        topic_partitions=settings.kafka.default_partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        topic_allow_declare=True,
        autodiscover=False,
        TableManager=PreregisteredTableManager,
        **({"Table": OutputChangelogTable} if through_librdkafka else {}),
    )
    app.producer_buffer_messages = settings.worker.producer_buffer_messages
    app.fetch_max_wait_ms = settings.worker.fetch_max_wait_ms
    if through_librdkafka:
        app.outputs = new_output_producer(settings)
    return app


OUTPUT_QUEUE_KBYTES = 131_072
"""librdkafka's local queue for the worker's outputs (its default is 1 GiB): past it agents wait, so a broker
outage cannot grow the worker past P5's memory bound."""


def new_output_producer(settings: Settings) -> OutputProducer:
    """The worker's output producer: idempotent, acks=all, murmur2 placement as Faust's, `worker.producer_linger_ms`,
    records up to the broker's limit; a commit waits for acknowledgements a little longer than librdkafka retries."""
    config = safe_producer_config(settings, **{
        "linger.ms": settings.worker.producer_linger_ms,
        "message.max.bytes": settings.kafka.max_message_bytes + 16384,
        "client.id": f"{settings.worker_app_id}-outputs",
        "queue.buffering.max.kbytes": OUTPUT_QUEUE_KBYTES,
    })
    return OutputProducer(config, delivery_timeout_s=config["message.timeout.ms"] / 1000 + 30)


class AvroSingleObjectCodec(faust.Codec):
    """A Faust codec for one PrismOps schema, for users who want typed dict values from Faust directly.

    Register with `faust.serializers.codecs.register(name, AvroSingleObjectCodec(schema_name))`.
    """

    def __init__(self, schema_name: str, **kwargs: object):
        self.schema_name = schema_name
        super().__init__(schema_name=schema_name, **kwargs)

    def _dumps(self, obj: object) -> bytes:
        return codec_for(self.schema_name).encode(obj)  # type: ignore[arg-type]

    def _loads(self, s: bytes) -> object:
        return codec_for(self.schema_name).decode(s)
