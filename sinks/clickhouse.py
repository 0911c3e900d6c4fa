"""ClickHouse sinks: decoded records become rows of `cost_lines`, `routing_decisions`, `dead_letters`,
`budget_events`, `gpu_allocations`, `gpu_usage`, `policy_audit` and `anomalies`.

Row mapping is plain functions (one per table) so it can be tested without a server. Each sink's `write`
skips ids already stored or repeated in the batch and inserts the rest in one block, so replaying a batch
never duplicates a row (the tables' ReplacingMergeTree engine is only a safety net behind this).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from clickhouse_driver import Client
from clickhouse_driver.errors import ErrorCodes, ServerException

from prismops.settings import Settings
from prismops.sinks.base import Sink, SinkRecord, WriteResult

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BATCH_IDS_TABLE = "_batch_ids"

Row = dict[str, Any]


class SinkNotReady(RuntimeError):
    """The sink's table is missing: the migrations have not been applied to this database."""


def clickhouse_client(settings: Settings, *, database: str | None = None) -> Client:
    """A native-protocol client for the settings' server; `database` overrides the connection's default
    database ("" means the user's default, for when the settings' database may not exist yet)."""
    return Client(
        settings.clickhouse_host,
        port=settings.clickhouse_port,
        database=settings.clickhouse.database if database is None else database,
        user=settings.clickhouse.user,
        password=settings.clickhouse.password,
        client_name="prismops",
    )


def quote_identifier(name: str) -> str:
    """Back-quoted database/table name; anything but plain identifiers is refused rather than escaped."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a plain identifier (letters, digits, underscore; not starting with a digit)")
    return f"`{name}`"


def table_ref(database: str, table: str) -> str:
    return f"{quote_identifier(database)}.{quote_identifier(table)}"


def server_message(exc: BaseException) -> str:
    """The server's error without the stack trace ClickHouse appends to it."""
    return str(exc).split("Stack trace:")[0].strip().replace("\n", " ")


