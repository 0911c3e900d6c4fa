"""Overload: beyond gateway.max_concurrent_rpcs calls in flight the gateway answers RESOURCE_EXHAUSTED at once
instead of queueing callers until their deadlines pass."""

from __future__ import annotations

import datetime as dt
import threading

import grpc
import pytest

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.gateway_grpc.client import RouterClient  # noqa: E402
from prismops.gateway_grpc.live_table import LiveModelTable  # noqa: E402
from prismops.gateway_grpc.policy_config import PolicyStore  # noqa: E402
from prismops.gateway_grpc.server import DiscardingPublisher, GatewayState, build_server  # noqa: E402
from prismops.settings import Settings  # noqa: E402
from prismops.testing import free_port  # noqa: E402

MODEL = ("openai", "gpt-4o-mini")


def test_calls_beyond_the_concurrency_limit_get_resource_exhausted():
    settings = Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port(), "max_concurrent_rpcs": 1})
    entered, release = threading.Event(), threading.Event()

    def blocking_clock() -> dt.datetime:
        """Holds the first Decide inside the handler until the test releases it."""
        if not entered.is_set():
            entered.set()
            release.wait(10)
        return dt.datetime.now(dt.timezone.utc)

    table = LiveModelTable()
    state = GatewayState(settings, table, PolicyStore.from_file(None), clock=blocking_clock)
    server = build_server(settings, table, publisher=DiscardingPublisher(), state=state)
    server.start()
    target = f"127.0.0.1:{settings.gateway.port}"
    results: list[object] = []
    try:
        with RouterClient(target) as first, RouterClient(target) as second:
            holder = threading.Thread(
                target=lambda: results.append(first.decide("acme", "search", "rerank", [MODEL], timeout=10)))
            holder.start()
            assert entered.wait(5), "the first call never reached the handler"
            with pytest.raises(grpc.RpcError) as overloaded:
                second.decide("acme", "search", "rerank", [MODEL], timeout=5)
            assert overloaded.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            holder.join(10)
            assert len(results) == 1 and results[0].model.model == MODEL[1]
            after = second.decide("acme", "search", "rerank", [MODEL], timeout=5)
            assert after.model.model == MODEL[1]
    finally:
        release.set()
        server.stop(0)
