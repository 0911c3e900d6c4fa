"""streams/codecs.BatchCodec: single records and batches on one topic, each item its own case."""

from __future__ import annotations

import json

import pytest

from prismops.streams.codecs import CodecError, batch_codec_for, codec_for
from prismops.streams.simulation import TrafficGenerator

USAGE = batch_codec_for("llm_usage_event")


def _events(count: int = 3) -> list[dict]:
    return list(TrafficGenerator(seed=5).events(count))


def test_an_sdk_batch_decodes_to_its_events_in_order():
    events = _events()
    decoded = USAGE.decode(USAGE.frame([USAGE.items.encode_body(e) for e in events]))
    assert [item.value["event_id"] for item in decoded.items] == [e["event_id"] for e in events]
    assert all(item.error is None and item.original is None for item in decoded.items)  # no bytes of their own


def test_frame_and_encode_write_the_same_batch():
    records = [codec_for("llm_usage_event").decode(codec_for("llm_usage_event").encode(e)) for e in _events()]
    assert USAGE.frame([USAGE.items.encode_body(r) for r in records]) == USAGE.encode(records)


def test_an_empty_batch_is_a_record_of_no_items():
    assert USAGE.decode(USAGE.frame([])).items == []


def test_a_single_avro_record_is_one_item_with_its_own_bytes():
    value = codec_for("llm_usage_event").encode(_events(1)[0])
    [item] = USAGE.decode(value).items
    assert item.original == value and item.value["event_id"]


def test_a_json_array_refuses_only_its_bad_item():
    good = json.loads(codec_for("llm_usage_event").encode_json(_events(1)[0]))
    bad = {k: v for k, v in good.items() if k != "model"}
    items = USAGE.decode(json.dumps([good, bad, 7]).encode()).items
    assert items[0].value["event_id"] == good["event_id"]
    assert (items[1].error.field, items[1].error.rule) == ("model", "required")
    assert json.loads(items[1].original) == bad
    assert (items[2].error.field, items[2].error.rule) == ("[2]", "json_decode")


def test_a_json_object_of_the_batch_schema_is_a_batch():
    events = [json.loads(codec_for("llm_usage_event").encode_json(e)) for e in _events(2)]
    items = USAGE.decode(json.dumps({"events": events}).encode()).items
    assert [i.value["event_id"] for i in items] == [e["event_id"] for e in events]


def test_a_cost_line_batch_carries_its_origin_and_position():
    lines = batch_codec_for("cost_line")
    decoded = lines.decode(lines.encode([], origin="usage.llm.v1/3", position=2**40 + 5))
    assert (decoded.origin, decoded.position, decoded.items) == ("usage.llm.v1/3", 2**40 + 5, [])


def test_a_batch_header_is_required():
    with pytest.raises(CodecError) as info:
        batch_codec_for("cost_line").encode([], origin="x")
    assert (info.value.field, info.value.rule) == ("position", "required")


@pytest.mark.parametrize("value,rule", [(b"", "non_empty"), (b"\xc3\x01" + b"\x00" * 8, "unknown_schema"),
                                        (b"[1,", "json_decode"), (b"hello", "wire_format")])
def test_an_unreadable_record_raises_for_the_whole_record(value, rule):
    with pytest.raises(CodecError) as info:
        USAGE.decode(value)
    assert info.value.rule == rule


def test_a_corrupt_batch_body_is_refused_whole():
    value = USAGE.frame([USAGE.items.encode_body(e) for e in _events()])
    with pytest.raises(CodecError) as info:
        USAGE.decode(value[:-40])
    assert info.value.rule == "avro_decode"


def test_items_carrying_this_codecs_template_are_written_from_it_and_others_whole():
    """A TemplatedRecord of this batch codec writes its open fields alone (its fixed fields are not read, as a
    template's contract says); one carrying another codec's template, or none, is written whole."""
    from prismops.streams.codecs import TemplatedRecord

    codec, single = batch_codec_for("llm_usage_event"), codec_for("llm_usage_event")
    first, other = [single.decode(single.encode(event)) for event in _events(2)]
    second = {**other, "tenant": first["tenant"] + "-not-read"}
    template = codec.item_template(first, ("event_id", "input_tokens"))
    templated = TemplatedRecord(second, codec, template)
    written = codec.decode(codec.encode([templated, second])).items
    assert written[0].value == {**first, "event_id": second["event_id"], "input_tokens": second["input_tokens"]}
    assert written[0].value["tenant"] == first["tenant"]
    assert written[1].value == second
    foreign = TemplatedRecord(second, batch_codec_for("cost_line"), template)
    assert codec.encode_array([foreign]) == codec.encode_array([second])
