-- billing_exports: one row per billing period (billing account and BillingPeriodStart) and currency of every FOCUS
-- export that `prismops ingest focus` put in force, with the export's exact totals in that currency. The row with
-- the largest sequence of a period is the export in force: a restatement (a new export of a period already
-- ingested, `--replace-period`) adds rows with a larger sequence, then deletes the period's cost lines of every
-- smaller sequence from cost_lines; the sink drops any line of a superseded export that arrives later. The
-- design is in docs/billing.md. Totals are exact decimal text (no sum of them is ever taken in SQL).
CREATE TABLE IF NOT EXISTS billing_exports
(
    billing_account_id String,
    billing_period_start DateTime('UTC') COMMENT 'FOCUS BillingPeriodStart, inclusive',
    billing_period_end DateTime('UTC') COMMENT 'FOCUS BillingPeriodEnd, exclusive',
    sequence UInt64 COMMENT 'larger for every export put in force for the period; the largest is in force',
    export_id String COMMENT 'sha256 of the export file; the same file again keeps its sequence',
    ingested_at DateTime('UTC'),
    source_file String,
    focus_version String,
    currency String COMMENT 'FOCUS BillingCurrency of the totals on this row',
    rows UInt64 COMMENT 'accepted rows of the period in this currency',
    billed_cost String COMMENT 'exact sum of BilledCost, decimal text',
    effective_cost String,
    list_cost String,
    contracted_cost String
)
ENGINE = MergeTree
ORDER BY (billing_account_id, billing_period_start, sequence, currency);
