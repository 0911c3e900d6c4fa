-- budget_events: one row per budget threshold crossed (budget.events.v1): a warn or a block of one budget for one
-- tenant or team in one UTC day or month. At most one per (budget_id, scope_id, period_start, threshold_pct), and
-- event_id is derived from exactly those, so the sink's event_id check keeps a re-sent event from adding a row.
-- ReplacingMergeTree(ingested_at) is only a safety net behind that check.
CREATE TABLE IF NOT EXISTS budget_events
(
    event_id String COMMENT 'deterministic from budget, scope id, period and threshold',
    at DateTime('UTC') COMMENT 'event time of the cost line that crossed the threshold, to the second',
    budget_id String,
    scope String COMMENT 'tenant or team',
    scope_id String,
    period String COMMENT 'daily or monthly (UTC calendar periods)',
    period_start DateTime('UTC'),
    period_date Date COMMENT 'UTC date of period_start; the partition and first key column',
    unit String COMMENT 'usd or tokens',
    threshold_pct Int32,
    action String COMMENT 'warn or block',
    budget_limit Decimal(38, 12) COMMENT 'the limit, in unit',
    spent Decimal(38, 12) COMMENT 'spent in the period when the threshold was crossed, in unit',
    message String,
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(period_date)
ORDER BY (period_date, scope, scope_id, event_id);

-- alert_deliveries: one row per outcome of delivering one budget event to the alert webhook (`prismops alerts`):
-- status delivered or failed. Written before the alert consumer commits its offset and read before it sends,
-- so an event with a `delivered` row is never posted again.
CREATE TABLE IF NOT EXISTS alert_deliveries
(
    event_id String COMMENT 'the budget event (and the X-PrismOps-Alert-Id header sent with it)',
    channel String COMMENT 'webhook',
    target String COMMENT 'scheme and host of the webhook; its path may hold a secret and is not stored',
    status String COMMENT 'delivered or failed',
    attempts UInt16,
    http_status Nullable(Int32) COMMENT 'of the last attempt; NULL when no HTTP answer came',
    error Nullable(String) COMMENT 'why the last attempt failed',
    recorded_at DateTime('UTC')
)
ENGINE = MergeTree
ORDER BY (event_id, recorded_at);
