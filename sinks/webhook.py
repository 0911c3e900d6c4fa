"""Alerts to a Slack-compatible webhook: `prismops alerts` reads budget.events.v1 and cost.anomalies.v1 and POSTs
each event once.

Each event goes through these steps, one event at a time (alerts are rare; order per scope is kept):
1. decode it; undecodable bytes go to the dead-letter topic with the reason (flushed), then the offset commits;
2. look it up in the delivery ledger (ClickHouse `alert_deliveries`): an event with a `delivered` row is skipped;
3. POST `{"text": ..., "blocks": [...]}` with the header `X-PrismOps-Alert-Id: <event_id>`. Network errors,
   timeouts, 5xx and 429 are retried with exponential backoff (webhook_backoff_first_s, doubling, at most 30 s;
   a 429's Retry-After is honoured up to that cap) until webhook_max_attempts; other 4xx are not retried;
4. record the outcome in the ledger: `delivered`, or `failed` after the last attempt;
5. commit the offset, synchronously.

The crash window that remains, honestly: if the process dies after the webhook accepted the POST (3) and before
the ledger row is stored (4), the alert is posted again after the restart (a ledger insert that fails while the
process lives is retried from memory without posting again). It
carries the same X-PrismOps-Alert-Id, so a receiver that honours idempotency keys drops it; Slack's incoming
webhooks do not, so a person may see that one alert twice. Nothing is lost: the offset commits only after (4),
and a crash between (4) and (5) replays the event, which (2) then skips. Consumers in two different groups would
each deliver every alert: run one group. An alert that failed every attempt is recorded `failed` and the consumer
moves on (one broken alert must not hold up the others); it is retried only if the events are replayed.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Protocol

from clickhouse_driver import Client
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from prismops.finops.dead_letters import dead_letter_record
from prismops.settings import Settings
from prismops.sinks.clickhouse import clickhouse_client, require_table, table_ref
from prismops.streams.codecs import CodecError, codec_for
from prismops.streams.topics import ANOMALIES, BUDGET_EVENTS, DEAD_LETTERS, TopicSpec

log = logging.getLogger(__name__)

STAGE = "alerts.webhook"
ALERT_ID_HEADER = "X-PrismOps-Alert-Id"
LEDGER_TABLE = "alert_deliveries"
BACKOFF_MAX_S = 30.0
DLQ_FLUSH_TIMEOUT_S = 30.0
DELIVERED = "delivered"
FAILED = "failed"
ALREADY_DELIVERED = "already_delivered"


# -- the message ---------------------------------------------------------------------------------------------

def _mrkdwn(text: str) -> str:
    """Slack mrkdwn needs &, < and > escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _amount(unit: str, value: Decimal) -> str:
    text = format(Decimal(value).normalize(), "f")
    return f"${text}" if unit == "usd" else f"{int(Decimal(value)):,} tokens"


def slack_payload(event: Mapping[str, Any]) -> dict[str, Any]:
    """The Slack-compatible body for one budget event: `text` (the notification fallback) and Block Kit `blocks`."""
    action = event["action"]
    icon = ":warning:" if action == "warn" else ":no_entry:"
    title = (f"Budget {action}: {event['scope']} {event['scope_id']} at {event['threshold_pct']}% "
             f"of {event['budget_id']}")
    period_start = event["period_start"]
    period = (
        f"{event['period']} {period_start:%Y-%m-%d}" if event["period"] == "daily"
        else f"{event['period']} {period_start:%Y-%m}"
    )
    return {
        "text": f"{icon} {title}: {event['message']}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} {_mrkdwn(event['message'])}"}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*Spent*\n{_amount(event['unit'], event['spent'])}"},
                {"type": "mrkdwn", "text": f"*Limit*\n{_amount(event['unit'], event['limit'])}"},
                {"type": "mrkdwn", "text": f"*Scope*\n{_mrkdwn(event['scope'])} {_mrkdwn(event['scope_id'])}"},
                {"type": "mrkdwn", "text": f"*Period (UTC)*\n{period}"},
            ]},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"PrismOps budget alert {event['event_id']}"},
            ]},
        ],
    }


