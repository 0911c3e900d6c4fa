"""The same migrations, settle statements and report queries on a current ClickHouse engine (chdb, in-process):
no server needed. The reports over a synthetic month must equal the records' own totals to the last decimal
place, before and after settling, after the month is inserted a second time, and after OPTIMIZE … FINAL."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from prismops.finops.focus_billing import read_focus_file
from prismops.sinks import reports
from prismops.sinks.chdb_client import ChdbClient
from prismops.sinks.clickhouse import allocation_row, anomaly_row, budget_event_row, cost_line_row, routing_decision_row
from prismops.sinks.focus_export import export_focus_month
from prismops.sinks.rollups import day_sources, prune_superseded, settle_days
from prismops.testing import readme_sql_blocks
from prismops.testing.synthetic_month import SyntheticMonth, report_discrepancies, synthetic_month, totals_by
from prismops.sinks.tenant_users import TENANT_FILTERS, row_policy_statements

DATABASE = "prismops_chdb"
MONTH = dt.date(2025, 6, 1)
TABLES = {
    "cost_lines": cost_line_row, "gpu_allocations": allocation_row, "routing_decisions": routing_decision_row,
    "anomalies": anomaly_row, "budget_events": budget_event_row,
}


def load(client: ChdbClient, data: SyntheticMonth, ingested_at: dt.datetime) -> None:
    """Insert every record through the sink's row functions (what the sinks write), bypassing their id check,
    so a second call stores every row twice, as two racing sinks could."""
    for table, records in (("cost_lines", data.cost_lines), ("gpu_allocations", data.allocations),
                           ("routing_decisions", data.decisions), ("anomalies", data.anomalies),
                           ("budget_events", data.budget_events)):
        rows = [TABLES[table](r, kafka_partition=0, kafka_offset=i, ingested_at=ingested_at)
                for i, r in enumerate(records)]
        client.execute(f"INSERT INTO {DATABASE}.{table} ({', '.join(rows[0])}) VALUES", rows)


@pytest.fixture(scope="module")
def month() -> SyntheticMonth:
    return synthetic_month(MONTH, llm_calls_per_day=40)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, month: SyntheticMonth) -> Iterator[ChdbClient]:
    client = ChdbClient.migrated(str(tmp_path_factory.mktemp("chdb")), DATABASE)
    load(client, month, dt.datetime(2025, 7, 1, 3, tzinfo=dt.timezone.utc))
    yield client
    client.disconnect()


def test_every_migration_creates_its_tables_and_views_on_current_clickhouse(engine: ChdbClient) -> None:
    names = {name for (name,) in engine.execute(
        "SELECT name FROM system.tables WHERE database = %(db)s", {"db": DATABASE})}
    assert {"cost_lines", "cost_daily", "cost_daily_customers", "cost_settlements", "unit_economics_daily",
            "gpu_daily_utilization", "experiment_arm_costs", "shadow_vs_main", "anomalies"} <= names


def test_reports_are_exact_through_settle_replay_and_merge(engine: ChdbClient, month: SyntheticMonth) -> None:
    until = dt.date(2025, 7, 1)
    assert report_discrepancies(engine, DATABASE, month) == []
    assert day_sources(engine, DATABASE, MONTH, until).settled == {}

    settled = settle_days(engine, DATABASE, since=MONTH, until=until)
    assert {s.state for s in settled} == {"settled"} and len(settled) == 30
    sources = day_sources(engine, DATABASE, MONTH, until)
    assert len(sources.settled) == 30 and sources.raw == []
    assert report_discrepancies(engine, DATABASE, month) == []

    load(engine, month, dt.datetime(2025, 7, 2, 3, tzinfo=dt.timezone.utc))  # the whole month again
    ((stored,),) = engine.execute(f"SELECT count() FROM {DATABASE}.cost_lines")
    assert stored == 2 * len(month.cost_lines)
    assert len(day_sources(engine, DATABASE, MONTH, until).raw) == 30  # every day changed: read raw
    assert report_discrepancies(engine, DATABASE, month) == []

    assert {s.state for s in settle_days(engine, DATABASE, since=MONTH, until=until)} == {"settled"}
    assert report_discrepancies(engine, DATABASE, month) == []

    for table in TABLES:
        engine.execute(f"OPTIMIZE TABLE {DATABASE}.{table} FINAL")
    ((stored,),) = engine.execute(f"SELECT count() FROM {DATABASE}.cost_lines")
    assert stored == len(month.cost_lines)
    assert len(day_sources(engine, DATABASE, MONTH, until).settled) == 30  # a merge changes nothing FINAL reads
    assert report_discrepancies(engine, DATABASE, month) == []
    assert {s.state for s in settle_days(engine, DATABASE, since=MONTH, until=until)} == {"unchanged"}
    assert {s.state for s in settle_days(engine, DATABASE, since=MONTH, until=until, force=True)} == {"settled"}
    assert report_discrepancies(engine, DATABASE, month) == []
    an_hour_later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1, seconds=2)
    assert prune_superseded(engine, DATABASE, now=an_hour_later) == 60
    assert report_discrepancies(engine, DATABASE, month) == []


def test_a_report_spanning_settled_and_changed_days_is_exact(engine: ChdbClient, month: SyntheticMonth) -> None:
    settle_days(engine, DATABASE, since=MONTH, until=dt.date(2025, 7, 1))
    late = [line for line in month.cost_lines if line["event_time"].date() >= dt.date(2025, 6, 15)]
    rows = [cost_line_row(line, kafka_partition=1, kafka_offset=i, ingested_at=dt.datetime(2025, 7, 9, tzinfo=dt.timezone.utc))
            for i, line in enumerate(late)]
    engine.execute(f"INSERT INTO {DATABASE}.cost_lines ({', '.join(rows[0])}) VALUES", rows)
    sources = day_sources(engine, DATABASE, dt.date(2025, 6, 10), dt.date(2025, 6, 20))
    assert sorted(sources.settled) == [dt.date(2025, 6, d) for d in range(10, 15)]
    assert sources.raw == [dt.date(2025, 6, d) for d in range(15, 20)]
    report = reports.showback(engine, DATABASE, ["tenant"], since=dt.date(2025, 6, 10), until=dt.date(2025, 6, 20))
    expected: dict[str, Decimal] = {}
    for line in month.cost_lines:
        if dt.date(2025, 6, 10) <= line["event_time"].date() < dt.date(2025, 6, 20):
            expected[line["tenant"]] = expected.get(line["tenant"], Decimal(0)) + line["cost_usd"]
    assert {row["tenant"]: row["cost_usd"] for row in report.rows} == expected
    assert report.total["cost_usd"] == sum(expected.values(), Decimal(0))


DOC_SQL = re.findall(r"```sql\n(.*?)```", (Path(__file__).resolve().parents[2] / "docs" / "queries.md").read_text(),
                     flags=re.S)


def test_every_query_in_the_docs_runs_and_answers_exactly(engine: ChdbClient, month: SyntheticMonth) -> None:
    settle_days(engine, DATABASE, since=MONTH, until=dt.date(2025, 7, 1))
    first_day = [line for line in month.cost_lines if line["event_time"].date() == MONTH]
    rows = [cost_line_row(line, kafka_partition=2, kafka_offset=i, ingested_at=dt.datetime(2025, 7, 10, tzinfo=dt.timezone.utc))
            for i, line in enumerate(first_day)]
    engine.execute(f"INSERT INTO {DATABASE}.cost_lines ({', '.join(rows[0])}) VALUES", rows)
    assert len(DOC_SQL) >= 15
    for sql in DOC_SQL:
        assert engine.execute(sql), f"no rows from:\n{sql}"
    expected = {key[0]: value["cost_usd"] for key, value in totals_by(month.cost_lines, ("team",)).items()}
    assert dict(row[:2] for row in engine.execute(DOC_SQL[0])) == expected  # the rollup-aware query
    assert dict(row[:2] for row in engine.execute(DOC_SQL[1])) == expected  # the plain FINAL query


def test_focus_export_on_current_clickhouse_reads_back_as_focus_1_2(
    engine: ChdbClient, month: SyntheticMonth, tmp_path: Path,
) -> None:
    path = tmp_path / "focus.csv"
    summary = export_focus_month(engine, DATABASE, "2025-06", path)
    ingest = read_focus_file(path)
    assert ingest.errors == [] and ingest.file.focus_version == "1.2"
    expected = sum((line["cost_usd"] for line in month.cost_lines if line["source"] in ("llm", "gpu")), Decimal(0))
    assert ingest.totals.total.EffectiveCost == summary.effective_cost_usd == expected
    assert {r["ServiceCategory"] for r in ingest.records} == {"AI and Machine Learning"}
    assert {r["ServiceName"] for r in ingest.records} == {"LLM Inference", "GPU Compute"}


def test_row_policies_for_current_servers_cover_every_tenant_table(engine: ChdbClient) -> None:
    statements = row_policy_statements(engine, DATABASE, "o'hara", "tenant_ohara", "pw")
    assert statements[0].startswith("CREATE USER IF NOT EXISTS `tenant_ohara` IDENTIFIED WITH sha256_hash BY '")
    assert "pw'" not in statements[0] and statements[0].endswith("SETTINGS readonly = 1")
    policies = [s for s in statements if s.startswith("CREATE ROW POLICY")]
    grants = [s for s in statements if s.startswith("GRANT SELECT")]
    assert len(policies) == len(grants) == len(TENANT_FILTERS)
    assert f"ON `{DATABASE}`.`cost_lines` FOR SELECT USING tenant = 'o\\'hara' TO `tenant_ohara`" in policies[0]


def _bill_line(event_id: str, day: int, currency: str, amount: str, seq: int) -> dict:
    """A cloud cost line as the worker makes one (finops.focus_billing.cloud_cost_line_to_cost_line)."""
    usd = currency == "USD"
    value = Decimal(amount)
    return {
        "line_id": f"line-{event_id}", "source": "cloud", "source_event_id": event_id,
        "event_time": dt.datetime(2026, 5, day, tzinfo=dt.timezone.utc), "tenant": "acme", "team": "t", "product": "p",
        "service": "s", "feature": "f", "customer": None, "environment": "prod", "provider": "AWS",
        "model": "AmazonEC2", "region": None, "input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0,
        "reasoning_tokens": 0, "usage_quantity": Decimal(1), "usage_unit": "Hours",
        "cost_usd": value if usd else Decimal(0), "billed_cost_usd": value if usd else None,
        "list_cost_usd": value if usd else None, "charge_category": "Usage", "priced": usd,
        "price_version": "focus-1.3", "status": "ok", "tag_source": {}, "labels": {},
        "currency": currency, "billed_cost": value, "effective_cost": value, "list_cost": value,
        "contracted_cost": value, "billing_account_id": "acct-chdb",
        "billing_period_start": dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc), "export_id": f"sha-{seq}",
        "export_seq": seq,
    }


def test_a_restated_billing_period_replaces_its_lines_on_current_clickhouse(engine: ChdbClient, tmp_path: Path) -> None:
    """The restatement SQL (billing_exports ledger, the DELETE mutation, the settle counter bump, the sink's check
    for superseded lines) and the cloud report with an FX table, on current ClickHouse. May 2026: apart from the
    synthetic month the other tests read."""
    from prismops.finops.fx import FxTable
    from prismops.sinks.base import SinkRecord
    from prismops.sinks.billing_exports import (
        PeriodExport, PeriodTotals, exports_in_force, record_exports, replace_period, wait_for_mutations,
    )
    from prismops.sinks.clickhouse import CostLineSink

    start, end = dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
    at = dt.datetime(2026, 6, 2, tzinfo=dt.timezone.utc)

    def store(lines: list[dict]) -> None:
        rows = [cost_line_row(line, kafka_partition=0, kafka_offset=i, ingested_at=at) for i, line in enumerate(lines)]
        engine.execute(f"INSERT INTO {DATABASE}.cost_lines ({', '.join(rows[0])}) VALUES", rows)

    def period_sums() -> tuple:
        return engine.execute(
            f"SELECT currency, count(), sum(billed_cost), sum(effective_cost) FROM {DATABASE}.cost_lines FINAL"
            " WHERE billing_account_id = 'acct-chdb' GROUP BY currency ORDER BY currency")

    def export(seq: int, totals: list[PeriodTotals]) -> PeriodExport:
        return PeriodExport("acct-chdb", start, end, f"sha-{seq}", seq, at, f"export-{seq}.csv", "1.3", tuple(totals))

    old = [_bill_line("old-1", 3, "USD", "10.000000000001", 1), _bill_line("old-2", 4, "USD", "5.5", 1),
           _bill_line("old-3", 4, "EUR", "7.25", 1)]
    store(old)
    record_exports(engine, DATABASE, [export(1, [PeriodTotals("EUR", 1, *[Decimal("7.25")] * 4),
                                                 PeriodTotals("USD", 2, *[Decimal("15.500000000001")] * 4)])])
    [in_force] = exports_in_force(engine, DATABASE, ["acct-chdb"]).values()
    assert (in_force.export_id, in_force.sequence, [t.currency for t in in_force.totals]) == ("sha-1", 1, ["EUR", "USD"])
    assert in_force.totals[1].BilledCost == Decimal("15.500000000001")

    record_exports(engine, DATABASE, [export(2, [PeriodTotals("USD", 2, *[Decimal("20.000000000002")] * 4)])])
    (inserted_before,), = engine.execute(
        f"SELECT countMerge(inserted) FROM {DATABASE}.cost_line_inserts WHERE event_date = '2026-05-04'")
    assert replace_period(engine, DATABASE, "acct-chdb", start, 2) == 3
    assert wait_for_mutations(engine, DATABASE, timeout_s=60)
    (inserted_after,), = engine.execute(
        f"SELECT countMerge(inserted) FROM {DATABASE}.cost_line_inserts WHERE event_date = '2026-05-04'")
    assert inserted_after > inserted_before, "a settled rollup of the day is no longer read"
    assert period_sums() == []
    assert exports_in_force(engine, DATABASE, ["acct-chdb"])[("acct-chdb", start)].sequence == 2

    new = [_bill_line("new-1", 3, "USD", "12.000000000001", 2), _bill_line("new-2", 5, "USD", "8.000000000001", 2)]
    sink = CostLineSink(engine, DATABASE)
    late_old = _bill_line("old-4", 6, "USD", "99", 1)  # still in Kafka when the period was replaced
    records = [SinkRecord("cost.lines.v1", 0, i, None, line) for i, line in enumerate([*new, late_old])]
    kept, superseded = sink.drop_superseded(records)
    assert [r.value["source_event_id"] for r in kept] == ["new-1", "new-2"] and superseded == 1
    store([r.value for r in kept])
    assert period_sums() == [("USD", 2, Decimal("20.000000000002"), Decimal("20.000000000002"))]
    assert replace_period(engine, DATABASE, "acct-chdb", start, 2) == 0, "the export in force is never deleted"

    store([_bill_line("eur-1", 7, "EUR", "0.079488000001", 2)])
    fx = FxTable(rates={"EUR": [(dt.date(2026, 1, 1), Decimal("1.1412"))]})
    report = reports.cloud_bills(engine, DATABASE, since=dt.date(2026, 5, 1), until=dt.date(2026, 6, 1), fx=fx)
    by_currency = {row["currency"]: row for row in report.rows}
    assert by_currency["USD"]["billed_cost"] == by_currency["USD"]["billed_cost_usd"] == Decimal("20.000000000002")
    assert by_currency["EUR"]["billed_cost"] == Decimal("0.079488000001")
    assert by_currency["EUR"]["billed_cost_usd"] == Decimal("0.090711705601")  # 0.0907117056011412, half-even
    assert report.total["billed_cost_usd"] == Decimal("20.090711705603") and report.total["lines"] == 3


def test_the_readme_sql_runs_on_current_clickhouse_and_sorts(engine: ChdbClient) -> None:
    blocks = readme_sql_blocks(Path(__file__).resolve().parents[2] / "README.md", DATABASE)
    assert blocks, "the README shows SQL"
    for block in blocks:
        rows = engine.execute(block)
        assert rows, block
        if "ORDER BY cost DESC" in block:
            costs = [row[-1] for row in rows]
            assert costs == sorted(costs, reverse=True), "positional ORDER BY does not sort on 18.16; aliases do"
