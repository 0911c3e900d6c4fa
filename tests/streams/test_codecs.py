"""streams/codecs.py: single-object framing, Avro and JSON round trips, and errors naming field and rule."""

from __future__ import annotations

import calendar
import datetime as dt
import io
import json
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prismops import schemas
from prismops.streams.codecs import SINGLE_OBJECT_MAGIC, AvroCodec, CodecError, codec_for, coerce, compile_coercer

UTC = dt.timezone.utc

# --- CRC-64-AVRO, written from the Avro specification ("Schema Fingerprints") --------------------------

CRC64_EMPTY = 0xC15D213AA4D7A795
_MASK = (1 << 64) - 1


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (CRC64_EMPTY & -(fp & 1))
        table.append(fp & _MASK)
    return table


_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    fp = CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


def test_crc64_implementation_matches_the_avro_test_vectors():
    # From Avro's share/test/data/schema-tests.txt (canonical form -> 64-bit fingerprint, as a signed long).
    def signed(v: int) -> int:
        return v - (1 << 64) if v >= 1 << 63 else v

    assert signed(crc64_avro(b'"null"')) == 7195948357588979594
    assert signed(crc64_avro(b'"int"')) == 8247732601305521295


# --- sample records --------------------------------------------------------------------------------------


def cost_line(**overrides: Any) -> dict[str, Any]:
    record = {
        "line_id": "line-1",
        "source": "llm",
        "source_event_id": "evt-1",
        "event_time": dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
        "tenant": "acme",
        "team": "devtools",
        "product": "ide",
        "service": "code-assist",
        "feature": "complete",
        "customer": "cust-001",
        "environment": "prod",
        "provider": "openai",
        "model": "gpt-4o",
        "region": None,
        "input_tokens": 1000,
        "output_tokens": 500,
        "user_hash": "3f1c",
        "resource": None,
        "cached_input_tokens": 200,
        "cache_write_tokens": 40,
        "reasoning_tokens": 0,
        "usage_quantity": Decimal("1500"),
        "usage_unit": "token",
        "cost_usd": Decimal("0.007250000001"),
        "billed_cost_usd": None,
        "list_cost_usd": Decimal("0.01"),
        "charge_category": "usage",
        "priced": True,
        "price_version": "2026-11-01",
        "status": "ok",
        "tag_source": {"team": "inferred", "tenant": "explicit"},
        "labels": {"region": "us-east-1"},
        "session_id": "s-9",
        "request_id": None,
        "model_version": "gpt-4o-2024-08-06",
        "deployment_id": None,
        "prompt_chars": 4200,
        "latency_ms": 812,
        "cache_hit": False,
        "fallback": True,
        "shadow": False,
        "decision_id": "dec-7",
        "currency": "EUR",
        "billed_cost": Decimal("0.006700000001"),
        "effective_cost": Decimal("-0.000000000001"),
        "list_cost": None,
        "contracted_cost": Decimal("0.0067"),
        "billing_account_id": "123456789012",
        "billing_period_start": dt.datetime(2026, 3, 1, tzinfo=UTC),
        "export_id": "9f86d081884c7d65",
        "export_seq": 1767225600000000000,
    }
    record.update(overrides)
    return record


def routing_decision(**overrides: Any) -> dict[str, Any]:
    record = {
        "decision_id": "dec-1",
        "decided_at": dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
        "tenant": "acme",
        "service": "search",
        "feature": "rerank",
        "request_id": None,
        "latency_slo_ms": 750.5,
        "chosen_provider": "google",
        "chosen_model": "gemini-2.0-flash",
        "reason_code": "cheapest_within_slo",
        "reason": "cheapest model whose p95 meets the SLO",
        "candidates": [
            {"provider": "google", "model": "gemini-2.0-flash", "p95_latency_ms": 610.25, "error_rate": 0.0125,
             "estimated_cost_usd": Decimal("0.000123456789"), "eligible": True, "verdict": "chosen",
             "breaker_state": "closed"},
            {"provider": "openai", "model": "gpt-4o", "p95_latency_ms": None, "error_rate": None,
             "estimated_cost_usd": None, "eligible": False, "verdict": "no_live_data", "breaker_state": "open"},
        ],
        "reason_codes": ["cheapest_within_slo", "shadow_sampled"],
        "route": "default",
        "policy_version": 3,
        "experiment": None,
        "arm": None,
        "shadow_provider": "anthropic",
        "shadow_model": "claude-sonnet-4",
        "fallbacks": ["openai/gpt-4o"],
        "budget_status": "warn",
        "budget_used_pct": 85.5,
        "downgraded": True,
        "static_fallback": False,
        "estimated_cost_usd": Decimal("0.000123456789"),
        "customer": None,
        "session_id": "s-1",
        "live_table_age_ms": 1250,
    }
    record.update(overrides)
    return record


