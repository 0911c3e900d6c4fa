"""How close a request's tenant (and its team) is to its budgets, from the live budget table (routing.budgets.v1).

Plain Python (no gRPC, no Kafka), so the rule is tested on its own and the servicer stays thin.
- A tenant's *standing* is the budget of its own row, or its team's, with the highest share used among the
  budgets whose period contains `now`; a budget at status `block` ranks above any share, so the worker's
  verdict is never weakened. The policy engine turns the standing into ok / downgrade / refuse with the
  route's thresholds (seed: >= 80% → cheaper tier, >= 100% → refuse in MANUAL mode).
- A budget from a period that has ended no longer counts, even before the worker publishes a fresh row: a
  refused tenant makes no calls, so its next row may be a long time coming.
- The tenant is canonicalized the way cost lines are (service registry aliases, normalized case/spaces), and
  its team is the registry owner of the request's service. The router sees no event labels, so a team given
  only as a label on usage events is not known here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from prismops.finops.budgets import BudgetStanding, in_period
from prismops.finops.tagging import ServiceRegistry, load_service_registry
from prismops.gateway_grpc.live_table import BudgetStateTable
from prismops.gateway_grpc.policy import RoutingRequest
from prismops.settings import Settings

BUDGET_BLOCKED = "budget_blocked"


def current_usages(row: Mapping[str, Any] | None, now: dt.datetime) -> list[Mapping[str, Any]]:
    """The budgets of a state row whose period contains `now`."""
    return [u for u in (row or {}).get("budgets", ()) if in_period(u["period"], u["period_start"], now)]


def _severity(usage: Mapping[str, Any]) -> tuple[int, float]:
    return (1 if usage["status"] == "block" else 0, float(usage["used_pct"]))


class BudgetGate:
    """Looks up a request's tenant and team in the budget table and says how close they are to a limit."""

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

    def standing(self, request: RoutingRequest, now: dt.datetime) -> BudgetStanding | None:
        """The most used current budget of the tenant or its team; None when neither has one."""
        scopes = self.scopes_of(request)
        rows = self.table.rows_for(scopes)
        worst: tuple[tuple[int, float], str, str, Mapping[str, Any]] | None = None
        for scope, scope_id in scopes:
            for usage in current_usages(rows.get((scope, scope_id)), now):
                if worst is None or _severity(usage) > worst[0]:
                    worst = (_severity(usage), scope, scope_id, usage)
        if worst is None:
            return None
        _, scope, scope_id, usage = worst
        return BudgetStanding(
            tenant=scopes[0][1], scope=scope, scope_id=scope_id, budget_id=usage["budget_id"],
            period=usage["period"], period_start=usage["period_start"], unit=usage["unit"],
            limit=usage["limit"], spent=usage["spent"], used_pct=float(usage["used_pct"]), status=usage["status"],
        )