def as_utc(moment: dt.datetime) -> dt.datetime:
    """Aware UTC datetime; a naive one is taken as UTC (the codecs never produce naive ones)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def map_to_arrays(values: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    """A map as parallel key/value arrays, sorted by key so equal maps give equal rows."""
    keys = sorted(values)
    return keys, [values[k] for k in keys]


def cost_line_row(
    value: Mapping[str, Any], *, kafka_partition: int, kafka_offset: int, ingested_at: dt.datetime,
) -> Row:
    event_time = as_utc(value["event_time"])
    tag_keys, tag_values = map_to_arrays(value["tag_source"])
    label_keys, label_values = map_to_arrays(value.get("labels") or {})
    return {
        "line_id": value["line_id"],
        "source": value["source"],
        "source_event_id": value["source_event_id"],
        "event_time": event_time,
        "event_date": event_time.date(),
        "tenant": value["tenant"],
        "team": value["team"],
        "product": value["product"],
        "service": value["service"],
        "feature": value["feature"],
        "customer": value.get("customer"),
        "user_hash": value.get("user_hash"),
        "environment": value["environment"],
        "provider": value["provider"],
        "model": value["model"],
        "region": value.get("region"),
        "resource": value.get("resource"),
        "input_tokens": value["input_tokens"],
        "output_tokens": value["output_tokens"],
        "cached_input_tokens": value["cached_input_tokens"],
        "cache_write_tokens": value.get("cache_write_tokens", 0),
        "reasoning_tokens": value["reasoning_tokens"],
        "usage_quantity": value["usage_quantity"],
        "usage_unit": value["usage_unit"],
        "cost_usd": value["cost_usd"],
        "billed_cost_usd": value.get("billed_cost_usd"),
        "list_cost_usd": value.get("list_cost_usd"),
        "charge_category": value.get("charge_category"),
        "currency": value.get("currency") or "USD",
        "billed_cost": value.get("billed_cost"),
        "effective_cost": value.get("effective_cost"),
        "list_cost": value.get("list_cost"),
        "contracted_cost": value.get("contracted_cost"),
        "billing_account_id": value.get("billing_account_id"),
        "billing_period_start": as_utc(value["billing_period_start"]) if value.get("billing_period_start") else None,
        "export_id": value.get("export_id"),
        "export_seq": value.get("export_seq") or 0,
        "priced": int(value["priced"]),
        "price_version": value["price_version"],
        "status": value["status"],
        "session_id": value.get("session_id"),
        "request_id": value.get("request_id"),
        "model_version": value.get("model_version"),
        "deployment_id": value.get("deployment_id"),
        "prompt_chars": value.get("prompt_chars"),
        "latency_ms": value.get("latency_ms"),
        "cache_hit": int(value.get("cache_hit") or False),
        "fallback": int(value.get("fallback") or False),
        "shadow": int(value.get("shadow") or False),
        "decision_id": value.get("decision_id"),
        "tag_source_keys": tag_keys,
        "tag_source_values": tag_values,
        "label_keys": label_keys,
        "label_values": label_values,
        "kafka_partition": kafka_partition,
        "kafka_offset": kafka_offset,
        "ingested_at": as_utc(ingested_at),
    }


def routing_decision_row(
    value: Mapping[str, Any], *, kafka_partition: int, kafka_offset: int, ingested_at: dt.datetime,
) -> Row:
    """One decision, v1 or v2: the codec fills v2's fields with their defaults for v1 bytes, and the same
    defaults apply here to a record built without them."""
    decided_at = as_utc(value["decided_at"])
    candidates = value["candidates"]
    return {
        "decision_id": value["decision_id"],
        "decided_at": decided_at,
        "decided_date": decided_at.date(),
        "tenant": value["tenant"],
        "service": value["service"],
        "feature": value["feature"],
        "request_id": value.get("request_id"),
        "latency_slo_ms": value["latency_slo_ms"],
        "chosen_provider": value.get("chosen_provider"),
        "chosen_model": value.get("chosen_model"),
        "reason_code": value["reason_code"],
        "reason": value["reason"],
        "reason_codes": list(value.get("reason_codes") or []),
        "route": value.get("route") or "",
        "policy_version": value.get("policy_version") or 0,
        "experiment": value.get("experiment"),
        "arm": value.get("arm"),
        "shadow_provider": value.get("shadow_provider"),
        "shadow_model": value.get("shadow_model"),
        "fallbacks": list(value.get("fallbacks") or []),
        "budget_status": value.get("budget_status"),
        "budget_used_pct": value.get("budget_used_pct"),
        "downgraded": int(value.get("downgraded", False)),
        "static_fallback": int(value.get("static_fallback", False)),
        "estimated_cost_usd": value.get("estimated_cost_usd"),
        "customer": value.get("customer"),
        "session_id": value.get("session_id"),
        "live_table_age_ms": value.get("live_table_age_ms"),
        "candidate_provider": [c["provider"] for c in candidates],
        "candidate_model": [c["model"] for c in candidates],
        "candidate_p95_latency_ms": [c.get("p95_latency_ms") for c in candidates],
        "candidate_error_rate": [c.get("error_rate") for c in candidates],
        "candidate_estimated_cost_usd": [c.get("estimated_cost_usd") for c in candidates],
        "candidate_eligible": [int(c["eligible"]) for c in candidates],
        "candidate_verdict": [c["verdict"] for c in candidates],
        "candidate_breaker_state": [c.get("breaker_state") for c in candidates],
        "kafka_partition": kafka_partition,
        "kafka_offset": kafka_offset,
        "ingested_at": as_utc(ingested_at),
    }


def dead_letter_id(value: Mapping[str, Any]) -> str:
    """The same source message rejected again by the same stage (a replay) is the same letter."""
    return f"{value['stage']}/{value['source_topic']}/{value['source_partition']}/{value['source_offset']}"


def dead_letter_row(
    value: Mapping[str, Any], *, kafka_partition: int, kafka_offset: int, ingested_at: dt.datetime,
) -> Row:
    failed_at = as_utc(value["failed_at"])
    header_keys, header_values = map_to_arrays(value.get("original_headers") or {})
    return {
        "letter_id": dead_letter_id(value),
        "failed_at": failed_at,
        "failed_date": failed_at.date(),
        "stage": value["stage"],
        "source_topic": value["source_topic"],
        "source_partition": value["source_partition"],
        "source_offset": value["source_offset"],
        "error_field": value.get("error_field"),
        "error_rule": value["error_rule"],
        "error_message": value["error_message"],
        "original_key": value.get("original_key"),
        "original_value": value.get("original_value"),
        "original_header_keys": header_keys,
        "original_header_values": header_values,
        "kafka_partition": kafka_partition,
        "kafka_offset": kafka_offset,
        "ingested_at": as_utc(ingested_at),
    }


def unique_by(rows: Iterable[Row], id_column: str) -> tuple[list[Row], int]:
    """The first row for each id, in order, and how many repeats were dropped."""
    seen: set[str] = set()
    unique = []
    repeats = 0
    for row in rows:
        if row[id_column] in seen:
            repeats += 1
            continue
        seen.add(row[id_column])
        unique.append(row)
    return unique, repeats


def require_table(client: Client, database: str, table: str) -> None:
    """Raise SinkNotReady (saying to run the migrations) unless `database.table` exists."""
    try:
        exists = client.execute(f"EXISTS TABLE {table_ref(database, table)}")
    except ServerException as exc:
        if exc.code == ErrorCodes.UNKNOWN_DATABASE:
            raise SinkNotReady(f"database {database} does not exist: run `prismops migrate` first") from exc
        raise
    if not exists or not exists[0][0]:
        raise SinkNotReady(f"table {database}.{table} does not exist: run `prismops migrate` first")


class ClickHouseTableSink(Sink):
    """One table; subclasses name it, its id column, the key column that narrows the id lookup, and the row
    function. The lookup filters on the prune column first so ClickHouse reads only the parts (and primary
    key ranges) that can hold the batch's ids."""

    table: ClassVar[str]
    id_column: ClassVar[str]
    prune_column: ClassVar[str]
    to_row: ClassVar[Callable[..., Row]]

    def __init__(self, client: Client, database: str) -> None:
        self.client = client
        self.database = database
        self.name = f"clickhouse.{self.table}"
        self._ref = table_ref(database, self.table)

    def open(self) -> None:
        require_table(self.client, self.database, self.table)

    def rows(self, batch: Sequence[SinkRecord], ingested_at: dt.datetime) -> list[Row]:
        row_for = type(self).to_row
        return [
            row_for(record.value, kafka_partition=record.partition, kafka_offset=record.offset, ingested_at=ingested_at)
            for record in batch
        ]

    def existing_ids(self, rows: Sequence[Row]) -> set[str]:
        if not rows:
            return set()
        prune_values = tuple(sorted({row[self.prune_column] for row in rows}))
        found = self.client.execute(
            f"SELECT {self.id_column} FROM {self._ref}"
            f" WHERE {self.prune_column} IN %(prune_values)s AND {self.id_column} IN {_BATCH_IDS_TABLE}",
            {"prune_values": prune_values},
            external_tables=[{
                "name": _BATCH_IDS_TABLE,
                "structure": [(self.id_column, "String")],
                "data": [{self.id_column: row[self.id_column]} for row in rows],
            }],
        )
        return {row_id for (row_id,) in found}

    def write(self, batch: Sequence[SinkRecord]) -> WriteResult:
        ingested_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        unique, repeats = unique_by(self.rows(batch, ingested_at), self.id_column)
        stored = self.existing_ids(unique)
        fresh = [row for row in unique if row[self.id_column] not in stored]
        if fresh:
            columns = list(fresh[0])
            self.client.execute(f"INSERT INTO {self._ref} ({', '.join(columns)}) VALUES", fresh)
        return WriteResult(rows_written=len(fresh), duplicates_skipped=repeats + len(unique) - len(fresh))

    def close(self) -> None:
        self.client.disconnect()


