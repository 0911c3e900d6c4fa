"""Request bounds over a real channel: string lengths and characters, list sizes, the whole message size, and the
length of every error message (a long one once overflowed the trailers and came back RESOURCE_EXHAUSTED at random
instead of INVALID_ARGUMENT)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.gateway_grpc.auth import token_digest  # noqa: E402
from prismops.gateway_grpc.client import RouterClient  # noqa: E402
from prismops.gateway_grpc.live_table import LiveModelTable  # noqa: E402
from prismops.gateway_grpc.policy_config import BUNDLED_POLICY, PolicyStore  # noqa: E402
from prismops.gateway_grpc.request_bounds import (  # noqa: E402
    ERROR_DETAIL_MAX_BYTES, ERROR_DETAIL_MAX_CHARS, MAX_HINTS, cap_detail, check_decide,
)
from prismops.errors import FieldRuleError  # noqa: E402
from prismops.finops.text_rules import check_id, check_name  # noqa: E402
from prismops.gateway_grpc.routing.v1 import routing_pb2  # noqa: E402
from prismops.gateway_grpc.server import GatewayState, build_server  # noqa: E402
from prismops.settings import Settings  # noqa: E402
from prismops.testing import free_port  # noqa: E402

ADMIN_TOKEN = "bounds-admin"
BUNDLED_TEXT = BUNDLED_POLICY.read_text(encoding="utf-8")
MINI = ("openai", "gpt-4o-mini")
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE
ZWSP = "\u200b"  # ZERO WIDTH SPACE


class ListPublisher:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def publish(self, key: str, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))

    def publish_and_wait(self, key: str, record: Mapping[str, Any], timeout_s: float) -> None:
        self.records.append(dict(record))

    def close(self) -> None:
        return None


class Gateway:
    def __init__(self, settings: Settings, decisions: ListPublisher, audit: ListPublisher):
        self.settings, self.decisions, self.audit = settings, decisions, audit
        self.target = f"127.0.0.1:{settings.gateway.port}"

    def client(self) -> RouterClient:
        return RouterClient(self.target, token=ADMIN_TOKEN)


def start_gateway(tmp_path: Path, **gateway: Any) -> tuple[Gateway, grpc.Server]:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"- {{name: alice, role: admin, token_sha256: {token_digest(ADMIN_TOKEN)}}}\n",
                      encoding="utf-8")
    settings = Settings().with_overrides(
        gateway={"host": "127.0.0.1", "port": free_port(), "tokens_file": tokens, **gateway})
    decisions, audit = ListPublisher(), ListPublisher()
    server = build_server(settings, LiveModelTable(), publisher=decisions, audit_publisher=audit)
    server.start()
    return Gateway(settings, decisions, audit), server


@pytest.fixture()
def gateway(tmp_path) -> Iterator[Gateway]:
    running, server = start_gateway(tmp_path)
    try:
        with running.client() as client:
            assert client.wait_ready(5.0)
        yield running
        # whatever a test sent, the policy is the one the gateway started with and nothing was audited
        with running.client() as client:
            document = client.get_policy()
        assert (document.version, document.yaml) == (1, BUNDLED_TEXT)
        assert running.audit.records == []
    finally:
        server.stop(0).wait()


def candidates(count: int, provider: str = "openai") -> list[tuple[str, str]]:
    return [(provider, f"model-{index:04d}") for index in range(count)]


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def assert_invalid(error: grpc.RpcError, field: str, rule: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"{field}: "), error.details()
    assert error.details().endswith(f"[{rule}]"), error.details()
    assert len(error.details()) <= ERROR_DETAIL_MAX_CHARS


# --- strings ------------------------------------------------------------------------------------------------

def test_a_10_kb_tenant_is_invalid_argument_naming_the_tenant(gateway):
    with gateway.client() as client:
        error = rpc_error(lambda: client.decide("t" * 10_000, "chat", "answer", [MINI]))
    assert_invalid(error, "tenant", "max_length")
    assert "t" * 200 not in error.details()  # the value is never echoed
    assert gateway.decisions.records == []


def test_a_bidi_override_in_the_tenant_is_invalid_argument(gateway):
    with gateway.client() as client:
        error = rpc_error(lambda: client.decide(f"acme{RLO}emca", "chat", "answer", [MINI]))
    assert_invalid(error, "tenant", "printable")
    assert "U+202E" in error.details()
    assert gateway.decisions.records == []


@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        ({"service": "s" * 129}, "service", "max_length"),
        ({"feature": f"answer{ZWSP}"}, "feature", "printable"),
        ({"customer": "c" * 129}, "customer", "max_length"),
        ({"customer": "bob\x00"}, "customer", "printable"),
        ({"request_id": "r" * 257}, "request_id", "max_length"),
        ({"session_id": f"s{RLO}"}, "session_id", "printable"),
        ({"task_type": "k" * 129}, "task_type", "max_length"),
        ({"region": "eu\n"}, "region", "printable"),
        ({"hints": ["simple", "h" * 129]}, "hints[1]", "max_length"),
        ({"allowed": [MINI, ("openai", "m" * 129)]}, "allowed_models[1].model", "max_length"),
        ({"allowed": [(f"open{RLO}ai", "gpt-4o-mini")]}, "allowed_models[0].provider", "printable"),
        ({"hints": ["simple"] * (MAX_HINTS + 1)}, "hints", "max_items"),
    ],
)
def test_every_decide_string_is_bounded(gateway, kwargs, field, rule):
    kwargs = {"tenant": "acme", "service": "chat", "feature": "answer", "allowed": [MINI], **kwargs}
    with gateway.client() as client:
        error = rpc_error(lambda: client.decide(kwargs.pop("tenant"), kwargs.pop("service"), kwargs.pop("feature"),
                                                **kwargs))
    assert_invalid(error, field, rule)
    assert gateway.decisions.records == []


def test_names_and_ids_at_their_limits_are_accepted(gateway):
    with gateway.client() as client:
        response = client.decide("t" * 128, "chat", "answer", [MINI], request_id="r" * 256, session_id="s" * 256,
                                 customer="c" * 128, hints=["simple"] * MAX_HINTS)
    assert (response.model.provider, response.model.model) == MINI
    [record] = gateway.decisions.records
    assert record["tenant"] == "t" * 128


@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        ({"decision_id": "d" * 257}, "decision_id", "max_length"),
        ({"model": ("openai", "m" * 129)}, "model.model", "max_length"),
        ({"model": (f"open{ZWSP}ai", "gpt-4o-mini")}, "model.provider", "printable"),
        ({"status": "x" * 5000}, "status", "max_length"),
    ],
)
def test_report_outcome_strings_are_bounded_and_move_no_breaker(gateway, kwargs, field, rule):
    kwargs = {"model": MINI, "status": "server_error", **kwargs}
    with gateway.client() as client:
        error = rpc_error(lambda: client.report_outcome(kwargs.pop("model"), kwargs.pop("status"), **kwargs))
        assert_invalid(error, field, rule)
        assert list(client.get_tables().breakers) == []


# --- list sizes ---------------------------------------------------------------------------------------------

def test_65_candidates_are_invalid_argument_naming_the_field(gateway):
    limit = gateway.settings.gateway.max_candidates
    assert limit == 64
    with gateway.client() as client:
        error = rpc_error(lambda: client.decide("acme", "chat", "answer", candidates(limit + 1)))
    assert_invalid(error, "allowed_models", "max_items")
    assert error.details() == "allowed_models: must have at most 64 items, got 65 [max_items]"
    assert gateway.decisions.records == []


def test_1000_candidates_are_always_invalid_argument_with_a_short_message(gateway):
    with gateway.client() as client:
        for _ in range(10):
            error = rpc_error(lambda: client.decide("acme", "support-bot", "answer", candidates(1000), timeout=5))
            assert_invalid(error, "allowed_models", "max_items")
            assert len(error.details()) <= ERROR_DETAIL_MAX_CHARS
    assert gateway.decisions.records == []


def test_64_candidates_are_accepted(gateway):
    with gateway.client() as client:
        response = client.decide("acme", "chat", "answer", candidates(64), timeout=5)
    assert len(response.candidates) == 64
    assert len(gateway.decisions.records) == 1


def test_a_long_model_list_in_an_error_is_summarised_never_overflowing_the_trailers(tmp_path):
    """Without the candidate ceiling, the route's in_route error names every model the caller sent: the message
    is still capped, so it always arrives as INVALID_ARGUMENT (it used to be RESOURCE_EXHAUSTED at random)."""
    running, server = start_gateway(tmp_path, max_candidates=5000)
    try:
        with running.client() as client:
            for _ in range(10):
                error = rpc_error(lambda: client.decide("acme", "support-bot", "answer", candidates(1000), timeout=5))
                assert_invalid(error, "allowed_models", "in_route")
                assert "openai/model-0000, " in error.details()
                assert "more)" in error.details()
    finally:
        server.stop(0).wait()


# --- the whole message --------------------------------------------------------------------------------------

def test_a_request_over_max_request_bytes_is_resource_exhausted(gateway):
    limit = gateway.settings.gateway.max_request_bytes
    assert limit == 65536
    request = routing_pb2.DecideRequest(tenant="acme", service="chat", feature="answer",
                                        hints=["h" * 120] * 600)  # > 64 KiB, few enough fields to parse fast
    assert request.ByteSize() > limit
    with gateway.client() as client:
        error = rpc_error(lambda: client.decide_message(request, timeout=5))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert gateway.decisions.records == []


def test_set_policy_over_max_request_bytes_is_resource_exhausted_and_changes_nothing(gateway):
    huge = BUNDLED_TEXT + "#" + "x" * gateway.settings.gateway.max_request_bytes + "\n"
    with gateway.client() as client:
        error = rpc_error(lambda: client.set_policy(huge, comment="too big"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("kwargs", "field", "rule"),
    [
        ({"comment": f"fix {RLO}"}, "comment", "printable"),
        ({"comment": "c" * 1025}, "comment", "max_length"),
        ({"yaml": BUNDLED_TEXT.replace("routes:", f"routes:{ZWSP}", 1)}, "yaml", "printable"),
    ],
)
def test_set_policy_strings_are_bounded_and_change_nothing(gateway, kwargs, field, rule):
    kwargs = {"yaml": BUNDLED_TEXT + "# tweak\n", **kwargs}
    with gateway.client() as client:
        error = rpc_error(lambda: client.set_policy(kwargs.pop("yaml"), **kwargs))
    assert_invalid(error, field, rule)


def test_a_policy_with_line_breaks_tabs_and_a_bom_is_still_accepted(tmp_path):
    running, server = start_gateway(tmp_path)
    try:
        with running.client() as client:
            response = client.set_policy("\ufeff" + BUNDLED_TEXT + "#\tend\r\n", comment="line\tbreaks")
            assert response.version == 2
    finally:
        server.stop(0).wait()


def test_the_request_size_limit_follows_the_setting(tmp_path):
    running, server = start_gateway(tmp_path, max_request_bytes=1024)
    try:
        with running.client() as client:
            assert client.decide("acme", "chat", "answer", [MINI]).model.model == MINI[1]
            error = rpc_error(lambda: client.decide("acme", "chat", "answer", [MINI], hints=["h" * 100] * 11))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop(0).wait()


# --- error messages -----------------------------------------------------------------------------------------

def test_an_unexpected_exception_is_reported_capped(tmp_path):
    settings = Settings().with_overrides(gateway={"host": "127.0.0.1", "port": free_port()})

    def broken_clock() -> dt.datetime:
        raise RuntimeError("clock broke: " + "x" * 200_000)

    table = LiveModelTable()
    state = GatewayState(settings, table, PolicyStore.from_file(None), clock=broken_clock)
    server = build_server(settings, table, publisher=ListPublisher(), state=state)
    server.start()
    try:
        with RouterClient(f"127.0.0.1:{settings.gateway.port}") as client:
            for _ in range(5):
                error = rpc_error(lambda: client.decide("acme", "chat", "answer", [MINI]))
                assert error.code() == grpc.StatusCode.UNKNOWN
                assert error.details().startswith("Exception calling application: clock broke: xxx")
                assert len(error.details()) <= ERROR_DETAIL_MAX_CHARS
    finally:
        server.stop(0).wait()


def first_field_error(request: routing_pb2.DecideRequest) -> tuple[str, str, str] | None:
    """The text rules applied field by field, in check_decide's order: what its fast path must agree with."""
    checks = [(check_name, name, getattr(request, name))
              for name in ("tenant", "service", "feature", "task_type", "region", "customer")]
    checks += [(check_id, name, getattr(request, name)) for name in ("request_id", "session_id")]
    for index, ref in enumerate(request.allowed_models):
        checks += [(check_name, f"allowed_models[{index}].provider", ref.provider),
                   (check_name, f"allowed_models[{index}].model", ref.model)]
    checks += [(check_name, f"hints[{index}]", hint) for index, hint in enumerate(request.hints)]
    for check, field, value in checks:
        try:
            check(field, value)
        except FieldRuleError as error:
            return (error.field, error.rule, error.message)
    return None


