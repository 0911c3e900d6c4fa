"""The real gRPC server in-process on a free port, over a real channel; live tables filled in memory and the
gateway's clock injected, so live rows, breakers and canaries are judged at a known moment."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.finops.pricing import load_catalog  # noqa: E402
from prismops.gateway_grpc.auth import token_digest  # noqa: E402
from prismops.gateway_grpc.client import RouterClient  # noqa: E402
from prismops.gateway_grpc import server as server_module  # noqa: E402
from prismops.gateway_grpc.live_table import BudgetStateTable, LiveModelTable  # noqa: E402
from prismops.gateway_grpc.policy_config import BUNDLED_POLICY, sha256_text  # noqa: E402
from prismops.gateway_grpc.server import (  # noqa: E402
    AuditNotDelivered,
    GatewayState,
    ServeError,
    build_server,
    encode_gateway_record,
    new_health_servicer,
    open_policy_store,
)
from grpc_health.v1 import health_pb2  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase  # noqa: E402
from prismops.cli.app import main as cli_main  # noqa: E402
from prismops.settings import Settings  # noqa: E402
from prismops.streams.codecs import codec_for  # noqa: E402

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
GPT4O = ("openai", "gpt-4o")
MINI = ("openai", "gpt-4o-mini")
SONNET = ("anthropic", "claude-sonnet-4")
FLASH = ("google", "gemini-2.0-flash")
BUNDLED_TEXT = BUNDLED_POLICY.read_text(encoding="utf-8")
ADMIN_TOKEN = "admin-secret"
RETRY_ON = ["rate_limited", "server_error", "timeout"]


def live_row(provider: str, model: str, p95: float, input_price: str, output_price: str, *,
             updated_at: dt.datetime = NOW, samples: int = 120) -> dict:
    return {
        "provider": provider, "model": model, "window_seconds": 300.0, "sample_count": samples, "error_count": 1,
        "error_rate": 1 / samples, "p50_latency_ms": p95 / 2, "p95_latency_ms": p95, "p99_latency_ms": p95 * 1.4,
        "cost_usd": Decimal("0.25"), "tokens": 400_000, "input_price_per_mtok": Decimal(input_price),
        "output_price_per_mtok": Decimal(output_price), "updated_at": updated_at, "rate_limited_count": 0,
        "rate_limited_rate": 0.0, "p95_ttft_ms": 80.0, "requests_per_second": 0.4, "tokens_per_second": 1333.0,
        "cost_per_1k_input_usd": Decimal("0.00015"), "cost_per_1k_output_usd": None,
    }


class RecordingPublisher:
    """Keeps published records in memory, encoded with their schema the way Kafka would carry them."""

    def __init__(self, schema: str = "routing_decision", fail_with: Exception | None = None) -> None:
        self.schema = schema
        self.fail_with = fail_with
        self.messages: list[tuple[str, bytes]] = []
        self.records: list[dict] = []
        self.closed = False

    def publish(self, key: str, record: Mapping[str, Any]) -> None:
        value = codec_for(self.schema).encode(record)
        # KafkaRecordPublisher writes the gateway's records with the compiled writer (a remembered decision with
        # its template): it must give these bytes
        assert encode_gateway_record(codec_for(self.schema), record) == value, record
        assert codec_for(self.schema).encode_trusted(record) == value, record
        self.messages.append((key, value))
        self.records.append(dict(record))

    def publish_and_wait(self, key: str, record: Mapping[str, Any], timeout_s: float) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.publish(key, record)

    def close(self) -> None:
        self.closed = True

    def decoded(self) -> list[dict]:
        return [codec_for(self.schema).decode(value) for _, value in self.messages]


class Clock:
    def __init__(self, now: dt.datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def new_state(settings: Settings, table: LiveModelTable, clock: Callable[[], dt.datetime], *,
              budgets: BudgetStateTable | None = None, audit: RecordingPublisher | None = None) -> GatewayState:
    """The state build_server would make from settings, with the clock injected."""
    holder: dict[str, GatewayState] = {}
    store = open_policy_store(settings, audit, holder)
    state = holder["state"] = GatewayState(
        settings, table, store, budgets=budgets, clock=clock,
        catalog=load_catalog(settings.pricing.catalog, settings.pricing.tenant_overrides),
    )
    return state


@pytest.fixture()
def gateway_settings() -> Settings:
    return Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port()})


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def table() -> LiveModelTable:
    table = LiveModelTable()
    table.upsert(live_row(*GPT4O, p95=600, input_price="2.5", output_price="10"))
    table.upsert(live_row(*MINI, p95=412, input_price="0.15", output_price="0.6"))
    table.upsert(live_row(*SONNET, p95=1200, input_price="3", output_price="15"))
    return table


@pytest.fixture()
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture()
def state(gateway_settings, table, clock) -> GatewayState:
    return new_state(gateway_settings, table, clock)


@pytest.fixture()
def target(gateway_settings: Settings, table: LiveModelTable, publisher: RecordingPublisher,
           state: GatewayState) -> Iterator[str]:
    server = build_server(gateway_settings, table, publisher=publisher, state=state)
    server.start()
    yield f"{gateway_settings.gateway.host}:{gateway_settings.gateway.port}"
    server.stop(0).wait()


@pytest.fixture()
def client(target: str) -> Iterator[RouterClient]:
    with RouterClient(target) as client:
        assert client.wait_ready(5.0)
        yield client


def key_of(ref) -> tuple[str, str]:
    return (ref.provider, ref.model)


# --- Decide -------------------------------------------------------------------------------------------------

def test_decide_answers_with_the_policy_and_publishes_the_decision(client, publisher):
    response = client.decide(
        "acme", "chat", "answer", [GPT4O, MINI, SONNET], latency_slo_ms=800,
        expected_input_tokens=1000, expected_output_tokens=500, request_id="req-42",
    )

    assert key_of(response.model) == MINI
    assert (response.reason_code, list(response.reason_codes)) == ("cheapest_within_slo", ["cheapest_within_slo"])
    assert response.reason == ("openai/gpt-4o-mini is the cheapest of 2 models within the 800 ms p95 SLO "
                               "(p95 412 ms, est. $0.00045)")
    assert response.estimated_cost_usd == "0.00045"
    assert (response.route, response.policy_version) == ("default", 1)
    assert (response.retry.max_attempts, list(response.retry.backoff_ms), list(response.retry.retry_on)) == (
        4, [1000, 2000, 4000], RETRY_ON)
    assert [(key_of(step.model), step.estimated_cost_usd) for step in response.fallbacks] == [
        (GPT4O, "0.0075"), (SONNET, "0.0105")]
    assert all(step.retry.max_attempts == 4 for step in response.fallbacks)
    assert [key_of(c.model) for c in response.candidates] == [GPT4O, MINI, SONNET]
    assert [c.verdict for c in response.candidates] == [
        "costlier: $0.0075 > $0.00045", "chosen", "p95 1200 ms > SLO 800 ms"]
    assert [c.eligible for c in response.candidates] == [True, True, False]
    assert [c.breaker_state for c in response.candidates] == ["closed"] * 3
    assert (response.candidates[1].p95_latency_ms, response.candidates[1].sample_count) == (412, 120)
    assert response.HasField("shadow") is False
    assert (response.experiment, response.arm) == ("", "")
    assert (response.budget.status, response.budget.budget_id, response.budget.downgraded) == ("ok", "", False)
    assert (response.static_fallback, response.live_table_age_ms) == (False, 0)

    [(tenant, _)] = publisher.messages
    [decision] = publisher.decoded()
    assert tenant == "acme"
    assert decision["decision_id"] == response.decision_id
    assert decision["decided_at"] == NOW
    assert (decision["chosen_provider"], decision["chosen_model"]) == MINI
    assert decision["request_id"] == "req-42"
    assert decision["fallbacks"] == ["openai/gpt-4o", "anthropic/claude-sonnet-4"]
    assert (decision["route"], decision["policy_version"], decision["budget_status"]) == ("default", 1, None)
    assert decision["estimated_cost_usd"] == Decimal("0.00045")


def test_a_decision_is_written_as_the_checked_encoder_writes_it_and_what_the_writer_cannot_take_is_coerced(
        client, publisher):
    """The gateway's publishers encode its own records with the compiled writer; a value in another type (here a
    cost as text) goes to the checked encoder, which coerces it, and a value no rule takes is refused."""
    from prismops.streams.codecs import CodecError

    client.decide("acme", "chat", "answer", [GPT4O, MINI], latency_slo_ms=800, expected_input_tokens=1000,
                  expected_output_tokens=500)
    [record] = publisher.records
    codec = codec_for("routing_decision")
    assert server_module.encode_gateway_record(codec, record) == codec.encode(record)
    as_text = {**record, "estimated_cost_usd": str(record["estimated_cost_usd"])}
    assert server_module.encode_gateway_record(codec, as_text) == codec.encode(record)
    with pytest.raises(CodecError) as refused:
        server_module.encode_gateway_record(codec, {**record, "estimated_cost_usd": "not money"})
    assert refused.value.field == "estimated_cost_usd"


def test_zero_token_counts_take_the_gateway_defaults(client, gateway_settings):
    response = client.decide("acme", "chat", "answer", [MINI])
    defaults = gateway_settings.gateway
    expected = (Decimal(defaults.default_input_tokens) * Decimal("0.15")
                + Decimal(defaults.default_output_tokens) * Decimal("0.6")) / 10**6
    assert Decimal(response.estimated_cost_usd) == expected


def test_without_live_rows_catalog_prices_estimate_and_unknown_models_stay_unpriced(
        gateway_settings, publisher, clock):
    server = build_server(gateway_settings, LiveModelTable(), publisher=publisher,
                          state=new_state(gateway_settings, LiveModelTable(), clock))
    server.start()
    try:
        with RouterClient(f"127.0.0.1:{gateway_settings.gateway.port}") as client:
            first = client.decide("acme", "chat", "answer", [("mistral", "small"), MINI],
                                  expected_input_tokens=1000, expected_output_tokens=500)
            second = client.decide("acme", "chat", "answer", [("mistral", "small")])
    finally:
        server.stop(0).wait()
    assert (first.reason_code, first.static_fallback, first.live_table_age_ms) == ("no_live_data", False, -1)
    assert key_of(first.model) == MINI  # the only model with a known (catalog) price
    assert first.estimated_cost_usd == "0.00045"
    assert [(c.estimated_cost_usd, c.has_live_data) for c in first.candidates] == [("", False), ("0.00045", False)]
    assert second.estimated_cost_usd == ""
    assert first.decision_id != second.decision_id


def test_stale_rows_answer_in_static_policy_order(client, clock):
    clock.advance(120)
    response = client.decide("acme", "support-bot", "answer", prompt_chars=5000)
    assert key_of(response.model) == GPT4O
    assert (response.reason_code, response.static_fallback, response.live_table_age_ms) == (
        "static_policy_stale_tables", True, 120_000)
    assert [c.verdict for c in response.candidates] == ["chosen", "no fresh live data", "no fresh live data"]


@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        ({"service": "chat", "allowed": []}, "allowed_models", "non_empty"),
        ({"service": "chat", "allowed": [MINI], "latency_slo_ms": -1}, "latency_slo_ms", "non_negative"),
        ({"service": "chat", "allowed": [MINI], "expected_input_tokens": -5}, "expected_input_tokens", "non_negative"),
        ({"service": "chat", "allowed": [MINI], "expected_output_tokens": -5}, "expected_output_tokens",
         "non_negative"),
        ({"service": "chat", "allowed": [MINI, MINI]}, "allowed_models[1]", "unique"),
        ({"service": "chat", "tenant": "", "allowed": [MINI]}, "tenant", "required"),
        ({"service": "support-bot", "allowed": [FLASH]}, "allowed_models", "in_route"),
        ({"service": "support-bot", "region": "ap"}, "region", "capability"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field_and_rule(client, publisher, kwargs, field, rule):
    kwargs = {"tenant": "acme", "feature": "answer", **kwargs}
    with pytest.raises(grpc.RpcError) as raised:
        client.decide(kwargs.pop("tenant"), kwargs.pop("service"), kwargs.pop("feature"), **kwargs)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(f"{field}: ")
    assert raised.value.details().endswith(f"[{rule}]")
    assert publisher.messages == []


def test_a_policy_file_drives_routes_shadows_and_canaries(tmp_path, table, publisher, clock):
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "models:\n"
        "  openai/gpt-4o: {tier: premium}\n  openai/gpt-4o-mini: {tier: economy}\n"
        "  anthropic/claude-sonnet-4: {tier: premium}\n  google/gemini-2.0-flash: {tier: economy}\n"
        "routes:\n"
        "  - name: canary-chat\n    match: {service: canary-bot}\n    primary: openai/gpt-4o\n"
        "    fallbacks: [anthropic/claude-sonnet-4]\n"
        f"    canary: {{model: openai/gpt-4o-mini, started_at: '{(NOW - dt.timedelta(seconds=60)).isoformat()}', "
        "stages: [100]}\n"
        "    shadow: {model: google/gemini-2.0-flash, sample_rate: 1.0}\n",
        encoding="utf-8",
    )
    settings = Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port(), "policy_file": policy})
    server = build_server(settings, table, publisher=publisher, state=new_state(settings, table, clock))
    server.start()
    try:
        with RouterClient(f"127.0.0.1:{settings.gateway.port}") as client:
            response = client.decide("acme", "canary-bot", "answer")
            tables = client.get_tables()
    finally:
        server.stop(0).wait()
    assert key_of(response.model) == MINI
    assert list(response.reason_codes) == ["primary", "canary", "shadow_sampled"]
    assert (response.route, response.experiment, response.arm) == ("canary-chat", "canary:canary-chat", "canary")
    assert key_of(response.shadow) == FLASH
    assert [key_of(step.model) for step in response.fallbacks] == [GPT4O, SONNET]
    [canary] = tables.canaries
    assert (canary.route, key_of(canary.model), canary.percent, canary.state) == ("canary-chat", MINI, 100, "running")
    assert canary.reason == "stage 1/1 at 100%: 60 s of 600 s"
    [decision] = publisher.decoded()
    assert (decision["shadow_provider"], decision["shadow_model"], decision["arm"]) == (*FLASH, "canary")


# --- ReportOutcome and breakers -----------------------------------------------------------------------------

def test_report_outcome_moves_the_breaker_and_decide_follows_it(client, clock):
    assert [(r.breaker_state, r.consecutive_failures) for r in (
        client.report_outcome(GPT4O, "server_error"),
        client.report_outcome(GPT4O, "", http_status=503),  # the HTTP status alone names the outcome
        client.report_outcome(GPT4O, "timeout", shadow=True),  # a shadow call never moves a breaker
        client.report_outcome(GPT4O, "", http_status=400),  # a client error is the caller's fault
        client.report_outcome(GPT4O, "", http_status=429),
    )] == [("closed", 1), ("closed", 2), ("closed", 2), ("closed", 2), ("open", 3)]

    skipped = client.decide("acme", "support-bot", "answer", prompt_chars=5000)
    assert key_of(skipped.model) == SONNET
    assert skipped.reason_code == "primary_skipped"
    assert (skipped.candidates[0].verdict, skipped.candidates[0].breaker_state) == ("breaker open", "open")

    clock.advance(31)
    probe = client.decide("acme", "support-bot", "answer", prompt_chars=5000)
    assert key_of(probe.model) == GPT4O
    # the bundled support route shadows 5% of decisions (random ids), so its code may follow
    assert [code for code in probe.reason_codes if code != "shadow_sampled"] == ["primary", "breaker_probe"]
    assert probe.candidates[0].breaker_state == "half_open"
    others = client.decide("acme", "support-bot", "answer", prompt_chars=5000)
    assert key_of(others.model) == SONNET
    assert others.candidates[0].verdict == "breaker half_open"

    closed = client.report_outcome(GPT4O, "ok", decision_id=probe.decision_id)
    assert (closed.breaker_state, closed.consecutive_failures) == ("closed", 0)
    assert key_of(client.decide("acme", "support-bot", "answer", prompt_chars=5000).model) == GPT4O


@pytest.mark.parametrize(
    ("model", "status", "http_status", "expected"),
    [
        (("", "gpt-4o"), "ok", 0, "model: provider and model are required [required]"),
        (("openai", ""), "ok", 0, "model: provider and model are required [required]"),
        (GPT4O, "exploded", 0, "status: must be one of ok, rate_limited, server_error, timeout, client_error, "
                               "got 'exploded' [one_of]"),
        (GPT4O, "", 0, "status: give an outcome status or an HTTP status [required]"),
        (GPT4O, "", 302, "http_status: must be 2xx, 4xx or 5xx to name an outcome, got 302 [outcome_class]"),
    ],
)
def test_a_bad_outcome_report_is_invalid_argument(client, model, status, http_status, expected):
    with pytest.raises(grpc.RpcError) as raised:
        client.report_outcome(model, status, http_status=http_status)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == expected


# --- GetTables ----------------------------------------------------------------------------------------------

def test_get_tables_shows_rows_ages_breakers_and_the_policy_version(client, table, clock):
    table.upsert(live_row(*FLASH, p95=300, input_price="0.1", output_price="0.4",
                          updated_at=NOW - dt.timedelta(seconds=90)))
    for _ in range(3):
        client.report_outcome(SONNET, "server_error")
    clock.advance(10)

    tables = client.get_tables()

    assert tables.policy_version == 1
    by_model = {key_of(row.model): row for row in tables.models}
    assert list(by_model) == sorted(by_model)
    assert (by_model[MINI].age_ms, by_model[MINI].stale) == (10_000, False)
    assert (by_model[FLASH].age_ms, by_model[FLASH].stale) == (100_000, True)
    mini = by_model[MINI]
    assert (mini.sample_count, mini.p95_latency_ms, mini.p95_ttft_ms, mini.window_seconds) == (120, 412, 80, 300)
    assert (mini.cost_per_1k_input_usd, mini.cost_per_1k_output_usd) == ("0.00015", "")
    [breaker] = tables.breakers
    assert (key_of(breaker.model), breaker.state, breaker.consecutive_failures, breaker.retry_in_s) == (
        SONNET, "open", 3, 20.0)
    assert list(tables.budgets) == [] and list(tables.canaries) == []


# --- health and reflection ----------------------------------------------------------------------------------

def test_health_says_serving_for_the_server_the_router_and_the_admin(client):
    assert client.health("") == health_pb2.HealthCheckResponse.SERVING
    assert client.health("routing.v1.Router") == health_pb2.HealthCheckResponse.SERVING
    assert client.health("routing.v1.RouterAdmin") == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services_and_describes_their_methods(target):
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"routing.v1.Router", "routing.v1.RouterAdmin", "grpc.health.v1.Health"} <= services
        routing_file = database.FindFileContainingSymbol("routing.v1.Router")
        methods = {service.name: [m.name for m in service.method] for service in routing_file.service}
    assert methods == {"Router": ["Decide", "ReportOutcome", "GetTables"], "RouterAdmin": ["GetPolicy", "SetPolicy"]}


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
                client.decide("acme", "chat", "answer", [MINI], latency_slo_ms=800)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0).wait()
    assert publisher.messages == []


def test_decide_ns_gets_the_handler_time_of_each_answered_decide(gateway_settings, table, publisher, state):
    decide_ns: list[int] = []
    server = build_server(gateway_settings, table, publisher=publisher, state=state, decide_ns=decide_ns)
    server.start()
    try:
        with RouterClient(f"127.0.0.1:{gateway_settings.gateway.port}") as client:
            for _ in range(3):
                client.decide("acme", "chat", "answer", [MINI], latency_slo_ms=800)
            with pytest.raises(grpc.RpcError):
                client.decide("", "chat", "answer", [MINI])
    finally:
        server.stop(0).wait()
    assert len(decide_ns) == 3
    assert all(0 < ns < 10**9 for ns in decide_ns)


def test_with_a_tracer_provider_decide_opens_a_span_continuing_the_callers_trace(monkeypatch, client):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # as configure_tracing would install it, without making it global for the rest of the test session
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(server_module, "_tracer", provider.get_tracer("prismops.gateway"))
    with provider.get_tracer("a-service").start_as_current_span("handle request") as root:
        client.decide("acme", "chat", "answer", [MINI], latency_slo_ms=800)

    [decide_span] = [span for span in exporter.get_finished_spans() if span.name == "routing.v1.Router/Decide"]
    assert decide_span.context.trace_id == root.get_span_context().trace_id
    assert decide_span.parent.span_id == root.get_span_context().span_id
    assert decide_span.kind is trace.SpanKind.SERVER
    provider.shutdown()


def test_decision_ids_are_distinct_random_uuids_across_batches():
    made = [server_module._decision_ids.new() for _ in range(600)]  # more than two 4 KiB batches of 16 bytes
    assert len(set(made)) == 600
    assert all(uuid.UUID(made_id).version == 4 and uuid.UUID(made_id).variant == uuid.RFC_4122 for made_id in made)
    assert all(str(uuid.UUID(made_id)) == made_id for made_id in made)


def test_a_taken_port_is_a_clear_error(gateway_settings, table, publisher, target):
    with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{gateway_settings.gateway.port}"):
        build_server(gateway_settings, table, publisher=publisher)


def test_a_bad_policy_file_stops_the_server_from_being_built(tmp_path, table, publisher):
    policy = tmp_path / "policy.yaml"
    policy.write_text("routes: [{name: r, primary: nobody/nothing}]\n", encoding="utf-8")
    settings = Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port(), "policy_file": policy})
    with pytest.raises(ServeError, match=r"routes\[0\]\.primary: 'nobody/nothing' is not in the models catalog"):
        build_server(settings, table, publisher=publisher)


def test_wait_ready_is_false_when_nothing_listens():
    with RouterClient(f"127.0.0.1:{free_port()}") as client:
        assert client.wait_ready(0.5) is False


# --- GetPolicy / SetPolicy ----------------------------------------------------------------------------------

@pytest.fixture()
def admin_gateway(tmp_path, table, publisher) -> Iterator[tuple[str, RecordingPublisher]]:
    """A gateway built from settings alone (policy store, audit hook), with an admin token."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"- {{name: alice, role: admin, token_sha256: {token_digest(ADMIN_TOKEN)}}}\n",
                      encoding="utf-8")
    settings = Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port(), "tokens_file": tokens})
    audit = RecordingPublisher("policy_audit")
    server = build_server(settings, table, publisher=publisher, audit_publisher=audit)
    server.start()
    yield f"127.0.0.1:{settings.gateway.port}", audit
    server.stop(0).wait()


