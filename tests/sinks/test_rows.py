"""Record → row mapping for the ClickHouse tables: exact decimals, maps as arrays, UTC dates, idempotency keys."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prismops.finops.dead_letters import dead_letter_record
from prismops.settings import Settings
from prismops.sinks.clickhouse import (
    PolicyAuditSink,
    cost_line_row,
    dead_letter_id,
    dead_letter_row,
    map_to_arrays,
    policy_audit_row,
    routing_decision_row,
    unique_by,
)
from prismops.sinks.migrations import load_migrations
from prismops.sinks.runner import default_routes
from prismops.streams.codecs import codec_for
from prismops.streams.topics import POLICY_AUDIT

INGESTED_AT = dt.datetime(2024, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
POSITION = {"kafka_partition": 3, "kafka_offset": 41, "ingested_at": INGESTED_AT}


def cost_line(**overrides):
    value = {
        "line_id": "llm:evt-1", "source": "llm", "source_event_id": "evt-1",
        "event_time": "2024-01-31T23:30:00-02:00", "tenant": "acme", "team": "search", "product": "assist",
        "service": "chat-api", "feature": "answer", "customer": "cust-9", "environment": "prod",
        "provider": "openai", "model": "gpt-4o", "region": None, "input_tokens": 1200, "output_tokens": 300,
        "cached_input_tokens": 200, "reasoning_tokens": 0, "usage_quantity": "1500",
        "usage_unit": "token", "cost_usd": "0.004512345678", "priced": True, "price_version": "2024-01",
        "status": "ok", "tag_source": {"team": "explicit", "product": "inferred", "customer": "default"},
        "labels": {"z": "last", "a": "first"},
    }
    value.update(overrides)
    codec = codec_for("cost_line")
    return codec.decode(codec.encode(value))


def test_cost_line_row_keeps_every_field_and_its_kafka_position():
    row = cost_line_row(cost_line(), **POSITION)
    assert row["line_id"] == "llm:evt-1"
    assert row["source"] == "llm"
    assert (row["tenant"], row["team"], row["product"], row["service"], row["feature"]) == (
        "acme", "search", "assist", "chat-api", "answer"
    )
    assert row["customer"] == "cust-9" and row["region"] is None
    assert (row["input_tokens"], row["output_tokens"], row["cached_input_tokens"], row["reasoning_tokens"]) == (
        1200, 300, 200, 0
    )
    assert row["priced"] == 1 and row["price_version"] == "2024-01" and row["status"] == "ok"
    assert (row["kafka_partition"], row["kafka_offset"], row["ingested_at"]) == (3, 41, INGESTED_AT)


def test_cost_line_row_has_a_column_for_every_schema_field():
    row = cost_line_row(cost_line(), **POSITION)
    for field in codec_for("cost_line").reader.definition["fields"]:
        name = field["name"]
        if name == "tag_source":
            assert {"tag_source_keys", "tag_source_values"} <= row.keys()
        elif name == "labels":
            assert {"label_keys", "label_values"} <= row.keys()
        else:
            assert name in row, name


def test_money_and_quantities_stay_exact_decimals():
    row = cost_line_row(cost_line(cost_usd="12345678901234567890123456.000000000001", usage_quantity="0.1"), **POSITION)
    assert row["cost_usd"] == Decimal("12345678901234567890123456.000000000001")
    assert isinstance(row["cost_usd"], Decimal) and isinstance(row["usage_quantity"], Decimal)
    assert row["usage_quantity"] == Decimal("0.1")


@given(st.decimals(min_value=0, max_value=Decimal("1e20"), places=12, allow_nan=False, allow_infinity=False))
def test_any_12_place_cost_maps_unchanged(cost):
    assert cost_line_row(cost_line(cost_usd=cost), **POSITION)["cost_usd"] == cost


def test_maps_become_parallel_arrays_sorted_by_key():
    row = cost_line_row(cost_line(), **POSITION)
    assert row["tag_source_keys"] == ["customer", "product", "team"]
    assert row["tag_source_values"] == ["default", "inferred", "explicit"]
    assert row["label_keys"] == ["a", "z"] and row["label_values"] == ["first", "last"]
    assert map_to_arrays({}) == ([], [])


def test_event_date_is_the_utc_date_of_event_time():
    row = cost_line_row(cost_line(event_time="2024-01-31T23:30:00-02:00"), **POSITION)
    assert row["event_time"] == dt.datetime(2024, 2, 1, 1, 30, tzinfo=dt.timezone.utc)
    assert row["event_date"] == dt.date(2024, 2, 1)
    east = cost_line_row(cost_line(event_time="2024-02-01T00:30:00+05:00"), **POSITION)
    assert east["event_date"] == dt.date(2024, 1, 31)


def test_naive_times_are_taken_as_utc():
    value = dict(cost_line(), event_time=dt.datetime(2024, 5, 5, 23, 59, 59))
    row = cost_line_row(value, **POSITION)
    assert row["event_time"].utcoffset() == dt.timedelta(0) and row["event_date"] == dt.date(2024, 5, 5)


V1_DECISION = {
    "decision_id": "dec-1", "decided_at": "2024-06-30T23:59:59.999999Z", "tenant": "acme",
    "service": "chat-api", "feature": "answer", "latency_slo_ms": 2500.0,
    "chosen_provider": "anthropic", "chosen_model": "claude-haiku", "reason_code": "cheapest_within_slo",
    "reason": "cheapest model with p95 under the SLO",
    "candidates": [
        {"provider": "anthropic", "model": "claude-haiku", "p95_latency_ms": 900.0, "error_rate": 0.01,
         "estimated_cost_usd": "0.000250000001", "eligible": True, "verdict": "chosen"},
        {"provider": "openai", "model": "gpt-4o", "p95_latency_ms": None, "error_rate": None,
         "estimated_cost_usd": None, "eligible": False, "verdict": "no_live_data"},
    ],
}

V2_FIELDS = {
    "reason_codes": ["cheapest_within_slo", "budget_warn", "shadowed"], "route": "chat-default",
    "policy_version": 7, "experiment": "haiku-vs-mini", "arm": "treatment",
    "shadow_provider": "openai", "shadow_model": "gpt-4o-mini",
    "fallbacks": ["openai/gpt-4o-mini", "google/gemini-2.0-flash"], "budget_status": "warn",
    "budget_used_pct": 83.5, "downgraded": True, "static_fallback": False,
    "estimated_cost_usd": "0.000250000001", "customer": "cust-9", "session_id": "sess-1", "live_table_age_ms": 1250,
}


def routing_decision(version: int | None = None, **overrides):
    """A decision as the sink receives it: encoded (with `version`, default the newest) and decoded."""
    codec = codec_for("routing_decision")
    return codec.decode(codec.encode({**V1_DECISION, **overrides}, version=version))


def test_routing_decision_candidates_become_parallel_arrays():
    row = routing_decision_row(routing_decision(), **POSITION)
    assert row["decision_id"] == "dec-1" and row["decided_date"] == dt.date(2024, 6, 30)
    assert row["chosen_provider"] == "anthropic" and row["request_id"] is None
    assert row["candidate_provider"] == ["anthropic", "openai"]
    assert row["candidate_model"] == ["claude-haiku", "gpt-4o"]
    assert row["candidate_p95_latency_ms"] == [900.0, None]
    assert row["candidate_error_rate"] == [0.01, None]
    assert row["candidate_estimated_cost_usd"] == [Decimal("0.000250000001"), None]
    assert row["candidate_eligible"] == [1, 0]
    assert row["candidate_verdict"] == ["chosen", "no_live_data"]
    assert row["candidate_breaker_state"] == [None, None]


def test_routing_decision_v2_fields_have_their_columns():
    candidates = [dict(V1_DECISION["candidates"][0], breaker_state="closed"),
                  dict(V1_DECISION["candidates"][1], breaker_state="open")]
    row = routing_decision_row(routing_decision(**V2_FIELDS, candidates=candidates), **POSITION)
    assert row["reason_codes"] == ["cheapest_within_slo", "budget_warn", "shadowed"]
    assert (row["route"], row["policy_version"], row["experiment"], row["arm"]) == (
        "chat-default", 7, "haiku-vs-mini", "treatment")
    assert (row["shadow_provider"], row["shadow_model"]) == ("openai", "gpt-4o-mini")
    assert row["fallbacks"] == ["openai/gpt-4o-mini", "google/gemini-2.0-flash"]  # order kept
    assert (row["budget_status"], row["budget_used_pct"]) == ("warn", 83.5)
    assert (row["downgraded"], row["static_fallback"]) == (1, 0)
    assert row["estimated_cost_usd"] == Decimal("0.000250000001") and isinstance(row["estimated_cost_usd"], Decimal)
    assert (row["customer"], row["session_id"], row["live_table_age_ms"]) == ("cust-9", "sess-1", 1250)
    assert row["candidate_breaker_state"] == ["closed", "open"]
    assert len(row["candidate_breaker_state"]) == len(row["candidate_provider"])


def test_a_v1_decision_gets_the_v2_defaults():
    expected_defaults = {
        "reason_codes": [], "route": "", "policy_version": 0, "experiment": None, "arm": None,
        "shadow_provider": None, "shadow_model": None, "fallbacks": [], "budget_status": None,
        "budget_used_pct": None, "downgraded": 0, "static_fallback": 0, "estimated_cost_usd": None,
        "customer": None, "session_id": None, "live_table_age_ms": None, "candidate_breaker_state": [None, None],
    }
    from_v1_bytes = routing_decision_row(routing_decision(version=1), **POSITION)
    assert {name: from_v1_bytes[name] for name in expected_defaults} == expected_defaults
    assert from_v1_bytes["reason_code"] == "cheapest_within_slo"
    plain = dict(V1_DECISION, decided_at=dt.datetime(2024, 6, 30, tzinfo=dt.timezone.utc))  # no v2 keys at all
    from_plain = routing_decision_row(plain, **POSITION)
    assert {name: from_plain[name] for name in expected_defaults} == expected_defaults


def test_routing_decision_row_has_a_column_for_every_schema_field():
    row = routing_decision_row(routing_decision(**V2_FIELDS), **POSITION)
    definition = codec_for("routing_decision").reader.definition
    for field in definition["fields"]:
        if field["name"] == "candidates":
            for candidate_field in field["type"]["items"]["fields"]:
                assert f"candidate_{candidate_field['name']}" in row, candidate_field["name"]
        else:
            assert field["name"] in row, field["name"]


def _ddl_columns(table: str) -> list[str]:
    """Columns of `table` as the shipped migrations create and alter it, in the order they were added."""
    columns: list[str] = []
    for migration in load_migrations():
        for statement in migration.statements():
            if re.match(rf"CREATE TABLE IF NOT EXISTS {table}\b", statement):
                definition = statement.split("ENGINE")[0]
                body = definition[definition.index("(") + 1:definition.rindex(")")]
                columns += [line.split()[0] for line in body.splitlines() if line.strip()]
            elif re.match(rf"ALTER TABLE {table}\b", statement):
                columns += re.findall(r"ADD COLUMN (\w+)", statement)
    return columns


@pytest.mark.parametrize(("table", "row"), [
    ("routing_decisions", lambda: routing_decision_row(routing_decision(**V2_FIELDS), **POSITION)),
    ("policy_audit", lambda: policy_audit_row(policy_audit(), **POSITION)),
])
def test_rows_fill_exactly_the_columns_the_migrations_create(table, row):
    columns = _ddl_columns(table)
    assert len(columns) == len(set(columns)), columns
    assert set(row()) == set(columns)


# --- policy audit ----------------------------------------------------------------------------------------------

DIFF = """--- policy v3
+++ policy v4
@@ -1,3 +1,3 @@
 routes:
