-- policy_audit: one row per change of the routing policy (audit.policy.v1): who changed it (token name and role),
-- when, how (set_policy over gRPC or load_policy from a file), the versions and SHA-256 of the YAML before and
-- after, and the unified diff between them.
-- ReplacingMergeTree(ingested_at) is only a safety net: the sink checks audit_id before inserting, so a replay of
-- the topic never adds a row twice.
CREATE TABLE IF NOT EXISTS policy_audit
(
    audit_id String COMMENT 'the idempotency key',
    changed_at DateTime('UTC') COMMENT 'to the second',
    changed_date Date COMMENT 'UTC date of changed_at; the partition and first key column',
    actor String COMMENT 'name of the token that made the change',
    role String,
    action String COMMENT 'set_policy or load_policy',
    source String COMMENT 'grpc or file',
    old_version Int64,
    new_version Int64,
    old_sha256 String,
    new_sha256 String,
    diff String COMMENT 'unified diff of the policy YAML, old to new',
    comment Nullable(String),
    kafka_partition Int32 COMMENT 'partition of audit.policy.v1 the row was read from',
    kafka_offset Int64,
    ingested_at DateTime('UTC') COMMENT 'when the sink inserted the row; the ReplacingMergeTree version'
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(changed_date)
ORDER BY (changed_date, audit_id);
