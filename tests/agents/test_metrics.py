"""agents/metrics.py: tag coverage and unpriced lines are counted the way the docs say."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from prismops.agents.metrics import TagCoverage, record_cost_line


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_coverage_counts_explicit_and_inferred_but_not_default():
    coverage = TagCoverage()
    coverage.record({"team": "explicit", "feature": "default"})
    coverage.record({"team": "inferred", "feature": "default"})
    coverage.record({"team": "default", "feature": "explicit"})
    assert coverage.known["team"] / coverage.total["team"] == 2 / 3
    assert coverage.known["feature"] / coverage.total["feature"] == 1 / 3
    assert sample("prismops_tag_coverage_ratio", dimension="feature") == 1 / 3


def test_an_unpriced_line_is_counted_per_model_and_flagged_in_the_total():
    model = "mystery-model-for-metrics-test"
    before = sample("prismops_unpriced_cost_lines_total", provider="acme-ai", model=model)
    unpriced_before = sample("prismops_cost_lines_total", source="llm", priced="false")
    record_cost_line({"source": "llm", "priced": False, "provider": "acme-ai", "model": model,
                      "tag_source": {"tenant": "explicit"}})
    assert sample("prismops_unpriced_cost_lines_total", provider="acme-ai", model=model) == before + 1
    assert sample("prismops_cost_lines_total", source="llm", priced="false") == unpriced_before + 1


def test_the_error_rate_covers_the_last_five_minutes_of_calls():
    import datetime as dt

    from prismops.agents.metrics import LlmCallMetrics

    metrics = LlmCallMetrics()
    labels = {"service": "err-svc", "node": "f", "provider": "openai", "model": "error-rate-test-model"}

    def calls(count: int, failed: int, at: dt.datetime) -> None:
        line = {"service": "err-svc", "feature": "f", "provider": "openai", "model": "error-rate-test-model",
                "tenant": "t", "cost_usd": 0, "latency_ms": None}
        metrics.record_batch([{**line, "status": "error"}] * failed + [{**line, "status": "ok"}] * (count - failed), at)

    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    calls(10, 5, start)
    calls(10, 0, start + dt.timedelta(seconds=100))
    assert sample("llm_error_rate", **labels) == 5 / 20
    calls(4, 1, start + dt.timedelta(seconds=301))  # the first batch has left the window
    assert sample("llm_error_rate", **labels) == 1 / 14


def test_daily_cost_gauges_keep_the_top_tenants_and_fold_the_rest_into_other():
    import datetime as dt
    import random
    from decimal import Decimal

    from prismops.agents.metrics import OTHER_TENANTS, LlmCallMetrics

    service, top = "daily-cost-svc", 3
    metrics = LlmCallMetrics(top_tenants=top)
    rng = random.Random(7)
    spend: dict[str, Decimal] = {}
    start = dt.datetime(2026, 3, 2, 8, tzinfo=dt.timezone.utc)
    for batch in range(60):
        lines = []
        for _ in range(rng.randint(1, 8)):
            tenant, cost = f"t{rng.randint(0, 11)}", Decimal(rng.randint(1, 10**6)) / 10**7
            spend[tenant] = spend.get(tenant, Decimal(0)) + cost
            lines.append({"service": service, "feature": "f", "provider": "openai", "model": "m", "tenant": tenant,
                          "status": "ok", "cost_usd": cost, "latency_ms": None})
        # a second apart: the top is chosen again whenever an outside tenant passes one inside
        metrics.record_batch(lines, start + dt.timedelta(seconds=batch))
        leaders = sorted(spend, key=spend.__getitem__, reverse=True)[:top]
        for tenant in leaders:
            assert sample("llm_cost_daily_usd", service=service, tenant=tenant) == pytest.approx(float(spend[tenant]))
        rest = sum((amount for tenant, amount in spend.items() if tenant not in leaders), Decimal(0))
        if rest:
            assert sample("llm_cost_daily_usd", service=service, tenant=OTHER_TENANTS) == pytest.approx(float(rest))
        for tenant in set(spend) - set(leaders):
            assert REGISTRY.get_sample_value("llm_cost_daily_usd", {"service": service, "tenant": tenant}) is None

    def one(tenant: str, cost: Decimal, at: dt.datetime) -> None:
        spend[tenant] = spend.get(tenant, Decimal(0)) + cost
        metrics.record_batch([{"service": service, "feature": "f", "provider": "openai", "model": "m",
                               "tenant": tenant, "status": "ok", "cost_usd": cost, "latency_ms": None}], at)

    def gauge(tenant: str) -> float | None:
        return REGISTRY.get_sample_value("llm_cost_daily_usd", {"service": service, "tenant": tenant})

    first, second = [tenant for tenant in sorted(spend) if tenant not in leaders][:2]
    later = start + dt.timedelta(seconds=100)
    one(first, Decimal(1000), later)  # passes the top: chosen again at once
    chosen = set(sorted(spend, key=spend.__getitem__, reverse=True)[:top])
    assert first in chosen and gauge(first) == pytest.approx(float(spend[first]))
    # within a second of that choice the split stays, but every sum stays exact
    one(second, Decimal(2000), later + dt.timedelta(milliseconds=500))
    assert gauge(second) is None
    rest = sum((amount for tenant, amount in spend.items() if tenant not in chosen), Decimal(0))
    assert gauge(OTHER_TENANTS) == pytest.approx(float(rest))
    one(second, Decimal(0), later + dt.timedelta(seconds=2))
    assert gauge(second) == pytest.approx(float(spend[second]))

    # a new UTC day starts every sum at zero and drops yesterday's label sets
    metrics.record_batch([{"service": service, "feature": "f", "provider": "openai", "model": "m", "tenant": "t0",
                           "status": "ok", "cost_usd": Decimal("0.5"), "latency_ms": None}], start + dt.timedelta(days=1))
    assert sample("llm_cost_daily_usd", service=service, tenant="t0") == 0.5
    assert REGISTRY.get_sample_value("llm_cost_daily_usd", {"service": service, "tenant": OTHER_TENANTS}) is None


def test_a_batch_observes_every_latency_in_its_label_sets_histogram():
    import datetime as dt
    from decimal import Decimal

    from prismops.agents.metrics import LlmCallMetrics

    labels = {"service": "histogram-test", "node": "f", "provider": "openai", "model": "m"}  # node: the seeds' name of feature
    before = (sample("llm_request_duration_seconds_count", **labels), sample("llm_request_duration_seconds_sum", **labels))
    lines = [{"service": "histogram-test", "feature": "f", "provider": "openai", "model": "m", "tenant": "t",
              "status": "ok", "latency_ms": latency, "cost_usd": Decimal("0.001")} for latency in (100, 250, 4000)]
    LlmCallMetrics().record_batch(lines, dt.datetime(2026, 12, 6, tzinfo=dt.timezone.utc))
    assert sample("llm_request_duration_seconds_count", **labels) == before[0] + 3
    assert sample("llm_request_duration_seconds_sum", **labels) == pytest.approx(before[1] + 4.35)
    assert sample("llm_request_duration_seconds_bucket", **labels, le="0.25") == 2
