-- routing_decisions_v2: the columns routing_decision.v2 adds: every reason code, the policy route and version, the
-- experiment arm, the shadow model, the fallback chain (each "provider/model", in order), the budget state, whether
-- the answer was downgraded or came from the static fallback order, the chosen model's estimated cost, the customer
-- and session, and how old the live table was; plus each candidate's circuit-breaker state, parallel to the other
-- candidate_* arrays. Rows written before this migration read the defaults: empty arrays, '', 0 and NULL (their
-- candidate_breaker_state is an empty array, not one NULL per candidate).
-- One ALTER with every column, without IF NOT EXISTS (ClickHouse 18.16 does not parse it in ALTER; it came in 19.1):
-- the server checks all the commands before changing anything, so a failed run leaves nothing half-added to redo.
ALTER TABLE routing_decisions
    ADD COLUMN reason_codes Array(String) AFTER reason,
    ADD COLUMN route String DEFAULT '' AFTER reason_codes,
    ADD COLUMN policy_version Int64 DEFAULT 0 AFTER route,
    ADD COLUMN experiment Nullable(String) AFTER policy_version,
    ADD COLUMN arm Nullable(String) AFTER experiment,
    ADD COLUMN shadow_provider Nullable(String) AFTER arm,
    ADD COLUMN shadow_model Nullable(String) AFTER shadow_provider,
    ADD COLUMN fallbacks Array(String) AFTER shadow_model,
    ADD COLUMN budget_status Nullable(String) AFTER fallbacks,
    ADD COLUMN budget_used_pct Nullable(Float64) AFTER budget_status,
    ADD COLUMN downgraded UInt8 DEFAULT 0 AFTER budget_used_pct,
    ADD COLUMN static_fallback UInt8 DEFAULT 0 AFTER downgraded,
    ADD COLUMN estimated_cost_usd Nullable(Decimal(38, 12)) AFTER static_fallback,
    ADD COLUMN customer Nullable(String) AFTER estimated_cost_usd,
    ADD COLUMN session_id Nullable(String) AFTER customer,
    ADD COLUMN live_table_age_ms Nullable(Int64) AFTER session_id,
    ADD COLUMN candidate_breaker_state Array(Nullable(String)) AFTER candidate_verdict;
