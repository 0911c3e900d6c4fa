-- dead_letters: one row per message some stage rejected (prismops.dlq.v1), with the reason and the
-- original key/value/header bytes untouched (String holds raw bytes), so people can query rejects.
-- letter_id is stage/source_topic/source_partition/source_offset: the same source message rejected
-- again by the same stage (a replay) is the same letter, and the sink writes it once.
-- ReplacingMergeTree(ingested_at) is only a safety net: the sink checks letter_id before inserting.
CREATE TABLE IF NOT EXISTS dead_letters
(
    letter_id String COMMENT 'stage/source_topic/source_partition/source_offset; the idempotency key',
    failed_at DateTime('UTC'),
    failed_date Date COMMENT 'UTC date of failed_at; the partition column',
    stage String COMMENT 'which component rejected it, e.g. worker.price_llm_usage or sink.clickhouse',
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    error_field Nullable(String) COMMENT 'the offending field, when one is to blame',
    error_rule String COMMENT 'the rule broken, e.g. required, avro_decode',
    error_message String,
    original_key Nullable(String) COMMENT 'raw bytes',
    original_value Nullable(String) COMMENT 'raw bytes',
    original_header_keys Array(String),
    original_header_values Array(String) COMMENT 'raw bytes',
    kafka_partition Int32 COMMENT 'partition of prismops.dlq.v1 the row was read from',
    kafka_offset Int64,
    ingested_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(failed_date)
ORDER BY (source_topic, letter_id);
