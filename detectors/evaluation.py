"""Run the detectors over a NAB corpus and score them side by side (what `prismops detectors eval` prints).

Detectors: `prismops` (detectors/online.py, calibrated per-series score, debounced alerts, drift CUSUM),
`legacy` (the detector before issue 15, detectors/legacy.py, kept to measure before/after on the same corpus)
and `threshold` (the naive fixed-threshold baseline). Detections are computed once per file and scored with
every NAB profile (standard, reward_low_fp, reward_low_fn); a file's category is its first folder.
False alerts per 10,000 points are counted on files with no labelled window, after the probationary period.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from prismops.detectors.baseline import FixedThresholdDetector
from prismops.detectors.legacy import LegacySeriesDetector
from prismops.detectors.nab import PROFILES, CorpusScore, NabFile, probationary_length, score_detections
from prismops.detectors.online import SEVERITIES, DetectorConfig, SeriesDetector, Severity, SeverityThresholds
from prismops.errors import FieldRuleError

DETECTOR_NAMES = ("prismops", "legacy", "threshold")


def prismops_detections(series: NabFile, config: DetectorConfig | None = None, min_severity: Severity = "warning") -> list[bool]:
    """One SeriesDetector over the file; a point is a detection when its severity is at least `min_severity`."""
    detector = SeriesDetector(config)
    return [detector.update(ts, value).at_least(min_severity) for ts, value in zip(series.timestamps, series.values)]


def legacy_detections(series: NabFile, min_severity: Severity = "warning") -> list[bool]:
    detector = LegacySeriesDetector()
    return [detector.update(ts, value).at_least(min_severity) for ts, value in zip(series.timestamps, series.values)]


def threshold_detections(series: NabFile, k: float = 3.0) -> list[bool]:
    """The fixed-threshold baseline, warmed up on the file's NAB probationary period."""
    return FixedThresholdDetector(max(2, probationary_length(len(series.values))), k).detect(series.values)


def category_of(relative_path: str) -> str:
    return relative_path.split("/", 1)[0] if "/" in relative_path else "(top)"


@dataclass(frozen=True)
class DetectorReport:
    """One detector's scores on a corpus: per NAB profile, per category (standard profile), false alerts."""

    profiles: dict[str, CorpusScore]
    categories: dict[str, CorpusScore]
    clean_points: int
    clean_false_alerts: int

    @property
    def false_alerts_per_10k(self) -> float | None:
        return None if not self.clean_points else 10_000 * self.clean_false_alerts / self.clean_points


def evaluate_report(corpus: Sequence[NabFile], detectors: Sequence[str] = DETECTOR_NAMES, config: DetectorConfig | None = None,
                    min_severity: Severity = "warning", threshold_k: float = 3.0,
                    on_file: Callable[[str, str], None] | None = None) -> dict[str, DetectorReport]:
    """Score each named detector on every file, with every profile, per category, in one run."""
    unknown = [name for name in detectors if name not in DETECTOR_NAMES]
    if unknown:
        raise FieldRuleError("detector", "one_of", f"{', '.join(unknown)} is not one of {', '.join(DETECTOR_NAMES)}")
    if min_severity not in SEVERITIES:
        raise FieldRuleError("min_severity", "one_of", f"must be one of {', '.join(SEVERITIES)}")
    reports: dict[str, DetectorReport] = {}
    for name in detectors:
        per_profile: dict[str, list] = {profile: [] for profile in PROFILES}
        per_category: dict[str, list] = {}
        clean_points = clean_alerts = 0
        for series in corpus:
            if on_file is not None:
                on_file(name, series.relative_path)
            if name == "prismops":
                detections = prismops_detections(series, config, min_severity)
            elif name == "legacy":
                detections = legacy_detections(series, min_severity)
            else:
                detections = threshold_detections(series, threshold_k)
            for profile_name, profile in PROFILES.items():
                score = score_detections(series.relative_path, series.timestamps, series.windows, detections, profile)
                per_profile[profile_name].append(score)
                if profile_name == "standard":
                    per_category.setdefault(category_of(series.relative_path), []).append(score)
            if not series.windows:
                probation = probationary_length(len(detections))
                clean_points += len(detections) - probation
                clean_alerts += sum(detections[probation:])
        reports[name] = DetectorReport({p: CorpusScore(files) for p, files in per_profile.items()},
                                       {c: CorpusScore(files) for c, files in sorted(per_category.items())},
                                       clean_points, clean_alerts)
    return reports


