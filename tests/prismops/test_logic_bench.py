"""`prismops bench logic` runs the worker's real batch path: every stage sees every event."""

import datetime as dt

from prismops.streams.codecs import batch_codec_for
from prismops.testing.logic_bench import USAGE_BATCH_EVENTS, LogicBenchResult, bench_usage_batches, run_logic_bench

STAGES = [
    "decode usage + validate + price + tag", "encode cost-line batches", "sum and encode model call summaries",
    "read cost-line batches (own: not decoded)", "budget ledger", "anomaly watch", "decode model call summaries", "live model table",
]


def test_the_usage_batches_hold_every_event_in_sdk_sized_batches_ending_now():
    now = dt.datetime(2026, 12, 6, 12, tzinfo=dt.timezone.utc)
    batches = bench_usage_batches(1200, now)
    codec = batch_codec_for("llm_usage_event")
    items = [item.value for batch in batches for item in codec.decode(batch).items]
    assert [len(codec.decode(b).items) for b in batches] == [USAGE_BATCH_EVENTS, USAGE_BATCH_EVENTS, 200]
    assert len({item["event_id"] for item in items}) == 1200
    assert items[-1]["event_time"] < now and items[0]["event_time"] < items[-1]["event_time"]


def test_every_stage_runs_and_the_progress_reaches_every_event():
    seen: list[int] = []
    result = run_logic_bench(1000, on_progress=seen.append)
    assert list(result.stages) == STAGES
    assert all(seconds > 0 for seconds in result.stages.values())
    assert result.decoding_floor_s > 0
    assert seen[-1] == 1000


def test_rows_put_each_stage_then_the_floor_then_the_total_with_shares_that_add_up():
    result = LogicBenchResult(events=1000, stages={"a": 0.3, "b": 0.1}, decoding_floor_s=0.2)
    rows = result.rows()
    assert [row["step"] for row in rows] == ["a", "b", "decoding floor (fastavro reads alone)", "worker logic in total"]
    assert rows[0] == {"step": "a", "us_per_event": 300.0, "events_per_s": 3333, "share": 0.75}
    assert rows[-1]["events_per_s"] == 2500 and rows[-1]["vs_decoding_floor"] == 2.0
    assert sum(row["share"] for row in rows[:2]) == 1.0