def anomaly_slack_payload(event: Mapping[str, Any]) -> dict[str, Any]:
    """The Slack-compatible body for one anomaly: what moved, by how much, and the top root-cause hints."""
    icon = ":rotating_light:" if event["severity"] == "critical" else ":warning:"
    title = f"Anomaly ({event['severity']}): {event['metric']} of {event['series']} {event['series_key']}"
    causes = "\n".join(
        f"• {_mrkdwn(c['dimension'])} = {_mrkdwn(c['value'])}: {c['share']:.0%} of the change"
        for c in event["contributors"]
    ) or "no single dimension value explains it"
    return {
        "text": f"{icon} {title}: {event['message']}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} {_mrkdwn(event['message'])}"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Root-cause hints*\n{causes}"}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"PrismOps anomaly {event['anomaly_id']} · window "
                                          f"{event['window_start']:%Y-%m-%d %H:%M} UTC"},
            ]},
        ],
    }


@dataclass(frozen=True)
class AlertSource:
    """A topic whose events become alerts: which field is the alert id and how the message reads."""

    topic: TopicSpec
    id_field: str
    payload: Callable[[Mapping[str, Any]], dict[str, Any]]


ALERT_SOURCES = (
    AlertSource(BUDGET_EVENTS, "event_id", slack_payload),
    AlertSource(ANOMALIES, "anomaly_id", anomaly_slack_payload),
)


# -- posting with retries ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeliveryOutcome:
    event_id: str
    status: str  # delivered, failed, or already_delivered (the ledger said so; nothing was sent)
    attempts: int
    http_status: int | None = None
    error: str | None = None


def retryable(http_status: int | None) -> bool:
    """No HTTP answer (network error, timeout), 5xx and 429 are worth another try; other 4xx are not."""
    return http_status is None or http_status == 429 or http_status >= 500


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


class WebhookPoster:
    """POSTs JSON to one URL with an idempotency header, retrying as the module docstring says."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 6,
        backoff_first_s: float = 0.5,
        sleep: Callable[[float], Any] = time.sleep,
    ):
        if max_attempts < 1:
            raise ValueError("webhook_max_attempts must be >= 1")
        self.url = url
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_first_s = backoff_first_s
        self.sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> "WebhookPoster":
        budgets = settings.budgets
        if not budgets.webhook_url:
            raise ValueError("budgets.webhook_url is not set")
        return cls(budgets.webhook_url, timeout_s=budgets.webhook_timeout_s, max_attempts=budgets.webhook_max_attempts,
                   backoff_first_s=budgets.webhook_backoff_first_s, **kwargs)

    @property
    def target(self) -> str:
        """Scheme and host only: a Slack webhook's path is its secret."""
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def post(self, alert_id: str, payload: Mapping[str, Any]) -> DeliveryOutcome:
        body = json.dumps(payload).encode()
        http_status: int | None = None
        error: str | None = None
        for attempt in range(1, self.max_attempts + 1):
            http_status, error, wait_hint = self._attempt(alert_id, body)
            if error is None:
                return DeliveryOutcome(alert_id, DELIVERED, attempt, http_status)
            if not retryable(http_status) or attempt == self.max_attempts:
                break
            delay = min(BACKOFF_MAX_S, self.backoff_first_s * 2 ** (attempt - 1))
            if wait_hint is not None:
                delay = min(BACKOFF_MAX_S, max(delay, wait_hint))
            log.warning("alert %s: attempt %d of %d failed (%s); retrying in %.2fs",
                        alert_id, attempt, self.max_attempts, error, delay)
            self.sleep(delay)
        log.error("alert %s not delivered to %s after %d attempt(s): %s", alert_id, self.target, attempt, error)
        return DeliveryOutcome(alert_id, FAILED, attempt, http_status, error)

    def _attempt(self, alert_id: str, body: bytes) -> tuple[int | None, str | None, float | None]:
        """(http status or None, error or None, Retry-After seconds or None)."""
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", ALERT_ID_HEADER: alert_id, "User-Agent": "prismops-alerts",
        })
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
                return response.status, None, None
        except urllib.error.HTTPError as exc:
            hint = retry_after_s(exc.headers.get("Retry-After")) if exc.code == 429 else None
            detail = exc.read()[:200].decode("utf-8", errors="replace").strip()
            return exc.code, f"HTTP {exc.code}" + (f": {detail}" if detail else ""), hint
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return None, f"network error: {reason}", None


# -- the delivery ledger -------------------------------------------------------------------------------------

