"""Read a range of offsets of one partition back from Kafka, outside any consumer group.

A stateful agent that saves its state less often than its offsets are committed uses this on restore: the
records between the offset its saved state covers and the first record handed to it were applied before a
stop or crash but not saved, and are read again here instead of being lost.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from prismops.settings import Settings


def read_partition_range(
    settings: Settings, topic: str, partition: int, start: int, end: int, timeout_s: float = 30.0,
) -> list[tuple[int, bytes]]:
    """(offset, value) of every record of `topic`[`partition`] with start <= offset < end, in order."""
    if end <= start:
        return []
    consumer = Consumer(settings.kafka_client_config() | {
        "group.id": "prismops-range-reader", "enable.auto.commit": False, "enable.partition.eof": True,
        "auto.offset.reset": "earliest",  # a start below the log's start (retention) reads what is left
    })
    records: list[tuple[int, bytes]] = []
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    return records
                raise KafkaException(message.error())
            if message.offset() >= end:
                return records
            records.append((message.offset(), message.value()))
            if message.offset() == end - 1:
                return records
        raise TimeoutError(f"reading {topic}[{partition}] offsets {start}..{end - 1} took over {timeout_s:.0f}s")
    finally:
        consumer.close()


LEADER_NOT_READY_ERRORS = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT,
})
"""Answers to an offsets question that pass once the partition's leader is ready. librdkafka does not mark the
error of `get_watermark_offsets` retriable, so the codes are named here."""


def partition_ends(consumer: Consumer, topic: str, timeout_s: float) -> dict[int, int]:
    """Each partition's next offset (its end) now, asked through `consumer`. A broker that is not yet the leader
    it is listed as (just after the topic was created or a broker came back) answers with a retriable error such
    as NOT_LEADER_FOR_PARTITION: the question is asked again until `timeout_s`, then the last error is raised."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
            return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1] for p in partitions}
        except KafkaException as exc:
            if exc.args[0].code() not in LEADER_NOT_READY_ERRORS or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Each partition's next offset (its end) now."""
    consumer = Consumer(settings.kafka_client_config() | {"group.id": "prismops-range-reader", "enable.auto.commit": False})
    try:
        return partition_ends(consumer, topic, settings.kafka.admin_timeout_s)
    finally:
        consumer.close()


def read_topic(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of every record of `topic` from its start to its end as of now."""
    records = []
    for partition, end in sorted(end_offsets(settings, topic).items()):
        records.extend((partition, offset, value)
                       for offset, value in read_partition_range(settings, topic, partition, 0, end, timeout_s))
    return records


def group_positions(settings: Settings, group: str, topic: str) -> dict[int, tuple[int | None, int]]:
    """Per partition of `topic`: (the offset consumer group `group` committed, None without a commit; the end)."""
    ends = end_offsets(settings, topic)
    consumer = Consumer(settings.kafka_client_config() | {"group.id": group, "enable.auto.commit": False})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=settings.kafka.admin_timeout_s)
    finally:
        consumer.close()
    return {tp.partition: (tp.offset if tp.offset >= 0 else None, ends[tp.partition]) for tp in committed}


def group_lag(settings: Settings, group: str, topic: str) -> int:
    """Records of `topic` that consumer group `group` has not committed yet (a partition without a commit
    counts whole)."""
    return sum(max(0, end - (committed or 0)) for committed, end in group_positions(settings, group, topic).values())
