"""The dashboard's queries and JSON endpoints on current ClickHouse (chdb, in-process), over a synthetic month
loaded through the sink's row functions: every figure equals the records' own totals to the last decimal."""

from __future__ import annotations

import datetime as dt
import json
import random
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from prismops.finops.labels import CACHE_SAVED_USD_LABEL
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
    """The synthetic month with what the gateway stores on a cache hit: the avoided call's price as a label."""
    data = synthetic_month(MONTH, llm_calls_per_day=30)
    rng = random.Random(17)
    for line in data.cost_lines:
        if line["source"] == "llm" and line["cache_hit"]:
            line["labels"] = {CACHE_SAVED_USD_LABEL: f"{rng.randint(1, 10**9)}e-{rng.randint(3, 12)}"}
    return data


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


def expected_cache(lines: list[dict[str, Any]], day: dt.date) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Calls, hits and saved USD per (tenant, service, feature) of one day's LLM lines, from the records."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for line in lines:
        if line["source"] != "llm" or not on(day, line):
            continue
        group = groups.setdefault((line["tenant"], line["service"], line["feature"]),
                                  {"llm_requests": 0, "cache_hits": 0, "saved_usd": Decimal(0), "llm_cost_usd": Decimal(0)})
        group["llm_requests"] += 1
        group["llm_cost_usd"] += line["cost_usd"]
        if line["cache_hit"]:
            group["cache_hits"] += 1
            group["saved_usd"] += Decimal(line["labels"][CACHE_SAVED_USD_LABEL])
    return groups


def test_cache_savings_per_tenant_service_and_feature_are_exact(engine: ChdbClient, month: SyntheticMonth) -> None:
    day = NOW.date()
    expected = expected_cache(month.cost_lines, day)
    assert sum(g["cache_hits"] for g in expected.values()) > 0 and len({k[0] for k in expected}) > 1
    report = reports.cache_savings(engine, DATABASE, ["tenant", "service", "feature"], since=day,
                                   until=day + dt.timedelta(days=1))
    got = {(r["tenant"], r["service"], r["feature"]): {k: r[k] for k in ("llm_requests", "cache_hits", "saved_usd",
                                                                          "llm_cost_usd")} for r in report.rows}
    assert got == expected
    assert report.total["saved_usd"] == sum(g["saved_usd"] for g in expected.values())
    assert report.total["cache_hits"] == sum(1 for l in month.cost_lines
                                             if l["source"] == "llm" and on(day, l) and l["cache_hit"])

    acme = reports.cache_savings(engine, DATABASE, ["tenant", "service", "feature"], since=day,
                                 until=day + dt.timedelta(days=1), tenant="acme")
    assert acme.rows and {r["tenant"] for r in acme.rows} == {"acme"}
    assert acme.total["saved_usd"] == sum(g["saved_usd"] for k, g in expected.items() if k[0] == "acme")
    assert acme.total["cache_hits"] == sum(g["cache_hits"] for k, g in expected.items() if k[0] == "acme")
    assert reports.cache_savings(engine, DATABASE, ["tenant"], since=day, until=day + dt.timedelta(days=1),
                                 tenant="acme' OR 1 = 1 OR tenant = '").rows == [], "the tenant is bound, not spliced"


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
    assert fetch(server, "/api/cache?days=0")[0] == 400
    assert fetch(server, "/api/spend?by=nope")[0] == 400
    assert fetch(server, "/nope")[0] == 404
    assert fetch(server, "/api/gateway") == (200, {"available": False, "models": [], "budgets": [],
                                                   "reason": "not following Kafka (prismops ui --no-kafka)"})


CACHE_KEYS = {"tenant", "service", "feature", "llm_requests", "cache_hits", "hit_rate", "llm_cost_usd", "saved_usd",
              "saved_pct"}


def test_the_cache_endpoint_answers_today_per_tenant_service_and_feature(server: DashboardServer,
                                                                         month: SyntheticMonth) -> None:
    expected = expected_cache(month.cost_lines, NOW.date())
    status, cache = fetch(server, "/api/cache")
    assert status == 200, cache
    assert cache["since"] == NOW.date().isoformat() and cache["rows"]
    assert all(set(row) == CACHE_KEYS for row in cache["rows"])
    assert {(r["tenant"], r["service"], r["feature"]): (r["llm_requests"], r["cache_hits"], Decimal(r["saved_usd"]))
            for r in cache["rows"]} == {k: (g["llm_requests"], g["cache_hits"], g["saved_usd"]) for k, g in expected.items()}
    total = cache["total"]
    assert isinstance(total["saved_usd"], str) and isinstance(total["hit_rate"], str)
    assert Decimal(total["saved_usd"]) == sum(g["saved_usd"] for g in expected.values())
    assert total["cache_hits"] == sum(g["cache_hits"] for g in expected.values())
    hits, calls = total["cache_hits"], total["llm_requests"]
    assert Decimal(total["hit_rate"]) == (Decimal(hits) / calls).quantize(Decimal("1e-6"))

    status, globex = fetch(server, "/api/cache?tenant=globex&days=15")
    assert status == 200 and globex["rows"] and {r["tenant"] for r in globex["rows"]} == {"globex"}
    fortnight = [l for l in month.cost_lines if l["tenant"] == "globex" and l["source"] == "llm"
                 and MONTH <= l["event_time"].date() <= NOW.date()]
    assert globex["total"]["cache_hits"] == sum(1 for l in fortnight if l["cache_hit"])
    assert Decimal(globex["total"]["saved_usd"]) == sum(Decimal(l["labels"][CACHE_SAVED_USD_LABEL])
                                                        for l in fortnight if l["cache_hit"])
