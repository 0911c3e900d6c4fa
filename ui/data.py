"""The JSON the dashboard page reads, assembled from query results by pure functions (no I/O).

Money stays Decimal until `to_jsonable`, which writes every Decimal as its exact string; datetimes become ISO
8601 UTC strings. The forecasts are linear: spend so far in the period divided by the seconds elapsed in it,
times the period's length (a month-end forecast from month-to-date spend, an end-of-day one for daily budgets).
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

MONEY_PLACES = Decimal("1e-6")
PCT_PLACES = Decimal("0.1")


def to_jsonable(value: Any) -> Any:
    """Decimals as exact strings, dates and datetimes as ISO strings (UTC, with Z), containers recursively."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month(day: dt.date) -> dt.date:
    return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def period_bounds(period: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The UTC calendar day or month containing `now` (aware UTC), as [start, end)."""
    now = now.astimezone(dt.timezone.utc)
    if period == "daily":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + dt.timedelta(days=1)
    if period == "monthly":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        days = calendar.monthrange(start.year, start.month)[1]
        return start, start + dt.timedelta(days=days)
    raise ValueError(f"period {period!r}: use daily or monthly")


def linear_forecast(spent: Decimal, start: dt.datetime, end: dt.datetime, now: dt.datetime) -> Decimal:
    """Spend at `end` if the rate so far in [start, now) holds: spent x (end - start) / (now - start).

    At the very start of the period (under a minute elapsed) the rate is not meaningful: the forecast is the spend
    so far. After the end it is the spend (the period is over)."""
    elapsed = Decimal(int((now - start).total_seconds()))
    length = Decimal(int((end - start).total_seconds()))
    if elapsed >= length:
        return spent
    if elapsed < 60:
        return spent
    return spent * length / elapsed


def _pct(part: Decimal, whole: Decimal) -> Decimal | None:
    if whole == 0:
        return None
    return (part * 100 / whole).quantize(PCT_PLACES)


def budget_burn(
    budgets_by_scope: Mapping[tuple[str, str], Sequence[Any]],
    usage: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]],
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """One row per (scope, scope id, budget): spent in the current period, its share of the limit, the linear
    forecast to the period's end and its share, and a status (ok, at_risk when the forecast crosses the limit,
    over when the spend already has).

    `budgets_by_scope` maps (scope, scope_id) to its Budget objects (budget_id, period, unit, limit);
    `usage` maps (scope, scope_id) to {period: {"usd": Decimal, "tokens": int}} for the current day and month."""
    rows = []
    for (scope, scope_id), budgets in sorted(budgets_by_scope.items()):
        for budget in budgets:
            start, end = period_bounds(budget.period, now)
            measured = usage.get((scope, scope_id), {}).get(budget.period, {})
            spent = Decimal(measured.get(budget.unit, 0))
            forecast = linear_forecast(spent, start, end, now)
            if budget.unit == "usd":
                forecast = forecast.quantize(MONEY_PLACES)
            else:
                forecast = forecast.to_integral_value()
            limit = Decimal(budget.limit)
            status = "over" if spent >= limit else ("at_risk" if forecast >= limit else "ok")
            rows.append({
                "scope": scope, "scope_id": scope_id, "budget_id": budget.budget_id, "period": budget.period,
                "unit": budget.unit, "limit": limit, "spent": spent, "used_pct": _pct(spent, limit),
                "forecast": forecast, "forecast_pct": _pct(forecast, limit), "period_end": end, "status": status,
            })
    order = {"over": 0, "at_risk": 1, "ok": 2}
    rows.sort(key=lambda r: (order[r["status"]], -(r["forecast_pct"] or 0), r["scope"], r["scope_id"], r["budget_id"]))
    return rows


def month_forecast(days: Iterable[Mapping[str, Any]], now: dt.datetime) -> dict[str, Any]:
    """Month-to-date spend (sum of the current month's days) and its linear month-end forecast."""
    start, end = period_bounds("monthly", now)
    mtd = sum((Decimal(d["cost_usd"]) for d in days if d["day"] >= start.date()), Decimal(0))
    return {
        "month": start.strftime("%Y-%m"), "month_to_date_usd": mtd,
        "forecast_usd": linear_forecast(mtd, start, end, now).quantize(MONEY_PLACES),
        "elapsed_days": (Decimal(int((now - start).total_seconds())) / 86400).quantize(Decimal("0.01")),
        "days_in_month": (end - start).days,
        "method": "linear: month-to-date spend / time elapsed this month x length of the month (UTC)",
    }


def live_summary(minutes: Sequence[Mapping[str, Any]], window_s: int) -> dict[str, Any]:
    """Per-minute series for the charts and totals over the window: TPS (calls per second over the whole
    window), error rate, tokens, cost, and the latest minute's p50/p95 (a call-weighted mean of the minutes'
    averages for the window's average latency)."""
    calls = sum(m["calls"] for m in minutes)
    errors = sum(m["errors"] for m in minutes)
    timed = [m for m in minutes if m.get("latency_avg_ms") is not None]
    weighted = sum(m["latency_avg_ms"] * m["calls"] for m in timed)
    weight = sum(m["calls"] for m in timed)
    last = timed[-1] if timed else None
    return {
        "window_s": window_s,
        "series": [
            {"minute": m["minute"], "tps": round(m["calls"] / 60, 3), "calls": m["calls"], "errors": m["errors"],
             "error_rate": round(m["errors"] / m["calls"], 4) if m["calls"] else 0.0,
             "tokens": m["input_tokens"] + m["output_tokens"], "cost_usd": m["cost_usd"],
             "latency_avg_ms": m.get("latency_avg_ms"), "latency_p50_ms": m.get("latency_p50_ms"),
             "latency_p95_ms": m.get("latency_p95_ms")}
            for m in minutes
        ],
        "totals": {
            "calls": calls, "errors": errors, "tps": round(calls / window_s, 3) if window_s else 0.0,
            "error_rate": round(errors / calls, 4) if calls else 0.0,
            "tokens": sum(m["input_tokens"] + m["output_tokens"] for m in minutes),
            "cost_usd": sum((m["cost_usd"] for m in minutes), Decimal(0)),
            "latency_avg_ms": round(weighted / weight, 1) if weight else None,
            "latency_p50_ms": last["latency_p50_ms"] if last else None,
            "latency_p95_ms": last["latency_p95_ms"] if last else None,
        },
    }


def pivot_days(rows: Sequence[Mapping[str, Any]], since: dt.date, until: dt.date) -> dict[str, Any]:
    """Rows of (day, key, cost_usd) as chart series: every day of [since, until) as a label, one series per key
    with a zero on days without spend (stacked bars need aligned arrays)."""
    labels = [since + dt.timedelta(days=i) for i in range((until - since).days)]
    index = {day: i for i, day in enumerate(labels)}
    series: dict[str, list[Decimal]] = {}
    for row in rows:
        values = series.setdefault(row["key"], [Decimal(0)] * len(labels))
        if row["day"] in index:
            values[index[row["day"]]] += Decimal(row["cost_usd"])
    return {"labels": labels, "series": [{"key": k, "cost_usd": v} for k, v in sorted(series.items())]}


def gpu_by_pool(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Allocation rows grouped per pool: GPU-hours and cost per tenant (idle shown as the tenant `unallocated`),
    with the pool's totals and its idle share of GPU-hours."""
    pools: dict[str, dict[str, Any]] = {}
    for row in rows:
        pool = pools.setdefault(row["pool"], {
            "pool": row["pool"], "gpu_model": row["gpu_model"], "gpu_hours": Decimal(0), "idle_gpu_hours": Decimal(0),
            "cost_usd": Decimal(0), "tenants": {},
        })
        hours = Decimal(row["gpu_hours"])
        pool["gpu_hours"] += hours
        if row["kind"] == "idle":
            pool["idle_gpu_hours"] += hours
        # idle is shown where its cost lands (each tenant's idle share); its own rows carry the idle GPU-hours
        pool["cost_usd"] += Decimal(row["cost_usd"])
        tenant = pool["tenants"].setdefault(row["tenant"], {"tenant": row["tenant"], "gpu_hours": Decimal(0),
                                                            "cost_usd": Decimal(0)})
        tenant["gpu_hours"] += hours
        tenant["cost_usd"] += Decimal(row["cost_usd"])
    out = []
    for pool in sorted(pools.values(), key=lambda p: (-p["cost_usd"], p["pool"])):
        tenants = sorted(pool.pop("tenants").values(), key=lambda t: (-t["gpu_hours"], t["tenant"]))
        idle_pct = _pct(pool["idle_gpu_hours"], pool["gpu_hours"])
        out.append({**pool, "idle_pct": idle_pct, "tenants": tenants})
    return out


def main_vs_shadow_pairs(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Main and shadow traffic side by side: totals per role and the rows per model."""
    totals: dict[str, dict[str, Any]] = {}
    for role in ("main", "shadow"):
        mine = [r for r in rows if r["role"] == role]
        calls = sum(r["calls"] for r in mine)
        errors = sum(r["errors"] for r in mine)
        timed = [r for r in mine if r.get("latency_avg_ms") is not None]
        weight = sum(r["calls"] for r in timed)
        weighted = sum(r["latency_avg_ms"] * r["calls"] for r in timed)
        totals[role] = {
            "calls": calls, "errors": errors, "error_rate": round(errors / calls, 4) if calls else 0.0,
            "cost_usd": sum((r["cost_usd"] for r in mine), Decimal(0)),
            "latency_avg_ms": round(weighted / weight, 1) if weight else None,
        }
    return {"totals": totals, "rows": list(rows)}
