"""Bearer tokens → roles: the tokens file's errors, and the interceptor on a real in-process server."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.gateway_grpc.auth import (  # noqa: E402
    ANONYMOUS,
    METHOD_ROLES,
    Principal,
    TokenGrants,
    TokensFileError,
    bearer_token,
    load_token_grants,
    token_digest,
)
from prismops.gateway_grpc.live_table import LiveModelTable  # noqa: E402
from prismops.gateway_grpc.policy_config import BUNDLED_POLICY  # noqa: E402
from prismops.gateway_grpc.routing.v1 import routing_pb2, routing_pb2_grpc  # noqa: E402
from prismops.gateway_grpc.server import ServeError, build_server  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase  # noqa: E402
from prismops.settings import Settings  # noqa: E402
from prismops.streams.codecs import codec_for  # noqa: E402

TOKENS = {"viewer": "viewer-secret", "service": "service-secret", "admin": "admin-secret"}
NEW_POLICY = BUNDLED_POLICY.read_text(encoding="utf-8").replace("latency_slo_ms: 8000", "latency_slo_ms: 7000")


def tokens_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the tokens file ----------------------------------------------------------------------------------------

def test_tokens_resolve_to_principals_by_plain_token_or_by_hash(tmp_path: Path):
    digest = hashlib.sha256(b"alice-secret").hexdigest()
    grants = load_token_grants(tokens_file(tmp_path, (
        f"- {{name: alice, role: admin, token_sha256: {digest.upper()}}}\n"
        "- {name: checkout, role: service, token: checkout-secret}\n"
    )))
    assert grants.enabled
    assert grants.principal_for("alice-secret") == Principal("alice", "admin")
    assert grants.principal_for("checkout-secret") == Principal("checkout", "service")
    assert grants.principal_for("nope") is None
    assert token_digest("checkout-secret") == hashlib.sha256(b"checkout-secret").hexdigest()


def test_no_tokens_file_or_an_empty_one_turns_authentication_off(tmp_path: Path):
    assert load_token_grants(None).enabled is False
    assert load_token_grants(tokens_file(tmp_path, "")).enabled is False


@pytest.mark.parametrize(
    ("text", "field", "rule"),
    [
        ("{alice: admin}", "tokens_file", "list"),
        ("- [unclosed", "tokens_file", "readable"),
        ("- {role: admin, token: x}", "tokens[0].name", "required"),
        ("- just-a-string", "tokens[0].name", "required"),
        ("- {name: a, role: admin, token: x}\n- {name: b, role: owner, token: y}", "tokens[1].role", "one_of"),
        ("- {name: a, role: admin}", "tokens[0].token_sha256", "required"),
        ("- {name: a, role: admin, token_sha256: abc123}", "tokens[0].token_sha256", "sha256_hex"),
        (f"- {{name: a, role: admin, token_sha256: {'z' * 64}}}", "tokens[0].token_sha256", "sha256_hex"),
        ("- {name: a, role: admin, token: x}\n- {name: b, role: viewer, token: x}", "tokens[1].token_sha256", "unique"),
        ("- {name: a, role: admin, token: x}\n"
         f"- {{name: b, role: viewer, token_sha256: {token_digest('x').upper()}}}",
         "tokens[1].token_sha256", "unique"),
    ],
)
def test_a_bad_tokens_file_names_the_entry_and_the_rule(tmp_path: Path, text, field, rule):
    with pytest.raises(TokensFileError) as raised:
        load_token_grants(tokens_file(tmp_path, text))
    assert (raised.value.field, raised.value.rule) == (field, rule)


def test_a_missing_tokens_file_is_unreadable(tmp_path: Path):
    with pytest.raises(TokensFileError) as raised:
        load_token_grants(tmp_path / "absent.yaml")
    assert (raised.value.field, raised.value.rule) == ("tokens_file", "readable")


def test_a_bad_tokens_file_stops_the_server_from_being_built(tmp_path: Path):
    settings = Settings().with_overrides(gateway={
        "host": "127.0.0.1", "port": free_port(), "tokens_file": tokens_file(tmp_path, "- {name: a, role: root}")})
    with pytest.raises(ServeError, match=r"tokens\[0\].role"):
        build_server(settings, LiveModelTable(), publisher=RecordingPublisher())


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((("authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer  abc "),), "abc"),
        ((("x-other", "1"), ("Authorization", "Bearer abc")), "abc"),
        ((("authorization", "Basic abc"),), None),
        ((("authorization", "Bearer "),), None),
        ((("authorization", "abc"),), None),
        ((), None),
        (None, None),
    ],
)
def test_bearer_token_reads_only_the_bearer_scheme(metadata, token):
    assert bearer_token(metadata) == token


def test_roles_nest_viewer_service_admin():
    viewer, service, admin = (Principal("x", role) for role in ("viewer", "service", "admin"))
    assert [viewer.may(r) for r in ("viewer", "service", "admin")] == [True, False, False]
    assert [service.may(r) for r in ("viewer", "service", "admin")] == [True, True, False]
    assert [admin.may(r) for r in ("viewer", "service", "admin")] == [True, True, True]
    assert ANONYMOUS.role == "service"
    assert TokenGrants({}).principal_for("anything") is None
    assert METHOD_ROLES["/routing.v1.RouterAdmin/SetPolicy"] == "admin"


# --- the interceptor on a real server -----------------------------------------------------------------------

class RecordingPublisher:
    """Decisions and audit events in memory, encoded with their schemas as Kafka would carry them."""

    def __init__(self, schema: str = "routing_decision") -> None:
        self.schema = schema
        self.records: list[tuple[str, dict]] = []

    def publish(self, key: str, record: Mapping[str, Any]) -> None:
        codec_for(self.schema).encode(record)
        self.records.append((key, dict(record)))

    def publish_and_wait(self, key: str, record: Mapping[str, Any], timeout_s: float) -> None:
        self.publish(key, record)

    def close(self) -> None:
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_with(settings: Settings, audit: RecordingPublisher | None = None) -> tuple[grpc.Server, str]:
    server = build_server(settings, LiveModelTable(), publisher=RecordingPublisher(), audit_publisher=audit)
    server.start()
    return server, f"127.0.0.1:{settings.gateway.port}"


@pytest.fixture()
def audit() -> RecordingPublisher:
    return RecordingPublisher("policy_audit")


@pytest.fixture()
def secured(tmp_path: Path, audit: RecordingPublisher) -> Iterator[str]:
    entries = "".join(f"- {{name: {role}-caller, role: {role}, token_sha256: {token_digest(token)}}}\n"
                      for role, token in TOKENS.items())
    settings = Settings().with_overrides(gateway={
        "host": "127.0.0.1", "port": free_port(), "tokens_file": tokens_file(tmp_path, entries)})
    server, target = serve_with(settings, audit)
    yield target
    server.stop(0).wait()


@pytest.fixture()
def open_gateway() -> Iterator[str]:
    server, target = serve_with(Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port()}))
    yield target
    server.stop(0).wait()


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


DECIDE = routing_pb2.DecideRequest(tenant="acme", service="support-bot", feature="answer")


def call(target: str, method: str, token: str | None) -> Any:
    with grpc.insecure_channel(target) as channel:
        router, admin = routing_pb2_grpc.RouterStub(channel), routing_pb2_grpc.RouterAdminStub(channel)
        calls = {
            "Decide": lambda: router.Decide(DECIDE, timeout=5, metadata=bearer(token)),
            "ReportOutcome": lambda: router.ReportOutcome(routing_pb2.ReportOutcomeRequest(
                model=routing_pb2.ModelRef(provider="openai", model="gpt-4o"), status="ok"),
                timeout=5, metadata=bearer(token)),
            "GetTables": lambda: router.GetTables(routing_pb2.GetTablesRequest(), timeout=5, metadata=bearer(token)),
            "GetPolicy": lambda: admin.GetPolicy(routing_pb2.GetPolicyRequest(), timeout=5, metadata=bearer(token)),
            "SetPolicy": lambda: admin.SetPolicy(routing_pb2.SetPolicyRequest(yaml=NEW_POLICY, comment="tighter SLO"),
                                                 timeout=5, metadata=bearer(token)),
        }
        return calls[method]()


def status_of(target: str, method: str, token: str | None) -> grpc.StatusCode:
    try:
        call(target, method, token)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", ["Decide", "ReportOutcome", "GetTables", "GetPolicy", "SetPolicy"])
def test_no_token_or_an_unknown_token_is_unauthenticated(secured, method):
    for token in (None, "guessed-secret"):
        with pytest.raises(grpc.RpcError) as raised:
            call(secured, method, token)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert raised.value.details().startswith("authorization: ")


def test_a_malformed_authorization_header_is_unauthenticated(secured):
    with grpc.insecure_channel(secured) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            routing_pb2_grpc.RouterStub(channel).Decide(
                DECIDE, timeout=5, metadata=(("authorization", f"Basic {TOKENS['admin']}"),))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("viewer", {"GetTables", "GetPolicy"}),
        ("service", {"Decide", "ReportOutcome", "GetTables", "GetPolicy"}),
        ("admin", {"Decide", "ReportOutcome", "GetTables", "GetPolicy", "SetPolicy"}),
    ],
)
def test_each_role_may_call_exactly_its_methods(secured, role, allowed):
    for method in ("Decide", "ReportOutcome", "GetTables", "GetPolicy", "SetPolicy"):
        expected = grpc.StatusCode.OK if method in allowed else grpc.StatusCode.PERMISSION_DENIED
        assert status_of(secured, method, TOKENS[role]) == expected, method


def test_permission_denied_says_which_role_is_needed(secured):
    with pytest.raises(grpc.RpcError) as viewer_decides:
        call(secured, "Decide", TOKENS["viewer"])
    assert viewer_decides.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert viewer_decides.value.details() == "Decide needs the service role; viewer-caller has viewer"

    with pytest.raises(grpc.RpcError) as service_sets:
        call(secured, "SetPolicy", TOKENS["service"])
    assert service_sets.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert service_sets.value.details() == "SetPolicy needs the admin role; service-caller has service"


def test_an_admin_set_policy_is_installed_and_audited_under_the_tokens_name(secured, audit):
    response = call(secured, "SetPolicy", TOKENS["admin"])
    assert response.version == 2
    [(key, record)] = audit.records
    assert key == record["audit_id"] == response.audit_id
    assert (record["actor"], record["role"], record["source"], record["comment"]) == (
        "admin-caller", "admin", "grpc", "tighter SLO")
    document = call(secured, "GetPolicy", TOKENS["viewer"])
    assert (document.version, document.updated_by, document.yaml) == (2, "admin-caller", NEW_POLICY)


def test_health_and_reflection_need_no_token(secured):
    with grpc.insecure_channel(secured) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"routing.v1.Router", "routing.v1.RouterAdmin", "grpc.health.v1.Health"} <= services


def test_without_a_tokens_file_everyone_routes_and_nobody_changes_the_policy(open_gateway):
    for method in ("Decide", "ReportOutcome", "GetTables", "GetPolicy"):
        assert status_of(open_gateway, method, None) == grpc.StatusCode.OK, method
    assert status_of(open_gateway, "Decide", "any-token-at-all") == grpc.StatusCode.OK
    with pytest.raises(grpc.RpcError) as raised:
        call(open_gateway, "SetPolicy", None)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert raised.value.details() == ("SetPolicy needs the admin role; anonymous has service "
                                      "(this gateway has no tokens file, so nobody may)")
    assert call(open_gateway, "GetPolicy", None).version == 1