-  chat-default: {latency_slo_ms: 2500}
+  chat-default: {latency_slo_ms: 1800}
"""


def policy_audit(**overrides):
    value = {
        "audit_id": "aud-4", "changed_at": "2024-03-31T23:30:00-02:00", "actor": "ops-token", "role": "admin",
        "action": "set_policy", "source": "grpc", "old_version": 3, "new_version": 4,
        "old_sha256": "a" * 64, "new_sha256": "b" * 64, "diff": DIFF, "comment": "tighter SLO for chat",
    }
    value.update(overrides)
    codec = codec_for("policy_audit")
    return codec.decode(codec.encode(value))


def test_policy_audit_row_keeps_who_when_and_the_diff():
    row = policy_audit_row(policy_audit(), **POSITION)
    assert row["audit_id"] == "aud-4"
    assert row["changed_at"] == dt.datetime(2024, 4, 1, 1, 30, tzinfo=dt.timezone.utc)
    assert row["changed_date"] == dt.date(2024, 4, 1)  # the UTC date, not the writer's local one
    assert (row["actor"], row["role"], row["action"], row["source"]) == ("ops-token", "admin", "set_policy", "grpc")
    assert (row["old_version"], row["new_version"]) == (3, 4)
    assert (row["old_sha256"], row["new_sha256"]) == ("a" * 64, "b" * 64)
    assert row["diff"] == DIFF and row["comment"] == "tighter SLO for chat"
    assert (row["kafka_partition"], row["kafka_offset"], row["ingested_at"]) == (3, 41, INGESTED_AT)


def test_a_policy_audit_without_a_comment_has_a_null_comment():
    value = policy_audit(action="load_policy", source="file")
    del value["comment"]
    row = policy_audit_row(value, **POSITION)
    assert row["comment"] is None and (row["action"], row["source"]) == ("load_policy", "file")
    assert codec_for("policy_audit").decode(codec_for("policy_audit").encode(value))["comment"] is None


def test_policy_audit_row_has_a_column_for_every_schema_field():
    row = policy_audit_row(policy_audit(), **POSITION)
    for field in codec_for("policy_audit").reader.definition["fields"]:
        assert field["name"] in row, field["name"]


def test_policy_changes_are_routed_to_their_sink_by_audit_id():
    sentinel_client = object()  # the sinks only keep the client until they open
    routes = {route.topic.base_name: route.sink for route in default_routes(Settings(), client=sentinel_client)}
    sink = routes[POLICY_AUDIT.base_name]
    assert isinstance(sink, PolicyAuditSink)
    assert (sink.table, sink.id_column, sink.prune_column, sink.name) == (
        "policy_audit", "audit_id", "changed_date", "clickhouse.policy_audit")
    assert POLICY_AUDIT.schema == "policy_audit" and POLICY_AUDIT.base_name == "audit.policy.v1"
    assert POLICY_AUDIT.key == "audit_id" and POLICY_AUDIT.compacted is False


def test_dead_letter_record_carries_the_original_bytes_and_the_codec_reason():
    failed_at = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    record = dead_letter_record(
        stage="sink.clickhouse", topic="cost.lines.v1", partition=2, offset=17, key=b"acme",
        value=b"\xc3\x01garbage\xff", headers=[("trace", b"\x00\x01"), ("empty", None)],
        field="cost_usd", rule="decimal_scale", message="too many places", failed_at=failed_at,
        redaction="verbatim",
    )
    codec = codec_for("dead_letter")
    decoded = codec.decode(codec.encode(record))
    assert decoded["original_value"] == b"\xc3\x01garbage\xff" and decoded["original_key"] == b"acme"
    assert decoded["original_headers"] == {"trace": b"\x00\x01", "empty": b""}
    assert (decoded["error_field"], decoded["error_rule"], decoded["error_message"]) == (
        "cost_usd", "decimal_scale", "too many places"
    )
    assert (decoded["source_topic"], decoded["source_partition"], decoded["source_offset"]) == ("cost.lines.v1", 2, 17)

    row = dead_letter_row(decoded, **POSITION)
    assert row["letter_id"] == "sink.clickhouse/cost.lines.v1/2/17" == dead_letter_id(decoded)
    assert row["original_value"] == b"\xc3\x01garbage\xff"
    assert row["original_header_keys"] == ["empty", "trace"]
    assert row["original_header_values"] == [b"", b"\x00\x01"]
    assert row["failed_date"] == dt.date(2024, 1, 1)


def test_the_same_reject_replayed_has_the_same_letter_id():
    base = {"stage": "worker.price", "source_topic": "usage.llm.v1", "source_partition": 0, "source_offset": 5}
    assert dead_letter_id(base) == dead_letter_id(dict(base))
    assert dead_letter_id(base) != dead_letter_id(dict(base, source_offset=6))
    assert dead_letter_id(base) != dead_letter_id(dict(base, stage="sink.clickhouse"))


def test_unique_by_keeps_the_first_row_of_each_id():
    rows = [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "a", "n": 3}, {"id": "a", "n": 4}]
    unique, repeats = unique_by(rows, "id")
    assert unique == [{"id": "a", "n": 1}, {"id": "b", "n": 2}] and repeats == 2


@pytest.mark.parametrize("missing", ["line_id", "cost_usd", "tag_source"])
def test_a_record_missing_a_required_field_is_an_error_not_a_default(missing):
    value = dict(cost_line())
    del value[missing]
    with pytest.raises(KeyError):
        cost_line_row(value, **POSITION)