def _with_out(record: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != name}


# --- single-object framing -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "version"), [
    (name, v.version) for name in schemas.schema_names() for v in schemas.versions(name)
])
def test_header_is_magic_plus_little_endian_crc64_of_the_writer_canonical_form(name, version, sample_record):
    data = codec_for(name).encode(sample_record(name, version), version=version)
    canonical = to_parsing_canonical_form(schemas.get(name, version).parsed)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == crc64_avro(canonical.encode("utf-8")).to_bytes(8, "little")


def test_single_object_header_for_cost_line():
    codec = codec_for("cost_line")
    data = codec.encode(cost_line())
    assert data[:2] == bytes([0xC3, 0x01])
    canonical = to_parsing_canonical_form(schemas.latest("cost_line").parsed)
    assert data[2:10] == crc64_avro(canonical.encode()).to_bytes(8, "little")
    assert codec.fingerprint == data[2:10]
    # ...and the rest is the plain Avro binary body.
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schemas.latest("cost_line").parsed, cost_line())
    assert data[10:] == body.getvalue()


def test_every_version_of_a_schema_has_its_own_fingerprint():
    codec = codec_for("llm_usage_event")
    headers = {
        codec.encode({"x": 1} | _llm_event(), version=v.version)[2:10] for v in schemas.versions("llm_usage_event")
    }
    assert len(headers) == len(schemas.versions("llm_usage_event"))


def _llm_event() -> dict[str, Any]:
    return {
        "event_id": "e1", "event_time": dt.datetime(2026, 1, 1, tzinfo=UTC), "tenant": "acme", "service": "search",
        "feature": "rerank", "request_id": "r1", "environment": "prod", "provider": "google",
        "model": "gemini-2.0-flash", "input_tokens": 10, "output_tokens": 2, "latency_ms": 300, "status": "ok",
    }


def test_codec_for_is_cached_per_schema():
    assert codec_for("cost_line") is codec_for("cost_line")
    assert codec_for("cost_line") is not codec_for("dead_letter")


# --- Avro round trips of every field kind ------------------------------------------------------------------


def _avro_round_trip(name: str, record: dict[str, Any]) -> dict[str, Any]:
    codec = codec_for(name)
    return codec.decode(codec.encode(record))


def test_cost_line_round_trip_keeps_every_field():
    record = cost_line()
    assert _avro_round_trip("cost_line", record) == record


@pytest.mark.parametrize("amount", [
    "0.000000000001",                      # the smallest money unit at scale 12
    "12345678901234567890.123456789012",   # 32 significant digits
    "99999999999999999999999999.999999999999",  # 38 digits: the full precision
    "-0.5",
    "0",
])
def test_money_round_trips_exactly(amount):
    decoded = _avro_round_trip("cost_line", cost_line(cost_usd=Decimal(amount)))
    assert isinstance(decoded["cost_usd"], Decimal)
    assert decoded["cost_usd"] == Decimal(amount)
    assert decoded["cost_usd"].as_tuple().exponent == -12  # read back at the column's scale


def test_timestamps_come_back_timezone_aware_utc():
    aware_utc = dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    naive = aware_utc.replace(tzinfo=None)
    plus_two = aware_utc.astimezone(dt.timezone(dt.timedelta(hours=2)))
    for given in (aware_utc, naive, plus_two):
        decoded = _avro_round_trip("cost_line", cost_line(event_time=given))["event_time"]
        assert decoded.utcoffset() == dt.timedelta(0)
        assert decoded == aware_utc  # naive input is taken as UTC; other offsets keep the instant


def test_maps_round_trip_including_empty_and_unicode():
    record = cost_line(tag_source={}, labels={"ünïcode key": "välue ✓", "empty": ""})
    decoded = _avro_round_trip("cost_line", record)
    assert decoded["tag_source"] == {}
    assert decoded["labels"] == {"ünïcode key": "välue ✓", "empty": ""}


@pytest.mark.parametrize(("customer", "region"), [(None, None), ("cust-9", "eu-west-1"), ("", None)])
def test_unions_round_trip_null_and_value(customer, region):
    decoded = _avro_round_trip("cost_line", cost_line(customer=customer, region=region))
    assert decoded["customer"] == customer
    assert decoded["region"] == region


