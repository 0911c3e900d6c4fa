"""Prometheus for real: `LocalStack(with_prometheus=True)` (the code behind `prismops stack up --with-prometheus`)
scrapes the running worker, sink and gateway of an isolated pipeline, and its HTTP API shows the pipeline's
counters moving while a simulation produces usage events through the SDK."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest

from prismops.infra.stack import LocalStack, PrometheusServer
from prismops.infra.components import Components
from prismops.testing import free_port, wait_for
from prismops.streams.producer import UsageProducer
from prismops.streams.simulation import TrafficGenerator, simulate

pytestmark = pytest.mark.integration

EVENTS = 500
COST_LINES = 'sum(prismops_cost_lines_total{job="prismops-worker"})'


def instant(server: PrometheusServer, promql: str) -> float | None:
    """The value of a single-series instant query, or None while Prometheus has no such series."""
    url = f"{server.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def api(server: PrometheusServer, path: str) -> dict:
    with urllib.request.urlopen(f"{server.url}{path}", timeout=5) as response:
        return json.loads(response.read())["data"]


def wait_until_scraped(server: PrometheusServer, job: str, components: Components, timeout_s: float = 30) -> None:
    """Until the job's target is up; a timeout says what Prometheus last saw wrong with it."""
    deadline = time.monotonic() + timeout_s
    while True:
        components.check_alive()
        target = next(t for t in api(server, "/api/v1/targets")["activeTargets"] if t["labels"]["job"] == job)
        if target["health"] == "up":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{job} not scraped within {timeout_s}s: {target['health']}, {target['lastError']!r}")
        time.sleep(0.5)


def test_prometheus_sees_the_pipeline_counters_move_during_a_simulation(pipeline, tmp_path):
    settings, components = pipeline
    prometheus_settings = settings.with_overrides(stack={"home": tmp_path / "stack", "prometheus_port": free_port()})
    stack = LocalStack(prometheus_settings, with_prometheus=True)
    try:
        statuses = {status.name: status for status in stack.up()}
        assert (statuses["prometheus"].state, statuses["prometheus"].started_by_us) == ("running", True)
        assert statuses["kafka"].state == "external"  # the session's broker: answered, left alone
        server = stack.prometheus

        def scrape_urls() -> dict[str, str]:
            return {t["labels"]["job"]: t["scrapeUrl"] for t in api(server, "/api/v1/targets")["activeTargets"]}

        targets = wait_for(lambda: len(scrape_urls()) == 4 and scrape_urls(), 30, components, "the scrape targets")
        assert targets["prismops-worker"] == f"http://127.0.0.1:{settings.worker.web_port}/metrics"
        assert targets["prismops-sink"] == f"http://127.0.0.1:{settings.sink.metrics_port}/metrics"
        assert targets["prismops-gateway"] == f"http://127.0.0.1:{settings.gateway.metrics_port}/metrics"
        for job in ("prismops-worker", "prismops-sink", "prismops-gateway"):
            wait_until_scraped(server, job, components)
        baseline = instant(server, COST_LINES) or 0.0
        sink_in = 'sum(prismops_events_in_total{job="prismops-sink"})'
        sink_baseline = instant(server, sink_in) or 0.0

        with UsageProducer(settings) as producer:
            sent = simulate(producer, TrafficGenerator(seed=4242).events(EVENTS), rate_per_s=250)
        assert sent.events == EVENTS

        wait_for(lambda: (instant(server, COST_LINES) or 0.0) >= baseline + EVENTS, 90, components,
                 f"{EVENTS} more cost lines counted in Prometheus (from {baseline:g})")
        wait_for(lambda: (instant(server, 'sum(increase(prismops_cost_lines_total{job="prismops-worker"}[1m]))') or 0) > 0,
                 60, components, "a positive increase() of the worker's cost lines")
        wait_for(lambda: (instant(server, sink_in) or 0.0) >= sink_baseline + EVENTS, 60, components,
                 "the sink's consumed records moving in Prometheus")
        assert (instant(server, 'sum(llm_request_total{job="prismops-worker"})') or 0) >= EVENTS
        only = f"http://127.0.0.1:{settings.worker.web_port}/metrics?name[]=prismops_cost_lines_total"
        with urllib.request.urlopen(only, timeout=5) as response:
            page = response.read().decode()
        names = {line.split("{")[0].split(" ")[0] for line in page.splitlines() if line and not line.startswith("#")}
        assert names == {"prismops_cost_lines_total"}, page[:500]  # one family, not the whole page
        alert_groups = {group["name"] for group in api(server, "/api/v1/rules")["groups"]}
        assert alert_groups == {"prismops-llm", "prismops-finops", "prismops-pipeline"}
    finally:
        statuses = {status.name: status for status in stack.down()}
    assert statuses["prometheus"].state == "stopped"
    assert statuses["kafka"].state == "external"
