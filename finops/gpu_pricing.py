"""GPU prices ($/GPU-hour by gpu_model and capacity_type, effective-dated) and MIG profile fractions.

Cloud capacity (on_demand, spot, reserved) has a list price. On-prem GPUs are AMORTIZED:

    usd_per_gpu_hour = purchase_usd / amortization_hours + power_and_hosting_usd_per_hour

Rates are kept as exact fractions (purchase / hours rarely ends in decimal); money is rounded only once,
when a pool-window's cost is computed (`prismops.finops.gpu_allocation.pool_window_cost`).

Each entry applies from its `effective_from` until the next entry for the same (gpu_model, capacity_type); a
window is priced by the entry in effect at its start. A (gpu_model, capacity_type) with no entry in effect is
unpriced: `price_at` returns None and the pool is flagged, never priced at zero silently.
GPU model names match case-insensitively (surrounding spaces ignored).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from prismops.errors import FieldRuleError

CAPACITY_TYPES = ("on_demand", "spot", "reserved", "on_prem")
UNPRICED_VERSION = "unpriced"


class UnknownMigProfile(FieldRuleError):
    """A MIG profile the catalog has no fraction for, on that GPU model."""

    def __init__(self, gpu_model: str, profile: str, known: list[str]):
        shown = ", ".join(known) if known else "none: this GPU model has no MIG table"
        super().__init__(
            "mig_profile", "known_mig_profile", f"{profile!r} is not a MIG profile of {gpu_model} (known: {shown})",
        )


def normalize_model(gpu_model: str) -> str:
    return gpu_model.strip().lower()


@dataclass(frozen=True)
class GpuPrice:
    gpu_model: str
    capacity_type: str
    effective_from: dt.datetime
    usd_per_gpu_hour: Fraction
    basis: str  # "list" or "amortized"
    version: str  # "<table version>@<effective date>", carried on every allocation and cost line


@dataclass(frozen=True)
class NodeInventory:
    """A node's physical GPUs, for collectors that do not report idle GPUs."""

    cluster: str
    node: str
    gpus: int
    gpu_model: str
    capacity_type: str


@dataclass(frozen=True)
class GpuCatalog:
    version: str
    effective_from: dt.datetime
    prices: Mapping[tuple[str, str], tuple[GpuPrice, ...]]  # oldest first
    mig_profiles: Mapping[str, Mapping[str, Fraction]] = field(default_factory=dict)
    nodes: Mapping[tuple[str, str], NodeInventory] = field(default_factory=dict)

    def price_at(self, gpu_model: str, capacity_type: str, moment: dt.datetime) -> GpuPrice | None:
        """The entry in effect at `moment`, or None (unpriced)."""
        in_effect = None
        for price in self.prices.get((normalize_model(gpu_model), capacity_type), ()):
            if price.effective_from <= moment:
                in_effect = price
        return in_effect

    def mig_fraction(self, gpu_model: str, profile: str) -> Fraction:
        table = self.mig_profiles.get(normalize_model(gpu_model), {})
        fraction = table.get(profile.strip().lower())
        if fraction is None:
            raise UnknownMigProfile(gpu_model, profile, sorted(table))
        return fraction

    def node_inventory(self, cluster: str, node: str) -> NodeInventory | None:
        return self.nodes.get((cluster, node))


def _timestamp(raw: Any, where: str) -> dt.datetime:
    if isinstance(raw, dt.datetime):
        moment = raw
    else:
        try:
            moment = dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"{where}: effective_from {raw!r} is not an ISO-8601 timestamp") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _exact(entry: Mapping[str, Any], name: str, where: str, *, positive: bool = False) -> Fraction:
    """A decimal string (or an integer) as an exact Fraction; YAML floats are refused: money must be exact."""
    raw = entry.get(name)
    if raw is None or isinstance(raw, (float, bool)):
        raise ValueError(f"{where}: {name} must be a quoted decimal string")
    try:
        value = Fraction(Decimal(str(raw)))
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"{where}: {name} {raw!r} is not a decimal number") from exc
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{where}: {name} must be {'> 0' if positive else '>= 0'}, got {raw}")
    return value


