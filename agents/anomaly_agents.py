"""Faust agents for online anomaly detection: thin shells around `prismops.finops.anomaly_events` and `detectors/`.

watch_cost_anomalies:    cost.lines.v1 (LLM lines) → per-partition windows and detectors → cost.anomalies.v1
close_quiet_anomaly_windows: timer: a quiet partition's open windows close as event time moves on with the clock

State: one `PartitionWatch` per partition of cost.lines.v1 (windows, detector models, RCA baselines, last
applied offset), stored per key in the Faust table `anomaly_watch`: one record per series
(`<partition>|<series key>`) and one of the partition's offsets and clocks (`<partition>|meta`), each checked
against the broker's message limit before it is written (a busy series sheds by design, see
`finops.anomaly_events.fit_series_state`). The changelog is co-partitioned with cost.lines.v1, so a restarted
worker resumes its detectors instead of warming up again. Changed series are saved whenever a window closes
(detector state changed) and otherwise every `save_interval_s`, because pickling on every line would cost more
than the detection itself. Offsets are committed more
often than that, so after a stop or a crash the saved state may end before the first line Faust hands over
again: on restore, the lines in between are read back from cost.lines.v1 (`streams.replay`) and applied
before that first line, so no line of an open window is lost, deterministically. Lines are never counted twice
(offsets at or below the saved one are skipped).

Anomalies are published and awaited BEFORE the state that says "scored" is saved (as in gpu_agents): a crash
in between scores the window again on replay, with the same deterministic anomaly id, which the sink dedupes.

Series keys: `tenant_model` series are exact, since cost lines are keyed by tenant. `service_feature` series
are kept per partition, so with several partitions each holds a slice of a service's traffic — a weakness
written down in the docs; a repartition by service would make them exact.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import zlib
from collections.abc import Sequence

import faust
from prometheus_client import Counter as PromCounter

from prismops.finops.anomaly_events import PartitionWatch, anomaly_record, new_watch, reportable, usage_sample
from prismops.agents.context import WorkerContext, utcnow
from prismops.detectors.watch import WatchStep
from prismops.streams.codecs import CodecError, DecodedBatch, batch_codec_for, codec_for
from prismops.errors import FieldRuleError
from prismops.streams.replay import read_partition_range
from prismops.streams.topics import ANOMALIES, COST_LINES

log = logging.getLogger(__name__)

STAGE = "worker.watch_cost_anomalies"
STATE_TABLE = "anomaly_watch"
ANOMALIES_PUBLISHED = PromCounter("prismops_anomalies_total", "anomaly events published", ["metric", "severity"])
LATE_LINES = PromCounter("prismops_anomaly_late_lines_total", "cost lines whose detector window had closed")
STATE_SHED = PromCounter("prismops_anomaly_state_shed_total", "series states that shed detail to fit one record")
SERIES_FOLDED = PromCounter("prismops_anomaly_series_folded_total",
                            "LLM calls counted in an (other) series: their series was not watched on its own yet "
                            "(detectors.promote_after_windows) or beyond detectors.max_series_per_partition")


COMPRESSED = "z:"
"""Prefix of a state value stored zlib-compressed (a series' detectors shrink about 7x: 46.7 KB to 6.3 KB), so a
restarted worker reads back a seventh of the changelog. Values without it are older, uncompressed ones."""


def state_text(value: bytes) -> str:
    """A state record as the table stores it: compressed, base64 text (Faust tables serialize values as JSON)."""
    return COMPRESSED + base64.b64encode(zlib.compress(value, 1)).decode("ascii")


def state_bytes(text: str) -> bytes:
    """The state record of a table value, compressed or written before compression."""
    if text.startswith(COMPRESSED):
        return zlib.decompress(base64.b64decode(text[len(COMPRESSED):]))
    return base64.b64decode(text)


def state_value_limit(max_message_bytes: int) -> int:
    """Largest pickled state value whose base64 JSON text, with its key, fits in one record (uncompressed: the
    bound holds whatever the compression achieves)."""
    return (max_message_bytes - 4096) * 3 // 4


def register(ctx: WorkerContext) -> None:
    settings = ctx.settings.detectors
    if not settings.enabled:
        return
    lines_topic, anomalies_topic = ctx.topic(COST_LINES), ctx.topic(ANOMALIES)
    lines_topic_name = COST_LINES.name(ctx.settings)
    line_codec, anomaly_codec = batch_codec_for(COST_LINES.schema), codec_for(ANOMALIES.schema)
    # Faust tables serialize values as JSON: pickled state travels as base64 text, a third larger.
    table = ctx.table(STATE_TABLE, help="anomaly detector state per series and partition (zlib + base64 pickle)")
    max_state_bytes = state_value_limit(ctx.settings.kafka.max_message_bytes)
    watches: dict[int, PartitionWatch] = {}
    caught_up: set[int] = set()  # partitions whose unsaved gap has been read back since they were assigned
    state_lock = asyncio.Lock()

    def watch_for(partition: int) -> PartitionWatch:
        watch = watches.get(partition)
        if watch is None:
            prefix = f"{partition}|"
            records = {key[len(prefix):]: state_bytes(value) for key, value in table.data.items()
                       if isinstance(key, str) and key.startswith(prefix) and value}
            watch = PartitionWatch.restore(new_watch(settings), partition, records, settings.max_series_per_partition,
                                           settings.promote_after_windows)
            if watch.relearning:
                log.warning("anomaly watch %d: stored detector state of another format was dropped; its series "
                            "learn again from the next line on", partition)
                caught_up.add(partition)  # nothing to read back into: old lines would only come late
            watches[partition] = watch
        return watch

    def save(partition: int, watch: PartitionWatch, now: dt.datetime, *, in_stream: bool) -> None:
        for name, value in watch.changed_records(now, max_state_bytes):
            key, text = f"{partition}|{name}", state_text(value)
            if in_stream:
                table[key] = text
            else:  # outside stream iteration Faust cannot pick the changelog partition itself: it is this one
                table.data[key] = text
                table.send_changelog(partition, key, text)
        for what in watch.shed:
            STATE_SHED.inc()
            log.warning("anomaly state of partition %d shed to fit one record: %s", partition, what)

    @ctx.app.on_partitions_revoked.connect
    async def forget_revoked(app: faust.App, revoked: set, **kwargs: object) -> None:
        """A partition may come back with newer state from another worker: reload it from the table then."""
        for tp in revoked:
            if tp.topic == lines_topic_name:
                watches.pop(tp.partition, None)
                caught_up.discard(tp.partition)

    async def catch_up(partition: int, watch: PartitionWatch, first_offset: int) -> None:
        """Apply the lines between the saved state and `first_offset`, the first line handed over since the
        partition was assigned: they were processed (and their offsets committed) but not saved. A worker stopped
        before its first save leaves no state at all; then every line before `first_offset` is read back."""
        start = watch.last_offset + 1  # 0 when nothing was saved yet: every line before the first one handed over
        if first_offset <= start:
            return
        records = await asyncio.get_running_loop().run_in_executor(
            None, read_partition_range, ctx.settings, lines_topic_name, partition, start, first_offset)
        applied = 0
        for offset, value in records:
            try:
                samples = samples_of(line_codec.decode(value))
            except (CodecError, FieldRuleError):
                continue  # dead-lettered when it was first seen
            if samples:
                await publish(watch.observe_batch(samples, offset, utcnow()))
                applied += len(samples)
        if applied:
            log.info("anomaly watch %d: applied %d unsaved lines (offsets %d..%d) read back from %s",
                     partition, applied, start, first_offset - 1, lines_topic_name)

    async def publish(steps: Sequence[WatchStep]) -> None:
        now, pending = utcnow(), []
        for step in steps:
            if step.late:
                LATE_LINES.inc(len(step.late))
            for scored in step.anomalies:
                if not reportable(scored, settings.min_severity):
                    continue
                record = anomaly_record(scored, now)
                key, value = record["series_key"].encode(), anomaly_codec.encode(record)
                ctx.check_size(anomalies_topic, key, value)
                pending.append(await anomalies_topic.send(key=key, value=value, force=True))
                ANOMALIES_PUBLISHED.labels(record["metric"], record["severity"]).inc()
                log.warning("anomaly %s: %s", record["anomaly_id"], record["message"])
        for delivery in pending:
            await delivery

    @ctx.app.agent(lines_topic)
    async def watch_cost_anomalies(stream: faust.StreamT) -> None:
        async for event in stream.events():
            async with ctx.guard(event, STAGE):
                await watch_one(event)

    def samples_of(decoded: DecodedBatch) -> list:
        """The LLM usage samples of a cost-line record (a single line or a batch; other sources give none)."""
        return [sample for item in decoded.items
                if item.value is not None and (sample := usage_sample(item.value)) is not None]

    async def watch_one(event: faust.types.EventT) -> None:
        message = event.message
        samples = samples_of(ctx.decode_batch(event, COST_LINES.schema))
        if not samples:
            return
        async with state_lock:
            watch = watch_for(message.partition)
            if message.partition not in caught_up:
                await catch_up(message.partition, watch, message.offset)
                caught_up.add(message.partition)
            if watch.is_replay(message.offset):
                return
            now, folded = utcnow(), watch.folded
            steps = watch.observe_batch(samples, message.offset, now)
            if watch.folded > folded:
                SERIES_FOLDED.inc(watch.folded - folded)
            await publish(steps)
            if any(step.scored for step in steps) or watch.save_due(now, settings.save_interval_s):
                save(message.partition, watch, now, in_stream=True)

    def assigned_watches() -> list[tuple[int, PartitionWatch]]:
        app = ctx.app
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return []
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == lines_topic_name}
        # a restored watch closes no window before its unsaved lines are read back (they would come late)
        return [(partition, watches[partition]) for partition in sorted(assigned & set(watches) & caught_up)]

    @ctx.app.timer(interval=max(1.0, settings.idle_close_s / 4))
    async def close_quiet_anomaly_windows() -> None:
        async with ctx.timer_guard("worker.close_quiet_anomaly_windows"), state_lock:
            for partition, watch in assigned_watches():
                now = utcnow()
                step = watch.idle_tick(now, settings.idle_close_s)
                if step.scored:
                    await publish([step])
                    save(partition, watch, now, in_stream=False)

    @ctx.app.timer(interval=settings.save_interval_s)
    async def save_anomaly_state() -> None:
        """Lines since the last save would otherwise wait for the next line (or be lost on a stop) to be saved."""
        async with ctx.timer_guard("worker.save_anomaly_state"), state_lock:
            for partition, watch in assigned_watches():
                if watch.dirty:
                    save(partition, watch, utcnow(), in_stream=False)