class DeliveryLedger(Protocol):
    """Which alerts were delivered; recorded before the offset commits, read before sending."""

    def is_delivered(self, event_id: str) -> bool: ...

    def record(self, outcome: DeliveryOutcome, target: str) -> None: ...


class ClickHouseDeliveryLedger:
    """The `alert_deliveries` table (sinks/migrations/0006_budget_events.sql)."""

    def __init__(self, client: Client, database: str):
        self.client = client
        self.database = database
        self._ref = table_ref(database, LEDGER_TABLE)

    def open(self) -> None:
        require_table(self.client, self.database, LEDGER_TABLE)

    def is_delivered(self, event_id: str) -> bool:
        rows = self.client.execute(
            f"SELECT count() FROM {self._ref} WHERE event_id = %(event_id)s AND status = %(status)s",
            {"event_id": event_id, "status": DELIVERED},
        )
        return rows[0][0] > 0

    def record(self, outcome: DeliveryOutcome, target: str) -> None:
        self.client.execute(
            f"INSERT INTO {self._ref}"
            " (event_id, channel, target, status, attempts, http_status, error, recorded_at) VALUES",
            [{
                "event_id": outcome.event_id, "channel": "webhook", "target": target, "status": outcome.status,
                "attempts": outcome.attempts, "http_status": outcome.http_status, "error": outcome.error,
                "recorded_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
            }],
        )

    def close(self) -> None:
        self.client.disconnect()


def deliver_alert(
    event: Mapping[str, Any],
    ledger: DeliveryLedger,
    poster: WebhookPoster,
    unrecorded: dict[str, DeliveryOutcome] | None = None,
    source: AlertSource = ALERT_SOURCES[0],
) -> DeliveryOutcome:
    """Steps 2-4 for one decoded event: skip if delivered, post with retries, record the outcome.

    `unrecorded` (kept by a long-running caller) holds outcomes posted but not yet recorded because the ledger
    failed; a retry records them instead of posting again, so only a process crash can repeat a post.
    """
    event_id = event[source.id_field]
    pending = unrecorded if unrecorded is not None else {}
    outcome = pending.get(event_id)
    if outcome is None:
        if ledger.is_delivered(event_id):
            return DeliveryOutcome(event_id, ALREADY_DELIVERED, 0)
        outcome = poster.post(event_id, source.payload(event))
        pending[event_id] = outcome
    ledger.record(outcome, poster.target)
    pending.pop(event_id, None)
    return outcome


# -- the consumer --------------------------------------------------------------------------------------------

