"""Alert delivery against a real HTTP server on 127.0.0.1: retries, the idempotency header, once-only, Slack shape."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from prismops.sinks.webhook import (
    ALERT_ID_HEADER, ALREADY_DELIVERED, DELIVERED, FAILED, DeliveryOutcome, WebhookPoster, deliver_alert,
    retry_after_s, slack_payload,
)

EVENT = {
    "event_id": "5d7c2a4e-0000-4000-8000-000000000001",
    "at": dt.datetime(2026, 6, 15, 9, 30, tzinfo=dt.timezone.utc),
    "budget_id": "tenant-daily-usd",
    "scope": "tenant",
    "scope_id": "acme <&> co",
    "period": "daily",
    "period_start": dt.datetime(2026, 6, 15, tzinfo=dt.timezone.utc),
    "unit": "usd",
    "threshold_pct": 100,
    "action": "block",
    "limit": Decimal("30.000000000000"),
    "spent": Decimal("30.500000000000"),
    "message": "tenant acme <&> co reached 100% of budget tenant-daily-usd: $30.5 of $30 (101.67%)",
}


class Receiver:
    """A webhook endpoint: answers the scripted statuses first, then 200, and keeps every request."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]):
        self.script = list(script)
        self.requests: list[tuple[Any, Any]] = []
        self.lock = threading.Lock()


@pytest.fixture()
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver([])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.requests.append((self.headers, json.loads(body)))  # case-insensitive, as HTTP is
                status, headers = state.script.pop(0) if state.script else (200, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"try again")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/secret"
    server.shutdown()
    server.server_close()


class MemoryLedger:
    """The delivery ledger's contract in memory (the ClickHouse one runs in tests/integration/test_budgets.py)."""

    def __init__(self, fail_records: int = 0) -> None:
        self.rows: list[tuple[DeliveryOutcome, str]] = []
        self.fail_records = fail_records

    def is_delivered(self, event_id: str) -> bool:
        return any(o.event_id == event_id and o.status == DELIVERED for o, _ in self.rows)

    def record(self, outcome: DeliveryOutcome, target: str) -> None:
        if self.fail_records:
            self.fail_records -= 1
            raise ConnectionError("ledger unavailable")
        self.rows.append((outcome, target))


def poster(url: str, delays: list[float], max_attempts: int = 6) -> WebhookPoster:
    return WebhookPoster(url, timeout_s=2.0, max_attempts=max_attempts, backoff_first_s=0.01, sleep=delays.append)


def test_failures_are_retried_with_backoff_and_the_alert_is_delivered_once(receiver):
    server, url = receiver
    server.script = [(500, {}), (503, {})]
    delays: list[float] = []
    ledger = MemoryLedger()

    outcome = deliver_alert(EVENT, ledger, poster(url, delays))
    assert (outcome.status, outcome.attempts, outcome.http_status) == (DELIVERED, 3, 200)
    assert delays == [0.01, 0.02]
    assert [h[ALERT_ID_HEADER] for h, _ in server.requests] == [EVENT["event_id"]] * 3
    assert all(h["Content-Type"] == "application/json" for h, _ in server.requests)
    assert ledger.rows == [(outcome, f"http://127.0.0.1:{url.split(':')[2].split('/')[0]}")]

    again = deliver_alert(EVENT, ledger, poster(url, delays))
    assert again.status == ALREADY_DELIVERED
    assert len(server.requests) == 3, "a recorded alert is never posted again"


def test_the_payload_is_slack_shaped(receiver):
    server, url = receiver
    deliver_alert(EVENT, MemoryLedger(), poster(url, []))
    [(_, body)] = server.requests
    assert set(body) == {"text", "blocks"}
    assert body["text"].startswith(":no_entry: Budget block: tenant acme <&> co at 100% of tenant-daily-usd")
    assert [block["type"] for block in body["blocks"]] == ["header", "section", "section", "context"]
    assert body["blocks"][0]["text"]["type"] == "plain_text"
    assert "acme &lt;&amp;&gt; co" in body["blocks"][1]["text"]["text"]
    fields = [f["text"] for f in body["blocks"][2]["fields"]]
    assert fields == ["*Spent*\n$30.5", "*Limit*\n$30", "*Scope*\ntenant acme &lt;&amp;&gt; co", "*Period (UTC)*\ndaily 2026-06-15"]
    assert body == slack_payload(EVENT)


def test_429_waits_at_least_retry_after_and_4xx_is_not_retried(receiver):
    server, url = receiver
    server.script = [(429, {"Retry-After": "0.5"})]
    delays: list[float] = []
    assert deliver_alert(EVENT, MemoryLedger(), poster(url, delays)).status == DELIVERED
    assert delays == [0.5]

    server.script = [(400, {})]
    ledger = MemoryLedger()
    outcome = deliver_alert({**EVENT, "event_id": "other"}, ledger, poster(url, delays))
    assert (outcome.status, outcome.attempts, outcome.http_status) == (FAILED, 1, 400)
    assert outcome.error.startswith("HTTP 400")
    assert ledger.rows[0][0].status == FAILED and not ledger.is_delivered("other")


def test_network_errors_are_retried_up_to_max_attempts_then_recorded_as_failed():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    delays: list[float] = []
    ledger = MemoryLedger()
    outcome = deliver_alert(EVENT, ledger, poster(f"http://127.0.0.1:{closed_port}/hook", delays, max_attempts=4))
    assert (outcome.status, outcome.attempts, outcome.http_status) == (FAILED, 4, None)
    assert outcome.error.startswith("network error")
    assert delays == [0.01, 0.02, 0.04]
    assert [o.status for o, _ in ledger.rows] == [FAILED]


def test_a_ledger_failure_after_the_post_records_on_retry_without_posting_again(receiver):
    server, url = receiver
    ledger = MemoryLedger(fail_records=1)
    unrecorded: dict[str, DeliveryOutcome] = {}
    with pytest.raises(ConnectionError):
        deliver_alert(EVENT, ledger, poster(url, []), unrecorded)
    assert len(server.requests) == 1 and ledger.rows == []
    outcome = deliver_alert(EVENT, ledger, poster(url, []), unrecorded)
    assert outcome.status == DELIVERED
    assert len(server.requests) == 1, "the retry recorded the earlier post instead of posting again"
    assert ledger.is_delivered(EVENT["event_id"]) and unrecorded == {}


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_s("3") == 3.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 20 < retry_after_s(future) <= 30


def test_the_target_keeps_the_secret_path_out():
    assert WebhookPoster("https://hooks.slack.com/services/T/B/secret").target == "https://hooks.slack.com"


def test_the_alerts_command_without_a_webhook_delivers_nothing_and_exits_cleanly():
    from click.testing import CliRunner

    from prismops.cli.app import main as cli_main
    from prismops.settings import Settings

    result = CliRunner().invoke(cli_main, ["alerts", "--until-idle", "0", "--format", "json"],
                                obj=Settings().with_overrides(budgets={"webhook_url": None}))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["delivered"] == 0
    assert "webhook_url is not set" in result.stderr
