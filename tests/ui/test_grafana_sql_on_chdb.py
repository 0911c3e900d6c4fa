"""The finops dashboard's ClickHouse panels (Altinity's Grafana plugin) run on current ClickHouse (chdb), with the
dashboard variables filled in as Grafana fills them, and give the records' own figures."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from decimal import Decimal

import pytest

from prismops.finops.labels import CACHE_SAVED_USD_LABEL
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
    """This month, so the month-to-date panels (which read now()) see it, with calls at today's midnight for the
    cache panel (today only) whatever the hour; cache hits carry their saved price as the gateway stores it."""
    data = synthetic_month(NOW.date().replace(day=1), llm_calls_per_day=10)
    midnight = dt.datetime.combine(NOW.date(), dt.time(), dt.timezone.utc)
    data.cost_lines.extend({**line, "line_id": line["line_id"] + "/today", "event_time": midnight}
                           for line in [l for l in data.cost_lines if l["source"] == "llm"][:40])
    rng = random.Random(19)
    for line in data.cost_lines:
        if line["source"] == "llm" and line["cache_hit"]:
            line["labels"] = {CACHE_SAVED_USD_LABEL: f"{rng.randint(1, 10**9)}e-{rng.randint(3, 12)}"}
    return data


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
    assert len(queries) == 5
    now = NOW
    start, end = month.month, now
    expected = sum(l["cost_usd"] for l in month.cost_lines
                   if l["tenant"] in TENANTS and l["event_time"] <= now)
    for title, query in queries.items():
        rows = engine.execute(fill(query, DATABASE, dt.datetime.combine(start, dt.time(), dt.timezone.utc), end))
        if "Response cache" in title:
            check_cache_panel(rows, month)
        elif "by team" in title and "per UTC day" not in title or "by model" in title:
            assert abs(Decimal(str(sum(r[1] for r in rows))) - expected) < Decimal("1e-6"), title
        elif "per UTC day" in title:
            assert abs(Decimal(str(sum(v for _, series in rows for _, v in series))) - expected) < Decimal("1e-6")
            assert all(t % 86_400_000 == 0 for t, _ in rows)
        else:
            ((mtd, forecast),) = rows
            assert abs(Decimal(str(mtd)) - expected) < Decimal("1e-6") and forecast >= mtd


def check_cache_panel(rows: list[tuple], month: SyntheticMonth) -> None:
    """Today's calls and hits per (tenant, service, feature) of the selected tenants, as the records count them,
    and the saved dollars of the hits' labels (Float64 in the panel: to 1e-6)."""
    expected: dict[tuple[str, str, str], list] = {}
    for line in month.cost_lines:
        if (line["source"] == "llm" and line["tenant"] in TENANTS and line["event_time"].date() == NOW.date()
                and line["event_time"] <= NOW):
            group = expected.setdefault((line["tenant"], line["service"], line["feature"]), [0, 0, Decimal(0)])
            group[0] += 1
            if line["cache_hit"]:
                group[1] += 1
                group[2] += Decimal(line["labels"][CACHE_SAVED_USD_LABEL])
    assert sum(hits for _, hits, _ in expected.values()) > 0
    got = {tuple(row[:3]): row[3:] for row in rows}
    assert {key: (calls, hits) for key, (calls, hits, *_) in got.items()} == {
        key: (calls, hits) for key, (calls, hits, _) in expected.items()}
    for key, (calls, hits, hit_rate, cost, saved, saved_pct) in got.items():
        assert abs(Decimal(str(saved)) - expected[key][2]) < Decimal("1e-6"), key
        assert abs(hit_rate - hits / calls) <= 0.00005, key  # rounded to 4 places
        assert abs(saved_pct - (saved * 100 / (cost + saved) if cost + saved > 0 else 0)) <= 0.005, key
    assert [row[7] for row in rows] == sorted((row[7] for row in rows), reverse=True), "most saved first"
