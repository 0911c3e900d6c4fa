"""GPU recommendations: a job's profile -> the cheapest GPU type (or MIG slice) that fits it with headroom, a
spot + checkpoint template when the job can checkpoint, and the idle / over-provisioned flags.

Profile (`JobProfile`), built from collected usage.gpu.v1 windows by `profiles_from_events` or read from JSON
lines: GPUs per job, duration, peak and mean memory per GPU, utilization mean/p50/p95 (used / requested
GPU-seconds per GPU-window), interruptions (gaps in the job's windows), and optionally the measured checkpoint
write time and restart time.

Fit (per GPU): memory  peak_memory x (1 + headroom) <= the type's (or slice's) memory;
               compute p95 utilization x the current type's TFLOPS x (1 + headroom) <= the type's (slice: its
               fraction of the GPU's) TFLOPS. An unknown current type skips the compute rule (flag compute_unknown).
               Both needs are capped at the current GPU's (or slice's) capacity: the job demonstrably runs there,
               so headroom alone never rules out the GPU it has.
MIG slices are considered only for single-GPU jobs. Options are priced at `at` (gpu_prices.yaml, the same table
attribution uses) on the job's own capacity type (on_prem: only models with an on-prem entry, i.e. owned;
reserved: models with a reservation price), or on `capacity_type` when given; the cheapest fitting option is
recommended and ties keep the current model, so the saving is never negative.

Spot + checkpoint (Young's first-order optimum, which Daly's expansion reduces to when C << M):
    interval  tau = sqrt(2 C M)        C: checkpoint write time, M: mean time between interruptions = 1/rate
    overhead      = C / tau + (tau / 2 + R) / M     (checkpoint writes + expected lost work and restart R per
                                                     interruption; R defaults to C)
    spot cost     = on-demand-equivalent hours x (1 + overhead) x spot $/h x GPUs x fraction
A template is offered when the job can checkpoint (C known), the recommended type has spot and on-demand prices,
the overhead is at most `max_spot_overhead` and spot is cheaper than on-demand. Rate: the job's own interruptions per hour when it ran on spot, else the
type's spot_interruptions_per_hour from gpu_types.yaml.

Money is exact: Fractions inside, Decimal with 12 places out (like ClickHouse's Decimal(38, 12)); ratios 6 places.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from prismops.errors import FieldRuleError
from prismops.finops.gpu_pricing import GpuCatalog, normalize_model

GIB = 2**30
MONEY = Decimal("0.000000000001")
RATIO = Decimal("0.000001")
IDLE_UTILIZATION = Decimal("0.05")
OVER_PROVISIONED_UTILIZATION = Decimal("0.30")


class InvalidProfile(FieldRuleError):
    """A job profile broke a rule (field and rule named)."""


@dataclass(frozen=True)
class GpuType:
    gpu_model: str
    memory_gib: int
    fp16_tflops: Decimal
    bf16_tflops: Decimal
    spot_interruptions_per_hour: Decimal


@dataclass(frozen=True)
class GpuTypeCatalog:
    version: str
    types: tuple[GpuType, ...]

    def get(self, gpu_model: str | None) -> GpuType | None:
        wanted = normalize_model(gpu_model or "")
        return next((t for t in self.types if normalize_model(t.gpu_model) == wanted), None)


def parse_gpu_types(document: Mapping[str, Any]) -> GpuTypeCatalog:
    types = []
    for index, entry in enumerate(document.get("types") or []):
        where = f"types[{index}]"
        try:
            types.append(GpuType(
                gpu_model=str(entry["gpu_model"]), memory_gib=int(entry["memory_gib"]),
                fp16_tflops=Decimal(str(entry["fp16_tflops"])), bf16_tflops=Decimal(str(entry["bf16_tflops"])),
                spot_interruptions_per_hour=Decimal(str(entry.get("spot_interruptions_per_hour", "0"))),
            ))
        except (KeyError, ValueError, ArithmeticError) as exc:
            raise ValueError(f"GPU types {where}: {exc!r} (needs gpu_model, memory_gib, fp16_tflops, bf16_tflops)") from None
    return GpuTypeCatalog(str(document.get("version", "unversioned")), tuple(types))


def load_gpu_types(path: Path | None = None) -> GpuTypeCatalog:
    """The YAML at `path`, or the bundled finops/gpu_types.yaml."""
    text = path.read_text() if path else resources.files("prismops.finops").joinpath("gpu_types.yaml").read_text()
    return parse_gpu_types(yaml.safe_load(text))


def slice_memory_gib(profile: str) -> int:
    """`3g.40gb` -> 40."""
    match = re.fullmatch(r"\d+g\.(\d+)gb", profile.strip().lower())
    if not match:
        raise ValueError(f"MIG profile {profile!r} is not of the form <n>g.<m>gb")
    return int(match.group(1))


@dataclass(frozen=True)
class JobProfile:
    tenant: str
    job: str
    gpu_model: str
    capacity_type: str
    gpus: int
    duration_s: Decimal
    peak_memory_bytes: int
    mean_memory_bytes: int
    util_mean: Decimal
    util_p50: Decimal
    util_p95: Decimal
    interruptions: int = 0
    mig_profile: str | None = None
    checkpoint_cost_s: Decimal | None = None
    restart_s: Decimal | None = None
    windows: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "profile") -> "JobProfile":
        def number(name: str, required: bool = True) -> Decimal | None:
            value = raw.get(name)
            if value is None:
                if required:
                    raise InvalidProfile(f"{where}.{name}", "required", "is missing")
                return None
            try:
                result = Decimal(str(value))
            except ArithmeticError:
                raise InvalidProfile(f"{where}.{name}", "number", f"{value!r} is not a number") from None
            if not result.is_finite() or result < 0:
                raise InvalidProfile(f"{where}.{name}", "non_negative", f"must be a number >= 0, got {value!r}")
            return result

        for name in ("tenant", "job", "gpu_model"):
            if not raw.get(name):
                raise InvalidProfile(f"{where}.{name}", "required", "is missing")
        utils = {name: number(name) for name in ("util_mean", "util_p50", "util_p95")}
        for name, value in utils.items():
            if value is not None and value > 1:
                raise InvalidProfile(f"{where}.{name}", "ratio_0_1", f"utilization is a ratio from 0 to 1, got {value}")
        gpus = number("gpus")
        if gpus is None or gpus < 1 or gpus != gpus.to_integral_value():
            raise InvalidProfile(f"{where}.gpus", "whole_gpus", f"must be a whole number >= 1, got {raw.get('gpus')!r}")
        return cls(
            tenant=str(raw["tenant"]), job=str(raw["job"]), gpu_model=str(raw["gpu_model"]),
            capacity_type=str(raw.get("capacity_type") or "on_demand"), gpus=int(gpus),
            duration_s=number("duration_s"), peak_memory_bytes=int(number("peak_memory_bytes")),
            mean_memory_bytes=int(number("mean_memory_bytes", False) or 0), util_mean=utils["util_mean"],
            util_p50=utils["util_p50"], util_p95=utils["util_p95"], interruptions=int(number("interruptions", False) or 0),
            mig_profile=raw.get("mig_profile") or None, checkpoint_cost_s=number("checkpoint_cost_s", False),
            restart_s=number("restart_s", False), windows=int(number("windows", False) or 0),
        )


def percentile(values: Iterable[Decimal], q: int) -> Decimal:
    """Nearest-rank percentile (the smallest value with at least q% of the values at or below it)."""
    ordered = sorted(values)
    if not ordered:
        return Decimal(0)
    rank = max(1, -(-q * len(ordered) // 100))
    return ordered[rank - 1]


def _ratio(value: Fraction | Decimal) -> Decimal:
    value = Fraction(value)
    return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(RATIO, rounding=ROUND_HALF_EVEN)


def _money(value: Fraction) -> Decimal:
    with localcontext() as context:
        context.prec = 60
        return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(MONEY, rounding=ROUND_HALF_EVEN)


def profiles_from_events(events: Iterable[Mapping[str, Any]]) -> list[JobProfile]:
    """Job profiles from usage.gpu.v1 events (decoded, or JSON with decimal strings and ISO times).

    A job is (tenant, job, or namespace when job is empty). Per GPU-window: utilization = used / requested;
    duration = the sum over the job's windows of the longest GPU hold in the window (requested / fraction);
    GPUs = the most distinct GPUs (node, index, slice) in one window; interruptions = gaps between the job's
    windows (a window that starts after the previous one ended). The events' order does not matter: each job's
    events are taken in window, GPU and event-id order, so ties (the most common model, capacity type, MIG profile)
    break the same way whether the events come from a file, a topic or ClickHouse."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for event in events:
        job = event.get("job") or event.get("namespace") or "unnamed"
        groups.setdefault((str(event["tenant"]), str(job)), []).append(event)
    for items in groups.values():
        items.sort(key=_event_order)
    profiles = []
    for (tenant, job), items in sorted(groups.items()):
        windows: dict[Any, list[Mapping[str, Any]]] = {}
        for event in items:
            windows.setdefault((_time(event["window_start"]), _time(event["window_end"])), []).append(event)
        utils, memories = [], []
        duration = Fraction(0)
        gpus = 0
        for (_start, _end), members in windows.items():
            gpus = max(gpus, len({(e["node"], e["gpu_index"], e.get("mig_profile")) for e in members}))
            held = Fraction(0)
            for event in members:
                requested, used = Fraction(Decimal(str(event["requested_gpu_seconds"]))), Fraction(Decimal(str(event["used_gpu_seconds"])))
                fraction = Fraction(Decimal(str(event.get("gpu_fraction") or 1)))
                if requested > 0:
                    utils.append(_ratio(min(Fraction(1), used / requested)))
                    held = max(held, requested / fraction)
                memories.append(int(event.get("memory_bytes") or 0))
            duration += held
        ordered = sorted(windows)
        gaps = sum(1 for previous, current in zip(ordered, ordered[1:]) if current[0] > previous[1])
        models = Counter(str(e["gpu_model"]) for e in items)
        capacity = Counter(str(e["capacity_type"]) for e in items)
        migs = Counter(e.get("mig_profile") for e in items)
        profiles.append(JobProfile(
            tenant=tenant, job=job, gpu_model=models.most_common(1)[0][0], capacity_type=capacity.most_common(1)[0][0],
            gpus=max(gpus, 1), duration_s=_ratio(duration), peak_memory_bytes=max(memories, default=0),
            mean_memory_bytes=sum(memories) // max(len(memories), 1),
            util_mean=_ratio(sum((Fraction(u) for u in utils), Fraction(0)) / len(utils)) if utils else Decimal(0),
            util_p50=percentile(utils, 50), util_p95=percentile(utils, 95), interruptions=gaps,
            mig_profile=migs.most_common(1)[0][0], windows=len(windows),
        ))
    return profiles


