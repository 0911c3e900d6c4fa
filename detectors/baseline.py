"""The naive detector every anomaly model must beat: a fixed threshold learnt once from the warm-up."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from prismops.errors import FieldRuleError


class FixedThresholdDetector:
    """Fires when value > mean + k·std, mean and std taken over the first `warmup` values and then frozen.

    No seasonality, no adaptation: it is here to be scored beside SeriesDetector in the same run, so a
    claimed improvement is measured, not asserted.
    """

    def __init__(self, warmup: int, k: float = 3.0):
        if warmup < 2:
            raise FieldRuleError("warmup", "at_least_two", "needs >= 2 values for a standard deviation")
        if not k > 0:
            raise FieldRuleError("k", "positive", "must be > 0")
        self.warmup = warmup
        self.k = k

    def detect(self, values: Sequence[float]) -> list[bool]:
        learnt = [float(v) for v in values[: self.warmup]]
        if len(learnt) < 2:
            return [False] * len(values)
        mean, std = statistics.fmean(learnt), statistics.pstdev(learnt)
        limit = mean + self.k * std
        return [i >= self.warmup and float(v) > limit for i, v in enumerate(values)]
