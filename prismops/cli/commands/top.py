"""`prismops top`: a live terminal view of the running components, read straight from their /metrics pages.

For people on a terminal without Prometheus or Grafana: throughput (counter deltas between two reads),
consumer lag, spend today and its rate, the top tenants, budgets and the circuit breakers.
`--once --format json` prints one sample, taken over `--interval` seconds, for scripts.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import click
from prometheus_client.parser import text_string_to_metric_families
from rich.columns import Columns
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from prismops.cli.output import FORMAT_OPTION, emit_json, fail, stdout_console, to_jsonable
from prismops.settings import Settings

SCRAPE_TIMEOUT_S = 2.0
USD = Decimal("0.0001")
BREAKER_STATES = {0: "closed", 1: "half_open", 2: "open"}
BREAKER_STYLES = {"closed": "green", "half_open": "yellow", "open": "bold red"}

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Endpoint:
    """One component's /metrics page."""

    name: str
    url: str


@dataclass
class Scrape:
    """Every sample of every endpoint read at one moment. A series exported by several processes is merged:
    counters add up (each process counts its own events), gauges keep the largest value."""

    taken_at: float  # time.monotonic() of the read, for rates
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)
    errors: dict[str, str | None] = field(default_factory=dict)  # endpoint name -> None when it answered

    def add(self, name: str, labels: Mapping[str, str], value: float, kind: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        if key not in self.samples:
            self.samples[key] = value
        elif kind == "counter":
            self.samples[key] += value
        else:
            self.samples[key] = max(self.samples[key], value)

    def add_text(self, text: str) -> None:
        """Every sample of one Prometheus text exposition (a /metrics page); a malformed page raises ValueError
        and adds nothing."""
        parsed = [
            (sample.name, sample.labels, sample.value, family.type)
            for family in text_string_to_metric_families(text) for sample in family.samples
            if not sample.name.endswith("_created")
        ]
        for name, labels, value, kind in parsed:
            self.add(name, labels, value, kind)

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: value for (sample, labels), value in self.samples.items() if sample == name}


def endpoints_from_settings(settings: Settings) -> list[Endpoint]:
    """The worker's, sink's and gateway's /metrics on loopback; a component whose endpoint is off is left out."""
    ports = {"worker": settings.worker.web_port, "sink": settings.sink.metrics_port,
             "gateway": settings.gateway.metrics_port}
    return [Endpoint(name, f"http://127.0.0.1:{port}/metrics") for name, port in ports.items() if port]


def parse_endpoint_option(values: Sequence[str]) -> list[Endpoint]:
    endpoints = []
    for value in values:
        name, separator, url = value.partition("=")
        if not separator or not name or not url.startswith(("http://", "https://")):
            raise click.BadParameter(f"{value!r} is not NAME=http://host:port/metrics", param_hint="--url")
        endpoints.append(Endpoint(name, url))
    return endpoints


def scrape(endpoints: Iterable[Endpoint], timeout_s: float = SCRAPE_TIMEOUT_S) -> Scrape:
    """Read every endpoint once; one that does not answer is recorded with its error, not raised."""
    result = Scrape(taken_at=time.monotonic())
    for endpoint in endpoints:
        try:
            with urllib.request.urlopen(endpoint.url, timeout=timeout_s) as response:
                result.add_text(response.read().decode("utf-8", errors="replace"))
        except (urllib.error.URLError, OSError, ValueError) as error:
            result.errors[endpoint.name] = str(getattr(error, "reason", error))
        else:
            result.errors[endpoint.name] = None
    return result


def _label(labels: Labels, name: str) -> str:
    return dict(labels).get(name, "")


def _increase(before: float | None, after: float) -> float:
    """A counter's growth between two reads; a counter that went down was restarted and counts from zero."""
    if before is None or after < before:
        return after
    return after - before


def _decimal(value: float) -> Decimal:
    """Prometheus carries floats; spend is summed as Decimals of each float's shortest repr (10.5, not
    10.4999999999999982236431605997495353221893310546875), so totals do not pick up binary noise."""
    return Decimal(repr(value))


