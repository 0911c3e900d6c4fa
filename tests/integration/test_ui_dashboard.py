"""`prismops ui` on the stack's ClickHouse: a real server process over an isolated database with recent rows, the
page loaded in headless Chromium (Debian's `chromium`), every chart drawn with points.

The rendered DOM stays under pytest's tmp dir (printed at the end; `-s` shows the path)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from prismops.settings import Settings, settings_as_env
from prismops.sinks.clickhouse import allocation_row, anomaly_row, cost_line_row, routing_decision_row
from prismops.sinks.migrations import apply_migrations
from prismops.testing import clickhouse, free_port
from prismops.testing.synthetic_month import synthetic_month
from prismops.streams.codecs import codec_for
from prismops.streams.topics import ROUTING_TABLES

REPO = Path(__file__).resolve().parents[2]
PROGRAM = [sys.executable, "-m", "prismops"]
CHARTS = ("chart-tps", "chart-latency", "chart-cost", "chart-spend-tenant", "chart-spend-team", "chart-spend-model",
          "chart-spend-feature", "chart-by-day", "chart-budgets", "chart-routing", "chart-shadow", "chart-gpu",
          "chart-models", "chart-cache")
ROW_FUNCTIONS = {"cost_lines": cost_line_row, "gpu_allocations": allocation_row,
                 "routing_decisions": routing_decision_row, "anomalies": anomaly_row}


def ensure_chromium() -> str:
    """Debian's chromium, installed with apt-get (through the stack's own installer) when missing."""
    from prismops.infra.stack import StackError, find_or_install

    try:
        return find_or_install("chromium", "chromium", lambda message: print(message, file=sys.stderr))
    except StackError as error:
        pytest.fail(f"headless Chromium is needed for the dashboard test and could not be installed: {error}")


def recent_records(now: dt.datetime) -> dict[str, list[dict[str, Any]]]:
    """This month's synthetic records up to `now`, plus LLM calls (with routing decisions) in the last 20
    minutes, today's GPU windows and anomalies in the last hours: every section of the page has data."""
    month = synthetic_month(now.date().replace(day=1), llm_calls_per_day=40)
    lines = [l for l in month.cost_lines if l["event_time"] <= now]
    decisions = [d for d in month.decisions if d["decided_at"] <= now]
    by_id = {d["decision_id"]: d for d in month.decisions}
    llm = [l for l in month.cost_lines if l["source"] == "llm"][:150]
    for index, line in enumerate(llm):
        at = (now - dt.timedelta(seconds=8 * (index + 1))).replace(microsecond=0)
        suffix = f"/live{index}"
        decision = by_id.get(line["decision_id"]) if line["decision_id"] else None
        if decision is not None:
            decision = {**decision, "decision_id": decision["decision_id"] + suffix, "decided_at": at}
            decisions.append(decision)
        lines.append({**line, "line_id": line["line_id"] + suffix, "source_event_id": line["source_event_id"] + suffix,
                      "event_time": at, "decision_id": decision["decision_id"] if decision else None})
    midnight = dt.datetime.combine(now.date(), dt.time(), dt.timezone.utc)
    first_day = month.allocations[0]["window_start"].date()
    allocations = [
        {**a, "allocation_id": a["allocation_id"] + "/today", "window_start": midnight,
         "window_end": midnight + dt.timedelta(hours=1)}
        for a in month.allocations if a["window_start"].date() == first_day and a["window_start"].hour == 0
    ]
    anomalies = [
        {**a, "anomaly_id": a["anomaly_id"] + "/recent", "window_start": now - dt.timedelta(hours=index + 1),
         "window_end": now - dt.timedelta(hours=index + 1) + dt.timedelta(minutes=5),
         "detected_at": now - dt.timedelta(hours=index)}
        for index, a in enumerate(month.anomalies)
    ]
    return {"cost_lines": lines, "routing_decisions": decisions, "gpu_allocations": allocations,
            "anomalies": anomalies}


@pytest.fixture()
def dashboard_db(isolated_settings: Settings) -> Iterator[Settings]:
    apply_migrations(isolated_settings)
    client = clickhouse(isolated_settings)
    try:
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        ingested = now + dt.timedelta(seconds=1)
        for table, records in recent_records(now).items():
            rows = [ROW_FUNCTIONS[table](r, kafka_partition=0, kafka_offset=i, ingested_at=ingested)
                    for i, r in enumerate(records)]
            client.execute(f"INSERT INTO {isolated_settings.clickhouse.database}.{table} ({', '.join(rows[0])}) VALUES",
                           rows)
    finally:
        client.disconnect()
    yield isolated_settings