def _time(value: Any) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def _event_order(event: Mapping[str, Any]) -> tuple[Any, ...]:
    return (_time(event["window_start"]), _time(event["window_end"]), str(event["node"]), int(event["gpu_index"]),
            str(event.get("mig_profile") or ""), str(event.get("event_id") or ""))


@dataclass(frozen=True)
class GpuOption:
    gpu_model: str
    mig_profile: str | None
    capacity_type: str
    gpus: int
    fraction: Fraction
    memory_gib: int
    tflops: Decimal
    usd_per_hour: Fraction  # for the whole job: GPUs x fraction x $/GPU-hour
    job_cost_usd: Fraction
    price_version: str

    def as_dict(self) -> dict[str, Any]:
        return {"gpu_model": self.gpu_model, "mig_profile": self.mig_profile, "capacity_type": self.capacity_type,
                "gpus": self.gpus, "gpu_fraction": _ratio(self.fraction), "memory_gib": self.memory_gib,
                "tflops": self.tflops, "usd_per_hour": _money(self.usd_per_hour),
                "job_cost_usd": _money(self.job_cost_usd), "price_version": self.price_version}


@dataclass(frozen=True)
class SpotTemplate:
    gpu_model: str
    mig_profile: str | None
    interruptions_per_hour: Decimal
    checkpoint_cost_s: Decimal
    restart_s: Decimal
    checkpoint_interval_s: int
    expected_overhead: Decimal
    on_demand_cost_usd: Decimal
    spot_cost_usd: Decimal
    savings_usd: Decimal
    price_version: str


