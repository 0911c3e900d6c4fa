"""The chaos harness's arithmetic and its malformed input, without servers."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal

from prismops.chaos.scenarios import PlantedData, malformed_records
from prismops.chaos.verdict import Expectation, Observation, ScenarioResult
from prismops.finops.llm_usage import LlmPricingContext, PricedUsage, Rejection, process_llm_usage
from prismops.settings import Settings
from prismops.streams.simulation import TrafficGenerator

DAY = dt.date(2026, 12, 5)


def expectation() -> Expectation:
    expected = Expectation()
    moment = dt.datetime(2026, 12, 5, 12, tzinfo=dt.timezone.utc)
    for i, (tenant, cost) in enumerate([("acme", "0.000000000001"), ("acme", "1.5"), ("globex", "2")]):
        expected.add({"line_id": f"l{i}", "cost_usd": Decimal(cost), "tenant": tenant, "event_time": moment})
    return expected


def clean_observation(expected: Expectation) -> Observation:
    return Observation(rows_raw=3, rows_final=3, distinct_ids=3, expected_found=3, cost_final=expected.cost,
                       budget_spend=dict(expected.tenant_day_cost))


def test_a_clean_run_passes_and_each_broken_promise_is_named():
    expected = expectation()
    assert ScenarioResult("s", 3, expected, clean_observation(expected), 1.0).failures() == []
    cases = {
        "1 lost": dict(expected_found=2, distinct_ids=2, rows_final=2, rows_raw=2),
        "1 raw duplicates": dict(rows_raw=4),
        "1 duplicates after FINAL": dict(rows_final=4, rows_raw=4),
        "1 rows nobody sent": dict(distinct_ids=4, rows_final=4, rows_raw=4),
        "cost": dict(cost_final=expected.cost + Decimal("0.000000000001")),
        "budget totals": dict(budget_spend={("acme", DAY): Decimal("1.500000000001"), ("globex", DAY): Decimal(4)}),
        "personal data": dict(pii_hits=["bob@example.com in ClickHouse dead_letters"]),
        "worker is not running": dict(worker_alive=False),
        "crash lines": dict(crash_lines=["worker: Traceback (most recent call last)"]),
    }
    for phrase, changes in cases.items():
        observed = clean_observation(expected)
        for name, value in changes.items():
            setattr(observed, name, value)
        failures = ScenarioResult("s", 3, expected, observed, 1.0).failures()
        assert len(failures) >= 1 and any(phrase in f for f in failures), (phrase, failures)


def test_an_undelivered_event_is_not_expected_and_a_repeated_one_is_refused():
    expected = expectation()
    line = {"line_id": "l1", "cost_usd": Decimal("1.5"), "tenant": "acme",
            "event_time": dt.datetime(2026, 12, 5, 12, tzinfo=dt.timezone.utc)}
    expected.forget("l1", line)
    assert expected.rows == 2 and expected.cost == Decimal("2.000000000001")
    assert expected.tenant_day_cost[("acme", DAY)] == Decimal("0.000000000001")
    try:
        expected.add(line | {"line_id": "l0"})
    except ValueError as exc:
        assert "twice" in str(exc)
    else:
        raise AssertionError("a line expected twice must be refused")


def test_every_malformed_record_is_rejected_by_the_worker_path_and_names_a_rule():
    pii = PlantedData("chaos.t1@example.com", "+1 415 555 0199", "CHAOS-SECRET-PROMPT-t1")
    valid = TrafficGenerator(seed=3).event(0)
    records = malformed_records(valid, 60, 2, pii, random.Random(5))
    pricing = LlmPricingContext.from_settings(Settings())
    now = dt.datetime.now(dt.timezone.utc)
    rules = set()
    for key, value, content_type, record_id in records:
        outcome = process_llm_usage(value, pricing, now)
        assert isinstance(outcome, Rejection), f"{record_id} was accepted: {value[:120]!r}"
        rules.add(outcome.rule)
    assert {"max_length", "printable", "max_entries", "enum", "non_negative", "not_in_future", "json_decode",
            "within_input_tokens", "only_on_failure"} <= rules
    assert sum(len(value) > 800_000 for _, value, _, _ in records) == 2


def test_valid_events_carrying_personal_data_are_priced_with_it_masked_or_dropped():
    pii = PlantedData("chaos.t2@example.com", "+1 415 555 0199", "CHAOS-SECRET-PROMPT-t2")
    event = TrafficGenerator(seed=4).event(0)
    document = {**event, "event_time": event["event_time"].isoformat(), "customer": pii.email,
                "labels": {"contact": f"call {pii.phone}"}, "prompt": pii.prompt,
                "metadata": {"messages": [{"content": pii.prompt}]}}
    outcome = process_llm_usage(json.dumps(document).encode(), LlmPricingContext.from_settings(Settings()),
                                dt.datetime.now(dt.timezone.utc))
    assert isinstance(outcome, PricedUsage)
    stored = repr(outcome.cost_line)
    assert all(needle not in stored for needle in pii.needles)