@pytest.mark.parametrize("source", ["llm", "gpu", "cloud"])
def test_enums_round_trip(source):
    assert _avro_round_trip("cost_line", cost_line(source=source))["source"] == source


def test_omitted_fields_with_defaults_take_the_schema_default():
    decoded = _avro_round_trip("cost_line", _with_out(_with_out(_with_out(cost_line(), "labels"), "status"), "customer"))
    assert decoded["labels"] == {}
    assert decoded["status"] == "ok"
    assert decoded["customer"] is None


def test_routing_decision_arrays_of_records_with_unions_round_trip():
    record = routing_decision()
    decoded = _avro_round_trip("routing_decision", record)
    assert decoded == record
    assert decoded["candidates"][0]["estimated_cost_usd"] == Decimal("0.000123456789")
    assert decoded["candidates"][1]["p95_latency_ms"] is None
    assert _avro_round_trip("routing_decision", routing_decision(candidates=[]))["candidates"] == []


def test_doubles_longs_and_nullable_decimals_round_trip_in_model_live_stats():
    record = {
        "provider": "openai", "model": "gpt-4o", "window_seconds": 300.0, "sample_count": 2**40,
        "error_count": 3, "error_rate": 0.015625, "p50_latency_ms": 812.5, "p95_latency_ms": 1500.25,
        "p99_latency_ms": 4200.0, "cost_usd": Decimal("12.345678901234"), "tokens": 2**62,
        "input_price_per_mtok": Decimal("2.5"), "output_price_per_mtok": None,
        "updated_at": dt.datetime(2026, 1, 1, tzinfo=UTC), "rate_limited_count": 2, "rate_limited_rate": 0.01,
        "p50_ttft_ms": 120.5, "p95_ttft_ms": 480.0, "p99_ttft_ms": None, "requests_per_second": 0.5,
        "tokens_per_second": 812.25, "input_tokens": 2**40, "output_tokens": 7,
        "cost_per_1k_input_usd": Decimal("0.0025"), "cost_per_1k_output_usd": None,
    }
    assert _avro_round_trip("model_live_stats", record) == record


def test_gpu_usage_decimals_use_their_own_scale():
    codec = codec_for("gpu_usage_event")
    record = {
        "event_id": "g1", "window_start": dt.datetime(2026, 1, 1, tzinfo=UTC),
        "window_end": dt.datetime(2026, 1, 1, 0, 1, tzinfo=UTC), "cluster": "c", "node": "n",
        "gpu_model": "H100-SXM-80GB", "gpu_index": 3, "gpu_fraction": Decimal("0.142857"),
        "capacity_type": "spot", "tenant": "acme", "requested_gpu_seconds": Decimal("60"),
        "used_gpu_seconds": Decimal("51.234567"), "source": "dcgm",
    }
    decoded = codec.decode(codec.encode(record))
    assert decoded["gpu_fraction"] == Decimal("0.142857")
    assert decoded["used_gpu_seconds"] == Decimal("51.234567")
    with pytest.raises(CodecError) as info:
        codec.encode(record | {"gpu_fraction": Decimal("0.1428571")})  # scale 6 here, not 12
    assert (info.value.field, info.value.rule) == ("gpu_fraction", "decimal_scale")


@pytest.mark.parametrize("name", schemas.schema_names())
def test_every_schema_round_trips_through_avro_and_json(name, sample_record):
    codec = codec_for(name)
    for seed in range(3):
        record = sample_record(name, seed=seed)
        from_avro = codec.decode(codec.encode(record))
        assert from_avro == record
        assert codec.decode(codec.encode_json(record)) == from_avro


def test_decoded_defaults_are_fresh_objects_not_the_schema_default():
    codec = codec_for("cost_line")
    document = json.dumps(_jsonable(_with_out(cost_line(), "labels"))).encode()
    first = codec.decode(document)
    first["labels"]["mutated"] = "yes"
    # A caller changing its decoded record must not change the schema (and so every later record).
    assert codec.decode(document)["labels"] == {}
    assert codec.decode(codec.encode(_with_out(cost_line(), "labels")))["labels"] == {}


# --- JSON input --------------------------------------------------------------------------------------------


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(record, default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v)))