@dataclass
class Recommendation:
    tenant: str
    job: str
    profile: JobProfile
    current: GpuOption | None
    recommended: GpuOption | None
    savings_usd: Decimal | None
    reason: str
    spot: SpotTemplate | None = None
    flags: list[str] = field(default_factory=list)
    wasted_usd: Decimal = Decimal(0)
    needed_memory_gib: Decimal = Decimal(0)
    needed_tflops: Decimal | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "job": self.job, "profile": self.profile.as_dict(),
            "current": self.current.as_dict() if self.current else None,
            "recommended": self.recommended.as_dict() if self.recommended else None,
            "savings_usd": self.savings_usd, "reason": self.reason,
            "spot": asdict(self.spot) if self.spot else None, "flags": self.flags, "wasted_usd": self.wasted_usd,
            "needed_memory_gib": self.needed_memory_gib, "needed_tflops": self.needed_tflops,
        }


def _tflops(gpu_type: GpuType, precision: str) -> Decimal:
    return gpu_type.bf16_tflops if precision == "bf16" else gpu_type.fp16_tflops


def _option(gpu_type: GpuType, profile: JobProfile, prices: GpuCatalog, capacity: str, at: dt.datetime,
            mig_profile: str | None, precision: str) -> GpuOption | None:
    price = prices.price_at(gpu_type.gpu_model, capacity, at)
    if price is None:
        return None
    fraction = Fraction(1) if mig_profile is None else prices.mig_fraction(gpu_type.gpu_model, mig_profile)
    memory = gpu_type.memory_gib if mig_profile is None else slice_memory_gib(mig_profile)
    tflops = _tflops(gpu_type, precision)
    if mig_profile is not None:
        tflops = (tflops * Decimal(fraction.numerator) / Decimal(fraction.denominator)).quantize(Decimal("0.001"), rounding=ROUND_DOWN)
    per_hour = profile.gpus * fraction * price.usd_per_gpu_hour
    return GpuOption(gpu_type.gpu_model, mig_profile, capacity, profile.gpus, fraction, memory, tflops, per_hour,
                     per_hour * Fraction(profile.duration_s) / 3600, price.version)


