"""streams/avro_writer.py against fastavro as the outside reference: every shipped schema, generated records."""

from __future__ import annotations

import io
from decimal import Decimal

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prismops import schemas
from prismops.streams.codecs import CodecError, codec_for, coerce
from prismops.streams.avro_writer import RecordTemplate, UnsupportedSchema, compile_writer, encode, zigzag

LATEST = [schemas.latest(name) for name in schemas.schema_names()]


@pytest.mark.parametrize("version", LATEST, ids=lambda v: f"{v.name}.v{v.version}")
def test_every_shipped_schema_round_trips_through_fastavro_and_the_checked_encoder_writes_fastavros_bytes(
        version, records_of):
    """The compiled writer against fastavro both ways; and `AvroCodec.encode` / `encode_body`, which write
    `coerce`'s output with the compiled writer, give fastavro's bytes of that output (or the same CodecError)."""
    writer = compile_writer(version.definition)
    codec = codec_for(version.name)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(records_of(version.definition))
    def round_trip(record):
        read = fastavro.schemaless_reader(io.BytesIO(encode(writer, record)), version.parsed, None)
        assert read == record
        reference = io.BytesIO()
        fastavro.schemaless_writer(reference, version.parsed, record)
        assert fastavro.schemaless_reader(io.BytesIO(reference.getvalue()), version.parsed, None) == read
        try:
            coerced = coerce(version.definition, record, path="")
        except CodecError:  # e.g. more digits than a decimal's precision: refused by name either way
            with pytest.raises(CodecError):
                codec.encode(record)
            return
        checked = io.BytesIO()
        fastavro.schemaless_writer(checked, version.parsed, coerced)
        assert codec.encode_body(record) == checked.getvalue()
        assert codec.encode(record) == codec.header() + checked.getvalue()

    round_trip()


@pytest.mark.parametrize("version", LATEST, ids=lambda v: f"{v.name}.v{v.version}")
def test_a_template_writes_what_the_writer_writes_for_any_record_that_differs_only_in_its_open_fields(
        version, records_of):
    writer = compile_writer(version.definition)
    names = [field["name"] for field in version.definition["fields"]]

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(records_of(version.definition), records_of(version.definition), st.sets(st.sampled_from(names)))
    def templated(remembered, other, open_fields):
        template = RecordTemplate(writer, remembered, open_fields)
        record = {**remembered, **{name: other[name] for name in open_fields}}
        assert template.encode(record) == encode(writer, record)

    templated()


def test_a_template_reads_only_its_open_fields_and_names_what_it_cannot_take():
    definition = {"type": "record", "name": "t", "fields": [
        {"name": "id", "type": "string"}, {"name": "fixed", "type": "long"},
        {"name": "age", "type": ["null", "long"], "default": None}]}
    writer = compile_writer(definition)
    template = RecordTemplate(writer, {"id": "a", "fixed": 7, "age": 1}, ("id", "age"))
    assert template.encode({"id": "b", "fixed": 99}) == encode(writer, {"id": "b", "fixed": 7, "age": None})
    with pytest.raises(KeyError, match="id"):
        template.encode({"age": 2})  # an open field without a default
    with pytest.raises(KeyError, match="nope"):
        RecordTemplate(writer, {"id": "a", "fixed": 7}, ("nope",))
    with pytest.raises(UnsupportedSchema):
        RecordTemplate(compile_writer("long"), {}, ())


@pytest.mark.parametrize("number", [0, 1, -1, 63, 64, -64, -65, 2**31, -(2**63), 2**63 - 1, 300, -300])
def test_zigzag_matches_the_spec_examples_and_fastavro(number):
    schema = fastavro.parse_schema({"type": "record", "name": "n", "fields": [{"name": "x", "type": "long"}]})
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, schema, {"x": number})
    assert zigzag(number) == expected.getvalue()


def test_spec_examples():
    assert zigzag(0) == b"\x00" and zigzag(-1) == b"\x01" and zigzag(1) == b"\x02" and zigzag(-2) == b"\x03"
    assert zigzag(2147483647) == b"\xfe\xff\xff\xff\x0f" and zigzag(-2147483648) == b"\xff\xff\xff\xff\x0f"


