"""The local stack's Prometheus: its rendered config, and the real binary started through LocalStack in a tmp
home, scraping a stand-in worker /metrics page, reloading a changed config, listed and stopped by the CLI."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from prismops.infra.config import StackPaths, render_prometheus_config, scrape_targets
from prismops.infra.processes import process_alive
from prismops.infra.stack import LocalStack, PrometheusServer
from prismops.cli.commands.stack import command
from prismops.settings import GatewaySettings, Settings, SinkSettings, StackSettings, WorkerSettings
from prismops.testing import ScrapeTarget, free_port


def settings_for(home: Path, worker_port: int = 16066, sink_port: int = 16067, gateway_port: int = 15052) -> Settings:
    stack = StackSettings(home=home, prometheus_port=free_port(), kafka_port=free_port(),
                          kafka_controller_port=free_port(), clickhouse_tcp_port=free_port(),
                          clickhouse_http_port=free_port(), clickhouse_interserver_port=free_port())
    return Settings(stack=stack, worker=WorkerSettings(web_port=worker_port),
                    sink=SinkSettings(metrics_port=sink_port), gateway=GatewaySettings(metrics_port=gateway_port))


def test_rendered_config_scrapes_each_component_on_loopback_and_loads_the_alerts(tmp_path):
    config = yaml.safe_load(render_prometheus_config(settings_for(tmp_path, 1001, 1002, 1003)))
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs["prismops-worker"] == ["127.0.0.1:1001"]
    assert jobs["prismops-sink"] == ["127.0.0.1:1002"]
    assert jobs["prismops-gateway"] == ["127.0.0.1:1003"]
    assert config["rule_files"] == ["alerts.yml"]
    assert config["global"]["scrape_interval"] == "2s"
    assert all(job["metrics_path"] == "/metrics" for job in config["scrape_configs"] if job["job_name"] != "prometheus")


def test_an_endpoint_that_is_off_is_not_scraped(tmp_path):
    settings = settings_for(tmp_path, sink_port=0, gateway_port=0)
    assert scrape_targets(settings) == {"prismops-worker": "127.0.0.1:16066"}
    jobs = [job["job_name"] for job in yaml.safe_load(render_prometheus_config(settings))["scrape_configs"]]
    assert jobs == ["prismops-worker", "prometheus"]


def test_promtool_accepts_the_rendered_config_with_its_rules(tmp_path, promtool):
    server = PrometheusServer(settings_for(tmp_path), StackPaths.from_settings(StackSettings(home=tmp_path)))
    server.write_config()
    result = promtool("check", "config", server.config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_prometheus_runs_on_our_port_with_our_config_and_data_under_the_home(tmp_path):
    settings = settings_for(tmp_path)
    server = PrometheusServer(settings, StackPaths.from_settings(settings.stack))
    command_line = server.prepare(progress=lambda message: None)
    assert command_line[0].endswith("prometheus")
    assert f"--config.file={tmp_path / 'prometheus' / 'prometheus.yml'}" in command_line
    assert f"--storage.tsdb.path={tmp_path / 'prometheus' / 'data'}" in command_line
    assert f"--web.listen-address=127.0.0.1:{settings.stack.prometheus_port}" in command_line
    assert server.ownership_args() == [f"--config.file={server.config}"]


@pytest.fixture
def worker_metrics() -> Iterator[int]:
    """A stand-in worker: a counter that grows by 5 on every scrape."""
    target = ScrapeTarget(lambda n: "# TYPE prismops_cost_lines_total counter\n"
                                    f'prismops_cost_lines_total{{source="llm",priced="true"}} {5 * n}\n')
    yield target.port
    target.close()


def query(server: PrometheusServer, path: str, **params: str) -> dict:
    url = f"{server.url}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]


def poll(what: str, probe, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_local_stack_starts_prometheus_which_scrapes_reloads_and_stops(tmp_path, worker_metrics):
    settings = settings_for(tmp_path / "home", worker_port=worker_metrics, sink_port=free_port(),
                            gateway_port=free_port())
    stack = LocalStack(settings, with_prometheus=True)
    stack.servers = [stack.prometheus]  # Kafka and ClickHouse are not part of this test
    try:
        (status,) = stack.up()
        assert (status.name, status.state, status.started_by_us) == ("prometheus", "running", True)
        server = stack.prometheus

        def counter() -> float:
            result = query(server, "/api/v1/query", query='sum(prismops_cost_lines_total{job="prismops-worker"})')
            return float(result["result"][0]["value"][1]) if result["result"] else 0.0

        first = poll("a first scrape of the stand-in worker", counter)
        assert poll("the counter to grow", lambda: counter() > first)
        targets = {t["labels"]["job"]: t for t in query(server, "/api/v1/targets")["activeTargets"]}
        assert targets["prismops-worker"]["scrapeUrl"] == f"http://127.0.0.1:{worker_metrics}/metrics"
        assert targets["prismops-sink"]["scrapeUrl"] == f"http://127.0.0.1:{settings.sink.metrics_port}/metrics"
        groups = {group["name"] for group in query(server, "/api/v1/rules")["groups"]}
        assert groups == {"prismops-llm", "prismops-finops", "prismops-pipeline"}

        moved = settings.with_overrides(sink={"metrics_port": free_port()})
        progress: list[str] = []
        again = LocalStack(moved, with_prometheus=True)
        again.servers = [again.prometheus]
        assert again.up(progress=progress.append)[0].pid == status.pid
        assert "Prometheus config changed; reloading it (SIGHUP)" in progress
        new_url = f"http://127.0.0.1:{moved.sink.metrics_port}/metrics"
        poll("the reloaded sink target", lambda: any(
            t["scrapeUrl"] == new_url for t in query(server, "/api/v1/targets")["activeTargets"]))

        listed = CliRunner().invoke(command, ["status", "--format", "json"], obj=settings)
        assert listed.exit_code == 0, listed.output
        rows = {row["name"]: row for row in json.loads(listed.output)}
        assert rows["prometheus"]["pid"] == status.pid  # listed although status ran without --with-prometheus

        stopped = CliRunner().invoke(command, ["down", "--format", "json"], obj=settings)
        assert stopped.exit_code == 0, stopped.output
        assert {row["name"]: row["state"] for row in json.loads(stopped.output)}["prometheus"] == "stopped"
        assert not process_alive(status.pid)
        assert [s.name for s in LocalStack(settings).status()] == ["kafka", "clickhouse"]
    finally:
        stack.down()
