"""One real stack per test session; each test gets its own topics and ClickHouse database.

The stack is brought up through `infra.stack.LocalStack` (the same code as `prismops stack up`) and
stopped at the end only if this session started it. There is no fallback: if Kafka or ClickHouse
cannot be started, the tests fail with the launcher's message.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from clickhouse_driver import Client

from prismops.settings import Settings, load_settings
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


@pytest.fixture()
def isolated_settings(stack_settings: Settings) -> Iterator[Settings]:
    """Settings with a fresh topic namespace and ClickHouse database; both are removed afterwards."""
    suffix = uuid.uuid4().hex[:8]
    settings = stack_settings.with_overrides(
        kafka={"topic_namespace": f"t{suffix}."},
        clickhouse={"database": f"prismops_t{suffix}"},
        sink={"group_id": f"prismops-sink-t{suffix}"},
        worker={"app_id": f"prismops-worker-t{suffix}"},
    )
    ensure_topics(settings)
    client = Client(settings.clickhouse_host, port=settings.clickhouse_port)
    client.execute(f"CREATE DATABASE IF NOT EXISTS {settings.clickhouse.database}")
    yield settings
    client.execute(f"DROP DATABASE IF EXISTS {settings.clickhouse.database}")
    client.disconnect()
    delete_topics(settings)
