"""Split a GPU pool-window's cost among its workloads (OpenCost's formulas), exactly, and build the records.

Formulas (OpenCost):
- a workload is charged max(requested, used) GPU-seconds (`Workload.charged_gpu_seconds`);
- allocated = the sum of charged GPU-seconds; idle = capacity - allocated. When workloads exceed the
  capacity (oversubscribed time-slicing), the base becomes `allocated`: shares are scaled so they still sum
  to the pool cost, and idle is 0, never negative;
- a workload's direct cost = pool cost x charged / base; idle cost = pool cost x idle / base;
- idle is shared by the idle policy: `proportional` to charged GPU-seconds (default; then each workload pays
  exactly pool cost x charged / allocated), `even` (equal parts), or `bucket` (kept in the `__idle__` share).
  Nobody to share with (no workloads), or nothing charged under `proportional`: see `allocate_pool_cost`.

Pool cost of a window = sum over the pool's GPUs of $/GPU-hour x window_s / 3600. The pool's GPUs are the
distinct GPU indexes observed on the node in the window plus any listed in the catalog's node inventory. MIG
slices and fractional GPUs do not add GPUs: their GPU-seconds are already fractions of one physical GPU.

ROUNDING RULE (money is rounded here and nowhere else in GPU attribution):
1. The pool-window cost is computed as an exact fraction and rounded once, half-even, to 12 decimal places.
2. That amount is apportioned, not rounded again: each share's exact cost (a `fractions.Fraction`) is
   rounded DOWN to 12 places; the 1e-12 units still missing to reach the pool cost (fewer than the number
   of shares) are handed out one each to the shares with the largest remainders, ties broken by the share
   key in ascending order (workload keys are JSON arrays; `__idle__` is the idle bucket). Shares therefore
   sum EXACTLY to the pool cost and each is within one unit (1e-12 USD) of its exact value.
3. Each share is reported as direct + idle = cost: a share with no idle part is all direct, one with no
   direct part is all idle, otherwise direct is its exact value rounded down and idle is the rest.
Quantities (charged GPU-seconds) and the `share` fraction are shown rounded half-even to 12 and 18 places;
they are not money and no total is built from them.

Self-hosted inference pools (`allocate_inference_pool`): the pool's GPU cost is split across tenants by the
tokens of the LLM calls its models served, with the same apportionment, and a $/M-tokens rate per tenant.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from prismops.finops.gpu_pricing import UNPRICED_VERSION, GpuCatalog
from prismops.finops.gpu_windows import ClosedWindow, Workload
from prismops.finops.llm_usage import cost_line_id
from prismops.finops.tagging import UNALLOCATED, UNSPECIFIED, normalize

IDLE_KEY = "__idle__"
IDLE_POLICIES = ("proportional", "even", "bucket")
MONEY_PLACES = 12
_UNITS_PER_USD = 10**MONEY_PLACES
SECONDS_PER_HOUR = 3600
ALLOCATION_NAMESPACE = uuid.UUID("0b7a3c52-9d8e-4f61-a2c4-6e5d8f9a1b27")


@dataclass(frozen=True)
class Share:
    """One workload's (or the idle bucket's) part of a pool-window's cost."""

    key: str
    kind: str  # "workload" or "idle"
    charged_gpu_seconds: Fraction  # max(requested, used); for the idle bucket, the idle GPU-seconds
    share: Fraction  # of the pool cost before idle is redistributed (charged / base)
    direct_cost_usd: Decimal
    idle_cost_usd: Decimal
    cost_usd: Decimal
    exact_cost_usd: Fraction  # before apportionment, for audits and tests
    workload: Workload | None = None


def usd(units: int) -> Decimal:
    """An integer number of 1e-12 USD units as an exact Decimal with 12 places (built from text: no context
    precision applies, however many digits)."""
    return Decimal(f"{units}E-{MONEY_PLACES}")


def rounded(value: Fraction, places: int) -> Decimal:
    """Half-even to `places` decimal places (Python's round() on a Fraction is half-even, and exact)."""
    return Decimal(f"{round(value * 10**places)}E-{places}")


def _units(amount: Decimal | Fraction, what: str) -> int:
    exact = Fraction(amount) * _UNITS_PER_USD
    if exact.denominator != 1:
        raise ValueError(f"{what} {amount} has more than {MONEY_PLACES} decimal places")
    if exact < 0:
        raise ValueError(f"{what} must be >= 0, got {amount}")
    return exact.numerator