class CostLineSink(ClickHouseTableSink):
    """cost.lines.v1 → cost_lines, deduplicated by batch in the steady state.

    Why a batch ledger: looking a batch's line ids up in cost_lines reads the line_id column of every row of
    their days, so the sink slowed down as a day filled. A duplicate can only come from (a) this sink's own
    replay of a batch it stored but did not commit, or (b) the worker sending a batch again after its own crash.
    (b) carries the batch's identity (origin@position, the same on every replay; a single line's id for
    single lines), which `cost_line_batches` (filled by a materialized view in the same INSERT) answers with a
    primary-key lookup whose cost does not grow with the table. (a) happens only after a start, an assignment
    or a failed batch: the runner calls `expect_replays()` then, and the next batch is checked line id by line
    id, as every batch was before. Checkpoint order (base.Sink): dead letters flushed → INSERT confirmed (rows
    and ledger) → offsets committed.
    """

    table = "cost_lines"
    id_column = "line_id"
    prune_column = "event_date"
    to_row = staticmethod(cost_line_row)
    ledger = "cost_line_batches"

    def __init__(self, client: Client, database: str) -> None:
        super().__init__(client, database)
        self._ledger_ref = table_ref(database, self.ledger)
        self._check_every_id = True

    def open(self) -> None:
        super().open()
        require_table(self.client, self.database, self.ledger)
        require_table(self.client, self.database, "billing_exports")

    def expect_replays(self) -> None:
        self._check_every_id = True

    def rows(self, batch: Sequence[SinkRecord], ingested_at: dt.datetime) -> list[Row]:
        rows = super().rows(batch, ingested_at)
        for row, record in zip(rows, batch):
            row["batch_id"] = record.batch_id or row["line_id"]
        return rows

    def existing_ids(self, rows: Sequence[Row]) -> set[str]:
        if self._check_every_id or not rows:
            return super().existing_ids(rows)
        batch_ids = tuple(sorted({row["batch_id"] for row in rows}))
        stored = {batch_id for (batch_id,) in self.client.execute(
            f"SELECT DISTINCT batch_id FROM {self._ledger_ref} WHERE batch_id IN %(batch_ids)s",
            {"batch_ids": batch_ids})}
        return {row[self.id_column] for row in rows if row["batch_id"] in stored}

    def write(self, batch: Sequence[SinkRecord]) -> WriteResult:
        current, superseded = self.drop_superseded(batch)
        result = super().write(current)
        self._check_every_id = False
        if superseded:
            result = WriteResult(result.rows_written, result.duplicates_skipped + superseded)
        return result

    def drop_superseded(self, batch: Sequence[SinkRecord]) -> tuple[list[SinkRecord], int]:
        """The records to store, and how many were left out: a cloud bill line of an export that a newer export of
        its billing period has replaced (billing_exports: a larger sequence is in force). Such a line can arrive
        after the restatement deleted its export's lines (it was still in Kafka); storing it would count the period
        twice. Lines that belong to no recorded export (export_seq null) are always stored. Counted with the
        duplicates skipped: both are lines the table must not get."""
        keyed = [r for r in batch if r.value.get("export_seq") and r.value.get("billing_account_id")]
        if not keyed:
            return list(batch), 0
        in_force = sequences_in_force(self.client, self.database, {r.value["billing_account_id"] for r in keyed})

        def current(record: SinkRecord) -> bool:
            value = record.value
            if not value.get("export_seq") or not value.get("billing_account_id"):
                return True
            key = (value["billing_account_id"], as_utc(value["billing_period_start"]).replace(microsecond=0))
            return value["export_seq"] >= in_force.get(key, 0)

        kept = [r for r in batch if current(r)]
        return kept, len(batch) - len(kept)


