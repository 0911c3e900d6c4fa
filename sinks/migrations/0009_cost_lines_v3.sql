-- cost_lines_v3: the call context cost_line.v3 adds for unit economics and root-cause analysis: session and
-- request ids, model version and deployment, prompt size (never the prompt), latency, and the cache-hit,
-- fallback and shadow flags with the routing decision the call followed. One ALTER: 18.16 has no
-- "add if missing" clause, and a single statement adds all columns or none.
ALTER TABLE cost_lines
    ADD COLUMN session_id Nullable(String) AFTER user_hash,
    ADD COLUMN request_id Nullable(String) AFTER session_id,
    ADD COLUMN model_version Nullable(String) AFTER model,
    ADD COLUMN deployment_id Nullable(String) AFTER model_version,
    ADD COLUMN prompt_chars Nullable(Int64) AFTER reasoning_tokens,
    ADD COLUMN latency_ms Nullable(Int64) AFTER prompt_chars,
    ADD COLUMN cache_hit UInt8 DEFAULT 0 AFTER latency_ms,
    ADD COLUMN fallback UInt8 DEFAULT 0 AFTER cache_hit,
    ADD COLUMN shadow UInt8 DEFAULT 0 AFTER fallback,
    ADD COLUMN decision_id Nullable(String) AFTER shadow;
