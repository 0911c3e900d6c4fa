-- cost_lines_billing: the columns cost_line.v4 adds: the FOCUS costs of a cloud bill line in the bill's own
-- currency (cost_usd, billed_cost_usd and list_cost_usd hold USD only: a line in another currency has cost_usd 0
-- and priced 0 until a report converts it through an FX table), and the billing account, period and export the
-- line belongs to, so a restated period's older lines can be found and deleted (billing_exports). One ALTER: all
-- columns or none.
ALTER TABLE cost_lines
    ADD COLUMN currency String DEFAULT 'USD' AFTER charge_category,
    ADD COLUMN billed_cost Nullable(Decimal(38, 12)) AFTER currency,
    ADD COLUMN effective_cost Nullable(Decimal(38, 12)) AFTER billed_cost,
    ADD COLUMN list_cost Nullable(Decimal(38, 12)) AFTER effective_cost,
    ADD COLUMN contracted_cost Nullable(Decimal(38, 12)) AFTER list_cost,
    ADD COLUMN billing_account_id Nullable(String) AFTER contracted_cost,
    ADD COLUMN billing_period_start Nullable(DateTime('UTC')) AFTER billing_account_id,
    ADD COLUMN export_id Nullable(String) AFTER billing_period_start,
    ADD COLUMN export_seq UInt64 DEFAULT 0 AFTER export_id;
