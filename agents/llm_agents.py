"""Faust agents for LLM usage: thin shells around `prismops.finops.llm_usage` and `prismops.finops.live_stats`.

price_llm_usage:     usage.llm.v1 (single events or batches) → cost.lines.v1 + model call summaries | DLQ per event
track_model_health:  model call summaries → sliding windows per model
publish_live_table:  every interval, changed rows → routing.tables.v1 (compacted, keyed provider/model)

Batches all the way: one usage record (a batch from the SDK, or a single event) gives at most one cost-line
batch per partition of cost.lines.v1 (each line on the partition its tenant hashes to, as a single record keyed
by tenant would be) and one record of model call summaries (one per model) per partition of the summaries topic. Faust's per-record cost
is paid per batch, not per event. Each cost-line batch names its origin (usage topic/partition) and position
(the usage offset, times CHUNKS_PER_RECORD, plus the batch's number among that record's batches), so a replay after a crash produces the same
batches with the same identity, which the budget ledger and the sink recognize.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import faust
from opentelemetry import trace

from prismops.agents.context import OutputTooLarge, WorkerContext, utcnow
from prismops.agents.metrics import CONTENT_FIELDS_DROPPED, LlmCallMetrics, record_cost_lines
from prismops.finops.live_stats import LiveModelWindows, summarize_calls
from prismops.finops.llm_usage import LlmPricingContext, PricedUsage, Rejection, price_usage_record
from prismops.finops.privacy import CONTENT_FIELDS
from prismops.streams.codecs import BatchCodec, BatchItem, DecodedBatch, batch_codec_for, codec_for
from prismops.streams.metrics import EVENTS_IN, EVENTS_OUT
from prismops.streams.partitioning import KeyPartitioner
from prismops.streams.produced import RecentlyProduced
from prismops.streams.telemetry import context_from_headers, trace_headers
from prismops.streams.topics import COST_LINES, LLM_USAGE, MODEL_SUMMARIES, ROUTING_TABLES

_tracer = trace.get_tracer("prismops.agents.llm")
PRICE_STAGE = "worker.price_llm_usage"
CHUNKS_PER_RECORD = 1024
"""Positions per usage offset: the cost-line batches one usage record gives (one per partition, more when one
must be split to fit the broker's message limit) are numbered within it, so each has a position of its own."""
BATCH_HEADROOM_BYTES = 4096


def encode_chunks(encode: Callable[[list[Any]], bytes], items: list[Any], max_bytes: int) -> list[tuple[bytes, list[Any]]]:
    """`items` as few batch records as fit `max_bytes` each, split in halves until they do (deterministic, so a
    replay gives the same records), each with the items it holds; a single item that does not fit raises
    OutputTooLarge."""
    value = encode(items)
    if len(value) <= max_bytes:
        return [(value, items)]
    if len(items) == 1:
        raise OutputTooLarge(None, "output_max_bytes", f"one item encodes to {len(value)} bytes, over {max_bytes}")
    middle = len(items) // 2
    return encode_chunks(encode, items[:middle], max_bytes) + encode_chunks(encode, items[middle:], max_bytes)


def by_partition(items: Sequence[Mapping[str, Any]], partition_of: Callable[[Mapping[str, Any]], int]) -> dict[int, list]:
    """Items grouped by the partition `partition_of` gives each, in their order (sorted by partition)."""
    grouped: dict[int, list] = defaultdict(list)
    for item in items:
        grouped[partition_of(item)].append(item)
    return dict(sorted(grouped.items()))


def cost_line_batches(codec: BatchCodec, lines: list[dict[str, Any]], partition_of: Callable[[str], int], origin: str,
                      offset: int, max_bytes: int, produced: RecentlyProduced | None = None) -> list[tuple[int, bytes]]:
    """The cost-line batch records of one usage record: per partition of the lines' tenants, split to fit
    `max_bytes`, numbered across partitions so (origin, position) names one batch wherever it goes. Each record's
    lines are remembered in `produced`, for this process's own consumers of the record."""
    arrays = [(partition, array, group_lines)
              for partition, group in by_partition(lines, lambda line: partition_of(line["tenant"])).items()
              for array, group_lines in encode_chunks(codec.encode_array, group, max_bytes)]
    if len(arrays) > CHUNKS_PER_RECORD:
        raise OutputTooLarge(None, "output_max_records", f"{len(arrays)} cost-line batches from one record")
    records = []
    for index, (partition, array, group_lines) in enumerate(arrays):
        position = offset * CHUNKS_PER_RECORD + index
        value = codec.frame_array(array, origin=origin, position=position)
        if produced is not None:
            produced.remember(value, DecodedBatch([BatchItem(line) for line in group_lines], origin, position))
        records.append((partition, value))
    return records


def call_summary_batches(codec: BatchCodec, observations: list[dict[str, Any]], partition_of: Callable[[str], int],
                         max_bytes: int) -> list[tuple[int, bytes]]:
    """The model call summary records of one usage record: its observations summed per (provider, model)
    (`summarize_calls`), grouped by the partition of provider/model, split to fit `max_bytes`. The live table
    then reads one summary per model per usage record instead of one observation per call."""
    def model_partition(summary: Mapping[str, Any]) -> int:
        return partition_of(f"{summary['provider']}/{summary['model']}")

    return [(partition, codec.frame_array(array))
            for partition, group in by_partition(summarize_calls(observations), model_partition).items()
            for array, _ in encode_chunks(codec.encode_array, group, max_bytes)]


def register(ctx: WorkerContext) -> None:
    settings = ctx.settings
    pricing = LlmPricingContext.from_settings(settings)
    windows = LiveModelWindows(settings.worker.live_window_s, settings.worker.live_window_max_samples)
    usage_topic, cost_topic = ctx.topic(LLM_USAGE), ctx.topic(COST_LINES)
    summaries_topic, tables_topic = ctx.topic(MODEL_SUMMARIES), ctx.topic(ROUTING_TABLES)
    lines_codec, summaries_codec = batch_codec_for(COST_LINES.schema), batch_codec_for(MODEL_SUMMARIES.schema)
    stats_codec = codec_for(ROUTING_TABLES.schema)
    llm_metrics = LlmCallMetrics(settings.worker.metrics_top_tenants)
    usage_name, cost_name = LLM_USAGE.name(settings), COST_LINES.name(settings)
    line_partition = KeyPartitioner(COST_LINES.partitions or settings.kafka.default_partitions)
    model_partition = KeyPartitioner(MODEL_SUMMARIES.partitions or settings.kafka.default_partitions)
    max_bytes = settings.kafka.max_message_bytes - BATCH_HEADROOM_BYTES

    @ctx.app.agent(usage_topic)
    async def price_llm_usage(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, PRICE_STAGE):
                await price_record(event)

    async def price_record(event: faust.types.EventT) -> None:
        parent = context_from_headers(event.message.headers)
        with _tracer.start_as_current_span("price_llm_usage", context=parent, kind=trace.SpanKind.CONSUMER) as span:
            priced = price_usage_record(event.value, pricing, utcnow())
            EVENTS_IN.labels(usage_name).inc(len(priced.outcomes))
            span.set_attribute("messaging.batch.message_count", len(priced.outcomes))
            headers = trace_headers()
        accepted = [outcome for outcome in priced.outcomes if isinstance(outcome, PricedUsage)]
        message = event.message
        origin = f"{message.topic}/{message.partition}"
        lines = [p.cost_line for p in accepted]
        line_batches = cost_line_batches(lines_codec, lines, line_partition, origin, message.offset, max_bytes,
                                         ctx.produced)
        summary_records = call_summary_batches(
            summaries_codec, [p.observation for p in accepted], model_partition, max_bytes)
        for outcome in priced.outcomes:
            if isinstance(outcome, Rejection):
                await ctx.dead_letter(event, PRICE_STAGE, outcome.field, outcome.rule, outcome.message, value=outcome.value)
        record_cost_lines(lines)
        llm_metrics.record_batch(lines, utcnow())
        for name in priced.dropped_content_fields:
            # the path's last name when it is a known one: a caller's arbitrary key paths would be endless labels
            last = name.rsplit(".", 1)[-1].removesuffix("[]").lower()
            CONTENT_FIELDS_DROPPED.labels(last if last in CONTENT_FIELDS else "other").inc()
        for partition, value in line_batches:
            await ctx.send(event, cost_topic, key=None, value=value, headers=headers, partition=partition)
        EVENTS_OUT.labels(cost_name).inc(len(lines))
        for partition, chunk in summary_records:
            await ctx.send(event, summaries_topic, key=None, value=chunk, partition=partition)

    @ctx.app.agent(summaries_topic)
    async def track_model_health(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, "worker.track_model_health"):
                now = utcnow()
                for item in summaries_codec.decode(event.value).items:
                    if item.value is not None:
                        windows.observe_summary(item.value, now)

    @ctx.app.timer(interval=settings.worker.live_publish_interval_s)
    async def publish_live_table() -> None:
        async with ctx.timer_guard("worker.publish_live_table"):
            for row in windows.due_snapshots(utcnow()):
                key, value = f"{row['provider']}/{row['model']}".encode(), stats_codec.encode(row)
                ctx.check_size(tables_topic, key, value)
                await tables_topic.send(key=key, value=value)
