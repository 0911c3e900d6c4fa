"""The dashboard's queries and JSON endpoints on current ClickHouse (chdb, in-process), over a synthetic month
loaded through the sink's row functions: every figure equals the records' own totals to the last decimal."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from prismops.settings import load_settings
from prismops.sinks import reports
from prismops.sinks.chdb_client import ChdbClient
from prismops.sinks.clickhouse import allocation_row, anomaly_row, cost_line_row, routing_decision_row
from prismops.testing.synthetic_month import SyntheticMonth, synthetic_month
from prismops.ui.server import Dashboard, DashboardServer

DATABASE = "prismops_ui_chdb"
MONTH = dt.date(2025, 6, 1)
NOW = dt.datetime(2025, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
ROWS = {"cost_lines": cost_line_row, "gpu_allocations": allocation_row, "routing_decisions": routing_decision_row,
        "anomalies": anomaly_row}


@pytest.fixture(scope="module")
def month() -> SyntheticMonth:
    return synthetic_month(MONTH, llm_calls_per_day=30)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, month: SyntheticMonth) -> Iterator[ChdbClient]:
    client = ChdbClient.migrated(str(tmp_path_factory.mktemp("chdb-ui")), DATABASE)
    at = dt.datetime(2025, 7, 1, tzinfo=dt.timezone.utc)
    for table, records in (("cost_lines", month.cost_lines), ("gpu_allocations", month.allocations),
                           ("routing_decisions", month.decisions), ("anomalies", month.anomalies)):
        rows = [ROWS[table](r, kafka_partition=0, kafka_offset=i, ingested_at=at) for i, r in enumerate(records)]
        client.execute(f"INSERT INTO {DATABASE}.{table} ({', '.join(rows[0])}) VALUES", rows)
    yield client
    client.disconnect()


def on(day: dt.date, line: dict[str, Any]) -> bool:
    return line["event_time"].date() == day


def test_spend_breakdown_and_by_day_are_exact(engine: ChdbClient, month: SyntheticMonth) -> None:
    day = NOW.date()
    rows = reports.spend_breakdown(engine, DATABASE, "team", since=day, until=day + dt.timedelta(days=1))
    expected: dict[str, Decimal] = {}
    for line in month.cost_lines:
        if on(day, line):
            expected[line["team"]] = expected.get(line["team"], Decimal(0)) + line["cost_usd"]
    assert {r["key"]: r["cost_usd"] for r in rows} == expected
    assert [r["cost_usd"] for r in rows] == sorted((r["cost_usd"] for r in rows), reverse=True)
    by_day = reports.spend_by_day(engine, DATABASE, since=MONTH, until=dt.date(2025, 7, 1), by="source")
    assert sum(r["cost_usd"] for r in by_day) == sum(line["cost_usd"] for line in month.cost_lines)
    acme = reports.spend_breakdown(engine, DATABASE, "model", since=MONTH, until=dt.date(2025, 7, 1), tenant="acme")
    assert sum(r["cost_usd"] for r in acme) == sum(l["cost_usd"] for l in month.cost_lines if l["tenant"] == "acme")


def test_live_minutes_count_calls_errors_and_latency(engine: ChdbClient, month: SyntheticMonth) -> None:
    since = NOW - dt.timedelta(hours=12)
    rows = reports.live_minutes(engine, DATABASE, since=since)
    llm = [l for l in month.cost_lines if l["source"] == "llm" and since <= l["event_time"]]
    assert sum(r["calls"] for r in rows) == len(llm)
    assert sum(r["errors"] for r in rows) == sum(1 for l in llm if l["status"] != "ok")
    assert sum(r["cost_usd"] for r in rows) == sum(l["cost_usd"] for l in llm)
    assert all(r["latency_p95_ms"] >= r["latency_p50_ms"] for r in rows)


def test_routing_shadow_and_gpu_queries(engine: ChdbClient, month: SyntheticMonth) -> None:
    end = dt.date(2025, 7, 1)
    summary = reports.routing_summary(engine, DATABASE, since=MONTH, until=end)
    assert sum(r["decisions"] for r in summary["decisions"]) == len(month.decisions)
    assert sum(r["decisions"] for r in summary["arms"]) == sum(1 for d in month.decisions if d["experiment"])
    assert {r["arm"] for r in summary["arms"]} == {"cheap", "fast"}
    shadow = reports.main_vs_shadow(engine, DATABASE, since=MONTH, until=end)
    calls = {role: sum(r["calls"] for r in shadow if r["role"] == role) for role in ("main", "shadow")}
    llm = [l for l in month.cost_lines if l["source"] == "llm"]
    assert calls == {"main": sum(1 for l in llm if not l["shadow"]), "shadow": sum(1 for l in llm if l["shadow"])}
    pools = reports.gpu_pools(engine, DATABASE, since=MONTH, until=end)
    assert sum(r["cost_usd"] for r in pools) == sum(a["cost_usd"] for a in month.allocations)
    assert reports.tenant_names(engine, DATABASE, since=MONTH) == ["acme", "globex", "initech", "unallocated"]


class _Shared:
    """The module's chdb client for the dashboard, which disconnects after each request."""

    def __init__(self, client: ChdbClient) -> None:
        self.client = client

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.execute(*args, **kwargs)

    def disconnect(self) -> None:
        pass


@pytest.fixture()
def server(engine: ChdbClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[DashboardServer]:
    settings = load_settings().with_overrides(clickhouse={"database": DATABASE})
    monkeypatch.setattr(Dashboard, "_client", lambda self: _Shared(engine))
    server = DashboardServer(settings, port=0, now=lambda: NOW).start()
    yield server
    server.close()


def fetch(server: DashboardServer, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_endpoints_answer_json_with_exact_decimal_strings(server: DashboardServer, month: SyntheticMonth) -> None:
    status, spend = fetch(server, "/api/spend?by=model")
    assert status == 200
    mtd = sum(l["cost_usd"] for l in month.cost_lines if l["event_time"].date() <= NOW.date())
    assert Decimal(spend["forecast"]["month_to_date_usd"]) == mtd
    assert isinstance(spend["forecast"]["month_to_date_usd"], str)
    assert sum(Decimal(r["cost_usd"]) for r in spend["breakdown"]["tenant"]["month_to_date"]) == mtd
    status, live = fetch(server, "/api/live?minutes=720")
    assert status == 200 and live["totals"]["calls"] > 0 and live["series"]
    for path in ("/api/budgets", "/api/anomalies?days=15", "/api/routing?days=15", "/api/gpu", "/api/tenants",
                 "/api/live?tenant=acme"):
        status, document = fetch(server, path)
        assert status == 200, (path, document)
    assert fetch(server, "/api/anomalies?days=15")[1]["rows"][0]["top_cause"].startswith("feature=")
    assert fetch(server, "/api/gpu")[1]["pools"]
    budgets = fetch(server, "/api/budgets")[1]["rows"]
    assert {r["scope_id"] for r in budgets} == {"acme", "globex", "initech"}
    assert fetch(server, "/api/live?minutes=abc")[0] == 400
    assert fetch(server, "/api/spend?by=nope")[0] == 400
    assert fetch(server, "/nope")[0] == 404
    assert fetch(server, "/api/gateway") == (200, {"available": False, "models": [], "budgets": [],
                                                   "reason": "not following Kafka (prismops ui --no-kafka)"})
