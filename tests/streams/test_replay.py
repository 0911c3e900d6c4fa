"""End offsets are asked again while the broker answers with a retriable error (a partition whose leader is not
ready yet), and a lasting or non-retriable error reaches the caller."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException

from prismops.streams.replay import partition_ends


class AnsweringConsumer:
    """Answers `list_topics` and `get_watermark_offsets` like a consumer, failing the first `failures` watermark
    questions with `error` as librdkafka raises it there (not marked retriable)."""

    def __init__(self, ends: dict[int, int], failures: int, error: int) -> None:
        self.ends, self.failures, self.error, self.asked = ends, failures, error, 0

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions=dict.fromkeys(self.ends))})

    def get_watermark_offsets(self, partition, timeout: float) -> tuple[int, int]:
        self.asked += 1
        if self.failures:
            self.failures -= 1
            raise KafkaException(KafkaError(self.error))
        return 0, self.ends[partition.partition]


def test_a_partition_whose_leader_is_not_ready_is_asked_again():
    consumer = AnsweringConsumer({0: 5, 1: 0, 2: 7}, failures=3, error=KafkaError.NOT_LEADER_FOR_PARTITION)
    assert partition_ends(consumer, "t", timeout_s=10) == {0: 5, 1: 0, 2: 7}
    assert consumer.failures == 0


def test_a_leader_that_never_comes_fails_after_the_timeout():
    consumer = AnsweringConsumer({0: 5}, failures=10**6, error=KafkaError.NOT_LEADER_FOR_PARTITION)
    with pytest.raises(KafkaException, match="Not leader"):
        partition_ends(consumer, "t", timeout_s=0.5)
    assert consumer.asked > 1


def test_an_error_that_is_not_retriable_is_raised_at_once():
    consumer = AnsweringConsumer({0: 5}, failures=1, error=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        partition_ends(consumer, "t", timeout_s=10)
    assert consumer.asked == 1
