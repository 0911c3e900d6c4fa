-- cost_lines: one row per priced thing (an LLM call, a GPU window, a cloud bill line), exactly as the
-- cost.lines.v1 topic carried it, plus where it came from in Kafka and when the sink wrote it.
-- Money and quantities are Decimal(38, 12), the Avro decimal's precision and scale, so sums are exact.
-- Maps (tag_source, labels) are parallel key/value arrays: ClickHouse 18.16 has no Map type.
-- ReplacingMergeTree(ingested_at) is only a safety net: the sink checks line_id before inserting and
-- never writes a duplicate itself; queries that must be exact under any failure can still add FINAL.
CREATE TABLE IF NOT EXISTS cost_lines
(
    line_id String COMMENT 'deterministic from source and source_event_id; the idempotency key',
    source String COMMENT 'llm, gpu or cloud',
    source_event_id String,
    event_time DateTime('UTC') COMMENT 'when the priced thing happened, to the second',
    event_date Date COMMENT 'UTC date of event_time; the partition and first key column',
    tenant String,
    team String,
    product String,
    service String,
    feature String,
    customer Nullable(String),
    environment String,
    provider String,
    model String,
    region Nullable(String),
    input_tokens Int64,
    output_tokens Int64,
    cached_input_tokens Int64,
    reasoning_tokens Int64,
    usage_quantity Decimal(38, 12) COMMENT 'tokens, GPU-seconds or the bill quantity, in usage_unit',
    usage_unit String,
    cost_usd Decimal(38, 12),
    priced UInt8 COMMENT '0 when no price was found: the line is kept and flagged, never silently zero',
    price_version String,
    status String COMMENT 'the call status for LLM lines',
    tag_source_keys Array(String) COMMENT 'dimension names; tag_source_values[i] is explicit, inferred or default',
    tag_source_values Array(String),
    label_keys Array(String),
    label_values Array(String),
    kafka_partition Int32 COMMENT 'partition of cost.lines.v1 the row was read from',
    kafka_offset Int64,
    ingested_at DateTime('UTC') COMMENT 'when the sink inserted the row; the ReplacingMergeTree version'
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_date, tenant, line_id);
