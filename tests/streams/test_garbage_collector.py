"""The worker's collector setting: the first generation's threshold moves, the older ones stay, and a tuned block
gives the thresholds back."""

import gc

import pytest

from prismops.settings import Settings
from prismops.streams.garbage_collector import tune_collector, tuned_collector


@pytest.fixture
def thresholds_kept():
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_tune_collector_sets_the_first_generation_and_keeps_the_older_ones(thresholds_kept):
    assert tune_collector(12_345) == thresholds_kept
    assert gc.get_threshold() == (12_345, *thresholds_kept[1:])


def test_a_tuned_block_gives_the_thresholds_back_even_when_it_raises(thresholds_kept):
    with pytest.raises(RuntimeError), tuned_collector(54_321):
        assert gc.get_threshold()[0] == 54_321
        raise RuntimeError("boom")
    assert gc.get_threshold() == thresholds_kept


def test_the_worker_runs_the_collector_less_often_than_python_does():
    assert Settings().worker.gc_gen0_threshold > 700
    assert Settings(worker={"gc_gen0_threshold": 700}).worker.gc_gen0_threshold == 700


def test_cycles_are_still_freed_by_the_collector_itself_under_the_worker_threshold(thresholds_kept):
    """No explicit gc.collect(): garbage cycles made past the threshold are freed while the loop runs."""
    freed = []

    class Node:
        def __del__(self):
            freed.append(1)

    threshold = Settings().worker.gc_gen0_threshold
    gc.collect()
    with tuned_collector(threshold):
        for _ in range(3 * threshold):
            a, b = Node(), Node()
            a.other, b.other = b, a
        assert len(freed) > threshold
