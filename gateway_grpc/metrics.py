"""The gateway's Prometheus metrics: decisions by reason code, and, read from its live state at scrape time,
breaker states, live-table age and budget use (a collector, so the numbers are never older than the scrape)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

class GatewayTables(Protocol):
    """What the collector reads of the server's state (`server.GatewayState` has these)."""

    breakers: Any
    table: Any
    budgets: Any


DECISIONS = PromCounter("prismops_decisions_total", "routing decisions by reason code", ["reason_code"])
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class GatewayStateCollector(Collector):
    """llm_circuit_breaker_state, prismops_live_table_age_seconds and prismops_budget_used_ratio from the state."""

    def __init__(self, state: GatewayTables, clock: Callable[[], dt.datetime]):
        self.state = state
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        breakers = GaugeMetricFamily("llm_circuit_breaker_state", "0 closed, 1 half_open, 2 open",
                                     labels=["provider", "model"])
        for row in self.state.breakers.snapshot(now):
            breakers.add_metric([row["provider"], row["model"]], BREAKER_VALUES[row["state"]])
        yield breakers
        age = GaugeMetricFamily("prismops_live_table_age_seconds", "age of the newest live-table row", labels=["table"])
        models = self.state.table.snapshot()
        if models:
            age.add_metric(["models"], min((now - row["updated_at"]).total_seconds() for row in models.values()))
        budget_rows = self.state.budgets.snapshot() if self.state.budgets is not None else {}
        if budget_rows:
            age.add_metric(["budgets"], min((now - row["updated_at"]).total_seconds() for row in budget_rows.values()))
        yield age
        used = GaugeMetricFamily("prismops_budget_used_ratio", "spend / budget (0..1+)",
                                 labels=["scope", "scope_id", "budget_id"])
        for (scope, scope_id), row in sorted(budget_rows.items()):
            for usage in row["budgets"]:
                used.add_metric([scope, scope_id, usage["budget_id"]], float(usage["used_pct"]) / 100)
        yield used
