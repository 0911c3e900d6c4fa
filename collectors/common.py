"""What every collector shares: the window grid, deterministic event ids, GPU model names and input errors.

Windows: collectors report closed, epoch-aligned windows [start, start + window_s) (window_s is the GPU
attribution window, settings.gpu.window_s), so one event never covers more than the attribution window and a
collector's cursor is simply the end of the last window it produced.

Event ids are UUIDv5 of (source, cluster, node, GPU, slice, workload, window start): the same window collected
twice (a restart between producing and saving the cursor) gets the same ids, and downstream deduplicates it.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator, Mapping
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction
from typing import Any

from prismops.errors import FieldRuleError

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
MICRO = Decimal("0.000001")
# The namespace of every collector event id (a fixed, random UUID: never change it, ids would change).
EVENT_ID_NAMESPACE = uuid.UUID("5b0f6c1e-8a51-4f0e-9d0c-6f1d3c7a2e41")


class CollectorInputError(FieldRuleError):
    """An input (exporter text, sacct output, pod list) broke a rule; names the field and the rule."""


def event_id(*parts: object) -> str:
    """Deterministic id of one event: the same parts always give the same id."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, "\x1f".join("" if p is None else str(p) for p in parts)))


def aligned(moment: dt.datetime, window_s: int) -> dt.datetime:
    """The start of the window that holds `moment`."""
    seconds = int((moment - EPOCH).total_seconds())
    return EPOCH + dt.timedelta(seconds=seconds - seconds % window_s)


def closed_windows(since: dt.datetime, now: dt.datetime, window_s: int) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    """Every whole window from `since` (aligned down) that has ended by `now`, oldest first."""
    start = aligned(since, window_s)
    step = dt.timedelta(seconds=window_s)
    while start + step <= now:
        yield start, start + step
        start += step


def overlap_seconds(start: dt.datetime, end: dt.datetime, w_start: dt.datetime, w_end: dt.datetime) -> Decimal:
    """Seconds of [start, end) inside [w_start, w_end), exact to the microsecond."""
    lo, hi = max(start, w_start), min(end, w_end)
    if hi <= lo:
        return Decimal(0)
    delta = hi - lo
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / 1_000_000


def gpu_seconds(seconds: Decimal, fraction: Fraction | Decimal, share: Decimal = Decimal(1)) -> Decimal:
    """seconds x fraction x share, rounded DOWN to the event's 6 places (never above the GPU's capacity)."""
    exact = Fraction(seconds) * Fraction(fraction) * Fraction(share)
    return (Decimal(exact.numerator) / Decimal(exact.denominator)).quantize(MICRO, rounding=ROUND_DOWN)


def fraction_decimal(fraction: Fraction) -> Decimal:
    """A GPU fraction as the event's decimal(9, 6) (1/7 -> 0.142857)."""
    return (Decimal(fraction.numerator) / Decimal(fraction.denominator)).quantize(MICRO, rounding=ROUND_DOWN)


# Product names as drivers and schedulers print them -> the GPU model names of finops/gpu_prices.yaml.
# The first pattern that matches wins; an unknown name is kept as it is (its pools are then flagged unpriced).
GPU_MODEL_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"h100.*(80\s*gb|hbm3|sxm)", "H100-SXM-80GB"),
    (r"^h100$", "H100-SXM-80GB"),
    (r"a100.*80\s*gb", "A100-SXM4-80GB"),
    (r"a100.*40\s*gb", "A100-SXM4-40GB"),
    (r"^a100$", "A100-SXM4-80GB"),
    (r"\bl4\b", "L4-24GB"),
)


def catalog_model(name: str | None, overrides: Mapping[str, str] | None = None) -> str:
    """Map a product name (`NVIDIA H100 80GB HBM3`, Slurm's `a100`) to the catalog's model name."""
    raw = (name or "").strip()
    if overrides and raw in overrides:
        return overrides[raw]
    lowered = raw.lower().replace("nvidia", "").replace("-", " ").strip()
    for pattern, model in GPU_MODEL_PATTERNS:
        if re.search(pattern, lowered):
            return model
    return raw or "unknown"


def gpu_event(
    *, source: str, window_start: dt.datetime, window_end: dt.datetime, cluster: str, node: str, gpu_model: str,
    gpu_index: int, fraction: Fraction, mig_profile: str | None, capacity_type: str, tenant: str,
    team: str | None, namespace: str | None, job: str | None, requested: Decimal, used: Decimal,
    memory_bytes: int, labels: Mapping[str, str], id_parts: tuple[object, ...],
) -> dict[str, Any]:
    """One usage.gpu.v1 event; its id is deterministic from the source, the pool, the slice and the window."""
    return {
        "event_id": event_id(source, cluster, node, gpu_index, mig_profile, *id_parts, window_start.isoformat()),
        "window_start": window_start,
        "window_end": window_end,
        "cluster": cluster,
        "node": node,
        "gpu_model": gpu_model,
        "gpu_index": gpu_index,
        "gpu_fraction": fraction_decimal(fraction),
        "mig_profile": mig_profile,
        "capacity_type": capacity_type,
        "tenant": tenant,
        "team": team,
        "namespace": namespace,
        "job": job,
        "requested_gpu_seconds": requested.quantize(MICRO, rounding=ROUND_DOWN),
        "used_gpu_seconds": used.quantize(MICRO, rounding=ROUND_DOWN),
        "memory_bytes": max(0, int(memory_bytes)),
        "source": source,
        "labels": {k: v for k, v in labels.items() if v not in (None, "")},
    }


def parse_decimal(field: str, raw: object) -> Decimal:
    try:
        value = Decimal(str(raw).strip())
    except Exception:
        raise CollectorInputError(field, "number", f"{str(raw)[:64]!r} is not a number") from None
    if not value.is_finite():
        raise CollectorInputError(field, "finite", f"{raw!r} is not a finite number")
    return value