@dataclass
class AlertCounters:
    events: int = 0
    delivered: int = 0
    already_delivered: int = 0
    failed: int = 0
    dead_letters: int = 0
    retries: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class AlertConsumer:
    """Consumes budget.events.v1 and cost.anomalies.v1 in group `settings.alerts_group_id` (the namespaced `budgets.alerts_group_id`) and delivers
    each event once."""

    POLL_TIMEOUT_S = 0.5
    ERROR_BACKOFF_FIRST_S = 0.5

    def __init__(
        self,
        settings: Settings,
        ledger: DeliveryLedger,
        poster: WebhookPoster,
        *,
        on_outcome: Callable[[DeliveryOutcome], None] | None = None,
    ):
        self.settings = settings
        self.ledger = ledger
        self.poster = poster
        self.on_outcome = on_outcome
        self.counters = AlertCounters()
        self.sources = {source.topic.name(settings): source for source in ALERT_SOURCES}
        self.topic = ", ".join(self.sources)
        self._dlq_topic = DEAD_LETTERS.name(settings)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._assigned_at: float | None = None
        self._errors_in_row = 0
        self._unrecorded: dict[str, DeliveryOutcome] = {}

    def run(self, stop_event: threading.Event) -> AlertCounters:
        return self._run(stop_event, lambda _last: False)

    def run_until_idle(self, idle_s: float, *, max_s: float | None = None) -> AlertCounters:
        """Until no event arrived for `idle_s` after the partitions were assigned (tests, scripts)."""
        started = time.monotonic()

        def idle(last_activity: float | None) -> bool:
            now = time.monotonic()
            if max_s is not None and now - started >= max_s:
                return True
            if self._assigned_at is None:
                return False
            return now - max(self._assigned_at, last_activity or 0.0) >= idle_s

        return self._run(threading.Event(), idle)

    def _run(self, stop_event: threading.Event, idle: Callable[[float | None], bool]) -> AlertCounters:
        self._consumer = Consumer({
            **self.settings.kafka_client_config(),
            **self.settings.consumer_group_config(self.settings.alerts_group_id, static=False),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "client.id": f"prismops-{STAGE}",
        })
        self._consumer.subscribe(list(self.sources), on_assign=self._on_assign)
        last_activity: float | None = None
        try:
            while not stop_event.is_set() and not idle(last_activity):
                if self._step(stop_event):
                    last_activity = time.monotonic()
        finally:
            self._consumer.close()
            self._consumer = None
            if self._producer is not None:
                self._producer.flush(DLQ_FLUSH_TIMEOUT_S)
        return self.counters

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned_at = time.monotonic()
        log.info("assigned %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "no partitions")

    def _step(self, stop_event: threading.Event) -> bool:
        assert self._consumer is not None
        message = self._consumer.poll(self.POLL_TIMEOUT_S)
        if message is None:
            return False
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", error)
            return False
        try:
            self._handle(message)
        except Exception:
            self.counters.errors += 1
            self._errors_in_row += 1
            delay = min(BACKOFF_MAX_S, self.ERROR_BACKOFF_FIRST_S * 2 ** (self._errors_in_row - 1))
            log.exception("alert at %s[%d]@%d failed before it was recorded; not committed, retrying in %.1fs",
                          message.topic(), message.partition(), message.offset(), delay)
            self._consumer.seek(TopicPartition(message.topic(), message.partition(), message.offset()))
            stop_event.wait(delay)
            return True
        self._errors_in_row = 0
        self.counters.events += 1
        self._commit(message)
        return True

    def _handle(self, message: Message) -> None:
        source = self.sources[message.topic()]
        try:
            event = codec_for(source.topic.schema).decode(message.value())
        except CodecError as exc:
            self._dead_letter(message, exc)
            self.counters.dead_letters += 1
            return
        outcome = deliver_alert(event, self.ledger, self.poster, self._unrecorded, source)
        if outcome.status == DELIVERED:
            self.counters.delivered += 1
        elif outcome.status == FAILED:
            self.counters.failed += 1
        else:
            self.counters.already_delivered += 1
        self.counters.retries += max(0, outcome.attempts - 1)
        if self.on_outcome:
            self.on_outcome(outcome)

    def _dead_letter(self, message: Message, error: CodecError) -> None:
        """Produce and flush; raise unless the broker acknowledged it (then nothing is committed)."""
        if self._producer is None:
            self._producer = Producer({
                **self.settings.kafka_client_config(), "enable.idempotence": True, "acks": "all",
                "client.id": f"prismops-{STAGE}-dlq",
            })
        record = dead_letter_record(
            stage=STAGE, topic=message.topic(), partition=message.partition(), offset=message.offset(),
            key=message.key(), value=message.value(), headers=message.headers(),
            field=error.field, rule=error.rule, message=error.message,
            redaction=self.settings.pii.dead_letter_redaction,
        )
        failures: list[str] = []
        self._producer.produce(
            self._dlq_topic, key=message.topic().encode(), value=codec_for(DEAD_LETTERS.schema).encode(record),
            on_delivery=lambda err, _msg: failures.append(str(err)) if err is not None else None,
        )
        if self._producer.flush(DLQ_FLUSH_TIMEOUT_S) or failures:
            raise RuntimeError(f"dead letter for {message.topic()}[{message.partition()}]@{message.offset()} "
                               f"not confirmed: {failures[0] if failures else 'flush timed out'}")
        log.warning("dead-lettered %s[%d]@%d: %s", message.topic(), message.partition(), message.offset(), error)

    def _commit(self, message: Message) -> None:
        """A failed commit loses nothing: the outcome is in the ledger, and a replay skips the event."""
        assert self._consumer is not None
        try:
            self._consumer.commit(message=message, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed (the delivery is recorded; a replay will skip it): %s", exc)


def clickhouse_ledger(settings: Settings) -> ClickHouseDeliveryLedger:
    ledger = ClickHouseDeliveryLedger(clickhouse_client(settings), settings.clickhouse.database)
    ledger.open()
    return ledger
