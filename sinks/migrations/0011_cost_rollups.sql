-- cost_rollups: one row per settled UTC day and dimensions (cost_daily, cost_daily_customers) or per inserted
-- batch of a day (cost_line_inserts). Rollups cover SETTLED days only. A materialized view that sums on insert would count a cost line twice if the same
-- line were ever inserted twice (two sinks racing through a rebalance; ClickHouse 18.16 has no insert deduplication
-- on plain inserts), so no cost is summed on insert. Instead `prismops db settle` (sinks.rollups.settle_days) writes,
-- per UTC day, the day's sums computed from `cost_lines FINAL` (exact after any replay) under a fresh settle_id, and
-- then records the settlement with the day's insert count taken BEFORE the sums were read. Reports read a day from
-- the rollup only while its insert count is still the same; a day that got any insert since (late data, a replayed
-- duplicate) is read from `cost_lines FINAL` instead, so a report is exact whatever state the rollup is in, and fast
-- for every settled day.

-- cost_line_inserts: how many rows were ever inserted per day, duplicates included: a counter that changes with
-- every insert and with nothing else (a merge dropping a duplicate does not change what FINAL reads, nor this).
-- Counting on insert is what a materialized view is right for: a duplicate insert SHOULD move the counter.
CREATE TABLE IF NOT EXISTS cost_line_inserts
(
    event_date Date,
    inserted AggregateFunction(count)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY event_date;

CREATE MATERIALIZED VIEW IF NOT EXISTS cost_line_inserts_feed TO cost_line_inserts
AS SELECT event_date, countState() AS inserted FROM cost_lines GROUP BY event_date;

-- The rows stored before the view existed (an insert racing this statement may be counted twice: harmless for a
-- counter that only has to change when rows arrive).
INSERT INTO cost_line_inserts SELECT event_date, countState() FROM cost_lines GROUP BY event_date;

-- cost_settlements: one row per settle of one day; the newest settled_at per day is the one in force.
CREATE TABLE IF NOT EXISTS cost_settlements
(
    event_date Date,
    settle_id UInt64 COMMENT 'random per settle run; the rollup rows of this settle carry it',
    settled_at DateTime('UTC'),
    inserted_rows UInt64 COMMENT 'cost_line_inserts count of the day when the settle began'
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_date, settled_at, settle_id);

-- cost_daily: sums per day and owner/thing dimensions (customer is in cost_daily_customers: it would multiply these
-- rows). node is the GPU pool (cluster/node) for GPU lines and '' for the others. sessions and customers are exact
-- distinct-count states (uniqExactIf, which ClickHouse 18.16 and current ClickHouse type alike; uniqExact of a
-- Nullable does not), so they merge across days and groups without counting anyone twice.
CREATE TABLE IF NOT EXISTS cost_daily
(
    event_date Date,
    settle_id UInt64,
    tenant String,
    team String,
    product String,
    service String,
    feature String,
    environment String,
    provider String,
    model String,
    source String,
    node String,
    priced UInt8,
    lines UInt64,
    cost_usd Decimal(38, 12),
    llm_requests UInt64 COMMENT 'LLM cost lines: one per call',
    llm_cost_usd Decimal(38, 12),
    unpriced_lines UInt64,
    input_tokens Int64,
    output_tokens Int64,
    cached_input_tokens Int64,
    cache_write_tokens Int64,
    reasoning_tokens Int64,
    cache_hit_requests UInt64,
    fallback_requests UInt64,
    shadow_requests UInt64,
    error_requests UInt64 COMMENT 'LLM calls whose status is not ok',
    sessions AggregateFunction(uniqExactIf, String, UInt8) COMMENT 'distinct non-empty session ids',
    customers AggregateFunction(uniqExactIf, String, UInt8) COMMENT 'distinct non-empty customers'
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_date, settle_id, tenant, team, product, service, feature, environment, provider, model, source, node, priced);

-- cost_daily_customers: the same sums per day, tenant and customer ('' when the line has none).
CREATE TABLE IF NOT EXISTS cost_daily_customers
(
    event_date Date,
    settle_id UInt64,
    tenant String,
    customer String,
    lines UInt64,
    cost_usd Decimal(38, 12),
    llm_requests UInt64,
    llm_cost_usd Decimal(38, 12),
    unpriced_lines UInt64,
    input_tokens Int64,
    output_tokens Int64,
    cached_input_tokens Int64,
    cache_write_tokens Int64,
    reasoning_tokens Int64,
    cache_hit_requests UInt64,
    fallback_requests UInt64,
    shadow_requests UInt64,
    error_requests UInt64,
    sessions AggregateFunction(uniqExactIf, String, UInt8),
    customers AggregateFunction(uniqExactIf, String, UInt8)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_date, settle_id, tenant, customer);
