"""Prometheus metrics of the worker: the seeds' LLM call metrics, what was priced, how well it was tagged, what
was rejected.

Tag coverage per dimension is `prismops_tag_coverage_ratio` (explicit + inferred over all lines seen by
this worker), backed by the `prismops_cost_line_dimensions_total` counter for PromQL over many workers.

LLM call metrics (names and labels from the seeds, see infra/prometheus/metrics.yml): the `node` label is the
call's feature (the step of the service's workflow that made the call). `llm_error_rate` is the share of failed
calls over the last `ERROR_WINDOW_S` seconds per label set. `llm_cost_daily_usd` is spend since 00:00 UTC per
service and tenant; only the `top_tenants` tenants with the highest spend today keep their own label, every
other tenant is folded into tenant="other", so the number of series stays bounded however many tenants come.
A batch updates only the gauges it touched; which tenants are top is chosen again (a pass over every tenant) when
a tenant outside it passes one inside, at most every `TOP_REFRESH_S` (a pass per batch was a third of the worker's
CPU with 10,000 tenants).
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

COST_LINES = PromCounter("prismops_cost_lines_total", "cost lines produced", ["source", "priced"])
for _source in ("llm", "gpu", "cloud"):  # exported at 0 from the start, so rate()/increase() see the first batch
    for _priced in ("true", "false"):
        COST_LINES.labels(_source, _priced)
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
BATCHES_READ = PromCounter("prismops_worker_batches_read_total",
                           "batch records read by the worker's agents: kept (this worker wrote it: not decoded) or decoded",
                           ["how"])
AGENT_ERRORS = PromCounter("prismops_agent_errors_total", "unexpected errors of an agent or timer, caught so the "
                           "worker goes on (the event is dead-lettered)", ["stage"])


class TagCoverage:
    """Running coverage per dimension in this process."""

    def __init__(self) -> None:
        self.known: Counter[str] = Counter()
        self.total: Counter[str] = Counter()

    def record(self, tag_source: Mapping[str, str]) -> None:
        self.record_many([tag_source])

    def record_many(self, tag_sources: Iterable[Mapping[str, str]]) -> None:
        """Count a batch's lines, then touch each metric child once (not once per line)."""
        seen: Counter[tuple[str, str]] = Counter(item for tags in tag_sources for item in tags.items())
        for (dimension, source), count in seen.items():
            DIMENSION_SOURCES.labels(dimension, source).inc(count)
            self.total[dimension] += count
            if source != "default":
                self.known[dimension] += count
        for dimension in {dimension for dimension, _ in seen}:
            TAG_COVERAGE.labels(dimension).set(self.known[dimension] / self.total[dimension])


tag_coverage = TagCoverage()


def record_cost_line(line: Mapping[str, object]) -> None:
    record_cost_lines([line])


def record_cost_lines(lines: Sequence[Mapping[str, object]]) -> None:
    for (source, priced), count in Counter((line["source"], bool(line["priced"])) for line in lines).items():
        COST_LINES.labels(source, "true" if priced else "false").inc(count)
    for (provider, model), count in Counter(
            (line["provider"], line["model"]) for line in lines if not line["priced"]).items():
        UNPRICED.labels(provider, model).inc(count)
    tag_coverage.record_many(line["tag_source"] for line in lines)  # type: ignore[misc]


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
TOP_REFRESH_S = 1.0
_TOKEN_FIELDS = (("input", "input_tokens"), ("output", "output_tokens"), ("cached_input", "cached_input_tokens"),
                 ("reasoning", "reasoning_tokens"))
OTHER_TENANTS = "other"


