"""The ledger of FOCUS billing exports (`billing_exports`) and restatements: which export of a billing period is in
force, and replacing a period's cost lines by a newer export's. Plain SQL that ClickHouse 18.16 and current
ClickHouse both run; the design, with its guarantees and limits, is in docs/billing.md.

A billing period is (BillingAccountId, BillingPeriodStart). Each time `prismops ingest focus` puts an export (a file,
named by the SHA-256 of its bytes) in force for a period, it writes the period's rows here with a sequence larger than
any before for that period; the largest sequence is in force. The file's rows carry that sequence (event ids, cost
lines' export_seq). Ingesting the same file again finds its export in force and keeps its sequence: same ids, so the
sink stores nothing twice. A different file for a period already in force is a restatement: refused unless asked
for (`--replace-period`); then `replace_period` deletes the period's cost lines of every smaller sequence (an
ALTER … DELETE mutation; the settled-day counters of those days are moved first so rollups stop being read for them),
and the sink drops any line of a smaller sequence that is still on its way (`CostLineSink.drop_superseded`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from prismops.sinks.clickhouse import as_utc, table_ref

TABLE = "billing_exports"
MONEY = ("billed_cost", "effective_cost", "list_cost", "contracted_cost")
FOCUS_MONEY = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")


@dataclass(frozen=True)
class PeriodTotals:
    """One currency of one period of one export: its rows and exact FOCUS cost sums."""

    currency: str
    rows: int
    BilledCost: Decimal
    EffectiveCost: Decimal
    ListCost: Decimal
    ContractedCost: Decimal

    def as_dict(self) -> dict[str, Any]:
        return {"BillingCurrency": self.currency, "rows": self.rows,
                **{name: getattr(self, name) for name in FOCUS_MONEY}}


@dataclass(frozen=True)
class PeriodExport:
    """The export of one billing period: its file, sequence and totals per currency."""

    billing_account_id: str
    billing_period_start: dt.datetime
    billing_period_end: dt.datetime
    export_id: str
    sequence: int
    ingested_at: dt.datetime
    source_file: str
    focus_version: str
    totals: tuple[PeriodTotals, ...] = field(default=())

    @property
    def key(self) -> tuple[str, dt.datetime]:
        return period_key(self.billing_account_id, self.billing_period_start)

    def as_dict(self) -> dict[str, Any]:
        return {
            "export_id": self.export_id, "sequence": self.sequence, "ingested_at": self.ingested_at,
            "source_file": self.source_file, "focus_version": self.focus_version,
            "totals": [t.as_dict() for t in self.totals],
        }


def period_key(account: str, period_start: dt.datetime) -> tuple[str, dt.datetime]:
    """How a billing period is named here: the account and the UTC start to the second (a DateTime column)."""
    return account, as_utc(period_start).replace(microsecond=0)


def exports_in_force(client: Any, database: str, accounts: Iterable[str]) -> dict[tuple[str, dt.datetime], PeriodExport]:
    """(billing account, UTC period start) → the export in force, for every recorded period of `accounts`. The
    ledger is small (a few rows per export), so the newest export of each period is picked here, not in SQL."""
    accounts = tuple(sorted(set(accounts)))
    if not accounts:
        return {}
    rows = client.execute(
        f"""
        SELECT billing_account_id, billing_period_start, billing_period_end, sequence, export_id, ingested_at,
               source_file, focus_version, currency, rows, billed_cost, effective_cost, list_cost, contracted_cost
        FROM {table_ref(database, TABLE)}
        WHERE billing_account_id IN %(accounts)s
        ORDER BY billing_account_id, billing_period_start, sequence, currency
        """,
        {"accounts": accounts},
    )
    newest: dict[tuple[str, dt.datetime], list[tuple[Any, ...]]] = {}
    for row in rows:
        key = period_key(row[0], row[1])
        if key not in newest or int(row[3]) > int(newest[key][0][3]):
            newest[key] = [row]
        elif int(row[3]) == int(newest[key][0][3]):
            newest[key].append(row)
    found: dict[tuple[str, dt.datetime], PeriodExport] = {}
    for key, group in newest.items():
        account, _, end, sequence, export_id, ingested_at, source_file, version = group[0][:8]
        totals = tuple(
            PeriodTotals(r[8], int(r[9]), *(Decimal(text) for text in r[10:14])) for r in group
        )
        found[key] = PeriodExport(account, key[1], as_utc(end), export_id, int(sequence), as_utc(ingested_at),
                                  source_file, version, totals)
    return found


def next_sequence(in_force: Mapping[tuple[str, dt.datetime], PeriodExport]) -> int:
    """A sequence larger than every one in force: the clock in nanoseconds, or one more than the largest if the
    clock is behind (another machine's, a clock set back)."""
    return max([time.time_ns(), *(export.sequence + 1 for export in in_force.values())])


def record_exports(client: Any, database: str, exports: Sequence[PeriodExport]) -> None:
    """Put `exports` in force: one ledger row per period and currency."""
    rows = [
        {
            "billing_account_id": export.billing_account_id,
            "billing_period_start": as_utc(export.billing_period_start),
            "billing_period_end": as_utc(export.billing_period_end),
            "sequence": export.sequence,
            "export_id": export.export_id,
            "ingested_at": as_utc(export.ingested_at).replace(microsecond=0),
            "source_file": export.source_file,
            "focus_version": export.focus_version,
            "currency": totals.currency,
            "rows": totals.rows,
            **{column: format(getattr(totals, name), "f") for column, name in zip(MONEY, FOCUS_MONEY)},
        }
        for export in exports
        for totals in export.totals
    ]
    if rows:
        client.execute(f"INSERT INTO {table_ref(database, TABLE)} ({', '.join(rows[0])}) VALUES", rows)


def _older_lines(database: str, account: str, period_start: dt.datetime, sequence: int) -> tuple[str, dict[str, Any]]:
    """The condition that picks a period's cost lines older than `sequence` (every cloud line of the period that
    belongs to no export or to an earlier one), with its parameters."""
    start = as_utc(period_start)
    return (
        "source = 'cloud' AND billing_account_id = %(account)s"
        " AND billing_period_start = toDateTime(%(start)s, 'UTC') AND export_seq < %(sequence)s",
        {"account": account, "start": start.strftime("%Y-%m-%d %H:%M:%S"), "sequence": sequence},
    )


def replace_period(client: Any, database: str, account: str, period_start: dt.datetime, sequence: int) -> int:
    """Delete the period's cost lines older than `sequence`; return how many there were. The days they fall on
    get their insert counters moved first (cost_line_inserts), so a settled rollup of those days is no longer read
    (sinks/rollups.py reads a day from the rollup only while its counter is unchanged). The DELETE is a mutation:
    ClickHouse runs it in the background; `wait_for_mutations` waits for it."""
    condition, params = _older_lines(database, account, period_start, sequence)
    lines = table_ref(database, "cost_lines")
    ((count,),) = client.execute(f"SELECT count() FROM {lines} WHERE {condition}", params)
    if not count:
        return 0
    client.execute(
        f"INSERT INTO {table_ref(database, 'cost_line_inserts')} (event_date, inserted)"
        f" SELECT event_date, countState() FROM {lines} WHERE {condition} GROUP BY event_date", params,
    )
    client.execute(f"ALTER TABLE {lines} DELETE WHERE {condition}", params)
    return int(count)


def wait_for_mutations(client: Any, database: str, timeout_s: float = 120.0, poll_s: float = 0.5) -> bool:
    """Wait until no mutation of cost_lines is left to do; False if some still is after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        ((pending,),) = client.execute(
            "SELECT count() FROM system.mutations WHERE database = %(database)s AND table = 'cost_lines' AND is_done = 0",
            {"database": database},
        )
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
