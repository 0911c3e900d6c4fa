"""Settled daily cost rollups and the exact reads over them (tables in migration 0011_cost_rollups.sql).

Why not a materialized view that sums: it counts a cost line twice if the line is ever inserted twice, and on
ClickHouse 18.16 nothing stops that (two sinks racing through a rebalance). So rollups are written per UTC day
by `settle_days`, from `cost_lines FINAL` (exact after any replay), under a random settle_id, and a
`cost_settlements` row records the day's insert count (`cost_line_inserts`, kept by a materialized view that
counts every inserted row, duplicates included) taken BEFORE the sums were read. `day_sources` tells, per day,
whether that count is still the same. A day that got any insert since (late or replayed data) is read from
`cost_lines FINAL` instead, as is every day without a settlement, so every read through `cost_query` is exact
whatever state the rollup is in, and fast for every settled day.

Rows inserted while a settle runs make the recorded count older than the sums (conservative: the day reads as
changed). Deleting cost lines by hand (ALTER … DELETE, DROP PARTITION) does not move the counter: settle again
with `force` after doing so.
"""

from __future__ import annotations

import datetime as dt
import decimal
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prismops.sinks.clickhouse import table_ref


class QueryClient(Protocol):
    """clickhouse-driver's Client, or prismops.sinks.chdb_client.ChdbClient."""

    def execute(self, query: str, params: Any = None) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class Measure:
    """One summed column: how it is computed from cost_lines rows, and how rollup rows combine."""

    name: str
    raw: str
    merge: str = "sum"


MEASURES: tuple[Measure, ...] = (
    Measure("lines", "count()"),
    Measure("cost_usd", "sum(cost_usd)"),
    Measure("llm_requests", "countIf(source = 'llm')"),
    Measure("llm_cost_usd", "sumIf(cost_usd, source = 'llm')"),
    Measure("unpriced_lines", "countIf(priced = 0)"),
    Measure("input_tokens", "sum(input_tokens)"),
    Measure("output_tokens", "sum(output_tokens)"),
    Measure("cached_input_tokens", "sum(cached_input_tokens)"),
    Measure("cache_write_tokens", "sum(cache_write_tokens)"),
    Measure("reasoning_tokens", "sum(reasoning_tokens)"),
    Measure("cache_hit_requests", "countIf(source = 'llm' AND cache_hit = 1)"),
    Measure("fallback_requests", "countIf(source = 'llm' AND fallback = 1)"),
    Measure("shadow_requests", "countIf(source = 'llm' AND shadow = 1)"),
    Measure("error_requests", "countIf(source = 'llm' AND status != 'ok')"),
    # uniqExactIf states: ClickHouse 18.16 and current ClickHouse give them the same type (uniqExact of a
    # Nullable they do not), and the merge of states is an exact distinct count across days and groups.
    Measure("sessions", "uniqExactIfState(ifNull(session_id, ''), ifNull(session_id, '') != '')", "uniqExactIfMerge"),
    Measure("customers", "uniqExactIfState(ifNull(customer, ''), ifNull(customer, '') != '')", "uniqExactIfMerge"),
)
MEASURE_NAMES = tuple(m.name for m in MEASURES)

# Each dimension a report can group by, as an expression over cost_lines.
DIMENSION_EXPRESSIONS: dict[str, str] = {
    "tenant": "tenant",
    "team": "team",
    "product": "product",
    "service": "service",
    "feature": "feature",
    "environment": "environment",
    "provider": "provider",
    "model": "model",
    "source": "source",
    "node": "if(source = 'gpu', ifNull(resource, ''), '')",
    "priced": "priced",
    "customer": "ifNull(customer, '')",
}


@dataclass(frozen=True)
class Rollup:
    table: str
    dimensions: tuple[str, ...]


ROLLUPS: tuple[Rollup, ...] = (
    Rollup("cost_daily", (
        "tenant", "team", "product", "service", "feature", "environment", "provider", "model", "source", "node", "priced",
    )),
    Rollup("cost_daily_customers", ("tenant", "customer")),
)
SETTLEMENTS = "cost_settlements"
INSERTS = "cost_line_inserts"