def recommend(
    profile: JobProfile, types: GpuTypeCatalog, prices: GpuCatalog, *, at: dt.datetime,
    headroom: Decimal = Decimal("0.2"), precision: str = "bf16", max_spot_overhead: Decimal = Decimal("0.15"),
    capacity_type: str | None = None,
) -> Recommendation:
    """The cheapest type or slice that fits `profile` with `headroom`, and a spot template."""
    capacity = capacity_type or profile.capacity_type
    grow = 1 + Fraction(headroom)
    needed_memory = Fraction(profile.peak_memory_bytes, GIB) * grow
    current_type = types.get(profile.gpu_model)
    flags: list[str] = []
    needed_tflops: Fraction | None = None
    if current_type is None:
        flags.append("compute_unknown")
    else:
        current_tflops = Fraction(_tflops(current_type, precision))
        if profile.mig_profile:
            current_tflops *= prices.mig_fraction(current_type.gpu_model, profile.mig_profile)
        # the job runs on its current GPU: headroom never asks for more than that GPU has
        needed_tflops = min(Fraction(profile.util_p95) * current_tflops * grow, current_tflops)
        current_memory = (slice_memory_gib(profile.mig_profile) if profile.mig_profile else current_type.memory_gib)
        needed_memory = min(needed_memory, Fraction(max(current_memory, 0)))

    current = None
    if current_type is not None:
        current = _option(current_type, profile, prices, profile.capacity_type, at, profile.mig_profile, precision)

    candidates: list[GpuOption] = []
    for gpu_type in types.types:
        slices: list[str | None] = [None]
        if profile.gpus == 1:
            slices += sorted(prices.mig_profiles.get(normalize_model(gpu_type.gpu_model), {}))
        for mig in slices:
            option = _option(gpu_type, profile, prices, capacity, at, mig, precision)
            if option is None or option.memory_gib < needed_memory:
                continue
            if needed_tflops is not None and Fraction(option.tflops) < needed_tflops:
                continue
            candidates.append(option)

    util_mean = profile.util_mean
    if util_mean < IDLE_UTILIZATION:
        flags.append("idle")
    elif util_mean < OVER_PROVISIONED_UTILIZATION:
        flags.append("over_provisioned")
    wasted = Decimal(0)
    if current is not None and ("idle" in flags or "over_provisioned" in flags):
        wasted = _money(current.job_cost_usd * (1 - Fraction(util_mean)))

    recommendation = Recommendation(
        tenant=profile.tenant, job=profile.job, profile=profile, current=current, recommended=None, savings_usd=None,
        reason="", flags=flags, wasted_usd=wasted, needed_memory_gib=_ratio(needed_memory),
        needed_tflops=_ratio(needed_tflops) if needed_tflops is not None else None,
    )
    if not candidates:
        recommendation.reason = (f"no GPU type or slice with a {capacity} price fits {_ratio(needed_memory)} GiB"
                                 + (f" and {_ratio(needed_tflops)} TFLOPS" if needed_tflops is not None else "")
                                 + f" per GPU (peak x (1 + {headroom}) headroom)")
        return recommendation

    def order(option: GpuOption) -> tuple[Any, ...]:
        same = normalize_model(option.gpu_model) == normalize_model(profile.gpu_model) and option.mig_profile == profile.mig_profile
        return (option.job_cost_usd, not same, option.gpu_model, option.mig_profile or "")

    best = min(candidates, key=order)
    recommendation.recommended = best
    if current is not None:
        recommendation.savings_usd = _money(current.job_cost_usd - best.job_cost_usd)
    what = best.gpu_model + (f" MIG {best.mig_profile}" if best.mig_profile else "")
    recommendation.reason = (f"{what} is the cheapest {capacity} option holding {_ratio(needed_memory)} GiB"
                             + (f" and {_ratio(needed_tflops)} TFLOPS" if needed_tflops is not None else "")
                             + " per GPU")
    recommendation.spot = spot_template(profile, best, types, prices, at=at, max_overhead=max_spot_overhead)
    if recommendation.spot is None and profile.checkpoint_cost_s is None:
        recommendation.flags.append("no_checkpoint_cost")
    return recommendation


