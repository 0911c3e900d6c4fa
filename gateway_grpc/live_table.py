"""The router's in-memory copies of compacted topics: the latest row per key of each.

Two tables follow two topics with one implementation: `LiveModelTable` holds ROUTING_TABLES (one live
latency/error/cost row per model) and `BudgetStateTable` holds BUDGET_STATE (one budget row per tenant and
per team). `LiveTableFollower` reads its whole topic from the beginning on every start (no consumer-group
offsets: a compacted topic *is* the table, and every gateway replica needs all of it), then keeps following
it. It reports `caught_up` once it has read up to the end offsets it saw when it started, so the server can
say SERVING only when its answers rest on full tables.
"""

from __future__ import annotations

import abc
import logging
import threading
import uuid
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from prismops.settings import Settings
from prismops.streams.codecs import CodecError, codec_for
from prismops.streams.topics import TopicSpec

log = logging.getLogger(__name__)

ModelKey = tuple[str, str]
ScopeKey = tuple[str, str]
K = TypeVar("K", bound=Hashable)


def split_record_key(key: bytes | None) -> tuple[str, str] | None:
    """Record keys are "first/rest"; the rest may itself hold slashes ("meta-llama/Llama-3")."""
    if not key:
        return None
    first, sep, rest = key.decode("utf-8", errors="replace").partition("/")
    return (first, rest) if sep and first and rest else None


def model_key_from_record_key(key: bytes | None) -> ModelKey | None:
    """ROUTING_TABLES keys are "provider/model"."""
    return split_record_key(key)


class LiveTable(abc.ABC, Generic[K]):
    """Thread-safe map key -> latest decoded row; subclasses say how a row and a record key name their key."""

    what = "rows"

    def __init__(self, rows: Mapping[K, Mapping[str, Any]] | None = None):
        self._lock = threading.Lock()
        self._rows: dict[K, dict[str, Any]] = {}
        for row in (rows or {}).values():
            self.upsert(row)

    @abc.abstractmethod
    def key_of_row(self, row: Mapping[str, Any]) -> K: ...

    @abc.abstractmethod
    def key_of_record(self, key: bytes | None) -> K | None:
        """The key a Kafka record key names, or None when it is unusable."""

    def upsert(self, row: Mapping[str, Any]) -> None:
        key = self.key_of_row(row)
        with self._lock:
            self._rows[key] = dict(row)

    def delete_key(self, key: K) -> bool:
        with self._lock:
            return self._rows.pop(key, None) is not None

    def get_key(self, key: K) -> dict[str, Any] | None:
        with self._lock:
            row = self._rows.get(key)
            return dict(row) if row is not None else None

    def peek_key(self, key: K) -> Mapping[str, Any] | None:
        """The stored row itself, not a copy, for hot-path readers that only read it: `upsert` replaces rows
        and never changes one in place, so the row cannot change under its reader."""
        with self._lock:
            return self._rows.get(key)

    def holds(self, keys: Iterable[K], rows: Iterable[Mapping[str, Any]]) -> bool:
        """Whether each key still maps to that very row object (`peek_key`'s), read under one lock: a
        remembered decision checks its candidates' rows with one lock round instead of one per row."""
        with self._lock:
            get = self._rows.get
            for key, row in zip(keys, rows):
                if get(key) is not row:
                    return False
        return True

    def rows_for(self, keys: Iterable[K]) -> dict[K, dict[str, Any]]:
        """Copies of some rows, read under one lock so they come from one moment."""
        with self._lock:
            return {key: dict(self._rows[key]) for key in keys if key in self._rows}

    def snapshot(self) -> dict[K, dict[str, Any]]:
        with self._lock:
            return {key: dict(row) for key, row in self._rows.items()}

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)


class LiveModelTable(LiveTable[ModelKey]):
    """(provider, model) -> latest decoded ModelLiveStats row."""

    what = "models"

    def key_of_row(self, row: Mapping[str, Any]) -> ModelKey:
        return (row["provider"], row["model"])

    def key_of_record(self, key: bytes | None) -> ModelKey | None:
        return model_key_from_record_key(key)

    def delete(self, provider: str, model: str) -> bool:
        return self.delete_key((provider, model))

    def get(self, provider: str, model: str) -> dict[str, Any] | None:
        return self.get_key((provider, model))


class BudgetStateTable(LiveTable[ScopeKey]):
    """(scope, scope_id) -> latest decoded BudgetState row ("tenant"/"team")."""

    what = "budget scopes"

    def key_of_row(self, row: Mapping[str, Any]) -> ScopeKey:
        return (row["scope"], row["scope_id"])

    def key_of_record(self, key: bytes | None) -> ScopeKey | None:
        return split_record_key(key)

    def get(self, scope: str, scope_id: str) -> dict[str, Any] | None:
        return self.get_key((scope, scope_id))