def test_get_policy_returns_the_running_document(admin_gateway):
    target, _ = admin_gateway
    with RouterClient(target, token=ADMIN_TOKEN) as client:
        document = client.get_policy()
    assert (document.yaml, document.version, document.updated_by) == (BUNDLED_TEXT, 1, "startup")
    assert dt.datetime.fromisoformat(document.updated_at).tzinfo is not None


def test_set_policy_installs_a_version_and_publishes_an_audit_record_first(admin_gateway):
    target, audit = admin_gateway
    new_text = BUNDLED_TEXT.replace("failure_threshold: 3", "failure_threshold: 1")
    assert new_text != BUNDLED_TEXT
    with RouterClient(target, token=ADMIN_TOKEN) as client:
        response = client.set_policy(new_text, expected_version=1, comment="trip faster")
        document = client.get_policy()
        tripped = client.report_outcome(MINI, "server_error")  # the new breaker threshold applies at once

    assert response.version == 2
    assert "-  breaker: {failure_threshold: 3," in response.diff
    assert "+  breaker: {failure_threshold: 1," in response.diff
    assert (document.yaml, document.version, document.updated_by) == (new_text, 2, "alice")
    assert tripped.breaker_state == "open"

    [(key, value)] = audit.messages
    [record] = audit.records
    codec = codec_for("policy_audit")
    assert codec.decode(value) == record == codec.decode(codec.encode(record))
    assert key == record["audit_id"] == response.audit_id
    assert (record["actor"], record["role"], record["action"], record["source"]) == (
        "alice", "admin", "set_policy", "grpc")
    assert (record["old_version"], record["new_version"], record["comment"]) == (1, 2, "trip faster")
    assert (record["old_sha256"], record["new_sha256"]) == (sha256_text(BUNDLED_TEXT), sha256_text(new_text))
    assert record["diff"] == response.diff


