"""finops/dead_letters.py: a dead-letter record says why and where, encodes with its schema, and keeps no personal
data unless asked to (strict redaction by default, verbatim on request)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from prismops.finops.dead_letters import dead_letter_record
from prismops.finops.privacy import EMAIL_MASK, PHONE_MASK, TEXT_MAX_CHARS, TRUNCATED_MARK
from prismops.settings import Settings
from prismops.streams.codecs import codec_for

UTC = dt.timezone.utc

# Not valid Avro, not valid UTF-8, padded with whitespace: the kind of value that ends up here.
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


def _roundtrip(record):
    codec = codec_for("dead_letter")
    return codec.decode(codec.encode(record))


def test_verbatim_record_encodes_and_keeps_the_original_bytes():
    decoded = _roundtrip(_record(redaction="verbatim"))
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


def test_strict_is_the_default_and_never_keeps_unparsable_bytes():
    decoded = _roundtrip(_record())
    summary = json.loads(decoded["original_value"])
    assert summary["redacted"] == "unparsable"
    assert summary["length"] == len(ORIGINAL_VALUE)
    assert summary["sha256"] == hashlib.sha256(ORIGINAL_VALUE).hexdigest()
    assert b"\xff\xfe" not in decoded["original_value"]
    # what carries no personal data is unchanged
    assert decoded["original_key"] == b"acme"
    assert decoded["original_headers"] == {"content-type": b"avro/binary", "traceparent": b""}
    assert (decoded["error_field"], decoded["error_rule"], decoded["error_message"]) == (
        "input_tokens", "non_negative", "must be >= 0, got -5")


def test_the_fault_run_case_keeps_no_email_no_phone_and_no_prompt_anywhere():
    value = json.dumps({"event_id": "e1", "status": "bob@example.com",
                        "metadata": {"prompt": "tell me about my account", "callback": "+1 415 555 0100"}}).encode()
    record = _record(
        value=value, key=b"bob@example.com", field="status", rule="enum",
        message="'bob@example.com' is not one of ok, error, timeout",
        headers=[("x-user", b"bob@example.com"), ("x-prompt", b"tell me about my account"),
                 ("raw", b"\xffbob@example.com")],
    )
    decoded = _roundtrip(record)
    stored = codec_for("dead_letter").encode(record)
    for leaked in (b"bob@example.com", b"tell me", b"415 555"):
        assert leaked not in stored
    assert json.loads(decoded["original_value"]) == {"event_id": "e1", "status": EMAIL_MASK,
                                                     "metadata": {"callback": PHONE_MASK}}
    assert decoded["original_key"] == EMAIL_MASK.encode()
    assert decoded["error_message"] == f"'{EMAIL_MASK}' is not one of ok, error, timeout"
    assert decoded["original_headers"] == {"x-user": EMAIL_MASK.encode(), "raw": f"\ufffd{EMAIL_MASK}".encode()}


def test_an_email_in_the_error_field_is_masked():
    assert _record(field="labels[bob@example.com]")["error_field"] == f"labels[{EMAIL_MASK}]"


def test_a_long_error_message_is_capped():
    record = _record(message="x" * 5000)
    assert record["error_message"] == "x" * TEXT_MAX_CHARS + TRUNCATED_MARK
    assert _record(message="x" * 5000, redaction="verbatim")["error_message"] == "x" * 5000


def test_avro_values_stay_avro_with_their_strings_masked(make_event):
    codec = codec_for("llm_usage_event")
    value = codec.encode(make_event(customer="jane@example.com", input_tokens=-5))
    decoded = _roundtrip(_record(value=value))
    assert codec.decode(decoded["original_value"])["customer"] == EMAIL_MASK
    assert codec.decode(decoded["original_value"])["input_tokens"] == -5


def test_tombstones_and_field_less_errors_encode():
    for redaction in ("strict", "verbatim"):
        decoded = _roundtrip(_record(key=None, value=None, headers=None, field=None, rule="non_empty",
                                     redaction=redaction))
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


def test_an_unknown_redaction_mode_is_refused():
    with pytest.raises(ValueError, match="strict, verbatim"):
        _record(redaction="none")


def test_the_setting_defaults_to_strict():
    assert Settings().pii.dead_letter_redaction == "strict"


def test_a_value_over_the_cap_is_kept_as_length_hash_and_prefix_in_either_mode():
    import hashlib
    import json as json_module

    from prismops.finops.dead_letters import VALUE_MAX_BYTES, dead_letter_record

    value = b'{"service": "' + b"s" * 900_000 + b'", "customer": "bob@example.com"}'
    for mode in ("strict", "verbatim"):
        record = dead_letter_record(
            stage="worker.price_llm_usage", topic="usage.llm.v1", partition=0, offset=1, key=b"k", value=value,
            headers=[], field="service", rule="max_length", message="too long", redaction=mode,
        )
        stored = record["original_value"]
        assert len(stored) < 1000 < VALUE_MAX_BYTES
        summary = json_module.loads(stored)
        assert summary["redacted"] == "oversized" and summary["prefix"].replace(" ", "").startswith('{"service":')
        if mode == "verbatim":
            assert summary["length"] == len(value) and summary["sha256"] == hashlib.sha256(value).hexdigest()
        assert b"bob@example.com" not in stored
