"""The alert rules: valid for the real promtool, their unit tests pass (and fail when a rule is broken), every
seed condition has an alert, and every expression uses only metrics and labels that PrismOps exports."""

from __future__ import annotations

import shutil

import pytest
import yaml

from prismops.infra.config import INFRA_DIR

RULES = INFRA_DIR / "prometheus" / "alerts.yml"
RULE_TESTS = INFRA_DIR / "prometheus" / "alerts_test.yml"

# The seed's conditions and the alert that covers each.
SEED_ALERTS = {
    "p95 latency above 15 s": "LLMLatencyP95High",
    "error rate above 10 % for 5 minutes": "LLMErrorRateHigh",
    "daily cost at 80 % of budget": "BudgetNearLimit",
    "circuit breaker open": "LLMCircuitBreakerOpen",
    "consumer lag growing": "ConsumerLagGrowing",
    "dead-letter rate": "DeadLettersFlowing",
}


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_check_rules_passes(promtool):
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_check_rules_rejects_a_broken_expression(promtool, tmp_path):
    broken = tmp_path / "alerts.yml"
    broken.write_text(RULES.read_text().replace("max by (service, provider, model) (llm_error_rate) > 0.10",
                                                "max by (service, provider, model) (llm_error_rate > 0.10"))
    result = promtool("check", "rules", broken)
    assert result.returncode != 0
    assert "unclosed left parenthesis" in result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass(promtool):
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("old", "new", "failing_alert"), [
    ("(llm_error_rate) > 0.10", "(llm_error_rate) > 0.30", "LLMErrorRateHigh"),
    ("(max_over_time(llm_circuit_breaker_state[1m])) == 2", "(llm_circuit_breaker_state) == 2", "LLMCircuitBreakerOpen"),
])
def test_rule_unit_tests_catch_a_weakened_rule(promtool, tmp_path, old, new, failing_alert):
    """The error-rate alert at 30 % would miss the 25 % case; a breaker alert without max_over_time would miss
    the breaker that is half-open during its probe."""
    assert old in RULES.read_text()
    (tmp_path / "alerts.yml").write_text(RULES.read_text().replace(old, new))
    shutil.copyfile(RULE_TESTS, tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", tmp_path / "alerts_test.yml")
    assert result.returncode != 0
    assert f"alertname: {failing_alert}" in result.stdout + result.stderr


def test_every_seed_condition_has_an_alert_with_a_unit_test():
    names = {rule["alert"] for rule in alert_rules()}
    tested = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in test["alert_rule_test"] if case["exp_alerts"]}
    for condition, alert in SEED_ALERTS.items():
        assert alert in names, condition
        assert alert in tested, f"no promtool case shows {alert} firing"
    assert names <= tested, f"alerts without a firing case: {sorted(names - tested)}"


def test_every_alert_has_a_severity_summary_and_description():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_alert_expressions_use_only_exported_metrics_and_their_labels(metric_catalog, promql_references):
    for rule in alert_rules():
        refs = promql_references(rule["expr"])
        assert refs.metrics, rule["alert"]
        assert refs.metrics <= metric_catalog.keys(), (rule["alert"], refs.metrics - metric_catalog.keys())
        known_labels = {"le"} | {label for name in refs.metrics for label in metric_catalog[name]["labels"]}
        assert refs.labels <= known_labels, (rule["alert"], refs.labels - known_labels)


def test_the_promql_reader_finds_metrics_and_labels(metric_catalog, promql_references):
    refs = promql_references(
        'histogram_quantile(0.95, sum by (le, model) (rate(llm_request_duration_seconds_bucket{service=~"$service"}'
        '[$__rate_interval]))) > 15 and on (model) llm_error_rate offset 5m or vector(0)'
    )
    assert refs.metrics == {"llm_request_duration_seconds", "llm_error_rate"}
    assert refs.labels == {"le", "model", "service"}
    assert promql_references('sum(rate(prismops_sink_failure_total[5m]))').metrics == {"prismops_sink_failure_total"}

