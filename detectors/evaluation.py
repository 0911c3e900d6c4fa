"""Run the detectors over a NAB corpus and score them side by side (what `prismops detectors eval` prints)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prismops.detectors.baseline import FixedThresholdDetector
from prismops.detectors.nab import CorpusScore, NabFile, probationary_length, score_detections
from prismops.detectors.online import SEVERITIES, DetectorConfig, SeriesDetector, Severity
from prismops.errors import FieldRuleError

DETECTOR_NAMES = ("prismops", "threshold")


def prismops_detections(series: NabFile, config: DetectorConfig | None = None, min_severity: Severity = "warning") -> list[bool]:
    """One SeriesDetector over the file; a point is a detection when its severity is at least `min_severity`."""
    detector = SeriesDetector(config)
    return [detector.update(ts, value).at_least(min_severity) for ts, value in zip(series.timestamps, series.values)]


def threshold_detections(series: NabFile, k: float = 3.0) -> list[bool]:
    """The fixed-threshold baseline, warmed up on the file's NAB probationary period."""
    return FixedThresholdDetector(max(2, probationary_length(len(series.values))), k).detect(series.values)


def evaluate(corpus: Sequence[NabFile], detectors: Sequence[str] = DETECTOR_NAMES, config: DetectorConfig | None = None,
             min_severity: Severity = "warning", threshold_k: float = 3.0,
             on_file: Callable[[str, str], None] | None = None) -> dict[str, CorpusScore]:
    """Score each named detector on every file of the corpus, in one run."""
    unknown = [name for name in detectors if name not in DETECTOR_NAMES]
    if unknown:
        raise FieldRuleError("detector", "one_of", f"{', '.join(unknown)} is not one of {', '.join(DETECTOR_NAMES)}")
    if min_severity not in SEVERITIES:
        raise FieldRuleError("min_severity", "one_of", f"must be one of {', '.join(SEVERITIES)}")
    scores: dict[str, CorpusScore] = {}
    for name in detectors:
        files = []
        for series in corpus:
            if on_file is not None:
                on_file(name, series.relative_path)
            detections = (prismops_detections(series, config, min_severity) if name == "prismops"
                          else threshold_detections(series, threshold_k))
            files.append(score_detections(series.relative_path, series.timestamps, series.windows, detections))
        scores[name] = CorpusScore(files)
    return scores