class LiveTableFollower:
    """Background thread that replays one compacted topic into a LiveTable and keeps following it."""

    POLL_TIMEOUT_S = 0.2
    METADATA_RETRY_S = 0.5
    RESTART_DELAY_S = 1.0

    def __init__(self, settings: Settings, spec: TopicSpec, table: LiveTable[Any]):
        self.settings = settings
        self.spec = spec
        self.table = table
        self.topic = spec.name(settings)
        self.caught_up = threading.Event()
        self.records_applied = 0
        self.tombstones_applied = 0
        self.bad_records = 0
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._codec = codec_for(spec.schema)

    def consumer_config(self) -> dict[str, Any]:
        return {
            **self.settings.kafka_client_config(),
            "group.id": f"prismops-gateway-follower-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the follower is already started")
        self._thread = threading.Thread(target=self._run, name=f"live-table-follower:{self.topic}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_caught_up(self, timeout: float | None = None) -> bool:
        return self.caught_up.wait(timeout)

    def _run(self) -> None:
        """Follow until stopped; an unexpected failure restarts the replay instead of freezing the table."""
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:
                self.restarts += 1
                log.exception("the live table follower of %s failed; replaying the topic again", self.topic)
                self._stop.wait(self.RESTART_DELAY_S)

    def _follow(self) -> None:
        consumer = Consumer(self.consumer_config())
        try:
            partitions = self._wait_for_partitions(consumer)
            if partitions is None:
                return
            remaining = self._start_positions(consumer, partitions)
            if remaining is None:
                return
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            log.info("following %s (%d partitions) from the beginning", self.topic, len(partitions))
            self._mark_caught_up_when_done(remaining)
            while not self._stop.is_set():
                message = consumer.poll(self.POLL_TIMEOUT_S)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.pop(message.partition(), None)
                        self._mark_caught_up_when_done(remaining)
                    elif error.fatal():
                        raise KafkaException(error)
                    else:
                        log.warning("Kafka error while following %s: %s", self.topic, error)
                    continue
                self.apply(message.key(), message.value(), message.partition(), message.offset())
                target = remaining.get(message.partition())
                if target is not None and message.offset() + 1 >= target:
                    del remaining[message.partition()]
                    self._mark_caught_up_when_done(remaining)
        finally:
            consumer.close()

    def _wait_for_partitions(self, consumer: Consumer) -> list[int] | None:
        """The topic's partitions; waits (logging) while the topic does not exist yet. None when stopped."""
        while not self._stop.is_set():
            try:
                metadata = consumer.list_topics(self.topic, timeout=5.0).topics.get(self.topic)
            except KafkaException as exc:
                log.warning("cannot read metadata of %s yet: %s", self.topic, exc)
                metadata = None
            if metadata is not None and metadata.error is None and metadata.partitions:
                return sorted(metadata.partitions)
            if metadata is not None and metadata.error is not None:
                log.warning("topic %s is not readable yet: %s", self.topic, metadata.error)
            self._stop.wait(self.METADATA_RETRY_S)
        return None

    def _start_positions(self, consumer: Consumer, partitions: list[int]) -> dict[int, int] | None:
        """partition -> high watermark at start, for the partitions that hold records. Retries while the
        broker cannot answer (e.g. NOT_LEADER_FOR_PARTITION just after the topic was created). None when stopped."""
        while not self._stop.is_set():
            try:
                remaining = {}
                for partition in partitions:
                    low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=5.0)
                    if high > low:
                        remaining[partition] = high
                return remaining
            except KafkaException as exc:
                log.warning("cannot read the end offsets of %s yet: %s", self.topic, exc)
                self._stop.wait(self.METADATA_RETRY_S)
        return None

    def _mark_caught_up_when_done(self, remaining: dict[int, int]) -> None:
        if not remaining and not self.caught_up.is_set():
            log.info("live table caught up with %s: %d %s", self.topic, len(self.table), self.table.what)
            self.caught_up.set()

    def apply(self, key: bytes | None, value: bytes | None, partition: int = -1, offset: int = -1) -> None:
        """Apply one record: a row is upserted, a tombstone deletes its key, a bad record is logged and counted."""
        if value is None:
            row_key = self.table.key_of_record(key)
            if row_key is None:
                self.bad_records += 1
                log.warning("tombstone with unusable key %r at %s[%d]@%d ignored", key, self.topic, partition, offset)
                return
            self.table.delete_key(row_key)
            self.tombstones_applied += 1
            return
        try:
            row = self._codec.decode(value)
        except CodecError as exc:
            self.bad_records += 1
            log.warning("undecodable row at %s[%d]@%d ignored: %s", self.topic, partition, offset, exc)
            return
        self.table.upsert(row)
        self.records_applied += 1