def test_json_input_equals_the_avro_decoded_record():
    moment = dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    epoch_micros = calendar.timegm(moment.timetuple()) * 1_000_000 + moment.microsecond
    document = {
        **_jsonable(cost_line()),
        "event_time": "2026-03-04T05:06:07.891011Z",     # ISO-8601 with Z
        "usage_quantity": 1500,                          # integer for a decimal
        "cost_usd": "0.007250000001",                    # decimal string
        "input_tokens": 1000,                            # JSON integers for longs
    }
    from_json = codec_for("cost_line").decode(json.dumps(document).encode())
    from_avro = codec_for("cost_line").decode(codec_for("cost_line").encode(cost_line()))
    assert from_json == from_avro

    by_micros = codec_for("cost_line").decode(json.dumps(document | {"event_time": epoch_micros}).encode())
    assert by_micros["event_time"] == moment
    assert by_micros["event_time"].utcoffset() == dt.timedelta(0)


def test_json_timestamps_without_a_zone_are_utc():
    document = _jsonable(cost_line()) | {"event_time": "2026-03-04T05:06:07.891011"}
    decoded = codec_for("cost_line").decode(json.dumps(document).encode())
    assert decoded["event_time"].utcoffset() == dt.timedelta(0)
    assert decoded["event_time"] == dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


def test_json_numbers_for_money_are_parsed_exactly_not_as_floats():
    document = _jsonable(cost_line()) | {"cost_usd": "__N__"}
    raw = json.dumps(document).replace('"__N__"', "0.1").encode()
    decoded = codec_for("cost_line").decode(raw)
    assert decoded["cost_usd"] == Decimal("0.1")  # a float would be 0.1000000000000000055...


def test_json_with_leading_whitespace_and_decode_json_directly():
    raw = b"  \n " + json.dumps(_jsonable(cost_line())).encode()
    codec = codec_for("cost_line")
    assert codec.decode(raw) == codec.decode_json(raw) == cost_line()


def test_encode_json_writes_money_as_strings_and_times_as_iso_z():
    document = json.loads(codec_for("cost_line").encode_json(cost_line()))
    assert document["cost_usd"] == "0.007250000001"
    assert document["event_time"] == "2026-03-04T05:06:07.891011Z"


# --- errors name the field and the rule ----------------------------------------------------------------------


@pytest.mark.parametrize(("record", "field", "rule"), [
    (_with_out(cost_line(), "tenant"), "tenant", "required"),
    (cost_line(tenant=None), "tenant", "required"),
    (cost_line(input_tokens="1000"), "input_tokens", "type"),
    (cost_line(input_tokens=True), "input_tokens", "type"),
    (cost_line(input_tokens=2**63), "input_tokens", "range"),
    (cost_line(priced="yes"), "priced", "type"),
    (cost_line(tenant=42), "tenant", "type"),
    (cost_line(labels=["a"]), "labels", "type"),
    (cost_line(labels={"region": 5}), "labels.region", "type"),
    (cost_line(source="gcp"), "source", "enum"),
    (cost_line(cost_usd=0.1), "cost_usd", "decimal"),
    (cost_line(cost_usd="ten dollars"), "cost_usd", "decimal"),
    (cost_line(cost_usd=Decimal("NaN")), "cost_usd", "decimal"),
    (cost_line(cost_usd="0.0000000000001"), "cost_usd", "decimal_scale"),
    (cost_line(cost_usd=Decimal("123456789012345678901234567")), "cost_usd", "decimal_precision"),
    (cost_line(cost_usd=Decimal("1e30")), "cost_usd", "decimal_precision"),
    (cost_line(event_time="yesterday"), "event_time", "timestamp"),
    (cost_line(event_time=1.5), "event_time", "timestamp"),
    # epoch nanoseconds sent where microseconds are expected: year ~55,000, out of range
    (cost_line(event_time=1_700_000_000_000_000_000), "event_time", "timestamp"),
])
def test_encode_errors_name_field_and_rule(record, field, rule):
    with pytest.raises(CodecError) as info:
        codec_for("cost_line").encode(record)
    assert (info.value.field, info.value.rule) == (field, rule)
    assert field in str(info.value) and rule in str(info.value)


@pytest.mark.parametrize(("mutate", "field", "rule"), [
    (lambda r: r["candidates"][1].pop("eligible"), "candidates[1].eligible", "required"),
    (lambda r: r["candidates"][0].update(estimated_cost_usd=0.5), "candidates[0].estimated_cost_usd", "decimal"),
    (lambda r: r.update(candidates={"a": 1}), "candidates", "type"),
    (lambda r: r.update(latency_slo_ms="fast"), "latency_slo_ms", "type"),
])
def test_nested_errors_give_the_path(mutate, field, rule):
    record = routing_decision()
    mutate(record)
    with pytest.raises(CodecError) as info:
        codec_for("routing_decision").encode(record)
    assert (info.value.field, info.value.rule) == (field, rule)