def checkpoint_interval(checkpoint_cost_s: Decimal, mtbi_s: Fraction) -> int:
    """Young's optimum sqrt(2 C M), whole seconds (down)."""
    with localcontext() as context:
        context.prec = 40
        product = 2 * Decimal(checkpoint_cost_s) * Decimal(mtbi_s.numerator) / Decimal(mtbi_s.denominator)
        return int(product.sqrt().to_integral_value(rounding=ROUND_DOWN))


def spot_template(profile: JobProfile, option: GpuOption, types: GpuTypeCatalog, prices: GpuCatalog, *,
                  at: dt.datetime, max_overhead: Decimal = Decimal("0.15")) -> SpotTemplate | None:
    """Spot capacity with checkpoints every sqrt(2 C M) seconds, when it is tolerable and cheaper."""
    if profile.checkpoint_cost_s is None or profile.checkpoint_cost_s <= 0:
        return None
    spot = prices.price_at(option.gpu_model, "spot", at)
    on_demand = prices.price_at(option.gpu_model, "on_demand", at)
    gpu_type = types.get(option.gpu_model)
    if spot is None or on_demand is None or gpu_type is None:
        return None
    if profile.capacity_type == "spot" and profile.interruptions and profile.duration_s > 0:
        rate = Fraction(profile.interruptions) * 3600 / Fraction(profile.duration_s)
    else:
        rate = Fraction(gpu_type.spot_interruptions_per_hour)
    if rate <= 0:
        return None
    cost = Fraction(profile.checkpoint_cost_s)
    restart = Fraction(profile.restart_s) if profile.restart_s is not None else cost
    mtbi = 3600 / rate
    interval = checkpoint_interval(profile.checkpoint_cost_s, mtbi)
    if interval <= 0:
        return None
    overhead = cost / interval + (Fraction(interval, 2) + restart) / mtbi
    if overhead > Fraction(max_overhead):
        return None
    hours = Fraction(profile.duration_s) / 3600
    on_demand_cost = hours * option.gpus * option.fraction * on_demand.usd_per_gpu_hour
    spot_cost = hours * (1 + overhead) * option.gpus * option.fraction * spot.usd_per_gpu_hour
    if spot_cost >= on_demand_cost:
        return None
    return SpotTemplate(
        gpu_model=option.gpu_model, mig_profile=option.mig_profile, interruptions_per_hour=_ratio(rate),
        checkpoint_cost_s=profile.checkpoint_cost_s, restart_s=_ratio(restart), checkpoint_interval_s=interval,
        expected_overhead=_ratio(overhead), on_demand_cost_usd=_money(on_demand_cost),
        spot_cost_usd=_money(spot_cost), savings_usd=_money(on_demand_cost - spot_cost), price_version=spot.version,
    )


