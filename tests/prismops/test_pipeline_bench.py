"""The pure parts of `prismops bench pipeline` (prismops.testing.pipeline_bench), and its pass-through floor
against a real broker when one is up. Behaviour only: no timing is asserted."""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, generate_latest

from prismops.finops.budgets import parse_budgets
from prismops.finops.llm_usage import LlmPricingContext, PricedUsage, process_llm_usage
from prismops.settings import Settings
from prismops.streams.codecs import codec_for
from prismops.streams.simulation import TrafficGenerator
from prismops.testing import pipeline_bench as bench
from prismops.testing.pipeline_bench import (
    RESULT_KEYS, Burst, CpuClock, CpuUse, PassThrough, Steady, assemble_result, cost_lines_in_metrics, percentile,
    result_rows, span_rate, steady_schedule,
)


# --- percentiles and rates -----------------------------------------------------------------------------------

def test_percentile_is_nearest_rank_and_ordered():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(values, 0.50) <= percentile(values, 0.99) <= max(values)


def test_percentile_of_nothing_is_unknown():
    assert percentile([], 0.5) is None


def test_a_measurement_that_never_completed_ranks_above_every_number():
    values = [10.0, 20.0, None, 30.0]
    assert percentile(values, 0.50) == 20.0
    assert percentile(values, 0.75) == 30.0
    assert percentile(values, 0.99) is None  # the rank falls on the probe never seen
    assert percentile([None, None], 0.5) is None


def test_span_rate_runs_from_the_first_move_to_the_target():
    samples = [(0.0, 5), (1.0, 5), (2.0, 105), (3.0, 305), (4.0, 505), (5.0, 505)]
    assert span_rate(samples, base=5, count=500) == pytest.approx((505 - 105) / (4.0 - 2.0))


def test_span_rate_is_unknown_when_the_counter_never_gets_there_or_jumps_in_one_sample():
    assert span_rate([(0.0, 0), (1.0, 10)], base=0, count=20) is None
    assert span_rate([(0.0, 0), (1.0, 20)], base=0, count=20) is None
    assert span_rate([], base=0, count=1) is None


# --- counting the worker's lines -----------------------------------------------------------------------------

def test_cost_lines_are_counted_from_the_workers_metrics_page():
    registry = CollectorRegistry()
    lines = Counter("prismops_cost_lines", "cost lines produced", ["source", "priced"], registry=registry)
    unpriced = Counter("prismops_unpriced_cost_lines", "no price", ["provider", "model"], registry=registry)
    lines.labels("llm", "true").inc(1200)
    lines.labels("llm", "false").inc(3)
    lines.labels("gpu", "true").inc(40)
    unpriced.labels("openai", "x").inc(999)
    page = generate_latest(registry).decode()
    assert cost_lines_in_metrics(page) == 1243


def test_a_page_without_the_counter_counts_nothing():
    assert cost_lines_in_metrics("# HELP other x\nother_total 5.0\n") == 0


# --- the steady run's plan -------------------------------------------------------------------------------------

def test_probes_are_spaced_by_the_probe_interval_and_crossings_avoid_them():
    probes, crossings = steady_schedule(total=2000, rate_per_s=200, budget_tenants=3, probe_interval_s=0.2)
    assert len(probes) == 50  # every 40 events = 0.2 s at 200 ev/s; one moved aside per crossing it fell on
    assert all(39 <= b - a <= 41 for a, b in zip(probes, probes[1:]))
    assert sorted(crossings.values()) == [0, 1, 2]
    assert not set(crossings) & set(probes)
    assert all(0 <= index < 2000 for index in [*probes, *crossings])
    first, middle, last = sorted(crossings)
    assert first < middle < last


def test_a_tiny_run_still_gets_a_probe_and_every_crossing():
    probes, crossings = steady_schedule(total=5, rate_per_s=1, budget_tenants=2, probe_interval_s=0.2)
    assert probes and len(crossings) == 2
    assert not set(probes) & set(crossings) and len(set(probes)) == len(probes)