def test_json_input_errors_name_field_and_rule():
    codec = codec_for("cost_line")
    with pytest.raises(CodecError) as info:
        codec.decode(json.dumps(_jsonable(_with_out(cost_line(), "cost_usd"))).encode())
    assert (info.value.field, info.value.rule) == ("cost_usd", "required")
    with pytest.raises(CodecError) as info:
        codec.decode(json.dumps(_jsonable(cost_line()) | {"source": "GPU"}).encode())
    assert (info.value.field, info.value.rule) == ("source", "enum")


def _valid_bytes() -> bytes:
    return codec_for("cost_line").encode(cost_line())


@pytest.mark.parametrize(("data", "rule"), [
    (b"", "non_empty"),
    (None, "non_empty"),
    (b"\x00\x01garbage bytes", "wire_format"),
    (b"[1, 2, 3]", "wire_format"),
    (b"\xc3\x02" + bytes(8) + b"\x02a", "wire_format"),   # not the single-object marker (0xC3 0x01)
    (b"\xc3\x01\x9a\x8f", "avro_decode"),                 # header cut short
    (b"\xc3\x01" + bytes(8) + b"\x02a", "unknown_schema"),  # a fingerprint no version has
    (b"{not json", "json_decode"),
    (b'{"line_id": ', "json_decode"),
    (b"{\xff\xfe}", "json_decode"),
])
def test_decode_errors_name_the_rule(data, rule):
    with pytest.raises(CodecError) as info:
        codec_for("cost_line").decode(data)
    assert info.value.rule == rule
    assert info.value.field is None


