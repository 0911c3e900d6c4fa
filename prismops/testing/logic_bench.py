"""`prismops bench logic`: the worker's Python per event, in process, on one core, with no Kafka in between.

It runs the code the worker's agents run on batch records (`agents.llm_agents`, `agents.budget_agents`,
`agents.anomaly_agents`): SDK usage batches are priced, cut into cost-line batches and model call summaries per partition,
decoded again as the stateful agents decode them, applied to a budget ledger, watched for anomalies and counted in
the live model table. What it prints is each stage's microseconds per event and the whole path's events/s: the
ceiling of one worker process before any broker work (issue 13's P1 asks 50,000 events/s of one worker end to end).

The baseline measured in the same run is the decoding alone: fastavro reading the same batches the logic read
(usage, cost lines, call summaries), the part of the path no amount of Python tuning removes while the contracts are
Avro records of this shape. `vs_decoding_floor` is the logic's time over that floor.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fastavro

USAGE_BATCH_EVENTS = 500
PARTITIONS = 12
EVENT_SPACING = dt.timedelta(milliseconds=30)  # 50,000 events span 25 minutes: anomaly windows close and score


@dataclass
class StageClock:
    """Seconds spent per stage, in the order stages first ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, stage: str, step: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = step()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started
        return result


@dataclass(frozen=True)
class LogicBenchResult:
    events: int
    stages: dict[str, float]  # seconds per stage
    decoding_floor_s: float  # fastavro's reads of the same batches

    @property
    def total_s(self) -> float:
        return sum(self.stages.values())

    def rows(self) -> list[dict[str, Any]]:
        """One row per stage, then the floor, then the total (the figure P1 is about)."""
        def row(step: str, seconds: float) -> dict[str, Any]:
            return {"step": step, "us_per_event": round(1e6 * seconds / self.events, 1),
                    "events_per_s": round(self.events / seconds) if seconds > 0 else 0,
                    "share": round(seconds / self.total_s, 3) if self.total_s > 0 else 0.0}

        rows = [row(stage, seconds) for stage, seconds in self.stages.items()]
        rows.append({**row("decoding floor (fastavro reads alone)", self.decoding_floor_s), "share": None})
        rows.append({**row("worker logic in total", self.total_s), "share": 1.0,
                     "vs_decoding_floor": round(self.total_s / self.decoding_floor_s, 2)
                     if self.decoding_floor_s > 0 else None})
        return rows


def bench_usage_batches(events: int, now: dt.datetime) -> list[bytes]:
    """SDK-shaped `llm_usage_batch` records of USAGE_BATCH_EVENTS simulated calls, ending at `now`."""
    from prismops.streams.codecs import batch_codec_for
    from prismops.streams.simulation import TrafficGenerator

    start = now - EVENT_SPACING * events
    generated = list(TrafficGenerator(seed=1, start=start).events(events))
    for index, event in enumerate(generated):
        event["event_time"] = start + EVENT_SPACING * index
    codec = batch_codec_for("llm_usage_event")
    return [codec.encode(generated[i:i + USAGE_BATCH_EVENTS]) for i in range(0, events, USAGE_BATCH_EVENTS)]


