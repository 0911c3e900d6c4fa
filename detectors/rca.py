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
# A child value belongs to one parent value (a version to one model, a deployment to one provider).
DIMENSION_PARENTS = {"model_version": "model", "deployment_id": "provider"}
# explain() stops listing causes once those listed explain this share of the change together.
EXPLAINED_SHARE = Decimal("0.85")
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
    return dict(zip(RCA_DIMENSIONS, _dimension_values(event)))


SHARED_DIMENSIONS_KEPT = 4096
"""Distinct combinations of RCA dimension values `shared_rca_dimensions` keeps (forgotten all at once when full)."""
_shared_dimensions: dict[tuple[str, ...], dict[str, str]] = {}


def shared_rca_dimensions(event: Mapping[str, object]) -> Mapping[str, str]:
    """rca_dimensions, as one mapping per distinct combination of values, shared and never to be changed: a
    window adds up the samples that share one before it touches its per-dimension totals (a batch has a few
    dozen combinations for hundreds of calls)."""
    values = _dimension_values(event)
    shared = _shared_dimensions.get(values)
    if shared is None:
        if len(_shared_dimensions) >= SHARED_DIMENSIONS_KEPT:
            _shared_dimensions.clear()
        shared = _shared_dimensions[values] = dict(zip(RCA_DIMENSIONS, values))
    return shared


def _dimension_values(event: Mapping[str, object]) -> tuple[str, ...]:
    values = []
    for name in RCA_DIMENSIONS:
        if name == "prompt_length":
            values.append(prompt_length_bucket(event.get("prompt_chars")))  # type: ignore[arg-type]
            continue
        value = event.get(name)
        if isinstance(value, bool):
            values.append("true" if value else "false")
        else:
            values.append(ABSENT if value is None or value == "" else str(value))
    return tuple(values)


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


def _log_ratio(actual: Decimal, expected: Decimal) -> float:
    """ln(actual / expected): 0 for no change (0 -> 0), +inf for something new, -inf for something gone."""
    if expected <= 0:
        return 0.0 if actual <= 0 else math.inf
    if actual <= 0:
        return -math.inf
    return math.log(actual / expected)


def _parent_of(child: Contribution, parents: list[Contribution]) -> Contribution | None:
    """The candidate of the parent dimension that can contain `child` (no more cost than it, in the window and in the
    baseline) and whose change is closest to the child's; None when none can."""
    feasible = [p for p in parents if child.actual <= p.actual and child.baseline <= p.baseline]
    return min(feasible, key=lambda p: (abs(p.delta - child.delta), p.value), default=None)


def _prune_hierarchy(candidates: list[Contribution]) -> list[Contribution]:
    """Keep one of a parent and its child (model and model_version, provider and deployment_id), by the ripple effect
    (Squeeze's generalised ripple effect): when the parent is the cause, its other children (the siblings) change by
    about the same ratio as the child; when the child is the cause, the siblings hardly change (or go the other way,
    as when a new version takes traffic from the old ones). Compared on ln(actual / expected)."""
    dropped: set[tuple[str, str]] = set()
    for child_dimension, parent_dimension in DIMENSION_PARENTS.items():
        parents = [c for c in candidates if c.dimension == parent_dimension]
        for child in (c for c in candidates if c.dimension == child_dimension):
            parent = _parent_of(child, parents)
            if parent is None:
                continue
            child_ratio = _log_ratio(child.actual, child.baseline)
            sibling_ratio = _log_ratio(parent.actual - child.actual, parent.baseline - child.baseline)
            child_explains = (
                sibling_ratio == 0 or child_ratio * sibling_ratio < 0 or abs(sibling_ratio) <= abs(child_ratio) / 2
            ) and not (math.isinf(child_ratio) and sibling_ratio == child_ratio)
            dropped.add((parent.dimension, parent.value) if child_explains else (child.dimension, child.value))
    return [c for c in candidates if (c.dimension, c.value) not in dropped]


def explain(window: DimensionTotals, baseline: DimensionTotals, baseline_scale: Decimal = Decimal(1),
            top: int = 3, min_share: Decimal = Decimal("0.1"), explained: Decimal | None = EXPLAINED_SHARE,
            prune: bool = True) -> list[Contribution]:
    """At most `top` dimension values that explain window.total - baseline.total·baseline_scale; [] when no change.

    Candidates explain at least `min_share` of the delta in its direction, ranked by surprise then share. With
    `prune`, a parent and its child (DIMENSION_PARENTS) that tell the same story are listed once (see
    _prune_hierarchy). With `explained`, the list stops as soon as the causes listed explain that share of the
    delta together: a single cause that explains the change is listed alone, not padded with values that only
    carry part of it in other dimensions. explained=None and prune=False list every candidate (up to `top`)."""
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
    if prune:
        candidates = _prune_hierarchy(candidates)
    if explained is None:
        return candidates[:top]
    chosen: list[Contribution] = []
    covered = Decimal(0)
    for candidate in candidates:
        if len(chosen) == top:
            break
        if covered >= explained and not candidate.new_value:
            continue
        chosen.append(candidate)
        covered += candidate.share
    return chosen


def explain_rows(window_rows: Iterable[tuple[Mapping[str, str], Decimal | int]],
                 baseline_rows: Iterable[tuple[Mapping[str, str], Decimal | int]],
                 window_s: float, baseline_s: float, top: int = 3) -> list[Contribution]:
    """explain() over raw rows; the baseline covered `baseline_s` seconds and is scaled to the window's `window_s`."""
    if not window_s > 0 or not baseline_s > 0:
        raise FieldRuleError("window_s" if not window_s > 0 else "baseline_s", "positive", "durations must be > 0")
    scale = Decimal(str(window_s)) / Decimal(str(baseline_s))
    return explain(DimensionTotals.of_rows(window_rows), DimensionTotals.of_rows(baseline_rows), scale, top)
