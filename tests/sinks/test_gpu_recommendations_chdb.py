"""Migration 0016 on a current ClickHouse engine (chdb): recommendation rows go in and come back exactly."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal


from prismops.finops.gpu_pricing import load_gpu_catalog
from prismops.finops.gpu_recommendations import JobProfile, load_gpu_types, recommend
from prismops.sinks.chdb_client import ChdbClient
from prismops.sinks.gpu_recommendations import recommendation_rows

DATABASE = "prismops_gpu_rec"
AT = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)


def test_recommendations_round_trip(tmp_path):
    client = ChdbClient.migrated(str(tmp_path / "chdb"), DATABASE)
    try:
        profiles = [
            JobProfile(tenant="acme", job="j1", gpu_model="A100-SXM4-80GB", capacity_type="on_demand", gpus=1,
                       duration_s=Decimal(7200), peak_memory_bytes=8 * 2**30, mean_memory_bytes=0, util_mean=Decimal("0.08"),
                       util_p50=Decimal("0.07"), util_p95=Decimal("0.10"), checkpoint_cost_s=Decimal(100)),
            JobProfile(tenant="acme", job="j2", gpu_model="B200", capacity_type="on_demand", gpus=1,
                       duration_s=Decimal(60), peak_memory_bytes=150 * 2**30, mean_memory_bytes=0, util_mean=Decimal(1),
                       util_p50=Decimal(1), util_p95=Decimal(1)),
        ]
        results = [recommend(p, load_gpu_types(), load_gpu_catalog(), at=AT) for p in profiles]
        rows = recommendation_rows(results, computed_at=AT, types_version="t1")
        client.execute(f"INSERT INTO {DATABASE}.gpu_recommendations ({', '.join(rows[0])}) VALUES", rows)
        stored = client.execute(
            f"SELECT job, recommended_gpu_model, recommended_mig_profile, savings_usd, spot_checkpoint_interval_s, "
            f"spot_savings_usd, flags, wasted_usd FROM {DATABASE}.gpu_recommendations ORDER BY job")
        assert stored[0][:6] == ("j1", "A100-SXM4-40GB", "1g.10gb", Decimal("9.068571428571"), 3000, Decimal("0.728603174603"))
        assert list(stored[0][6]) == ["over_provisioned"] and stored[0][7] == Decimal("9.4208")
        assert stored[1][1] is None and stored[1][3] is None
    finally:
        client.disconnect()
