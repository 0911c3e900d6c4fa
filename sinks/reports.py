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
