"""The worker's output producer against the real broker: what a commit waits for is there, placed as Faust and
Java clients place keyed records, and a record the broker cannot take fails the commit."""

from __future__ import annotations

import asyncio

import pytest

from prismops.streams.faust_app import new_output_producer
from prismops.streams.outputs import OutputDeliveryFailed
from prismops.streams.partitioning import KeyPartitioner
from prismops.streams.topics import BUDGET_STATE, COST_LINES
from prismops.testing import read_records_to_end


def test_delivered_records_are_on_the_broker_keyed_ones_on_their_murmur2_partition(isolated_settings):
    settings = isolated_settings
    outputs = new_output_producer(settings)
    state_topic, lines_topic = BUDGET_STATE.name(settings), COST_LINES.name(settings)
    keys = [f"tenant/t{i}".encode() for i in range(40)]
    try:
        for key in keys:
            outputs.produce(state_topic, key=key, value=b"row-" + key)
        outputs.produce(lines_topic, key=None, value=b"batch", partition=2, headers=[("traceparent", b"00-x")])
        asyncio.run(outputs.delivered())
        assert outputs.outstanding() == 0
    finally:
        outputs.close()
    placed = KeyPartitioner(BUDGET_STATE.partitions or settings.kafka.default_partitions)
    stored = {message.key(): (message.partition(), message.value()) for message in read_records_to_end(settings, state_topic)}
    assert stored == {key: (placed(key.decode()), b"row-" + key) for key in keys}
    (line,) = read_records_to_end(settings, lines_topic)
    assert (line.partition(), line.value(), line.headers()) == (2, b"batch", [("traceparent", b"00-x")])


def test_a_record_the_broker_cannot_take_fails_the_commit(isolated_settings):
    outputs = new_output_producer(isolated_settings)
    try:
        outputs.produce(COST_LINES.name(isolated_settings), key=None, value=b"batch", partition=999)
        with pytest.raises(OutputDeliveryFailed, match=r"\[999\]"):
            asyncio.run(outputs.delivered())
    finally:
        outputs.close()
