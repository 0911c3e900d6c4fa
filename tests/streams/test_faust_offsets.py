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


def drain(consumer: ContiguousCommitConsumer, fetched: list[list[int]], seek_after: int | None = None) -> list[int]:
    """Faust's fetch loop over `fetched` (one list of offsets per fetch), as `Consumer._drain_messages` filters
    it: a record below the last offset handed over is dropped. With `seek_after`, the hole repair runs (the
    commit path's seek) right after that offset was handed over, while the rest of its fetch is in flight."""
    from faust.transport.drivers.aiokafka import Consumer as AiokafkaConsumer

    fetches = iter(fetched)

    async def parent_getmany(self, timeout: float):
        for offset in next(fetches):
            yield USAGE, message(offset, consumer.app.consumer_generation_id)

    async def seek(tp: TP, offset: int) -> None:  # Faust's seek: the read mark goes down once, at seek time
        consumer._read_offset[tp] = offset

    async def loop() -> list[int]:
        handed: list[int] = []
        sought: list[int] = []
        for _ in fetched:
            async for tp, record in consumer.getmany(1.0):
                read = consumer._read_offset.get(tp)
                if read is None or record.offset >= read:
                    handed.append(record.offset)
                    consumer._read_offset[tp] = record.offset
                    if record.offset == seek_after and not sought:  # two commits find the hole; the 2nd seeks back
                        sought.append(record.offset)
                        consumer._committed_offset[tp] = 5
                        acked(consumer, *handed)
                        assert [consumer._new_offset(tp), consumer._new_offset(tp)] == [None, None]
                        await asyncio.sleep(0)
        return handed

    original = AiokafkaConsumer.getmany
    AiokafkaConsumer.getmany = parent_getmany
    try:
        consumer.seek = seek
        return asyncio.run(loop())
    finally:
        AiokafkaConsumer.getmany = original


def test_the_record_sought_back_to_gets_through_though_later_records_were_in_flight(consumer):
    """Committed 5, record 5 lost; the repair seeks back while 8..10 of the same fetch are still handed over:
    the fetch after the seek (5..10) must hand over 5 again and everything after it."""
    handed = drain(consumer, [[6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10, 11]], seek_after=7)
    assert handed == [6, 7, 8, 9, 10, 5, 6, 7, 8, 9, 10, 11]
    assert consumer._rewinds == {}


def test_without_the_remembered_rewind_the_in_flight_records_hide_the_hole(consumer, monkeypatch):
    """What Faust alone does (the stall the repair had): the records in flight raise the read mark again and the
    fetch after the seek is dropped up to 10, record 5 with it."""
    monkeypatch.setattr(consumer, "_admit_rewound", lambda tp, offset: None)
    handed = drain(consumer, [[6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10, 11]], seek_after=7)
    assert 5 not in handed[5:]


def test_a_rewind_is_spent_once_and_cleared_by_a_seek_to_committed(consumer):
    consumer._rewinds[USAGE] = 5
    consumer._read_offset[USAGE] = 10
    consumer._admit_rewound(USAGE, 12)  # still in flight from before the seek: not the record read again
    assert consumer._rewinds == {USAGE: 5} and consumer._read_offset[USAGE] == 10
    consumer._admit_rewound(USAGE, 6)  # read again, 5 itself gone (a compacted or control offset)
    assert consumer._rewinds == {} and consumer._read_offset[USAGE] == 6
    consumer._rewinds[USAGE] = 5

    async def committed_positions() -> dict:
        return {}

    consumer.seek_to_committed = committed_positions
    asyncio.run(consumer.perform_seek())
    assert consumer._rewinds == {}



USAGE_NEW = TP("ns.usage.llm.v1", 3)


def seek_to_committed_stub(monkeypatch, answer: dict, sought: list, started: asyncio.Event | None = None,
                           release: asyncio.Event | None = None):
    """aiokafka's side of the seek, scripted: returns `answer` (after `release`, once `started` is set); the seeks
    the override adds are recorded in `sought`."""
    from faust.transport.drivers.aiokafka import Consumer as AiokafkaConsumer

    async def parent_seek_to_committed(self) -> dict:
        if started is not None:
            started.set()
            await release.wait()
        return dict(answer)

    async def record_seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    monkeypatch.setattr(AiokafkaConsumer, "seek_to_committed", parent_seek_to_committed)
    return record_seek


