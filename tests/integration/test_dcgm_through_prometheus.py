"""The DCGM collector through a real Prometheus: a fixture exporter page served over HTTP, scraped every second
by a Prometheus started here, read back with the collector's own queries (avg/max/count over the window)."""

from __future__ import annotations

import datetime as dt
import http.server
import subprocess
import threading
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from prismops.collectors.dcgm import dcgm_events
from prismops.collectors.runner import http_get, prometheus_series
from prismops.finops.gpu_pricing import load_gpu_catalog
from prismops.testing import free_port

pytestmark = pytest.mark.integration
PAGE = (Path(__file__).resolve().parents[1] / "fixtures" / "dcgm" / "metrics.txt").read_bytes()
WINDOW_S = 60


class Exporter(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):
        pass


@pytest.fixture()
def prometheus(tmp_path):
    binary = "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.fail("prometheus is not installed at /usr/bin/prometheus")
    exporter = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Exporter)
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: dcgm\n    static_configs: [{{targets: ['127.0.0.1:{exporter.server_address[1]}']}}]\n")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prom.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus did not get ready: {(tmp_path / 'prom.log').read_text()[-2000:]}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        exporter.shutdown()


def scrapes_seen(url: str) -> int:
    """How many samples of the exporter's page Prometheus holds for its busiest series (0 before the first)."""
    import json
    import urllib.parse

    query = urllib.parse.quote("max(count_over_time(DCGM_FI_DEV_GPU_UTIL[5m]))")
    answer = json.loads(urllib.request.urlopen(f"{url}/api/v1/query?query={query}", timeout=5).read())
    result = answer["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def test_window_aggregates_from_prometheus_become_events(prometheus):
    deadline = time.monotonic() + 60  # a few scrapes, however slow the machine: counted, not slept for
    while scrapes_seen(prometheus) < 3:
        assert time.monotonic() < deadline, "Prometheus did not scrape the exporter 3 times within 60 s"
        time.sleep(0.2)
    window_end = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    series = prometheus_series(prometheus, window_end, WINDOW_S, get=http_get)
    events = {e["job"]: e for e in dcgm_events(series, window_end - dt.timedelta(seconds=WINDOW_S), window_end,
                                               cluster="prod", catalog=load_gpu_catalog())}
    assert sorted(events) == ["chat-6b5c4-p9z8w", "embedder-7d9f8-x2k4q", "llm-train-0"]
    train = events["llm-train-0"]
    # every series was in every scrape: the whole window requested; GR_ENGINE_ACTIVE 0.85 of it used
    assert train["requested_gpu_seconds"] == Decimal("60.000000")
    assert train["used_gpu_seconds"] == Decimal("51.000000")
    assert train["memory_bytes"] == 61440 * 2**20
    # with the scrape interval known, presence is samples / (60 s / 1 s): the series existed for a few seconds only
    exact = prometheus_series(prometheus, window_end, WINDOW_S, get=http_get, scrape_interval_s=1)
    (train_exact,) = [e for e in dcgm_events(exact, window_end - dt.timedelta(seconds=WINDOW_S), window_end, cluster="prod",
                                             catalog=load_gpu_catalog()) if e["job"] == "llm-train-0"]
    assert Decimal(0) < train_exact["requested_gpu_seconds"] <= Decimal(10)  # 1 s per sample, a few samples
    chat = events["chat-6b5c4-p9z8w"]
    assert (chat["mig_profile"], chat["requested_gpu_seconds"], chat["used_gpu_seconds"]) == (
        "3g.20gb", Decimal("25.714285"), Decimal("15.428571"))  # 60 x 3/7, x 0.6
