"""Report queries over the sink tables; plain SQL that ClickHouse 18.16 and current ClickHouse both run.

Every query is exact under replays: raw tables are read with FINAL (a duplicate that slipped past the sink is
still counted once: the ReplacingMergeTree key is the row's id within its date), and the cost reports read
settled days from the rollups only while those still match the raw table (see prismops.sinks.rollups).
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clickhouse_driver import Client

from prismops.finops.labels import CACHE_SAVED_USD_LABEL
from prismops.sinks.clickhouse import table_ref


def _date_filter(since: dt.date | None, until: dt.date | None, column: str = "event_date",
                 conditions: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """A WHERE clause of `conditions` and [since, until) on a date column, and its parameters."""
    conditions, params = list(conditions), {}
    if since is not None:
        conditions.append(f"{column} >= %(since)s")
        params["since"] = since
    if until is not None:
        conditions.append(f"{column} < %(until)s")
        params["until"] = until
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), params


def spend_by_tenant_and_model(
    client: Client, database: str, *, since: dt.date | None = None, until: dt.date | None = None,
) -> list[dict[str, Any]]:
    """Spend per (tenant, provider, model), most expensive first; `since` inclusive, `until` exclusive
    (UTC event dates). `calls` counts cost lines, one per LLM call (or GPU window, or bill line)."""
    where, params = _date_filter(since, until)
    rows = client.execute(
        f"""
        SELECT tenant, provider, model, count() AS calls,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
        FROM {table_ref(database, "cost_lines")} FINAL{where}
        GROUP BY tenant, provider, model
        ORDER BY cost_usd DESC, tenant, provider, model
        """,
        params,
    )
    return [
        {
            "tenant": tenant, "provider": provider, "model": model, "calls": int(calls),
            "input_tokens": int(input_tokens), "output_tokens": int(output_tokens),
            "cost_usd": decimal.Decimal(cost_usd),
        }
        for tenant, provider, model, calls, input_tokens, output_tokens, cost_usd in rows
    ]


def count_cost_lines(
    client: Client, database: str, *, since: dt.date | None = None, until: dt.date | None = None,
) -> int:
    """Distinct cost lines stored (FINAL), optionally for a range of UTC event dates."""
    where, params = _date_filter(since, until)
    ((count,),) = client.execute(f"SELECT count() FROM {table_ref(database, 'cost_lines')} FINAL{where}", params)
    return int(count)


# Dimensions a cost report may group or filter by: the cost_lines columns that name an owner or a thing.
COST_DIMENSIONS = (
    "source", "tenant", "team", "product", "service", "feature", "customer", "environment", "provider", "model",
    "region", "charge_category",
)


def costs_by(
    client: Client, database: str, group_by: list[str], *, where: dict[str, str] | None = None,
    since: dt.date | None = None, until: dt.date | None = None,
) -> list[dict[str, Any]]:
    """Cost over every source (LLM calls, GPU allocations, cloud bills) grouped by dimensions, e.g.
    "what did team X cost yesterday" = group_by=["team", "source"], where={"team": "X"}, since/until a day."""
    unknown = [d for d in [*group_by, *(where or {})] if d not in COST_DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimension(s) {', '.join(unknown)}; use: {', '.join(COST_DIMENSIONS)}")
    condition, params = _date_filter(since, until)
    for index, (dimension, value) in enumerate((where or {}).items()):
        condition += (" AND " if condition else " WHERE ") + f"{dimension} = %(where_{index})s"
        params[f"where_{index}"] = value
    keys = ", ".join(group_by) if group_by else "'all'"
    rows = client.execute(
        f"""
        SELECT {keys}, count() AS lines, sum(cost_usd) AS cost_usd, countIf(priced = 0) AS unpriced_lines
        FROM {table_ref(database, "cost_lines")} FINAL{condition}
        GROUP BY {keys}
        ORDER BY cost_usd DESC
        """,
        params,
    )
    names = group_by or ["scope"]
    return [
        {**dict(zip(names, row[:len(names)])), "lines": int(row[-3]), "cost_usd": decimal.Decimal(row[-2]),
         "unpriced_lines": int(row[-1])}
        for row in rows
    ]


# ---------------------------------------------------------------------------------------------------------------
# showback, unit economics, monthly and anomaly reports: exact, over settled rollups and raw FINAL (prismops.sinks.rollups)

SHOWBACK_DIMENSIONS = (
    "team", "tenant", "feature", "model", "customer", "product", "service", "environment", "provider", "source", "node",
)
# Per-unit figures are divided once in Decimal and rounded half-even: money to 12 places, rates to 6.
PER_UNIT_PLACES = decimal.Decimal("1e-12")
RATE_PLACES = decimal.Decimal("1e-6")


@dataclass(frozen=True)
class Report:
    """Rows (one per group), the columns to show in order, and a total row whose additive figures are the exact
    sums of the rows (and so of the raw table over the same range)."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    total: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "total": self.total}

    def table_rows(self) -> list[dict[str, Any]]:
        """The rows and then the total, labelled TOTAL in the first column."""
        first = self.columns[0]
        return [*self.rows, {**self.total, first: "TOTAL"}]


def _check_dimensions(by: Sequence[str]) -> list[str]:
    if not by:
        raise ValueError(f"--by needs a dimension: {', '.join(SHOWBACK_DIMENSIONS)}")
    unknown = [d for d in by if d not in SHOWBACK_DIMENSIONS]
    if unknown:
        raise ValueError(f"--by {', '.join(unknown)}: not a dimension; use one of {', '.join(SHOWBACK_DIMENSIONS)}")
    return list(dict.fromkeys(by))


