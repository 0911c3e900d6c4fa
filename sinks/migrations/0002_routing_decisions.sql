-- routing_decisions: one row per answer of routing.v1.Router/Decide (routing.decisions.v1): what was
-- chosen, why, and every candidate weighed, as parallel arrays (candidate_*[i] describe candidate i).
-- ReplacingMergeTree(ingested_at) is only a safety net: the sink checks decision_id before inserting.
CREATE TABLE IF NOT EXISTS routing_decisions
(
    decision_id String COMMENT 'the idempotency key',
    decided_at DateTime('UTC') COMMENT 'to the second',
    decided_date Date COMMENT 'UTC date of decided_at; the partition and first key column',
    tenant String,
    service String,
    feature String,
    request_id Nullable(String),
    latency_slo_ms Float64,
    chosen_provider Nullable(String) COMMENT 'NULL when no model could be chosen',
    chosen_model Nullable(String),
    reason_code String COMMENT 'e.g. cheapest_within_slo, no_model_meets_slo, no_live_data',
    reason String,
    candidate_provider Array(String),
    candidate_model Array(String),
    candidate_p95_latency_ms Array(Nullable(Float64)),
    candidate_error_rate Array(Nullable(Float64)),
    candidate_estimated_cost_usd Array(Nullable(Decimal(38, 12))),
    candidate_eligible Array(UInt8),
    candidate_verdict Array(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(decided_date)
ORDER BY (decided_date, tenant, decision_id);
