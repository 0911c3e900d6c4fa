"""A 429 with Retry-After 7 s keeps the model out for 7 s (not the breaker's 30 s), on a real gateway process.

The gateway runs as `prismops gateway serve` (a child process, as in the other gateway tests) with a policy
whose helpdesk route asks for openai/gpt-4o first and openai/gpt-4o-mini behind it, and a breaker that would
stay open 30 s after failures. ReportOutcome says gpt-4o answered 429 with Retry-After 7 s; then the test
asks Decide again and again until gpt-4o comes back.

Nothing here leans on the machine being quick. Each bound is one that load can only help:
- out at once: the decision right after the report excludes gpt-4o and says its breaker is open (the
  server saw it before that decision came back, so within 7 s of the report unless that round itself took
  7 s); the server's own clock, in the report's answer, says how long is left;
- never early: the first decision that chose gpt-4o again returned at least 7 s after the report was *sent*
  (the server opened the breaker after that moment and answered after the 7 s had passed on its clock);
- not late: every decision that still excluded gpt-4o was *sent* before the report's answer came back plus
  7 s (the server saw it after it was sent and before its breaker's 7 s were over, and it opened the breaker
  before its answer came back). Were the breaker open for its configured 30 s, this would fail.
The clocks are the same machine's (the server's wall clock, the test's monotonic clock), so the margins only
cover their rounding.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from prismops.gateway_grpc.client import RouterClient, wait_for_router
from prismops.infra.components import Components
from prismops.settings import Settings
from prismops.testing import isolated

RETRY_AFTER_S = 7.0
OPEN_S = 30.0  # the breaker's own open time after failures: the 429 must not fall back to it
CLOCK_MARGIN_S = 0.25  # rounding between the server's wall clock and this test's monotonic clock
POLL_S = 0.1
DEADLINE_S = RETRY_AFTER_S + 60.0  # generous: a loaded machine may answer slowly, it may not answer early

PRIMARY, FALLBACK = ("openai", "gpt-4o"), ("openai", "gpt-4o-mini")

POLICY = f"""
tiers: [premium, standard, economy, local]
defaults:
  latency_slo_ms: 5000
  breaker: {{failure_threshold: 3, open_s: {OPEN_S:g}, half_open_probes: 1}}
models:
  openai/gpt-4o: {{tier: premium}}
  openai/gpt-4o-mini: {{tier: economy}}
routes:
  - name: helpdesk
    match: {{service: helpdesk}}
    primary: openai/gpt-4o
    fallbacks: [openai/gpt-4o-mini]
"""


@pytest.fixture(scope="module")
def gateway(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Components]]:
    """The gateway alone, as a child process, with the policy above."""
    config = tmp_path_factory.mktemp("retry-after-policy")
    (config / "policy.yaml").write_text(POLICY)
    with isolated(stack_settings) as base:
        settings = base.with_overrides(gateway={"policy_file": str(config / "policy.yaml")})
        with Components(settings, tmp_path_factory.mktemp("retry-after-logs")) as components:
            components.start("gateway")
            wait_for_router(target(settings), components.check_alive)
            yield settings, components


def target(settings: Settings) -> str:
    return f"{settings.gateway.host}:{settings.gateway.port}"


def chosen(response) -> tuple[str, str]:
    return response.model.provider, response.model.model


def breaker_of(response, model: tuple[str, str]) -> str:
    return {(c.model.provider, c.model.model): c.breaker_state for c in response.candidates}[model]


def test_a_429_with_retry_after_7_s_keeps_the_model_out_for_7_s(gateway):
    settings, components = gateway
    with RouterClient(target(settings)) as router:
        before = router.decide("acme", "helpdesk", "answer", timeout=10.0)
        assert chosen(before) == PRIMARY and breaker_of(before, PRIMARY) == "closed"

        report_sent = time.monotonic()
        report = router.report_outcome(PRIMARY, "rate_limited", http_status=429, decision_id=before.decision_id,
                                       retry_after_ms=int(RETRY_AFTER_S * 1000), timeout=10.0)
        report_answered = time.monotonic()
        assert report.breaker_state == "open"
        # the server's clock: at most 7 s left, and no less than 7 s minus the time the report took to answer
        assert RETRY_AFTER_S - (report_answered - report_sent) - CLOCK_MARGIN_S <= report.retry_in_s <= RETRY_AFTER_S

        right_after_sent = time.monotonic()
        right_after = router.decide("acme", "helpdesk", "answer", timeout=10.0)
        # the server answered it before this moment, and opened the breaker after the report was sent: unless
        # the whole round took 7 s, the server saw it inside the 7 s, so the model must be out
        right_after_returned = time.monotonic()
        assert right_after_returned - report_sent < RETRY_AFTER_S, (
            f"report and decide took {right_after_returned - report_sent:.1f} s: nothing can be concluded")
        assert chosen(right_after) == FALLBACK, f"gpt-4o chosen right after its 429: {right_after.reason}"
        assert breaker_of(right_after, PRIMARY) == "open"
        assert "primary_skipped" in right_after.reason_codes

        excluded_sent: list[float] = [right_after_sent]
        back = None
        while time.monotonic() - report_sent < DEADLINE_S:
            components.check_alive()
            sent = time.monotonic()
            answer = router.decide("acme", "helpdesk", "answer", timeout=10.0)
            returned = time.monotonic()
            if chosen(answer) == PRIMARY:
                back = (answer, returned)
                break
            assert breaker_of(answer, PRIMARY) == "open", answer.reason
            excluded_sent.append(sent)
            time.sleep(POLL_S)
        assert back is not None, f"gpt-4o not chosen again within {DEADLINE_S:g} s of its 429\n{components.log_tails()}"
        answer, returned = back

        assert returned - report_sent >= RETRY_AFTER_S - CLOCK_MARGIN_S, (
            f"gpt-4o chosen again {returned - report_sent:.2f} s after the report was sent, before its "
            f"Retry-After of {RETRY_AFTER_S:g} s")
        latest = max(excluded_sent) - report_answered
        assert latest < RETRY_AFTER_S + CLOCK_MARGIN_S, (
            f"gpt-4o still left out by a decision sent {latest:.2f} s after the 429 was answered: the breaker "
            f"stayed open longer than the Retry-After of {RETRY_AFTER_S:g} s")
        assert "breaker_probe" in answer.reason_codes  # half-open after the 7 s: one probe, as after failures

        closed = router.report_outcome(PRIMARY, "ok", decision_id=answer.decision_id, timeout=10.0)
        assert closed.breaker_state == "closed"
        after = router.decide("acme", "helpdesk", "answer", timeout=10.0)
        assert chosen(after) == PRIMARY and breaker_of(after, PRIMARY) == "closed"
