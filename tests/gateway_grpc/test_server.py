"""The real gRPC server in-process on a free port, over a real channel; the live table is filled in memory."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from gateway_grpc import codegen

codegen.ensure_stubs()

from gateway_grpc.client import RouterClient  # noqa: E402
from gateway_grpc.live_table import LiveModelTable  # noqa: E402
from gateway_grpc.server import ServeError, build_server, new_health_servicer  # noqa: E402
from grpc_health.v1 import health_pb2  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase  # noqa: E402
from prismops.cli import main as cli_main  # noqa: E402
from prismops.settings import Settings  # noqa: E402
from streams.codecs import codec_for  # noqa: E402

NOW = dt.datetime(2025, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
MINI = ("openai", "gpt-4o-mini")
GPT4O = ("openai", "gpt-4o")
HAIKU = ("anthropic", "claude-3-5-haiku")


def live_row(provider: str, model: str, p95: float, input_price: str, output_price: str) -> dict:
    return {
        "provider": provider, "model": model, "window_seconds": 300.0, "sample_count": 120, "error_count": 1,
        "error_rate": 1 / 120, "p50_latency_ms": p95 / 2, "p95_latency_ms": p95, "p99_latency_ms": p95 * 1.4,
        "cost_usd": Decimal("0.25"), "tokens": 400_000, "input_price_per_mtok": Decimal(input_price),
        "output_price_per_mtok": Decimal(output_price), "updated_at": NOW,
    }


class RecordingPublisher:
    """Keeps published decisions in memory, encoded the way Kafka would carry them."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.closed = False

    def publish(self, tenant: str, record: Mapping[str, Any]) -> None:
        self.messages.append((tenant, codec_for("routing_decision").encode(record)))

    def close(self) -> None:
        self.closed = True

    def decoded(self) -> list[dict]:
        return [codec_for("routing_decision").decode(value) for _, value in self.messages]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def gateway_settings() -> Settings:
    return Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port()})


@pytest.fixture()
def table() -> LiveModelTable:
    table = LiveModelTable()
    table.upsert(live_row(*GPT4O, p95=600, input_price="2.5", output_price="10"))
    table.upsert(live_row(*MINI, p95=412, input_price="0.15", output_price="0.6"))
    table.upsert(live_row(*HAIKU, p95=1200, input_price="0.08", output_price="0.4"))
    return table


@pytest.fixture()
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture()
def target(gateway_settings: Settings, table: LiveModelTable, publisher: RecordingPublisher) -> Iterator[str]:
    server = build_server(gateway_settings, table, publisher=publisher)
    server.start()
    yield f"{gateway_settings.gateway.host}:{gateway_settings.gateway.port}"
    server.stop(0).wait()


@pytest.fixture()
def client(target: str) -> Iterator[RouterClient]:
    with RouterClient(target) as client:
        assert client.wait_ready(5.0)
        yield client


def test_decide_answers_the_cheapest_model_within_slo_and_publishes_the_decision(client, publisher):
    response = client.decide(
        "acme", "chat", "summarize", [GPT4O, MINI, HAIKU], latency_slo_ms=800,
        expected_input_tokens=1000, expected_output_tokens=500, request_id="req-42",
    )

    assert (response.model.provider, response.model.model) == MINI
    assert response.reason_code == "cheapest_within_slo"
    assert response.estimated_cost_usd == "0.00045"
    assert "cheapest of 2 models within the 800 ms p95 SLO" in response.reason
    assert [(c.model.provider, c.model.model) for c in response.candidates] == [GPT4O, MINI, HAIKU]
    assert [c.verdict for c in response.candidates] == [
        "costlier: $0.0075 > $0.00045", "chosen", "p95 1200 ms > SLO 800 ms",
    ]
    assert [c.eligible for c in response.candidates] == [True, True, False]
    assert response.candidates[1].p95_latency_ms == 412
    assert response.candidates[1].sample_count == 120
    assert response.candidates[2].estimated_cost_usd == "0.00028"

    [(tenant, _)] = publisher.messages
    [decision] = publisher.decoded()
    assert tenant == "acme"
    assert decision["decision_id"] == response.decision_id
    assert (decision["chosen_provider"], decision["chosen_model"]) == MINI
    assert decision["request_id"] == "req-42"
    assert decision["candidates"][1]["estimated_cost_usd"] == Decimal("0.00045")


def test_zero_token_counts_take_the_gateway_defaults(client, gateway_settings):
    response = client.decide("acme", "chat", "summarize", [MINI], latency_slo_ms=800)
    defaults = gateway_settings.gateway
    expected = (Decimal(defaults.default_input_tokens) * Decimal("0.15")
                + Decimal(defaults.default_output_tokens) * Decimal("0.6")) / 10**6
    assert Decimal(response.estimated_cost_usd) == expected