def sequences_in_force(client: Any, database: str, accounts: Iterable[str]) -> dict[tuple[str, dt.datetime], int]:
    """(billing account, UTC period start) → the sequence of the export in force, for the periods of `accounts`."""
    found = client.execute(
        f"SELECT billing_account_id, billing_period_start, max(sequence) FROM {table_ref(database, 'billing_exports')}"
        " WHERE billing_account_id IN %(accounts)s GROUP BY billing_account_id, billing_period_start",
        {"accounts": tuple(sorted(accounts))},
    )
    return {(account, as_utc(start)): int(sequence) for account, start, sequence in found}


class RoutingDecisionSink(ClickHouseTableSink):
    table = "routing_decisions"
    id_column = "decision_id"
    prune_column = "decided_date"
    to_row = staticmethod(routing_decision_row)


class DeadLetterSink(ClickHouseTableSink):
    table = "dead_letters"
    id_column = "letter_id"
    prune_column = "source_topic"
    to_row = staticmethod(dead_letter_row)


def budget_event_row(
    value: Mapping[str, Any], *, kafka_partition: int, kafka_offset: int, ingested_at: dt.datetime,
) -> Row:
    period_start = as_utc(value["period_start"])
    return {
        "event_id": value["event_id"],
        "at": as_utc(value["at"]),
        "budget_id": value["budget_id"],
        "scope": value["scope"],
        "scope_id": value["scope_id"],
        "period": value["period"],
        "period_start": period_start,
        "period_date": period_start.date(),
        "unit": value["unit"],
        "threshold_pct": value["threshold_pct"],
        "action": value["action"],
        "budget_limit": value["limit"],
        "spent": value["spent"],
        "message": value["message"],
        "kafka_partition": kafka_partition,
        "kafka_offset": kafka_offset,
        "ingested_at": as_utc(ingested_at),
    }


