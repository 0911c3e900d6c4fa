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


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_at_the_bound_the_records_kept_stay_and_a_new_one_is_not_kept():
    produced = RecentlyProduced(max_items=5, clock=Clock())
    produced.remember(b"a", batch(1, 2))
    produced.remember(b"b", batch(3, 4))
    produced.remember(b"c", batch(5, 6))  # 6 items: "c" is not kept
    assert produced.take(b"c") is None and produced.not_kept == 1
    assert produced.take(b"a") == batch(1, 2)
    produced.remember(b"d", batch(7))  # room again
    assert produced.take(b"b") == batch(3, 4) and produced.take(b"d") == batch(7)
    assert len(produced) == 0


def test_records_older_than_the_age_limit_make_room_for_a_new_one():
    clock = Clock()
    produced = RecentlyProduced(max_items=4, max_age_s=30.0, clock=clock)
    produced.remember(b"stale", batch(1, 2))  # of a partition nobody here reads: never taken
    clock.now = 20.0
    produced.remember(b"young", batch(3, 4))
    clock.now = 31.0
    produced.remember(b"new", batch(5, 6))  # "stale" is 31 s old and leaves; "young" stays
    assert produced.take(b"stale") is None
    assert produced.take(b"young") == batch(3, 4) and produced.take(b"new") == batch(5, 6)


def simulate_lead(produced: RecentlyProduced, records: int, lead: int) -> int:
    """A producer `lead` records ahead of its consumer, one item a record; how many records the consumer found."""
    found = 0
    for position in range(records + lead):
        if position < records:
            produced.remember(b"%d" % position, batch(position))
        if position >= lead:
            found += produced.take(b"%d" % (position - lead)) is not None
    return found


def test_a_consumer_behind_by_more_than_the_bound_still_finds_the_bounds_share():
    # kept oldest-out, a consumer 400 records behind a bound of 100 found only the last 100 (left when producing
    # ended); kept first-come it finds a quarter all along
    found = simulate_lead(RecentlyProduced(max_items=100, clock=Clock()), records=4000, lead=400)
    assert found == 4000 * 100 // 400
    assert simulate_lead(RecentlyProduced(max_items=100, clock=Clock()), records=4000, lead=50) == 4000


def test_nothing_is_kept_when_disabled_or_when_one_record_is_over_the_bound():
    off = RecentlyProduced(max_items=0)
    off.remember(b"a", batch(1))
    assert off.take(b"a") is None
    small = RecentlyProduced(max_items=2)
    small.remember(b"big", batch(1, 2, 3))
    assert small.take(b"big") is None