def test_the_budgets_file_gives_each_bench_tenant_a_tiny_daily_usd_budget_and_one_line_crosses_it():
    budgets = parse_budgets(yaml.safe_load(yaml.safe_dump(bench.budgets_document(3))))
    assert [(b.scope, b.scope_id, b.period, b.unit) for b in budgets] == [
        ("tenant", bench.budget_tenant(n), "daily", "usd") for n in range(3)]
    event = bench.crossing_event(TrafficGenerator(seed=1), bench.budget_tenant(0))
    priced = process_llm_usage(codec_for("llm_usage_event").encode(event), LlmPricingContext.from_settings(Settings()),
                               dt.datetime.now(dt.timezone.utc))
    assert isinstance(priced, PricedUsage)
    assert priced.cost_line["tenant"] == bench.budget_tenant(0)
    assert priced.cost_line["cost_usd"] >= budgets[0].limit


def test_a_probe_keeps_its_request_id_on_the_way_to_a_cost_line():
    event = bench.probe_event(TrafficGenerator(seed=1), "bench-probe-abc-7")
    priced = process_llm_usage(codec_for("llm_usage_event").encode(event), LlmPricingContext.from_settings(Settings()),
                               dt.datetime.now(dt.timezone.utc))
    assert isinstance(priced, PricedUsage)
    assert (priced.cost_line["tenant"], priced.cost_line["request_id"]) == (bench.PROBE_TENANT, "bench-probe-abc-7")


# --- the result --------------------------------------------------------------------------------------------------

# 20,000 events: the SDK 1.0 s (50 µs an event), worker 2.4 s (120), sink 0.6 s (30), gateway 0.02 s (1), Kafka
# 0.2 s (10), ClickHouse 0.4 s (20): 201 µs an event of PrismOps' processes, 231 in all
CPU = CpuUse(20_000, {"sdk": 1.0, "worker": 2.4, "sink": 0.6, "gateway": 0.02, "kafka": 0.2, "clickhouse": 0.4})


def measured(cpu: CpuUse = CPU, **steady_fields) -> dict:
    steady = Steady(target_per_s=1000, seconds=10, produced=10_000, produce_seconds=10.0, backlog=0,
                    freshness_ms=[120.0, 80.0, 300.0], reactions_ms=[900.0, 1100.0], table_ages_ms=[200.0, 700.0],
                    drain_s=2.0)
    for name, value in steady_fields.items():
        setattr(steady, name, value)
    return assemble_result(PassThrough(records=20_000, seconds=0.5, record_bytes=196.4),
                           Burst(events=20_000, produce_seconds=4.0, end_to_end_seconds=50.0,
                                 worker_events_per_s=500.0, sink_rows_per_s=800.0, cpu=cpu),
                           steady, worker_rss_kib=200 * 1024, output_path="librdkafka")


def test_the_result_has_every_documented_key_in_order():
    result = measured()
    assert list(result) == list(RESULT_KEYS)
    assert all(description for description in RESULT_KEYS.values())


def test_the_result_computes_rates_and_ratios_against_the_pass_through(monkeypatch):
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid: set(range(16)))  # P1 fits: no note on it
    result = measured()
    assert result["passthrough_msgs_per_s"] == 40_000
    assert result["sdk_produce_events_per_s"] == 5000
    assert result["end_to_end_events_per_s"] == 400
    assert result["worker_vs_passthrough"] == pytest.approx(500 / 40_000, abs=1e-4)
    assert result["end_to_end_vs_passthrough"] == pytest.approx(400 / 40_000, abs=1e-4)
    assert (result["freshness_probes_sent"], result["freshness_probes_seen"]) == (3, 3)
    assert result["freshness_p50_ms"] <= result["freshness_p99_ms"] == 300
    assert (result["budget_tenants"], result["budget_refusals_seen"], result["budget_reaction_p99_ms"]) == (2, 2, 1100)
    assert (result["live_table_age_p99_ms"], result["live_table_age_max_ms"]) == (700, 700)
    assert result["worker_peak_rss_mib"] == 200.0
    assert result["worker_output_path"] == "librdkafka"
    assert result["steady_rate_held"] is True
    assert result["notes"] == []