class BudgetEventSink(ClickHouseTableSink):
    """budget.events.v1 → budget_events; a re-sent event (same event_id) is skipped like any replay."""

    table = "budget_events"
    id_column = "event_id"
    prune_column = "period_date"
    to_row = staticmethod(budget_event_row)


def allocation_row(
    value: Mapping[str, Any], *, kafka_partition: int, kafka_offset: int, ingested_at: dt.datetime,
) -> Row:
    window_start = as_utc(value["window_start"])
    return {
        "allocation_id": value["allocation_id"],
        "window_start": window_start,
        "window_end": as_utc(value["window_end"]),
        "window_date": window_start.date(),
        "pool": value["pool"],
        "cluster": value["cluster"],
        "node": value["node"],
        "gpu_model": value["gpu_model"],
        "capacity_type": value["capacity_type"],
        "kind": value["kind"],
        "tenant": value["tenant"],
        "team": value["team"],
        "namespace": value.get("namespace"),
        "job": value.get("job"),
        "charged_gpu_seconds": value["charged_gpu_seconds"],
        "share": value["share"],
        "direct_cost_usd": value["direct_cost_usd"],
        "idle_cost_usd": value["idle_cost_usd"],
        "cost_usd": value["cost_usd"],
        "pool_cost_usd": value["pool_cost_usd"],
        "idle_policy": value["idle_policy"],
        "tokens": value.get("tokens", 0),
        "usd_per_mtok": value.get("usd_per_mtok"),
        "price_version": value["price_version"],
        "late": int(value.get("late", False)),
        "kafka_partition": kafka_partition,
        "kafka_offset": kafka_offset,
        "ingested_at": as_utc(ingested_at),
    }


