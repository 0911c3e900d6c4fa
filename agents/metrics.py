"""Prometheus metrics of the worker: the seeds' LLM call metrics, what was priced, how well it was tagged, what
was rejected.

Tag coverage per dimension is `prismops_tag_coverage_ratio` (explicit + inferred over all lines seen by
this worker), backed by the `prismops_cost_line_dimensions_total` counter for PromQL over many workers.

LLM call metrics (names and labels from the seeds, see infra/prometheus/metrics.yml): the `node` label is the
call's feature (the step of the service's workflow that made the call). `llm_error_rate` is the share of failed
calls over the last `ERROR_WINDOW_S` seconds per label set. `llm_cost_daily_usd` is spend since 00:00 UTC per
service and tenant; only the `top_tenants` tenants with the highest spend today keep their own label, every
other tenant is folded into tenant="other", so the number of series stays bounded however many tenants come.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict, deque
from collections.abc import Mapping
from decimal import Decimal

from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

COST_LINES = PromCounter("prismops_cost_lines_total", "cost lines produced", ["source", "priced"])
UNPRICED = PromCounter("prismops_unpriced_cost_lines_total", "cost lines with no price found", ["provider", "model"])
DIMENSION_SOURCES = PromCounter(
    "prismops_cost_line_dimensions_total", "resolved dimensions by where the value came from", ["dimension", "tag_source"]
)
TAG_COVERAGE = Gauge("prismops_tag_coverage_ratio", "share of cost lines whose dimension is explicit or inferred",
                     ["dimension"])
CONTENT_FIELDS_DROPPED = PromCounter(
    "prismops_content_fields_dropped_total", "prompt/completion fields removed from incoming events", ["field"]
)
DEAD_LETTERED = PromCounter("prismops_dead_letters_total", "messages sent to the DLQ", ["stage", "rule"])
AGENT_ERRORS = PromCounter("prismops_agent_errors_total", "unexpected errors of an agent or timer, caught so the "
                           "worker goes on (the event is dead-lettered)", ["stage"])


class TagCoverage:
    """Running coverage per dimension in this process."""

    def __init__(self) -> None:
        self.known: Counter[str] = Counter()
        self.total: Counter[str] = Counter()

    def record(self, tag_source: Mapping[str, str]) -> None:
        for dimension, source in tag_source.items():
            DIMENSION_SOURCES.labels(dimension, source).inc()
            self.total[dimension] += 1
            if source != "default":
                self.known[dimension] += 1
            TAG_COVERAGE.labels(dimension).set(self.known[dimension] / self.total[dimension])


tag_coverage = TagCoverage()


def record_cost_line(line: Mapping[str, object]) -> None:
    COST_LINES.labels(line["source"], "true" if line["priced"] else "false").inc()
    if not line["priced"]:
        UNPRICED.labels(line["provider"], line["model"]).inc()
    tag_coverage.record(line["tag_source"])  # type: ignore[arg-type]


LLM_LABELS = ["service", "node", "provider", "model"]
LLM_DURATION = Histogram("llm_request_duration_seconds", "LLM call latency", LLM_LABELS,
                         buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120))
LLM_REQUESTS = PromCounter("llm_request_total", "LLM calls by outcome", [*LLM_LABELS, "status"])
LLM_TOKENS = PromCounter("llm_token_usage_total", "tokens by direction", [*LLM_LABELS, "direction"])
LLM_ERROR_RATE = Gauge("llm_error_rate", "share of failed calls over the last 5 minutes", LLM_LABELS)
LLM_COST_DAILY = Gauge("llm_cost_daily_usd", "spend since 00:00 UTC (top tenants; the rest as other)",
                       ["service", "tenant"])
LLM_FALLBACKS = PromCounter("llm_fallback_total", "calls answered by a fallback model", ["service", "provider", "model"])
ERROR_WINDOW_S = 300.0
OTHER_TENANTS = "other"


class LlmCallMetrics:
    """The seeds' LLM metrics from priced LLM cost lines; keeps the little state the gauges need."""

    def __init__(self, top_tenants: int = 20):
        self.top_tenants = top_tenants
        self._outcomes: dict[tuple[str, ...], deque[tuple[float, bool]]] = defaultdict(deque)
        self._day: dt.date | None = None
        self._spend: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        self._labelled: set[tuple[str, str]] = set()

    def record(self, line: Mapping[str, object], now: dt.datetime) -> None:
        labels = (str(line["service"]), str(line["feature"]), str(line["provider"]), str(line["model"]))
        failed = line["status"] != "ok"
        LLM_REQUESTS.labels(*labels, line["status"]).inc()
        if line.get("latency_ms") is not None:
            LLM_DURATION.labels(*labels).observe(int(line["latency_ms"]) / 1000)  # type: ignore[call-overload]
        for direction, field in (("input", "input_tokens"), ("output", "output_tokens"),
                                 ("cached_input", "cached_input_tokens"), ("reasoning", "reasoning_tokens")):
            if line.get(field):
                LLM_TOKENS.labels(*labels, direction).inc(int(line[field]))  # type: ignore[call-overload]
        if line.get("fallback"):
            LLM_FALLBACKS.labels(labels[0], labels[2], labels[3]).inc()
        self._error_rate(labels, failed, now.timestamp())
        self._daily_cost(labels[0], str(line["tenant"]), Decimal(line["cost_usd"]), now.date())  # type: ignore[arg-type]

    def _error_rate(self, labels: tuple[str, ...], failed: bool, at: float) -> None:
        window = self._outcomes[labels]
        window.append((at, failed))
        while window and window[0][0] < at - ERROR_WINDOW_S:
            window.popleft()
        LLM_ERROR_RATE.labels(*labels).set(sum(1 for _, f in window if f) / len(window))

    def _daily_cost(self, service: str, tenant: str, cost: Decimal, day: dt.date) -> None:
        if day != self._day:
            self._day, self._spend = day, defaultdict(Decimal)
        self._spend[(service, tenant)] += cost
        by_tenant: Counter[str] = Counter()
        for (_, name), amount in self._spend.items():
            by_tenant[name] += amount  # type: ignore[assignment]
        top = {name for name, _ in by_tenant.most_common(self.top_tenants)}
        totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for (svc, name), amount in self._spend.items():
            totals[(svc, name if name in top else OTHER_TENANTS)] += amount
        for stale in self._labelled - set(totals):
            LLM_COST_DAILY.remove(*stale)
        for key, amount in totals.items():
            LLM_COST_DAILY.labels(*key).set(float(amount))
        self._labelled = set(totals)
