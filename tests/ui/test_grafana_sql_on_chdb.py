"""The finops dashboard's ClickHouse panels (Altinity's Grafana plugin) run on current ClickHouse (chdb), with the
dashboard variables filled in as Grafana fills them, and give the records' own figures."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal

import pytest

from prismops.infra.config import INFRA_DIR
from prismops.sinks.chdb_client import ChdbClient
from prismops.sinks.clickhouse import cost_line_row
from prismops.testing.synthetic_month import SyntheticMonth, synthetic_month

DATABASE = "prismops_grafana_chdb"
TENANTS = ("acme", "globex")
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)  # the panels read now(): only rows up to it are loaded


def clickhouse_queries() -> dict[str, str]:
    dashboard = json.loads((INFRA_DIR / "grafana" / "finops.json").read_text())
    return {panel["title"]: target["query"] for panel in dashboard["panels"] for target in panel["targets"]
            if target["datasource"]["uid"] == "clickhouse"}


def fill(query: str, database: str, start: dt.datetime, end: dt.datetime) -> str:
    """Grafana's interpolation: $database, ${tenant:singlequote} (a multi-value list), $from and $to (seconds)."""
    return (query.replace("$database", database)
            .replace("${tenant:singlequote}", ", ".join(f"'{t}'" for t in TENANTS))
            .replace("$from", str(int(start.timestamp()))).replace("$to", str(int(end.timestamp()))))


@pytest.fixture(scope="module")
def month() -> SyntheticMonth:
    # this month, so the month-to-date panels (which read now()) see it
    return synthetic_month(NOW.date().replace(day=1), llm_calls_per_day=10)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, month: SyntheticMonth) -> Iterator[ChdbClient]:
    client = ChdbClient.migrated(str(tmp_path_factory.mktemp("chdb-grafana")), DATABASE)
    rows = [cost_line_row(r, kafka_partition=0, kafka_offset=i, ingested_at=dt.datetime.now(dt.timezone.utc))
            for i, r in enumerate(month.cost_lines) if r["event_time"] <= NOW]
    client.execute(f"INSERT INTO {DATABASE}.cost_lines ({', '.join(rows[0])}) VALUES", rows)
    yield client
    client.disconnect()


def test_every_clickhouse_panel_runs_and_adds_up(engine: ChdbClient, month: SyntheticMonth) -> None:
    queries = clickhouse_queries()
    assert len(queries) == 4
    now = NOW
    start, end = month.month, now
    expected = sum(l["cost_usd"] for l in month.cost_lines
                   if l["tenant"] in TENANTS and l["event_time"] <= now)
    for title, query in queries.items():
        rows = engine.execute(fill(query, DATABASE, dt.datetime.combine(start, dt.time(), dt.timezone.utc), end))
        if "by team" in title and "per UTC day" not in title or "by model" in title:
            assert abs(Decimal(str(sum(r[1] for r in rows))) - expected) < Decimal("1e-6"), title
        elif "per UTC day" in title:
            assert abs(Decimal(str(sum(v for _, series in rows for _, v in series))) - expected) < Decimal("1e-6")
            assert all(t % 86_400_000 == 0 for t, _ in rows)
        else:
            ((mtd, forecast),) = rows
            assert abs(Decimal(str(mtd)) - expected) < Decimal("1e-6") and forecast >= mtd
