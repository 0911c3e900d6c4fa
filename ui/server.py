"""The dashboard's HTTP server (stdlib ThreadingHTTPServer): the page, the chart library, JSON endpoints.

Every JSON endpoint opens its own ClickHouse connection (the driver's client is not thread-safe), runs read-only
queries from prismops.sinks.reports, assembles with prismops.ui.data and answers with exact decimals as
strings. `?tenant=` narrows every endpoint to one tenant. Errors answer 502 with {"error": "..."}.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prismops.settings import Settings
from prismops.sinks import reports
from prismops.sinks.clickhouse import clickhouse_client, server_message
from prismops.ui import data
from prismops.ui.assets import HERE, chart_library

log = logging.getLogger(__name__)

SPEND_DIMENSIONS = ("tenant", "team", "model", "feature")
BY_DAY_DIMENSIONS = ("team", "tenant", "model", "feature", "source")
CACHE_DIMENSIONS = ("tenant", "service", "feature")
DEFAULT_LIVE_MINUTES = 30
MAX_LIVE_MINUTES = 24 * 60
DEFAULT_DAYS = 30
MAX_DAYS = 366


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


MODEL_COLUMNS = ("provider", "model", "requests_per_second", "tokens_per_second", "sample_count", "error_rate",
                 "rate_limited_rate", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "p95_ttft_ms", "cost_usd",
                 "cost_per_1k_input_usd", "cost_per_1k_output_usd", "window_seconds", "updated_at")


class GatewayTables:
    """The router's own live tables, followed from their compacted topics for the server's lifetime (the same
    followers the gateway runs): per-model latency, errors, rate and prices (routing.tables.v1) and the budget
    state per tenant and team, with what is blocked (routing.budgets.v1)."""

    def __init__(self, settings: Settings) -> None:
        from prismops.gateway_grpc.live_table import BudgetStateTable, LiveModelTable, LiveTableFollower
        from prismops.streams.topics import BUDGET_STATE, ROUTING_TABLES

        logging.getLogger("prismops.gateway_grpc.live_table").setLevel(logging.ERROR)  # progress lines: the gateway's
        self.models, self.budgets = LiveModelTable(), BudgetStateTable()
        self.followers = [LiveTableFollower(settings, ROUTING_TABLES, self.models),
                          LiveTableFollower(settings, BUDGET_STATE, self.budgets)]
        for follower in self.followers:
            follower.start()

    def document(self, tenant: str | None, now: dt.datetime) -> dict[str, Any]:
        models = []
        for row in sorted(self.models.snapshot().values(), key=lambda r: (r["provider"], r["model"])):
            item = {name: row.get(name) for name in MODEL_COLUMNS}
            updated = row.get("updated_at")
            item["age_s"] = round((now - updated).total_seconds(), 1) if isinstance(updated, dt.datetime) else None
            models.append(item)
        scopes = []
        for (scope, scope_id), row in sorted(self.budgets.snapshot().items()):
            if tenant is not None and scope == "tenant" and scope_id != tenant:
                continue
            top = max(row.get("budgets") or [], key=lambda b: b.get("used_pct") or 0, default={})
            scopes.append({"scope": scope, "scope_id": scope_id, "blocked": row.get("blocked"),
                           "blocked_reason": row.get("blocked_reason"), "budget_id": top.get("budget_id"),
                           "used_pct": top.get("used_pct"), "updated_at": row.get("updated_at")})
        return {
            "available": True, "topics": [f.topic for f in self.followers],
            "caught_up": all(f.caught_up.is_set() for f in self.followers), "models": models, "budgets": scopes,
        }

    def close(self) -> None:
        for follower in self.followers:
            follower.stop(timeout=5.0)


class Dashboard:
    """The JSON documents of the page, one method per endpoint; `now` is injectable for tests."""

    def __init__(self, settings: Settings, now: Callable[[], dt.datetime] = utc_now,
                 gateway: GatewayTables | None = None) -> None:
        self.settings = settings
        self.now = now
        self.database = settings.clickhouse.database
        self.gateway_tables = gateway

    def gateway(self, tenant: str | None) -> dict[str, Any]:
        if self.gateway_tables is None:
            return {"available": False, "models": [], "budgets": [],
                    "reason": "not following Kafka (prismops ui --no-kafka)"}
        return self.gateway_tables.document(tenant, self.now())

    def _client(self) -> Any:
        return clickhouse_client(self.settings)

    def live(self, tenant: str | None, minutes: int = DEFAULT_LIVE_MINUTES) -> dict[str, Any]:
        now = self.now()
        since = (now - dt.timedelta(minutes=minutes)).astimezone(dt.timezone.utc).replace(second=0, microsecond=0)
        client = self._client()
        try:
            rows = reports.live_minutes(client, self.database, since=since, tenant=tenant)
        finally:
            client.disconnect()
        return {"since": since, "now": now, **data.live_summary(rows, minutes * 60)}

    def spend(self, tenant: str | None, days: int = DEFAULT_DAYS, by: str = "team") -> dict[str, Any]:
        if by not in BY_DAY_DIMENSIONS:
            raise ValueError(f"by={by!r}: use one of {', '.join(BY_DAY_DIMENSIONS)}")
        now = self.now()
        today = now.astimezone(dt.timezone.utc).date()
        tomorrow = today + dt.timedelta(days=1)
        first = data.month_start(today)
        since = min(first, today - dt.timedelta(days=days - 1))
        client = self._client()
        try:
            breakdown = {
                dimension: {
                    "today": reports.spend_breakdown(client, self.database, dimension, since=today, until=tomorrow,
                                                     tenant=tenant),
                    "month_to_date": reports.spend_breakdown(client, self.database, dimension, since=first,
                                                             until=tomorrow, tenant=tenant),
                }
                for dimension in SPEND_DIMENSIONS
            }
            by_day = reports.spend_by_day(client, self.database, since=since, until=tomorrow, by=by, tenant=tenant)
        finally:
            client.disconnect()
        return {
            "today": today, "month_start": first, "breakdown": breakdown, "by": by,
            "by_day": data.pivot_days(by_day, since, tomorrow),
            "forecast": data.month_forecast(by_day, now),
        }

    def budgets(self, tenant: str | None) -> dict[str, Any]:
        from prismops.finops.budgets import WILDCARD, load_budget_book
        from prismops.finops.tagging import UNALLOCATED

        now = self.now()
        today = now.astimezone(dt.timezone.utc).date()
        tomorrow = today + dt.timedelta(days=1)
        first = data.month_start(today)
        book = load_budget_book(self.settings.budgets)
        usage: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        client = self._client()
        try:
            for scope in ("tenant", "team"):
                if not book.has_scope(scope):
                    continue
                periods = {"daily": (today, tomorrow), "monthly": (first, tomorrow)}
                for period, (since, until) in periods.items():
                    for scope_id, used in reports.scope_usage(client, self.database, scope, since=since,
                                                              until=until).items():
                        usage.setdefault((scope, scope_id), {})[period] = used
        finally:
            client.disconnect()
        # the idle GPU bucket and untagged spend are nobody's budget
        scopes = {s for s in usage if s[1] not in (UNALLOCATED, "")}
        scopes |= {(b.scope, b.scope_id) for b in book.budgets if b.scope_id != WILDCARD}
        if tenant is not None:
            scopes = {s for s in scopes if s[0] != "tenant" or s[1] == tenant}
        budgets_by_scope = {s: book.for_scope(*s) for s in scopes}
        rows = data.budget_burn({s: b for s, b in budgets_by_scope.items() if b}, usage, now)
        return {"now": now, "rows": rows,
                "method": "linear: spend so far in the period / time elapsed x the period's length (UTC calendar)"}

    def anomalies(self, tenant: str | None, days: int = 7) -> dict[str, Any]:
        today = self.now().astimezone(dt.timezone.utc).date()
        client = self._client()
        try:
            report = reports.anomalies(client, self.database, since=today - dt.timedelta(days=days - 1),
                                       until=today + dt.timedelta(days=1), tenant=tenant)
        finally:
            client.disconnect()
        return {"title": report.title, "rows": report.rows[:200], "total": report.total}

    def routing(self, tenant: str | None, days: int = 1) -> dict[str, Any]:
        today = self.now().astimezone(dt.timezone.utc).date()
        since, until = today - dt.timedelta(days=days - 1), today + dt.timedelta(days=1)
        client = self._client()
        try:
            summary = reports.routing_summary(client, self.database, since=since, until=until, tenant=tenant)
            shadow = reports.main_vs_shadow(client, self.database, since=since, until=until, tenant=tenant)
        finally:
            client.disconnect()
        return {"since": since, **summary, "main_vs_shadow": data.main_vs_shadow_pairs(shadow)}

    def gpu(self, tenant: str | None, days: int = 1) -> dict[str, Any]:
        today = self.now().astimezone(dt.timezone.utc).date()
        since = today - dt.timedelta(days=days - 1)
        client = self._client()
        try:
            rows = reports.gpu_pools(client, self.database, since=since, until=today + dt.timedelta(days=1),
                                     tenant=tenant)
        finally:
            client.disconnect()
        return {"since": since, "pools": data.gpu_by_pool(rows)}

    def cache(self, tenant: str | None, days: int = 1) -> dict[str, Any]:
        """The response cache per (tenant, service, feature) over the last `days` UTC days, today included: the
        `prismops report cache` figures (calls, hits, hit rate, cost, saved USD and %), most saved first; the
        total is over every group even where the rows are cut at 200."""
        today = self.now().astimezone(dt.timezone.utc).date()
        since = today - dt.timedelta(days=days - 1)
        client = self._client()
        try:
            report = reports.cache_savings(client, self.database, CACHE_DIMENSIONS, since=since,
                                           until=today + dt.timedelta(days=1), tenant=tenant)
        finally:
            client.disconnect()
        return {"since": since, "title": report.title, "columns": report.columns, "rows": report.rows[:200],
                "total": report.total}

    def tenants(self) -> dict[str, Any]:
        today = self.now().astimezone(dt.timezone.utc).date()
        client = self._client()
        try:
            names = reports.tenant_names(client, self.database, since=data.month_start(today))
        finally:
            client.disconnect()
        return {"tenants": names}


def _int(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name, [None])[0]
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is out of range [{low}, {high}]")
    return value


def make_handler(dashboard: Dashboard, poll_s: int) -> type[BaseHTTPRequestHandler]:
    page = (HERE / "page.html").read_text()

    class Handler(BaseHTTPRequestHandler):
        server_version = "prismops-ui"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, content_type: str, cache: str = "no-store") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, document: Any) -> None:
            body = json.dumps(data.to_jsonable(document), separators=(",", ":")).encode()
            self._send(status, body, "application/json")

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            tenant = query.get("tenant", [""])[0] or None
            route = url.path
            if route in ("/", "/index.html"):
                html = page.replace("__POLL_MS__", str(poll_s * 1000)).replace("__DATABASE__", dashboard.database)
                self._send(HTTPStatus.OK, html.encode(), "text/html; charset=utf-8")
                return
            if route == "/assets/chart.umd.js":
                library = chart_library(dashboard.settings)
                if library is None:
                    self._json(HTTPStatus.NOT_FOUND, {"error": "chart library not installed: run `prismops ui build`"})
                    return
                self._send(HTTPStatus.OK, library.read_bytes(), "text/javascript", cache="max-age=3600")
                return
            if route == "/healthz":
                self._json(HTTPStatus.OK, {"status": "ok", "database": dashboard.database})
                return
            endpoints: dict[str, Callable[[], Any]] = {
                "/api/live": lambda: dashboard.live(tenant, _int(query, "minutes", DEFAULT_LIVE_MINUTES, 1,
                                                                 MAX_LIVE_MINUTES)),
                "/api/spend": lambda: dashboard.spend(tenant, _int(query, "days", DEFAULT_DAYS, 1, MAX_DAYS),
                                                      query.get("by", ["team"])[0]),
                "/api/budgets": lambda: dashboard.budgets(tenant),
                "/api/anomalies": lambda: dashboard.anomalies(tenant, _int(query, "days", 7, 1, MAX_DAYS)),
                "/api/routing": lambda: dashboard.routing(tenant, _int(query, "days", 1, 1, MAX_DAYS)),
                "/api/gpu": lambda: dashboard.gpu(tenant, _int(query, "days", 1, 1, MAX_DAYS)),
                "/api/cache": lambda: dashboard.cache(tenant, _int(query, "days", 1, 1, MAX_DAYS)),
                "/api/tenants": dashboard.tenants,
                "/api/gateway": lambda: dashboard.gateway(tenant),
            }
            handler = endpoints.get(route)
            if handler is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {route}"})
                return
            try:
                document = handler()
            except ValueError as error:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
                return
            except Exception as error:  # the server's or the network's: the page shows it and polls again
                message = server_message(error)
                if "doesn't exist" in message:
                    message += f" (database {dashboard.database}: run `prismops migrate`, then the sink fills it)"
                log.warning("%s failed: %s", route, message)
                self._json(HTTPStatus.BAD_GATEWAY, {"error": message})
                return
            self._json(HTTPStatus.OK, document)

    return Handler


class DashboardServer:
    """The page's server on host:port (port 0: a free one), served from a background thread or the caller's."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 8710, poll_s: int = 5,
                 now: Callable[[], dt.datetime] = utc_now, follow_kafka: bool = False) -> None:
        self.dashboard = Dashboard(settings, now)
        self.httpd = ThreadingHTTPServer((host, port), make_handler(self.dashboard, poll_s))
        # followed only once the port is ours: a failed bind leaves no consumer threads behind
        self.gateway = GatewayTables(settings) if follow_kafka else None
        self.dashboard.gateway_tables = self.gateway
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> "DashboardServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="prismops-ui", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.gateway is not None:
            self.gateway.close()


__all__ = ["Dashboard", "DashboardServer"]
