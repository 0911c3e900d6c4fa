"""sinks/reports.cache_savings on a current ClickHouse engine (chdb): hits, hit rate and the saved dollars of
the hits' labels, exact to the last decimal place, per tenant and for one tenant alone; lines of other days and
other sources left out."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest

from prismops.finops.labels import CACHE_SAVED_USD_LABEL
from prismops.sinks import reports
from prismops.sinks.chdb_client import ChdbClient
from prismops.sinks.clickhouse import cost_line_row
from prismops.testing.synthetic_month import synthetic_month

DATABASE = "prismops_cache_report"
DAY = dt.date(2025, 6, 3)


def test_the_cache_report_counts_hits_and_sums_the_saved_dollars_exactly(tmp_path) -> None:
    month = synthetic_month(dt.date(2025, 6, 1), llm_calls_per_day=30)
    rng = random.Random(17)
    lines = []
    for index, line in enumerate(month.cost_lines):
        if line["source"] == "llm" and line["cache_hit"]:
            line = {**line, "labels": {CACHE_SAVED_USD_LABEL: f"{rng.randint(1, 10**9)}e-{rng.randint(3, 12)}"}}
        lines.append(line)
    ingested = dt.datetime(2025, 7, 1, tzinfo=dt.timezone.utc)
    rows = [cost_line_row(l, kafka_partition=0, kafka_offset=i, ingested_at=ingested) for i, l in enumerate(lines)]
    client = ChdbClient.migrated(str(tmp_path / "chdb"), DATABASE)
    try:
        client.execute(f"INSERT INTO {DATABASE}.cost_lines ({', '.join(rows[0])}) VALUES", rows)
        report = reports.cache_savings(client, DATABASE, ["tenant"], since=DAY, until=DAY + dt.timedelta(days=1))
        initech = reports.cache_savings(client, DATABASE, ["tenant", "feature"], since=DAY,
                                        until=DAY + dt.timedelta(days=1), tenant="initech")
    finally:
        client.disconnect()

    of_day = [l for l in lines if l["source"] == "llm" and l["event_time"].date() == DAY]
    expected: dict[str, dict] = {}
    for line in of_day:
        group = expected.setdefault(line["tenant"], {"llm_requests": 0, "cache_hits": 0, "saved_usd": Decimal(0),
                                                    "llm_cost_usd": Decimal(0)})
        group["llm_requests"] += 1
        group["llm_cost_usd"] += line["cost_usd"]
        if line["cache_hit"]:
            group["cache_hits"] += 1
            group["saved_usd"] += Decimal(line["labels"][CACHE_SAVED_USD_LABEL])
    assert sum(g["cache_hits"] for g in expected.values()) > 0, "the day has hits to count"
    got = {row["tenant"]: {k: row[k] for k in ("llm_requests", "cache_hits", "saved_usd", "llm_cost_usd")}
           for row in report.rows}
    assert got == expected
    assert report.total["saved_usd"] == sum(g["saved_usd"] for g in expected.values())
    first = report.rows[0]
    assert first["saved_usd"] == max(g["saved_usd"] for g in expected.values()), "most saved first"
    assert first["hit_rate"] == (Decimal(first["cache_hits"]) / first["llm_requests"]).quantize(Decimal("1e-6"))
    assert {row["tenant"] for row in initech.rows} == {"initech"}, "the tenant filter leaves the others out"
    assert {k: initech.total[k] for k in expected["initech"]} == expected["initech"]
    assert initech.title.endswith(", tenant initech")


def test_an_unknown_dimension_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="--by colour"):
        reports.cache_savings(None, DATABASE, ["colour"], since=DAY, until=DAY)
