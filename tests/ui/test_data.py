"""The dashboard's JSON assembly: pure functions over query results (no ClickHouse)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from prismops.finops.budgets import Budget
from prismops.ui import data

UTC = dt.timezone.utc


def test_linear_forecast_extrapolates_month_to_date_spend_to_the_month_end() -> None:
    start, end = data.period_bounds("monthly", dt.datetime(2026, 6, 10, 12, tzinfo=UTC))
    assert (start, end) == (dt.datetime(2026, 6, 1, tzinfo=UTC), dt.datetime(2026, 7, 1, tzinfo=UTC))
    # 9.5 days of June's 30 elapsed: $95 so far -> $300 at the month's end
    assert data.linear_forecast(Decimal("95"), start, end, dt.datetime(2026, 6, 10, 12, tzinfo=UTC)) == Decimal("300")


def test_forecast_at_the_period_edges_is_the_spend_so_far() -> None:
    start, end = data.period_bounds("daily", dt.datetime(2026, 6, 10, 0, 0, 30, tzinfo=UTC))
    assert data.linear_forecast(Decimal("5"), start, end, start + dt.timedelta(seconds=30)) == Decimal("5")
    assert data.linear_forecast(Decimal("5"), start, end, end + dt.timedelta(hours=1)) == Decimal("5")


def test_february_and_december_bounds() -> None:
    assert data.period_bounds("monthly", dt.datetime(2028, 2, 29, 23, tzinfo=UTC))[1] == dt.datetime(2028, 3, 1, tzinfo=UTC)
    assert data.period_bounds("monthly", dt.datetime(2026, 12, 31, tzinfo=UTC))[1] == dt.datetime(2027, 1, 1, tzinfo=UTC)


def test_budget_burn_statuses_and_order() -> None:
    now = dt.datetime(2026, 6, 16, 0, 0, tzinfo=UTC)  # half of June gone
    daily = Budget("tenant-daily-usd", "tenant", "*", "daily", "usd", Decimal("30"))
    monthly = Budget("team-monthly", "team", "search", "monthly", "usd", Decimal("100"))
    tokens = Budget("tenant-daily-tokens", "tenant", "*", "daily", "tokens", Decimal("1000"))
    usage = {
        ("tenant", "acme"): {"daily": {"usd": Decimal("31"), "tokens": 10}},
        ("tenant", "globex"): {"daily": {"usd": Decimal("0.5"), "tokens": 999}},
        ("team", "search"): {"monthly": {"usd": Decimal("60"), "tokens": 5}},
    }
    rows = data.budget_burn({("tenant", "acme"): [daily], ("tenant", "globex"): [daily, tokens],
                             ("team", "search"): [monthly]}, usage, now + dt.timedelta(hours=12))
    by = {(r["scope_id"], r["budget_id"]): r for r in rows}
    assert by[("acme", "tenant-daily-usd")]["status"] == "over"
    search = by[("search", "team-monthly")]
    # 60 after 15.5 of 30 days -> 116.129032 at the month's end: at risk
    assert search["forecast"] == Decimal("116.129032") and search["status"] == "at_risk"
    assert search["used_pct"] == Decimal("60.0")
    assert by[("globex", "tenant-daily-tokens")]["forecast"] == Decimal("1998")
    assert by[("globex", "tenant-daily-usd")]["status"] == "ok"
    assert [r["status"] for r in rows][:2] == ["over", "at_risk"]


def test_month_forecast_reads_only_the_current_month() -> None:
    days = [{"day": dt.date(2026, 5, 31), "key": "a", "cost_usd": Decimal("1000")},
            {"day": dt.date(2026, 6, 1), "key": "a", "cost_usd": Decimal("10.5")},
            {"day": dt.date(2026, 6, 2), "key": "b", "cost_usd": Decimal("9.5")}]
    forecast = data.month_forecast(days, dt.datetime(2026, 6, 3, tzinfo=UTC))
    assert forecast["month_to_date_usd"] == Decimal("20.0")
    assert forecast["forecast_usd"] == Decimal("300.000000") and forecast["days_in_month"] == 30


def test_live_summary_rates_and_latency() -> None:
    minute = dt.datetime(2026, 6, 1, 12, tzinfo=UTC)
    minutes = [
        {"minute": minute, "calls": 120, "errors": 6, "input_tokens": 1000, "output_tokens": 500,
         "cost_usd": Decimal("0.10"), "latency_avg_ms": 100.0, "latency_p50_ms": 90.0, "latency_p95_ms": 300.0},
        {"minute": minute + dt.timedelta(minutes=1), "calls": 60, "errors": 0, "input_tokens": 10, "output_tokens": 5,
         "cost_usd": Decimal("0.05"), "latency_avg_ms": 400.0, "latency_p50_ms": 350.0, "latency_p95_ms": 800.0},
    ]
    summary = data.live_summary(minutes, 120)
    assert summary["totals"]["tps"] == 1.5 and summary["totals"]["error_rate"] == round(6 / 180, 4)
    assert summary["totals"]["latency_avg_ms"] == 200.0 and summary["totals"]["latency_p95_ms"] == 800.0
    assert summary["totals"]["cost_usd"] == Decimal("0.15") and summary["series"][0]["tps"] == 2.0
    assert data.live_summary([], 60)["totals"]["latency_p50_ms"] is None


def test_pivot_days_fills_missing_days_with_zero() -> None:
    rows = [{"day": dt.date(2026, 6, 2), "key": "x", "cost_usd": Decimal("1.5")}]
    pivot = data.pivot_days(rows, dt.date(2026, 6, 1), dt.date(2026, 6, 4))
    assert pivot["series"] == [{"key": "x", "cost_usd": [Decimal(0), Decimal("1.5"), Decimal(0)]}]
    assert len(pivot["labels"]) == 3


def test_gpu_by_pool_groups_tenants_and_idle() -> None:
    rows = [
        {"pool": "p", "gpu_model": "H100", "tenant": "acme", "kind": "workload", "gpu_hours": Decimal("3"),
         "direct_cost_usd": Decimal("6"), "idle_cost_usd": Decimal("1"), "cost_usd": Decimal("7")},
        {"pool": "p", "gpu_model": "H100", "tenant": "unallocated", "kind": "idle", "gpu_hours": Decimal("1"),
         "direct_cost_usd": Decimal("0"), "idle_cost_usd": Decimal("0"), "cost_usd": Decimal("0")},
    ]
    (pool,) = data.gpu_by_pool(rows)
    assert pool["gpu_hours"] == Decimal("4") and pool["idle_pct"] == Decimal("25.0") and pool["cost_usd"] == Decimal("7")
    assert [t["tenant"] for t in pool["tenants"]] == ["acme", "unallocated"]


def test_json_writes_exact_decimals_as_strings() -> None:
    document = data.to_jsonable({"cost": Decimal("0.000000000001"), "at": dt.datetime(2026, 6, 1, tzinfo=UTC),
                                 "day": dt.date(2026, 6, 1), "rows": [(Decimal("1E+3"),)]})
    assert json.loads(json.dumps(document)) == {"cost": "0.000000000001", "at": "2026-06-01T00:00:00Z",
                                                "day": "2026-06-01", "rows": [["1000"]]}
