"""A cost spike caused by a new model version, found by the worker's online detectors on the real stack.

History is sent with event times in the past (one-minute windows), so the detectors learn half an hour of
normal traffic in seconds. The worker is restarted before the spike: with a warm-up of 15 windows and only three
windows after the restart, an anomaly can only be found if the detectors resumed their state from the changelog.
State is saved only when a window closes here (no save timer), so the open window's lines before the restart are
never in the saved state: the restored watch must read them back from cost.lines.v1, or the steady tenant's
window would look like a drop. No sleep decides the outcome.
Then one window carries a new model_version with five times the tokens; the anomaly must appear once the next
windows' events move event time past it (within two windows), with model_version ranked first by the RCA, land in
ClickHouse, and reach the webhook exactly once.
"""

from __future__ import annotations

import datetime as dt
import random
import signal
from collections.abc import Iterator

import pytest

from prismops.infra.components import Components
from prismops.settings import Settings
from prismops.testing import RecordingWebhook, clickhouse, isolated, read_topic_to_end, wait_for
from prismops.sinks.migrations import apply_migrations
from prismops.streams.producer import UsageProducer, new_llm_usage_event
from prismops.streams.topics import ANOMALIES

WINDOW_S = 60
WARMUP = 15
HISTORY_WINDOWS = 25
TENANT, OTHER = "spiky-tenant", "steady-tenant"
MODEL = ("openai", "gpt-4o-mini")
OLD_VERSION, NEW_VERSION = "gpt-4o-mini-2024-07-18", "gpt-4o-mini-2026-11-20"


@pytest.fixture(scope="module")
def anomaly_pipeline(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Settings, Components, RecordingWebhook]]:
    webhook = RecordingWebhook()
    with isolated(stack_settings) as base:
        settings = base.with_overrides(
            detectors={"window_s": WINDOW_S, "grace_s": 5, "warmup_windows": WARMUP, "idle_close_s": 3600,
                       "save_interval_s": 3600},
            budgets={"webhook_url": webhook.url, "default_tenant_daily_usd": "1000000",
                     "default_tenant_daily_tokens": 10**12, "alerts_group_id": f"alerts-{base.worker.app_id}"},
        )
        apply_migrations(settings)
        with Components(settings, tmp_path_factory.mktemp("anomaly-logs")) as components:
            components.start("worker", "sink", "alerts")
            yield settings, components, webhook
    webhook.close()


def window_events(start: dt.datetime, tenant: str, rng: random.Random, count: int = 20, *, version: str = OLD_VERSION,
                  tokens_factor: int = 1) -> list[dict]:
    return [
        new_llm_usage_event(
            tenant=tenant, service="support-bot", feature=rng.choice(["answer", "triage"]), environment="prod",
            provider=MODEL[0], model=MODEL[1], model_version=version, deployment_id="eu-1",
            input_tokens=rng.randint(900, 1100) * tokens_factor, output_tokens=rng.randint(200, 300) * tokens_factor,
            latency_ms=rng.randint(300, 500), status="ok", prompt_chars=rng.randint(3000, 4000),
            event_time=start + dt.timedelta(seconds=(i * WINDOW_S) / count + 0.5),
        )
        for i in range(count)
    ]


def send(settings: Settings, events: list[dict]) -> None:
    with UsageProducer(settings) as producer:
        for event in events:
            producer.record_llm_call(event)


def cost_lines_stored(settings: Settings) -> int:
    client = clickhouse(settings)
    try:
        return client.execute("SELECT count() FROM cost_lines")[0][0]
    finally:
        client.disconnect()


def test_a_new_model_version_spike_is_found_after_a_restart_with_model_version_first(anomaly_pipeline):
    settings, components, webhook = anomaly_pipeline
    rng = random.Random(7)
    now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    first = now - dt.timedelta(seconds=WINDOW_S * (HISTORY_WINDOWS + 5))
    starts = [first + dt.timedelta(seconds=WINDOW_S * w) for w in range(HISTORY_WINDOWS + 3)]

    history = [e for start in starts[:HISTORY_WINDOWS] for tenant in (TENANT, OTHER) for e in window_events(start, tenant, rng)]
    send(settings, history)
    wait_for(lambda: cost_lines_stored(settings) >= len(history), 90, components, "the history in ClickHouse")
    components.check_alive()

    worker = components.processes["worker"]
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)
    components.start("worker")

    spike_start = starts[HISTORY_WINDOWS]
    spike = window_events(spike_start, TENANT, rng) + window_events(
        spike_start, TENANT, rng, count=40, version=NEW_VERSION, tokens_factor=5)
    after = [e for start in starts[HISTORY_WINDOWS + 1:] for tenant in (TENANT, OTHER) for e in window_events(start, tenant, rng)]
    send(settings, spike + window_events(spike_start, OTHER, rng) + after)

    def cost_anomalies_with_the_spike():
        # the series of one window close reach the topic in one commit, but not at one instant: a read between
        # them once saw the service/feature anomaly without the tenant's
        found = [a for _, a in read_topic_to_end(settings, ANOMALIES) if a["metric"] == "cost"]
        spike_seen = any(a["series"] == "tenant_model" and a["window_start"] == spike_start for a in found)
        return found if spike_seen else None

    anomalies = wait_for(cost_anomalies_with_the_spike, 90, components, "the spike's tenant_model cost anomaly")
    by_tenant = [a for a in anomalies if a["series"] == "tenant_model"]
    assert {(a["tenant"], a["model"]) for a in by_tenant} == {(TENANT, MODEL[1])}, "only the spiking tenant's series"
    # the same spike also shows in the service/feature series the tenant's calls belong to
    assert {a["service"] for a in anomalies if a["series"] == "service_feature"} <= {"support-bot"}
    spiking = [a for a in by_tenant if a["window_start"] == spike_start]
    assert len(spiking) == 1, [(a["window_start"], a["message"]) for a in anomalies]
    anomaly = spiking[0]
    assert anomaly["window_end"] == spike_start + dt.timedelta(seconds=WINDOW_S)
    assert anomaly["severity"] in ("warning", "critical") and anomaly["actual"] > 3 * anomaly["expected"]
    assert anomaly["actual_cost_usd"] is not None and anomaly["actual_cost_usd"] > anomaly["expected_cost_usd"]
    top = anomaly["contributors"][0]
    assert (top["dimension"], top["value"]) == ("model_version", NEW_VERSION), anomaly["contributors"]
    assert top["share"] > 0.5
    assert len(anomaly["contributors"]) <= 3

    client = clickhouse(settings)
    try:
        stored = wait_for(lambda: client.execute(
            "SELECT anomaly_id, metric, tenant FROM anomalies WHERE anomaly_id = %(id)s", {"id": anomaly["anomaly_id"]}),
            60, components, "the anomaly in ClickHouse")
    finally:
        client.disconnect()
    assert stored == [(anomaly["anomaly_id"], "cost", TENANT)]

    alerts = wait_for(lambda: [r for r in webhook.accepted() if r["alert_id"] == anomaly["anomaly_id"]], 60, components,
                      "the anomaly alert at the webhook")
    assert len(alerts) == 1
    assert NEW_VERSION in alerts[0]["body"]["blocks"][2]["text"]["text"]
