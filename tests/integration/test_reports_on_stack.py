"""Reports on Debian's clickhouse-server (native protocol) over a synthetic month loaded through the real sinks:
every total equals the records' own totals to the last decimal place, before and after settling, after the
month is replayed through the sinks (nothing written) and inserted again behind their back (every row twice),
and after OPTIMIZE … FINAL. The FOCUS export of the month reads back through the FOCUS 1.2 reader."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from clickhouse_driver import Client

from prismops.finops.focus_billing import read_focus_file
from prismops.settings import Settings
from prismops.testing import clickhouse
from prismops.sinks.base import SinkRecord
from prismops.sinks.clickhouse import (
    AnomalySink, BudgetEventSink, CostLineSink, GpuAllocationSink, RoutingDecisionSink, cost_line_row,
)
from prismops.sinks.focus_export import export_focus_month
from prismops.sinks.migrations import apply_migrations
from prismops.sinks.rollups import day_sources, settle_days
from prismops.testing.synthetic_month import SyntheticMonth, report_discrepancies, synthetic_month, totals_by

MONTH = dt.date(2025, 6, 1)
UNTIL = dt.date(2025, 7, 1)


@pytest.fixture(scope="module")
def month() -> SyntheticMonth:
    return synthetic_month(MONTH, llm_calls_per_day=40)


@pytest.fixture()
def loaded(isolated_settings: Settings, month: SyntheticMonth) -> Iterator[tuple[Client, str]]:
    apply_migrations(isolated_settings)
    client = clickhouse(isolated_settings)
    write_through_sinks(client, isolated_settings.clickhouse.database, month, expect_written=True)
    yield client, isolated_settings.clickhouse.database
    client.disconnect()


def write_through_sinks(client: Client, database: str, data: SyntheticMonth, *, expect_written: bool) -> None:
    for sink_class, records in ((CostLineSink, data.cost_lines), (GpuAllocationSink, data.allocations),
                                (RoutingDecisionSink, data.decisions), (AnomalySink, data.anomalies),
                                (BudgetEventSink, data.budget_events)):
        sink = sink_class(client, database)
        sink.open()
        batch = [SinkRecord("topic", 0, offset, None, record) for offset, record in enumerate(records)]
        result = sink.write(batch)
        assert result.rows_written == (len(records) if expect_written else 0)


def test_every_report_is_exact_through_settle_replay_and_merge(loaded: tuple[Client, str], month: SyntheticMonth) -> None:
    client, database = loaded
    assert report_discrepancies(client, database, month) == []

    assert {s.state for s in settle_days(client, database, since=MONTH, until=UNTIL)} == {"settled"}
    assert len(day_sources(client, database, MONTH, UNTIL).settled) == 30
    assert report_discrepancies(client, database, month) == []

    write_through_sinks(client, database, month, expect_written=False)  # a replay: the sinks skip every id
    assert len(day_sources(client, database, MONTH, UNTIL).settled) == 30
    ingested_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=5)
    rows = [cost_line_row(line, kafka_partition=0, kafka_offset=i, ingested_at=ingested_at)
            for i, line in enumerate(month.cost_lines)]
    client.execute(f"INSERT INTO {database}.cost_lines ({', '.join(rows[0])}) VALUES", rows)  # behind the sink
    ((stored,),) = client.execute(f"SELECT count() FROM {database}.cost_lines")
    assert stored == 2 * len(month.cost_lines)
    assert day_sources(client, database, MONTH, UNTIL).settled == {}
    assert report_discrepancies(client, database, month) == []

    assert {s.state for s in settle_days(client, database, since=MONTH, until=UNTIL)} == {"settled"}
    assert report_discrepancies(client, database, month) == []

    for table in ("cost_lines", "gpu_allocations", "routing_decisions", "anomalies"):
        client.execute(f"OPTIMIZE TABLE {database}.{table} FINAL")
    ((stored,),) = client.execute(f"SELECT count() FROM {database}.cost_lines")
    assert stored == len(month.cost_lines)
    assert len(day_sources(client, database, MONTH, UNTIL).settled) == 30  # a merge changes nothing FINAL reads
    assert report_discrepancies(client, database, month) == []
    assert {s.state for s in settle_days(client, database, since=MONTH, until=UNTIL, force=True)} == {"settled"}
    assert report_discrepancies(client, database, month) == []


def test_focus_export_of_the_month_reads_back_as_focus_1_2_with_the_same_totals(
    loaded: tuple[Client, str], month: SyntheticMonth, tmp_path: Path,
) -> None:
    client, database = loaded
    path = tmp_path / "focus.csv"
    summary = export_focus_month(client, database, "2025-06", path, sources=("llm", "gpu", "cloud"))
    ingest = read_focus_file(path)
    assert ingest.file.focus_version == "1.2"
    assert ingest.errors == []
    expected = sum((line["cost_usd"] for line in month.cost_lines), Decimal(0))
    assert ingest.totals.total.EffectiveCost == expected == summary.effective_cost_usd
    assert {r["ServiceCategory"] for r in ingest.records} == {"AI and Machine Learning"}
    assert len(ingest.records) == summary.rows


DOC_SQL = re.findall(r"```sql\n(.*?)```", (Path(__file__).resolve().parents[2] / "docs" / "queries.md").read_text(),
                     flags=re.S)


def test_every_query_in_the_docs_runs_on_the_server_and_answers_exactly(
    loaded: tuple[Client, str], month: SyntheticMonth,
) -> None:
    client, database = loaded
    settle_days(client, database, since=MONTH, until=dt.date(2025, 6, 20))  # a mix of settled and raw days
    first_day = [line for line in month.cost_lines if line["event_time"].date() == MONTH]
    ingested_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    rows = [cost_line_row(line, kafka_partition=2, kafka_offset=i, ingested_at=ingested_at)
            for i, line in enumerate(first_day)]
    client.execute(f"INSERT INTO {database}.cost_lines ({', '.join(rows[0])}) VALUES", rows)  # duplicates
    assert len(DOC_SQL) >= 15
    for sql in DOC_SQL:
        assert client.execute(sql), f"no rows from:\n{sql}"
    expected = {key[0]: value["cost_usd"] for key, value in totals_by(month.cost_lines, ("team",)).items()}
    assert dict(row[:2] for row in client.execute(DOC_SQL[0])) == expected  # the rollup-aware query
    assert dict(row[:2] for row in client.execute(DOC_SQL[1])) == expected  # the plain FINAL query
