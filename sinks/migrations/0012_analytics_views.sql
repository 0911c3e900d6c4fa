-- analytics_views: views, no tables (joined subqueries carry aliases: current ClickHouse requires them); exact answers straight from the raw tables, deduplicated with FINAL, so they can never count a
-- replayed row twice (plain views, not materialized: a view that summed on insert would). They scan what they read;
-- for month-scale cost reports use the settled rollups (0011) through `prismops report`, which are exact too.

-- unit_economics_daily: per day and owner/thing, what LLM calls cost per request, session, customer and token, and
-- the cache-hit, fallback, shadow and error counts the rates are made of (divide in the query that reads it);
-- total_cost_usd is every source's cost (LLM, GPU, cloud) of the group.
CREATE VIEW IF NOT EXISTS unit_economics_daily AS
SELECT
    event_date, tenant, team, product, feature, environment, provider, model,
    countIf(source = 'llm') AS requests,
    sumIf(cost_usd, source = 'llm') AS llm_cost_usd,
    sum(cost_usd) AS total_cost_usd,
    uniqExactIf(ifNull(session_id, ''), ifNull(session_id, '') != '') AS sessions,
    uniqExactIf(ifNull(customer, ''), ifNull(customer, '') != '') AS customers,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_input_tokens) AS cached_input_tokens,
    countIf(source = 'llm' AND cache_hit = 1) AS cache_hit_requests,
    countIf(source = 'llm' AND fallback = 1) AS fallback_requests,
    countIf(source = 'llm' AND shadow = 1) AS shadow_requests,
    countIf(source = 'llm' AND status != 'ok') AS error_requests
FROM cost_lines FINAL
GROUP BY event_date, tenant, team, product, feature, environment, provider, model;

-- gpu_daily_utilization: per day and GPU node, the pool cost (workload + idle shares: exactly the pool's cost; the
-- inference_tenant rows re-attribute that same cost and are left out), GPU-seconds allocated to workloads
-- (max(requested, used)) and idle. Cost per GPU-hour = pool_cost_usd * 3600 / (allocated + idle GPU-seconds);
-- utilization = allocated / (allocated + idle). Idle GPU-seconds are recorded only under the `bucket` idle policy.
CREATE VIEW IF NOT EXISTS gpu_daily_utilization AS
SELECT
    window_date, cluster, node, gpu_model, capacity_type,
    uniqExact(window_start) AS windows,
    sum(cost_usd) AS pool_cost_usd,
    sumIf(charged_gpu_seconds, kind = 'workload') AS allocated_gpu_seconds,
    sumIf(charged_gpu_seconds, kind = 'idle') AS idle_gpu_seconds,
    sumIf(cost_usd, kind = 'idle') AS idle_cost_usd
FROM gpu_allocations FINAL
WHERE kind IN ('workload', 'idle')
GROUP BY window_date, cluster, node, gpu_model, capacity_type;

-- experiment_arm_costs: per day, tenant, experiment and arm, the routing decisions and what the calls that followed
-- them actually cost (cost lines carry the decision_id; shadow calls are left out: they are in shadow_vs_main).
CREATE VIEW IF NOT EXISTS experiment_arm_costs AS
SELECT
    decided_date, tenant, experiment, arm,
    count() AS decisions,
    sum(calls) AS calls,
    sum(call_cost_usd) AS cost_usd,
    sum(call_tokens) AS tokens,
    sum(call_errors) AS error_calls,
    sum(estimated) AS estimated_cost_usd
FROM
(
    SELECT decision_id, decided_date, tenant, assumeNotNull(experiment) AS experiment, ifNull(arm, '') AS arm,
           ifNull(estimated_cost_usd, toDecimal128(0, 12)) AS estimated
    FROM routing_decisions FINAL
    WHERE isNotNull(experiment)
) AS decisions
ANY LEFT JOIN
(
    SELECT assumeNotNull(decision_id) AS decision_id, count() AS calls, sum(cost_usd) AS call_cost_usd,
           sum(input_tokens + output_tokens) AS call_tokens, countIf(status != 'ok') AS call_errors
    FROM cost_lines FINAL
    WHERE source = 'llm' AND isNotNull(decision_id) AND shadow = 0
    GROUP BY decision_id
) AS calls USING (decision_id)
GROUP BY decided_date, tenant, experiment, arm;

-- shadow_vs_main: per day, tenant, route and (main model, shadow model), the decisions that sampled a shadow and
-- what the main and the shadow calls of those decisions cost.
CREATE VIEW IF NOT EXISTS shadow_vs_main AS
SELECT
    decided_date, tenant, route, main_provider, main_model, shadow_provider, shadow_model,
    count() AS decisions,
    sum(main_calls) AS main_calls,
    sum(main_cost) AS main_cost_usd,
    sum(shadow_calls) AS shadow_calls,
    sum(shadow_cost) AS shadow_cost_usd
FROM
(
    SELECT decision_id, decided_date, tenant, route,
           ifNull(chosen_provider, '') AS main_provider, ifNull(chosen_model, '') AS main_model,
           assumeNotNull(shadow_provider) AS shadow_provider, assumeNotNull(shadow_model) AS shadow_model
    FROM routing_decisions FINAL
    WHERE isNotNull(shadow_model)
) AS decisions
ANY LEFT JOIN
(
    SELECT assumeNotNull(decision_id) AS decision_id,
           countIf(shadow = 0) AS main_calls, sumIf(cost_usd, shadow = 0) AS main_cost,
           countIf(shadow = 1) AS shadow_calls, sumIf(cost_usd, shadow = 1) AS shadow_cost
    FROM cost_lines FINAL
    WHERE source = 'llm' AND isNotNull(decision_id)
    GROUP BY decision_id
) AS calls USING (decision_id)
GROUP BY decided_date, tenant, route, main_provider, main_model, shadow_provider, shadow_model;
