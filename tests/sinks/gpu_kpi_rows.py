"""Hand-checkable gpu_allocations records for the GPU KPI tests (chdb and the ClickHouse 18.16 server).

Day 2026-11-10, one-hour windows W0..W3 from 00:00, bundled prices (H100 on-demand 6.88, spot 2.50, A100-80GB
on-demand 5.12 $/GPU-hour):

- c1/n1: 2 x H100 on_demand, proportional idle. W0: j1 3600 + j2 1800 GPU-s; W1: j1 3600; W3: j1 7200.
  Cost 3 x 13.76 = 41.28; capacity 21600 GPU-s = 6 h; utilized 16200 -> 75.00 %; 6.88 $/GPU-h.
- c1/n2: 1 x H100 spot, bucket idle. W0: j3 2700; W1: j3 3600; W2: nothing (all idle); W3: j2 1800.
  Cost 4 x 2.50 = 10.00; capacity 14400 = 4 h; utilized 8100 -> 56.25 %; 2.50 $/GPU-h;
  on-demand equivalent 4 x 6.88 = 27.52, savings 17.52, rate 17.52 / 27.52 = 0.636628.
- c1/n3: 1 x A100-80GB on_demand, proportional. W0: j4 charged 0 (share 0): capacity unknown. Cost 5.12.
- an inference pool's rows (idle_policy tokens) that re-attribute c1/n1's W0 cost: left out of every KPI.
Interruptions: j1 W1 -> W3 (gap 3600 s, c1/n1), j2 W0 on c1/n1 -> W3 on c1/n2 (gap 7200 s, c1/n1): c1/n1 has 2,
mean restart gap 5400 s.
Totals: cost 56.40; known cost 51.28 over 36000 GPU-s = 10 h -> 5.128 $/GPU-h; utilized 24300 -> 67.50 %.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction
from typing import Any

from prismops.finops.gpu_allocation import allocate_pool_cost, allocation_id, rounded
from prismops.finops.gpu_windows import Workload

DAY = dt.date(2026, 11, 10)
START = dt.datetime(2026, 11, 10, tzinfo=dt.timezone.utc)
HOUR = dt.timedelta(hours=1)

POOLS = {  # pool: (gpus, gpu_model, capacity_type, $/GPU-hour, idle policy)
    "c1/n1": (2, "H100-SXM-80GB", "on_demand", Decimal("6.88"), "proportional"),
    "c1/n2": (1, "H100-SXM-80GB", "spot", Decimal("2.50"), "bucket"),
    "c1/n3": (1, "A100-SXM4-80GB", "on_demand", Decimal("5.12"), "proportional"),
}
USAGE = {  # (pool, window index): [(tenant, job, charged GPU-seconds)]
    ("c1/n1", 0): [("acme", "j1", 3600), ("beta", "j2", 1800)],
    ("c1/n1", 1): [("acme", "j1", 3600)],
    ("c1/n1", 3): [("acme", "j1", 7200)],
    ("c1/n2", 0): [("acme", "j3", 2700)],
    ("c1/n2", 1): [("acme", "j3", 3600)],
    ("c1/n2", 2): [],
    ("c1/n2", 3): [("beta", "j2", 1800)],
    ("c1/n3", 0): [("acme", "j4", 0)],
}


def allocation_records() -> list[dict[str, Any]]:
    records = []
    for (pool, index), usage in USAGE.items():
        gpus, model, capacity_type, hourly, policy = POOLS[pool]
        start = START + index * HOUR
        workloads = [Workload(key=f'["{t}","{j}"]', requested_gpu_seconds=s, used_gpu_seconds=0, tenant=t, job=j)
                     for t, j, s in usage]
        pool_cost = hourly * gpus
        for share in allocate_pool_cost(pool_cost, gpus * 3600, workloads, policy):
            w = share.workload
            records.append(_record(pool, start, model, capacity_type, share.kind, w.tenant if w else "unallocated",
                                   w.job if w else None, share.charged_gpu_seconds, share.share,
                                   share.direct_cost_usd, share.idle_cost_usd, share.cost_usd, pool_cost, policy,
                                   share.key))
    # inference pool "chat" over c1/n1: W0's 13.76 re-attributed by tokens (must not count anywhere)
    records.append(_record("chat", START, "H100-SXM-80GB", "on_demand", "inference_tenant", "acme", None, Fraction(0),
                           Fraction(3, 4), Decimal("10.32"), Decimal(0), Decimal("10.32"), Decimal("13.76"), "tokens",
                           "inference:acme", tokens=3000))
    records.append(_record("chat", START + HOUR, "H100-SXM-80GB", "on_demand", "idle", "unallocated", None,
                           Fraction(0), Fraction(1), Decimal(0), Decimal("13.76"), Decimal("13.76"), Decimal("13.76"),
                           "tokens", "inference:__idle__"))
    return records


def _record(pool: str, start: dt.datetime, model: str, capacity_type: str, kind: str, tenant: str, job: str | None,
            charged: Fraction, share: Fraction, direct: Decimal, idle: Decimal, cost: Decimal, pool_cost: Decimal,
            policy: str, key: str, tokens: int = 0) -> dict[str, Any]:
    cluster, _, node = pool.partition("/")
    return {
        "allocation_id": allocation_id(pool, start, start + HOUR, key), "window_start": start,
        "window_end": start + HOUR, "pool": pool, "cluster": cluster or pool, "node": node or pool,
        "gpu_model": model, "capacity_type": capacity_type, "kind": kind, "tenant": tenant, "team": "unallocated",
        "namespace": None, "job": job, "charged_gpu_seconds": rounded(charged, 12), "share": rounded(share, 18),
        "direct_cost_usd": direct, "idle_cost_usd": idle, "cost_usd": cost, "pool_cost_usd": pool_cost,
        "idle_policy": policy, "tokens": tokens, "usd_per_mtok": None, "price_version": "gpu-2026-11-01",
        "late": False,
    }


EXPECTED_ROWS = {  # pool: the report row's KPI columns
    "c1/n1": {"windows": 3, "gpu_hours": Decimal("6.000000"), "utilization_pct": Decimal("75.00"),
              "cost_usd": Decimal("41.28"), "usd_per_gpu_hour": Decimal("6.880000000000"), "spot_cost_usd": None,
              "on_demand_equivalent_usd": None, "spot_savings_usd": None, "spot_savings_rate": None,
              "interruptions": 2, "restart_s": Decimal("5400.000000"), "unknown_capacity_windows": 0},
    "c1/n2": {"windows": 4, "gpu_hours": Decimal("4.000000"), "utilization_pct": Decimal("56.25"),
              "cost_usd": Decimal("10.00"), "usd_per_gpu_hour": Decimal("2.500000000000"),
              "spot_cost_usd": Decimal("10.00"), "on_demand_equivalent_usd": Decimal("27.52"),
              "spot_savings_usd": Decimal("17.52"), "spot_savings_rate": Decimal("0.636628"),
              "interruptions": 0, "restart_s": None, "unknown_capacity_windows": 0},
    "c1/n3": {"windows": 1, "gpu_hours": Decimal("0.000000"), "utilization_pct": None,
              "cost_usd": Decimal("5.12"), "usd_per_gpu_hour": None, "spot_cost_usd": None,
              "on_demand_equivalent_usd": None, "spot_savings_usd": None, "spot_savings_rate": None,
              "interruptions": 0, "restart_s": None, "unknown_capacity_windows": 1},
}
EXPECTED_TOTAL = {"windows": 8, "gpu_hours": Decimal("10.000000"), "utilization_pct": Decimal("67.50"),
                  "cost_usd": Decimal("56.40"), "usd_per_gpu_hour": Decimal("5.128000000000"),
                  "spot_cost_usd": Decimal("10.00"), "on_demand_equivalent_usd": Decimal("27.52"),
                  "spot_savings_usd": Decimal("17.52"), "spot_savings_rate": Decimal("0.636628"),
                  "interruptions": 2, "restart_s": Decimal("5400.000000"), "unknown_capacity_windows": 1}
