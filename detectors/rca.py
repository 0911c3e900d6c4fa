"""Root-cause hints: which dimension values explain an anomalous window's change against its baseline.

Contribution analysis after Adtributor (Bhagwan et al., NSDI 2014), simplified to a ranking:
- every row adds its value (cost, errors, tokens) to each of its (dimension, value) pairs;
- the baseline is scaled to the window's duration; for each pair, delta = window - scaled baseline and
  share = delta / (window total - scaled baseline total), so a dimension's shares sum to 1;
- surprise is the Jensen-Shannon term between the pair's share of the baseline (p) and of the window (q):
  0.5·(p·ln(2p/(p+q)) + q·ln(2q/(p+q))). A value that is everywhere (provider=openai on all traffic) has a
  share of 1 but no surprise, so it is not offered as a cause; a new model_version has the most surprise;
- pairs explaining at least `min_share` of the delta in its direction are ranked by surprise, then share.

Amounts stay Decimal; shares are Decimal rounded half-even to 4 places (0.1234 = 12.34 %); surprise is a float.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from prismops.errors import FieldRuleError

RCA_DIMENSIONS = ("model", "model_version", "deployment_id", "provider", "feature", "prompt_length", "fallback", "cache_hit")
ABSENT = "(none)"
SHARE_QUANTUM = Decimal("0.0001")
AMOUNT_QUANTUM = Decimal("0.000000000001")
# Upper bounds in characters; roughly 4 characters a token, so 1k, 4k, 16k, 64k tokens and beyond.
PROMPT_LENGTH_BUCKETS = ((4_000, "<1k tok"), (16_000, "1k-4k tok"), (64_000, "4k-16k tok"), (256_000, "16k-64k tok"))


def prompt_length_bucket(prompt_chars: int | None) -> str:
    """Coarse prompt size, from prompt_chars (the event never carries the prompt itself)."""
    if prompt_chars is None:
        return ABSENT
    if isinstance(prompt_chars, bool) or not isinstance(prompt_chars, int) or prompt_chars < 0:
        raise FieldRuleError("prompt_chars", "non_negative_int", f"must be a non-negative integer, got {prompt_chars!r}")
    for upper, label in PROMPT_LENGTH_BUCKETS:
        if prompt_chars < upper:
            return label
    return ">=64k tok"


def rca_dimensions(event: Mapping[str, object]) -> dict[str, str]:
    """The RCA dimensions of an LLM usage event (or cost line); missing ones read "(none)", flags "true"/"false"."""
    dimensions = {}
    for name in RCA_DIMENSIONS:
        if name == "prompt_length":
            dimensions[name] = prompt_length_bucket(event.get("prompt_chars"))  # type: ignore[arg-type]
            continue
        value = event.get(name)
        if isinstance(value, bool):
            dimensions[name] = "true" if value else "false"
        else:
            dimensions[name] = ABSENT if value is None or value == "" else str(value)
    return dimensions


@dataclass
class DimensionTotals:
    """An additive amount in total and per (dimension, value); what a window keeps so RCA needs no raw rows."""

    total: Decimal = Decimal(0)
    by_value: dict[tuple[str, str], Decimal] = field(default_factory=dict)

    def add(self, dimensions: Mapping[str, str], amount: Decimal | int) -> None:
        amount = Decimal(amount)
        self.total += amount
        for pair in dimensions.items():
            self.by_value[pair] = self.by_value.get(pair, Decimal(0)) + amount

    def merge(self, other: "DimensionTotals") -> None:
        self.total += other.total
        for pair, amount in other.by_value.items():
            self.by_value[pair] = self.by_value.get(pair, Decimal(0)) + amount

    @classmethod
    def of_rows(cls, rows: Iterable[tuple[Mapping[str, str], Decimal | int]]) -> "DimensionTotals":
        totals = cls()
        for dimensions, amount in rows:
            totals.add(dimensions, amount)
        return totals


@dataclass(frozen=True)
class Contribution:
    dimension: str
    value: str
    actual: Decimal
    baseline: Decimal  # scaled to the window's duration
    delta: Decimal
    share: Decimal
    surprise: float
    new_value: bool


def _js_term(p: float, q: float) -> float:
    middle = (p + q) / 2
    return 0.5 * sum(x * math.log(x / middle) for x in (p, q) if x > 0)


def explain(window: DimensionTotals, baseline: DimensionTotals, baseline_scale: Decimal = Decimal(1),
            top: int = 3, min_share: Decimal = Decimal("0.1")) -> list[Contribution]:
    """The `top` dimension values that best explain window.total - baseline.total·baseline_scale; [] when no change."""
    if baseline_scale < 0:
        raise FieldRuleError("baseline_scale", "non_negative", "must be >= 0")
    baseline_total = baseline.total * baseline_scale
    total_delta = window.total - baseline_total
    if total_delta == 0:
        return []
    candidates = []
    for pair in set(window.by_value) | set(baseline.by_value):
        actual = window.by_value.get(pair, Decimal(0))
        expected = baseline.by_value.get(pair, Decimal(0)) * baseline_scale
        share = (actual - expected) / total_delta
        if share < min_share:
            continue
        p = float(expected / baseline_total) if baseline_total else 0.0
        q = float(actual / window.total) if window.total else 0.0
        candidates.append(Contribution(
            dimension=pair[0], value=pair[1], actual=actual.quantize(AMOUNT_QUANTUM),
            baseline=expected.quantize(AMOUNT_QUANTUM), delta=(actual - expected).quantize(AMOUNT_QUANTUM),
            share=share.quantize(SHARE_QUANTUM, rounding=ROUND_HALF_EVEN), surprise=_js_term(p, q),
            new_value=expected == 0 and actual != 0,
        ))
    candidates.sort(key=lambda c: (-round(c.surprise, 12), -c.share, c.dimension, c.value))
    return candidates[:top]


def explain_rows(window_rows: Iterable[tuple[Mapping[str, str], Decimal | int]],
                 baseline_rows: Iterable[tuple[Mapping[str, str], Decimal | int]],
                 window_s: float, baseline_s: float, top: int = 3) -> list[Contribution]:
    """explain() over raw rows; the baseline covered `baseline_s` seconds and is scaled to the window's `window_s`."""
    if not window_s > 0 or not baseline_s > 0:
        raise FieldRuleError("window_s" if not window_s > 0 else "baseline_s", "positive", "durations must be > 0")
    scale = Decimal(str(window_s)) / Decimal(str(baseline_s))
    return explain(DimensionTotals.of_rows(window_rows), DimensionTotals.of_rows(baseline_rows), scale, top)
