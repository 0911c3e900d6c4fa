"""Which partition a key lands on, computed the way Kafka's Java client and Faust's producer do (murmur2), so a
batch the worker addresses to a partition itself meets the single records that producers key the same way."""

from __future__ import annotations

from aiokafka.partitioner import murmur2


class KeyPartitioner:
    """murmur2(key) mod partitions, remembered per key: the same few tenants and models come back all the time."""

    def __init__(self, partitions: int):
        if partitions < 1:
            raise ValueError("a topic has at least one partition")
        self.partitions = partitions
        self._known: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        partition = self._known.get(key)
        if partition is None:
            partition = self._known[key] = (murmur2(key.encode()) & 0x7FFFFFFF) % self.partitions
        return partition
