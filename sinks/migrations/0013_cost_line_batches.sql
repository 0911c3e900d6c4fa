-- cost_line_batches: one row per stored batch of cost lines, so the sink recognizes a batch the worker sent again
-- after a crash without reading a day's line ids (the lookup cost stays flat however large cost_lines grows).
-- batch_id is '<origin>@<position>' for lines that came in a batch record (the same identity on every replay)
-- and the line id itself for single lines (bills, GPU windows). The view fills the ledger in the same INSERT
-- that stores the rows; a sink that crashed inside an insert checks its next batch by line id as before.
ALTER TABLE cost_lines ADD COLUMN batch_id String DEFAULT line_id AFTER line_id;

CREATE TABLE IF NOT EXISTS cost_line_batches
(
    batch_id String,
    stored_at DateTime
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(stored_at)
ORDER BY batch_id
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS cost_line_batches_feed TO cost_line_batches
AS SELECT batch_id, max(ingested_at) AS stored_at FROM cost_lines GROUP BY batch_id;

-- The rows stored before the view existed: each was a single line then.
INSERT INTO cost_line_batches SELECT line_id, max(ingested_at) FROM cost_lines GROUP BY line_id;
