"""Live latency changes the router's answer: usage events → worker's live table → compacted topic → gateway → Decide.

Nothing is injected into the routing table directly: the latencies come in as LLM usage events through the
SDK, exactly as services report them.
"""

from __future__ import annotations

import time

from clickhouse_driver import Client

from prismops.gateway_grpc.client import RouterClient
from prismops.streams.producer import UsageProducer, new_llm_usage_event

CHEAP = ("google", "gemini-2.0-flash")
PRICIER = ("openai", "gpt-4o-mini")
SLO_MS = 1000


def report_calls(settings, model: tuple[str, str], latency_ms: int, count: int) -> None:
    with UsageProducer(settings) as producer:
        for _ in range(count):
            producer.record_llm_call(new_llm_usage_event(
                tenant="routing-tenant", service="search", feature="rerank", environment="prod",
                provider=model[0], model=model[1], input_tokens=800, output_tokens=40,
                latency_ms=latency_ms, status="ok",
            ))


def decide(router: RouterClient):
    return router.decide("routing-tenant", "search", "rerank", [PRICIER, CHEAP], latency_slo_ms=SLO_MS,
                         expected_input_tokens=800, expected_output_tokens=40)


def wait_for_choice(router: RouterClient, components, wanted: tuple[str, str], timeout_s: float):
    deadline = time.monotonic() + timeout_s
    answer = None
    while time.monotonic() < deadline:
        components.check_alive()
        answer = decide(router)
        # before the first live rows arrive the static catalog prices answer (no_live_data); wait for live ones
        if (answer.model.provider, answer.model.model) == wanted and answer.reason_code == "cheapest_within_slo":
            return answer
        time.sleep(0.5)
    raise AssertionError(f"Decide never chose {wanted}; last answer: {answer}")


def test_raising_a_models_live_latency_flips_the_decision(pipeline):
    settings, components = pipeline
    report_calls(settings, CHEAP, latency_ms=200, count=100)
    report_calls(settings, PRICIER, latency_ms=400, count=100)

    with RouterClient(f"{settings.gateway.host}:{settings.gateway.port}") as router:
        before = wait_for_choice(router, components, CHEAP, 60)
        assert before.reason_code == "cheapest_within_slo"

        report_calls(settings, CHEAP, latency_ms=3000, count=300)
        after = wait_for_choice(router, components, PRICIER, 60)
        assert after.reason_code == "cheapest_within_slo"
        cheap_candidate = next(c for c in after.candidates if c.model.model == CHEAP[1])
        assert not cheap_candidate.eligible
        assert cheap_candidate.p95_latency_ms > SLO_MS

    client = Client(settings.clickhouse_host, port=settings.clickhouse_port, database=settings.clickhouse.database)
    deadline = time.monotonic() + 60
    stored = 0
    while time.monotonic() < deadline and stored < 2:
        stored = client.execute(
            "SELECT count() FROM routing_decisions WHERE decision_id IN %(ids)s", {"ids": (before.decision_id, after.decision_id)}
        )[0][0]
        time.sleep(0.5)
    client.disconnect()
    assert stored == 2, "both decisions were published and sunk to ClickHouse"


def test_the_readme_router_example_is_routed(pipeline):
    """The README's `Ask the router` block, run as a user pastes it, against this stack's gateway."""
    import contextlib
    import io
    import re
    from pathlib import Path

    settings, components = pipeline
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "RouterClient" in b]
    block = block.replace("127.0.0.1:15051", f"{settings.gateway.host}:{settings.gateway.port}")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "README.md", "exec"), {})  # noqa: S102 (the point: run the documented code)
    model, reason = printed.getvalue().split()[:2]
    assert model in ("gpt-4o-mini", "claude-sonnet-4"), printed.getvalue()
    assert reason, printed.getvalue()