class GpuAllocationSink(ClickHouseTableSink):
    """cost.allocations.v1 → gpu_allocations; a re-emitted window (same allocation ids) is skipped like any replay."""

    table = "gpu_allocations"
    id_column = "allocation_id"
    prune_column = "window_date"
    to_row = staticmethod(allocation_row)


def policy_audit_row(
    value: Mapping[str, Any], *, kafka_partition: int, kafka_offset: int, ingested_at: dt.datetime,
) -> Row:
    changed_at = as_utc(value["changed_at"])
    return {
        "audit_id": value["audit_id"],
        "changed_at": changed_at,
        "changed_date": changed_at.date(),
        "actor": value["actor"],
        "role": value["role"],
        "action": value["action"],
        "source": value["source"],
        "old_version": value["old_version"],
        "new_version": value["new_version"],
        "old_sha256": value["old_sha256"],
        "new_sha256": value["new_sha256"],
        "diff": value["diff"],
        "comment": value.get("comment"),
        "kafka_partition": kafka_partition,
        "kafka_offset": kafka_offset,
        "ingested_at": as_utc(ingested_at),
    }


class PolicyAuditSink(ClickHouseTableSink):
    """audit.policy.v1 → policy_audit; a replayed change (same audit_id) is skipped like any replay."""

    table = "policy_audit"
    id_column = "audit_id"
    prune_column = "changed_date"
    to_row = staticmethod(policy_audit_row)


def anomaly_row(
    value: Mapping[str, Any], *, kafka_partition: int, kafka_offset: int, ingested_at: dt.datetime,
) -> Row:
    window_start = as_utc(value["window_start"])
    contributors = value.get("contributors") or []
    return {
        "anomaly_id": value["anomaly_id"],
        "detected_at": as_utc(value["detected_at"]),
        "window_start": window_start,
        "window_end": as_utc(value["window_end"]),
        "window_date": window_start.date(),
        "metric": value["metric"],
        "series": value["series"],
        "series_key": value["series_key"],
        "tenant": value.get("tenant"),
        "service": value.get("service"),
        "feature": value.get("feature"),
        "provider": value.get("provider"),
        "model": value.get("model"),
        "actual": value["actual"],
        "expected": value["expected"],
        "actual_cost_usd": value.get("actual_cost_usd"),
        "expected_cost_usd": value.get("expected_cost_usd"),
        "score": value["score"],
        "severity": value["severity"],
        "contributor_dimension": [c["dimension"] for c in contributors],
        "contributor_value": [c["value"] for c in contributors],
        "contributor_window_value": [c["window_value"] for c in contributors],
        "contributor_baseline_value": [c["baseline_value"] for c in contributors],
        "contributor_delta": [c["delta"] for c in contributors],
        "contributor_share": [c["share"] for c in contributors],
        "message": value["message"],
        "kafka_partition": kafka_partition,
        "kafka_offset": kafka_offset,
        "ingested_at": as_utc(ingested_at),
    }


class AnomalySink(ClickHouseTableSink):
    """cost.anomalies.v1 → anomalies; a re-scored window carries the same anomaly_id and is skipped."""

    table = "anomalies"
    id_column = "anomaly_id"
    prune_column = "window_date"
    to_row = staticmethod(anomaly_row)