def test_truncated_body_is_an_avro_decode_error():
    data = _valid_bytes()
    for cut in (11, len(data) // 2, len(data) - 1):
        with pytest.raises(CodecError) as info:
            codec_for("cost_line").decode(data[:cut])
        assert info.value.rule == "avro_decode"


def test_corrupt_body_is_an_avro_decode_error():
    data = bytearray(_valid_bytes())
    # The body starts with line_id's length (a zig-zag varint): claim a string far longer than the message.
    data[10:11] = b"\xfe\xff\xff\x7f"
    with pytest.raises(CodecError) as info:
        codec_for("cost_line").decode(bytes(data))
    assert info.value.rule == "avro_decode"


def test_bytes_of_another_schema_are_an_unknown_schema_error():
    other = codec_for("dead_letter").encode({
        "failed_at": dt.datetime(2026, 1, 1, tzinfo=UTC), "stage": "s", "source_topic": "t",
        "source_partition": 0, "source_offset": 1, "error_rule": "r", "error_message": "m",
    })
    with pytest.raises(CodecError) as info:
        codec_for("cost_line").decode(other)
    assert info.value.rule == "unknown_schema"
    assert "cost_line" in str(info.value)


def test_json_value_that_is_not_an_object_is_rejected():
    with pytest.raises(CodecError) as info:
        codec_for("cost_line").decode_json(b"[1]")
    assert info.value.rule == "json_decode"


def test_codec_error_is_a_value_error_with_a_readable_message():
    error = CodecError("input_tokens", "non_negative", "must be >= 0")
    assert isinstance(error, ValueError)
    assert str(error) == "input_tokens: must be >= 0 [non_negative]"
    assert str(CodecError(None, "wire_format", "bad")) == "bad [wire_format]"


# --- property: any valid cost line round-trips exactly ----------------------------------------------------------

_money = st.integers(0, 12).flatmap(
    lambda places: st.decimals(
        min_value=Decimal("-1e20"), max_value=Decimal("1e20"), places=places, allow_nan=False, allow_infinity=False
    )
)
_text = st.text(max_size=12)
_long = st.integers(-(2**63), 2**63 - 1)
_labels = st.dictionaries(_text, _text, max_size=3)

cost_lines = st.fixed_dictionaries({
    "line_id": _text, "source": st.sampled_from(["llm", "gpu", "cloud"]), "source_event_id": _text,
    "event_time": st.datetimes(
        min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    "tenant": _text, "team": _text, "product": _text, "service": _text, "feature": _text,
    "customer": st.none() | _text, "environment": _text, "provider": _text, "model": _text,
    "region": st.none() | _text,
    "input_tokens": _long, "output_tokens": _long, "cached_input_tokens": _long, "reasoning_tokens": _long,
    "cache_write_tokens": _long, "user_hash": st.none() | _text, "resource": st.none() | _text,
    "billed_cost_usd": st.none() | _money, "list_cost_usd": st.none() | _money, "charge_category": st.none() | _text,
    "usage_quantity": _money, "usage_unit": _text, "cost_usd": _money, "priced": st.booleans(),
    "price_version": _text, "status": _text, "tag_source": _labels, "labels": _labels,
    "session_id": st.none() | _text, "request_id": st.none() | _text, "model_version": st.none() | _text,
    "deployment_id": st.none() | _text, "prompt_chars": st.none() | _long, "latency_ms": st.none() | _long,
    "cache_hit": st.booleans(), "fallback": st.booleans(), "shadow": st.booleans(), "decision_id": st.none() | _text,
    "currency": st.none() | _text, "billed_cost": st.none() | _money, "effective_cost": st.none() | _money,
    "list_cost": st.none() | _money, "contracted_cost": st.none() | _money, "billing_account_id": st.none() | _text,
    "billing_period_start": st.none() | st.datetimes(
        min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    "export_id": st.none() | _text, "export_seq": st.none() | _long,
})


@settings(max_examples=150, deadline=None)
@given(cost_lines)
def test_any_valid_cost_line_round_trips_exactly_through_avro_and_json(record):
    codec = codec_for("cost_line")
    from_avro = codec.decode(codec.encode(record))
    from_json = codec.decode(codec.encode_json(record))
    assert from_avro == record
    assert from_json == record
    for name in ("cost_usd", "usage_quantity"):
        # exact: same number, no float detour
        assert from_avro[name] - record[name] == 0
        assert from_json[name] - record[name] == 0


def test_codec_reads_with_the_newest_version():
    codec = AvroCodec("llm_usage_event")
    assert codec.reader == schemas.latest("llm_usage_event")
    assert SINGLE_OBJECT_MAGIC == b"\xc3\x01"


def test_json_nested_too_deeply_or_with_a_huge_integer_is_a_codec_error_not_a_crash():
    codec = codec_for("llm_usage_event")
    for data in (b'{"labels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b'{"input_tokens": ' + b"9" * 5000 + b"}"):
        with pytest.raises(CodecError) as raised:
            codec.decode(data)
        assert raised.value.rule == "json_decode"


WRONG_VALUES = st.sampled_from([
    None, True, False, 0, 7, -1, 2**40, 2**70, -(2**64), 1.5, "x", "", "2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00", "1.25", "not a number", b"\x00", Decimal("1.5"), Decimal("7"), Decimal("NaN"), [], [1],
    ["a"], {}, {"a": 1}, {"a": "b"}, {1: "b"}, dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 1, tzinfo=UTC), 10**15,
])


def coerced_or_error(function: Any, *args: Any) -> str:
    """What a coercion gave, as text: a NaN (a Decimal NaN sent for a double) equals itself there."""
    try:
        return repr(("value", function(*args)))
    except CodecError as error:
        return repr(("error", error.field, error.rule, str(error)))


@pytest.mark.parametrize("version", [schemas.latest(name) for name in schemas.schema_names()], ids=lambda v: f"{v.name}.v{v.version}")
def test_the_compiled_coercer_gives_what_coerce_gives_for_valid_records_and_for_wrong_fields(version, records_of):
    coercer = compile_coercer(version.definition)
    names = [field["name"] for field in version.definition["fields"]]

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(records_of(version.definition), st.dictionaries(st.sampled_from(names), WRONG_VALUES, max_size=3),
           st.sets(st.sampled_from(names), max_size=2))
    def same_answer(record, wrong, missing):
        mutated = {name: value for name, value in {**record, **wrong}.items() if name not in missing}
        for candidate in (record, mutated):
            assert coerced_or_error(coercer, candidate, "") == coerced_or_error(coerce, version.definition, candidate, "")

    same_answer()


@pytest.mark.parametrize("value", [None, "x", 3, [], {"a": 1}])
def test_the_compiled_coercer_names_a_record_that_is_not_an_object_as_coerce_does(value):
    definition = schemas.latest("cost_line").definition
    assert coerced_or_error(compile_coercer(definition), value, "") == coerced_or_error(coerce, definition, value, "")
