"""The routing policy engine behind a real gateway process, on the real stack.

The gateway runs as `prismops gateway serve` with a policy file and a tokens file; decisions go through Kafka
to ClickHouse, audit events too. Covered here: a failing model's breaker (3 failures → skipped for 30 s →
one probe), a shadow target at its sample rate (in responses and in ClickHouse), a policy change refused
without the admin token and audited with it, and grpcurl listing and calling the router through reflection.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from prismops.gateway_grpc.auth import token_digest
from prismops.gateway_grpc.client import RouterClient, wait_for_router
from prismops.infra.tools import ensure_grpcurl
from prismops.infra.components import Components
from prismops.settings import Settings
from prismops.testing import clickhouse, isolated, read_topic_to_end, wait_for
from prismops.sinks.migrations import apply_migrations
from prismops.streams.topics import POLICY_AUDIT

SERVICE_TOKEN = "service-token-" + uuid.uuid4().hex
ADMIN_TOKEN = "admin-token-" + uuid.uuid4().hex
VIEWER_TOKEN = "viewer-token-" + uuid.uuid4().hex
SHADOW_RATE = 0.25
OPEN_S = 30.0

POLICY = f"""
tiers: [premium, standard, economy, local]
defaults:
  latency_slo_ms: 5000
  breaker: {{failure_threshold: 3, open_s: {OPEN_S:g}, half_open_probes: 1}}
models:
  openai/gpt-4o: {{tier: premium}}
  openai/gpt-4o-mini: {{tier: economy}}
  google/gemini-2.0-flash: {{tier: economy}}
  anthropic/claude-sonnet-4: {{tier: premium}}
routes:
  - name: helpdesk
    match: {{service: helpdesk}}
    primary: openai/gpt-4o
    fallbacks: [openai/gpt-4o-mini]
  - name: drafts
    match: {{service: drafter}}
    primary: openai/gpt-4o-mini
    fallbacks: [google/gemini-2.0-flash]
    shadow: {{model: anthropic/claude-sonnet-4, sample_rate: {SHADOW_RATE}}}
