"""prismops/testing/state_bench.py: the load covers every (tenant, model) key once, every call is accepted by
the worker's pricing, and every tenant has its budget."""

from __future__ import annotations

import datetime as dt

from prismops.finops.budgets import parse_budgets
from prismops.finops.llm_usage import LlmPricingContext, PricedUsage, price_usage_record
from prismops.settings import Settings
from prismops.streams.codecs import batch_codec_for
from prismops.testing.state_bench import budgets_document, keyed_events


def test_the_first_tenants_times_models_events_cover_every_key_once():
    events = list(keyed_events(50, 10, 500, seed=3))
    keys = {(e["tenant"], e["provider"], e["model"]) for e in events}
    assert len(keys) == 500


def test_every_call_of_the_load_is_priced_into_a_cost_line():
    usage = batch_codec_for("llm_usage_event")
    events = list(keyed_events(3, 10, 30, seed=5))
    record = usage.frame([usage.items.encode_body(e) for e in events])
    outcomes = price_usage_record(record, LlmPricingContext.from_settings(Settings()),
                                  dt.datetime.now(dt.timezone.utc)).outcomes
    assert len(outcomes) == 30 and all(isinstance(o, PricedUsage) for o in outcomes)


def test_each_tenant_gets_one_daily_budget():
    document = budgets_document(20)
    budgets = parse_budgets(document)  # the file the worker reads
    assert len({b.scope_id for b in budgets}) == 20
    assert {(b.scope, b.period, b.unit) for b in budgets} == {("tenant", "daily", "usd")}