def apportion_units(total: Decimal, parts: Sequence[tuple[str, Fraction]]) -> dict[str, int]:
    """Largest-remainder apportionment of `total` (12 places) over exact parts that sum to it, in 1e-12 USD
    units (rule in the module docstring): floor each part, give the missing units to the largest remainders,
    ties by key ascending."""
    total_units = _units(total, "total")
    if sum((p for _, p in parts), Fraction(0)) != Fraction(total):
        raise ValueError("the exact parts must sum to the total")
    if len({key for key, _ in parts}) != len(parts):
        raise ValueError("part keys must be unique")
    floors: dict[str, int] = {}
    remainders: dict[str, Fraction] = {}
    for key, part in parts:
        if part < 0:
            raise ValueError(f"part {key} is negative: {part}")
        scaled = part * _UNITS_PER_USD
        floors[key] = scaled.numerator // scaled.denominator
        remainders[key] = scaled - floors[key]
    missing = total_units - sum(floors.values())
    for key in sorted(floors, key=lambda k: (-remainders[k], k))[:missing]:
        floors[key] += 1
    return floors


def apportion(total: Decimal, parts: Sequence[tuple[str, Fraction]]) -> dict[str, Decimal]:
    """`apportion_units` as Decimals with 12 places; they sum exactly to `total`."""
    return {key: usd(units) for key, units in apportion_units(total, parts).items()}


