"""Report queries over the sink tables; plain SQL that ClickHouse 18.16 and current ClickHouse both run.

Every query reads with FINAL, so a duplicate that slipped past the sink (it should not) is still counted
once: the ReplacingMergeTree key is the row's id within its date.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from clickhouse_driver import Client

from sinks.clickhouse import table_ref


def _date_filter(since: dt.date | None, until: dt.date | None) -> tuple[str, dict[str, Any]]:
    conditions, params = [], {}
    if since is not None:
        conditions.append("event_date >= %(since)s")
        params["since"] = since
    if until is not None:
        conditions.append("event_date < %(until)s")
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
