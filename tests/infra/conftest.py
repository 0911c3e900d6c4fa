"""Shared by the infra tests: the real promtool (installed like the stack installs its servers) and a reader of
the metric names and labels that a PromQL expression uses, checked against infra/prometheus/metrics.yml."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from prismops.infra.config import INFRA_DIR
from prismops.infra.stack import StackError, find_or_install

PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHER_BLOCK = re.compile(r"\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
IDENTIFIER = re.compile(r"(?<![0-9A-Za-z_.:$])([A-Za-z_:][A-Za-z0-9_:]*)(?![A-Za-z0-9_:])(?!\s*\()")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
GRAFANA_VARIABLES = re.compile(r"\$(__rate_interval|__interval|__range)\b")


@dataclass(frozen=True)
class PromqlReferences:
    metrics: set[str]
    labels: set[str]  # in matchers and in by/without/on/ignoring clauses


@pytest.fixture(scope="session")
def promtool() -> Callable[..., subprocess.CompletedProcess]:
    """Runs Debian's promtool; installed with apt when missing. Not installable means the test fails."""
    try:
        binary = find_or_install("promtool", "prometheus", progress=print, extra_dirs=["/usr/bin"])
    except StackError as error:
        pytest.fail(f"promtool is needed to check the alert rules and could not be installed: {error}")

    def run(*args: str | Path) -> subprocess.CompletedProcess:
        return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)

    return run


@pytest.fixture(scope="session")
def metric_catalog() -> dict[str, dict]:
    return yaml.safe_load((INFRA_DIR / "prometheus" / "metrics.yml").read_text())["metrics"]


def substitute_grafana_variables(expr: str) -> str:
    """Grafana's interval variables become a plain duration so the expression is valid PromQL."""
    return GRAFANA_VARIABLES.sub("5m", expr)


@pytest.fixture(scope="session")
def promql_references(metric_catalog: dict[str, dict]) -> Callable[[str], PromqlReferences]:
    """Metric names (histogram series folded onto their histogram) and label names of one expression."""

    def references(expr: str) -> PromqlReferences:
        text = substitute_grafana_variables(expr)
        labels: set[str] = set()
        for block in MATCHER_BLOCK.findall(STRING.sub('""', text)):
            labels |= set(MATCHER_LABEL.findall(block))
        text = MATCHER_BLOCK.sub(" ", STRING.sub('""', text))
        for _, names in GROUPING.findall(text):
            labels |= {name.strip() for name in names.split(",") if name.strip()}
        text = re.sub(r"\[[^\]]*\]", " ", GROUPING.sub(" ", text))
        metrics = set()
        for name in IDENTIFIER.findall(text):
            if name in PROMQL_KEYWORDS:
                continue
            base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES
                         if name.endswith(s) and metric_catalog.get(name[: -len(s)], {}).get("type") == "histogram"), name)
            metrics.add(base)
        return PromqlReferences(metrics, labels)

    return references
