"""Batch records this process produced, kept a short while for this process's own consumers of them.

The worker's budget ledger and anomaly watch read the cost-line batches its pricing agent wrote a moment before,
and decoding a 51-field cost line costs more than most of what is done with it (`prismops bench logic`). A record
is looked up by a digest of its bytes: the same bytes are the same items, so a consumer that finds its record
here takes the items as the producer built them (equal, field for field, to what decoding gives: a test checks
it on simulated traffic) and one that does not (a restart, a record of another worker) decodes as before.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from prismops.streams.codecs import DecodedBatch


def record_digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=16).digest()


class RecentlyProduced:
    """Items of recently produced records by digest, at most `max_items` items in all (oldest records leave
    first); a record is taken once, by its first consumer here (decoded batches are shared after that)."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._records: OrderedDict[bytes, DecodedBatch] = OrderedDict()
        self._items = 0
        self.taken = 0
        self.missed = 0

    def remember(self, value: bytes, batch: DecodedBatch) -> None:
        if self.max_items <= 0 or len(batch.items) > self.max_items:
            return
        key = record_digest(value)
        previous = self._records.pop(key, None)
        if previous is not None:
            self._items -= len(previous.items)
        self._records[key] = batch
        self._items += len(batch.items)
        while self._items > self.max_items:
            _, gone = self._records.popitem(last=False)
            self._items -= len(gone.items)

    def take(self, value: bytes) -> DecodedBatch | None:
        batch = self._records.pop(record_digest(value), None) if self._records else None
        if batch is None:
            self.missed += 1
            return None
        self._items -= len(batch.items)
        self.taken += 1
        return batch

    def __len__(self) -> int:
        return len(self._records)
