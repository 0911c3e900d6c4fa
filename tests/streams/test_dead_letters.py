"""streams/dead_letters.py: a dead-letter record keeps the original bytes and encodes with its schema."""

from __future__ import annotations

import datetime as dt

from prismops.streams.codecs import codec_for
from prismops.streams.dead_letters import dead_letter_record

UTC = dt.timezone.utc

# Not valid Avro, not valid UTF-8, padded with whitespace: the kind of value that ends up here; it must
# survive byte for byte.
ORIGINAL_VALUE = b" \xc3\x01\x00\xff\xfe garbage \x80\x81\r\n"


def _record(**overrides):
    arguments = dict(
        stage="worker.price_llm_usage",
        topic="usage.llm.v1",
        partition=3,
        offset=1234567890123,
        key=b"acme",
        value=ORIGINAL_VALUE,
        headers=[("content-type", b"avro/binary"), ("traceparent", None)],
        field="input_tokens",
        rule="non_negative",
        message="must be >= 0, got -5",
        failed_at=dt.datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC),
    )
    arguments.update(overrides)
    return dead_letter_record(**arguments)


def test_record_encodes_and_keeps_the_original_bytes():
    codec = codec_for("dead_letter")
    decoded = codec.decode(codec.encode(_record()))
    assert decoded["original_value"] == ORIGINAL_VALUE
    assert decoded["original_key"] == b"acme"
    assert decoded["original_headers"] == {"content-type": b"avro/binary", "traceparent": b""}
    assert decoded["source_topic"] == "usage.llm.v1"
    assert decoded["source_partition"] == 3
    assert decoded["source_offset"] == 1234567890123
    assert decoded["stage"] == "worker.price_llm_usage"
    assert (decoded["error_field"], decoded["error_rule"]) == ("input_tokens", "non_negative")
    assert decoded["error_message"] == "must be >= 0, got -5"
    assert decoded["failed_at"] == dt.datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_tombstones_and_field_less_errors_encode():
    codec = codec_for("dead_letter")
    decoded = codec.decode(codec.encode(_record(key=None, value=None, headers=None, field=None, rule="non_empty")))
    assert decoded["original_key"] is None
    assert decoded["original_value"] is None
    assert decoded["original_headers"] == {}
    assert decoded["error_field"] is None
    assert decoded["error_rule"] == "non_empty"


def test_failed_at_defaults_to_now_in_utc():
    before = dt.datetime.now(UTC)
    record = _record(failed_at=None)
    after = dt.datetime.now(UTC)
    assert before <= record["failed_at"] <= after
    assert record["failed_at"].utcoffset() == dt.timedelta(0)
