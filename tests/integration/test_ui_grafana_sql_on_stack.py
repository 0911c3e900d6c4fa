"""The finops dashboard's ClickHouse panels on the stack's ClickHouse (18.16): the same queries as
tests/ui/test_grafana_sql_on_chdb.py runs on current ClickHouse, with Grafana's variables filled in."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from prismops.finops.labels import CACHE_SAVED_USD_LABEL
from prismops.infra.config import INFRA_DIR
from prismops.settings import Settings
from prismops.sinks.clickhouse import cost_line_row
from prismops.sinks.migrations import apply_migrations
from prismops.testing import clickhouse
from prismops.testing.synthetic_month import synthetic_month

TENANTS = ("acme", "globex")


def fill(query: str, database: str, start: dt.datetime, end: dt.datetime) -> str:
    return (query.replace("$database", database)
            .replace("${tenant:singlequote}", ", ".join(f"'{t}'" for t in TENANTS))
            .replace("$from", str(int(start.timestamp()))).replace("$to", str(int(end.timestamp()))))


def test_the_clickhouse_panels_run_on_the_stack(isolated_settings: Settings) -> None:
    apply_migrations(isolated_settings)
    database = isolated_settings.clickhouse.database
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    month = synthetic_month(now.date().replace(day=1), llm_calls_per_day=10)
    lines = [{**l, "labels": {CACHE_SAVED_USD_LABEL: f"0.{i:04d}{i % 7}"}} if l["cache_hit"] else l
             for i, l in enumerate(month.cost_lines) if l["event_time"] <= now]
    # three cache hits at this very second, so the today-only cache panel has hits to check at any hour
    calls = [l for l in lines if l["source"] == "llm" and l["tenant"] == "acme"][:3]
    lines += [{**l, "line_id": f"{l['line_id']}-cached-now", "event_time": now, "cache_hit": True,
               "labels": {CACHE_SAVED_USD_LABEL: f"0.00{n + 1}"}} for n, l in enumerate(calls)]
    expected = sum(l["cost_usd"] for l in lines if l["tenant"] in TENANTS)
    dashboard = json.loads((INFRA_DIR / "grafana" / "finops.json").read_text())
    queries = {panel["title"]: target["query"] for panel in dashboard["panels"] for target in panel["targets"]
               if target["datasource"]["uid"] == "clickhouse"}
    client = clickhouse(isolated_settings)
    try:
        rows = [cost_line_row(r, kafka_partition=0, kafka_offset=i, ingested_at=now) for i, r in enumerate(lines)]
        client.execute(f"INSERT INTO {database}.cost_lines ({', '.join(rows[0])}) VALUES", rows)
        start = dt.datetime.combine(month.month, dt.time(), dt.timezone.utc)
        results = {title: client.execute(fill(query, database, start, now)) for title, query in queries.items()}
    finally:
        client.disconnect()
    assert len(results) == 5
    today = [l for l in lines if l["source"] == "llm" and l["tenant"] in TENANTS and l["event_time"].date() == now.date()]
    for title, found in results.items():
        if "Response cache" in title:  # today's calls, hits and the saved USD of the hits' labels
            hits = [l for l in today if l["cache_hit"]]
            assert len(hits) >= 3
            assert (sum(r[3] for r in found), sum(r[4] for r in found)) == (len(today), len(hits)), title
            saved = sum(Decimal(l["labels"][CACHE_SAVED_USD_LABEL]) for l in hits)
            assert abs(Decimal(str(sum(r[7] for r in found))) - saved) < Decimal("1e-6"), title
            continue
        if "per UTC day" in title:
            total = sum(v for _, series in found for _, v in series)
        elif "forecast" in title:
            ((total, forecast),) = found
            assert forecast >= total
        else:
            total = sum(r[1] for r in found)
            assert [r[1] for r in found] == sorted((r[1] for r in found), reverse=True), title
        assert abs(Decimal(str(total)) - expected) < Decimal("1e-6"), title
