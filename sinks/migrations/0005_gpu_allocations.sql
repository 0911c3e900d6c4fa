-- gpu_allocations: one row per share of one GPU pool's cost over one event-time window (cost.allocations.v1):
-- a workload's share, the `__idle__` bucket, or an inference-pool tenant's share. The workload and idle
-- shares of a pool-window sum exactly to its pool_cost_usd (largest-remainder apportionment at 12 places,
-- see agents/gpu_allocation.py). inference_tenant rows re-attribute node cost by tokens: a view of cost
-- already in the node rows, not to be added to them.
-- Money and GPU-seconds are Decimal(38, 12); share (a fraction of the pool cost) is Decimal(38, 18).
-- ReplacingMergeTree(ingested_at) is only a safety net: the sink checks allocation_id before inserting.
CREATE TABLE IF NOT EXISTS gpu_allocations
(
    allocation_id String COMMENT 'deterministic from pool, window and share key; the idempotency key',
    window_start DateTime('UTC') COMMENT 'inclusive',
    window_end DateTime('UTC') COMMENT 'exclusive',
    window_date Date COMMENT 'UTC date of window_start; the partition and first key column',
    pool String COMMENT 'cluster/node, or an inference pool name',
    cluster String,
    node String,
    gpu_model String,
    capacity_type String COMMENT 'on_demand, spot, reserved or on_prem',
    kind String COMMENT 'workload, idle or inference_tenant',
    tenant String COMMENT 'unallocated for the idle bucket',
    team String,
    namespace Nullable(String),
    job Nullable(String),
    charged_gpu_seconds Decimal(38, 12) COMMENT 'max(requested, used) for workloads; idle GPU-seconds for idle',
    share Decimal(38, 18) COMMENT 'fraction of the pool cost before idle is redistributed',
    direct_cost_usd Decimal(38, 12),
    idle_cost_usd Decimal(38, 12) COMMENT 'idle cost assigned to this share by the idle policy',
    cost_usd Decimal(38, 12) COMMENT 'direct + idle',
    pool_cost_usd Decimal(38, 12),
    idle_policy String,
    tokens Int64 COMMENT 'inference pools: the tenant''s tokens in the window',
    usd_per_mtok Nullable(Decimal(38, 12)) COMMENT 'inference pools: cost per million tokens',
    price_version String COMMENT 'unpriced when no GPU price was in effect: cost 0, flagged',
    late UInt8 COMMENT '1 when usage arriving out of order within the grace period was counted',
    kafka_partition Int32 COMMENT 'partition of cost.allocations.v1 the row was read from',
    kafka_offset Int64,
    ingested_at DateTime('UTC') COMMENT 'when the sink inserted the row; the ReplacingMergeTree version'
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(window_date)
ORDER BY (window_date, pool, allocation_id);
