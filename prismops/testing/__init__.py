"""Helpers for tests that run on the real stack: an isolated corner of it per test or module.

Like Bytewax's `testing` module, this is part of the package so integration tests of any project built
on PrismOps can use it too.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clickhouse_driver import Client
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from prismops.infra.components import Components
from prismops.settings import Settings
from prismops.streams.codecs import BATCH_SCHEMAS, batch_codec_for, codec_for
from prismops.streams.replay import group_lag, group_positions, partition_ends
from prismops.streams.topics import TopicSpec, delete_topics, ensure_topics


@contextlib.contextmanager
def isolated(stack_settings: Settings) -> Iterator[Settings]:
    """Settings with a fresh topic namespace, ClickHouse database, consumer groups and free ports;
    the topics and the database are removed afterwards."""
    suffix = uuid.uuid4().hex[:8]
    settings = stack_settings.with_overrides(
        kafka={"topic_namespace": f"t{suffix}."},
        clickhouse={"database": f"prismops_t{suffix}"},
        sink={"group_id": f"prismops-sink-t{suffix}", "batch_max_wait_s": 0.5, "metrics_port": free_port()},
        worker={"app_id": f"prismops-worker-t{suffix}", "web_port": free_port(), "live_publish_interval_s": 0.5},
        gateway={"port": free_port(), "metrics_port": free_port()},
    )
    ensure_topics(settings)
    client = Client(settings.clickhouse_host, port=settings.clickhouse_port)
    client.execute(f"CREATE DATABASE IF NOT EXISTS {settings.clickhouse.database}")
    try:
        yield settings
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
        client.disconnect()
        delete_topics(settings)
        delete_topics_with_prefix(settings, (settings.kafka.topic_namespace,))


def delete_topics_with_prefix(settings: Settings, prefixes: tuple[str, ...]) -> None:
    """Faust's own topics (changelogs, assignor) are named after the app id, outside the registry."""
    admin = AdminClient(settings.kafka_client_config())
    names = [n for n in admin.list_topics(timeout=settings.kafka.admin_timeout_s).topics if n.startswith(prefixes)]
    for future in (admin.delete_topics(names, operation_timeout=settings.kafka.admin_timeout_s).values() if names else []):
        try:
            future.result()
        except KafkaException as exc:
            # the listing can trail a deletion that just happened (delete_topics above): already gone is fine
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clickhouse(settings: Settings) -> Client:
    """A client on the settings' database (the one `isolated` created)."""
    return Client(settings.clickhouse_host, port=settings.clickhouse_port, database=settings.clickhouse.database)


def wait_for(predicate: Callable[[], Any], timeout_s: float, components: Components, what: str) -> Any:
    """Poll `predicate` until it returns something truthy; fail fast if a component process died."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        components.check_alive()
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(
        f"timed out after {timeout_s}s waiting for {what} (last: {last!r})\n{components.log_tails()}"
    )


def wait_drained(settings: Settings, components: Components, consumed: dict[str, tuple[TopicSpec, ...]],
                 timeout_s: float = 120.0) -> None:
    """Until each consumer group in `consumed` ({group id: its topics}) has committed every record of its topics.
    The worker commits a record after what it produced from it was delivered, the sink after its write was
    confirmed: once both are drained, nothing of what was sent is still on its way, so a test that checks for
    something that must NOT appear (a duplicate row, a second alert) checks after this, not after a sleep."""
    def drained() -> bool:
        return all(group_lag(settings, group, spec.name(settings)) == 0
                   for group, specs in consumed.items() for spec in specs)
    wait_for(drained, timeout_s, components, f"{', '.join(consumed)} to commit every record of their topics")


WORKER_PROGRESS_METRICS = ("prismops_events_in_total", "prismops_events_out_total", "prismops_worker_offset_rereads_total",
                           "prismops_worker_stale_acks_total", "prismops_dead_letters_total")


def worker_progress(settings: Settings, specs: tuple[TopicSpec, ...]) -> str:
    """What a stuck pipeline looks like from outside, for a failing test's message: per topic of `specs`, the
    worker group's committed offset against the end of each partition, and the worker's progress counters from
    its /metrics. Never raises: a part that cannot be read says why."""
    lines = []
    for spec in specs:
        topic = spec.name(settings)
        try:
            positions = group_positions(settings, settings.worker_app_id, topic)
            lines.append(f"{topic}: " + ", ".join(f"p{p} committed {c} of {end}" for p, (c, end) in sorted(positions.items())))
        except Exception as exc:  # a diagnostic: report, do not mask the failure it explains
            lines.append(f"{topic}: offsets unreadable ({exc})")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.worker.web_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        lines += [line for line in text.splitlines() if line.startswith(WORKER_PROGRESS_METRICS)]
    except Exception as exc:
        lines.append(f"worker metrics unreadable ({exc})")
    return "\n".join(lines)


def read_records_to_end(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[Message]:
    """Every record of `topic` from the beginning to its current end, undecoded, by assignment (no consumer group
    to join, so nothing depends on how long a join takes)."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": f"reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        ends = partition_ends(consumer, topic, settings.kafka.admin_timeout_s)
        remaining = {p: end for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in remaining])
        found = []
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            found.append(message)
            if message.offset() + 1 >= remaining.get(message.partition(), 0):
                remaining.pop(message.partition(), None)
        assert not remaining, f"could not read {topic} to its end"
        return found
    finally:
        consumer.close()


def read_topic_to_end(settings: Settings, spec: TopicSpec, timeout_s: float = 30.0) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Every record of a registry topic from the beginning to its current end, decoded, as (key, value); a batch
    record gives one pair per item."""
    found = []
    for message in read_records_to_end(settings, spec.name(settings), timeout_s):
        if spec.schema in BATCH_SCHEMAS:
            found += [(message.key(), item.value) for item in batch_codec_for(spec.schema).decode(message.value()).items]
        else:
            found.append((message.key(), codec_for(spec.schema).decode(message.value())))
    return found


class RecordingWebhook:
    """A Slack-style endpoint on 127.0.0.1 that records every POST; it answers `first_status` to the first
    request (e.g. 500, to exercise retries) and 200 afterwards."""

    def __init__(self, first_status: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with webhook.lock:
                    status = first_status if not webhook.requests else 200
                    webhook.requests.append({"alert_id": self.headers["X-PrismOps-Alert-Id"], "body": body, "status": status})
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"boom")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T1/B1/secret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["status"] == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ScrapeTarget:
    """A stand-in /metrics endpoint on 127.0.0.1: the n-th scrape (counting from 1) gets `page(n)`, in the
    Prometheus text format; any other path is a 404."""

    def __init__(self, page: Callable[[int], str]) -> None:
        self.scrapes = 0
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                target.scrapes += 1
                body = page(target.scrapes).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def readme_sql_blocks(readme: Path, database: str) -> list[str]:
    """The ```sql blocks of a README as a user pastes them, aimed at `database` instead of `prismops`."""
    import re

    blocks = re.findall(r"```sql\n(.*?)```", readme.read_text(), re.S)
    return [block.strip().rstrip(";").replace("prismops.", f"{database}.") for block in blocks]
