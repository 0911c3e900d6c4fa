"""streams/faust_app.ContiguousCommitConsumer: a commit never passes a record that was not processed.

The consumer is built by the worker's own app factory (no broker is contacted until it starts); the offsets
are the chaos run's: committed 5, records 6..8 processed, 5 lost inside Faust."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from faust.types import TP, Message

from prismops.settings import Settings
from prismops.streams.faust_app import ContiguousCommitConsumer, create_app

USAGE = TP("ns.usage.llm.v1", 2)


@pytest.fixture()
def consumer(tmp_path: Path) -> ContiguousCommitConsumer:
    app = create_app(Settings(stack={"home": tmp_path}))
    app.topic(USAGE.topic)  # an acking topic, as every agent's source is
    app.topics._acking_topics.add(USAGE.topic)
    app.flow_control.resume()  # flowing, as between rebalances
    consumer = app.consumer
    assert isinstance(consumer, ContiguousCommitConsumer)
    return consumer


def message(offset: int, generation: int) -> Message:
    return Message(USAGE.topic, USAGE.partition, offset, 0.0, 0, None, b"k", b"v", None,
                   generation_id=generation, tp=USAGE)


def acked(consumer: ContiguousCommitConsumer, *offsets: int) -> None:
    for offset in offsets:
        assert consumer.ack(message(offset, consumer.app.consumer_generation_id)) is True


def test_a_hole_at_the_committed_offset_stops_the_commit_and_reads_the_partition_again(consumer, monkeypatch):
    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    monkeypatch.setattr(consumer, "seek", seek)
    consumer._committed_offset[USAGE] = 5
    acked(consumer, 6, 7, 8)

    async def commits() -> list[int | None]:
        found = [consumer._new_offset(USAGE), consumer._new_offset(USAGE)]
        await asyncio.sleep(0)
        return found

    assert asyncio.run(commits()) == [None, None]
    assert sought == [(USAGE, 5)], "the second commit that finds the hole seeks back to it"
    acked(consumer, 5)  # read again and processed
    assert consumer._new_offset(USAGE) == 9


def test_a_contiguous_run_from_the_committed_offset_commits_as_before(consumer):
    consumer._committed_offset[USAGE] = 5
    acked(consumer, 5, 6, 7, 9)
    assert consumer._new_offset(USAGE) == 8


def test_records_skipped_during_a_rebalance_are_not_counted_as_processed(consumer):
    consumer._committed_offset[USAGE] = 5
    consumer.app.consumer_generation_id = 3
    assert consumer.ack(message(5, generation=2)) is False, "a record of the previous generation"
    consumer.app.flow_control.suspend()
    assert consumer.ack(message(6, generation=3)) is False, "a record acked while the flow is stopped"
    consumer.app.flow_control.resume()
    assert consumer._new_offset(USAGE) is None
    acked(consumer, 5, 6)
    assert consumer._new_offset(USAGE) == 7
