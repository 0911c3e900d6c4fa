"""One real stack per test session; each test gets its own topics and ClickHouse database.

The stack is brought up through `infra.stack.LocalStack` (the same code as `prismops stack up`) and
stopped at the end only if this session started it. There is no fallback: if Kafka or ClickHouse
cannot be started, the tests fail with the launcher's message.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator

import pytest
from clickhouse_driver import Client

from gateway_grpc.client import RouterClient
from prismops.processes import Components
from prismops.settings import Settings, load_settings
from sinks.migrations import apply_migrations
from streams.topics import delete_topics, ensure_topics


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[Settings]:
    from infra.stack import LocalStack

    settings = load_settings()
    stack = LocalStack(settings)
    before = {s.name: s for s in stack.status()}
    stack.up()
    yield settings
    started_here = [name for name, s in before.items() if s.state == "stopped"]
    if started_here and len(started_here) == len(before):
        stack.down()


@contextlib.contextmanager
def isolated(stack_settings: Settings) -> Iterator[Settings]:
    """Settings with a fresh topic namespace, ClickHouse database, consumer groups and free ports;
    the topics and the database are removed afterwards."""
    suffix = uuid.uuid4().hex[:8]
    settings = stack_settings.with_overrides(
        kafka={"topic_namespace": f"t{suffix}."},
        clickhouse={"database": f"prismops_t{suffix}"},
        sink={"group_id": f"prismops-sink-t{suffix}", "batch_max_wait_s": 0.5},
        worker={"app_id": f"prismops-worker-t{suffix}", "web_port": free_port(), "live_publish_interval_s": 0.5},
        gateway={"port": free_port()},
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def isolated_settings(stack_settings: Settings) -> Iterator[Settings]:
    with isolated(stack_settings) as settings:
        yield settings


@pytest.fixture(scope="module")
def pipeline(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Components]]:
    """Worker, sink and gateway running as real child processes (`prismops worker|sink|gateway serve`)
    on an isolated namespace, shared by the tests of one module."""
    with isolated(stack_settings) as settings:
        apply_migrations(settings)
        with Components(settings, tmp_path_factory.mktemp("component-logs")) as components:
            components.start("worker", "sink", "gateway")
            with RouterClient(f"{settings.gateway.host}:{settings.gateway.port}") as router:
                if not router.wait_ready(60):
                    components.check_alive()
                    raise TimeoutError("the gateway did not report SERVING within 60 s")
            yield settings, components
