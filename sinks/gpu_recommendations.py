"""Rows of ClickHouse gpu_recommendations (migration 0016) from finops.gpu_recommendations results."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from prismops.finops.gpu_recommendations import Recommendation


def recommendation_rows(results: Iterable[Recommendation], *, computed_at: dt.datetime, types_version: str) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        p, best, spot = r.profile, r.recommended, r.spot
        current = r.current.as_dict() if r.current else None
        chosen = best.as_dict() if best else None
        rows.append({
            "computed_at": computed_at.replace(microsecond=0),
            "tenant": r.tenant, "job": r.job, "gpu_model": p.gpu_model, "mig_profile": p.mig_profile,
            "capacity_type": p.capacity_type, "gpus": p.gpus, "duration_s": p.duration_s,
            "peak_memory_bytes": p.peak_memory_bytes, "util_mean": p.util_mean, "util_p50": p.util_p50,
            "util_p95": p.util_p95, "interruptions": p.interruptions,
            "current_cost_usd": current["job_cost_usd"] if current else None,
            "recommended_gpu_model": best.gpu_model if best else None,
            "recommended_mig_profile": best.mig_profile if best else None,
            "recommended_cost_usd": chosen["job_cost_usd"] if chosen else None,
            "savings_usd": r.savings_usd,
            "spot_checkpoint_interval_s": spot.checkpoint_interval_s if spot else None,
            "spot_expected_overhead": spot.expected_overhead if spot else None,
            "spot_cost_usd": spot.spot_cost_usd if spot else None,
            "spot_savings_usd": spot.savings_usd if spot else None,
            "flags": list(r.flags), "wasted_usd": r.wasted_usd, "reason": r.reason,
            "price_version": chosen["price_version"] if chosen else "", "types_version": types_version,
        })
    return rows