def rollup_for(dimensions: Sequence[str]) -> Rollup | None:
    """The first rollup that has every requested dimension, or None (then only the raw table can answer)."""
    for rollup in ROLLUPS:
        if set(dimensions) <= set(rollup.dimensions):
            return rollup
    return None


@dataclass(frozen=True)
class DaySources:
    """Which days of a range to read from the rollups (settled, no insert since) and which days with inserts are
    not settled; the reads take every day of the range that is not in `settled` from the raw table."""

    settled: dict[dt.date, int]  # day -> settle_id in force
    raw: list[dt.date]

    @property
    def days(self) -> list[dt.date]:
        return sorted([*self.settled, *self.raw])


@dataclass(frozen=True)
class Settlement:
    event_date: dt.date
    settle_id: int
    inserted_rows: int
    state: str  # settled, unchanged


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)


def _range(since: dt.date | None, until: dt.date | None, column: str = "event_date") -> tuple[str, dict[str, Any]]:
    conditions, params = ["1"], {}
    if since is not None:
        conditions.append(f"{column} >= %(since)s")
        params["since"] = since
    if until is not None:
        conditions.append(f"{column} < %(until)s")
        params["until"] = until
    return " AND ".join(conditions), params


def insert_counts(
    client: QueryClient, database: str, since: dt.date | None, until: dt.date | None,
) -> dict[dt.date, int]:
    """Rows ever inserted per day (duplicates included), from the counter the materialized view keeps."""
    condition, params = _range(since, until)
    rows = client.execute(
        f"SELECT event_date, countMerge(inserted) FROM {table_ref(database, INSERTS)}"
        f" WHERE {condition} GROUP BY event_date",
        params,
    )
    return {day: int(count) for day, count in rows}


def has_rollups(client: QueryClient, database: str) -> bool:
    """False in databases without migration 0011 (e.g. a tenant's read-only copy): then everything is raw."""
    return all(
        client.execute(f"EXISTS TABLE {table_ref(database, name)}")[0][0]
        for name in (SETTLEMENTS, INSERTS, *(r.table for r in ROLLUPS))
    )


def settlements_in_force(
    client: QueryClient, database: str, since: dt.date | None, until: dt.date | None,
) -> dict[dt.date, tuple[int, int]]:
    """Per day, the newest settlement (ties on settled_at broken by settle_id): its id and insert count."""
    condition, params = _range(since, until)
    rows = client.execute(
        f"SELECT event_date, argMax((settle_id, inserted_rows), (settled_at, settle_id))"
        f" FROM {table_ref(database, SETTLEMENTS)} WHERE {condition} GROUP BY event_date",
        params,
    )
    return {day: (int(best[0]), int(best[1])) for day, best in rows}


def day_sources(client: QueryClient, database: str, since: dt.date | None, until: dt.date | None) -> DaySources:
    if not has_rollups(client, database):
        return DaySources({}, [])
    counts = insert_counts(client, database, since, until)
    in_force = settlements_in_force(client, database, since, until)
    settled, raw = {}, []
    for day, count in sorted(counts.items()):
        settlement = in_force.get(day)
        if settlement and settlement[1] == count:
            settled[day] = settlement[0]
        else:
            raw.append(day)
    return DaySources(settled, raw)


def _calendar(since: dt.date, until: dt.date) -> list[dt.date]:
    return [since + dt.timedelta(days=n) for n in range((until - since).days)]


def _dimension_list(dimensions: Sequence[str], raw: bool) -> str:
    return ", ".join(f"{DIMENSION_EXPRESSIONS[d] if raw else d} AS d_{d}" for d in dimensions)


def _branch_columns(dimensions: Sequence[str], measures_wanted: Sequence[Measure], raw: bool) -> str:
    measures = ", ".join(f"{m.raw if raw else m.name} AS m_{m.name}" for m in measures_wanted)
    return f"{_dimension_list(dimensions, raw)}, {measures}" if dimensions else measures