def test_set_policy_refuses_an_invalid_document_or_a_stale_version_and_keeps_the_policy(admin_gateway):
    target, audit = admin_gateway
    with RouterClient(target, token=ADMIN_TOKEN) as client:
        with pytest.raises(grpc.RpcError) as invalid:
            client.set_policy(BUNDLED_TEXT.replace("primary: openai/gpt-4o\n", "primary: openai/gpt-5\n"))
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert invalid.value.details() == (
            "routes[0].primary: 'openai/gpt-5' is not in the models catalog [unknown_model]")

        with pytest.raises(grpc.RpcError) as stale:
            client.set_policy(BUNDLED_TEXT + "\n", expected_version=7)
        assert stale.value.code() == grpc.StatusCode.ABORTED
        assert stale.value.details() == "expected policy version 7, but version 1 is current"

        assert client.get_policy().version == 1
    assert audit.records == []


def test_set_policy_is_not_installed_when_its_audit_is_not_delivered(gateway_settings, table, publisher, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"- {{name: alice, role: admin, token: {ADMIN_TOKEN}}}\n", encoding="utf-8")
    settings = gateway_settings.with_overrides(gateway={"tokens_file": tokens})
    audit = RecordingPublisher("policy_audit", fail_with=AuditNotDelivered("routing.policy.audit.v1 timed out"))
    server = build_server(settings, table, publisher=publisher, audit_publisher=audit)
    server.start()
    try:
        with RouterClient(f"127.0.0.1:{settings.gateway.port}", token=ADMIN_TOKEN) as client:
            with pytest.raises(grpc.RpcError) as raised:
                client.set_policy(BUNDLED_TEXT + "# audited?\n")
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert raised.value.details().startswith("the policy was not changed: its audit event failed")
            assert (client.get_policy().version, client.get_policy().yaml) == (1, BUNDLED_TEXT)
    finally:
        server.stop(0).wait()


