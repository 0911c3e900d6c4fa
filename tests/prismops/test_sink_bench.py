"""prismops/testing/sink_bench.py: the records the sink bench sends are real cost-line batches, each its own batch
identity, carrying exactly the lines asked for."""

from __future__ import annotations

from prismops.streams.codecs import batch_codec_for
from prismops.streams.topics import COST_LINES
from prismops.testing.sink_bench import SinkPhase, cost_line_records


def test_the_records_carry_the_lines_asked_for_in_batches_with_their_own_identity():
    records = cost_line_records(1200, 500, seed=4)
    decoded = [batch_codec_for(COST_LINES.schema).decode(record) for record in records]
    assert [len(d.items) for d in decoded] == [500, 500, 200]
    assert len({d.origin for d in decoded}) == 1 and [d.position for d in decoded] == [0, 1, 2]
    line_ids = [item.value["line_id"] for d in decoded for item in d.items]
    assert len(set(line_ids)) == 1200
    assert all(item.value["source"] == "llm" for d in decoded for item in d.items)


def test_a_second_call_sends_other_lines_under_another_origin():
    first, second = cost_line_records(600, 500, seed=1), cost_line_records(600, 500, seed=2)
    codec = batch_codec_for(COST_LINES.schema)
    ids = [{i.value["line_id"] for r in records for i in codec.decode(r).items} for records in (first, second)]
    assert not ids[0] & ids[1]
    assert codec.decode(first[0]).origin != codec.decode(second[0]).origin


def test_rows_per_second_of_a_phase():
    assert SinkPhase(10_000, 2.0).rows_per_s == 5000
    assert SinkPhase(10, 0.0).rows_per_s == 0.0
