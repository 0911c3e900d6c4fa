"""streams/produced.py: records this process wrote, found again by their bytes, taken once, bounded."""

from __future__ import annotations

from prismops.streams.codecs import BatchItem, DecodedBatch
from prismops.streams.produced import RecentlyProduced


def batch(*values: int) -> DecodedBatch:
    return DecodedBatch([BatchItem({"n": value}) for value in values], "usage/0", values[0])


def test_a_record_is_found_by_its_bytes_once():
    produced = RecentlyProduced(max_items=100)
    produced.remember(b"record-1", batch(1, 2))
    assert produced.take(b"record-2") is None, "other bytes, other record"
    assert produced.take(b"record-1") == batch(1, 2)
    assert produced.take(b"record-1") is None, "taken by its first consumer; the worker shares decoded batches after"
    assert (produced.taken, produced.missed) == (1, 2)


def test_the_oldest_records_leave_first_when_the_items_are_over_the_bound():
    produced = RecentlyProduced(max_items=5)
    produced.remember(b"a", batch(1, 2))
    produced.remember(b"b", batch(3, 4))
    produced.remember(b"c", batch(5, 6))  # 6 items: "a" leaves
    assert produced.take(b"a") is None
    assert produced.take(b"b") == batch(3, 4) and produced.take(b"c") == batch(5, 6)
    assert len(produced) == 0


def test_nothing_is_kept_when_disabled_or_when_one_record_is_over_the_bound():
    off = RecentlyProduced(max_items=0)
    off.remember(b"a", batch(1))
    assert off.take(b"a") is None
    small = RecentlyProduced(max_items=2)
    small.remember(b"big", batch(1, 2, 3))
    assert small.take(b"big") is None
