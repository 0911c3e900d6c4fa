"""Measure the root-cause hints (detectors/rca.py): seeded cost cubes with injected root causes, and F1 of the top-3.

A case is one anomalous window of a multi-dimensional cost cube and the baseline it is compared with:
- dimensions as the worker keeps them (RCA_DIMENSIONS): model -> model_version (a version belongs to one model),
  provider -> deployment_id (a deployment belongs to one provider), feature, prompt-length bucket, fallback and
  cache flags; 80-250 leaf cells (a leaf = one combination seen in traffic), each with its own cost rate (USD,
  log-normal, Decimal at 6 places);
- the baseline covers `baseline_windows` windows (its totals are scaled to one window by explain()), the window
  and the baseline both carry multiplicative noise (5-15 % per leaf), so some change happens everywhere;
- one or two root causes, each one (dimension, value) pair, chosen among model_version, deployment_id, feature,
  model and prompt length (weighted toward model_version and deployment_id, the FinOps usual suspects), each
  of a kind: `increase` (the pair's leaves cost 2-5x), `new_value` (a new model_version or deployment takes
  15-50 % of its parent's traffic at 2-4x the cost) or `decrease` (the pair's leaves drop to 0-20 %, an outage
  moving cost elsewhere is not modelled). Two causes in one case go the same way (both up or both down).

Scoring, per case: the predicted set is what the explainer returns (at most `top`, default 3); a prediction is
right when it is one of the injected (dimension, value) pairs. Precision, recall and F1 are micro-averaged over
cases (summed TP, FP, FN); per-case mean F1 and hit rate (at least one cause in the top-3) are reported too.
Nothing here reads public RCA datasets (RiskLoc, Squeeze): it is our own generator.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from prismops.detectors.rca import ABSENT, DimensionTotals, explain
from prismops.errors import FieldRuleError

AMOUNT_PLACES = Decimal("0.000001")
CAUSE_KINDS = ("increase", "new_value", "decrease")
_CAUSE_DIMENSIONS = (("model_version", 4), ("deployment_id", 4), ("feature", 2), ("model", 1), ("prompt_length", 1))
_PROMPT_BUCKETS = ("<1k tok", "1k-4k tok", "4k-16k tok", "16k-64k tok")

Pair = tuple[str, str]
Explainer = Callable[[DimensionTotals, DimensionTotals, Decimal], Sequence[Pair]]


@dataclass(frozen=True)
class RcaCase:
    window: DimensionTotals
    baseline: DimensionTotals
    baseline_scale: Decimal
    causes: tuple[Pair, ...]
    kind: str  # one of CAUSE_KINDS
    leaves: int


@dataclass(frozen=True)
class RcaCaseScore:
    case: RcaCase
    predicted: tuple[Pair, ...]

    @property
    def true_positives(self) -> int:
        return len(set(self.predicted) & set(self.case.causes))

    @property
    def f1(self) -> float:
        tp = self.true_positives
        denominator = len(self.predicted) + len(self.case.causes)
        return 0.0 if denominator == 0 else 2 * tp / denominator


@dataclass(frozen=True)
class RcaScore:
    cases: list[RcaCaseScore]

    @property
    def true_positives(self) -> int:
        return sum(c.true_positives for c in self.cases)

    @property
    def false_positives(self) -> int:
        return sum(len(c.predicted) - c.true_positives for c in self.cases)

    @property
    def false_negatives(self) -> int:
        return sum(len(c.case.causes) - c.true_positives for c in self.cases)

    @property
    def precision(self) -> float | None:
        denominator = self.true_positives + self.false_positives
        return None if denominator == 0 else self.true_positives / denominator

    @property
    def recall(self) -> float | None:
        denominator = self.true_positives + self.false_negatives
        return None if denominator == 0 else self.true_positives / denominator

    @property
    def f1(self) -> float | None:
        """Micro F1 over cases: 2·TP / (2·TP + FP + FN)."""
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return None if denominator == 0 else 2 * self.true_positives / denominator

    @property
    def mean_case_f1(self) -> float | None:
        return None if not self.cases else sum(c.f1 for c in self.cases) / len(self.cases)

    @property
    def hit_rate(self) -> float | None:
        return None if not self.cases else sum(1 for c in self.cases if c.true_positives) / len(self.cases)


def _money(value: float) -> Decimal:
    return Decimal(repr(max(0.0, value))).quantize(AMOUNT_PLACES)


def generate_case(seed: int, index: int, baseline_windows: int = 12, kind: str | None = None,
                  cause_count: int | None = None) -> RcaCase:
    """One seeded case; the same (seed, index) always gives the same cube, causes and noise."""
    if baseline_windows < 1:
        raise FieldRuleError("baseline_windows", "positive", "must be >= 1")
    rng = random.Random(f"rca/{seed}/{index}")
    kind = kind or rng.choice(CAUSE_KINDS)
    if kind not in CAUSE_KINDS:
        raise FieldRuleError("kind", "one_of", f"{kind!r} is not one of {', '.join(CAUSE_KINDS)}")
    cause_count = cause_count or rng.choice((1, 1, 2))
    models = [f"model-{m}" for m in range(rng.randint(2, 4))]
    versions = {m: [f"{m}@v{v}" for v in range(rng.randint(1, 3))] for m in models}
    providers = [f"provider-{p}" for p in range(rng.randint(1, 3))]
    deployments = {p: [f"{p}/dep-{d}" for d in range(rng.randint(1, 4))] for p in providers}
    features = [f"feature-{f}" for f in range(rng.randint(2, 6))]
    leaves: dict[tuple[str, ...], float] = {}
    names = ("model", "model_version", "provider", "deployment_id", "feature", "prompt_length", "fallback", "cache_hit")
    for _ in range(rng.randint(80, 250)):
        model, provider = rng.choice(models), rng.choice(providers)
        leaf = (model, rng.choice(versions[model]), provider, rng.choice(deployments[provider]), rng.choice(features),
                rng.choice(_PROMPT_BUCKETS), rng.choice(("false", "false", "false", "true")), rng.choice(("false", "true")))
        leaves[leaf] = rng.lognormvariate(0.0, 1.0)
    noise = rng.uniform(0.05, 0.15)
    window = {leaf: rate * max(0.0, 1 + rng.gauss(0, noise)) for leaf, rate in leaves.items()}
    baseline = {leaf: rate * baseline_windows * max(0.0, 1 + rng.gauss(0, noise / 3)) for leaf, rate in leaves.items()}
    # causes: distinct dimensions, values present in traffic (or, for new_value, a new child of a present parent)
    weights = [w for _, w in _CAUSE_DIMENSIONS]
    dimensions: list[str] = []
    while len(dimensions) < cause_count:
        dimension = rng.choices([d for d, _ in _CAUSE_DIMENSIONS], weights)[0]
        if kind == "new_value" and dimension not in ("model_version", "deployment_id"):
            dimension = rng.choice(("model_version", "deployment_id"))
        if dimension not in dimensions:
            dimensions.append(dimension)
    causes: list[Pair] = []
    total = sum(window.values())
    for dimension in dimensions:
        column = names.index(dimension)
        if kind == "new_value":
            parent_column = 0 if dimension == "model_version" else 2
            parent = rng.choice(sorted({leaf[parent_column] for leaf in window}))
            value = f"{parent}@new" if dimension == "model_version" else f"{parent}/dep-new"
            share, factor = rng.uniform(0.15, 0.5), rng.uniform(2.0, 4.0)
            for leaf in [leaf for leaf in window if leaf[parent_column] == parent]:
                moved = window[leaf] * share
                window[leaf] -= moved
                new_leaf = leaf[:column] + (value,) + leaf[column + 1:]
                window[new_leaf] = window.get(new_leaf, 0.0) + moved * factor
        else:
            present = sorted({leaf[column] for leaf in window})
            # a cause worth finding moves at least 5 % of the window's cost: pick among values that carry enough
            carrying = [v for v in present if sum(c for leaf, c in window.items() if leaf[column] == v) >= 0.05 * total]
            taken = {v for d, v in causes}
            candidates = [v for v in (carrying or present) if v not in taken]
            value = rng.choice(candidates)
            factor = rng.uniform(2.0, 5.0) if kind == "increase" else rng.uniform(0.0, 0.2)
            for leaf in window:
                if leaf[column] == value:
                    window[leaf] *= factor
        causes.append((dimension, value))

    def totals(cells: dict[tuple[str, ...], float]) -> DimensionTotals:
        result = DimensionTotals()
        for leaf, cost in cells.items():
            result.add(dict(zip(names, (v if v else ABSENT for v in leaf))), _money(cost))
        return result

    return RcaCase(totals(window), totals(baseline), Decimal(1) / Decimal(baseline_windows), tuple(causes), kind,
                   len(leaves))


def prismops_explainer(top: int = 3) -> Explainer:
    """detectors/rca.py's explain(), as (dimension, value) pairs."""
    def run(window: DimensionTotals, baseline: DimensionTotals, scale: Decimal) -> list[Pair]:
        return [(c.dimension, c.value) for c in explain(window, baseline, scale, top=top)]
    return run


