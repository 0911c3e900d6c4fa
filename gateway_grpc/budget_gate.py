"""Whether the router may answer a tenant now, from the live budget table (routing.budgets.v1).

Plain Python (no gRPC, no Kafka), so the rule is tested on its own and the servicer stays thin. The rule:
- In MANUAL mode a tenant is refused when its own budget row, or its team's, has a budget at status `block`
  whose period still contains `now`. NOTIFY mode never refuses (the alerts still go out).
- A block from a period that has ended no longer counts, even before the worker publishes a fresh row: a
  refused tenant makes no calls, so its next row may be a long time coming.
- The tenant is canonicalized the way cost lines are (service registry aliases, normalized case/spaces), and
  its team is the registry owner of the request's service. The router sees no event labels, so a team given
  only as a label on usage events is not known here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from agents.budgets import format_amount, format_pct, in_period, period_end, period_label
from agents.tagging import ServiceRegistry, load_service_registry
from gateway_grpc.live_table import BudgetStateTable
from gateway_grpc.policy import RoutingRequest
from prismops.settings import Settings

BUDGET_BLOCKED = "budget_blocked"


@dataclass(frozen=True)
class BudgetBlock:
    """The budget that stops a tenant, with its numbers."""

    tenant: str
    scope: str
    scope_id: str
    budget_id: str
    period: str
    period_start: dt.datetime
    unit: str
    limit: Decimal
    spent: Decimal
    used_pct: float

    @property
    def message(self) -> str:
        who = f"tenant {self.tenant}" if self.scope == "tenant" else f"tenant {self.tenant}'s team {self.scope_id}"
        when = ("on " if self.period == "daily" else "in ") + period_label(self.period, self.period_start)
        until = period_end(self.period, self.period_start).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"{who} is over budget {self.budget_id}: spent {format_amount(self.unit, self.spent)} of "
            f"{format_amount(self.unit, self.limit)} ({format_pct(self.used_pct)}) {when} UTC; "
            f"routing refused until {until} (MANUAL mode)"
        )

    def decision_record(self, request: RoutingRequest, decision_id: str, decided_at: dt.datetime) -> dict[str, Any]:
        """The routing_decision record of a refusal: no model chosen, every allowed model left unweighed."""
        return {
            "decision_id": decision_id,
            "decided_at": decided_at,
            "tenant": request.tenant,
            "service": request.service,
            "feature": request.feature,
            "request_id": request.request_id or None,
            "latency_slo_ms": float(request.latency_slo_ms),
            "chosen_provider": None,
            "chosen_model": None,
            "reason_code": BUDGET_BLOCKED,
            "reason": self.message,
            "candidates": [
                {
                    "provider": provider, "model": model, "p95_latency_ms": None, "error_rate": None,
                    "estimated_cost_usd": None, "eligible": False,
                    "verdict": f"not weighed: budget {self.budget_id} blocks",
                }
                for provider, model in request.allowed_models
            ],
        }


def blocking_usage(row: Mapping[str, Any] | None, now: dt.datetime) -> Mapping[str, Any] | None:
    """The first budget of a state row at status block in a period that contains `now`."""
    for usage in (row or {}).get("budgets", ()):
        if usage["status"] == "block" and in_period(usage["period"], usage["period_start"], now):
            return usage
    return None


class BudgetGate:
    """Looks up a request's tenant and team in the budget table and says what, if anything, blocks it."""

    def __init__(self, table: BudgetStateTable, registry: ServiceRegistry, mode: str = "manual"):
        self.table = table
        self.registry = registry
        self.mode = mode

    @classmethod
    def from_settings(cls, settings: Settings, table: BudgetStateTable) -> "BudgetGate":
        return cls(table, load_service_registry(settings.tagging.service_registry), settings.budgets.mode)

    def scopes_of(self, request: RoutingRequest) -> list[tuple[str, str]]:
        tenant = self.registry.canonical("tenant", request.tenant)
        scopes = [("tenant", tenant)]
        owner = self.registry.owner(request.service) if request.service else None
        if owner is not None:
            scopes.append(("team", owner.team))
        return scopes

    def check(self, request: RoutingRequest, now: dt.datetime) -> BudgetBlock | None:
        """The block that refuses this request now, or None (always None in NOTIFY mode)."""
        if self.mode != "manual":
            return None
        scopes = self.scopes_of(request)
        rows = self.table.rows_for(scopes)
        for scope, scope_id in scopes:
            usage = blocking_usage(rows.get((scope, scope_id)), now)
            if usage is not None:
                return BudgetBlock(
                    tenant=scopes[0][1], scope=scope, scope_id=scope_id, budget_id=usage["budget_id"],
                    period=usage["period"], period_start=usage["period_start"], unit=usage["unit"],
                    limit=usage["limit"], spent=usage["spent"], used_pct=usage["used_pct"],
                )
        return None
