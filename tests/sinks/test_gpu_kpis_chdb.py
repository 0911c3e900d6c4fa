"""Migration 0017 on a current ClickHouse engine (chdb): the GPU KPI views and `reports.gpu_kpis` on a few
hand-built allocation rows (gpu_kpi_rows.py) give the hand-computed values exactly, also with every row stored
twice (FINAL), and a mid-day on-demand price change prices each spot window at its start."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction

import pytest

from gpu_kpi_rows import DAY, EXPECTED_ROWS, EXPECTED_TOTAL, allocation_records
from prismops.finops.gpu_pricing import GpuPrice, load_gpu_catalog
from prismops.sinks import reports
from prismops.sinks.chdb_client import ChdbClient
from prismops.sinks.clickhouse import allocation_row

DATABASE = "prismops_gpu_kpis"


def insert(client: ChdbClient, ingested_at: dt.datetime) -> None:
    rows = [allocation_row(r, kafka_partition=0, kafka_offset=i, ingested_at=ingested_at)
            for i, r in enumerate(allocation_records())]
    client.execute(f"INSERT INTO {DATABASE}.gpu_allocations ({', '.join(rows[0])}) VALUES", rows)


@pytest.fixture()
def engine(tmp_path) -> Iterator[ChdbClient]:
    client = ChdbClient.migrated(str(tmp_path / "chdb"), DATABASE)
    insert(client, dt.datetime(2026, 11, 11, tzinfo=dt.timezone.utc))
    yield client
    client.disconnect()


def kpis(engine: ChdbClient, catalog=None, by=("pool",)) -> reports.Report:
    return reports.gpu_kpis(engine, DATABASE, by, since=DAY, until=DAY + dt.timedelta(days=1),
                            catalog=catalog or load_gpu_catalog())


def test_views_hold_the_hand_computed_sums(engine: ChdbClient) -> None:
    windows = engine.execute(
        f"SELECT pool, window_start, gpus, capacity_gpu_seconds, allocated_gpu_seconds, utilized_gpu_seconds,"
        f" window_cost_usd FROM {DATABASE}.gpu_pool_windows ORDER BY pool, window_start")
    assert [(w[0], w[2], w[3]) for w in windows] == [
        ("c1/n1", 2, 7200), ("c1/n1", 2, 7200), ("c1/n1", 2, 7200),
        ("c1/n2", 1, 3600), ("c1/n2", 1, 3600), ("c1/n2", 1, 3600), ("c1/n2", 1, 3600),
        ("c1/n3", 0, 0),
    ]
    assert [w[5] for w in windows] == [Decimal(v) for v in (5400, 3600, 7200, 2700, 3600, 0, 1800, 0)]
    assert sum(w[6] for w in windows) == Decimal("56.40")
    daily = engine.execute(
        f"SELECT pool, windows, cost_usd, known_cost_usd, unknown_capacity_windows, capacity_gpu_seconds,"
        f" utilized_gpu_seconds, utilization, usd_per_gpu_hour FROM {DATABASE}.gpu_kpis_daily ORDER BY pool")
    assert daily == [
        ("c1/n1", 3, Decimal("41.28"), Decimal("41.28"), 0, 21600, Decimal(16200), Decimal("0.75"), Decimal("6.88")),
        ("c1/n2", 4, Decimal("10"), Decimal("10"), 0, 14400, Decimal(8100), Decimal("0.5625"), Decimal("2.5")),
        ("c1/n3", 1, Decimal("5.12"), Decimal(0), 1, 0, Decimal(0), None, None),
    ]
    jobs = engine.execute(f"SELECT tenant, job_key, window_start, first_pool FROM {DATABASE}.gpu_job_windows"
                          f" ORDER BY tenant, job_key, window_start")
    assert [(t, j, s.hour, p) for t, j, s, p in jobs] == [
        ("acme", "j1", 0, "c1/n1"), ("acme", "j1", 1, "c1/n1"), ("acme", "j1", 3, "c1/n1"),
        ("acme", "j3", 0, "c1/n2"), ("acme", "j3", 1, "c1/n2"), ("acme", "j4", 0, "c1/n3"),
        ("beta", "j2", 0, "c1/n1"), ("beta", "j2", 3, "c1/n2"),
    ]


def check(report: reports.Report) -> None:
    assert {row["pool"]: {c: row[c] for c in EXPECTED_ROWS["c1/n1"]} for row in report.rows} == EXPECTED_ROWS
    assert [row["pool"] for row in report.rows] == ["c1/n1", "c1/n2", "c1/n3"]  # most expensive first
    assert {c: report.total[c] for c in EXPECTED_TOTAL} == EXPECTED_TOTAL
    assert report.columns[0] == "pool" and "utilization_pct" in report.columns


def test_report_gives_the_hand_computed_kpis(engine: ChdbClient) -> None:
    check(kpis(engine))


def test_report_is_exact_with_every_row_stored_twice(engine: ChdbClient) -> None:
    insert(engine, dt.datetime(2026, 11, 12, tzinfo=dt.timezone.utc))
    ((stored,),) = engine.execute(f"SELECT count() FROM {DATABASE}.gpu_allocations")
    assert stored == 2 * len(allocation_records())
    check(kpis(engine))


def test_by_capacity_type_sums_the_pools(engine: ChdbClient) -> None:
    report = kpis(engine, by=("capacity_type",))
    rows = {row["capacity_type"]: row for row in report.rows}
    assert rows["on_demand"]["cost_usd"] == Decimal("46.40")
    assert rows["on_demand"]["usd_per_gpu_hour"] == Decimal("6.880000000000")  # A100 window has no capacity
    assert rows["on_demand"]["interruptions"] == 2 and rows["spot"]["spot_savings_rate"] == Decimal("0.636628")


def test_a_mid_day_on_demand_price_change_prices_each_spot_window_at_its_start(engine: ChdbClient) -> None:
    catalog = load_gpu_catalog()
    key = ("h100-sxm-80gb", "on_demand")
    change = GpuPrice("H100-SXM-80GB", "on_demand", dt.datetime(2026, 11, 10, 2, tzinfo=dt.timezone.utc),
                      Fraction("10"), "list", "test@2026-11-10T02")
    assert key in catalog.prices
    changed = type(catalog)(catalog.version, catalog.effective_from, {**catalog.prices, key: (*catalog.prices[key], change)},
                            catalog.mig_profiles, catalog.nodes)
    row = next(r for r in kpis(engine, changed).rows if r["pool"] == "c1/n2")
    # W0, W1 at 6.88, W2, W3 at 10: 2 x 6.88 + 2 x 10 = 33.76; savings 23.76; rate 23.76 / 33.76
    assert row["on_demand_equivalent_usd"] == Decimal("33.76")
    assert row["spot_savings_usd"] == Decimal("23.76")
    assert row["spot_savings_rate"] == Decimal("0.703791")