def evaluate(corpus: Sequence[NabFile], detectors: Sequence[str] = DETECTOR_NAMES, config: DetectorConfig | None = None,
             min_severity: Severity = "warning", threshold_k: float = 3.0,
             on_file: Callable[[str, str], None] | None = None) -> dict[str, CorpusScore]:
    """Standard-profile score of each named detector on every file of the corpus."""
    reports = evaluate_report(corpus, detectors, config, min_severity, threshold_k, on_file)
    return {name: report.profiles["standard"] for name, report in reports.items()}


# -- threshold sweep (NAB's reference protocol: the best score of each profile over a grid of thresholds) --------------
# prismops: the whole severity ladder (info, warning, critical) is moved by one factor, so the grid is the warning
# tail probability p (shipped: SeverityThresholds().warning); threshold: the baseline's k. Legacy is not swept (it is
# kept for before/after at its own operating point only).
PRISMOPS_SWEEP_FACTORS = (300.0, 100.0, 30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.01)
THRESHOLD_SWEEP_K = (2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
SWEPT_DETECTORS = ("prismops", "threshold")


@dataclass(frozen=True)
class SweepPoint:
    """One threshold of the grid: the detector's report there; `shipped` marks the operating point we ship."""

    threshold: float
    report: DetectorReport
    shipped: bool = False


@dataclass(frozen=True)
class SweepReport:
    parameter: str  # "warning_p" (prismops) or "k" (threshold)
    points: list[SweepPoint]

    def best(self, profile: str) -> SweepPoint:
        """The grid point with the best normalized score of `profile` (ties: the one with fewer false alerts)."""
        scored = [p for p in self.points if p.report.profiles[profile].normalized is not None]
        if not scored:
            return self.points[0]
        return max(scored, key=lambda p: (p.report.profiles[profile].normalized, -p.report.clean_false_alerts))

    @property
    def shipped(self) -> SweepPoint | None:
        return next((p for p in self.points if p.shipped), None)


def scaled_thresholds(factor: float, base: SeverityThresholds | None = None) -> SeverityThresholds:
    """The severity ladder moved by one factor (info capped under 1 so the ladder stays valid)."""
    base = base or SeverityThresholds()
    return SeverityThresholds(info=min(0.5, base.info * factor), warning=min(0.5, base.warning * factor),
                              critical=min(0.5, base.critical * factor))


def sweep_report(corpus: Sequence[NabFile], name: str, config: DetectorConfig | None = None,
                 min_severity: Severity = "warning", threshold_k: float = 3.0,
                 grid: Sequence[float] | None = None, shipped: DetectorReport | None = None,
                 on_point: Callable[[str, float], None] | None = None) -> SweepReport:
    """Run detector `name` at every threshold of the grid. `shipped`, when given, is the report already computed at
    the shipped operating point (prismops: factor 1; threshold: `threshold_k`), reused instead of run again."""
    if name not in SWEPT_DETECTORS:
        raise FieldRuleError("detector", "sweepable", f"{name} is not swept (only {', '.join(SWEPT_DETECTORS)})")
    base = config or DetectorConfig()
    points: list[SweepPoint] = []
    if name == "prismops":
        factors = sorted(set(grid or PRISMOPS_SWEEP_FACTORS) | {1.0}, reverse=True)
        for factor in factors:
            thresholds = scaled_thresholds(factor, base.thresholds)
            if on_point is not None:
                on_point(name, thresholds.warning)
            if factor == 1.0 and shipped is not None:
                report = shipped
            else:
                report = evaluate_report(corpus, [name], replace(base, thresholds=thresholds), min_severity)[name]
            points.append(SweepPoint(thresholds.warning, report, shipped=factor == 1.0))
        return SweepReport("warning_p", points)
    for k in sorted(set(grid or THRESHOLD_SWEEP_K) | {threshold_k}):
        if on_point is not None:
            on_point(name, k)
        report = shipped if k == threshold_k and shipped is not None else \
            evaluate_report(corpus, [name], threshold_k=k)[name]
        points.append(SweepPoint(k, report, shipped=k == threshold_k))
    return SweepReport("k", points)
