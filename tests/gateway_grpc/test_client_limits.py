"""call_with_fallback around limits: waiting out RESOURCE_EXHAUSTED, honouring a 429's Retry-After, releasing
the concurrency lease with the last report. A scripted router and provider, an injected sleep; then a cap of 3
against 20 concurrent callers through the real server in-process."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.gateway_grpc.client import (  # noqa: E402
    AllModelsFailed, BudgetRefused, LlmCallOutcome, ProviderError, RateLimited, RouterClient, TierRefused,
    call_with_fallback,
)
from prismops.gateway_grpc.live_table import LiveModelTable  # noqa: E402
from prismops.gateway_grpc.policy_config import BUNDLED_POLICY  # noqa: E402
from prismops.gateway_grpc.routing.v1 import routing_pb2  # noqa: E402
from prismops.gateway_grpc.server import DiscardingPublisher, GatewayState, build_server, open_policy_store  # noqa: E402
from prismops.settings import Settings  # noqa: E402

MINI = ("openai", "gpt-4o-mini")
HAIKU = ("anthropic", "claude-3-5-haiku")
REQUEST = {"tenant": "acme", "service": "chat", "feature": "summarize"}


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailing=()):
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return self._trailing


def exhausted(retry_ms: int | None, reason: str = "tenant_rate_limited") -> FakeRpcError:
    trailing = [("prismops-reason-code", reason), ("prismops-decision-id", "dec-x")]
    if retry_ms is not None:
        trailing.append(("retry-after-ms", str(retry_ms)))
    return FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "limit spent", trailing)


def ref(model):
    return routing_pb2.ModelRef(provider=model[0], model=model[1])


def decision(lease_id: str = "", fallbacks=(HAIKU,), attempts: int = 3) -> routing_pb2.DecideResponse:
    retry = routing_pb2.RetryPolicy(max_attempts=attempts, backoff_ms=[1000, 2000], retry_on=["rate_limited", "server_error"])
    response = routing_pb2.DecideResponse(decision_id="dec-1", model=ref(MINI), lease_id=lease_id, retry=retry,
                                          fallbacks=[routing_pb2.RouteStep(model=ref(m), retry=retry) for m in fallbacks])
    return response


class ScriptedRouter:
    def __init__(self, answers: list[Any]):
        self.answers = list(answers)
        self.reports: list[tuple[tuple[str, str], str, dict[str, Any]]] = []

    def decide(self, **kwargs: Any):
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def report_outcome(self, model, status, **kwargs: Any):
        self.reports.append((model, status, kwargs))


def scripted_invoke(results: list[Any]):
    calls: list[tuple[str, str]] = []

    def invoke(provider: str, model: str):
        calls.append((provider, model))
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    return invoke, calls


def test_resource_exhausted_is_waited_out_with_the_routers_retry_after():
    router = ScriptedRouter([exhausted(1200), exhausted(None, "concurrency_limited"), decision()])
    invoke, _ = scripted_invoke([LlmCallOutcome(response="hi", latency_ms=5)])
    sleeps: list[float] = []
    result = call_with_fallback(router, REQUEST, invoke, sleep=sleeps.append)
    assert result.response == "hi"
    assert sleeps == [1.2, 0.1]  # the hint, then the backoff (50 ms doubled) with no hint


def test_waiting_stops_at_max_limit_wait_with_rate_limited():
    router = ScriptedRouter([exhausted(4000)] * 3)
    invoke, calls = scripted_invoke([])
    sleeps: list[float] = []
    with pytest.raises(RateLimited) as raised:
        call_with_fallback(router, REQUEST, invoke, sleep=sleeps.append, max_limit_wait_s=5)
    assert sleeps == [4.0] and calls == []
    assert (raised.value.reason_code, raised.value.retry_after_s, raised.value.decision_id) == (
        "tenant_rate_limited", 4.0, "dec-x")


def test_the_gateways_own_overload_is_not_waited_out():
    router = ScriptedRouter([FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")])
    with pytest.raises(grpc.RpcError):
        call_with_fallback(router, REQUEST, scripted_invoke([])[0], sleep=lambda s: None)


def test_tier_and_budget_refusals_are_told_apart():
    tier = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "tier free allows none",
                        [("prismops-reason-code", "tier_no_allowed_model")])
    with pytest.raises(TierRefused):
        call_with_fallback(ScriptedRouter([tier]), REQUEST, scripted_invoke([])[0])
    budget = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "budget b1 blocks",
                          [("prismops-decision-id", "dec-9"), ("prismops-reason-code", "budget_blocked")])
    with pytest.raises(BudgetRefused) as raised:
        call_with_fallback(ScriptedRouter([budget]), REQUEST, scripted_invoke([])[0])
    assert raised.value.decision_id == "dec-9"


def test_a_429_retry_after_is_reported_and_waited_before_the_same_model_again():
    router = ScriptedRouter([decision()])
    invoke, calls = scripted_invoke([ProviderError.from_http(429, "slow down", retry_after_s=7),
                                     LlmCallOutcome(response="ok", input_tokens=10, output_tokens=5, latency_ms=3)])
    sleeps: list[float] = []
    result = call_with_fallback(router, REQUEST, invoke, sleep=sleeps.append)
    assert calls == [MINI, MINI] and sleeps == [7.0]  # not the 1 s backoff: the provider asked for 7 s
    assert router.reports[0][2]["retry_after_ms"] == 7000
    assert (router.reports[1][2]["input_tokens"], router.reports[1][2]["output_tokens"]) == (10, 5)
    assert result.model == MINI[1]


def test_a_retry_after_longer_than_we_wait_moves_to_the_next_model_at_once():
    router = ScriptedRouter([decision()])
    invoke, calls = scripted_invoke([ProviderError.from_http(429, retry_after_s=120), LlmCallOutcome(response="ok")])
    sleeps: list[float] = []
    call_with_fallback(router, REQUEST, invoke, sleep=sleeps.append, max_retry_after_wait_s=10)
    assert calls == [MINI, HAIKU] and sleeps == []


def test_the_lease_goes_back_with_the_last_report_only():
    router = ScriptedRouter([decision(lease_id="support/abc")])
    invoke, _ = scripted_invoke([ProviderError.from_http(503), LlmCallOutcome(response="ok")])
    call_with_fallback(router, REQUEST, invoke, sleep=lambda s: None)
    assert [kw.get("lease_id", "") for _, _, kw in router.reports] == ["", "support/abc"]


def test_the_lease_goes_back_when_the_whole_chain_fails_or_a_client_error_ends_it():
    router = ScriptedRouter([decision(lease_id="support/abc", fallbacks=(), attempts=2)])
    invoke, _ = scripted_invoke([ProviderError.from_http(503), ProviderError.from_http(503)])
    with pytest.raises(AllModelsFailed):
        call_with_fallback(router, REQUEST, invoke, sleep=lambda s: None)
    assert [kw.get("lease_id", "") for _, _, kw in router.reports] == ["", "support/abc"]
    router = ScriptedRouter([decision(lease_id="support/abc")])
    invoke, _ = scripted_invoke([ProviderError.from_http(400)])
    with pytest.raises(ProviderError):
        call_with_fallback(router, REQUEST, invoke, sleep=lambda s: None)
    assert [kw.get("lease_id", "") for _, _, kw in router.reports] == ["support/abc"]


def test_a_bad_retry_after_is_refused_at_once():
    with pytest.raises(ValueError):
        ProviderError.from_http(429, retry_after_s=-1)


# -- the real server: a cap of 3 under 20 concurrent callers ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def capped_gateway(tmp_path: Path):
    document = yaml.safe_load(BUNDLED_POLICY.read_text(encoding="utf-8"))
    document["limits"] = {"concurrency": [{"name": "support", "match": {"service": "support-bot"},
                                           "max_in_flight": 3, "lease_ttl_s": 60}], "lease_retry_ms": 5}
    for route in document["routes"]:
        route.pop("shadow", None)  # a sampled shadow call runs beside the capped call, outside the lease
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(document))
    settings = Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port(), "policy_file": policy})
    holder: dict[str, GatewayState] = {}
    state = holder["state"] = GatewayState(settings, LiveModelTable(), open_policy_store(settings, None, holder))
    server = build_server(settings, state.table, publisher=DiscardingPublisher(), state=state)
    server.start()
    yield f"127.0.0.1:{settings.gateway.port}"
    server.stop(0).wait()


def test_a_cap_of_3_holds_under_20_concurrent_callers(capped_gateway):
    in_flight, most = 0, 0
    lock = threading.Lock()
    release = threading.Event()

    def invoke(provider: str, model: str) -> LlmCallOutcome:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        release.wait(0.02)  # hold the lease a moment so callers overlap
        with lock:
            in_flight -= 1
        return LlmCallOutcome(response="ok", latency_ms=1)

    def one_call(i: int) -> str:
        with RouterClient(capped_gateway) as client:
            result = call_with_fallback(client, {"tenant": f"t{i}", "service": "support-bot", "feature": "chat"},
                                        invoke, max_limit_wait_s=60, sleep=lambda s: time.sleep(min(s, 0.02)))
            return result.model

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one_call, range(20)))
    assert len(results) == 20 and 1 <= most <= 3