def publish_live_models(settings: Settings) -> None:
    """Rows of the router's live model table, as the worker publishes them (routing.tables.v1)."""
    from confluent_kafka import Producer

    producer = Producer(settings.kafka_client_config())
    for index, (provider, model) in enumerate((("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku"))):
        row = {"provider": provider, "model": model, "window_seconds": 300.0, "sample_count": 200 + index,
               "error_count": 2, "error_rate": 0.01, "p50_latency_ms": 400.0 + index, "p95_latency_ms": 900.0 + index,
               "p99_latency_ms": 1300.0, "cost_usd": Decimal("0.42"), "tokens": 500_000,
               "input_price_per_mtok": Decimal("0.15"), "output_price_per_mtok": Decimal("0.60"),
               "updated_at": dt.datetime.now(dt.timezone.utc)}
        producer.produce(ROUTING_TABLES.name(settings), key=f"{provider}/{model}".encode(),
                         value=codec_for(ROUTING_TABLES.schema).encode(row))
    assert producer.flush(10.0) == 0


def run_cli(settings: Settings, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISMOPS_")} | settings_as_env(settings)
    return subprocess.run([*PROGRAM, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def ui_server(dashboard_db: Settings, tmp_path: Path) -> Iterator[str]:
    publish_live_models(dashboard_db)
    built = run_cli(dashboard_db, "ui", "build")
    assert built.returncode == 0, built.stdout + built.stderr
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISMOPS_")} | settings_as_env(dashboard_db)
    log = (tmp_path / "ui.log").open("w")
    process = subprocess.Popen([*PROGRAM, "ui", "--port", str(port), "--poll", "60", "--no-build"], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "healthz", timeout=2) as response:
                    assert json.loads(response.read())["database"] == dashboard_db.clickhouse.database
                    break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"prismops ui did not start:\n{(tmp_path / 'ui.log').read_text()}") from None
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def chromium_dom(binary: str, url: str, profile: Path, timeout: float = 180) -> str:
    """The page's DOM after its scripts ran, from a headless Chromium with a profile of its own (a second
    Chromium on a shared profile waits for the first one's lock). Its whole process group is killed on a
    timeout, so a hung renderer fails this test instead of leaving processes behind."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
             "--window-size=1400,4200", "--virtual-time-budget=15000", "--run-all-compositor-stages-before-draw"]
    process = subprocess.Popen([binary, *flags, "--dump-dom", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"headless Chromium did not finish loading {url} within {timeout:.0f}s")
    assert process.returncode == 0, stderr[-2000:]
    return stdout


def test_the_page_renders_every_chart_with_the_stack_data(ui_server: str, tmp_path: Path) -> None:
    binary = ensure_chromium()
    with urllib.request.urlopen(ui_server + "api/live", timeout=30) as response:
        live = json.loads(response.read())
    assert live["totals"]["calls"] >= 100 and isinstance(live["totals"]["cost_usd"], str)
    with urllib.request.urlopen(ui_server + "assets/chart.umd.js", timeout=30) as response:
        assert response.status == 200 and b"Chart.js v4.4.7" in response.read(4096), "the pinned Chart.js, served locally"

    deadline = time.monotonic() + 30
    while True:  # the server follows the live table from Kafka in the background
        with urllib.request.urlopen(ui_server + "api/gateway", timeout=30) as response:
            gateway = json.loads(response.read())
        if gateway["caught_up"] and len(gateway["models"]) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [m["model"] for m in gateway["models"]] == ["claude-3-5-haiku", "gpt-4o-mini"], gateway
    cost = gateway["models"][1]["cost_usd"]
    assert isinstance(cost, str) and Decimal(cost) == Decimal("0.42")

    dom = chromium_dom(binary, ui_server, tmp_path / "chromium-profile")
    (tmp_path / "page.html").write_text(dom)
    points = {m.group(1): int(m.group(2)) for m in re.finditer(
        r'<canvas id="([\w-]+)"[^>]*?data-points="(\d+)"', dom)}
    assert set(CHARTS) <= set(points), f"charts not drawn: {sorted(set(CHARTS) - set(points))}"
    assert all(points[c] > 0 for c in CHARTS), points
    assert f'data-charts="{len(CHARTS)}"' in dom
    errors = re.findall(r'<div class="error" id="[\w-]+">([^<]+)</div>', dom)
    assert errors == [], errors
    rows = re.search(r'<table id="anomaly-table" data-rows="(\d+)"', dom)
    assert rows and int(rows.group(1)) > 0
    cache_rows = re.search(r'<table id="cache-table" data-rows="(\d+)"', dom)
    assert cache_rows and int(cache_rows.group(1)) > 0, "today's calls per tenant, service and feature"
    print(f"dashboard DOM: {tmp_path / 'page.html'}")