def _ratio(numerator: decimal.Decimal | int, denominator: decimal.Decimal | int, places: decimal.Decimal) -> decimal.Decimal | None:
    if not denominator:
        return None
    with decimal.localcontext() as context:
        context.prec = 80
        return (decimal.Decimal(numerator) / decimal.Decimal(denominator)).quantize(places, decimal.ROUND_HALF_EVEN)


def _sum_rows(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for name in names:
        values = [row[name] for row in rows]
        total[name] = sum(values, decimal.Decimal(0) if name.endswith("_usd") else 0)
    return total


def _span(since: dt.date, until: dt.date) -> str:
    return f"{since} to {until - dt.timedelta(days=1)}"


SHOWBACK_MEASURES = ["lines", "cost_usd", "llm_requests", "input_tokens", "output_tokens", "unpriced_lines"]


def showback(client: Any, database: str, by: Sequence[str], *, since: dt.date, until: dt.date) -> Report:
    """Cost of [since, until) per group of `by` (e.g. team), most expensive first, every source included."""
    from prismops.sinks.rollups import cost_query

    dimensions = _check_dimensions(by)
    groups = cost_query(client, database, dimensions, since=since, until=until, measures=SHOWBACK_MEASURES)
    total = _sum_rows(groups, SHOWBACK_MEASURES)
    rows = []
    for group in groups:
        row = {d: group[d] for d in dimensions}
        row.update({name: group[name] for name in SHOWBACK_MEASURES})
        row["share_pct"] = _ratio(group["cost_usd"] * 100, total["cost_usd"], decimal.Decimal("0.01"))
        rows.append(row)
    total["share_pct"] = decimal.Decimal("100.00") if rows and total["cost_usd"] else None
    columns = [*dimensions, "cost_usd", "share_pct", "lines", "llm_requests", "input_tokens", "output_tokens",
               "unpriced_lines"]
    return Report(f"showback by {', '.join(dimensions)}, {_span(since, until)}", columns, rows,
                  {d: "" for d in dimensions} | total)


UNIT_MEASURES = [
    "cost_usd", "llm_cost_usd", "llm_requests", "input_tokens", "output_tokens", "cached_input_tokens",
    "cache_hit_requests", "fallback_requests", "shadow_requests", "error_requests", "lines",
]


def _unit_figures(group: dict[str, Any]) -> dict[str, Any]:
    tokens = group["input_tokens"] + group["output_tokens"]
    requests = group["llm_requests"]
    return {
        "tokens": tokens,
        "cost_per_request": _ratio(group["llm_cost_usd"], requests, PER_UNIT_PLACES),
        "cost_per_session": _ratio(group["llm_cost_usd"], group["sessions"], PER_UNIT_PLACES),
        "cost_per_customer": _ratio(group["cost_usd"], group["customers"], PER_UNIT_PLACES),
        "cost_per_1k_tokens": _ratio(group["llm_cost_usd"] * 1000, tokens, PER_UNIT_PLACES),
        "cache_hit_rate": _ratio(group["cache_hit_requests"], requests, RATE_PLACES),
        "fallback_rate": _ratio(group["fallback_requests"], requests, RATE_PLACES),
        "error_rate": _ratio(group["error_requests"], requests, RATE_PLACES),
    }


def unit_economics(client: Any, database: str, by: Sequence[str], *, since: dt.date, until: dt.date) -> Report:
    """Per group: LLM cost per request, session, customer and 1k tokens, cache-hit, fallback and error rates.
    Requests are LLM calls (one cost line each); cost_per_customer divides the group's cost from every source.
    The total's sessions and customers are counted distinct over the whole range, not summed over groups."""
    from prismops.sinks.rollups import cost_query

    dimensions = _check_dimensions(by)
    from prismops.sinks.rollups import day_sources

    sources = day_sources(client, database, since, until)
    groups = cost_query(client, database, dimensions, since=since, until=until, sources=sources)
    overall = cost_query(client, database, [], since=since, until=until, sources=sources,
                         measures=["sessions", "customers"])[0]
    rows = []
    for group in groups:
        row = {d: group[d] for d in dimensions}
        row.update({name: group[name] for name in [*UNIT_MEASURES, "sessions", "customers"]})
        row.update(_unit_figures(group))
        rows.append(row)
    total = _sum_rows(rows, UNIT_MEASURES)
    total.update(sessions=overall["sessions"], customers=overall["customers"])
    total.update(_unit_figures(total))
    columns = [*dimensions, "llm_requests", "sessions", "customers", "tokens", "llm_cost_usd", "cost_usd",
               "cost_per_request", "cost_per_session", "cost_per_customer", "cost_per_1k_tokens", "cache_hit_rate",
               "fallback_rate", "error_rate"]
    return Report(f"unit economics by {', '.join(dimensions)}, {_span(since, until)}", columns, rows,
                  {d: "" for d in dimensions} | total)


def cache_savings(client: Any, database: str, by: Sequence[str], *, since: dt.date, until: dt.date,
                  tenant: str | None = None) -> Report:
    """Per group: LLM calls, cache hits, hit rate, what the calls cost, what the hits saved (the label each hit
    carries, exact decimal) and the saved share of what the calls would have cost without the cache. `tenant`
    narrows to one tenant (a bound parameter), as the dashboard's tenant filter does."""
    dimensions = _check_dimensions(by)
    where, params = _date_filter(since, until, conditions=["source = 'llm'"])
    where += _tenant_filter(tenant, params)
    saved = (f"toDecimal64(if(has(label_keys, '{CACHE_SAVED_USD_LABEL}'), "
             f"label_values[indexOf(label_keys, '{CACHE_SAVED_USD_LABEL}')], '0'), 12)")
    listed = ", ".join(dimensions)
    found = client.execute(
        f"SELECT {listed}, count(), countIf(cache_hit = 1), sum(cost_usd), sumIf({saved}, cache_hit = 1)"
        f" FROM {table_ref(database, 'cost_lines')} FINAL{where}"
        f" GROUP BY {listed} ORDER BY {listed}",
        params,
    )
    measures = ["llm_requests", "cache_hits", "llm_cost_usd", "saved_usd"]
    rows = []
    for record in found:
        row = dict(zip(dimensions, record))
        row.update(llm_requests=int(record[-4]), cache_hits=int(record[-3]),
                   llm_cost_usd=decimal.Decimal(record[-2]), saved_usd=decimal.Decimal(record[-1]))
        rows.append(row)
    rows.sort(key=lambda row: (-row["saved_usd"], *(str(row[d]) for d in dimensions)))
    total = _sum_rows(rows, measures)
    for row in [*rows, total]:
        row["hit_rate"] = _ratio(row["cache_hits"], row["llm_requests"], RATE_PLACES)
        row["saved_pct"] = _ratio(row["saved_usd"] * 100, row["llm_cost_usd"] + row["saved_usd"],
                                  decimal.Decimal("0.01"))
    columns = [*dimensions, "llm_requests", "cache_hits", "hit_rate", "llm_cost_usd", "saved_usd", "saved_pct"]
    scope = f", tenant {tenant}" if tenant is not None else ""
    return Report(f"response cache savings by {', '.join(dimensions)}, {_span(since, until)}{scope}", columns, rows,
                  {d: "" for d in dimensions} | total)


def month_range(month: str) -> tuple[dt.date, dt.date]:
    """'YYYY-MM' -> (first day, first day of the next month)."""
    try:
        first = dt.datetime.strptime(month, "%Y-%m").date()
    except ValueError:
        raise ValueError(f"month {month!r}: expected YYYY-MM") from None
    following = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return first, following


MONTHLY_MEASURES = ["lines", "cost_usd", "llm_requests", "input_tokens", "output_tokens", "unpriced_lines"]


def monthly(client: Any, database: str, month: str) -> Report:
    """One calendar month (UTC) by service and node: LLM and cloud lines by the service they were tagged with,
    GPU lines by the node (cluster/node) whose cost they carry; every source, so the total is the month's cost."""
    from prismops.sinks.rollups import cost_query

    since, until = month_range(month)
    groups = cost_query(client, database, ["service", "node", "source"], since=since, until=until,
                        measures=MONTHLY_MEASURES)
    total = _sum_rows(groups, MONTHLY_MEASURES)
    rows = []
    for group in groups:
        row = {name: group[name] for name in ["service", "node", "source", *MONTHLY_MEASURES]}
        row["share_pct"] = _ratio(group["cost_usd"] * 100, total["cost_usd"], decimal.Decimal("0.01"))
        rows.append(row)
    total["share_pct"] = decimal.Decimal("100.00") if rows and total["cost_usd"] else None
    columns = ["service", "node", "source", "cost_usd", "share_pct", "lines", "llm_requests", "input_tokens",
               "output_tokens", "unpriced_lines"]
    return Report(f"monthly cost by service and node, {month}", columns, rows,
                  {"service": "", "node": "", "source": ""} | total)


SEVERITIES = ("info", "warning", "critical")


def anomalies(
    client: Any, database: str, *, since: dt.date, until: dt.date, min_severity: str = "info",
    tenant: str | None = None,
) -> Report:
    """Anomalous windows starting in [since, until), newest first, at `min_severity` or above; excess cost is
    actual minus expected for cost anomalies. Read with FINAL: a re-detected window is listed once."""
    if min_severity not in SEVERITIES:
        raise ValueError(f"--severity {min_severity!r}: use one of {', '.join(SEVERITIES)}")
    params: dict[str, Any] = {
        "since": since, "until": until, "severities": SEVERITIES[SEVERITIES.index(min_severity):],
    }
    tenant_filter = ""
    if tenant is not None:
        tenant_filter = " AND tenant = %(tenant)s"
        params["tenant"] = tenant
    found = client.execute(
        f"""
        SELECT window_start, window_end, metric, series_key, ifNull(tenant, ''), severity, score, actual, expected,
               actual_cost_usd, expected_cost_usd, contributor_dimension, contributor_value, contributor_share, message
        FROM {table_ref(database, "anomalies")} FINAL
        WHERE window_date >= %(since)s AND window_date < %(until)s AND severity IN %(severities)s{tenant_filter}
        ORDER BY window_start DESC, metric, series_key
        """,
        params,
    )
    rows = []
    for (start, end, metric, series_key, tenant_name, severity, score, actual, expected, actual_cost, expected_cost,
         dimensions, values, shares, message) in found:
        excess = (decimal.Decimal(actual_cost) - decimal.Decimal(expected_cost)
                  if actual_cost is not None and expected_cost is not None else None)
        top = max(zip(dimensions, values, shares), key=lambda c: abs(c[2]), default=None)
        rows.append({
            "window_start": start, "window_end": end, "metric": metric, "series_key": series_key,
            "tenant": tenant_name, "severity": severity, "score": round(float(score), 3),
            "actual": actual, "expected": expected,
            "actual_cost_usd": None if actual_cost is None else decimal.Decimal(actual_cost),
            "expected_cost_usd": None if expected_cost is None else decimal.Decimal(expected_cost),
            "excess_cost_usd": excess,
            "top_cause": f"{top[0]}={top[1]} ({top[2]:.0%})" if top else "",
            "message": message,
        })

    def money(name: str) -> decimal.Decimal:
        return sum((r[name] for r in rows if r[name] is not None), decimal.Decimal(0))

    total = {
        "anomalies": len(rows),
        **{severity: sum(1 for r in rows if r["severity"] == severity) for severity in SEVERITIES},
        "actual_cost_usd": money("actual_cost_usd"), "expected_cost_usd": money("expected_cost_usd"),
        "excess_cost_usd": money("excess_cost_usd"),
    }
    columns = ["window_start", "metric", "series_key", "severity", "score", "actual", "expected", "actual_cost_usd",
               "expected_cost_usd", "excess_cost_usd", "top_cause"]
    counts = ", ".join(f"{total[s]} {s}" for s in reversed(SEVERITIES) if total[s])
    title = f"{len(rows)} anomalies at {min_severity} or above, {_span(since, until)}" + (f" ({counts})" if counts else "")
    return Report(title, columns, rows, {"window_start": "", **total})


# ---------------------------------------------------------------------------------------------------------------
# cloud bills in their own currencies, converted to USD only through an FX table (prismops.finops.fx)

CLOUD_MONEY = ("billed_cost", "effective_cost", "list_cost", "contracted_cost")


def cloud_bills(client: Any, database: str, *, since: dt.date, until: dt.date, fx: Any = None) -> Report:
    """Cloud bill lines per BillingCurrency and ServiceName (cost_lines FINAL, source cloud, UTC event dates in
    [since, until)): the four FOCUS costs in the bill's own currency, exact; with `fx` (a finops.fx.FxTable) each
    also in USD, converted per UTC day at the rate in force that day (rounded once per day and currency, half-even,
    12 places) and then summed. A day with no rate in the table is an FxError naming the currency and the day:
    nothing is left out or converted at a guessed rate. The TOTAL row adds only what shares a unit: the line
    count and the USD columns. Lines stored before cost lines had a currency are USD (their *_usd columns)."""
    rows = client.execute(
        f"""
        SELECT currency, model, event_date, count() AS lines,
               sum(ifNull(billed_cost, billed_cost_usd)) AS billed_cost,
               sum(ifNull(effective_cost, cost_usd)) AS effective_cost,
               sum(ifNull(list_cost, list_cost_usd)) AS list_cost,
               sum(contracted_cost) AS contracted_cost
        FROM {table_ref(database, "cost_lines")} FINAL
        WHERE source = 'cloud' AND event_date >= %(since)s AND event_date < %(until)s
        GROUP BY currency, model, event_date
        ORDER BY currency, model, event_date
        """,
        {"since": since, "until": until},
    )
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for currency, model, day, lines, *amounts in rows:
        group = groups.setdefault((currency, model), {
            "currency": currency, "service": model, "lines": 0,
            **{name: decimal.Decimal(0) for name in CLOUD_MONEY},
            **({f"{name}_usd": decimal.Decimal(0) for name in CLOUD_MONEY} if fx is not None else {}),
        })
        group["lines"] += int(lines)
        for name, amount in zip(CLOUD_MONEY, amounts):
            amount = decimal.Decimal(amount) if amount is not None else decimal.Decimal(0)
            group[name] += amount
            if fx is not None:
                group[f"{name}_usd"] += fx.to_usd(amount, currency, day)
    ordered = sorted(groups.values(), key=lambda g: (g["currency"], -g["effective_cost"], g["service"]))
    columns = ["currency", "service", "lines", *CLOUD_MONEY]
    total: dict[str, Any] = {"currency": "", "service": "", "lines": sum(g["lines"] for g in ordered)}
    if fx is not None:
        columns += [f"{name}_usd" for name in CLOUD_MONEY]
        total |= {f"{name}_usd": sum((g[f"{name}_usd"] for g in ordered), decimal.Decimal(0)) for name in CLOUD_MONEY}
    title = f"cloud bills by currency and service, {_span(since, until)}" + (" (USD via FX table)" if fx else "")
    return Report(title, columns, ordered, total)


# ---------------------------------------------------------------------------------------------------------------
# dashboard queries (`prismops ui`): recent minutes, spend breakdowns, routing, GPU pools. Read-only, FINAL,
# no positional ORDER BY and no function newer than ClickHouse 18.16; an optional tenant narrows every one.

def _tenant_filter(tenant: str | None, params: dict[str, Any], column: str = "tenant") -> str:
    if tenant is None:
        return ""
    params["tenant"] = tenant
    return f" AND {column} = %(tenant)s"


def live_minutes(client: Any, database: str, *, since: dt.datetime, tenant: str | None = None) -> list[dict[str, Any]]:
    """LLM cost lines per minute from `since` (UTC, inclusive): calls, errors (status other than ok), tokens,
    cost and latency (average, p50, p95 over the lines that carry one; None when none did)."""
    params: dict[str, Any] = {"since": since.replace(tzinfo=None), "since_date": since.date()}
    tenant_filter = _tenant_filter(tenant, params)
    rows = client.execute(
        f"""
        SELECT toStartOfMinute(event_time) AS minute, count() AS calls, countIf(status != 'ok') AS errors,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd,
               countIf(isNotNull(latency_ms)) AS timed, avg(latency_ms) AS latency_avg,
               quantile(0.5)(latency_ms) AS latency_p50, quantile(0.95)(latency_ms) AS latency_p95
        FROM {table_ref(database, "cost_lines")} FINAL
        WHERE source = 'llm' AND event_date >= %(since_date)s AND event_time >= %(since)s{tenant_filter}
        GROUP BY minute
        ORDER BY minute
        """,
        params,
    )
    out = []
    for minute, calls, errors, input_tokens, output_tokens, cost, timed, avg_ms, p50, p95 in rows:
        timed = int(timed)
        out.append({
            "minute": minute, "calls": int(calls), "errors": int(errors), "input_tokens": int(input_tokens),
            "output_tokens": int(output_tokens), "cost_usd": decimal.Decimal(cost),
            "latency_avg_ms": float(avg_ms) if timed and avg_ms is not None else None,
            "latency_p50_ms": float(p50) if timed and p50 is not None else None,
            "latency_p95_ms": float(p95) if timed and p95 is not None else None,
        })
    return out


DASHBOARD_DIMENSIONS = ("tenant", "team", "model", "feature", "provider", "source", "service", "product")


def spend_breakdown(
    client: Any, database: str, dimension: str, *, since: dt.date, until: dt.date, tenant: str | None = None,
) -> list[dict[str, Any]]:
    """Cost and tokens per value of one dimension over UTC event dates [since, until), most expensive first."""
    if dimension not in DASHBOARD_DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}; use: {', '.join(DASHBOARD_DIMENSIONS)}")
    params: dict[str, Any] = {"since": since, "until": until}
    tenant_filter = _tenant_filter(tenant, params)
    rows = client.execute(
        f"""
        SELECT {dimension} AS dim_value, count() AS lines, sum(input_tokens + output_tokens) AS tokens,
               sum(cost_usd) AS cost_usd
        FROM {table_ref(database, "cost_lines")} FINAL
        WHERE event_date >= %(since)s AND event_date < %(until)s{tenant_filter}
        GROUP BY dim_value
        ORDER BY cost_usd DESC, dim_value
        """,
        params,
    )
    return [{"key": key, "lines": int(lines), "tokens": int(tokens), "cost_usd": decimal.Decimal(cost)}
            for key, lines, tokens, cost in rows]


