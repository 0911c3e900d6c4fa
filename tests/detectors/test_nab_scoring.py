"""NAB standard-profile scoring checked by hand on tiny files, and the corpus reader's errors."""

from __future__ import annotations

from decimal import Decimal

import datetime as dt
import json

import pytest

from prismops.detectors.nab import (
    CorpusScore, probationary_length, read_corpus, scaled_sigmoid, score_detections,
)
from prismops.errors import FieldRuleError

T0 = dt.datetime(2024, 1, 1)
STAMPS = [T0 + dt.timedelta(minutes=5 * i) for i in range(40)]  # probation: floor(0.15 * 40) = 6 points
WINDOW = [(STAMPS[10], STAMPS[19])]  # 10 points wide


def fire_at(*indexes: int) -> list[bool]:
    return [i in indexes for i in range(len(STAMPS))]


def test_scaled_sigmoid_matches_the_values_nab_documents():
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(3.0) == -1.0


def test_probation_is_fifteen_percent_capped_at_750_points():
    assert probationary_length(40) == 6
    assert probationary_length(100_000) == 750


def test_hand_checked_score_of_an_early_detection_and_one_false_positive():
    # TP at the window's left edge: sigma(-1) / sigma(-1) = 1.0.
    # FP at 25: (25 - 19) / (19 - 10) = 0.6667 past the window; 2 / (1 + e^3.3333) - 1 = -0.931109; x 0.11 = -0.102422.
    # The detection at 2 is inside the probationary period and counts for nothing.
    score = score_detections("f.csv", STAMPS, WINDOW, fire_at(2, 10, 12, 25))
    assert score.raw == pytest.approx(1.0 - 0.102422, abs=1e-6)
    assert (score.null, score.perfect) == (-1.0, 1.0)
    assert score.normalized == pytest.approx(100 * (0.897578 + 1) / 2, abs=1e-4)  # 94.8789
    assert (score.true_positives, score.false_positives, score.false_negatives, score.detections) == (1, 1, 0, 3)
    assert score.precision == 0.5 and score.recall == 1.0


def test_a_late_detection_is_worth_less_than_an_early_one():
    # At the right edge: position -(19 - 19 + 1) / 10 = -0.1; 2 / (1 + e^-0.5) - 1 = 0.244919; / 0.986614 = 0.248242.
    late = score_detections("f.csv", STAMPS, WINDOW, fire_at(19))
    assert late.raw == pytest.approx(0.248242, abs=1e-6)
    assert late.normalized == pytest.approx(62.4121, abs=1e-3)


def test_never_firing_scores_zero_and_the_first_point_of_every_window_scores_a_hundred():
    assert score_detections("f.csv", STAMPS, WINDOW, fire_at()).normalized == 0.0
    assert score_detections("f.csv", STAMPS, WINDOW, fire_at(10)).normalized == pytest.approx(100.0)
    missed = score_detections("f.csv", STAMPS, WINDOW, fire_at(30))
    assert missed.raw < -1.0 and missed.normalized < 0 and missed.recall == 0.0


def test_a_false_positive_before_any_window_costs_the_full_fp_weight():
    score = score_detections("f.csv", STAMPS, WINDOW, fire_at(8, 10))
    assert score.raw == pytest.approx(1.0 - 0.11)


def test_a_file_without_windows_has_no_normalized_score_but_counts_its_false_positives():
    score = score_detections("quiet.csv", STAMPS, [], fire_at(20, 30))
    assert score.normalized is None and score.raw == pytest.approx(-0.22)
    corpus = CorpusScore([score, score_detections("f.csv", STAMPS, WINDOW, fire_at(10))])
    assert corpus.normalized == pytest.approx(100 * (1 - 0.22 + 1) / 2)
    assert (corpus.true_positives, corpus.false_positives, corpus.false_negatives) == (1, 2, 0)
    assert corpus.precision == pytest.approx(1 / 3)


def test_detections_must_cover_every_point():
    with pytest.raises(FieldRuleError) as error:
        score_detections("f.csv", STAMPS, WINDOW, [True])
    assert error.value.field == "detections"


def write_corpus(root, labels, files):
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    if labels is not None:
        (root / "combined_windows.json").write_text(json.dumps(labels))


def test_read_corpus_reads_nab_files_and_their_windows(tmp_path):
    write_corpus(tmp_path, {"a/x.csv": [["2024-01-01 00:05:00.000000", "2024-01-01 00:10:00"]]},
                 {"a/x.csv": "timestamp,value\n2024-01-01 00:00:00,1.5\n2024-01-01 00:05:00,2\n2024-01-01 00:10:00,0.000001\n"})
    (series,) = read_corpus(tmp_path)
    assert series.relative_path == "a/x.csv"
    assert [str(v) for v in series.values] == ["1.5", "2", "0.000001"]
    assert series.windows == [(dt.datetime(2024, 1, 1, 0, 5), dt.datetime(2024, 1, 1, 0, 10))]


@pytest.mark.parametrize("labels, text, field_part, rule", [
    (None, "timestamp,value\n2024-01-01 00:00:00,1\n", "combined_windows.json", "present"),
    ({}, "timestamp,value\n2024-01-01 00:00:00,1\n", "combined_windows.json", "labels_every_file"),
    ({"x.csv": [], "y.csv": []}, "timestamp,value\n2024-01-01 00:00:00,1\n", "combined_windows.json", "files_exist"),
    ({"x.csv": []}, "time,value\n2024-01-01 00:00:00,1\n", "header", "nab_columns"),
    ({"x.csv": []}, "timestamp,value\n01/01/2024,1\n", "x.csv:2 timestamp", "nab_timestamp"),
    ({"x.csv": []}, "timestamp,value\n2024-01-01 00:00:00,abc\n", "x.csv:2 value", "decimal"),
    ({"x.csv": [["2024-01-02 00:00:00", "2024-01-01 00:00:00"]]}, "timestamp,value\n2024-01-01 00:00:00,1\n",
     "combined_windows.json x.csv", "window_order"),
])
def test_read_corpus_errors_name_the_field_and_rule(tmp_path, labels, text, field_part, rule):
    write_corpus(tmp_path, labels, {"x.csv": text})
    with pytest.raises(FieldRuleError) as error:
        read_corpus(tmp_path)
    assert error.value.rule == rule and field_part in error.value.field


def test_backward_and_repeated_timestamps_are_ordered_and_merged_not_refused(tmp_path):
    (tmp_path / "x.csv").write_text("timestamp,value\n2024-01-01 00:05:00,1\n2024-01-01 00:00:00,3\n2024-01-01 00:05:00,2\n")
    (tmp_path / "combined_windows.json").write_text('{"x.csv": []}')
    (series,) = read_corpus(tmp_path)
    assert [t.minute for t in series.timestamps] == [0, 5] and series.values == [Decimal(3), Decimal("1.5")]
    assert len(series.warnings) == 2