def gpu_usage_row(
    value: Mapping[str, Any], *, kafka_partition: int, kafka_offset: int, ingested_at: dt.datetime,
) -> Row:
    """One usage.gpu.v1 event as a gpu_usage row: every schema field, the times split into the second (DateTime)
    and the microseconds past it, the labels as parallel arrays. `gpu_usage_event` is its inverse."""
    window_start = as_utc(value["window_start"])
    window_end = as_utc(value["window_end"])
    label_keys, label_values = map_to_arrays(value.get("labels") or {})
    return {
        "event_id": value["event_id"],
        "window_start": window_start.replace(microsecond=0),
        "window_start_us": window_start.microsecond,
        "window_end": window_end.replace(microsecond=0),
        "window_end_us": window_end.microsecond,
        "window_date": window_start.date(),
        "cluster": value["cluster"],
        "node": value["node"],
        "gpu_model": value["gpu_model"],
        "gpu_index": value["gpu_index"],
        "gpu_fraction": value["gpu_fraction"],
        "mig_profile": value.get("mig_profile"),
        "capacity_type": value["capacity_type"],
        "tenant": value["tenant"],
        "team": value.get("team"),
        "namespace": value.get("namespace"),
        "job": value.get("job"),
        "requested_gpu_seconds": value["requested_gpu_seconds"],
        "used_gpu_seconds": value["used_gpu_seconds"],
        "memory_bytes": value.get("memory_bytes") or 0,
        "source": value["source"],
        "label_keys": label_keys,
        "label_values": label_values,
        "kafka_partition": kafka_partition,
        "kafka_offset": kafka_offset,
        "ingested_at": as_utc(ingested_at),
    }


class GpuUsageSink(ClickHouseTableSink):
    """usage.gpu.v1 → gpu_usage (the windows job profiles are built from); a replayed event (same event_id) is
    skipped like any replay."""

    table = "gpu_usage"
    id_column = "event_id"
    prune_column = "window_date"
    to_row = staticmethod(gpu_usage_row)


GPU_USAGE_EVENT_COLUMNS = (
    "event_id", "window_start", "window_start_us", "window_end", "window_end_us", "cluster", "node", "gpu_model",
    "gpu_index", "gpu_fraction", "mig_profile", "capacity_type", "tenant", "team", "namespace", "job",
    "requested_gpu_seconds", "used_gpu_seconds", "memory_bytes", "source", "label_keys", "label_values",
)


def gpu_usage_event(row: Mapping[str, Any]) -> dict[str, Any]:
    """A gpu_usage row (columns GPU_USAGE_EVENT_COLUMNS) back as the usage.gpu.v1 event it was written from,
    as the codec decodes it: aware UTC times with their microseconds, Decimals, labels as a dict."""
    return {
        "event_id": row["event_id"],
        "window_start": as_utc(row["window_start"]).replace(microsecond=int(row["window_start_us"])),
        "window_end": as_utc(row["window_end"]).replace(microsecond=int(row["window_end_us"])),
        "cluster": row["cluster"],
        "node": row["node"],
        "gpu_model": row["gpu_model"],
        "gpu_index": int(row["gpu_index"]),
        "gpu_fraction": row["gpu_fraction"],
        "mig_profile": row["mig_profile"],
        "capacity_type": row["capacity_type"],
        "tenant": row["tenant"],
        "team": row["team"],
        "namespace": row["namespace"],
        "job": row["job"],
        "requested_gpu_seconds": row["requested_gpu_seconds"],
        "used_gpu_seconds": row["used_gpu_seconds"],
        "memory_bytes": int(row["memory_bytes"]),
        "source": row["source"],
        "labels": dict(zip(row["label_keys"], row["label_values"])),
    }


def gpu_usage_events(client: Any, database: str, *, since: dt.date, until: dt.date) -> list[dict[str, Any]]:
    """The usage.gpu.v1 events stored in gpu_usage whose window starts on a UTC day in [since, until), read with
    FINAL (a row the safety net has not merged yet counts once), in a stable order."""
    found = client.execute(
        f"SELECT {', '.join(GPU_USAGE_EVENT_COLUMNS)} FROM {table_ref(database, 'gpu_usage')} FINAL"
        " WHERE window_date >= %(since)s AND window_date < %(until)s"
        " ORDER BY window_start, window_start_us, tenant, event_id",
        {"since": since, "until": until},
    )
    return [gpu_usage_event(dict(zip(GPU_USAGE_EVENT_COLUMNS, values))) for values in found]
