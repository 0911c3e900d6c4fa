"""`prismops report gpu-kpis` on the stack's ClickHouse 18.16 server: migration 0017 applied to an isolated database,
the hand-built allocation rows of tests/sinks/gpu_kpi_rows.py inserted through the sink's row function (twice, as
two racing sinks could), the CLI's JSON equal to the hand-computed KPIs to the last decimal place."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from prismops.settings import Settings, settings_as_env
from prismops.sinks.clickhouse import allocation_row
from prismops.sinks.migrations import apply_migrations
from prismops.testing import clickhouse

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gpu_kpi_rows", REPO / "tests" / "sinks" / "gpu_kpi_rows.py")
rows_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rows_module)


@pytest.fixture()
def kpi_db(isolated_settings: Settings) -> Iterator[Settings]:
    states = apply_migrations(isolated_settings)
    assert any(s.version == 17 and s.state == "applied_now" for s in states)
    assert {s.state for s in apply_migrations(isolated_settings)} == {"applied"}  # idempotent: nothing re-applied
    client = clickhouse(isolated_settings)
    try:
        for copy in (1, 2):
            ingested = dt.datetime(2026, 11, 11, copy, tzinfo=dt.timezone.utc)
            rows = [allocation_row(r, kafka_partition=0, kafka_offset=i, ingested_at=ingested)
                    for i, r in enumerate(rows_module.allocation_records())]
            client.execute(f"INSERT INTO {isolated_settings.clickhouse.database}.gpu_allocations"
                           f" ({', '.join(rows[0])}) VALUES", rows)
    finally:
        client.disconnect()
    yield isolated_settings


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISMOPS_")} | settings_as_env(settings)
    return subprocess.run([sys.executable, "-m", "prismops", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def parsed(row: dict) -> dict:
    """Money and ratios come as exact decimal strings: compare them as Decimals (10 == 10.00)."""
    return {c: Decimal(v) if isinstance(v, str) else v for c, v in row.items()}


def test_report_gpu_kpis_on_clickhouse_18(kpi_db: Settings) -> None:
    done = run_cli(kpi_db, "report", "gpu-kpis", "--since", "2026-11-10", "--until", "2026-11-11", "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {"title", "columns", "rows", "total"}
    assert report["title"] == "GPU KPIs by pool, 2026-11-10 to 2026-11-10"
    assert [row["pool"] for row in report["rows"]] == ["c1/n1", "c1/n2", "c1/n3"]
    columns = list(rows_module.EXPECTED_ROWS["c1/n1"])
    assert {row["pool"]: parsed({c: row[c] for c in columns}) for row in report["rows"]} == rows_module.EXPECTED_ROWS
    assert parsed({c: report["total"][c] for c in columns}) == rows_module.EXPECTED_TOTAL
    # exact strings where the scale is fixed by the report (not by the server's Decimal scale)
    assert report["total"]["usd_per_gpu_hour"] == "5.128000000000"
    assert report["total"]["spot_savings_rate"] == "0.636628" and report["total"]["utilization_pct"] == "67.50"


def test_report_gpu_kpis_table_and_empty_period(kpi_db: Settings) -> None:
    done = run_cli(kpi_db, "report", "gpu-kpis", "--month", "2026-11", "--by", "capacity_type")
    assert done.returncode == 0, done.stderr
    assert "spot" in done.stdout and "TOTAL" in done.stdout
    empty = run_cli(kpi_db, "report", "gpu-kpis", "--month", "2026-10", "--format", "json")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout)["rows"] == []


def test_a_mid_day_on_demand_price_change_is_priced_per_window_on_the_server(kpi_db: Settings, tmp_path: Path) -> None:
    """The configured price table takes H100 on-demand to 10 $/GPU-hour at 02:00: the spot pool's W0 and W1 are
    compared with 6.88, W2 and W3 with 10 (the per-window query over gpu_pool_windows)."""
    import yaml
    from importlib import resources

    table = yaml.safe_load(resources.files("prismops.finops").joinpath("gpu_prices.yaml").read_text())
    table["prices"].append({"gpu_model": "H100-SXM-80GB", "capacity_type": "on_demand", "usd_per_gpu_hour": "10",
                            "effective_from": "2026-11-10T02:00:00Z"})
    path = tmp_path / "gpu_prices.yaml"
    path.write_text(yaml.safe_dump(table))
    settings = kpi_db.with_overrides(gpu={"price_table": path})
    done = run_cli(settings, "report", "gpu-kpis", "--since", "2026-11-10", "--until", "2026-11-11", "--format", "json")
    assert done.returncode == 0, done.stderr
    spot = next(row for row in json.loads(done.stdout)["rows"] if row["pool"] == "c1/n2")
    assert Decimal(spot["on_demand_equivalent_usd"]) == Decimal("33.76")
    assert Decimal(spot["spot_savings_usd"]) == Decimal("23.76") and spot["spot_savings_rate"] == "0.703791"