# mostly plain text, with the characters that matter: forbidden ones (bidi, zero-width, controls, line and
# paragraph separators, unassigned, private use) and allowed-but-not-isprintable ones (no-break and ideographic space)
texts = st.one_of(
    st.text(alphabet=st.sampled_from("ab/-_.9 é中"), max_size=12),
    st.text(alphabet=st.sampled_from(f"ab {RLO}{ZWSP}\x00\t\u2028\u2029\u0378\ue000\u00a0\u3000"), max_size=6),
    st.text(max_size=8),
    st.builds(lambda n: "x" * n, st.sampled_from([128, 129, 256, 257])),
)


@given(names=st.lists(texts, min_size=6, max_size=6), ids=st.lists(texts, min_size=2, max_size=2),
       models=st.lists(st.tuples(texts, texts), max_size=3), hints=st.lists(texts, max_size=3))
@settings(deadline=None, max_examples=300)
def test_check_decide_fast_path_agrees_with_the_field_by_field_rules(names, ids, models, hints):
    request = routing_pb2.DecideRequest(
        **dict(zip(("tenant", "service", "feature", "task_type", "region", "customer"), names)),
        request_id=ids[0], session_id=ids[1], hints=hints,
        allowed_models=[routing_pb2.ModelRef(provider=p, model=m) for p, m in models],
    )
    expected = first_field_error(request)
    try:
        check_decide(request, max_candidates=64)
    except FieldRuleError as error:
        assert (error.field, error.rule, error.message) == expected
    else:
        assert expected is None


