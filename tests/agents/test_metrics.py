"""agents/metrics.py: tag coverage and unpriced lines are counted the way the docs say."""

from __future__ import annotations

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