def allocate_pool_cost(
    pool_cost: Decimal,
    capacity_gpu_seconds: Fraction | Decimal | int,
    workloads: Sequence[Workload],
    idle_policy: str = "proportional",
) -> list[Share]:
    """Shares of one pool-window's cost; they sum exactly to `pool_cost` (12 places, >= 0).

    Edge cases, so no cost is ever lost: with no workloads the whole cost is the `__idle__` share whatever the
    policy; under `proportional` with nothing charged (all zero usage) idle is shared evenly; with zero
    capacity and nothing charged the whole cost is idle. The `__idle__` share exists only under `bucket` (or
    with no workloads) and only when there are idle GPU-seconds or idle cost.
    """
    if idle_policy not in IDLE_POLICIES:
        raise ValueError(f"idle_policy must be one of {', '.join(IDLE_POLICIES)}, got {idle_policy!r}")
    pool = Fraction(pool_cost)
    _units(pool_cost, "pool_cost")
    capacity = Fraction(capacity_gpu_seconds)
    if capacity < 0:
        raise ValueError(f"capacity_gpu_seconds must be >= 0, got {capacity_gpu_seconds}")
    keys = [w.key for w in workloads]
    if len(set(keys)) != len(keys) or IDLE_KEY in keys:
        raise ValueError(f"workload keys must be unique and not {IDLE_KEY!r}")
    charged = {w.key: w.charged_gpu_seconds for w in workloads}
    if any(c < 0 for c in charged.values()):
        raise ValueError("GPU-seconds must be >= 0")
    allocated = sum(charged.values(), Fraction(0))
    base = max(capacity, allocated)
    idle_seconds = base - allocated
    if base > 0:
        direct = {k: pool * c / base for k, c in charged.items()}
        idle_total = pool * idle_seconds / base
    else:
        direct = {k: Fraction(0) for k in charged}
        idle_total = pool
    idle_of = {k: Fraction(0) for k in charged}
    bucket = not workloads or idle_policy == "bucket"
    if not bucket:
        if idle_policy == "proportional" and allocated > 0:
            idle_of = {k: idle_total * c / allocated for k, c in charged.items()}
        else:
            idle_of = {k: idle_total / len(charged) for k in charged}
    exact = {k: direct[k] + idle_of[k] for k in charged}
    with_bucket = bucket and (idle_seconds > 0 or idle_total > 0)
    if with_bucket:
        exact[IDLE_KEY] = idle_total
    costs = apportion_units(pool_cost, sorted(exact.items()))

    shares = []
    for workload in sorted(workloads, key=lambda w: w.key):
        key = workload.key
        cost = costs[key]
        if idle_of[key] == 0:
            direct_units = cost
        elif direct[key] == 0:
            direct_units = 0
        else:
            scaled = direct[key] * _UNITS_PER_USD
            direct_units = min(cost, scaled.numerator // scaled.denominator)
        shares.append(Share(
            key=key, kind="workload", charged_gpu_seconds=charged[key],
            share=charged[key] / base if base > 0 else Fraction(0),
            direct_cost_usd=usd(direct_units), idle_cost_usd=usd(cost - direct_units), cost_usd=usd(cost),
            exact_cost_usd=exact[key], workload=workload,
        ))
    if with_bucket:
        shares.append(Share(
            key=IDLE_KEY, kind="idle", charged_gpu_seconds=idle_seconds,
            share=idle_seconds / base if base > 0 else Fraction(1),
            direct_cost_usd=usd(0), idle_cost_usd=usd(costs[IDLE_KEY]), cost_usd=usd(costs[IDLE_KEY]),
            exact_cost_usd=exact[IDLE_KEY],
        ))
    return shares


@dataclass(frozen=True)
class PoolCost:
    cost_usd: Decimal  # rounded once, half-even, 12 places; 0 when unpriced
    exact_cost_usd: Fraction
    priced: bool
    price_version: str
    gpu_count: int
    gpu_model: str
    capacity_type: str
    unpriced_reason: str | None = None


def pool_gpus(window: ClosedWindow, catalog: GpuCatalog) -> dict[int, tuple[str, str]]:
    """GPU index -> (gpu_model, capacity_type): the GPUs observed in the window, plus the node's inventory."""
    gpus = dict(window.gpus)
    inventory = catalog.node_inventory(window.cluster, window.node)
    if inventory is not None:
        for index in range(inventory.gpus):
            gpus.setdefault(index, (inventory.gpu_model, inventory.capacity_type))
    return gpus


def pool_window_cost(
    gpus: Mapping[int, tuple[str, str]], window_start: dt.datetime, window_s: int, catalog: GpuCatalog,
) -> PoolCost:
    """Sum of $/GPU-hour x window_s / 3600 over the pool's GPUs, rounded once (half-even, 12 places).
    If any GPU has no price in effect at the window's start the pool is unpriced: cost 0, flagged."""
    models = ",".join(sorted({m for m, _ in gpus.values()}))
    capacity_types = ",".join(sorted({c for _, c in gpus.values()}))
    exact = Fraction(0)
    versions = set()
    for index, (model, capacity_type) in sorted(gpus.items()):
        price = catalog.price_at(model, capacity_type, window_start)
        if price is None:
            reason = f"no {model}/{capacity_type} price in effect at {window_start.isoformat()} (GPU {index})"
            return PoolCost(usd(0), Fraction(0), False, UNPRICED_VERSION, len(gpus),
                            models, capacity_types, reason)
        exact += price.usd_per_gpu_hour * window_s / SECONDS_PER_HOUR
        versions.add(price.version)
    cost = rounded(exact, MONEY_PLACES)
    return PoolCost(cost, exact, True, "+".join(sorted(versions)) or UNPRICED_VERSION, len(gpus), models, capacity_types)


def allocation_id(pool: str, window_start: dt.datetime, window_end: dt.datetime, key: str) -> str:
    """Deterministic from pool, window and share key, so a re-emitted window writes the same ids."""
    return str(uuid.uuid5(ALLOCATION_NAMESPACE, f"{pool}|{window_start.isoformat()}|{window_end.isoformat()}|{key}"))


@dataclass(frozen=True)
class WindowAttribution:
    pool_cost: PoolCost
    shares: list[Share]
    allocations: list[dict[str, Any]]  # gpu_allocation records (cost.allocations.v1)
    cost_lines: list[dict[str, Any]]  # cost_line records (cost.lines.v1), one per allocation


def attribute_window(window: ClosedWindow, catalog: GpuCatalog, idle_policy: str, window_s: int) -> WindowAttribution:
    """A closed pool-window's allocations and GPU cost lines."""
    gpus = pool_gpus(window, catalog)
    cost = pool_window_cost(gpus, window.window_start, window_s, catalog)
    shares = allocate_pool_cost(cost.cost_usd, len(gpus) * window_s, window.workloads, idle_policy)
    allocations, lines = [], []
    for share in shares:
        workload = share.workload
        tenant = workload.tenant if workload and workload.tenant else UNALLOCATED
        team = workload.team if workload and workload.team else UNALLOCATED
        allocation = {
            "allocation_id": allocation_id(window.pool, window.window_start, window.window_end, share.key),
            "window_start": window.window_start,
            "window_end": window.window_end,
            "pool": window.pool,
            "cluster": window.cluster,
            "node": window.node,
            "gpu_model": cost.gpu_model,
            "capacity_type": cost.capacity_type,
            "kind": share.kind,
            "tenant": tenant,
            "team": team,
            "namespace": workload.namespace if workload else None,
            "job": workload.job if workload else None,
            "charged_gpu_seconds": rounded(share.charged_gpu_seconds, MONEY_PLACES),
            "share": rounded(share.share, 18),
            "direct_cost_usd": share.direct_cost_usd,
            "idle_cost_usd": share.idle_cost_usd,
            "cost_usd": share.cost_usd,
            "pool_cost_usd": cost.cost_usd,
            "idle_policy": idle_policy,
            "tokens": 0,
            "usd_per_mtok": None,
            "price_version": cost.price_version,
            "late": window.late,
        }
        allocations.append(allocation)
        lines.append(gpu_cost_line(allocation, cost))
    return WindowAttribution(cost, shares, allocations, lines)


def gpu_cost_line(allocation: Mapping[str, Any], cost: PoolCost) -> dict[str, Any]:
    """The cost line for one allocation: GPU-seconds priced at the share's cost; the idle bucket (and any
    workload without a team) is charged to `unallocated` with tag_source `default`."""
    workload = allocation["kind"] != "idle"
    explicit_team = workload and allocation["team"] != UNALLOCATED
    labels = {
        "allocation_kind": allocation["kind"],
        "capacity_type": allocation["capacity_type"],
        "idle_policy": allocation["idle_policy"],
        "window_end": allocation["window_end"].isoformat(),
    }
    for name in ("namespace", "job"):
        if allocation.get(name):
            labels[name] = allocation[name]
    if cost.unpriced_reason:
        labels["unpriced_reason"] = cost.unpriced_reason
    return {
        "line_id": cost_line_id("gpu", allocation["allocation_id"]),
        "source": "gpu",
        "source_event_id": allocation["allocation_id"],
        "event_time": allocation["window_start"],
        "tenant": allocation["tenant"],
        "team": allocation["team"],
        "product": UNALLOCATED,
        "service": UNALLOCATED,
        "feature": UNSPECIFIED,
        "customer": None,
        "user_hash": None,
        "environment": UNSPECIFIED,
        "provider": allocation["cluster"],
        "model": allocation["gpu_model"],
        "region": None,
        "resource": allocation["pool"],
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "usage_quantity": allocation["charged_gpu_seconds"],
        "usage_unit": "gpu_second",
        "cost_usd": allocation["cost_usd"],
        "billed_cost_usd": None,
        "list_cost_usd": None,
        "charge_category": "usage",
        "priced": cost.priced,
        "price_version": cost.price_version,
        "status": "ok",
        "tag_source": {
            "tenant": "explicit" if workload else "default",
            "team": "explicit" if explicit_team else "default",
            "product": "default", "service": "default", "feature": "default", "customer": "default",
            "environment": "default", "provider": "explicit", "model": "explicit",
        },
        "labels": labels,
    }


# --- self-hosted inference pools: GPU cost split across tenants by tokens ---------------------------------


@dataclass(frozen=True)
class InferencePool:
    """Nodes of one cluster that serve some local models (settings.gpu.inference_pools YAML)."""

    name: str
    cluster: str
    nodes: tuple[str, ...]
    models: tuple[str, ...]  # normalized

    def has_node(self, cluster: str, node: str) -> bool:
        return cluster == self.cluster and node in self.nodes

    def serves(self, provider: str, model: str) -> bool:
        """Self-hosted calls are priced under provider `local` in the LLM price table."""
        return normalize(provider) == "local" and normalize(model) in self.models


def parse_inference_pools(document: Mapping[str, Any] | None) -> tuple[InferencePool, ...]:
    pools = []
    for entry in (document or {}).get("pools") or []:
        name = str(entry.get("name") or "").strip()
        nodes = tuple(str(n) for n in entry.get("nodes") or ())
        models = tuple(normalize(str(m)) for m in entry.get("models") or ())
        if not name or not str(entry.get("cluster") or "").strip() or not nodes or not models:
            raise ValueError(f"inference pool {name or '?'}: needs a name, a cluster, nodes and models")
        pools.append(InferencePool(name, str(entry["cluster"]), nodes, models))
    if len({p.name for p in pools}) != len(pools):
        raise ValueError("inference pool names must be unique")
    return tuple(pools)


def load_inference_pools(path: Path | None) -> tuple[InferencePool, ...]:
    """No file configured means no inference pools."""
    return parse_inference_pools(yaml.safe_load(path.read_text())) if path else ()


@dataclass(frozen=True)
class InferenceShare:
    tenant: str  # IDLE_KEY when no tokens were served
    tokens: int
    cost_usd: Decimal
    usd_per_mtok: Decimal | None  # cost_usd per million of the tenant's tokens, half-even 12 places


def allocate_inference_pool(pool_cost: Decimal, tokens_by_tenant: Mapping[str, int]) -> list[InferenceShare]:
    """Split an inference pool's GPU cost across tenants by tokens (same apportionment as pool shares).
    Tenants with no tokens get no share; if nobody used the pool, the cost is the `__idle__` share."""
    if any(t < 0 for t in tokens_by_tenant.values()):
        raise ValueError("token counts must be >= 0")
    served = {tenant: tokens for tenant, tokens in tokens_by_tenant.items() if tokens > 0}
    total = sum(served.values())
    pool = Fraction(pool_cost)
    if total == 0:
        return [InferenceShare(IDLE_KEY, 0, apportion(pool_cost, [(IDLE_KEY, pool)])[IDLE_KEY], None)]
    costs = apportion(pool_cost, sorted((tenant, pool * tokens / total) for tenant, tokens in served.items()))
    return [
        InferenceShare(tenant, tokens, costs[tenant], rounded(Fraction(costs[tenant]) * 1_000_000 / tokens, MONEY_PLACES))
        for tenant, tokens in sorted(served.items())
    ]


def tokens_by_tenant(
    cost_lines: Iterable[Mapping[str, Any]], pool: InferencePool, window_start: dt.datetime, window_end: dt.datetime,
) -> dict[str, int]:
    """Input + output tokens of the LLM cost lines the pool's models served in [window_start, window_end)."""
    tokens: dict[str, int] = {}
    for line in cost_lines:
        if line["source"] != "llm" or not pool.serves(line["provider"], line["model"]):
            continue
        if window_start <= line["event_time"] < window_end:
            tokens[line["tenant"]] = tokens.get(line["tenant"], 0) + line["input_tokens"] + line["output_tokens"]
    return tokens


def inference_pool_allocations(
    pool: InferencePool,
    window_start: dt.datetime,
    window_end: dt.datetime,
    node_allocations: Iterable[Mapping[str, Any]],
    cost_lines: Iterable[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """`inference_tenant` allocation records for one inference pool and window, from the raw cost lines."""
    return inference_allocations(pool, window_start, window_end, node_allocations,
                                 tokens_by_tenant(cost_lines, pool, window_start, window_end))


def inference_allocations(
    pool: InferencePool,
    window_start: dt.datetime,
    window_end: dt.datetime,
    node_allocations: Iterable[Mapping[str, Any]],
    usage: Mapping[str, int],
) -> list[dict[str, Any]]:
    """`inference_tenant` allocation records for one inference pool and window, from tokens per tenant.

    The pool's cost is the sum of its node pool-windows' costs (from their allocation records of the same
    window); it is re-attributed to tenants by tokens. These records are a showback view of cost already
    carried by the nodes' own allocations and cost lines: they must not be added to them.
    """
    node_costs: dict[str, Mapping[str, Any]] = {}
    for allocation in node_allocations:
        if (pool.has_node(allocation["cluster"], allocation["node"]) and allocation["window_start"] == window_start
                and allocation["kind"] != "inference_tenant"):
            node_costs.setdefault(allocation["pool"], allocation)
    pool_cost = usd(sum(_units(Decimal(a["pool_cost_usd"]), "pool_cost_usd") for a in node_costs.values()))
    shares = allocate_inference_pool(pool_cost, usage)
    total_tokens = sum(s.tokens for s in shares)
    records = []
    for share in shares:
        idle = share.tenant == IDLE_KEY
        records.append({
            "allocation_id": allocation_id(pool.name, window_start, window_end, f"inference:{share.tenant}"),
            "window_start": window_start,
            "window_end": window_end,
            "pool": pool.name,
            "cluster": pool.cluster,
            "node": ",".join(pool.nodes),
            "gpu_model": ",".join(sorted({a["gpu_model"] for a in node_costs.values()})),
            "capacity_type": ",".join(sorted({a["capacity_type"] for a in node_costs.values()})),
            "kind": "idle" if idle else "inference_tenant",
            "tenant": UNALLOCATED if idle else share.tenant,
            "team": UNALLOCATED,
            "namespace": None,
            "job": None,
            "charged_gpu_seconds": usd(0),
            "share": rounded(Fraction(share.tokens, total_tokens) if total_tokens else Fraction(1), 18),
            "direct_cost_usd": usd(0) if idle else share.cost_usd,
            "idle_cost_usd": share.cost_usd if idle else usd(0),
            "cost_usd": share.cost_usd,
            "pool_cost_usd": pool_cost,
            "idle_policy": "tokens",
            "tokens": share.tokens,
            "usd_per_mtok": share.usd_per_mtok,
            "price_version": "+".join(sorted({a["price_version"] for a in node_costs.values()})) or UNPRICED_VERSION,
            "late": any(a["late"] for a in node_costs.values()),
        })
    return records

