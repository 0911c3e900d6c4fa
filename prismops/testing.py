"""Helpers for tests that run on the real stack: an isolated corner of it per test or module.

Like Bytewax's `testing` module, this is part of the package so integration tests of any project built
on PrismOps can use it too.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from clickhouse_driver import Client
from confluent_kafka.admin import AdminClient

from prismops.processes import Components
from prismops.settings import Settings
from streams.topics import delete_topics, ensure_topics


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
        delete_topics_with_prefix(settings, (settings.kafka.topic_namespace, settings.worker.app_id))


def delete_topics_with_prefix(settings: Settings, prefixes: tuple[str, ...]) -> None:
    """Faust's own topics (changelogs, assignor) are named after the app id, outside the registry."""
    admin = AdminClient(settings.kafka_client_config())
    names = [n for n in admin.list_topics(timeout=settings.kafka.admin_timeout_s).topics if n.startswith(prefixes)]
    for future in (admin.delete_topics(names, operation_timeout=settings.kafka.admin_timeout_s).values() if names else []):
        future.result()


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
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")
