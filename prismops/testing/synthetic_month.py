"""A reproducible month of PrismOps records (fixed seed): cost lines from every source, the GPU allocations
behind the GPU lines, routing decisions with shadows and A/B arms, and anomalies.

The records have the shape the topics carry (cost_line v3, gpu_allocation, routing_decision v2, anomaly_event),
so they are loaded through the real row functions and sinks. Money is exact: every amount is an integer number
of 1e-12 USD, so the Python sums a test computes independently are exact too.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

NAMESPACE = uuid.UUID("3f7c1d7e-57b1-4f0e-9a61-6c0ad2b1f0a4")
PICO = Decimal("1e-12")

TENANTS = {
    "acme": {"teams": ("search", "support"), "products": ("copilot", "helpdesk")},
    "initech": {"teams": ("billing", "reports"), "products": ("ledger",)},
    "globex": {"teams": ("research",), "products": ("lab", "studio")},
}
SERVICES = {"copilot": "chat-api", "helpdesk": "support-bot", "ledger": "ledger-api", "lab": "batch-eval",
            "studio": "studio-api"}
FEATURES = ("answer", "summarize", "classify", "extract")
MODELS = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-haiku"),
          ("google", "gemini-1.5-flash"))
GPU_NODES = (("gpu-east", "node-a", "H100", "on_demand"), ("gpu-east", "node-b", "A100", "spot"))


@dataclass
class SyntheticMonth:
    month: dt.date
    cost_lines: list[dict[str, Any]] = field(default_factory=list)
    allocations: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    budget_events: list[dict[str, Any]] = field(default_factory=list)


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    return (Decimal(rng.randint(low, high)) * PICO).quantize(PICO)


def _id(kind: str, *parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, kind + "|" + "|".join(map(str, parts))))


def synthetic_month(month: dt.date, *, seed: int = 20250601, llm_calls_per_day: int = 60) -> SyntheticMonth:
    """Every day of `month`'s calendar month: `llm_calls_per_day` LLM calls (some with a routing decision, a
    shadow call, an experiment arm, a cache hit, a fallback, an error or no price), 24 hourly GPU windows on
    two nodes (workload and idle shares), and a few cloud bill lines; plus anomalies and budget events."""
    rng = random.Random(seed)
    first = month.replace(day=1)
    following = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    data = SyntheticMonth(first)
    day = first
    while day < following:
        _llm_day(rng, data, day, llm_calls_per_day)
        _gpu_day(rng, data, day)
        day += dt.timedelta(days=1)
    _cloud_lines(rng, data, first)
    _anomalies(rng, data, first, following)
    _budget_events(data, first)
    return data


def _llm_day(rng: random.Random, data: SyntheticMonth, day: dt.date, calls: int) -> None:
    for index in range(calls):
        tenant = rng.choice(sorted(TENANTS))
        profile = TENANTS[tenant]
        product = rng.choice(profile["products"])
        provider, model = rng.choice(MODELS)
        at = dt.datetime.combine(day, dt.time(), dt.timezone.utc) + dt.timedelta(seconds=rng.randrange(86400))
        event_id = _id("llm", day, index)
        decision = None
        if rng.random() < 0.5:
            decision = _decision(rng, data, event_id, at, tenant, SERVICES[product], provider, model)
        line = _llm_line(
            rng, event_id, at, tenant, rng.choice(profile["teams"]), product, provider, model,
            decision_id=decision["decision_id"] if decision else None, shadow=False,
        )
        data.cost_lines.append(line)
        if decision and decision["shadow_model"]:
            shadow = _llm_line(
                rng, event_id + "/shadow", at, tenant, line["team"], product, decision["shadow_provider"],
                decision["shadow_model"], decision_id=decision["decision_id"], shadow=True,
            )
            shadow.update(session_id=line["session_id"], customer=line["customer"], feature=line["feature"])
            data.cost_lines.append(shadow)


def _llm_line(
    rng: random.Random, event_id: str, at: dt.datetime, tenant: str, team: str, product: str, provider: str,
    model: str, *, decision_id: str | None, shadow: bool,
) -> dict[str, Any]:
    input_tokens, output_tokens = rng.randint(50, 4000), rng.randint(10, 1200)
    cached = rng.choice((0, 0, 0, input_tokens // 2))
    priced = rng.random() > 0.03
    status = "ok" if rng.random() > 0.05 else rng.choice(("error", "timeout", "rate_limited"))
    customer = rng.choice((None, *(f"{tenant}-cust-{n:02d}" for n in range(1, 9))))
    return {
        "line_id": _id("line", "llm", event_id), "source": "llm", "source_event_id": event_id, "event_time": at,
        "tenant": tenant, "team": team, "product": product, "service": SERVICES[product],
        "feature": rng.choice(FEATURES), "customer": customer, "user_hash": None,
        "session_id": rng.choice((None, *(f"{tenant}-s{n:03d}" for n in range(40)))),
        "request_id": _id("request", event_id), "environment": rng.choice(("prod", "prod", "staging")),
        "provider": provider, "model": model, "model_version": None, "deployment_id": None,
        "region": None, "resource": None,
        "input_tokens": input_tokens, "output_tokens": output_tokens, "cached_input_tokens": cached,
        "cache_write_tokens": 0, "reasoning_tokens": 0, "prompt_chars": input_tokens * 4,
        "latency_ms": rng.randint(80, 9000),
        "usage_quantity": Decimal(input_tokens + output_tokens), "usage_unit": "token",
        "cost_usd": _money(rng, 1, 90_000_000_000) if priced else Decimal(0),
        "billed_cost_usd": None, "list_cost_usd": None, "charge_category": "Usage",
        "priced": priced, "price_version": "litellm-2025-06" if priced else "unpriced", "status": status,
        "cache_hit": cached > 0, "fallback": rng.random() < 0.08, "shadow": shadow, "decision_id": decision_id,
        "tag_source": {"tenant": "explicit", "team": "inferred"}, "labels": {},
    }


def _decision(
    rng: random.Random, data: SyntheticMonth, event_id: str, at: dt.datetime, tenant: str, service: str,
    provider: str, model: str,
) -> dict[str, Any]:
    shadow = rng.choice([m for m in MODELS if m != (provider, model)]) if rng.random() < 0.3 else None
    experiment = rng.random() < 0.4
    decision = {
        "decision_id": _id("decision", event_id), "decided_at": at, "tenant": tenant, "service": service,
        "feature": "answer", "request_id": _id("request", event_id), "latency_slo_ms": 2000.0,
        "chosen_provider": provider, "chosen_model": model, "reason_code": "cheapest_within_slo",
        "reason": "cheapest model within the latency SLO",
        "candidates": [{"provider": provider, "model": model, "p95_latency_ms": 900.0, "error_rate": 0.01,
                        "estimated_cost_usd": _money(rng, 1, 10_000_000_000), "eligible": True, "verdict": "chosen",
                        "breaker_state": "closed"}],
        "reason_codes": ["cheapest_within_slo"], "route": f"{service}/answer", "policy_version": 3,
        "experiment": "cheap-vs-fast" if experiment else None,
        "arm": rng.choice(("cheap", "fast")) if experiment else None,
        "shadow_provider": shadow[0] if shadow else None, "shadow_model": shadow[1] if shadow else None,
        "fallbacks": [], "budget_status": "ok", "budget_used_pct": 12.5, "downgraded": False,
        "static_fallback": False, "estimated_cost_usd": _money(rng, 1, 10_000_000_000), "customer": None,
        "session_id": None, "live_table_age_ms": 250,
    }
    data.decisions.append(decision)
    return decision


def _gpu_day(rng: random.Random, data: SyntheticMonth, day: dt.date) -> None:
    for cluster, node, gpu_model, capacity in GPU_NODES:
        pool = f"{cluster}/{node}"
        for hour in range(24):
            start = dt.datetime.combine(day, dt.time(hour), dt.timezone.utc)
            end = start + dt.timedelta(hours=1)
            capacity_s = 8 * 3600
            used = rng.randint(0, capacity_s)
            workloads = [("acme", "search", used // 2), ("globex", "research", used - used // 2)]
            pool_cost = _money(rng, 10_000_000_000_000, 30_000_000_000_000)
            shares = [(tenant, team, Decimal(seconds), "workload") for tenant, team, seconds in workloads]
            shares.append(("unallocated", "unallocated", Decimal(capacity_s - used), "idle"))
            costs = _split(pool_cost, [s[2] for s in shares], capacity_s)
            for (tenant, team, seconds, kind), cost in zip(shares, costs):
                allocation_id = _id("allocation", pool, start, tenant, kind)
                allocation = {
                    "allocation_id": allocation_id, "window_start": start, "window_end": end, "pool": pool,
                    "cluster": cluster, "node": node, "gpu_model": gpu_model, "capacity_type": capacity,
                    "kind": kind, "tenant": tenant, "team": team, "namespace": None, "job": None,
                    "charged_gpu_seconds": seconds, "share": (seconds / capacity_s).quantize(Decimal("1e-18")),
                    "direct_cost_usd": cost if kind == "workload" else Decimal(0),
                    "idle_cost_usd": cost if kind == "idle" else Decimal(0), "cost_usd": cost,
                    "pool_cost_usd": pool_cost, "idle_policy": "bucket", "tokens": 0, "usd_per_mtok": None,
                    "price_version": "gpu-2025-06", "late": False,
                }
                data.allocations.append(allocation)
                data.cost_lines.append({
                    "line_id": _id("line", "gpu", allocation_id), "source": "gpu", "source_event_id": allocation_id,
                    "event_time": start, "tenant": tenant, "team": team, "product": "unallocated",
                    "service": "unallocated", "feature": "unspecified", "customer": None, "user_hash": None,
                    "session_id": None, "request_id": None, "environment": "unspecified", "provider": cluster,
                    "model": gpu_model, "model_version": None, "deployment_id": None, "region": None,
                    "resource": pool, "input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0,
                    "cache_write_tokens": 0, "reasoning_tokens": 0, "prompt_chars": None, "latency_ms": None,
                    "usage_quantity": seconds, "usage_unit": "gpu_second", "cost_usd": cost,
                    "billed_cost_usd": None, "list_cost_usd": None, "charge_category": "usage", "priced": True,
                    "price_version": "gpu-2025-06", "status": "ok", "cache_hit": False, "fallback": False,
                    "shadow": False, "decision_id": None, "tag_source": {"tenant": "explicit"},
                    "labels": {"allocation_kind": kind},
                })


def _split(total: Decimal, weights: list[Decimal], whole: int) -> list[Decimal]:
    """Shares of `total` by weight, the last one taking the remainder, so they sum to `total` exactly."""
    shares = [(total * weight / whole).quantize(PICO) for weight in weights[:-1]]
    return [*shares, total - sum(shares, Decimal(0))]


def _cloud_lines(rng: random.Random, data: SyntheticMonth, first: dt.date) -> None:
    for index in range(6):
        at = dt.datetime.combine(first + dt.timedelta(days=index * 4), dt.time(), dt.timezone.utc)
        effective = _money(rng, 1_000_000_000_000, 80_000_000_000_000)
        event_id = _id("cloud", first, index)
        data.cost_lines.append({
            "line_id": _id("line", "cloud", event_id), "source": "cloud", "source_event_id": event_id,
            "event_time": at, "tenant": rng.choice(sorted(TENANTS)), "team": "platform", "product": "infra",
            "service": "inference-gateway", "feature": "unspecified", "customer": None, "user_hash": None,
            "session_id": None, "request_id": None, "environment": "prod", "provider": "aws",
            "model": "Amazon Elastic Compute Cloud", "model_version": None, "deployment_id": None,
            "region": "us-east-1", "resource": f"i-{index:04d}", "input_tokens": 0, "output_tokens": 0,
            "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0, "prompt_chars": None,
            "latency_ms": None, "usage_quantity": Decimal(24), "usage_unit": "Hours", "cost_usd": effective,
            "billed_cost_usd": effective + _money(rng, 0, 1_000_000_000_000), "list_cost_usd": effective * 2,
            "charge_category": "Usage", "priced": True, "price_version": "focus-1.2", "status": "ok",
            "cache_hit": False, "fallback": False, "shadow": False, "decision_id": None,
            "tag_source": {"tenant": "explicit"}, "labels": {},
        })


def _budget_events(data: SyntheticMonth, first: dt.date) -> None:
    for index, (tenant, threshold, action) in enumerate((("acme", 80, "warn"), ("acme", 100, "block"),
                                                         ("globex", 80, "warn"))):
        day = dt.datetime.combine(first + dt.timedelta(days=3 + index), dt.time(), dt.timezone.utc)
        data.budget_events.append({
            "event_id": _id("budget", tenant, day, threshold), "at": day + dt.timedelta(hours=15),
            "budget_id": f"{tenant}-daily-usd", "scope": "tenant", "scope_id": tenant, "period": "daily",
            "period_start": day, "unit": "usd", "threshold_pct": threshold, "action": action,
            "limit": Decimal("30"), "spent": Decimal(threshold) * Decimal("0.3"),
            "message": f"{tenant} reached {threshold}% of its daily budget",
        })


def _anomalies(rng: random.Random, data: SyntheticMonth, first: dt.date, following: dt.date) -> None:
    days = (following - first).days
    for index in range(12):
        start = dt.datetime.combine(first + dt.timedelta(days=rng.randrange(days)), dt.time(rng.randrange(24)),
                                    dt.timezone.utc)
        tenant, (provider, model) = rng.choice(sorted(TENANTS)), rng.choice(MODELS)
        metric = rng.choice(("cost_usd", "cost_usd", "error_rate"))
        actual_cost = _money(rng, 10_000_000_000_000, 90_000_000_000_000) if metric == "cost_usd" else None
        expected_cost = _money(rng, 1_000_000_000_000, 9_000_000_000_000) if metric == "cost_usd" else None
        data.anomalies.append({
            "anomaly_id": _id("anomaly", metric, tenant, model, start, index), "detected_at": start,
            "metric": metric, "series": "tenant_model", "series_key": f"{tenant}/{provider}/{model}",
            "tenant": tenant, "service": None, "feature": None, "provider": provider, "model": model,
            "window_start": start, "window_end": start + dt.timedelta(minutes=5),
            "actual": float(actual_cost) if actual_cost is not None else 0.4,
            "expected": float(expected_cost) if expected_cost is not None else 0.02,
            "actual_cost_usd": actual_cost, "expected_cost_usd": expected_cost, "score": rng.uniform(3, 12),
            "severity": rng.choice(("info", "warning", "critical")),
            "contributors": [{"dimension": "feature", "value": rng.choice(FEATURES), "window_value": 5.0,
                              "baseline_value": 1.0, "delta": 4.0, "share": 0.8}],
            "message": f"{metric} of {tenant}/{model} above expectation",
        })


def _dimension(line: dict[str, Any], name: str) -> str:
    """A cost line's value of a report dimension, computed in plain Python (independently of the SQL)."""
    if name == "node":
        return line["resource"] or "" if line["source"] == "gpu" else ""
    return line[name] or ""


