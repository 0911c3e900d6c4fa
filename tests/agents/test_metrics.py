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
