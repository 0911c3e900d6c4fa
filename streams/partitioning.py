"""Which partition a key lands on, computed the way Kafka's Java client, librdkafka's `murmur2_random` and
Faust's producer do (murmur2 of the key, positive part, modulo the partition count), so a batch addressed to a
partition by the SDK or the worker meets the single records that producers key the same way.

The hash is written out here (it is Kafka's public `Utils.murmur2`, a few lines) because the light SDK install
has no Kafka client that exposes it in Python; a test checks it against aiokafka's copy and Kafka's own vectors.
"""

from __future__ import annotations

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of `data` as an unsigned 32-bit number."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[whole + 2] << 16
    if tail >= 2:
        h ^= data[whole + 1] << 8
    if tail >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


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