def cost_query(
    client: QueryClient, database: str, dimensions: Sequence[str], *,
    since: dt.date | None = None, until: dt.date | None = None, where: dict[str, str] | None = None,
    sources: DaySources | None = None, measures: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The `measures` (default: all of MEASURES) per group of `dimensions` over [since, until), exact: settled
    days from the rollup that has the dimensions, every other day from `cost_lines FINAL`. `where` filters
    dimension = value.
    With no dimensions, one row of totals. Ask only for the measures you need: the distinct-count states
    (sessions, customers) are by far the largest columns to read."""
    wanted = [m for m in MEASURES if measures is None or m.name in measures]
    if measures is not None and len(wanted) != len(set(measures)):
        raise ValueError(f"unknown measure(s) among {', '.join(measures)}; use: {', '.join(MEASURE_NAMES)}")
    unknown = [d for d in [*dimensions, *(where or {})] if d not in DIMENSION_EXPRESSIONS]
    if unknown:
        raise ValueError(f"unknown dimension(s) {', '.join(unknown)}; use: {', '.join(DIMENSION_EXPRESSIONS)}")
    sources = sources or day_sources(client, database, since, until)
    rollup = rollup_for([*dimensions, *(where or {})])
    settled = dict(sources.settled) if rollup else {}
    range_condition, params = _range(since, until)
    filters_raw, filters_rollup = [], []
    for index, (dimension, value) in enumerate((where or {}).items()):
        params[f"w{index}"] = value
        filters_raw.append(f" AND {DIMENSION_EXPRESSIONS[dimension]} = %(w{index})s")
        filters_rollup.append(f" AND {dimension} = %(w{index})s")
    branches = []
    if settled:
        params["settled"] = tuple((day, settle_id) for day, settle_id in sorted(settled.items()))
        branches.append(
            f"SELECT {_branch_columns(dimensions, wanted, raw=False)} FROM {table_ref(database, rollup.table)}"
            f" WHERE (event_date, settle_id) IN %(settled)s{''.join(filters_rollup)}"
        )
    if since is not None and until is not None:
        # every calendar day of the range that is not settled: an IN list on the first key column prunes parts
        raw_days = [day for day in _calendar(since, until) if day not in settled]
        params["raw_days"] = tuple(raw_days)
        raw_condition = "event_date IN %(raw_days)s" if raw_days else ""
    else:
        raw_condition = range_condition + (" AND event_date NOT IN %(settled_days)s" if settled else "")
        params["settled_days"] = tuple(sorted(settled))
    if raw_condition:
        group = f" GROUP BY {', '.join(f'd_{d}' for d in dimensions)}" if dimensions else ""
        branches.append(
            f"SELECT {_branch_columns(dimensions, wanted, raw=True)} FROM {table_ref(database, 'cost_lines')} FINAL"
            f" WHERE {raw_condition}{''.join(filters_raw)}{group}"
        )
    names = [m.name for m in wanted]
    if not branches:
        return [] if dimensions else [_empty_totals(names)]
    outer_dims = ", ".join(f"d_{d}" for d in dimensions)
    merged = ", ".join(f"{m.merge}(m_{m.name})" for m in wanted)
    select = f"{outer_dims}, {merged}" if dimensions else merged
    order = f"sum(m_cost_usd) DESC, {outer_dims}" if "cost_usd" in names else outer_dims
    group = f" GROUP BY {outer_dims} ORDER BY {order}" if dimensions else ""
    rows = client.execute(f"SELECT {select} FROM ({' UNION ALL '.join(branches)}){group}", params)
    result = [_typed(dict(zip([*dimensions, *names], row)), dimensions, names) for row in rows]
    return result or ([] if dimensions else [_empty_totals(names)])


def _typed(values: dict[str, Any], dimensions: Sequence[str], names: Sequence[str]) -> dict[str, Any]:
    typed = {d: values[d] for d in dimensions}
    for name in names:
        value = values[name]
        typed[name] = decimal.Decimal(value) if name.endswith("_usd") else int(value)
    return typed


def _empty_totals(names: Sequence[str]) -> dict[str, Any]:
    return {name: decimal.Decimal(0) if name.endswith("_usd") else 0 for name in names}


def settle_days(
    client: QueryClient, database: str, *, since: dt.date | None = None, until: dt.date | None = None,
    before: dt.date | None = None, force: bool = False, now: dt.datetime | None = None,
) -> list[Settlement]:
    """Write the rollups of every day with cost lines in [since, until) that got inserts since its last settle
    (all of them with `force`), skipping days on or after `before` (e.g. today, still being written). Per day:
    the insert count, then each rollup from `cost_lines FINAL`, then the settlement row, so a settlement never
    points at rollup rows that are not all written."""
    condition, params = _range(since, until)
    days = {day for (day,) in client.execute(
        f"SELECT DISTINCT event_date FROM {table_ref(database, 'cost_lines')} WHERE {condition}", params)}
    counts = insert_counts(client, database, since, until)
    in_force = settlements_in_force(client, database, since, until)
    settled_at = _utc(now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    results = []
    for day in sorted(days | set(counts)):
        if before is not None and day >= before:
            continue
        count = counts.get(day, 0)
        existing = in_force.get(day)
        if existing and existing[1] == count and not force:
            results.append(Settlement(day, existing[0], count, "unchanged"))
            continue
        settle_id = secrets.randbits(63)
        for rollup in ROLLUPS:
            columns = ["event_date", "settle_id", *rollup.dimensions, *MEASURE_NAMES]
            dims = ", ".join(DIMENSION_EXPRESSIONS[d] for d in rollup.dimensions)
            measures = ", ".join(m.raw for m in MEASURES)
            client.execute(
                f"INSERT INTO {table_ref(database, rollup.table)} ({', '.join(columns)})"
                f" SELECT event_date, toUInt64(%(settle_id)s), {dims}, {measures}"
                f" FROM {table_ref(database, 'cost_lines')} FINAL WHERE event_date = %(day)s"
                f" GROUP BY event_date, {dims}",
                {"settle_id": settle_id, "day": day},
            )
        client.execute(
            f"INSERT INTO {table_ref(database, SETTLEMENTS)} (event_date, settle_id, settled_at, inserted_rows) VALUES",
            [{"event_date": day, "settle_id": settle_id, "settled_at": settled_at, "inserted_rows": count}],
        )
        results.append(Settlement(day, settle_id, count, "settled"))
    return results


def prune_superseded(client: QueryClient, database: str, *, older_than: dt.timedelta = dt.timedelta(hours=1),
                     now: dt.datetime | None = None) -> int:
    """Delete the rollup rows of settles that a newer settle of the same day replaced more than `older_than` before
    `now` (default: the clock); a report that looked up the old settle an instant before the new one landed is long
    done by then. Settle times have whole seconds, so a settle in the current second is never old enough.
    Returns how many settles were pruned."""
    cutoff = _utc((now or dt.datetime.now(dt.timezone.utc)) - older_than).replace(microsecond=0)
    rows = client.execute(
        f"SELECT event_date, settle_id, settled_at FROM {table_ref(database, SETTLEMENTS)}"
        " ORDER BY event_date, settled_at, settle_id"
    )
    by_day: dict[dt.date, list[tuple[int, dt.datetime]]] = {}
    for day, settle_id, settled_at in rows:
        by_day.setdefault(day, []).append((int(settle_id), _utc(settled_at)))
    superseded = []
    for settles in by_day.values():
        newest_id, newest_at = settles[-1]
        if newest_at < cutoff:
            superseded.extend(settle_id for settle_id, _ in settles[:-1])
    if superseded:
        for rollup in ROLLUPS:
            client.execute(f"ALTER TABLE {table_ref(database, rollup.table)} DELETE WHERE settle_id IN %(ids)s",
                           {"ids": tuple(sorted(superseded))})
        client.execute(f"ALTER TABLE {table_ref(database, SETTLEMENTS)} DELETE WHERE settle_id IN %(ids)s",
                       {"ids": tuple(sorted(superseded))})
    return len(superseded)