def _throughput(before: Scrape, after: Scrape, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for direction, metric in (("in", "prismops_events_in_total"), ("out", "prismops_events_out_total")):
        per_topic: dict[str, float] = defaultdict(float)
        old = before.series(metric)
        for labels, value in after.series(metric).items():
            per_topic[_label(labels, "topic")] += _increase(old.get(labels), value)
        rows += [{"direction": direction, "topic": topic, "events_per_s": round(total / seconds, 1)}
                 for topic, total in sorted(per_topic.items())]
    return rows


def _total_rate(before: Scrape, after: Scrape, metric: str, seconds: float) -> float:
    old = before.series(metric)
    return round(sum(_increase(old.get(labels), value) for labels, value in after.series(metric).items()) / seconds, 1)


def _spend(before: Scrape, after: Scrape, seconds: float, top_n: int) -> tuple[dict[str, Decimal | None], list[dict]]:
    """Spend today and USD/hour overall and for the top tenants, from the llm_cost_daily_usd gauges (None when
    no component exports them). A gauge that went down was reset at midnight (UTC): its new value is what was
    spent since."""
    if not after.series("llm_cost_daily_usd"):
        return {"today_usd": None, "usd_per_hour": None}, []
    old = before.series("llm_cost_daily_usd")
    today: dict[str, Decimal] = defaultdict(Decimal)
    growth: dict[str, Decimal] = defaultdict(Decimal)
    for labels, value in after.series("llm_cost_daily_usd").items():
        tenant = _label(labels, "tenant")
        today[tenant] += _decimal(value)
        previous = old.get(labels)
        growth[tenant] += _decimal(value) - (_decimal(previous) if previous is not None and previous <= value else 0)
    per_hour = {tenant: (spent * 3600 / _decimal(seconds)).quantize(USD) for tenant, spent in growth.items()}
    totals = {
        "today_usd": sum(today.values(), Decimal(0)).quantize(USD),
        "usd_per_hour": sum(per_hour.values(), Decimal(0)).quantize(USD),
    }
    ranked = sorted(today, key=lambda tenant: (-today[tenant], tenant))[:top_n]
    tenants = [{"tenant": t, "today_usd": today[t].quantize(USD), "usd_per_hour": per_hour[t]} for t in ranked]
    return totals, tenants


def summarize(before: Scrape, after: Scrape, top_n: int = 5) -> dict[str, Any]:
    """What `top` shows, computed from two reads (rates are the counters' growth between them)."""
    seconds = max(after.taken_at - before.taken_at, 1e-6)
    spend, tenants = _spend(before, after, seconds, top_n)
    lag = [{"group": _label(labels, "group"), "topic": _label(labels, "topic"), "lag": int(value)}
           for labels, value in after.series("prismops_consumer_lag").items()]
    breakers = [
        {"provider": _label(labels, "provider"), "model": _label(labels, "model"),
         "state": BREAKER_STATES.get(int(value), str(value))}
        for labels, value in after.series("llm_circuit_breaker_state").items()
    ]
    budgets = [
        {"scope": _label(labels, "scope"), "scope_id": _label(labels, "scope_id"),
         "budget_id": _label(labels, "budget_id"), "used_pct": round(value * 100, 1)}
        for labels, value in after.series("prismops_budget_used_ratio").items()
    ]
    return {
        "taken_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
        "window_s": round(seconds, 3),
        "components": [{"name": name, "up": error is None, "error": error} for name, error in after.errors.items()],
        "throughput": _throughput(before, after, seconds),
        "cost_lines_per_s": _total_rate(before, after, "prismops_cost_lines_total", seconds),
        "dead_letters_per_s": _total_rate(before, after, "prismops_dead_letters_total", seconds),
        "lag": sorted(lag, key=lambda row: (-row["lag"], row["group"], row["topic"])),
        "spend": spend,
        "top_tenants": tenants,
        "budgets": sorted(budgets, key=lambda row: -row["used_pct"])[:top_n],
        "breakers": sorted(breakers, key=lambda row: (row["state"] != "open", row["provider"], row["model"])),
    }


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str = "none") -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for column in columns:
        table.add_column(column)
    added = False
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else escape(str(to_jsonable(cell))) for cell in row))
        added = True
    if not added:
        table.add_row(f"[dim]{empty}[/]", *([""] * (len(columns) - 1)))
    return table


