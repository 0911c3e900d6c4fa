-- gpu_recommendations: one row per job profile each time `prismops recommend gpu --save` runs: the job's measured
-- profile, its current option and cost, the cheapest fitting GPU type or MIG slice on on-demand prices, and the
-- spot + checkpoint template when one is offered (finops/gpu_recommendations.py). Money is Decimal(38, 12),
-- ratios Decimal(18, 6). ReplacingMergeTree(computed_at): a later run for the same job replaces the earlier one.
CREATE TABLE IF NOT EXISTS gpu_recommendations
(
    computed_at DateTime('UTC') COMMENT 'when the recommendation was made; prices are as of this moment',
    tenant String,
    job String,
    gpu_model String COMMENT 'the job now',
    mig_profile Nullable(String),
    capacity_type String,
    gpus UInt32,
    duration_s Decimal(18, 6),
    peak_memory_bytes UInt64,
    util_mean Decimal(18, 6),
    util_p50 Decimal(18, 6),
    util_p95 Decimal(18, 6),
    interruptions UInt32,
    current_cost_usd Nullable(Decimal(38, 12)) COMMENT 'null when the current type or capacity is unpriced',
    recommended_gpu_model Nullable(String) COMMENT 'null when nothing in the catalog fits',
    recommended_mig_profile Nullable(String),
    recommended_cost_usd Nullable(Decimal(38, 12)),
    savings_usd Nullable(Decimal(38, 12)),
    spot_checkpoint_interval_s Nullable(UInt32),
    spot_expected_overhead Nullable(Decimal(18, 6)),
    spot_cost_usd Nullable(Decimal(38, 12)),
    spot_savings_usd Nullable(Decimal(38, 12)),
    flags Array(String) COMMENT 'idle, over_provisioned, compute_unknown, no_checkpoint_cost',
    wasted_usd Decimal(38, 12) COMMENT 'idle or over-provisioned: current cost x (1 - mean utilization)',
    reason String,
    price_version String,
    types_version String
)
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (tenant, job);
