-- anomalies: one row per anomalous window found by the worker's online detectors (cost.anomalies.v1): the series
-- (tenant/model or service/feature), the window, actual vs expected (exact USD for cost), score and severity,
-- and the top root-cause contributors as parallel arrays (contributor_*[i] describe contributor i).
-- anomaly_id is deterministic from (metric, series, window), so a re-scored window repeats it; the sink checks
-- anomaly_id before inserting and ReplacingMergeTree(ingested_at) is the safety net.
CREATE TABLE IF NOT EXISTS anomalies
(
    anomaly_id String COMMENT 'the idempotency key',
    detected_at DateTime('UTC'),
    window_start DateTime('UTC'),
    window_end DateTime('UTC') COMMENT 'exclusive',
    window_date Date COMMENT 'UTC date of window_start; the partition and first key column',
    metric String COMMENT 'cost, tokens_per_request, latency_p95_ms or error_rate',
    series String COMMENT 'tenant_model or service_feature',
    series_key String,
    tenant Nullable(String),
    service Nullable(String),
    feature Nullable(String),
    provider Nullable(String),
    model Nullable(String),
    actual Float64,
    expected Float64,
    actual_cost_usd Nullable(Decimal(38, 12)),
    expected_cost_usd Nullable(Decimal(38, 12)),
    score Float64,
    severity String COMMENT 'info, warning or critical',
    contributor_dimension Array(String),
    contributor_value Array(String),
    contributor_window_value Array(Float64),
    contributor_baseline_value Array(Float64),
    contributor_delta Array(Float64),
    contributor_share Array(Float64),
    message String,
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(window_date)
ORDER BY (window_date, metric, series_key, anomaly_id);
