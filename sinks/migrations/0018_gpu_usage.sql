-- gpu_usage: one row per usage.gpu.v1 event, exactly as the topic carried it: one workload's use of one GPU (or
-- GPU slice) over one collection window, plus where it came from in Kafka and when the sink wrote it. It is the
-- input of `prismops recommend gpu --from-clickhouse` (job profiles: utilization = used / requested per GPU-window,
-- peak and mean memory, duration, interruptions); gpu_allocations keeps only the charged GPU-seconds.
-- GPU-seconds and the fraction keep the Avro decimals' precision and scale (Decimal(18, 6), Decimal(9, 6)).
-- The event's times are microseconds; DateTime keeps seconds, so window_start_us / window_end_us hold the
-- microseconds past the second (0 for whole-second windows, which the collectors write).
-- Maps (labels) are parallel key/value arrays: ClickHouse 18.16 has no Map type.
-- ReplacingMergeTree(ingested_at) is only a safety net: the sink checks event_id before inserting.
CREATE TABLE IF NOT EXISTS gpu_usage
(
    event_id String COMMENT 'the event''s id (deterministic from source, pool, slice and window); the idempotency key',
    window_start DateTime('UTC') COMMENT 'inclusive, to the second',
    window_start_us UInt32 COMMENT 'microseconds past window_start',
    window_end DateTime('UTC') COMMENT 'exclusive, to the second',
    window_end_us UInt32 COMMENT 'microseconds past window_end',
    window_date Date COMMENT 'UTC date of window_start; the partition and first key column',
    cluster String,
    node String,
    gpu_model String,
    gpu_index Int32,
    gpu_fraction Decimal(9, 6) COMMENT 'share of the physical GPU, 1 for a whole GPU',
    mig_profile Nullable(String),
    capacity_type String COMMENT 'on_demand, spot, reserved or on_prem',
    tenant String,
    team Nullable(String),
    namespace Nullable(String),
    job Nullable(String),
    requested_gpu_seconds Decimal(18, 6),
    used_gpu_seconds Decimal(18, 6),
    memory_bytes Int64 COMMENT 'GPU memory used (per GPU or slice), 0 when not collected',
    source String COMMENT 'nvml, dcgm, slurm or k8s',
    label_keys Array(String),
    label_values Array(String),
    kafka_partition Int32 COMMENT 'partition of usage.gpu.v1 the row was read from',
    kafka_offset Int64,
    ingested_at DateTime('UTC') COMMENT 'when the sink inserted the row; the ReplacingMergeTree version'
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(window_date)
ORDER BY (window_date, tenant, event_id);