def totals_by(lines: list[dict[str, Any]], dimensions: tuple[str, ...]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Per group: lines, exact cost, LLM requests, LLM cost, tokens and the distinct sessions and customers."""
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for line in lines:
        key = tuple(_dimension(line, d) for d in dimensions)
        group = groups.setdefault(key, {
            "lines": 0, "cost_usd": Decimal(0), "llm_requests": 0, "llm_cost_usd": Decimal(0), "input_tokens": 0,
            "output_tokens": 0, "cache_hit_requests": 0, "fallback_requests": 0, "error_requests": 0,
            "sessions": set(), "customers": set(),
        })
        group["lines"] += 1
        group["cost_usd"] += line["cost_usd"]
        group["input_tokens"] += line["input_tokens"]
        group["output_tokens"] += line["output_tokens"]
        if line["source"] == "llm":
            group["llm_requests"] += 1
            group["llm_cost_usd"] += line["cost_usd"]
            group["cache_hit_requests"] += bool(line["cache_hit"])
            group["fallback_requests"] += bool(line["fallback"])
            group["error_requests"] += line["status"] != "ok"
        if line.get("session_id"):
            group["sessions"].add(line["session_id"])
        if line.get("customer"):
            group["customers"].add(line["customer"])
    for group in groups.values():
        group["sessions"], group["customers"] = len(group["sessions"]), len(group["customers"])
    return groups


SHOWBACK_CHECKS = (("team",), ("tenant",), ("feature",), ("model",), ("customer",), ("tenant", "customer"))


def report_discrepancies(client: Any, database: str, data: SyntheticMonth) -> list[str]:
    """Every difference between what the reports say about `data`'s month and totals computed here in Python
    from the records; an empty list means every report is exact to the last decimal place."""
    from prismops.sinks import reports

    since = data.month
    until = (since.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    problems: list[str] = []

    def compare(what: str, got: Any, expected: Any) -> None:
        if got != expected:
            problems.append(f"{what}: report says {got!r}, records say {expected!r}")

    grand = totals_by(data.cost_lines, ())[()]
    for by in SHOWBACK_CHECKS:
        report = reports.showback(client, database, by, since=since, until=until)
        expected = totals_by(data.cost_lines, by)
        got = {tuple(row[d] for d in by): (row["cost_usd"], row["lines"]) for row in report.rows}
        compare(f"showback by {by}", got, {k: (v["cost_usd"], v["lines"]) for k, v in expected.items()})
        compare(f"showback by {by} total", (report.total["cost_usd"], report.total["lines"]),
                (grand["cost_usd"], grand["lines"]))
    for by in (("team",), ("model",), ("customer",)):
        report = reports.unit_economics(client, database, by, since=since, until=until)
        expected = totals_by(data.cost_lines, by)
        names = ("llm_requests", "llm_cost_usd", "cost_usd", "sessions", "customers", "cache_hit_requests",
                 "fallback_requests", "error_requests")
        got = {tuple(row[d] for d in by): tuple(row[n] for n in names) for row in report.rows}
        compare(f"unit economics by {by}", got, {k: tuple(v[n] for n in names) for k, v in expected.items()})
        compare(f"unit economics by {by} total", tuple(report.total[n] for n in names),
                tuple(grand[n] for n in names))
    report = reports.monthly(client, database, f"{since:%Y-%m}")
    expected = totals_by(data.cost_lines, ("service", "node", "source"))
    compare("monthly", {(r["service"], r["node"], r["source"]): r["cost_usd"] for r in report.rows},
            {k: v["cost_usd"] for k, v in expected.items()})
    compare("monthly total", report.total["cost_usd"], grand["cost_usd"])
    report = reports.anomalies(client, database, since=since, until=until)
    cost_anomalies = [a for a in data.anomalies if a["actual_cost_usd"] is not None]
    compare("anomalies", sorted(r["series_key"] for r in report.rows), sorted(a["series_key"] for a in data.anomalies))
    compare("anomalies excess total", report.total["excess_cost_usd"],
            sum((a["actual_cost_usd"] - a["expected_cost_usd"] for a in cost_anomalies), Decimal(0)))
    return problems
