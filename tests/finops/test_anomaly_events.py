"""The plain half of the anomaly agent: LLM cost lines → per-partition watch → anomaly_event records."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest

from prismops.finops.anomaly_events import (
    CANDIDATE_WINDOWS, LATENCY_SAMPLES_KEPT, STATE_META, PartitionWatch, SeriesState, StateTooLarge, anomaly_id, anomaly_record,
    fit_series_state, new_watch, reportable, usage_sample,
)
from prismops.detectors.series import SeriesKey, WindowAggregate
from prismops.settings import DetectorSettings
from prismops.sinks.webhook import anomaly_slack_payload
from prismops.streams.codecs import codec_for

START = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.timezone.utc)
SETTINGS = DetectorSettings(window_s=60, grace_s=5, warmup_windows=10, baseline_windows=20)


def line(at: dt.datetime, rng: random.Random, *, version: str = "v1", factor: int = 1, source: str = "llm") -> dict:
    tokens = rng.randint(900, 1100) * factor
    return {
        "source": source, "event_time": at, "tenant": "acme", "service": "support-bot", "feature": "answer",
        "provider": "openai", "model": "gpt-4o-mini", "model_version": version, "deployment_id": "eu-1",
        "input_tokens": tokens, "output_tokens": 200 * factor, "latency_ms": rng.randint(300, 500), "status": "ok",
        "prompt_chars": 3500, "cache_hit": False, "fallback": False, "cost_usd": Decimal(tokens) * Decimal("0.00000015"),
    }


def feed(watch: PartitionWatch, windows: int, rng: random.Random, offset: int = 0, *, spike_at: int | None = None):
    scored = []
    for w in range(windows):
        start = START + dt.timedelta(minutes=w)
        lines = [line(start + dt.timedelta(seconds=s * 3), rng) for s in range(20)]
        if w == spike_at:
            lines += [line(start + dt.timedelta(seconds=s + 0.5), rng, version="v2", factor=5) for s in range(40)]
        for item in sorted(lines, key=lambda x: x["event_time"]):
            offset += 1
            scored += watch.observe(usage_sample(item), offset, START).scored
    return scored, offset


def test_only_llm_lines_feed_the_detectors():
    rng = random.Random(1)
    assert usage_sample(line(START, rng, source="gpu")) is None
    sample = usage_sample(line(START, rng))
    assert sample is not None and sample.cost > 0 and sample.dimensions["model_version"] == "v1"


def test_a_new_version_spike_yields_one_cost_anomaly_with_model_version_first_and_a_valid_record():
    rng = random.Random(3)
    watch = PartitionWatch(new_watch(SETTINGS), partition=0)
    scored, _ = feed(watch, 25, rng, spike_at=20)
    anomalies = [s for s in scored if s.result.is_anomaly and s.metric == "cost" and s.key.grouping == "tenant_model"]
    assert [a.window_start for a in anomalies] == [START + dt.timedelta(minutes=20)]
    record = anomaly_record(anomalies[0], START)
    assert (record["series"], record["series_key"], record["tenant"], record["model"]) == (
        "tenant_model", "acme/gpt-4o-mini", "acme", "gpt-4o-mini")
    assert record["contributors"][0]["dimension"] == "model_version" and record["contributors"][0]["value"] == "v2"
    assert isinstance(record["actual_cost_usd"], Decimal) and record["actual_cost_usd"] > record["expected_cost_usd"]
    assert record["anomaly_id"] == anomaly_id(anomalies[0]), "deterministic: a replay repeats the id"
    assert "model_version=v2" in record["message"]
    codec = codec_for("anomaly_event")
    assert codec.decode(codec.encode(record)) == record
    payload = anomaly_slack_payload(record)
    assert record["anomaly_id"] in payload["blocks"][-1]["elements"][0]["text"] and "v2" in payload["blocks"][2]["text"]["text"]


def test_replayed_offsets_are_skipped_and_state_round_trips_without_relearning():
    rng_a, rng_b = random.Random(5), random.Random(5)
    whole = PartitionWatch(new_watch(SETTINGS), partition=1)
    restored = PartitionWatch(new_watch(SETTINGS), partition=1)
    feed(whole, 12, rng_a)
    _, offset = feed(restored, 12, rng_b)
    records = dict(restored.changed_records(START, 900_000))
    restored = PartitionWatch.restore(new_watch(SETTINGS), 1, records)
    assert restored.is_replay(offset) and not restored.is_replay(offset + 1)
    later_a = feed(whole, 6, random.Random(9), offset)[0]
    later_b = feed(restored, 6, random.Random(9), offset)[0]
    assert [(s.metric, s.result.z) for s in later_a] == [(s.metric, s.result.z) for s in later_b]


def test_a_quiet_partition_closes_its_window_by_processing_time_without_jumping_to_the_clock():
    rng = random.Random(2)
    watch = PartitionWatch(new_watch(SETTINGS), partition=0)
    arrived = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)  # a backfill: events an hour old
    for s in range(10):
        watch.observe(usage_sample(line(START + dt.timedelta(seconds=s), rng)), s, arrived)
    assert watch.idle_tick(arrived + dt.timedelta(seconds=10), idle_close_s=30).scored == []
    closed = watch.idle_tick(arrived + dt.timedelta(seconds=70), idle_close_s=30).scored
    assert {s.window_start for s in closed} == {START}


def test_severity_floor():
    rng = random.Random(3)
    watch = PartitionWatch(new_watch(SETTINGS), partition=0)
    scored, _ = feed(watch, 25, rng, spike_at=20)
    flagged = [s for s in scored if s.result.is_anomaly]
    assert flagged and all(reportable(s, "info") for s in flagged)
    assert all(not reportable(s, "critical") for s in flagged if s.result.severity != "critical")


def test_state_is_per_series_windows_and_models_plus_the_partition_record_and_only_changes_are_rewritten():
    rng = random.Random(4)
    watch = PartitionWatch(new_watch(SETTINGS), partition=0)
    feed(watch, 3, rng)
    first = dict(watch.changed_records(START, 900_000))
    series = ("service_feature:support-bot/answer", "tenant_model:acme/gpt-4o-mini")
    assert set(first) == {STATE_META} | {f"{kind}|{key}" for kind in "mw" for key in series}
    assert max(len(v) for v in first.values()) < 100_000
    assert [name for name, _ in watch.changed_records(START, 900_000)] == [STATE_META], "nothing changed since"
    other = line(START + dt.timedelta(minutes=2, seconds=59), rng) | {"tenant": "globex"}
    watch.observe(usage_sample(other), 1000, START)
    changed = [name for name, _ in watch.changed_records(START, 900_000)]
    assert changed == ["w|service_feature:support-bot/answer", "w|tenant_model:globex/gpt-4o-mini", STATE_META], \
        "a line within an open window rewrites windows only: the detectors (the bulk) wait for a window to close"


def test_a_save_cut_short_before_the_partition_record_never_counts_a_line_twice_on_catch_up():
    """Series records are written first and the partition record last; a crash between them leaves series
    ahead of it. Lines read back after the restore are applied only to the series that lack them."""
    rng_whole, rng_cut = random.Random(6), random.Random(6)
    whole = PartitionWatch(new_watch(SETTINGS), partition=2)
    cut = PartitionWatch(new_watch(SETTINGS), partition=2)
    _, offset = feed(whole, 4, rng_whole)
    feed(cut, 4, rng_cut)
    saved = dict(cut.changed_records(START, 900_000))  # complete save at `offset`
    extra = [line(START + dt.timedelta(minutes=4, seconds=s), random.Random(s)) for s in range(5)]
    extra[2] = extra[2] | {"tenant": "globex"}
    for i, item in enumerate(extra):
        whole.observe(usage_sample(item), offset + 1 + i, START)
        cut.observe(usage_sample(item), offset + 1 + i, START)
    newer = cut.changed_records(START, 900_000)
    # the crash: the globex series record landed, acme's and the partition record did not
    saved.update((name, value) for name, value in newer if "tenant_model:globex" in name)
    restored = PartitionWatch.restore(new_watch(SETTINGS), 2, saved)
    assert restored.last_offset == offset
    for i, item in enumerate(extra):  # the catch-up reads them back
        restored.observe(usage_sample(item), offset + 1 + i, START)

    def windows(watch: PartitionWatch) -> dict:
        return {(str(k), s): (a.requests, a.cost) for (k, s), a in watch.watch.windows.open.items()}
    assert windows(restored) == windows(whole)
    assert windows(restored)[("tenant_model:globex/gpt-4o-mini", START + dt.timedelta(minutes=4))][0] == 1


def big_series(samples: int, dimension_values: int = 1) -> SeriesState:
    aggregate = WindowAggregate()
    rng = random.Random(8)
    aggregate.latencies_ms.extend(rng.uniform(100, 900) for _ in range(samples))
    for v in range(dimension_values):
        aggregate.cost_by_dimension.add({"customer": f"customer-{v:07d}" * 4}, Decimal(1))
    key = SeriesKey("tenant_model", ("acme", "gpt-4o-mini"))
    return SeriesState(key, 10, {START: aggregate}, {}, None)


def test_a_busy_series_sheds_exact_latency_samples_to_fit_one_record_and_keeps_its_p95_close():
    state = big_series(200_000)
    exact_p95 = state.open[START].latency_p95_ms()
    value, shed = fit_series_state(state, 200_000)
    assert len(value) <= 200_000 and shed and "latency" in shed[0]
    assert len(state.open[START].latencies_ms) == LATENCY_SAMPLES_KEPT
    assert abs(state.open[START].latency_p95_ms() - exact_p95) / exact_p95 < 0.01


def test_a_small_series_is_stored_whole_and_one_that_cannot_fit_raises():
    value, shed = fit_series_state(big_series(100), 200_000)
    assert shed == [] and len(value) < 200_000
    with pytest.raises(StateTooLarge) as raised:
        fit_series_state(big_series(100), 500)
    assert raised.value.rule == "max_bytes"


def test_per_dimension_totals_go_last_and_a_series_that_never_fits_is_reset_not_stored_oversized():
    state = big_series(10, dimension_values=30_000)
    value, shed = fit_series_state(state, 100_000)
    assert len(value) <= 100_000 and shed[-1].startswith("per-dimension totals")
    watch = PartitionWatch(new_watch(SETTINGS), partition=0)
    feed(watch, 2, random.Random(1))
    records = watch.changed_records(START, 300)
    assert all(len(v) <= 600 for _, v in records[:-1]) and len(watch.shed) >= 2 and "reset" in watch.shed[0]
    assert not watch.watch.windows.open and not watch.watch.detectors.detectors


def test_series_beyond_the_partitions_cap_are_watched_as_one_other_series_and_the_cap_survives_a_restore():
    rng = random.Random(11)
    watch = PartitionWatch(new_watch(SETTINGS), partition=3, max_series=3)
    for offset, tenant in enumerate(["a", "b", "c", "d", "e", "a", "d"], start=1):
        watch.observe(usage_sample(line(START, rng) | {"tenant": tenant}), offset, START)
    tenants = {key.values[0] for key, _ in watch.watch.windows.open if key.grouping == "tenant_model"}
    assert tenants == {"a", "b", "c", "(other)"}
    services = {key for key, _ in watch.watch.windows.open if key.grouping == "service_feature"}
    assert services == {SeriesKey("service_feature", ("support-bot", "answer"))}, "the other grouping is untouched"
    assert watch.folded == 3  # d, e and d again
    (other,) = [agg for (key, _), agg in watch.watch.windows.open.items() if key.values[0] == "(other)"]
    assert other.requests == 3

    records = dict(watch.changed_records(START, 10**7))
    restored = PartitionWatch.restore(new_watch(SETTINGS), 3, records, max_series=3)
    restored.observe(usage_sample(line(START, rng) | {"tenant": "f"}), 8, START)
    restored.observe(usage_sample(line(START, rng) | {"tenant": "b"}), 9, START)
    assert restored.folded == 1, "f folds after the restore; b is still watched on its own"


def test_a_folded_sample_reads_other_for_its_grouping_only_and_equal_samples_share_the_folded_mapping():
    rng = random.Random(13)
    watch = PartitionWatch(new_watch(SETTINGS), partition=0, max_series=1)
    watch.admit(usage_sample(line(START, rng) | {"tenant": "a"}))
    first, first_keys = watch.admit(usage_sample(line(START, rng) | {"tenant": "b"}))
    again, again_keys = watch.admit(usage_sample(line(START, rng) | {"tenant": "b"}))
    assert dict(first.fields) == {"tenant": "(other)", "model": "(other)", "service": "support-bot", "feature": "answer"}
    assert again.fields is first.fields and again_keys == first_keys
    assert first_keys == [SeriesKey("tenant_model", ("(other)", "(other)")),
                          SeriesKey("service_feature", ("support-bot", "answer"))]
    other_service, _ = watch.admit(usage_sample(line(START, rng) | {"tenant": "b", "service": "search"}))
    assert dict(other_service.fields) == {"tenant": "(other)", "model": "(other)", "service": "(other)",
                                          "feature": "(other)"}


def test_without_a_cap_every_series_is_its_own():
    rng = random.Random(12)
    watch = PartitionWatch(new_watch(SETTINGS), partition=0)
    for offset, tenant in enumerate("abcdefgh", start=1):
        watch.observe(usage_sample(line(START, rng) | {"tenant": tenant}), offset, START)
    assert len({key for key, _ in watch.watch.windows.open if key.grouping == "tenant_model"}) == 8
    assert watch.folded == 0


def test_state_of_an_older_detector_format_is_dropped_and_relearnt_instead_of_failing_the_start():
    from prismops.detectors.online import STATE_FORMAT_VERSION

    rng = random.Random(13)
    watch = PartitionWatch(new_watch(SETTINGS), partition=0)
    feed(watch, 3, rng)
    records = dict(watch.changed_records(START, 10**7))
    older = {name: value.replace(b" %d " % STATE_FORMAT_VERSION, b" %d " % (STATE_FORMAT_VERSION - 1), 1)
             for name, value in records.items()}
    restored = PartitionWatch.restore(new_watch(SETTINGS), 0, older)
    assert restored.relearning and restored.watch.windows.open == {} and restored.last_offset == -1
    restored.observe(usage_sample(line(START + dt.timedelta(hours=1), rng)), 1000, START)
    assert restored.watch.windows.open, "it learns again from the next line"
    current = PartitionWatch.restore(new_watch(SETTINGS), 0, records)
    assert not current.relearning and current.watch.windows.open


def test_a_record_that_is_not_detector_state_still_fails_loudly():
    with pytest.raises(Exception, match="not PrismOps detector state"):
        PartitionWatch.restore(new_watch(SETTINGS), 0, {"meta": b"garbage\n"})


def test_a_series_is_watched_on_its_own_once_it_had_traffic_in_enough_windows():
    rng = random.Random(13)
    watch = PartitionWatch(new_watch(SETTINGS), partition=0, promote_after_windows=3)
    minute = dt.timedelta(seconds=60)

    def tenant_series() -> set[str]:
        return {key.values[0] for key, _ in watch.watch.windows.open if key.grouping == "tenant_model"}

    offset = 0
    for window in range(3):
        for tenant in ["steady", "steady", "once"] if window == 0 else ["steady"]:
            offset += 1
            watch.observe(usage_sample(line(START + window * minute, rng) | {"tenant": tenant}), offset, START)
        if window < 2:
            assert "steady" not in tenant_series(), f"window {window}: still counted in (other)"
    assert "steady" in tenant_series() and "once" not in tenant_series()
    assert watch.folded == 4  # steady twice and once in window 0, steady in window 1
    assert "once" in {key.values[0] for key in watch.candidates}

    # a candidate quiet for CANDIDATE_WINDOWS is forgotten; a watched series stays watched after a restore
    later = START + (CANDIDATE_WINDOWS + 1) * minute
    watch.observe(usage_sample(line(later, rng) | {"tenant": "steady"}), offset + 1, later)
    assert not {key.values[0] for key in watch.candidates} & {"once"}
    records = dict(watch.changed_records(later, 10**7))
    restored = PartitionWatch.restore(new_watch(SETTINGS), 0, records, promote_after_windows=3)
    restored.observe(usage_sample(line(later, rng) | {"tenant": "steady"}), offset + 2, later)
    assert restored.folded == 0


def test_promotion_still_respects_the_partitions_cap():
    rng = random.Random(14)
    watch = PartitionWatch(new_watch(SETTINGS), partition=0, max_series=2, promote_after_windows=2)
    offset = 0
    for window in range(2):
        for tenant in "abc":
            offset += 1
            moment = START + dt.timedelta(seconds=60 * window)
            watch.observe(usage_sample(line(moment, rng) | {"tenant": tenant}), offset, moment)
    assert {key.values[0] for key in watch.series["tenant_model"]} == {"a", "b"}
    assert watch.folded == 4  # a, b and c in the first window, c again in the second: the cap is full
