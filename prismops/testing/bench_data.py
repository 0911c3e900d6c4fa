"""Millions of cost lines generated inside ClickHouse (INSERT … SELECT from numbers()), for `prismops bench
showback`: building them in Python and sending them over the wire would time the client, not the reports.

The dimensions are correlated the way real traffic is (a team and its customers belong to one tenant, a
product to one service), so the rollups have a realistic size: 20 tenants, 80 teams, 8 features, 6 models,
3,000 customers, 400,000 sessions. Costs are exact decimals of at most 8 places.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from prismops.sinks.clickhouse import table_ref

COLUMNS = (
    "line_id", "source", "source_event_id", "event_time", "event_date", "tenant", "team", "product", "service",
    "feature", "customer", "environment", "provider", "model", "input_tokens", "output_tokens",
    "cached_input_tokens", "reasoning_tokens", "usage_quantity", "usage_unit", "cost_usd", "priced",
    "price_version", "status", "session_id", "cache_hit", "fallback", "shadow", "tag_source_keys",
    "tag_source_values", "label_keys", "label_values", "kafka_partition", "kafka_offset", "ingested_at",
)

# a %(name)s template: the modulo operator is written %% here
_SELECT = """
SELECT
    concat('bench-', toString(number)) AS line_id,
    'llm',
    toString(number),
    toDateTime(%(start)s) + intDiv(number * %(span_s)s, %(rows)s) AS at,
    toDate(at),
    concat('tenant-', toString(number %% 20)) AS tenant_name,
    concat(tenant_name, '-team-', toString(intDiv(number, 20) %% 4)),
    concat('product-', toString(number %% 20 %% 6)),
    concat('service-', toString(number %% 20 %% 6)),
    concat('feature-', toString(intDiv(number, 80) %% 8)),
    concat(tenant_name, '-customer-', toString(intDiv(number, 640) %% 150)),
    if(number %% 10 = 0, 'staging', 'prod'),
    ['openai', 'openai', 'anthropic', 'anthropic', 'google', 'google'][intDiv(number, 7) %% 6 + 1],
    ['gpt-4o', 'gpt-4o-mini', 'claude-3-5-sonnet', 'claude-3-5-haiku', 'gemini-1.5-pro', 'gemini-1.5-flash'][intDiv(number, 7) %% 6 + 1],
    toInt64(100 + intHash32(number) %% 3000) AS input,
    toInt64(20 + intHash32(number + 1) %% 800) AS output,
    toInt64(if(number %% 4 = 0, intDiv(input, 2), 0)),
    toInt64(0),
    toDecimal128(input + output, 12),
    'token',
    toDecimal128(intHash32(number + 2) %% 5000000, 12) / 100000000,
    toUInt8(number %% 97 != 0),
    'bench',
    if(number %% 31 = 0, 'error', 'ok'),
    concat(tenant_name, '-session-', toString(intDiv(number, 13) %% 20000)),
    toUInt8(number %% 4 = 0),
    toUInt8(number %% 23 = 0),
    toUInt8(0),
    ['tenant'], ['explicit'], emptyArrayString(), emptyArrayString(),
    toInt32(0),
    toInt64(number),
    now()
FROM numbers(%(offset)s, %(count)s)
"""


def insert_bench_cost_lines(
    client, database: str, rows: int, *, start: dt.date, days: int, chunk: int = 1_000_000,  # type: ignore[no-untyped-def]
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """`rows` LLM cost lines spread evenly over `days` UTC days from `start`, in chunks of `chunk` rows."""
    target = table_ref(database, "cost_lines")
    for offset in range(0, rows, chunk):
        count = min(chunk, rows - offset)
        client.execute(
            f"INSERT INTO {target} ({', '.join(COLUMNS)}) {_SELECT}",
            {"start": dt.datetime.combine(start, dt.time(), dt.timezone.utc), "span_s": days * 86400,
             "rows": rows, "offset": offset, "count": count},
        )
        if on_chunk:
            on_chunk(offset + count)