class LlmCallMetrics:
    """The seeds' LLM metrics from priced LLM cost lines; keeps the little state the gauges need."""

    def __init__(self, top_tenants: int = 20):
        self.top_tenants = top_tenants
        self._outcomes: dict[tuple[str, ...], deque[tuple[float, int, int]]] = defaultdict(deque)
        self._outcome_sums: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])  # calls, failed in window
        self._day: dt.date | None = None
        self._spend: dict[tuple[str, str], Decimal] = defaultdict(Decimal)  # (service, tenant) -> today's spend
        self._tenant_spend: dict[str, Decimal] = defaultdict(Decimal)
        self._other: dict[str, Decimal] = defaultdict(Decimal)  # service -> spend of the tenants outside the top
        self._top: set[str] = set()
        self._top_chosen_at = -math.inf
        self._labelled: set[tuple[str, str]] = set()

    def record(self, line: Mapping[str, object], now: dt.datetime) -> None:
        self.record_batch([line], now)

    def record_batch(self, lines: Sequence[Mapping[str, object]], now: dt.datetime) -> None:
        """Aggregate a batch per label set first, so each metric child is looked up once per batch (a histogram
        still takes its latency observations one by one)."""
        calls: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])  # label set -> [calls, failed]
        statuses: Counter[tuple[str, ...]] = Counter()
        tokens: Counter[tuple[str, ...]] = Counter()
        fallbacks: Counter[tuple[str, str, str]] = Counter()
        spend: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        latencies: dict[tuple[str, ...], list[float]] = defaultdict(list)
        for line in lines:
            labels = (str(line["service"]), str(line["feature"]), str(line["provider"]), str(line["model"]))
            counts = calls[labels]
            counts[0] += 1
            counts[1] += line["status"] != "ok"
            statuses[(*labels, str(line["status"]))] += 1
            if line.get("latency_ms") is not None:
                latencies[labels].append(int(line["latency_ms"]) / 1000)  # type: ignore[call-overload]
            for direction, field in _TOKEN_FIELDS:
                if line.get(field):
                    tokens[(*labels, direction)] += int(line[field])  # type: ignore[call-overload]
            if line.get("fallback"):
                fallbacks[(labels[0], labels[2], labels[3])] += 1
            spend[(labels[0], str(line["tenant"]))] += line["cost_usd"]  # type: ignore[operator]
        for labels, seconds in latencies.items():
            histogram = LLM_DURATION.labels(*labels)  # a histogram takes observations one by one; its child once
            for value in seconds:
                histogram.observe(value)
        for key, count in statuses.items():
            LLM_REQUESTS.labels(*key).inc(count)
        for key, count in tokens.items():
            LLM_TOKENS.labels(*key).inc(count)
        for key, count in fallbacks.items():
            LLM_FALLBACKS.labels(*key).inc(count)
        at = now.timestamp()
        for labels, (total, failed) in calls.items():
            self._error_rate(labels, total, failed, at)
        self._daily_cost(spend, now.date(), at)

    def _error_rate(self, labels: tuple[str, ...], total: int, failed: int, at: float) -> None:
        """Failed share of the label set's calls in the last ERROR_WINDOW_S, from sums kept as batches come and go
        (a pass over the window per batch cost the worker 3% of its CPU under load)."""
        window, sums = self._outcomes[labels], self._outcome_sums[labels]
        window.append((at, total, failed))
        sums[0] += total
        sums[1] += failed
        while window and window[0][0] < at - ERROR_WINDOW_S:
            _, gone_total, gone_failed = window.popleft()
            sums[0] -= gone_total
            sums[1] -= gone_failed
        LLM_ERROR_RATE.labels(*labels).set(sums[1] / sums[0])

    def _daily_cost(self, spend: Mapping[tuple[str, str], Decimal], day: dt.date, at: float) -> None:
        new_day = day != self._day
        if new_day:
            self._day, self._spend, self._tenant_spend = day, defaultdict(Decimal), defaultdict(Decimal)
        for key, amount in spend.items():
            self._spend[key] += amount
            self._tenant_spend[key[1]] += amount
        if new_day or self._top_outdated({name for _, name in spend}, at):
            self._choose_top(at)
            return
        for (service, name), amount in spend.items():
            if name in self._top:
                label, value = (service, name), self._spend[(service, name)]
            else:
                self._other[service] += amount
                label, value = (service, OTHER_TENANTS), self._other[service]
            self._labelled.add(label)
            LLM_COST_DAILY.labels(*label).set(float(value))

    def _top_outdated(self, names: set[str], at: float) -> bool:
        outside = names - self._top
        if not outside:
            return False
        if len(self._top) < min(self.top_tenants, len(self._tenant_spend)):
            return True
        if at - self._top_chosen_at < TOP_REFRESH_S:
            return False
        lowest = min(self._tenant_spend[name] for name in self._top) if self._top else Decimal(0)
        return any(self._tenant_spend[name] > lowest for name in outside)

    def _choose_top(self, at: float) -> None:
        """The top tenants again, and every gauge from the day's sums (stale label sets removed)."""
        self._top = set(heapq.nlargest(self.top_tenants, self._tenant_spend, key=self._tenant_spend.__getitem__))
        self._top_chosen_at = at
        totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        self._other = defaultdict(Decimal)
        for (service, name), amount in self._spend.items():
            if name in self._top:
                totals[(service, name)] += amount
            else:
                self._other[service] += amount
        totals.update(((service, OTHER_TENANTS), amount) for service, amount in self._other.items())
        for stale in self._labelled - set(totals):
            LLM_COST_DAILY.remove(*stale)
        for key, amount in totals.items():
            LLM_COST_DAILY.labels(*key).set(float(amount))
        self._labelled = set(totals)