def test_the_notes_say_when_the_rate_was_not_held_and_what_was_never_seen():
    result = measured(produced=5000, freshness_ms=[100.0, None], reactions_ms=[None], table_ages_ms=[])
    assert result["steady_rate_held"] is False
    assert result["steady_rate_achieved_per_s"] == 500
    assert (result["freshness_probes_seen"], result["freshness_p99_ms"]) == (1, None)
    assert result["budget_reaction_p99_ms"] is None
    notes = " ".join(result["notes"])
    assert "not held" in notes and "500 of 1,000" in notes
    assert "1 of 2 probes" in notes and "1 of 1 budget crossings" in notes and "live table age" in notes


def test_cpu_per_event_adds_up_to_the_cores_a_rate_needs_of_prismops_processes():
    assert CPU.us_per_event("worker") == pytest.approx(120.0)
    assert CPU.total_us_per_event() == pytest.approx(231.0)
    assert CPU.total_us_per_event(bench.PRISMOPS_PROCESSES) == pytest.approx(201.0)
    assert CPU.cores_at(50_000) == pytest.approx(10.05)  # the broker and ClickHouse are not in it
    assert CPU.cores_at(50_000, worker_us_per_event=20.0) == pytest.approx(101 * 50_000 / 1e6)
    assert CPU.cores_at(10_000) == pytest.approx(2.01)


def test_the_result_gives_cpu_per_process_and_the_cores_p1_needs_beside_the_machines(monkeypatch):
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda pid: {0, 1})
    result = measured()
    assert (result["cpu_us_per_event_sdk"], result["cpu_us_per_event_worker"], result["cpu_us_per_event_sink"],
            result["cpu_us_per_event_gateway"], result["cpu_us_per_event_kafka"],
            result["cpu_us_per_event_clickhouse"]) == (50.0, 120.0, 30.0, 1.0, 10.0, 20.0)
    assert (result["cpu_us_per_event_prismops"], result["cpu_us_per_event_total"]) == (201.0, 231.0)
    assert (result["cores_needed_at_p1"], result["cores_needed_at_p1_worker_on_budget"]) == (10.1, 5.0)
    assert (result["cores_needed_at_steady_rate"], result["machine_cores"]) == (0.2, 2)
    assert result["notes"] == ["P1 needs at least 10.1 CPU cores of PrismOps' processes at these costs, and 5.0 "
                               "even with the worker on its budget; this machine has 2"]


def test_a_process_whose_cpu_was_not_read_leaves_no_total_and_says_so():
    result = measured(CpuUse(20_000, {**CPU.seconds, "clickhouse": None}))
    assert result["cpu_us_per_event_kafka"] == 10.0 and result["cpu_us_per_event_clickhouse"] is None
    assert result["cpu_us_per_event_total"] is None
    assert (result["cpu_us_per_event_prismops"], result["cores_needed_at_p1"]) == (201.0, 10.1)
    assert any("no CPU figure for clickhouse" in note for note in result["notes"])
    result = measured(CpuUse(20_000, {**CPU.seconds, "sink": None}))
    assert (result["cpu_us_per_event_prismops"], result["cores_needed_at_p1"]) == (None, None)


def test_the_cpu_clock_reads_what_a_live_process_used_and_nothing_for_one_never_there():
    clock = CpuClock({"self": os.getpid(), "gone": None})
    spent_until = time.process_time() + 0.05
    while time.process_time() < spent_until:
        pass
    used = clock.used()
    assert used["gone"] is None
    assert used["self"] >= 0.04  # clock ticks are 10 ms: 50 ms of CPU reads as at least 40


def test_the_table_has_one_row_per_key():
    result = measured(produced=5000)
    rows = result_rows(result)
    assert [row["key"] for row in rows] == list(RESULT_KEYS)
    assert "not held" in rows[-1]["value"]


# --- the pass-through floor on a real broker ---------------------------------------------------------------------
