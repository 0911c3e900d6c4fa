"""The Grafana dashboards: well-formed, on the provisioned datasource, and every PromQL expression is valid
(promtool parses it as a recording rule) and uses only metrics and labels that PrismOps exports."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from prismops.infra.config import INFRA_DIR

GRAFANA = INFRA_DIR / "grafana"
DASHBOARDS = {"llmops": "prismops-llmops", "finops": "prismops-finops", "pipeline": "prismops-pipeline"}
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
TEMPLATE_VARIABLE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
CLICKHOUSE_PLUGIN = "vertamedia-clickhouse-datasource"  # Altinity's: ClickHouse's HTTP interface, 18.16 included


def load(name: str) -> dict:
    return json.loads((GRAFANA / f"{name}.json").read_text())


def panel_targets(dashboard: dict, kind: str = "prometheus") -> list[tuple[str, dict]]:
    """(panel title, target) of every query on one kind of datasource: PromQL ("prometheus") or SQL ("clickhouse")."""
    types = {"prometheus": "prometheus", "clickhouse": CLICKHOUSE_PLUGIN}
    return [(panel["title"], target) for panel in dashboard["panels"] for target in panel.get("targets", [])
            if target["datasource"]["type"] == types[kind]]


def provisioned_datasource(name: str = "prometheus") -> dict:
    config = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / f"{name}.yml").read_text())
    (datasource,) = config["datasources"]
    return datasource


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_is_well_formed_with_unique_ids_and_non_overlapping_panels(name):
    dashboard = load(name)
    assert dashboard["uid"] == DASHBOARDS[name]
    assert dashboard["title"].startswith("PrismOps / ")
    panels = dashboard["panels"]
    assert len(panels) >= 6
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        assert panel["targets"], panel["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_query_uses_the_provisioned_datasource(name):
    uid = provisioned_datasource()["uid"]
    clickhouse = provisioned_datasource("clickhouse")
    dashboard = load(name)
    allowed = [{"type": "prometheus", "uid": uid}, {"type": clickhouse["type"], "uid": clickhouse["uid"]}]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert target["datasource"] in allowed, panel["title"]
    for title, target in panel_targets(dashboard, "clickhouse"):
        assert target["query"].strip(), title
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == uid


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_expression_uses_only_exported_metrics_and_labels(name, metric_catalog, promql_references):
    dashboard = load(name)
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for title, target in panel_targets(dashboard):
        refs = promql_references(target["expr"])
        assert refs.metrics, title
        assert refs.metrics <= metric_catalog.keys(), (title, refs.metrics - metric_catalog.keys())
        known = {"le"} | {label for metric in refs.metrics for label in metric_catalog[metric]["labels"]}
        assert refs.labels <= known, (title, refs.labels - known)
        assert set(LEGEND_LABEL.findall(target["legendFormat"])) <= known, (title, target["legendFormat"])
        used = set(TEMPLATE_VARIABLE.findall(target["expr"])) - {"__rate_interval", "__interval", "__range"}
        assert used <= variables, (title, used - variables)


def test_template_variables_read_exported_labels(metric_catalog):
    for name in DASHBOARDS:
        for variable in load(name)["templating"]["list"]:
            if variable["type"] != "query":
                continue
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"]).groups()
            assert label in metric_catalog[metric]["labels"], variable["name"]


def test_every_expression_parses_as_promql(promtool, tmp_path):
    """Each panel query, with Grafana's variables filled in, becomes a recording rule for `promtool check rules`."""
    rules = []
    for name in DASHBOARDS:
        for number, (title, target) in enumerate(panel_targets(load(name))):
            expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", target["expr"])
            rules.append({"record": f"dashboard:{name}:{number}", "expr": TEMPLATE_VARIABLE.sub(".*", expr)})
    rule_file = tmp_path / "dashboard_queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", rule_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_dashboards_cover_what_the_issue_asks_for():
    def exprs(name: str) -> str:
        return "\n".join(target["expr"] for _, target in panel_targets(load(name)))

    llmops, finops, pipeline = exprs("llmops"), exprs("finops"), exprs("pipeline")
    for metric in ("llm_request_duration_seconds_bucket", "llm_error_rate", "llm_cost_daily_usd",
                   "llm_circuit_breaker_state", "llm_fallback_total", "llm_token_usage_total"):
        assert metric in llmops, metric
    assert "sum by (tenant) (llm_cost_daily_usd)" in finops
    assert "prismops_budget_used_ratio" in finops
    assert "topk(10, sum by (service) (llm_cost_daily_usd))" in finops
    for metric in ("prismops_events_in_total", "prismops_events_out_total", "prismops_consumer_lag",
                   "prismops_dead_letters_total", "prismops_sink_batch_rows_bucket", "prismops_sink_batch_seconds_bucket"):
        assert metric in pipeline, metric


def test_provisioning_points_grafana_at_the_dashboards_and_prometheus():
    datasource = provisioned_datasource()
    assert (datasource["type"], datasource["uid"]) == ("prometheus", "prometheus")
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "prismops.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards/prismops"]


def test_finops_has_average_latency_spend_by_team_and_model_history_and_a_tenant_filter():
    finops = load("finops")
    promql = "\n".join(target["expr"] for _, target in panel_targets(finops))
    sql = "\n".join(target["query"] for _, target in panel_targets(finops, "clickhouse"))
    assert "llm_request_duration_seconds_sum" in promql and "llm_request_duration_seconds_count" in promql
    assert 'tenant=~"$tenant"' in promql
    assert "GROUP BY team" in sql and "provider_model" in sql and "month_end_forecast_usd" in sql
    assert sql.count("tenant IN (${tenant:singlequote})") == len(panel_targets(finops, "clickhouse"))
    assert {v["name"] for v in finops["templating"]["list"]} == {"tenant", "database"}