def largest_delta_explainer(top: int = 3) -> Explainer:
    """A naive ranking (largest absolute change of any pair), for comparison: no surprise, no hierarchy."""
    def run(window: DimensionTotals, baseline: DimensionTotals, scale: Decimal) -> list[Pair]:
        pairs = set(window.by_value) | set(baseline.by_value)
        deltas = {p: abs(window.by_value.get(p, Decimal(0)) - baseline.by_value.get(p, Decimal(0)) * scale) for p in pairs}
        return sorted(pairs, key=lambda p: (-deltas[p], p))[:top]
    return run


EXPLAINERS: dict[str, Callable[[int], Explainer]] = {"prismops": prismops_explainer, "largest_delta": largest_delta_explainer}


def score_rca(cases: Sequence[RcaCase], explainer: Explainer, top: int = 3) -> RcaScore:
    """Run the explainer on every case and keep its first `top` predictions."""
    scores = []
    for case in cases:
        predicted = tuple(dict.fromkeys(explainer(case.window, case.baseline, case.baseline_scale)))[:top]
        scores.append(RcaCaseScore(case, predicted))
    return RcaScore(scores)


def generate_cases(seed: int, count: int, baseline_windows: int = 12) -> list[RcaCase]:
    if count < 1:
        raise FieldRuleError("cases", "positive", "must be >= 1")
    return [generate_case(seed, i, baseline_windows) for i in range(count)]
