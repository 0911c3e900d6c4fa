"""Numenta Anomaly Benchmark: read a corpus and score given detections with the standard profile.

What is implemented (after numenta/NAB nab/sweeper.py and nab/runner.py normalize()):
- Corpus: every `*.csv` under DIR (header `timestamp,value`), labels from DIR/combined_windows.json mapping
  the file's path relative to DIR to [[start, end], …]; timestamps "YYYY-MM-DD HH:MM:SS" with optional
  fractional seconds (NAB's labels carry ".000000"). A window covers the points with start <= t <= end.
- Probationary period: the first min(floor(0.15·n), 0.15·5000) points are not scored (detections there
  count for nothing, windows entirely inside it are not counted).
- Standard profile: A_TP = 1.0, A_FP = -0.11, A_FN = -1.0, TN = 0; reward_low_FP (A_FP = -0.22) and
  reward_low_FN (A_FN = -2.0) as NAB's config/profiles.json.
- Input (not NAB's rule): rows whose timestamps go back are sorted into time order and rows sharing a timestamp
  are merged into their mean, with a warning on NabFile.warnings (daylight-saving exports), instead of refused.
- Inside window k (width w = its point count, right edge r): a detection at point i is worth
  σ(-(r - i + 1)/w) / σ(-1), with σ(x) = 2/(1 + e^(5x)) - 1 the scaled sigmoid; only the window's best
  (earliest) detection counts, and a window without one costs A_FN.
- Outside windows: each detection costs 0.11·σ(p) with p = |i - r_prev| / (w_prev - 1) measured from the
  previous window's right edge (p = 3 before any window, σ = -1 from p >= 3; w_prev = 1 counts as p = 3).
- Normalized score = 100·(raw - null)/(perfect - null); null = the detector that never fires (A_FN per
  window), perfect = A_TP per window. The corpus score sums raw, null and perfect over files first.

Simplifications versus the official NAB, on purpose:
- Detections are given (booleans), not anomaly scores; no threshold is optimised per profile, so this is
  NAB's score at the detector's own operating point.
- `perfect` counts the scored windows only; the official runner counts every labelled window, including any
  lying wholly inside a probationary period (our generator places none there, so the numbers agree).
- Windows are matched by time range rather than by exact timestamp equality.

Precision and recall (not NAB's, defined here): a window with at least one scored detection is one TP; a
scored detection outside every window is one FP; a window without detection is one FN.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from prismops.errors import FieldRuleError

LABELS_FILE = "combined_windows.json"


@dataclass(frozen=True)
class CostProfile:
    """NAB application profile; fp and fn are magnitudes, subtracted when scoring."""

    tp: float = 1.0
    fp: float = 0.11
    fn: float = 1.0


STANDARD_PROFILE = CostProfile()
LOW_FP_PROFILE = CostProfile(fp=0.22)
LOW_FN_PROFILE = CostProfile(fn=2.0)
PROFILES = {"standard": STANDARD_PROFILE, "reward_low_fp": LOW_FP_PROFILE, "reward_low_fn": LOW_FN_PROFILE}


@dataclass(frozen=True)
class NabFile:
    relative_path: str
    timestamps: list[dt.datetime]
    values: list[Decimal]
    windows: list[tuple[dt.datetime, dt.datetime]]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileScore:
    relative_path: str
    raw: float
    null: float
    perfect: float
    true_positives: int
    false_positives: int
    false_negatives: int
    detections: int

    @property
    def normalized(self) -> float | None:
        return _normalized(self.raw, self.null, self.perfect)

    @property
    def precision(self) -> float | None:
        return _ratio(self.true_positives, self.true_positives + self.false_positives)

    @property
    def recall(self) -> float | None:
        return _ratio(self.true_positives, self.true_positives + self.false_negatives)


@dataclass(frozen=True)
class CorpusScore:
    files: list[FileScore]

    @property
    def raw(self) -> float:
        return sum(f.raw for f in self.files)

    @property
    def normalized(self) -> float | None:
        return _normalized(self.raw, sum(f.null for f in self.files), sum(f.perfect for f in self.files))

    @property
    def true_positives(self) -> int:
        return sum(f.true_positives for f in self.files)

    @property
    def false_positives(self) -> int:
        return sum(f.false_positives for f in self.files)

    @property
    def false_negatives(self) -> int:
        return sum(f.false_negatives for f in self.files)

    @property
    def precision(self) -> float | None:
        return _ratio(self.true_positives, self.true_positives + self.false_positives)

    @property
    def recall(self) -> float | None:
        return _ratio(self.true_positives, self.true_positives + self.false_negatives)


def _normalized(raw: float, null: float, perfect: float) -> float | None:
    return None if perfect == null else 100.0 * (raw - null) / (perfect - null)


def _ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else numerator / denominator


def scaled_sigmoid(relative_position: float) -> float:
    """NAB's weight of a detection: 0.98661 at a window's left edge (-1), 0 at its right edge, -1 from 3 past it."""
    if relative_position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * relative_position)) - 1.0


def probationary_length(points: int, percent: float = 0.15) -> int:
    return int(min(math.floor(percent * points), percent * 5000))


def parse_timestamp(text: str, field: str = "timestamp") -> dt.datetime:
    for pattern in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f"):
        try:
            return dt.datetime.strptime(text.strip(), pattern)
        except ValueError:
            continue
    raise FieldRuleError(field, "nab_timestamp", f"{text!r} is not 'YYYY-MM-DD HH:MM:SS[.ffffff]'")


def _read_series(path: Path, relative_path: str, warnings: list[str] | None = None) -> tuple[list[dt.datetime], list[Decimal]]:
    warnings = [] if warnings is None else warnings
    timestamps: list[dt.datetime] = []
    values: list[Decimal] = []
    with path.open(newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            raise FieldRuleError("header", "nab_columns", f"{relative_path}: first line must be 'timestamp,value'")
        for line_no, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise FieldRuleError("value", "present", f"{relative_path}:{line_no}: row has no value")
            ts = parse_timestamp(row[0], field=f"{relative_path}:{line_no} timestamp")
            try:
                value = Decimal(row[1].strip())
            except InvalidOperation:
                raise FieldRuleError(f"{relative_path}:{line_no} value", "decimal", f"{row[1]!r} is not a number") from None
            if not value.is_finite():
                raise FieldRuleError(f"{relative_path}:{line_no} value", "finite", f"{row[1]!r} is not finite")
            timestamps.append(ts)
            values.append(value)
    if not timestamps:
        raise FieldRuleError("rows", "non_empty", f"{relative_path} has no data rows")
    return _ordered(timestamps, values, relative_path, warnings)


def _ordered(timestamps: list[dt.datetime], values: list[Decimal], relative_path: str,
             warnings: list[str]) -> tuple[list[dt.datetime], list[Decimal]]:
    """Rows whose timestamps go back (a daylight-saving change, a replayed export) are put in time order (stable)
    and rows sharing a timestamp are merged into their mean; each is counted in a warning instead of refused."""
    backward = sum(1 for a, b in zip(timestamps, timestamps[1:]) if b < a)
    order = sorted(range(len(timestamps)), key=lambda i: timestamps[i])
    merged_ts: list[dt.datetime] = []
    merged_values: list[list[Decimal]] = []
    for i in order:
        if merged_ts and timestamps[i] == merged_ts[-1]:
            merged_values[-1].append(values[i])
        else:
            merged_ts.append(timestamps[i])
            merged_values.append([values[i]])
    duplicates = len(timestamps) - len(merged_ts)
    if backward:
        warnings.append(f"{relative_path}: {backward} timestamps went back; rows sorted by time")
    if duplicates:
        warnings.append(f"{relative_path}: {duplicates} repeated timestamps; their rows merged into the mean value")
    return merged_ts, [v[0] if len(v) == 1 else sum(v) / len(v) for v in merged_values]


def read_corpus(directory: Path) -> list[NabFile]:
    """Every labelled CSV under `directory`, sorted by relative path; unlabelled files and dangling labels are errors."""
    directory = Path(directory)
    labels_path = directory / LABELS_FILE
    if not labels_path.is_file():
        raise FieldRuleError(LABELS_FILE, "present", f"{directory} has no {LABELS_FILE}")
    try:
        labels = json.loads(labels_path.read_text())
    except json.JSONDecodeError as exc:
        raise FieldRuleError(LABELS_FILE, "json", f"is not JSON: {exc}") from None
    if not isinstance(labels, dict):
        raise FieldRuleError(LABELS_FILE, "object", "must map each relative CSV path to a list of [start, end]")
    csv_paths = {p.relative_to(directory).as_posix(): p for p in directory.rglob("*.csv")}
    if not csv_paths:
        raise FieldRuleError("DIR", "has_csv", f"{directory} holds no .csv files")
    unlabelled = sorted(set(csv_paths) - set(labels))
    if unlabelled:
        raise FieldRuleError(LABELS_FILE, "labels_every_file", f"no entry for {', '.join(unlabelled)}")
    missing = sorted(set(labels) - set(csv_paths))
    if missing:
        raise FieldRuleError(LABELS_FILE, "files_exist", f"labels files that do not exist: {', '.join(missing)}")
    corpus = []
    for relative_path in sorted(csv_paths):
        warnings: list[str] = []
        timestamps, values = _read_series(csv_paths[relative_path], relative_path, warnings)
        windows = []
        for pair in labels[relative_path]:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise FieldRuleError(f"{LABELS_FILE} {relative_path}", "window_pair", f"{pair!r} is not [start, end]")
            start, end = (parse_timestamp(p, field=f"{LABELS_FILE} {relative_path}") for p in pair)
            if end < start:
                raise FieldRuleError(f"{LABELS_FILE} {relative_path}", "window_order", f"window ends before it starts: {pair}")
            windows.append((start, end))
        corpus.append(NabFile(relative_path, timestamps, values, sorted(windows), tuple(warnings)))
    return corpus


def window_indexes(timestamps: Sequence[dt.datetime], windows: Sequence[tuple[dt.datetime, dt.datetime]]) -> list[tuple[int, int]]:
    """Inclusive (first, last) point index of every window that covers at least one point."""
    spans = []
    for start, end in windows:
        inside = [i for i, ts in enumerate(timestamps) if start <= ts <= end]
        if inside:
            spans.append((inside[0], inside[-1]))
    return spans


def score_detections(relative_path: str, timestamps: Sequence[dt.datetime],
                     windows: Sequence[tuple[dt.datetime, dt.datetime]], detections: Sequence[bool],
                     profile: CostProfile = STANDARD_PROFILE) -> FileScore:
    """Score one file's detections (one boolean per point) as described in the module docstring."""
    if len(detections) != len(timestamps):
        raise FieldRuleError("detections", "one_per_point", f"{len(detections)} detections for {len(timestamps)} points")
    probation = probationary_length(len(timestamps))
    spans = window_indexes(timestamps, windows)
    window_of = {}
    for k, (first, last) in enumerate(spans):
        for i in range(first, last + 1):
            window_of[i] = k
    max_tp = scaled_sigmoid(-1.0)
    counted = {k for k, (first, last) in enumerate(spans) if last >= probation}
    best: dict[int, float] = {}
    fp_total, false_positives, detection_count = 0.0, 0, 0
    previous: tuple[int, int] | None = None
    for i, fired in enumerate(detections):
        k = window_of.get(i)
        if fired and i >= probation:
            detection_count += 1
            if k is not None:
                first, last = spans[k]
                weight = scaled_sigmoid(-(last - i + 1) / (last - first + 1)) * profile.tp / max_tp
                best[k] = max(best.get(k, -math.inf), weight)
            else:
                if previous is None or previous[1] == previous[0]:
                    position = 3.0
                else:
                    position = abs(previous[1] - i) / (previous[1] - previous[0])
                fp_total += scaled_sigmoid(position) * profile.fp
                false_positives += 1
        if k is not None and i == spans[k][1]:
            previous = spans[k]
    raw = fp_total + sum(best.get(k, -profile.fn) for k in counted)
    true_positives = len([k for k in counted if k in best])
    return FileScore(
        relative_path=relative_path, raw=raw, null=-profile.fn * len(counted), perfect=profile.tp * len(counted),
        true_positives=true_positives, false_positives=false_positives,
        false_negatives=len(counted) - true_positives, detections=detection_count,
    )