@dataclass(frozen=True)
class CapacityMix:
    """Reserved for the steady baseline, spot for the interruptible part of the rest, on-demand for the remainder."""

    gpu_model: str
    hours: int
    baseline_gpus: Decimal
    reserved_gpu_hours: Decimal
    spot_gpu_hours: Decimal
    on_demand_gpu_hours: Decimal
    all_on_demand_usd: Decimal
    mix_usd: Decimal
    monthly_difference_usd: Decimal  # what the mix saves per 730-hour month (negative: it costs more)
    price_versions: tuple[str, ...]


HOURS_PER_MONTH = 730


def capacity_mix(
    gpus_in_use_by_hour: list[Decimal], gpu_model: str, prices: GpuCatalog, *, at: dt.datetime,
    baseline_percentile: int = 50, interruptible_share: Decimal = Decimal(0),
) -> CapacityMix:
    """The capacity mix for a fleet whose GPUs in use, hour by hour, are `gpus_in_use_by_hour`.

    Reserved GPUs = the usage at `baseline_percentile` (nearest rank), paid for every hour whether used or not;
    the usage above them runs on spot for `interruptible_share` of it and on-demand for the rest. The
    difference to running everything on demand is scaled to a 730-hour month."""
    if not gpus_in_use_by_hour:
        raise ValueError("capacity mix needs at least one hour of usage")
    if not 0 <= interruptible_share <= 1:
        raise ValueError(f"interruptible_share must be from 0 to 1, got {interruptible_share}")
    rates = {}
    for capacity in ("on_demand", "spot", "reserved"):
        price = prices.price_at(gpu_model, capacity, at)
        if price is None:
            raise ValueError(f"{gpu_model} has no {capacity} price in effect at {at.isoformat()}")
        rates[capacity] = price
    hours = len(gpus_in_use_by_hour)
    baseline = Fraction(percentile(gpus_in_use_by_hour, baseline_percentile))
    used = [Fraction(u) for u in gpus_in_use_by_hour]
    above = sum((max(Fraction(0), u - baseline) for u in used), Fraction(0))
    spot_hours = above * Fraction(interruptible_share)
    on_demand_hours = above - spot_hours
    reserved_hours = baseline * hours
    all_on_demand = sum(used, Fraction(0)) * rates["on_demand"].usd_per_gpu_hour
    mix = (reserved_hours * rates["reserved"].usd_per_gpu_hour + spot_hours * rates["spot"].usd_per_gpu_hour
           + on_demand_hours * rates["on_demand"].usd_per_gpu_hour)
    return CapacityMix(
        gpu_model=gpu_model, hours=hours, baseline_gpus=_ratio(baseline), reserved_gpu_hours=_ratio(reserved_hours),
        spot_gpu_hours=_ratio(spot_hours), on_demand_gpu_hours=_ratio(on_demand_hours),
        all_on_demand_usd=_money(all_on_demand), mix_usd=_money(mix),
        monthly_difference_usd=_money((all_on_demand - mix) * HOURS_PER_MONTH / hours),
        price_versions=tuple(sorted({p.version for p in rates.values()})),
    )
