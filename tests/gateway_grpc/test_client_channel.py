"""RouterClient on a real channel: what it puts on the wire (fields, bearer token) and TLS.

The servicers here only record what arrives and answer canned messages: the client's wiring is under test,
the router's behaviour is tested in test_server.py.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.gateway_grpc.client import RouterClient  # noqa: E402
from prismops.gateway_grpc.routing.v1 import routing_pb2, routing_pb2_grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402


class RecordingRouter(routing_pb2_grpc.RouterServicer, routing_pb2_grpc.RouterAdminServicer):
    def __init__(self) -> None:
        self.requests: list[tuple[str, object, dict[str, str]]] = []

    def _record(self, name: str, request: object, context: grpc.ServicerContext) -> None:
        self.requests.append((name, request, dict(context.invocation_metadata())))

    def Decide(self, request, context):
        self._record("Decide", request, context)
        return routing_pb2.DecideResponse(decision_id="dec-1", model=request.allowed_models[0] if request.allowed_models
                                          else routing_pb2.ModelRef(provider="openai", model="gpt-4o-mini"))

    def ReportOutcome(self, request, context):
        self._record("ReportOutcome", request, context)
        return routing_pb2.ReportOutcomeResponse(breaker_state="closed", consecutive_failures=1)

    def GetTables(self, request, context):
        self._record("GetTables", request, context)
        return routing_pb2.GetTablesResponse(policy_version=3)

    def GetPolicy(self, request, context):
        self._record("GetPolicy", request, context)
        return routing_pb2.PolicyDocument(yaml="routes: []\n", version=3, updated_by="file")

    def SetPolicy(self, request, context):
        self._record("SetPolicy", request, context)
        if request.expected_version and request.expected_version != 3:
            context.abort(grpc.StatusCode.ABORTED, f"expected_version: {request.expected_version} is not current (3)")
        return routing_pb2.SetPolicyResponse(version=4, audit_id="audit-1", diff="-a\n+b\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(servicer: RecordingRouter, credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    routing_pb2_grpc.add_RouterServicer_to_server(servicer, server)
    routing_pb2_grpc.add_RouterAdminServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("routing.v1.Router", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = free_port()
    address = f"localhost:{port}" if credentials else f"127.0.0.1:{port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    assert bound == port
    server.start()
    return server, port


@pytest.fixture()
def servicer() -> RecordingRouter:
    return RecordingRouter()


@pytest.fixture()
def plain_port(servicer: RecordingRouter) -> Iterator[int]:
    server, port = start_server(servicer)
    yield port
    server.stop(0).wait()


def test_decide_sends_every_new_field_and_the_bearer_token(servicer, plain_port):
    with RouterClient(f"127.0.0.1:{plain_port}", token="svc-secret") as client:
        response = client.decide(
            "acme", "chat", "summarize", [("anthropic", "claude-3-5-haiku")], 0,
            request_id="req-1", session_id="sess-7", task_type="extraction", hints=["simple", "short"],
            prompt_chars=1234, requires_structured_output=True, requires_vision=True, region="eu", customer="globex",
        )

    assert response.model.model == "claude-3-5-haiku"
    name, request, metadata = servicer.requests[0]
    assert name == "Decide"
    assert metadata["authorization"] == "Bearer svc-secret"
    assert (request.tenant, request.service, request.feature, request.request_id) == ("acme", "chat", "summarize", "req-1")
    assert [(m.provider, m.model) for m in request.allowed_models] == [("anthropic", "claude-3-5-haiku")]
    assert request.latency_slo_ms == 0
    assert (request.session_id, request.task_type, list(request.hints)) == ("sess-7", "extraction", ["simple", "short"])
    assert (request.prompt_chars, request.requires_structured_output, request.requires_vision) == (1234, True, True)
    assert (request.region, request.customer) == ("eu", "globex")


def test_decide_keeps_its_old_positional_form_and_may_leave_models_to_the_route(servicer, plain_port):
    with RouterClient(f"127.0.0.1:{plain_port}") as client:
        client.decide("acme", "chat", "summarize", [("openai", "gpt-4o")], 800.0, 1000, 500, "req-2", 2.0)
        client.decide("acme", "chat", "summarize")

    (_, positional, metadata), (_, minimal, _) = servicer.requests
    assert "authorization" not in metadata
    assert (positional.latency_slo_ms, positional.expected_input_tokens, positional.expected_output_tokens) == (800, 1000, 500)
    assert positional.request_id == "req-2"
    assert list(minimal.allowed_models) == [] and minimal.latency_slo_ms == 0


def test_report_outcome_get_tables_and_the_admin_calls_carry_their_fields_and_the_token(servicer, plain_port):
    with RouterClient(f"127.0.0.1:{plain_port}", token="admin-secret") as client:
        breaker = client.report_outcome(("openai", "gpt-4o"), "server_error", decision_id="dec-1",
                                        http_status=503, latency_ms=812.5, shadow=True)
        tables = client.get_tables()
        policy = client.get_policy()
        installed = client.set_policy("routes: [x]\n", expected_version=3, comment="raise SLO")
        with pytest.raises(grpc.RpcError) as stale:
            client.set_policy("routes: [y]\n", expected_version=2)

    assert (breaker.breaker_state, breaker.consecutive_failures) == ("closed", 1)
    assert tables.policy_version == 3
    assert (policy.yaml, policy.version) == ("routes: []\n", 3)
    assert (installed.version, installed.audit_id) == (4, "audit-1")
    assert stale.value.code() == grpc.StatusCode.ABORTED
    names = [name for name, _, _ in servicer.requests]
    assert names == ["ReportOutcome", "GetTables", "GetPolicy", "SetPolicy", "SetPolicy"]
    assert {metadata["authorization"] for _, _, metadata in servicer.requests} == {"Bearer admin-secret"}
    report = servicer.requests[0][1]
    assert (report.model.provider, report.model.model, report.status) == ("openai", "gpt-4o", "server_error")
    assert (report.decision_id, report.http_status, report.latency_ms, report.shadow) == ("dec-1", 503, 812.5, True)
    set_policy = servicer.requests[3][1]
    assert (set_policy.yaml, set_policy.expected_version, set_policy.comment) == ("routes: [x]\n", 3, "raise SLO")


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """A self-signed certificate for localhost (openssl is part of the base system)."""
    assert shutil.which("openssl"), "openssl is needed to make a test certificate"
    folder: Path = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )
    return key.read_bytes(), cert.read_bytes()


def test_a_root_certificate_gives_a_tls_channel_that_verifies_the_server(servicer, tls_pair):
    key, cert = tls_pair
    server, port = start_server(servicer, grpc.ssl_server_credentials([(key, cert)]))
    try:
        with RouterClient(f"localhost:{port}", token="svc", tls_root_cert=cert) as client:
            assert client.wait_ready(5.0)
            assert client.decide("acme", "chat", "summarize").decision_id == "dec-1"
        with RouterClient(f"localhost:{port}") as plaintext:
            with pytest.raises(grpc.RpcError) as refused:
                plaintext.decide("acme", "chat", "summarize", timeout=2.0)
    finally:
        server.stop(0).wait()

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.requests[0][2]["authorization"] == "Bearer svc"
    assert len(servicer.requests) == 1
