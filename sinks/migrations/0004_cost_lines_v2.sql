-- cost_lines_v2: the columns cost_line.v2 adds: cache-write tokens, the keyed user hash, the resource, and for cloud bill
-- lines FOCUS BilledCost / ListCost and ChargeCategory (cost_usd holds EffectiveCost for those).
ALTER TABLE cost_lines ADD COLUMN cache_write_tokens Int64 DEFAULT 0 AFTER cached_input_tokens;
ALTER TABLE cost_lines ADD COLUMN user_hash Nullable(String) AFTER customer;
ALTER TABLE cost_lines ADD COLUMN resource Nullable(String) AFTER region;
ALTER TABLE cost_lines ADD COLUMN billed_cost_usd Nullable(Decimal(38, 12)) AFTER cost_usd;
ALTER TABLE cost_lines ADD COLUMN list_cost_usd Nullable(Decimal(38, 12)) AFTER billed_cost_usd;
ALTER TABLE cost_lines ADD COLUMN charge_category Nullable(String) AFTER list_cost_usd;
