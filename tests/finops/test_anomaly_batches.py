"""A cost-line batch watched at once (`PartitionWatch.observe_batch`) gives what its lines watched one by one give:
the same windows, scores, causes, late events and series bookkeeping, whatever the order and lateness of the lines."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

from hypothesis import given, settings as hypothesis_settings, strategies as st

from prismops.finops.anomaly_events import PartitionWatch, new_watch, usage_sample
from prismops.settings import DetectorSettings

START = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.timezone.utc)
SETTINGS = DetectorSettings(window_s=60, grace_s=5, warmup_windows=10, baseline_windows=20)

lines = st.builds(
    lambda second, tenant, model, version, tokens, latency, error, cost: {
        "source": "llm", "event_time": START + dt.timedelta(seconds=second), "tenant": tenant, "service": "bot",
        "feature": f"f-{tenant}", "provider": "openai", "model": model, "model_version": version,
        "deployment_id": "eu-1", "input_tokens": tokens, "output_tokens": tokens // 4, "latency_ms": latency,
        "status": "error" if error else "ok", "prompt_chars": tokens * 4, "cache_hit": False, "fallback": False,
        "cost_usd": Decimal(cost).scaleb(-9),
    },
    second=st.integers(0, 900), tenant=st.sampled_from("abcde"), model=st.sampled_from(["m1", "m2"]),
    version=st.sampled_from(["v1", "v2"]), tokens=st.integers(1, 5000), latency=st.integers(1, 3000),
    error=st.booleans(), cost=st.integers(0, 10**7),
)


def mostly_in_order(items: list[dict]) -> list[dict]:
    """Event time that moves on as traffic does, with some lines late (out of order by up to two minutes)."""
    return sorted(items, key=lambda line: line["event_time"] - dt.timedelta(seconds=(line["input_tokens"] % 7) * 20))


def watched(line_batches: list[list[dict]], *, batched: bool, max_series: int | None, promote: int):
    watch = PartitionWatch(new_watch(SETTINGS), 0, max_series, promote)
    scored, late = [], []
    for offset, batch in enumerate(line_batches):
        samples = [usage_sample(line) for line in batch]
        steps = (watch.observe_batch(samples, offset, START) if batched
                 else [watch.observe(sample, offset, START) for sample in samples])
        for step in steps:
            scored += step.scored
            late += step.late
    scored += watch.idle_tick(START + dt.timedelta(hours=2), 1).scored
    return watch, scored, late


@hypothesis_settings(max_examples=60, deadline=None)
@given(st.lists(lines, min_size=1, max_size=300), st.lists(st.integers(1, 60), min_size=1, max_size=40),
       st.sampled_from([(None, 1), (2, 1), (None, 2), (3, 3)]))
def test_a_batch_watched_at_once_equals_its_lines_watched_one_by_one(items, cuts, limits):
    ordered = mostly_in_order(items)
    batches, at = [], 0
    for size in cuts * (len(ordered) // len(cuts) + 1):
        if at >= len(ordered):
            break
        batches.append(ordered[at:at + size])
        at += size
    max_series, promote = limits
    one, one_scored, one_late = watched(batches, batched=False, max_series=max_series, promote=promote)
    many, many_scored, many_late = watched(batches, batched=True, max_series=max_series, promote=promote)
    assert many_scored == one_scored
    assert many_late == one_late
    assert many.watch.windows.open == one.watch.windows.open
    assert many.watch.windows.watermark == one.watch.windows.watermark
    assert many.watch.windows.late_count == one.watch.windows.late_count
    assert many.watch.baselines == one.watch.baselines
    assert (many.dirty_keys, many.dirty_models) == (one.dirty_keys, one.dirty_models)
    assert (many.last_offset, many.max_event_time, many.folded) == (one.last_offset, one.max_event_time, one.folded)
    assert (many.series, many.candidates) == (one.series, one.candidates)


def test_a_batch_spanning_a_window_boundary_closes_the_window_before_its_later_lines_and_scores_once():
    """Twenty ordinary minutes, then one batch whose lines cross from a spiking minute into the next: the spiking
    window is scored while the batch is applied and its later lines open the next window, as one by one."""
    rng = random.Random(5)

    def minute(m: int, cost: str = "0.0002") -> list[dict]:
        return [_line(START + dt.timedelta(minutes=m, seconds=s), rng, cost) for s in range(0, 60, 3)]

    after = minute(21)
    batches = [minute(m) for m in range(20)] + [minute(20, "0.05") + after[:8], after[8:]]
    _, one_scored, _ = watched(batches, batched=False, max_series=None, promote=1)
    _, many_scored, _ = watched(batches, batched=True, max_series=None, promote=1)
    assert many_scored == one_scored
    assert [s.window_start for s in many_scored if s.result.is_anomaly and s.metric == "cost"
            and s.key.grouping == "tenant_model"] == [START + dt.timedelta(minutes=20)]


def _line(at: dt.datetime, rng: random.Random, cost: str) -> dict:
    tokens = rng.randint(900, 1100)
    return {"source": "llm", "event_time": at, "tenant": "acme", "service": "bot", "feature": "answer",
            "provider": "openai", "model": "m1", "model_version": "v1", "deployment_id": "eu-1",
            "input_tokens": tokens, "output_tokens": 200, "latency_ms": rng.randint(300, 500), "status": "ok",
            "prompt_chars": 4000, "cache_hit": False, "fallback": False, "cost_usd": Decimal(cost) * tokens / 1000}
