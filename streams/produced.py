"""Batch records this process produced, kept a short while for this process's own consumers of them.

The worker's budget ledger and anomaly watch read the cost-line batches its pricing agent wrote a moment before,
and decoding a 51-field cost line costs more than most of what is done with it (`prismops bench logic`). A record
is looked up by a digest of its bytes: the same bytes are the same items, so a consumer that finds its record
here takes the items as the producer built them (equal, field for field, to what decoding gives: a test checks
it on simulated traffic) and one that does not (a restart, a record of another worker) decodes as before.

At the bound, the records kept stay and a new one is not kept; only records older than `max_age_s` make room.
When pricing runs ahead of its own consumers by more than the bound, dropping the oldest dropped each record just
before its consumer came for it (in one 60,000-event burst, 303 of the first 419 cost-line batches the worker
read back were decoded). Kept first-come, the consumer finds the bound's share of the lead; the age limit lets
records nobody here reads (a partition another worker consumes) leave.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from prismops.streams.codecs import DecodedBatch

DEFAULT_MAX_AGE_S = 30.0


def record_digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=16).digest()


class RecentlyProduced:
    """Items of recently produced records by digest, at most `max_items` items in all; a record is taken once, by
    its first consumer here (decoded batches are shared after that). A record that would pass the bound is not
    kept unless records older than `max_age_s` leave to make room."""

    def __init__(self, max_items: int, max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic):
        self.max_items = max_items
        self.max_age_s = max_age_s
        self._clock = clock
        self._records: OrderedDict[bytes, tuple[DecodedBatch, float]] = OrderedDict()
        self._items = 0
        self.taken = 0
        self.missed = 0
        self.not_kept = 0

    def remember(self, value: bytes, batch: DecodedBatch) -> None:
        size = len(batch.items)
        if self.max_items <= 0 or size > self.max_items:
            return
        key = record_digest(value)
        previous = self._records.pop(key, None)
        if previous is not None:
            self._items -= len(previous[0].items)
        now = self._clock()
        if self._items + size > self.max_items:
            self._forget_before(now - self.max_age_s)
            if self._items + size > self.max_items:
                self.not_kept += 1
                return
        self._records[key] = (batch, now)
        self._items += size

    def _forget_before(self, cutoff: float) -> None:
        records = self._records
        while records:
            oldest = next(iter(records.values()))
            if oldest[1] >= cutoff:
                return
            records.popitem(last=False)
            self._items -= len(oldest[0].items)

    def take(self, value: bytes) -> DecodedBatch | None:
        kept = self._records.pop(record_digest(value), None) if self._records else None
        if kept is None:
            self.missed += 1
            return None
        self._items -= len(kept[0].items)
        self.taken += 1
        return kept[0]

    def __len__(self) -> int:
        return len(self._records)