def spend_by_day(
    client: Any, database: str, *, since: dt.date, until: dt.date, by: str = "source", tenant: str | None = None,
) -> list[dict[str, Any]]:
    """Cost per UTC day and value of `by` over [since, until), oldest day first."""
    if by not in DASHBOARD_DIMENSIONS:
        raise ValueError(f"unknown dimension {by!r}; use: {', '.join(DASHBOARD_DIMENSIONS)}")
    params: dict[str, Any] = {"since": since, "until": until}
    tenant_filter = _tenant_filter(tenant, params)
    rows = client.execute(
        f"""
        SELECT event_date AS day, {by} AS dim_value, sum(cost_usd) AS cost_usd
        FROM {table_ref(database, "cost_lines")} FINAL
        WHERE event_date >= %(since)s AND event_date < %(until)s{tenant_filter}
        GROUP BY day, dim_value
        ORDER BY day, dim_value
        """,
        params,
    )
    return [{"day": day, "key": key, "cost_usd": decimal.Decimal(cost)} for day, key, cost in rows]


def scope_usage(client: Any, database: str, scope: str, *, since: dt.date, until: dt.date) -> dict[str, dict[str, Any]]:
    """Spend (USD) and tokens per tenant or team over [since, until): what budgets are measured against."""
    if scope not in ("tenant", "team"):
        raise ValueError(f"budget scope {scope!r}: use tenant or team")
    rows = client.execute(
        f"""
        SELECT {scope} AS scope_id, sum(cost_usd) AS cost_usd, sum(input_tokens + output_tokens) AS tokens
        FROM {table_ref(database, "cost_lines")} FINAL
        WHERE event_date >= %(since)s AND event_date < %(until)s
        GROUP BY scope_id
        ORDER BY scope_id
        """,
        {"since": since, "until": until},
    )
    return {scope_id: {"usd": decimal.Decimal(cost), "tokens": int(tokens)} for scope_id, cost, tokens in rows}