def test_nothing_is_handed_to_an_agent_between_the_seek_and_the_resume_that_empties_the_queues(consumer, monkeypatch):
    """Recovery's tail: seek every partition, then `flow_control.resume()` (it clears every agent's queue), then
    `resume_flow()`. A record handed over during the seek would be cleared and never read again."""
    sought: list = []

    async def recovery_tail() -> None:
        started, release = asyncio.Event(), asyncio.Event()
        consumer._seek = seek_to_committed_stub(monkeypatch, {USAGE: 5}, sought, started, release)
        seek = asyncio.ensure_future(consumer.perform_seek())
        await started.wait()
        assert not consumer.flow_active and consumer.suspend_flow.is_set()
        with pytest.raises(asyncio.TimeoutError):  # the fetch loop waits instead of fetching
            await asyncio.wait_for(consumer._wait_next_records(1.0), 0.2)
        release.set()
        await seek
        assert not consumer.flow_active, "still stopped until the caller resumes it, after the clear"
        consumer.app.flow_control.resume()
        consumer.resume_flow()
        assert consumer.flow_active and not consumer.suspend_flow.is_set()

    asyncio.run(recovery_tail())
    assert consumer._committed_offset[USAGE] == 5 and consumer._read_offset[USAGE] == 5


def test_a_partition_without_a_commit_is_sought_to_its_start_and_a_commit_made_during_the_seek_stands(consumer, monkeypatch):
    sought: list = []
    consumer._seek = seek_to_committed_stub(monkeypatch, {USAGE: 5, USAGE_NEW: None}, sought)
    consumer._committed_offset[USAGE] = 9  # committed by this worker while the broker's older answer was on its way
    asyncio.run(consumer.perform_seek())
    assert sought == [(USAGE_NEW, 0)], "aiokafka seeks only offsets above 0; the override seeks the rest"
    assert consumer._committed_offset[USAGE] == 9


def test_a_stopping_worker_gives_up_on_a_record_never_acked_and_commits_what_was(consumer, monkeypatch):
    """Chaos `rebalance`: a SIGTERMed worker waited for ever for a record one of its two agents never acked."""
    monkeypatch.setattr("prismops.streams.faust_app.STOP_WAIT_S", 0.3)
    committed: list[int | None] = []

    async def commit(*args, **kwargs) -> bool:
        committed.append(consumer._new_offset(USAGE))
        return True

    monkeypatch.setattr(consumer, "commit", commit)
    consumer._committed_offset[USAGE] = 5
    never_acked = message(6, consumer.app.consumer_generation_id)
    consumer._unacked_messages.add(never_acked)
    acked(consumer, 5)
    asyncio.run(asyncio.wait_for(consumer.wait_empty(), 10))
    assert max(c for c in committed if c is not None) == 6, "5 is committed, 6 is left for the partition's next owner"
    assert never_acked in consumer._unacked_messages


def test_a_stopping_worker_still_waits_for_a_record_being_processed(consumer, monkeypatch):
    monkeypatch.setattr("prismops.streams.faust_app.STOP_WAIT_S", 5.0)
    committed: list[int | None] = []

    async def commit(*args, **kwargs) -> bool:
        committed.append(consumer._new_offset(USAGE))
        return True

    monkeypatch.setattr(consumer, "commit", commit)
    consumer._committed_offset[USAGE] = 5
    in_flight = message(5, consumer.app.consumer_generation_id)
    consumer._unacked_messages.add(in_flight)

    async def stop_while_processing() -> None:
        stopping = asyncio.ensure_future(consumer.wait_empty())
        await asyncio.sleep(0.2)
        assert not stopping.done()
        in_flight.acked = True
        acked(consumer, 5)
        await asyncio.wait_for(stopping, 3)

    asyncio.run(stop_while_processing())
    assert max(c for c in committed if c is not None) == 6