def test_unknown_models_get_no_live_data_and_each_decision_has_its_own_id(client):
    first = client.decide("acme", "chat", "summarize", [("mistral", "small"), MINI[::-1]], latency_slo_ms=800)
    second = client.decide("acme", "chat", "summarize", [("mistral", "small")], latency_slo_ms=800)
    assert first.reason_code == "no_live_data"
    assert (first.model.provider, first.model.model) == ("mistral", "small")
    assert first.estimated_cost_usd == ""
    assert first.candidates[0].has_live_data is False
    assert first.decision_id != second.decision_id


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"allowed": [], "latency_slo_ms": 800}, "allowed_models"),
        ({"allowed": [MINI], "latency_slo_ms": 0}, "latency_slo_ms"),
        ({"allowed": [MINI], "latency_slo_ms": -1}, "latency_slo_ms"),
        ({"allowed": [MINI], "latency_slo_ms": 800, "expected_input_tokens": -5}, "expected_input_tokens"),
        ({"allowed": [MINI], "latency_slo_ms": 800, "expected_output_tokens": -5}, "expected_output_tokens"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(client, publisher, kwargs, field):
    with pytest.raises(grpc.RpcError) as raised:
        client.decide("acme", "chat", "summarize", **kwargs)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(f"{field}: ")
    assert publisher.messages == []


def test_health_says_serving_for_the_server_and_the_router(client):
    assert client.health("") == health_pb2.HealthCheckResponse.SERVING
    assert client.health("routing.v1.Router") == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_router_and_health_and_describes_decide(target):
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"routing.v1.Router", "grpc.health.v1.Health"} <= services
        router_file = database.FindFileContainingSymbol("routing.v1.Router")
        assert [m.name for m in router_file.service[0].method] == ["Decide"]


def test_not_ready_router_is_not_serving_and_answers_unavailable(gateway_settings, table, publisher):
    server = build_server(
        gateway_settings, table, publisher=publisher,
        health_servicer=new_health_servicer(health_pb2.HealthCheckResponse.NOT_SERVING), is_ready=lambda: False,
    )
    server.start()
    try:
        with RouterClient(f"127.0.0.1:{gateway_settings.gateway.port}") as client:
            assert client.wait_ready(0.5) is False
            assert client.health("routing.v1.Router") == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as raised:
                client.decide("acme", "chat", "summarize", [MINI], latency_slo_ms=800)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0).wait()
    assert publisher.messages == []


def test_a_taken_port_is_a_clear_error(gateway_settings, table, publisher, target):
    with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{gateway_settings.gateway.port}"):
        build_server(gateway_settings, table, publisher=publisher)


def test_wait_ready_is_false_when_nothing_listens():
    with RouterClient(f"127.0.0.1:{free_port()}") as client:
        assert client.wait_ready(0.5) is False


def test_cli_decide_prints_json_and_a_table(target):
    runner = CliRunner()
    args = ["gateway", "decide", "--tenant", "acme", "--service", "chat", "--feature", "summarize",
            "--allow", "openai/gpt-4o", "--allow", "openai/gpt-4o-mini", "--slo-ms", "800",
            "--input-tokens", "1000", "--output-tokens", "500", "--target", target]

    as_json = runner.invoke(cli_main, [*args, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    result = json.loads(as_json.output)
    assert (result["provider"], result["model"], result["estimated_cost_usd"]) == ("openai", "gpt-4o-mini", "0.00045")
    assert [c["verdict"] for c in result["candidates"]] == ["costlier: $0.0075 > $0.00045", "chosen"]

    as_table = runner.invoke(cli_main, args)
    assert as_table.exit_code == 0, as_table.output
    assert "openai/gpt-4o-mini" in as_table.output
    assert "cheapest_within_slo" in as_table.output
    assert "chosen" in as_table.output


def test_cli_decide_reports_rpc_errors_and_bad_models(target):
    runner = CliRunner()
    base = ["gateway", "decide", "--tenant", "acme", "--service", "chat", "--feature", "f", "--target", target]

    bad_slo = runner.invoke(cli_main, [*base, "--allow", "openai/gpt-4o", "--slo-ms", "0"])
    assert bad_slo.exit_code != 0
    assert "INVALID_ARGUMENT" in bad_slo.output and "latency_slo_ms" in bad_slo.output

    bad_model = runner.invoke(cli_main, [*base, "--allow", "gpt-4o", "--slo-ms", "800"])
    assert bad_model.exit_code != 0
    assert "provider/model" in bad_model.output


def test_codegen_writes_importable_stubs_next_to_the_proto(tmp_path: Path):
    for proto in codegen.PROTO_FILES:
        (tmp_path / proto).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(codegen.PACKAGE_ROOT / proto, tmp_path / proto)

    assert codegen.stubs_are_current(tmp_path) is False
    written = codegen.generate(tmp_path)

    assert sorted(p.name for p in written) == ["routing_pb2.py", "routing_pb2.pyi", "routing_pb2_grpc.py"]
    assert all(p.parent == tmp_path / "gateway_grpc/routing/v1" for p in written)
    assert "from gateway_grpc.routing.v1 import routing_pb2" in (written[0].parent / "routing_pb2_grpc.py").read_text()
    assert codegen.stubs_are_current(tmp_path) is True


def test_codegen_reports_a_broken_proto(tmp_path: Path):
    proto = tmp_path / codegen.PROTO_FILES[0]
    proto.parent.mkdir(parents=True)
    proto.write_text('syntax = "proto3";\nmessage Broken { string x = ; }\n')
    with pytest.raises(codegen.CodegenError, match="protoc failed"):
        codegen.generate(tmp_path)
