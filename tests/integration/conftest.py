"""One real stack per test session; each test gets its own topics and ClickHouse database.

The stack is brought up through `prismops.infra.stack.LocalStack` (the same code as `prismops stack up`) and
stopped at the end only if this session started it. There is no fallback: if Kafka or ClickHouse
cannot be started, the tests fail with the launcher's message.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from prismops.infra.components import Components
from prismops.settings import Settings, load_settings
from prismops.gateway_grpc.client import wait_for_router
from prismops.testing import isolated
from prismops.sinks.migrations import apply_migrations


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[Settings]:
    from prismops.infra.stack import LocalStack

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
    with isolated(stack_settings) as settings:
        yield settings


@pytest.fixture(scope="module")
def pipeline(request: pytest.FixtureRequest, stack_settings: Settings,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Components]]:
    """Worker, sink and gateway running as real child processes (`prismops worker|sink|gateway serve`)
    on an isolated namespace, shared by the tests of one module. A module that parametrizes it indirectly
    passes a `worker.output_path` to run its tests on."""
    output_path = getattr(request, "param", None)
    base = stack_settings.with_overrides(worker={"output_path": output_path}) if output_path else stack_settings
    with isolated(base) as settings:
        apply_migrations(settings)
        with Components(settings, tmp_path_factory.mktemp(f"component-logs-{output_path or 'default'}")) as components:
            components.start("worker", "sink", "gateway")
            wait_for_router(f"{settings.gateway.host}:{settings.gateway.port}", components.check_alive)
            yield settings, components


@pytest.fixture(scope="module")
def redis_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A real redis-server (Debian's, started by the stack's own `RedisServer`) on a free port under a private home,
    with a key prefix of its own; it fails with the launcher's message when redis-server cannot be installed."""
    from prismops.infra.config import StackPaths
    from prismops.infra.stack import RedisServer
    from prismops.testing import free_port

    home = tmp_path_factory.mktemp("redis-home")
    settings = Settings().with_overrides(
        stack={"home": home}, redis={"enabled": True, "port": free_port(), "key_prefix": f"test-{home.name}:"},
    )
    server = RedisServer(settings, StackPaths.from_settings(settings.stack))
    process = server.start(print)
    try:
        server.wait_ready(print, process)
        yield settings
    finally:
        server.stop()  # only ever the server this fixture started (pid file + our config in its argv)