def test_a_decimal_with_more_places_than_its_scale_is_refused_not_rounded():
    writer = compile_writer({"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2})
    with pytest.raises(ValueError, match="more than 2 decimal places"):
        encode(writer, Decimal("1.005"))
    for not_a_number in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValueError, match="not a finite decimal"):
            encode(writer, Decimal(not_a_number))


@settings(max_examples=300, deadline=None)
@given(st.integers(-(10**12), 10**12), st.integers(0, 6), st.integers(0, 4))
def test_a_decimal_is_written_as_the_checked_encoder_writes_it_whatever_its_trailing_zeros(units, places, zeros):
    """`units` at `places` decimal places, padded with `zeros` trailing zeros, at scale 4: exactly the value, as
    fastavro writes it quantized (what the checked encoder does); a digit other than zero past the scale: refused."""
    schema = {"type": "bytes", "logicalType": "decimal", "precision": 24, "scale": 4}
    writer, parsed = compile_writer(schema), fastavro.parse_schema(schema)
    value = Decimal(units).scaleb(-places)
    padded = Decimal(f"{value:.{places + zeros}f}")
    if places > 4 and units % 10 ** (places - 4):
        with pytest.raises(ValueError, match="more than 4 decimal places"):
            encode(writer, padded)
        return
    reference = io.BytesIO()
    fastavro.schemaless_writer(reference, parsed, value.quantize(Decimal("0.0001")))
    assert encode(writer, padded) == reference.getvalue()


def test_wrong_types_raise_instead_of_writing_something_else():
    with pytest.raises(TypeError):
        encode(compile_writer("long"), True)
    with pytest.raises(TypeError):
        encode(compile_writer("boolean"), 1)
    with pytest.raises(KeyError):
        encode(compile_writer({"type": "record", "name": "r", "fields": [{"name": "a", "type": "string"}]}), {})


@pytest.mark.parametrize("kind, wrong, error", [
    ("long", True, TypeError), ("long", 1.5, TypeError), ("int", "7", TypeError), ("boolean", 1, TypeError),
    ("string", b"x", AttributeError), ("double", "1.0", Exception), (["null", "long"], False, TypeError),
    (["null", "string"], 3, AttributeError), ({"type": "map", "values": "string"}, {"k": 1}, AttributeError),
    ({"type": "map", "values": "string"}, {1: "v"}, AttributeError),
])
def test_a_record_field_written_inline_refuses_what_the_primitive_writer_refuses(kind, wrong, error):
    """Record fields of primitive types are written by generated code, not by the primitive writers: the same
    values must be refused."""
    record = compile_writer({"type": "record", "name": "r", "fields": [{"name": "a", "type": kind}]})
    with pytest.raises(error):
        encode(record, {"a": wrong})
    with pytest.raises(error):
        encode(compile_writer(kind), wrong)


def test_missing_fields_with_defaults_take_the_default():
    schema = {"type": "record", "name": "r", "fields": [{"name": "a", "type": ["null", "string"], "default": None},
                                                       {"name": "b", "type": "long", "default": 7}]}
    parsed = fastavro.parse_schema(schema)
    assert fastavro.schemaless_reader(io.BytesIO(encode(compile_writer(schema), {})), parsed, None) == {"a": None, "b": 7}


def test_parts_of_avro_it_does_not_cover_are_refused_when_compiled():
    with pytest.raises(UnsupportedSchema):
        compile_writer(["string", "long"])
    with pytest.raises(UnsupportedSchema):
        compile_writer({"type": "fixed", "name": "f", "size": 4})



def test_templates_of_one_writer_and_open_fields_share_one_generated_function_and_keep_their_own_bytes():
    definition = {"type": "record", "name": "t", "fields": [
        {"name": "id", "type": "string"}, {"name": "fixed", "type": "long"}, {"name": "tags", "type": {
            "type": "map", "values": "string"}}, {"name": "age", "type": ["null", "long"], "default": None}]}
    writer = compile_writer(definition)
    first = RecordTemplate(writer, {"id": "a", "fixed": 7, "tags": {"k": "v"}, "age": 1}, ("id", "age"))
    second = RecordTemplate(writer, {"id": "a", "fixed": 8, "tags": {}, "age": 1}, ("id", "age"))
    other = RecordTemplate(writer, {"id": "a", "fixed": 8, "tags": {}, "age": 1}, ("fixed",))
    assert first._function is second._function and other._function is not first._function
    record = {"id": "b", "age": None}
    assert first.encode(record) == encode(writer, {**record, "fixed": 7, "tags": {"k": "v"}})
    assert second.encode(record) == encode(writer, {**record, "fixed": 8, "tags": {}})
    assert other.encode({"fixed": 9}) == encode(writer, {"id": "a", "fixed": 9, "tags": {}, "age": 1})
