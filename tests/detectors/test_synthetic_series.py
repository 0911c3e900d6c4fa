"""The labelled synthetic generator: deterministic, NAB-readable, anomalies where the labels say."""

from __future__ import annotations

import json
import statistics

import pytest

from prismops.detectors.nab import probationary_length, read_corpus
from prismops.detectors.synthetic import CATEGORIES, generate_corpus, generate_series
from prismops.errors import FieldRuleError


def test_same_seed_writes_byte_identical_corpora_and_another_seed_does_not(tmp_path):
    generate_corpus(tmp_path / "a", seed=3, files_per_category=1)
    generate_corpus(tmp_path / "b", seed=3, files_per_category=1)
    generate_corpus(tmp_path / "c", seed=4, files_per_category=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == len(CATEGORIES) + 1
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


def test_the_corpus_is_nab_format_with_windows_after_probation(tmp_path):
    written = generate_corpus(tmp_path, seed=1, files_per_category=2)
    corpus = read_corpus(tmp_path)
    assert [f.relative_path for f in corpus] == sorted(s.relative_path for s in written)
    labels = json.loads((tmp_path / "combined_windows.json").read_text())
    first_row = (tmp_path / corpus[0].relative_path).read_text().splitlines()[:2]
    assert first_row[0] == "timestamp,value" and len(first_row[1].split(",")[0]) == len("2024-01-01 00:00:00")
    for series in corpus:
        probation = series.timestamps[probationary_length(len(series.timestamps))]
        expected_windows = 0 if series.relative_path.startswith("none") else 1
        assert len(labels[series.relative_path]) >= expected_windows
        for start, end in series.windows:
            assert probation < start <= end <= series.timestamps[-1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_anomalies_are_where_the_labels_say(seed):
    spikes = generate_series(seed, "spike")
    for anomaly, (first, last) in zip(spikes.anomalies, spikes.windows):
        assert first <= anomaly.onset <= last
        after = anomaly.onset + anomaly.length
        neighbours = spikes.values[anomaly.onset - 3:anomaly.onset] + spikes.values[after:after + 3]  # half an hour each side
        assert spikes.values[anomaly.onset] > max(neighbours)
    shift = generate_series(seed, "level_shift")
    for anomaly in shift.anomalies:
        day = 144  # points per day at 10 minutes: compare the same hours a day apart
        before = statistics.fmean(shift.values[anomaly.onset - day:anomaly.onset])
        after = statistics.fmean(shift.values[anomaly.onset + 1:anomaly.onset + 1 + day])
        assert (after > before) == (anomaly.size > 0)
    assert generate_series(seed, "none").windows == []


def test_unknown_category_and_too_short_series_are_refused():
    with pytest.raises(FieldRuleError) as error:
        generate_series(1, "earthquake")
    assert error.value.field == "category"
    with pytest.raises(FieldRuleError) as error:
        generate_series(1, "spike", points=300)
    assert error.value.field == "points"
