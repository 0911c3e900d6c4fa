"""`prismops top`: rates from counter deltas, spend as Decimal, merging of processes, and the command against
a tiny local HTTP server that serves canned /metrics pages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import pytest
from click.testing import CliRunner
from rich.console import Console

from prismops.cli.commands.top import Endpoint, Scrape, command, endpoints_from_settings, render, summarize
from prismops.settings import GatewaySettings, Settings, SinkSettings, WorkerSettings
from prismops.testing import ScrapeTarget, free_port

FIRST = """\
# TYPE prismops_events_in_total counter
prismops_events_in_total{topic="usage.llm.v1"} 100
prismops_events_in_total{topic="usage.gpu.v1"} 7
# TYPE prismops_events_out_total counter
prismops_events_out_total{topic="cost.lines.v1"} 90
# TYPE prismops_cost_lines_total counter
prismops_cost_lines_total{source="llm",priced="true"} 90
# TYPE prismops_dead_letters_total counter
prismops_dead_letters_total{stage="validate",rule="required"} 3
# TYPE prismops_consumer_lag gauge
prismops_consumer_lag{group="prismops-worker",topic="usage.llm.v1"} 40
prismops_consumer_lag{group="prismops-sink-clickhouse",topic="cost.lines.v1"} 1200
# TYPE llm_cost_daily_usd gauge
llm_cost_daily_usd{service="support-bot",tenant="acme"} 10.5
llm_cost_daily_usd{service="search",tenant="acme"} 2.25
llm_cost_daily_usd{service="search",tenant="globex"} 4
llm_cost_daily_usd{service="search",tenant="other"} 1.1
# TYPE llm_circuit_breaker_state gauge
llm_circuit_breaker_state{provider="openai",model="gpt-4o"} 0
llm_circuit_breaker_state{provider="anthropic",model="claude-sonnet-4"} 2
llm_circuit_breaker_state{provider="google",model="gemini-2.0-flash"} 1
# TYPE prismops_budget_used_ratio gauge
prismops_budget_used_ratio{scope="tenant",scope_id="acme",budget_id="acme-daily-usd"} 0.85
prismops_budget_used_ratio{scope="team",scope_id="search",budget_id="search-daily-usd"} 0.2
"""

SECOND = (
    FIRST.replace('{topic="usage.llm.v1"} 100', '{topic="usage.llm.v1"} 150')
    .replace('{topic="cost.lines.v1"} 90', '{topic="cost.lines.v1"} 140')
    .replace('{source="llm",priced="true"} 90', '{source="llm",priced="true"} 140')
    .replace('tenant="acme"} 10.5', 'tenant="acme"} 10.8')
    .replace('tenant="globex"} 4', 'tenant="globex"} 4.1')
)


def scrape_of(taken_at: float, *pages: str) -> Scrape:
    result = Scrape(taken_at=taken_at)
    for page in pages:
        result.add_text(page)
    return result


def test_rates_are_counter_growth_over_the_window():
    view = summarize(scrape_of(10.0, FIRST), scrape_of(12.0, SECOND))
    assert view["window_s"] == 2.0
    assert view["throughput"] == [
        {"direction": "in", "topic": "usage.gpu.v1", "events_per_s": 0.0},
        {"direction": "in", "topic": "usage.llm.v1", "events_per_s": 25.0},
        {"direction": "out", "topic": "cost.lines.v1", "events_per_s": 25.0},
    ]
    assert view["cost_lines_per_s"] == 25.0
    assert view["dead_letters_per_s"] == 0.0
    assert view["lag"][0] == {"group": "prismops-sink-clickhouse", "topic": "cost.lines.v1", "lag": 1200}


def test_spend_is_exact_decimal_per_tenant_with_the_hourly_rate():
    view = summarize(scrape_of(0.0, FIRST), scrape_of(2.0, SECOND), top_n=2)
    assert view["spend"] == {"today_usd": Decimal("18.2500"), "usd_per_hour": Decimal("720.0000")}
    assert view["top_tenants"] == [
        {"tenant": "acme", "today_usd": Decimal("13.0500"), "usd_per_hour": Decimal("540.0000")},
        {"tenant": "globex", "today_usd": Decimal("4.1000"), "usd_per_hour": Decimal("180.0000")},
    ]
    assert all(isinstance(row["today_usd"], Decimal) for row in view["top_tenants"])


def test_breakers_list_open_first_and_budgets_most_used_first():
    view = summarize(scrape_of(0.0, FIRST), scrape_of(1.0, FIRST))
    assert [(b["model"], b["state"]) for b in view["breakers"]] == [
        ("claude-sonnet-4", "open"), ("gemini-2.0-flash", "half_open"), ("gpt-4o", "closed")
    ]
    assert [(b["scope_id"], b["used_pct"]) for b in view["budgets"]] == [("acme", 85.0), ("search", 20.0)]


def test_a_restarted_counter_and_a_gauge_reset_at_midnight_count_from_zero():
    before = scrape_of(0.0, 'prismops_events_in_total{topic="t"} 500\nllm_cost_daily_usd{service="s",tenant="a"} 29.5\n')
    after = scrape_of(1.0, 'prismops_events_in_total{topic="t"} 20\nllm_cost_daily_usd{service="s",tenant="a"} 0.25\n')
    view = summarize(before, after)
    assert view["throughput"] == [{"direction": "in", "topic": "t", "events_per_s": 20.0}]
    assert view["spend"] == {"today_usd": Decimal("0.2500"), "usd_per_hour": Decimal("900.0000")}


def test_spend_is_none_rather_than_zero_when_no_component_reports_it():
    page = 'prismops_events_in_total{topic="t"} 1\n'
    view = summarize(scrape_of(0.0, page), scrape_of(1.0, page))
    assert view["spend"] == {"today_usd": None, "usd_per_hour": None}
    assert view["top_tenants"] == []
    console = Console(record=True, width=200)
    console.print(render(view))
    assert "spend today not reported" in console.export_text()


def test_counters_of_several_processes_add_up_and_gauges_keep_the_largest():
    worker = "# TYPE prismops_events_in_total counter\nprismops_events_in_total{topic=\"t\"} 10\n" \
             "# TYPE prismops_consumer_lag gauge\nprismops_consumer_lag{group=\"g\",topic=\"t\"} 5\n"
    sink = worker.replace("} 10", "} 32").replace("} 5", "} 9")
    merged = scrape_of(0.0, worker, sink)
    assert merged.series("prismops_events_in_total") == {(("topic", "t"),): 42.0}
    assert merged.series("prismops_consumer_lag") == {(("group", "g"), ("topic", "t")): 9.0}


def test_a_malformed_page_adds_nothing():
    result = Scrape(taken_at=0.0)
    with pytest.raises(ValueError):
        result.add_text('prismops_events_in_total{topic="t"} 1\nthis is { not a metric\n')
    assert result.samples == {}


def test_endpoints_come_from_the_settings_ports_and_port_0_is_off():
    settings = Settings(worker=WorkerSettings(web_port=1111), sink=SinkSettings(metrics_port=0),
                        gateway=GatewaySettings(metrics_port=3333))
    assert endpoints_from_settings(settings) == [
        Endpoint("worker", "http://127.0.0.1:1111/metrics"), Endpoint("gateway", "http://127.0.0.1:3333/metrics")
    ]


@pytest.fixture
def metrics_server() -> Iterator[ScrapeTarget]:
    """The first scrape gets FIRST, every later one SECOND."""
    target = ScrapeTarget(lambda n: FIRST if n == 1 else SECOND)
    yield target
    target.close()


def settings_pointing_at(worker_port: int) -> Settings:
    """The worker at the canned server; sink and gateway at ports nobody listens on."""
    return Settings(worker=WorkerSettings(web_port=worker_port), sink=SinkSettings(metrics_port=free_port()),
                    gateway=GatewaySettings(metrics_port=0))


def test_once_json_reads_the_settings_endpoints_and_reports_the_silent_one(metrics_server):
    settings = settings_pointing_at(metrics_server.port)
    result = CliRunner().invoke(command, ["--once", "--interval", "0.2", "--format", "json"], obj=settings)
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert [(c["name"], c["up"]) for c in view["components"]] == [("worker", True), ("sink", False)]
    assert "refused" in view["components"][1]["error"].lower()
    llm_in = next(row for row in view["throughput"] if row["topic"] == "usage.llm.v1")
    assert 0.2 <= view["window_s"] < 5
    assert 50 / 5 < llm_in["events_per_s"] <= 50 / 0.2  # 50 events over the measured window
    assert view["spend"]["today_usd"] == "18.2500"
    assert view["top_tenants"][0]["tenant"] == "acme"
    assert view["breakers"][0] == {"provider": "anthropic", "model": "claude-sonnet-4", "state": "open"}


def test_live_view_refreshes_and_renders_every_section(metrics_server):
    url = f"worker=http://127.0.0.1:{metrics_server.port}/metrics"
    result = CliRunner().invoke(command, ["--url", url, "--interval", "0.05", "--count", "2"], obj=Settings())
    assert result.exit_code == 0, result.output
    for text in ("Throughput", "usage.llm.v1", "Consumer lag", "prismops-sink-clickhouse", "Top tenants", "globex",
                 "Budgets", "acme-daily-usd", "Circuit breakers", "anthropic/claude-sonnet-4", "worker up"):
        assert text in result.output, text


def test_json_without_once_prints_one_object_per_refresh(metrics_server):
    url = f"worker=http://127.0.0.1:{metrics_server.port}/metrics"
    result = CliRunner().invoke(command, ["--url", url, "--interval", "0.05", "--count", "3", "--format", "json"],
                                obj=Settings())
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 3
    assert [json.loads(line)["components"][0]["up"] for line in lines] == [True, True, True]


def test_nothing_answering_is_an_error_naming_the_urls():
    port = free_port()
    result = CliRunner().invoke(command, ["--once", "--url", f"worker=http://127.0.0.1:{port}/metrics"],
                                obj=Settings())
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}/metrics" in result.output
    assert "no PrismOps component answered" in result.output


def test_a_url_option_without_a_name_is_rejected():
    result = CliRunner().invoke(command, ["--once", "--url", "http://127.0.0.1:1/metrics"], obj=Settings())
    assert result.exit_code == 2
    assert "NAME=http" in result.output