"""


@pytest.fixture(scope="module")
def gateway(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Components]]:
    """Sink and gateway as child processes, with a policy file and a tokens file."""
    config = tmp_path_factory.mktemp("routing-policy")
    (config / "policy.yaml").write_text(POLICY)
    (config / "tokens.yaml").write_text(
        f"- {{name: checkout, role: service, token_sha256: {token_digest(SERVICE_TOKEN)}}}\n"
        f"- {{name: dashboards, role: viewer, token_sha256: {token_digest(VIEWER_TOKEN)}}}\n"
        f"- {{name: ops-admin, role: admin, token: {ADMIN_TOKEN}}}\n"
    )
    with isolated(stack_settings) as base:
        settings = base.with_overrides(gateway={
            "policy_file": str(config / "policy.yaml"), "tokens_file": str(config / "tokens.yaml"),
        })
        apply_migrations(settings)
        with Components(settings, tmp_path_factory.mktemp("routing-logs")) as components:
            components.start("sink", "gateway")
            wait_for_router(target(settings), components.check_alive, token=SERVICE_TOKEN)
            yield settings, components


def target(settings: Settings) -> str:
    return f"{settings.gateway.host}:{settings.gateway.port}"


def chosen(response) -> tuple[str, str]:
    return response.model.provider, response.model.model


def test_a_model_failing_three_times_is_skipped_for_30_s_then_probed_once(gateway):
    settings, components = gateway
    primary, fallback = ("openai", "gpt-4o"), ("openai", "gpt-4o-mini")
    with RouterClient(target(settings), token=SERVICE_TOKEN) as router:
        first = router.decide("acme", "helpdesk", "answer")
        assert chosen(first) == primary and first.route == "helpdesk"
        assert [chosen(f) for f in first.fallbacks] == [fallback]
        assert list(first.retry.backoff_ms) == [1000, 2000, 4000]

        for attempt in range(2):
            assert router.report_outcome(primary, "server_error").breaker_state == "closed"
            assert chosen(router.decide("acme", "helpdesk", "answer")) == primary, f"still closed after {attempt + 1}"
        opened_at = time.monotonic()
        state = router.report_outcome(primary, "", http_status=503)
        assert (state.breaker_state, state.consecutive_failures) == ("open", 3)

        skipped = router.decide("acme", "helpdesk", "answer")
        assert chosen(skipped) == fallback and "primary_skipped" in skipped.reason_codes
        assert {c.model.model: c.breaker_state for c in skipped.candidates}["gpt-4o"] == "open"

        def probe():
            answer = router.decide("acme", "helpdesk", "answer")
            return answer if chosen(answer) == primary else None

        probe_answer = wait_for(probe, OPEN_S + 10, components, "the half-open probe")
        waited = time.monotonic() - opened_at
        assert OPEN_S - 0.5 <= waited <= OPEN_S + 5, f"probed after {waited:.1f} s"
        assert "breaker_probe" in probe_answer.reason_codes

        during_probe = router.decide("acme", "helpdesk", "answer")
        assert chosen(during_probe) == fallback, "only one probe while half-open"

        assert router.report_outcome(primary, "ok", decision_id=probe_answer.decision_id).breaker_state == "closed"
        after = router.decide("acme", "helpdesk", "answer")
        assert chosen(after) == primary and after.reason_code == "no_live_data"
        tables = router.get_tables()
        assert {(b.model.model, b.state) for b in tables.breakers} >= {("gpt-4o", "closed")}


def test_a_shadow_target_appears_at_its_sample_rate_and_lands_in_clickhouse(gateway):
    settings, components = gateway
    count = 400
    with RouterClient(target(settings), token=SERVICE_TOKEN) as router:
        answers = [router.decide(f"tenant-{i % 7}", "drafter", "draft", session_id=f"s-{i}") for i in range(count)]
    shadowed = [a for a in answers if a.HasField("shadow")]
    for answer in shadowed:
        assert chosen(answer) == ("openai", "gpt-4o-mini")
        assert (answer.shadow.provider, answer.shadow.model) == ("anthropic", "claude-sonnet-4")
        assert "shadow_sampled" in answer.reason_codes
    sigma = math.sqrt(count * SHADOW_RATE * (1 - SHADOW_RATE))
    assert abs(len(shadowed) - count * SHADOW_RATE) <= 4 * sigma, f"{len(shadowed)} of {count} shadowed"

    ids = tuple(a.decision_id for a in answers)
    client = clickhouse(settings)

    def all_stored():
        rows = client.execute(
            "SELECT decision_id, shadow_model, route, policy_version, reason_codes FROM routing_decisions "
            "WHERE decision_id IN %(ids)s", {"ids": ids},
        )
        return rows if len(rows) == count else None

    try:
        rows = wait_for(all_stored, 60, components, "all decisions in ClickHouse")
    finally:
        client.disconnect()
    stored_shadowed = {r[0] for r in rows if r[1] == "claude-sonnet-4"}
    assert stored_shadowed == {a.decision_id for a in shadowed}
    assert {(r[2], r[3]) for r in rows} == {("drafts", 1)}
    assert all(("shadow_sampled" in r[4]) == (r[0] in stored_shadowed) for r in rows)


def read_audit_events(settings: Settings, wanted: int, timeout_s: float = 30) -> list[dict]:
    """The audit topic from its start to its end, read by assignment, again until it holds `wanted` events."""
    deadline = time.monotonic() + timeout_s
    while True:
        events = [event for _key, event in read_topic_to_end(settings, POLICY_AUDIT)]
        if len(events) >= wanted or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_a_policy_change_needs_the_admin_token_and_is_audited(gateway, tmp_path: Path):
    settings, components = gateway
    new_policy = POLICY.replace("primary: openai/gpt-4o\n    fallbacks: [openai/gpt-4o-mini]",
                                "primary: openai/gpt-4o-mini\n    fallbacks: [openai/gpt-4o]")
    assert new_policy != POLICY
    with RouterClient(target(settings)) as anonymous:
        with pytest.raises(grpc.RpcError) as missing:
            anonymous.set_policy(new_policy)
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for token in (SERVICE_TOKEN, VIEWER_TOKEN):
        with RouterClient(target(settings), token=token) as router:
            with pytest.raises(grpc.RpcError) as denied:
                router.set_policy(new_policy)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "needs the admin role" in denied.value.details()
    with RouterClient(target(settings), token=VIEWER_TOKEN) as viewer:
        assert viewer.get_policy().version == 1
        with pytest.raises(grpc.RpcError) as viewer_decides:
            viewer.decide("acme", "helpdesk", "answer")
        assert viewer_decides.value.code() == grpc.StatusCode.PERMISSION_DENIED

    with RouterClient(target(settings), token=ADMIN_TOKEN) as admin:
        with pytest.raises(grpc.RpcError) as invalid:
            admin.set_policy(POLICY.replace("primary: openai/gpt-4o\n", "primary: openai/gpt-5\n"))
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert invalid.value.details().startswith("routes[0].primary: 'openai/gpt-5' is not in the models catalog")
        installed = admin.set_policy(new_policy, expected_version=1, comment="mini first for helpdesk")
        assert installed.version == 2 and installed.audit_id
        assert "-    primary: openai/gpt-4o\n" in installed.diff and "+    primary: openai/gpt-4o-mini\n" in installed.diff
        with pytest.raises(grpc.RpcError) as stale:
            admin.set_policy(POLICY, expected_version=1)
        assert stale.value.code() == grpc.StatusCode.ABORTED
        document = admin.get_policy()
        assert (document.version, document.updated_by, document.yaml) == (2, "ops-admin", new_policy)

    with RouterClient(target(settings), token=SERVICE_TOKEN) as router:
        answer = router.decide("acme", "helpdesk", "answer")
        assert chosen(answer) == ("openai", "gpt-4o-mini") and answer.policy_version == 2

    events = read_audit_events(settings, 1)
    assert [(e["audit_id"], e["actor"], e["role"], e["action"], e["source"], e["old_version"], e["new_version"],
             e["comment"]) for e in events] == [
        (installed.audit_id, "ops-admin", "admin", "set_policy", "grpc", 1, 2, "mini first for helpdesk"),
    ]
    assert events[0]["diff"] == installed.diff
    client = clickhouse(settings)
    try:
        rows = wait_for(lambda: client.execute("SELECT audit_id, actor, new_version, diff FROM policy_audit"), 60,
                        components, "the audit row in ClickHouse")
    finally:
        client.disconnect()
    assert rows == [(installed.audit_id, "ops-admin", 2, installed.diff)]


def test_grpcurl_lists_and_calls_the_router_through_reflection(gateway):
    settings, _ = gateway
    grpcurl = str(ensure_grpcurl(settings))
    listed = subprocess.run([grpcurl, "-plaintext", target(settings), "list"], capture_output=True, text=True,
                            timeout=30, check=True).stdout.split()
    assert {"routing.v1.Router", "routing.v1.RouterAdmin", "grpc.health.v1.Health"} <= set(listed)
    described = subprocess.run([grpcurl, "-plaintext", target(settings), "describe", "routing.v1.Router"],
                               capture_output=True, text=True, timeout=30, check=True).stdout
    assert "rpc Decide ( .routing.v1.DecideRequest ) returns ( .routing.v1.DecideResponse );" in described
    request = json.dumps({"tenant": "acme", "service": "drafter", "feature": "draft"})
    called = subprocess.run(
        [grpcurl, "-plaintext", "-H", f"authorization: Bearer {SERVICE_TOKEN}", "-d", request, target(settings),
         "routing.v1.Router/Decide"], capture_output=True, text=True, timeout=30,
    )
    assert called.returncode == 0, called.stderr
    answer = json.loads(called.stdout)
    assert answer["model"] == {"provider": "openai", "model": "gpt-4o-mini"} and answer["route"] == "drafts"
    refused = subprocess.run(
        [grpcurl, "-plaintext", "-d", request, target(settings), "routing.v1.Router/Decide"],
        capture_output=True, text=True, timeout=30,
    )
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
