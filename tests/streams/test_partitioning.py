"""The SDK's and the worker's partitioner agree with Kafka's: a batch meets the keyed records of its tenant."""

from __future__ import annotations

import aiokafka.partitioner
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prismops.streams.partitioning import KeyPartitioner, murmur2

# Kafka's own test vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java), as signed ints.
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), JAVA_VECTORS.items())
def test_murmur2_matches_kafkas_java_vectors(data: bytes, expected: int):
    assert murmur2(data) == expected & 0xFFFFFFFF


@given(st.binary(max_size=64))
def test_murmur2_matches_aiokafkas_copy_that_faust_uses(data: bytes):
    assert murmur2(data) == aiokafka.partitioner.murmur2(data) & 0xFFFFFFFF


@given(st.text(max_size=40), st.integers(min_value=1, max_value=64))
def test_a_key_lands_where_javas_default_partitioner_puts_it(key: str, partitions: int):
    expected = (aiokafka.partitioner.murmur2(key.encode()) & 0x7FFFFFFF) % partitions
    assert KeyPartitioner(partitions)(key) == expected


def test_a_topic_has_at_least_one_partition():
    with pytest.raises(ValueError):
        KeyPartitioner(0)
