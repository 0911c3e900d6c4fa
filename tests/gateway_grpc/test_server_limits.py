"""Limits, leases and Retry-After through the real gRPC server in-process (a real channel, the gateway's clock
injected): what a caller sees on the wire (status codes, trailing metadata, rich status details, lease ids)."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from google.rpc import error_details_pb2, status_pb2  # noqa: E402

from prismops.gateway_grpc.client import RouterClient, refusal_hints  # noqa: E402
from prismops.gateway_grpc.live_table import LiveModelTable  # noqa: E402
from prismops.gateway_grpc.policy_config import BUNDLED_POLICY  # noqa: E402
from prismops.gateway_grpc.server import DiscardingPublisher, GatewayState, build_server, open_policy_store  # noqa: E402
from prismops.settings import Settings  # noqa: E402

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
GPT4O = ("openai", "gpt-4o")
SONNET = ("anthropic", "claude-sonnet-4")
MINI = ("openai", "gpt-4o-mini")

LIMITS = {
    "models": {"openai/gpt-4o": {"rpm": 2}},
    "tenants": {"tight": {"tpm": 3000}},
    "concurrency": [{"name": "support", "match": {"service": "support-bot"}, "max_in_flight": 2, "lease_ttl_s": 60}],
    "max_retry_after_s": 600,
}
TIERS = {"tiers": {"free": {"model_tiers": ["local"]}}, "tenants": {"hobby": "free"}}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def live_row(provider: str, model: str, p95: float, input_price: str, output_price: str) -> dict[str, Any]:
    return {
        "provider": provider, "model": model, "window_seconds": 300.0, "sample_count": 120, "error_count": 1,
        "error_rate": 1 / 120, "p50_latency_ms": p95 / 2, "p95_latency_ms": p95, "p99_latency_ms": p95 * 1.4,
        "cost_usd": Decimal("0.25"), "tokens": 400_000, "input_price_per_mtok": Decimal(input_price),
        "output_price_per_mtok": Decimal(output_price), "updated_at": NOW, "rate_limited_count": 0,
    }


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def policy_file(tmp_path: Path) -> Path:
    document = yaml.safe_load(BUNDLED_POLICY.read_text(encoding="utf-8"))
    document["limits"] = LIMITS
    document["tenant_tiers"] = TIERS
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.fixture()
def state(policy_file: Path, clock: Clock) -> GatewayState:
    settings = Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port(), "policy_file": policy_file})
    table = LiveModelTable()
    table.upsert(live_row(*GPT4O, 600, "2.5", "10"))
    table.upsert(live_row(*SONNET, 700, "3", "15"))
    table.upsert(live_row(*MINI, 400, "0.15", "0.6"))
    holder: dict[str, GatewayState] = {}
    store = open_policy_store(settings, None, holder)
    holder["state"] = GatewayState(settings, table, store, clock=clock)
    return holder["state"]


@pytest.fixture()
def client(state: GatewayState) -> Iterator[RouterClient]:
    server = build_server(state.settings, state.table, publisher=DiscardingPublisher(), state=state)
    server.start()
    try:
        with RouterClient(f"127.0.0.1:{state.settings.gateway.port}") as client:
            assert client.wait_ready(5.0)
            yield client
    finally:
        server.stop(0).wait()


def support(client: RouterClient, tenant: str = "acme", **kwargs: Any):
    return client.decide(tenant, "support-bot", "chat", expected_input_tokens=1000, expected_output_tokens=500,
                         **kwargs)


def chat(client: RouterClient, tenant: str = "acme"):
    return client.decide(tenant, "chat", "answer", [GPT4O, SONNET], expected_input_tokens=1000,
                         expected_output_tokens=500)


def rich_status(error: grpc.RpcError) -> status_pb2.Status:
    [raw] = [value for key, value in error.trailing_metadata() if key == "grpc-status-details-bin"]
    return status_pb2.Status.FromString(raw)


def test_a_model_at_its_rpm_is_skipped_on_the_wire(client):
    first, second = chat(client), chat(client)
    assert (first.model.model, second.model.model) == ("gpt-4o", "gpt-4o")
    third = chat(client)
    assert third.model.model == "gpt-4o-mini" or third.model.model == "claude-sonnet-4"
    assert "rate_limited_skip" in third.reason_codes
    verdicts = {c.model.model: c.verdict for c in third.candidates}
    assert verdicts["gpt-4o"].startswith("rate limited: openai/gpt-4o rpm 2 spent")


def test_a_tenant_at_its_tpm_is_refused_with_retry_after_in_metadata_and_status_details(client, clock):
    chat(client, "tight")
    chat(client, "tight")  # 3,000 estimated tokens: the tenant's minute is spent
    with pytest.raises(grpc.RpcError) as raised:
        chat(client, "tight")
    error = raised.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "tenant tight: tenant tight tpm 3,000 spent; retry in 30.0 s"
    retry_after, reason, decision_id = refusal_hints(error)
    assert (retry_after, reason) == (30.0, "tenant_rate_limited") and decision_id
    rich = rich_status(error)
    assert rich.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and rich.message == error.details()
    retry_info, error_info = error_details_pb2.RetryInfo(), error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(retry_info) and rich.details[1].Unpack(error_info)
    assert retry_info.retry_delay.seconds == 30 and error_info.reason == "tenant_rate_limited"
    clock.advance(30)
    assert chat(client, "tight").model.model == "gpt-4o"


def test_reported_tokens_correct_the_estimate(client):
    first = chat(client, "tight")
    # the call used 300 tokens, not 1,500: 2,700 of 3,000 are left, room for one more estimate of 1,500
    client.report_outcome(first.model, "ok", decision_id=first.decision_id, input_tokens=200, output_tokens=100)
    chat(client, "tight")
    with pytest.raises(grpc.RpcError) as raised:
        chat(client, "tight")  # 300 + 1,500 + 1,500 > 3,000
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_concurrency_leases_cap_calls_in_flight_and_release_once(client, clock):
    first, second = support(client), support(client)
    assert first.lease_id.startswith("support/") and first.lease_id != second.lease_id
    with pytest.raises(grpc.RpcError) as raised:
        support(client)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refusal_hints(raised.value)[:2] == (0.25, "concurrency_limited")
    released = client.report_outcome(first.model, "ok", decision_id=first.decision_id, lease_id=first.lease_id)
    assert released.lease_state == "released"
    again = client.report_outcome(first.model, "ok", decision_id=first.decision_id, lease_id=first.lease_id)
    assert again.lease_state == "not_held"  # released twice: said so, nothing else happens
    assert client.report_outcome(first.model, "ok", lease_id="support/unknown").lease_state == "not_held"
    third = support(client)
    assert third.lease_id
    clock.advance(60)  # both leases expire
    assert support(client).lease_id and support(client).lease_id
    assert chat(client).lease_id == ""  # no cap on this route


def test_a_429_with_retry_after_keeps_the_model_out_exactly_that_long(client, clock):
    answer = client.report_outcome(GPT4O, "rate_limited", http_status=429, retry_after_ms=7000)
    assert (answer.breaker_state, answer.retry_in_s) == ("open", 7.0)
    clock.advance(6.999)
    assert chat(client).model.model == "claude-sonnet-4"
    clock.advance(0.001)
    probe = chat(client)
    assert probe.model.model == "gpt-4o" and "breaker_probe" in probe.reason_codes


def test_a_429_without_retry_after_counts_as_a_failure_as_before(client):
    answer = client.report_outcome(GPT4O, "rate_limited", http_status=429)
    assert (answer.breaker_state, answer.consecutive_failures) == ("closed", 1)


@pytest.mark.parametrize("fields, message", [
    ({"retry_after_ms": -1}, "retry_after_ms: must be >= 0, got -1 [non_negative]"),
    ({"retry_after_ms": 600_001}, "retry_after_ms: must be <= 600000 (limits.max_retry_after_s), got 600001 [at_most]"),
    ({"input_tokens": -5}, "input_tokens: must be >= 0, got -5 [non_negative]"),
])
def test_bad_outcome_fields_are_invalid_argument(client, fields, message):
    with pytest.raises(grpc.RpcError) as raised:
        client.report_outcome(GPT4O, "rate_limited", **fields)
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_a_tier_without_a_model_on_the_route_is_failed_precondition(client):
    with pytest.raises(grpc.RpcError) as raised:
        chat(client, "hobby")
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refusal_hints(raised.value)[1] == "tier_no_allowed_model"
    assert "tier free allows none of route default's models" in raised.value.details()