def run_logic_bench(events: int, on_progress: Callable[[int], None] = lambda done: None) -> LogicBenchResult:
    from prismops.agents.llm_agents import call_summary_batches, cost_line_batches
    from prismops.finops.anomaly_events import PartitionWatch, new_watch, usage_sample
    from prismops.finops.budgets import BudgetLedger
    from prismops.finops.live_stats import LiveModelWindows
    from prismops.finops.llm_usage import LlmPricingContext, PricedUsage, price_usage_record
    from prismops.settings import Settings
    from prismops.streams.codecs import batch_codec_for
    from prismops.streams.garbage_collector import tuned_collector
    from prismops.streams.partitioning import KeyPartitioner
    from prismops.streams.produced import RecentlyProduced

    settings = Settings()
    now = dt.datetime.now(dt.timezone.utc)
    batches = bench_usage_batches(events, now)
    lines_codec, summaries_codec = batch_codec_for("cost_line"), batch_codec_for("model_call_summary")
    pricing = LlmPricingContext.from_settings(settings)
    partition_of = KeyPartitioner(PARTITIONS)
    max_bytes = settings.kafka.max_message_bytes
    ledger = BudgetLedger.from_settings(settings.budgets, {}, scopes=("tenant",))
    detectors = settings.detectors
    watches: dict[int, PartitionWatch] = {}
    live = LiveModelWindows(settings.worker.live_window_s, settings.worker.live_window_max_samples)
    clock = StageClock()
    encoded_lines: list[bytes] = []
    produced = RecentlyProduced(settings.worker.produced_kept_items)  # as the worker's WorkerContext keeps them
    encoded_summaries: list[bytes] = []

    def watch_for(partition: int) -> PartitionWatch:
        if partition not in watches:
            watches[partition] = PartitionWatch(new_watch(detectors), partition, detectors.max_series_per_partition,
                                                detectors.promote_after_windows)
        return watches[partition]

    def observe_samples(watch: PartitionWatch, lines: list[dict[str, Any]], offset: int) -> None:
        watch.observe_batch([sample for line in lines if (sample := usage_sample(line)) is not None], offset, now)

    def run_batches() -> None:
        for offset, record in enumerate(batches):
            priced = clock.run("decode usage + validate + price + tag", lambda: price_usage_record(record, pricing, now))
            accepted = [outcome for outcome in priced.outcomes if isinstance(outcome, PricedUsage)]
            lines = [p.cost_line for p in accepted]
            line_batches = clock.run("encode cost-line batches", lambda: cost_line_batches(
                lines_codec, lines, partition_of, "usage/0", offset, max_bytes, produced))
            summary_records = clock.run("sum and encode model call summaries", lambda: call_summary_batches(
                summaries_codec, [p.observation for p in accepted], partition_of, max_bytes))
            for partition, value in line_batches:
                encoded_lines.append(value)
                decoded = clock.run("read cost-line batches (own: not decoded)",
                                    lambda: produced.take(value) or lines_codec.decode(value))
                batch = [item.value for item in decoded.items if item.value is not None]
                clock.run("budget ledger", lambda: ledger.apply_batch(
                    batch, now, shard=partition, origin=decoded.origin, position=decoded.position or 0))
                clock.run("anomaly watch", lambda: observe_samples(watch_for(partition), batch, offset))
            for _partition, value in summary_records:
                encoded_summaries.append(value)
                decoded = clock.run("decode model call summaries", lambda: summaries_codec.decode(value))
                clock.run("live model table", lambda: [live.observe_summary(item.value, now) for item in decoded.items
                                                       if item.value is not None])
            on_progress(min(events, (offset + 1) * USAGE_BATCH_EVENTS))

    with tuned_collector(settings.worker.gc_gen0_threshold):  # as run_worker sets it, for the floor as well
        run_batches()
        floor = decoding_floor(batches, encoded_lines, encoded_summaries)
    return LogicBenchResult(events, clock.seconds, floor)


def decoding_floor(usage: list[bytes], lines: list[bytes], summaries: list[bytes]) -> float:
    """Seconds fastavro alone takes to read the usage batches, the cost-line batches and the model call
    summaries the logic read: the decoding every consumer of these records does, with nothing done to them."""
    from prismops.streams.codecs import batch_codec_for

    seconds = 0.0
    for item_schema, records in (("llm_usage_event", usage), ("cost_line", lines), ("model_call_summary", summaries)):
        codec = batch_codec_for(item_schema).batch
        parsed, header = codec.reader.parsed, len(codec.header())
        started = time.perf_counter()
        for value in records:
            fastavro.schemaless_reader(io.BytesIO(value[header:]), parsed, None)
        seconds += time.perf_counter() - started
    return seconds