def _hourly_rate(entry: Mapping[str, Any], where: str) -> tuple[Fraction, str]:
    if entry["capacity_type"] == "on_prem":
        if "usd_per_gpu_hour" in entry:
            raise ValueError(f"{where}: on_prem prices are amortized: give purchase_usd, amortization_hours and "
                             "power_and_hosting_usd_per_hour, not usd_per_gpu_hour")
        purchase = _exact(entry, "purchase_usd", where)
        hours = _exact(entry, "amortization_hours", where, positive=True)
        running = _exact(entry, "power_and_hosting_usd_per_hour", where)
        return purchase / hours + running, "amortized"
    return _exact(entry, "usd_per_gpu_hour", where), "list"


def _mig_fraction(raw: Any, where: str) -> Fraction:
    if isinstance(raw, (float, bool)) or raw is None:
        raise ValueError(f"{where}: MIG fractions are quoted strings such as \"1/7\"")
    try:
        value = Fraction(str(raw))
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"{where}: {raw!r} is not a fraction") from exc
    if not 0 < value <= 1:
        raise ValueError(f"{where}: a MIG slice is more than 0 and at most 1 GPU, got {raw}")
    return value


def parse_gpu_catalog(document: Mapping[str, Any]) -> GpuCatalog:
    version = str(document["version"])
    table_from = _timestamp(document["effective_from"], "gpu price table")
    prices: dict[tuple[str, str], list[GpuPrice]] = {}
    for entry in document.get("prices") or []:
        where = f"gpu price {entry.get('gpu_model')}/{entry.get('capacity_type')}"
        if not str(entry.get("gpu_model") or "").strip():
            raise ValueError(f"{where}: gpu_model is required")
        if entry.get("capacity_type") not in CAPACITY_TYPES:
            raise ValueError(f"{where}: capacity_type must be one of {', '.join(CAPACITY_TYPES)}")
        effective = _timestamp(entry["effective_from"], where) if "effective_from" in entry else table_from
        rate, basis = _hourly_rate(entry, where)
        key = (normalize_model(entry["gpu_model"]), entry["capacity_type"])
        if any(p.effective_from == effective for p in prices.get(key, [])):
            raise ValueError(f"{where}: two entries take effect at {effective.isoformat()}")
        prices.setdefault(key, []).append(GpuPrice(
            gpu_model=key[0], capacity_type=key[1], effective_from=effective, usd_per_gpu_hour=rate, basis=basis,
            version=f"{version}@{effective.date().isoformat()}",
        ))
    mig = {
        normalize_model(model): {
            str(profile).strip().lower(): _mig_fraction(raw, f"MIG profile {model}/{profile}")
            for profile, raw in (profiles or {}).items()
        }
        for model, profiles in (document.get("mig_profiles") or {}).items()
    }
    nodes = {}
    for entry in document.get("nodes") or []:
        inventory = NodeInventory(
            cluster=str(entry["cluster"]), node=str(entry["node"]), gpus=int(entry["gpus"]),
            gpu_model=str(entry["gpu_model"]), capacity_type=str(entry["capacity_type"]),
        )
        if inventory.gpus < 1 or inventory.capacity_type not in CAPACITY_TYPES:
            raise ValueError(
                f"gpu node inventory {inventory.cluster}/{inventory.node}: needs gpus >= 1 and a known capacity_type",
            )
        nodes[(inventory.cluster, inventory.node)] = inventory
    return GpuCatalog(
        version=version, effective_from=table_from,
        prices={key: tuple(sorted(entries, key=lambda p: p.effective_from)) for key, entries in prices.items()},
        mig_profiles=mig, nodes=nodes,
    )


def load_gpu_catalog(path: Path | None = None) -> GpuCatalog:
    """The YAML at `path` (settings.gpu.price_table), or the bundled `finops/gpu_prices.yaml`."""
    text = path.read_text() if path else resources.files("prismops.finops").joinpath("gpu_prices.yaml").read_text()
    return parse_gpu_catalog(yaml.safe_load(text))