# --- the CLI against a running gateway ----------------------------------------------------------------------

def test_cli_decide_prints_json_and_a_table(target):
    runner = CliRunner()
    args = ["gateway", "decide", "--tenant", "acme", "--service", "chat", "--feature", "answer",
            "--allow", "openai/gpt-4o", "--allow", "openai/gpt-4o-mini", "--slo-ms", "800",
            "--input-tokens", "1000", "--output-tokens", "500", "--target", target]

    as_json = runner.invoke(cli_main, [*args, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    result = json.loads(as_json.output)
    assert (result["provider"], result["model"], result["estimated_cost_usd"]) == ("openai", "gpt-4o-mini", "0.00045")
    assert result["reason_code"] == "cheapest_within_slo"
    assert [c["verdict"] for c in result["candidates"]] == ["costlier: $0.0075 > $0.00045", "chosen"]

    as_table = runner.invoke(cli_main, args)
    assert as_table.exit_code == 0, as_table.output
    assert "openai/gpt-4o-mini" in as_table.output
    assert "cheapest_within_slo" in as_table.output
    assert "chosen" in as_table.output


def test_cli_decide_reports_rpc_errors_and_bad_models(target):
    runner = CliRunner()
    base = ["gateway", "decide", "--tenant", "acme", "--service", "chat", "--feature", "f", "--target", target]

    bad_slo = runner.invoke(cli_main, [*base, "--allow", "openai/gpt-4o", "--slo-ms", "-1"])
    assert bad_slo.exit_code != 0
    assert "INVALID_ARGUMENT" in bad_slo.output and "latency_slo_ms" in bad_slo.output

    bad_model = runner.invoke(cli_main, [*base, "--allow", "gpt-4o", "--slo-ms", "800"])
    assert bad_model.exit_code != 0
    assert "provider/model" in bad_model.output


# --- stubs --------------------------------------------------------------------------------------------------

def test_codegen_writes_importable_stubs_next_to_the_proto(tmp_path: Path):
    for proto in codegen.PROTO_FILES:
        (tmp_path / proto).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(codegen.SOURCE_DIR / proto, tmp_path / proto)

    assert codegen.stubs_are_current(tmp_path) is False
    written = codegen.generate(tmp_path)

    assert sorted(p.name for p in written) == ["routing_pb2.py", "routing_pb2.pyi", "routing_pb2_grpc.py"]
    assert all(p.parent == tmp_path / "routing/v1" for p in written)
    assert "from prismops.gateway_grpc.routing.v1 import routing_pb2" in (written[0].parent / "routing_pb2_grpc.py").read_text()
    assert codegen.stubs_are_current(tmp_path) is True


def test_codegen_reports_a_broken_proto(tmp_path: Path):
    proto = tmp_path / codegen.PROTO_FILES[0]
    proto.parent.mkdir(parents=True)
    proto.write_text('syntax = "proto3";\nmessage Broken { string x = ; }\n')
    with pytest.raises(codegen.CodegenError, match="protoc failed"):
        codegen.generate(tmp_path)


def test_rpc_threads_default_to_the_cores_in_process_and_to_sixteen_on_redis(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(server_module.os, "cpu_count", lambda: 8)
    assert server_module.rpc_threads(Settings()) == 8
    monkeypatch.setattr(server_module.os, "cpu_count", lambda: 1)
    assert server_module.rpc_threads(Settings()) == 2  # one slow call (a policy audit's flush) never holds them all
    assert server_module.rpc_threads(Settings().with_overrides(gateway={"limits_store": "share"})) == 2
    assert server_module.rpc_threads(Settings().with_overrides(gateway={"limits_store": "redis"})) == 16
    assert server_module.rpc_threads(
        Settings().with_overrides(gateway={"max_workers": 5, "limits_store": "redis"})) == 5