def routing_summary(
    client: Any, database: str, *, since: dt.date, until: dt.date, tenant: str | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Routing decisions over decided dates [since, until): per chosen model and reason code, and per
    experiment arm (decisions and their estimated cost)."""
    params: dict[str, Any] = {"since": since, "until": until}
    tenant_filter = _tenant_filter(tenant, params)
    table = table_ref(database, "routing_decisions")
    decisions = client.execute(
        f"""
        SELECT ifNull(chosen_model, '(none)') AS model, reason_code, count() AS decisions,
               sum(downgraded) AS downgraded, sum(static_fallback) AS static_fallbacks
        FROM {table} FINAL
        WHERE decided_date >= %(since)s AND decided_date < %(until)s{tenant_filter}
        GROUP BY model, reason_code
        ORDER BY decisions DESC, model, reason_code
        """,
        params,
    )
    arms = client.execute(
        f"""
        SELECT ifNull(experiment, '') AS experiment_name, ifNull(arm, '') AS arm_name,
               ifNull(chosen_model, '(none)') AS model, count() AS decisions,
               sum(estimated_cost_usd) AS estimated_cost_usd
        FROM {table} FINAL
        WHERE decided_date >= %(since)s AND decided_date < %(until)s AND isNotNull(experiment){tenant_filter}
        GROUP BY experiment_name, arm_name, model
        ORDER BY experiment_name, arm_name, model
        """,
        params,
    )
    return {
        "decisions": [{"model": m, "reason_code": r, "decisions": int(n), "downgraded": int(d),
                       "static_fallbacks": int(s)} for m, r, n, d, s in decisions],
        "arms": [{"experiment": e, "arm": a, "model": m, "decisions": int(n), "estimated_cost_usd": decimal.Decimal(c if c is not None else 0)}
                 for e, a, m, n, c in arms],
    }


def main_vs_shadow(
    client: Any, database: str, *, since: dt.date, until: dt.date, tenant: str | None = None,
) -> list[dict[str, Any]]:
    """LLM calls served (main, shadow = 0) beside the calls mirrored to a shadow model (shadow = 1) over
    [since, until), per model: only lines flagged shadow count as shadow traffic."""
    params: dict[str, Any] = {"since": since, "until": until}
    tenant_filter = _tenant_filter(tenant, params)
    rows = client.execute(
        f"""
        SELECT if(shadow = 1, 'shadow', 'main') AS role, model, count() AS calls, countIf(status != 'ok') AS errors,
               sum(cost_usd) AS cost_usd, avg(latency_ms) AS latency_avg, quantile(0.95)(latency_ms) AS latency_p95,
               countIf(isNotNull(latency_ms)) AS timed
        FROM {table_ref(database, "cost_lines")} FINAL
        WHERE source = 'llm' AND event_date >= %(since)s AND event_date < %(until)s{tenant_filter}
        GROUP BY role, model
        ORDER BY role, cost_usd DESC, model
        """,
        params,
    )
    return [
        {"role": role, "model": model, "calls": int(calls), "errors": int(errors), "cost_usd": decimal.Decimal(cost),
         "latency_avg_ms": float(avg_ms) if int(timed) and avg_ms is not None else None,
         "latency_p95_ms": float(p95) if int(timed) and p95 is not None else None}
        for role, model, calls, errors, cost, avg_ms, p95, timed in rows
    ]


def gpu_pools(
    client: Any, database: str, *, since: dt.date, until: dt.date, tenant: str | None = None,
) -> list[dict[str, Any]]:
    """GPU allocation per pool and tenant over window dates [since, until): charged GPU-hours and cost (direct,
    idle share and total); the idle bucket is the tenant `unallocated`."""
    params: dict[str, Any] = {"since": since, "until": until}
    tenant_filter = _tenant_filter(tenant, params)
    rows = client.execute(
        f"""
        SELECT pool, gpu_model, tenant, kind, sum(charged_gpu_seconds) AS gpu_seconds,
               sum(direct_cost_usd) AS direct_cost_usd, sum(idle_cost_usd) AS idle_cost_usd, sum(cost_usd) AS cost_usd
        FROM {table_ref(database, "gpu_allocations")} FINAL
        WHERE window_date >= %(since)s AND window_date < %(until)s{tenant_filter}
        GROUP BY pool, gpu_model, tenant, kind
        ORDER BY pool, cost_usd DESC, tenant, kind
        """,
        params,
    )
    return [
        {"pool": pool, "gpu_model": gpu_model, "tenant": tenant_name, "kind": kind,
         "gpu_hours": (decimal.Decimal(seconds) / 3600).quantize(RATE_PLACES),
         "direct_cost_usd": decimal.Decimal(direct), "idle_cost_usd": decimal.Decimal(idle),
         "cost_usd": decimal.Decimal(cost)}
        for pool, gpu_model, tenant_name, kind, seconds, direct, idle, cost in rows
    ]


def tenant_names(client: Any, database: str, *, since: dt.date) -> list[str]:
    """Tenants with cost lines since a UTC date, for the page's tenant filter."""
    rows = client.execute(
        f"SELECT DISTINCT tenant FROM {table_ref(database, 'cost_lines')} WHERE event_date >= %(since)s ORDER BY tenant",
        {"since": since},
    )
    return [tenant for (tenant,) in rows]


# ---------------------------------------------------------------------------------------------------------------
# GPU KPIs over the views of migration 0017 (gpu_kpis_daily, gpu_pool_windows, gpu_job_windows)

GPU_KPI_DIMENSIONS = ("pool", "cluster", "gpu_model", "capacity_type")
GPU_KPI_COLUMNS = [
    "windows", "gpu_hours", "utilization_pct", "cost_usd", "usd_per_gpu_hour", "spot_cost_usd",
    "on_demand_equivalent_usd", "spot_savings_usd", "spot_savings_rate", "interruptions", "restart_s",
    "unknown_capacity_windows",
]
_GPU_KPI_SUMS = ("windows", "cost_usd", "known_cost_usd", "capacity_gpu_seconds", "utilized_gpu_seconds",
                 "spot_cost_usd", "interruptions", "downtime_s", "unknown_capacity_windows", "spot_unpriced_windows")


def _on_demand_rate(catalog: Any, gpu_model: str, day: dt.date) -> tuple[bool, Any]:
    """(constant, $/GPU-hour as a Fraction or None) of the on-demand price over one UTC day: constant when no
    entry takes effect inside the day, so every window starting that day is priced alike."""
    from prismops.finops.gpu_pricing import normalize_model

    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    end = start + dt.timedelta(days=1)
    entries = catalog.prices.get((normalize_model(gpu_model), "on_demand"), ())
    if any(start < entry.effective_from < end for entry in entries):
        return False, None
    price = catalog.price_at(gpu_model, "on_demand", start)
    return True, None if price is None else price.usd_per_gpu_hour


def gpu_kpis(
    client: Any, database: str, by: Sequence[str] = ("pool",), *, since: dt.date, until: dt.date,
    catalog: Any = None,
) -> Report:
    """GPU KPIs per group of `by` (pool, cluster, gpu_model, capacity_type) over window dates [since, until), from
    the gpu_allocations views of migration 0017. Node pools only: inference-pool rows re-attribute node cost.

    - utilization_pct: utilized / capacity GPU-seconds x 100 (2 places). Utilized = charged GPU-seconds, i.e.
      max(requested, used), capped at the capacity: ALLOCATION utilization. Used GPU-seconds are in the gpu_usage
      table (migration 0018), which `recommend gpu --from-clickhouse` profiles; this KPI stays the allocation one.
      Capacity = the pool's GPUs x window seconds, derived from the stored shares (gpu_pool_windows); windows whose
      capacity cannot be derived (workloads that charged nothing, no idle bucket) are counted in
      unknown_capacity_windows and left out of both ratios (their cost is still in cost_usd).
    - usd_per_gpu_hour: cost of the windows with known capacity x 3600 / their capacity GPU-seconds (12 places).
    - spot savings (needs `catalog`, the GPU price table attribution uses): for spot windows with known capacity,
      on_demand_equivalent_usd = capacity GPU-hours x the on-demand $/GPU-hour of the same model in effect at the
      window's start (exact, rounded once per group, half-even, 12 places); spot_savings_usd = that - spot_cost_usd;
      spot_savings_rate = savings / on-demand equivalent (6 places). Spot cost is what attribution charged (the price
      table's spot price), not a market price paid. Spot windows of a model with no on-demand price are left out.
    - interruptions and restart_s: a gap between two consecutive windows of one job (tenant, job or namespace, as
      profiles_from_events) is an interruption, attributed to the group of the window before it; restart_s is the
      mean gap in seconds (6 places): an upper bound of the restart time at window granularity (it includes queueing
      and any pause), because checkpoint write and restart times are not stored.
    - NOT SHOWN, for lack of data: the preemption loss rate. It needs the work lost per preemption (the time since
      the last checkpoint) and the cause of each interruption (preempted vs finished or paused); gpu_allocations holds
      neither, and collectors record no checkpoint times.
    Rows also carry the sums the ratios are made of (known_cost_usd, capacity_gpu_seconds, utilized_gpu_seconds,
    downtime_s) and spot_unpriced_windows (spot windows of a model with no on-demand price in effect).

    Additive columns of the total are the exact sums of the rows; the total's ratios are computed from those sums."""
    dimensions = list(dict.fromkeys(by))
    unknown = [d for d in dimensions if d not in GPU_KPI_DIMENSIONS]
    if not dimensions or unknown:
        raise ValueError(f"--by {', '.join(unknown) or '(none)'}: use one or more of {', '.join(GPU_KPI_DIMENSIONS)}")
    params = {"since": since, "until": until}
    found = client.execute(
        f"""
        SELECT window_date, pool, cluster, gpu_model, capacity_type, windows, cost_usd, known_cost_usd,
               unknown_capacity_windows, capacity_gpu_seconds, utilized_gpu_seconds
        FROM {table_ref(database, "gpu_kpis_daily")}
        WHERE window_date >= %(since)s AND window_date < %(until)s
        ORDER BY window_date, pool, gpu_model, capacity_type
        """,
        params,
    )
    from fractions import Fraction

    groups: dict[tuple[Any, ...], dict[str, Any]] = {}

    def group_of(values: dict[str, Any]) -> dict[str, Any]:
        key = tuple(values[d] for d in dimensions)
        if key not in groups:
            groups[key] = {**dict(zip(dimensions, key)),
                           **{name: decimal.Decimal(0) if name.endswith("_usd") or name == "utilized_gpu_seconds"
                              else 0 for name in _GPU_KPI_SUMS},
                           "_spot": 0, "_on_demand": Fraction(0)}
        return groups[key]

    for (day, pool, cluster, gpu_model, capacity_type, windows, cost, known_cost, unknown_windows, capacity,
         utilized) in found:
        group = group_of({"pool": pool, "cluster": cluster, "gpu_model": gpu_model, "capacity_type": capacity_type})
        group["windows"] += int(windows)
        group["cost_usd"] += decimal.Decimal(cost).quantize(PER_UNIT_PLACES)
        group["known_cost_usd"] += decimal.Decimal(known_cost).quantize(PER_UNIT_PLACES)
        group["unknown_capacity_windows"] += int(unknown_windows)
        group["capacity_gpu_seconds"] += int(capacity)
        group["utilized_gpu_seconds"] += decimal.Decimal(utilized)
        if capacity_type != "spot" or catalog is None or not int(capacity):
            continue
        group["_spot"] += 1
        constant, rate = _on_demand_rate(catalog, gpu_model, day)
        if constant:
            priced = [(capacity, known_cost, rate)] if rate is not None else []
            unpriced = 0 if rate is not None else int(windows) - int(unknown_windows)
        else:  # the on-demand price changed during the day: price each window at its start
            priced, unpriced = [], 0
            for start, seconds, window_cost in client.execute(
                f"""
                SELECT window_start, capacity_gpu_seconds, window_cost_usd
                FROM {table_ref(database, "gpu_pool_windows")}
                WHERE window_date = %(day)s AND pool = %(pool)s AND gpu_model = %(gpu_model)s
                      AND capacity_type = 'spot' AND gpus > 0
                ORDER BY window_start
                """,
                {"day": day, "pool": pool, "gpu_model": gpu_model},
            ):
                start = start if start.tzinfo else start.replace(tzinfo=dt.timezone.utc)
                price = catalog.price_at(gpu_model, "on_demand", start)
                if price is None:
                    unpriced += 1
                else:
                    priced.append((seconds, window_cost, price.usd_per_gpu_hour))
        group["spot_unpriced_windows"] += unpriced
        for seconds, spot_cost, hourly in priced:
            group["_on_demand"] += Fraction(int(seconds)) * hourly / 3600
            group["spot_cost_usd"] += decimal.Decimal(spot_cost).quantize(PER_UNIT_PLACES)

    jobs = client.execute(
        f"""
        SELECT tenant, job_key, window_start, window_end, first_pool, first_cluster, first_gpu_model,
               first_capacity_type
        FROM {table_ref(database, "gpu_job_windows")}
        WHERE window_date >= %(since)s AND window_date < %(until)s
        ORDER BY tenant, job_key, window_start
        """,
        params,
    )
    previous: tuple[Any, ...] | None = None
    for tenant, job, start, end, pool, cluster, gpu_model, capacity_type in jobs:
        if previous is not None and previous[:2] == (tenant, job) and start > previous[3]:
            group = group_of({"pool": previous[4], "cluster": previous[5], "gpu_model": previous[6],
                              "capacity_type": previous[7]})
            group["interruptions"] += 1
            group["downtime_s"] += int((start - previous[3]).total_seconds())
        if previous is None or previous[:2] != (tenant, job) or end > previous[3]:
            previous = (tenant, job, start, end, pool, cluster, gpu_model, capacity_type)

    def finish(row: dict[str, Any], spot: bool) -> dict[str, Any]:
        capacity = row["capacity_gpu_seconds"]
        row["gpu_hours"] = _ratio(capacity, 3600, RATE_PLACES) if capacity else decimal.Decimal("0.000000")
        row["utilization_pct"] = _ratio(row["utilized_gpu_seconds"] * 100, capacity, decimal.Decimal("0.01"))
        row["usd_per_gpu_hour"] = _ratio(row["known_cost_usd"] * 3600, capacity, PER_UNIT_PLACES)
        if spot:
            row["spot_savings_usd"] = row["on_demand_equivalent_usd"] - row["spot_cost_usd"]
            row["spot_savings_rate"] = _ratio(row["spot_savings_usd"], row["on_demand_equivalent_usd"], RATE_PLACES)
        else:
            row.update(spot_cost_usd=None, on_demand_equivalent_usd=None, spot_savings_usd=None, spot_savings_rate=None)
        row["restart_s"] = _ratio(row["downtime_s"], row["interruptions"], RATE_PLACES)
        return row

    rows = []
    for group in groups.values():
        spot = group.pop("_spot") > 0
        exact = group.pop("_on_demand")
        group["on_demand_equivalent_usd"] = (
            decimal.Decimal(f"{round(exact * 10**12)}E-12") if spot else decimal.Decimal(0))
        rows.append(finish(group, spot))
    rows.sort(key=lambda row: (-row["cost_usd"], *(str(row[d]) for d in dimensions)))
    total: dict[str, Any] = {d: "" for d in dimensions}
    for name in (*_GPU_KPI_SUMS, "on_demand_equivalent_usd"):
        zero = decimal.Decimal(0) if name.endswith("_usd") or name == "utilized_gpu_seconds" else 0
        total[name] = sum((row[name] for row in rows if row[name] is not None), zero)
    finish(total, any(row["spot_savings_usd"] is not None for row in rows))
    return Report(f"GPU KPIs by {', '.join(dimensions)}, {_span(since, until)}",
                  [*dimensions, *GPU_KPI_COLUMNS], rows, total)


def inference_pool_costs(client: Any, database: str, *, since: dt.date | None = None,
                         until: dt.date | None = None) -> Report:
    """Self-hosted inference: each pool window's GPU cost split by tokens per tenant (gpu_allocations rows of kind
    inference_tenant, written by agents/inference_agents.py), newest window first, with $ per million tokens.
    These rows re-attribute cost the nodes' own rows carry: never add them to GPU totals."""
    where, params = _date_filter(since, until, "window_date", ["kind = 'inference_tenant'"])
    found = client.execute(
        f"SELECT pool, window_start, tenant, tokens, cost_usd, usd_per_mtok, pool_cost_usd"
        f" FROM {table_ref(database, 'gpu_allocations')} FINAL{where}"
        f" ORDER BY window_start DESC, pool, tenant",
        params,
    )
    rows = [{"pool": pool, "window_start": start, "tenant": tenant, "tokens": int(tokens),
             "cost_usd": decimal.Decimal(cost), "usd_per_mtok": None if rate is None else decimal.Decimal(rate),
             "pool_cost_usd": decimal.Decimal(pool_cost)}
            for pool, start, tenant, tokens, cost, rate, pool_cost in found]
    total = _sum_rows(rows, ["tokens", "cost_usd"])
    total.update(pool="", window_start="", tenant="", pool_cost_usd="",
                 usd_per_mtok=_ratio(total["cost_usd"] * 1_000_000, total["tokens"], PER_UNIT_PLACES))
    span = _span(since, until) if since is not None and until is not None else "every window"
    return Report(f"inference pools: GPU cost by tokens, {span}",
                  ["pool", "window_start", "tenant", "tokens", "cost_usd", "usd_per_mtok", "pool_cost_usd"], rows, total)
