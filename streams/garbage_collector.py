"""How often CPython's cycle collector runs in a PrismOps process.

Every event the worker prices makes a few dozen short-lived dicts, Decimals and dataclasses. With Python's
first-generation threshold (700 allocations) the collector ran 342 times inside the timed stages of a 20,000-event
`prismops bench logic` and took 11-14 µs an event; at 10,000 it ran 8 times for 2.2-2.6 µs an event (timed with
gc.callbacks, which the machine's noise blurs less than the totals). Raising the threshold keeps the collector, so
cycles are still freed, but runs it far less often; reference counting frees everything else as before."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

PYTHON_DEFAULT_GEN0_THRESHOLD = 700


def tune_collector(gen0_threshold: int) -> tuple[int, int, int]:
    """Set the first generation's threshold (the older generations keep theirs); returns the thresholds before."""
    before = gc.get_threshold()
    gc.set_threshold(gen0_threshold, before[1], before[2])
    return before


@contextmanager
def tuned_collector(gen0_threshold: int) -> Iterator[None]:
    """`tune_collector` for a block (a benchmark measuring what a worker does), then the thresholds as they were."""
    before = tune_collector(gen0_threshold)
    try:
        yield
    finally:
        gc.set_threshold(*before)