def test_cap_detail_leaves_short_messages_alone():
    text = "tenant: is required: decisions are attributed to a tenant [required]"
    assert cap_detail(text) == text


def test_cap_detail_summarises_lists_and_keeps_the_field_and_rule():
    models = [f"openai/model-{index:04d}" for index in range(1000)]
    text = (f"allowed_models: none of {', '.join(models)} is among route support-chat's models "
            f"(openai/gpt-4o, anthropic/claude-sonnet-4) [in_route]")
    capped = cap_detail(text)
    assert capped == (
        "allowed_models: none of openai/model-0000, openai/model-0001, openai/model-0002, openai/model-0003, "
        "openai/model-0004, … (994 more), openai/model-0999 is among route support-chat's models "
        "(openai/gpt-4o, anthropic/claude-sonnet-4) [in_route]"
    )


@pytest.mark.parametrize("unit", ["x", "é", "\u4e2d", "\U0001F600", "a b, "])
def test_cap_detail_cuts_any_long_text_within_both_caps(unit):
    capped = cap_detail("field: " + unit * 20_000 + " [some_rule]")
    assert len(capped) <= ERROR_DETAIL_MAX_CHARS
    assert len(capped.encode("utf-8")) <= ERROR_DETAIL_MAX_BYTES
    assert capped.startswith("field: ")
    assert capped.endswith("more characters) [some_rule]")


@pytest.mark.parametrize("text", ["x" * 1_000_000, "a b, " * 200_000, "a, " * 300_000 + "x" * 300_000])
def test_cap_detail_stays_linear_on_huge_text(text):
    started = time.perf_counter()
    capped = cap_detail(text)
    assert time.perf_counter() - started < 1.0
    assert len(capped) <= ERROR_DETAIL_MAX_CHARS
