-- gpu_kpis: views over gpu_allocations (0005) for the GPU KPIs of `prismops report gpu-kpis`: utilization, $ per
-- GPU-hour by pool, spot savings (with the price table), interruptions and restart time. Plain views read with FINAL,
-- like 0012: a replayed row is never counted twice. Subqueries carry aliases (current ClickHouse requires them).
--
-- What gpu_allocations does not hold, so no view here can show it: used GPU-seconds and memory (a workload row
-- is charged max(requested, used)), the pool's GPU count, preemption causes, checkpoint write and restart times.

-- gpu_pool_windows: one row per GPU node pool-window (inference-pool rows, idle_policy 'tokens', re-attribute node
-- cost and are left out). window_cost_usd is the pool-window's cost (the sum of its shares). Its GPU count is not
-- stored but follows from the shares: each row's share is charged / base, base = GPUs x window seconds (or the
-- allocated GPU-seconds when time-slicing oversubscribed the pool), so GPUs = round(charged / share / window_s)
-- over the window's rows (an integer: the rounding only removes the 1e-18 rounding of the stored shares).
-- gpus = 0 when no row has a share (workloads that charged nothing under the proportional or even policy):
-- capacity unknown. utilized_gpu_seconds = allocated GPU-seconds capped at the capacity.
CREATE VIEW IF NOT EXISTS gpu_pool_windows AS
SELECT
    window_date, window_start, window_end, pool, cluster, node, gpu_model, capacity_type, idle_policy,
    window_cost_usd, allocated_gpu_seconds, idle_bucket_gpu_seconds, share_sum, window_s,
    toUInt64(if(share_sum > 0,
        round(toFloat64(allocated_gpu_seconds + idle_bucket_gpu_seconds) / toFloat64(share_sum) / window_s), 0)) AS gpus,
    gpus * window_s AS capacity_gpu_seconds,
    if(allocated_gpu_seconds > toDecimal128(capacity_gpu_seconds, 12),
       toDecimal128(capacity_gpu_seconds, 12), allocated_gpu_seconds) AS utilized_gpu_seconds
FROM
(
    SELECT
        window_date, window_start, window_end, pool, cluster, node, gpu_model, capacity_type, idle_policy,
        sum(cost_usd) AS window_cost_usd,
        sumIf(charged_gpu_seconds, kind = 'workload') AS allocated_gpu_seconds,
        sumIf(charged_gpu_seconds, kind = 'idle') AS idle_bucket_gpu_seconds,
        sum(share) AS share_sum,
        toUInt64(toUInt32(window_end) - toUInt32(window_start)) AS window_s
    FROM gpu_allocations FINAL
    WHERE kind IN ('workload', 'idle') AND idle_policy != 'tokens'
    GROUP BY window_date, window_start, window_end, pool, cluster, node, gpu_model, capacity_type, idle_policy
) AS pool_windows;

-- gpu_kpis_daily: per UTC day and GPU node pool, the sums the KPIs are made of and, for dashboards, the two ratios
-- (Decimal, truncated to 12 places; `prismops report gpu-kpis` divides the sums once, half-even). Windows with
-- unknown capacity (gpus = 0) count in cost_usd but in neither ratio: their cost is also in unknown_capacity_cost_usd.
--   utilization      = utilized / capacity GPU-seconds (allocation: charged = max(requested, used), not SM activity)
--   usd_per_gpu_hour = cost of the windows with known capacity x 3600 / capacity GPU-seconds
CREATE VIEW IF NOT EXISTS gpu_kpis_daily AS
SELECT
    window_date, pool, cluster, node, gpu_model, capacity_type,
    windows, cost_usd, known_cost_usd, unknown_capacity_cost_usd, unknown_capacity_windows,
    capacity_gpu_seconds, allocated_gpu_seconds, utilized_gpu_seconds,
    if(capacity_gpu_seconds > 0, utilized_gpu_seconds / greatest(capacity_gpu_seconds, 1), NULL) AS utilization,
    if(capacity_gpu_seconds > 0, known_cost_usd * 3600 / greatest(capacity_gpu_seconds, 1), NULL) AS usd_per_gpu_hour
FROM
(
    SELECT
        window_date, pool, cluster, node, gpu_model, capacity_type,
        count() AS windows,
        sum(window_cost_usd) AS cost_usd,
        sumIf(window_cost_usd, gpus > 0) AS known_cost_usd,
        sumIf(window_cost_usd, gpus = 0) AS unknown_capacity_cost_usd,
        countIf(gpus = 0) AS unknown_capacity_windows,
        sum(capacity_gpu_seconds) AS capacity_gpu_seconds,
        sum(allocated_gpu_seconds) AS allocated_gpu_seconds,
        sum(utilized_gpu_seconds) AS utilized_gpu_seconds
    FROM gpu_pool_windows
    GROUP BY window_date, pool, cluster, node, gpu_model, capacity_type
) AS pool_days;

-- gpu_job_windows: per job (tenant and job, else namespace, else 'unnamed': the key of profiles_from_events) and
-- window, the first pool it ran on (by name) with that pool's cluster, GPU model and capacity type, and its charged
-- GPU-seconds and cost. A gap between two of a job's windows is an interruption; the gap's length bounds its restart
-- time from above (to window granularity).
CREATE VIEW IF NOT EXISTS gpu_job_windows AS
SELECT
    window_date, tenant, ifNull(job, ifNull(namespace, 'unnamed')) AS job_key, window_start, window_end,
    min(pool) AS first_pool, argMin(cluster, pool) AS first_cluster, argMin(gpu_model, pool) AS first_gpu_model,
    argMin(capacity_type, pool) AS first_capacity_type,
    sum(charged_gpu_seconds) AS job_gpu_seconds, sum(cost_usd) AS job_cost_usd
FROM gpu_allocations FINAL
WHERE kind = 'workload'
GROUP BY window_date, tenant, job_key, window_start, window_end;
