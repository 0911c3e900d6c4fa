"""What a fault scenario expects and what it found: plain data and arithmetic, no I/O.

Every scenario prices the events it sends with the worker's own pricing path (`finops.llm_usage`) before
sending them, so it knows each expected cost line id, the exact total cost and each tenant's spend per day.
After the run it compares that with what ClickHouse and the budget state topic hold.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass
class Expectation:
    """The cost lines the sent events must become."""

    line_ids: set[str] = field(default_factory=set)
    cost: Decimal = Decimal(0)
    tenant_day_cost: dict[tuple[str, dt.date], Decimal] = field(default_factory=lambda: defaultdict(Decimal))

    def add(self, cost_line: Mapping[str, Any]) -> None:
        if cost_line["line_id"] in self.line_ids:
            raise ValueError(f"line {cost_line['line_id']} expected twice: the scenario sent one event twice")
        self.line_ids.add(cost_line["line_id"])
        self.cost += cost_line["cost_usd"]
        self.tenant_day_cost[(cost_line["tenant"], cost_line["event_time"].date())] += cost_line["cost_usd"]

    def forget(self, line_id: str, cost_line: Mapping[str, Any]) -> None:
        """An event the producer could not deliver (it reported so): not expected downstream."""
        self.line_ids.discard(line_id)
        self.cost -= cost_line["cost_usd"]
        self.tenant_day_cost[(cost_line["tenant"], cost_line["event_time"].date())] -= cost_line["cost_usd"]

    @property
    def rows(self) -> int:
        return len(self.line_ids)


@dataclass
class Observation:
    """What the stack holds once the scenario settled."""

    rows_raw: int = 0  # cost_lines rows before merges (SELECT count())
    rows_final: int = 0  # after FINAL
    distinct_ids: int = 0
    expected_found: int = 0  # expected line ids present
    cost_final: Decimal = Decimal(0)
    budget_spend: dict[tuple[str, dt.date], Decimal] | None = None  # tenant daily USD spend the worker reports
    dlq: int = 0
    pii_hits: list[str] = field(default_factory=list)
    worker_alive: bool = True
    crash_lines: list[str] = field(default_factory=list)
    recovery_s: float | None = None


@dataclass
class ScenarioResult:
    name: str
    events_sent: int
    expected: Expectation
    observed: Observation
    seconds: float
    expected_dlq: int = 0
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.expected.rows - self.observed.expected_found

    @property
    def unexpected(self) -> int:
        """Rows no sent event explains (another namespace's lines, say)."""
        return self.observed.distinct_ids - self.observed.expected_found

    @property
    def duplicated_raw(self) -> int:
        return self.observed.rows_raw - self.observed.distinct_ids

    @property
    def duplicated_final(self) -> int:
        return self.observed.rows_final - self.observed.distinct_ids

    @property
    def cost_exact(self) -> bool:
        return self.observed.cost_final == self.expected.cost

    @property
    def budgets_exact(self) -> bool:
        if self.observed.budget_spend is None:
            return False
        wanted = {key: value for key, value in self.expected.tenant_day_cost.items() if value}
        found = {key: value for key, value in self.observed.budget_spend.items() if key in wanted or value}
        return found == wanted

    @property
    def dlq_exact(self) -> bool:
        return self.observed.dlq == self.expected_dlq

    def failures(self) -> list[str]:
        """Why the scenario failed, one phrase per broken promise; empty when it passed."""
        checks = [
            (self.lost == 0, f"{self.lost} lost"),
            (self.unexpected == 0, f"{self.unexpected} rows nobody sent"),
            (self.duplicated_raw == 0, f"{self.duplicated_raw} raw duplicates"),
            (self.duplicated_final == 0, f"{self.duplicated_final} duplicates after FINAL"),
            (self.cost_exact, f"cost {self.observed.cost_final} != expected {self.expected.cost}"),
            (self.budgets_exact, "budget totals differ from the sent spend"),
            (self.dlq_exact, f"{self.observed.dlq} dead letters, expected {self.expected_dlq}"),
            (not self.observed.pii_hits, f"personal data found: {', '.join(self.observed.pii_hits[:3])}"),
            (self.observed.worker_alive, "the worker is not running at the end"),
            (not self.observed.crash_lines, f"{len(self.observed.crash_lines)} crash lines in component logs"),
        ]
        return [message for ok, message in checks if not ok]

    @property
    def passed(self) -> bool:
        return not self.failures()

    def as_row(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "events_sent": self.events_sent,
            "rows": self.observed.rows_final,
            "lost": self.lost,
            "unexpected": self.unexpected,
            "duplicated_raw": self.duplicated_raw,
            "duplicated_final": self.duplicated_final,
            "cost_exact": self.cost_exact,
            "expected_cost_usd": str(self.expected.cost),
            "budgets_exact": self.budgets_exact,
            "dlq": self.observed.dlq,
            "expected_dlq": self.expected_dlq,
            "pii_found": len(self.observed.pii_hits),
            "worker_alive": self.observed.worker_alive,
            "recovery_s": None if self.observed.recovery_s is None else round(self.observed.recovery_s, 1),
            "seconds": round(self.seconds, 1),
            "passed": self.passed,
            "failures": self.failures(),
            "notes": self.notes,
            **self.extra,
        }