def render(view: Mapping[str, Any]) -> Group:
    components = "  ".join(
        f"[green]{escape(c['name'])} up[/]" if c["up"] else f"[red]{escape(c['name'])} down[/]"
        for c in view["components"]
    )
    spend = view["spend"]
    spent = "[dim]not reported[/]" if spend["today_usd"] is None else \
        f"[bold]${spend['today_usd']}[/] at ${spend['usd_per_hour']}/h"
    headline = (
        f"{components}   cost lines/s [bold]{view['cost_lines_per_s']}[/]   dead letters/s "
        f"{view['dead_letters_per_s']}   spend today {spent}   [dim](window {view['window_s']} s)[/]"
    )
    tables = [
        _table("Throughput (events/s)", ["direction", "topic", "events/s"],
               ([r["direction"], r["topic"], r["events_per_s"]] for r in view["throughput"])),
        _table("Consumer lag", ["group", "topic", "lag"], ([r["group"], r["topic"], r["lag"]] for r in view["lag"])),
        _table("Top tenants by spend today", ["tenant", "today USD", "USD/h"],
               ([r["tenant"], r["today_usd"], r["usd_per_hour"]] for r in view["top_tenants"])),
        _table("Budgets (most used)", ["scope", "id", "budget", "used %"],
               ([r["scope"], r["scope_id"], r["budget_id"], r["used_pct"]] for r in view["budgets"])),
        _table("Circuit breakers", ["provider/model", "state"],
               ([f"{r['provider']}/{r['model']}", Text(r["state"], style=BREAKER_STYLES.get(r["state"], ""))]
                for r in view["breakers"])),
    ]
    return Group(headline, Columns(tables, padding=(1, 2)))


def _sample(endpoints: list[Endpoint], before: Scrape, interval_s: float, top_n: int) -> tuple[Scrape, dict]:
    time.sleep(max(0.0, interval_s - (time.monotonic() - before.taken_at)))
    after = scrape(endpoints)
    return after, summarize(before, after, top_n)


@click.command(name="top")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="seconds between reads; rates are the counters' growth over this window")
@click.option("--once", is_flag=True, help="print one sample (taken over --interval seconds) and exit")
@click.option("--count", type=click.IntRange(min=0), default=0, show_default=True,
              help="stop after this many refreshes; 0: until Ctrl-C")
@click.option("--top", "top_n", type=click.IntRange(min=1), default=5, show_default=True, help="tenants and budgets shown")
@click.option("--url", "urls", multiple=True, metavar="NAME=URL",
              help="read this /metrics page instead of the settings' worker/sink/gateway; repeat for more")
@FORMAT_OPTION
@click.pass_obj
def command(settings: Settings, interval_s: float, once: bool, count: int, top_n: int, urls: tuple[str, ...],
            fmt: str) -> None:
    """Live view of throughput, consumer lag, spend rate, top tenants and breakers from the components' /metrics."""
    endpoints = parse_endpoint_option(urls) if urls else endpoints_from_settings(settings)
    before = scrape(endpoints)
    if not any(error is None for error in before.errors.values()):
        tried = ", ".join(f"{e.name} {e.url} ({escape(str(before.errors[e.name]))})" for e in endpoints)
        fail(f"no PrismOps component answered: {tried}; start `prismops worker`, `prismops sink` or "
             f"`prismops gateway serve`, or point --url at a /metrics page")
    if once:
        _, view = _sample(endpoints, before, interval_s, top_n)
        if fmt == "json":
            emit_json(view)
        else:
            stdout_console.print(render(view))
        return
    refreshes = 0
    try:
        if fmt == "json":  # one compact JSON object per line, for `| jq`
            while not count or refreshes < count:
                before, view = _sample(endpoints, before, interval_s, top_n)
                click.echo(json.dumps(to_jsonable(view)))
                refreshes += 1
            return
        with Live("reading /metrics…", console=stdout_console, refresh_per_second=4) as live:
            while not count or refreshes < count:
                before, view = _sample(endpoints, before, interval_s, top_n)
                live.update(render(view))
                refreshes += 1
    except KeyboardInterrupt:
        return
