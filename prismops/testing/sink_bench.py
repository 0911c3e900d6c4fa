"""`prismops bench sink`: the ClickHouse sink's rows/s on an empty cost_lines table and again with millions of
rows of the same day already stored (issue 13's P6: the dedupe must not slow down as the table grows).

One run, one scratch namespace and database, the real `prismops sink` process:
1. `lines` cost lines (plus one warm-up batch) (simulated calls priced by the worker's own code, in batch records of `batch` lines, each
   with its own origin@position) → cost.lines.v1 → the sink; rows/s from the first to the last row stored.
2. `preload` rows of today inserted by ClickHouse itself (`INSERT … SELECT … FROM numbers(n)`), which also fills
   the batch ledger through its materialized view, as the sink's own inserts do.
3. The sink restarted and `lines` new lines sent; rows/s again. The ratio preloaded / empty is the figure; both
   phases run on the same machine minutes apart. Each phase first sends one batch and waits for it: the sink's
   start-up and its first batch after a start (checked line id by line id, which reads the day's ids) are
   reported apart, as `*_first_batch_seconds`.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from prismops.finops.llm_usage import LlmPricingContext, PricedUsage, price_usage_record
from prismops.infra.components import Components
from prismops.settings import Settings
from prismops.sinks.clickhouse import clickhouse_client
from prismops.sinks.migrations import apply_migrations
from prismops.streams.codecs import batch_codec_for
from prismops.streams.simulation import TrafficGenerator
from prismops.streams.topics import COST_LINES, ensure_topics
from prismops.testing import free_port
from prismops.testing.bench_scratch import bench_stack, remove_scratch

Progress = Callable[[str], None]


@dataclass
class SinkBenchOptions:
    preload: int = 10_000_000
    lines: int = 100_000
    batch: int = 500
    timeout_s: float = 900.0


@dataclass
class SinkPhase:
    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def cost_line_records(lines: int, batch: int, seed: int) -> list[bytes]:
    """Cost-line batch records of `lines` simulated calls, priced now by the worker's pricing code."""
    usage = batch_codec_for("llm_usage_event")
    codec = batch_codec_for(COST_LINES.schema)
    pricing, now = LlmPricingContext.from_settings(Settings()), dt.datetime.now(dt.timezone.utc)
    generator = TrafficGenerator(seed=seed)
    origin = f"bench-sink-{uuid.uuid4().hex[:8]}/0"
    records: list[bytes] = []
    made = 0
    while made < lines:
        events = [generator.event() | {"event_time": now} for _ in range(min(batch, lines - made))]
        priced = price_usage_record(usage.frame([usage.items.encode_body(e) for e in events]), pricing, now)
        group = [outcome.cost_line for outcome in priced.outcomes if isinstance(outcome, PricedUsage)]
        records.append(codec.encode(group, origin=origin, position=len(records)))
        made += len(events)
    return records


def lines_in(records: Sequence[bytes]) -> int:
    codec = batch_codec_for(COST_LINES.schema)
    return sum(len(codec.decode(record).items) for record in records)


def produce(settings: Settings, records: Sequence[bytes]) -> None:
    """Every record to cost.lines.v1 (spread over its partitions), delivered."""
    producer = Producer(settings.kafka_client_config() | {"linger.ms": 20, "compression.type": "lz4"})
    topic = COST_LINES.name(settings)
    for record in records:
        while True:
            try:
                producer.produce(topic, value=record)
                break
            except BufferError:
                producer.poll(0.5)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("the bench's cost-line records were not all delivered within 60 s")


def stored_rows(settings: Settings) -> int:
    client = clickhouse_client(settings)
    try:
        ((count,),) = client.execute("SELECT count() FROM cost_lines")
        return int(count)
    finally:
        client.disconnect()


def wait_rows(settings: Settings, components: Components, target: int, timeout_s: float) -> float:
    """Poll until `target` rows are stored; when that was seen (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        components.check_alive()
        if stored_rows(settings) >= target:
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"{stored_rows(settings)} of {target} rows stored within {timeout_s:.0f}s")


def sink_phase(settings: Settings, components: Components, warmup: bytes, records: Sequence[bytes],
               timeout_s: float) -> tuple[float, SinkPhase]:
    """Start the sink, send one batch and wait for it (start-up and the first batch, which a starting sink checks
    line id by line id), then time `records` from the first send to the last row stored. The lines are counted
    before the clock starts."""
    sent = lines_in(records)
    started = time.monotonic()
    components.start("sink")
    stored = stored_rows(settings) + lines_in([warmup])
    produce(settings, [warmup])
    warm = wait_rows(settings, components, stored, timeout_s) - started
    began = time.monotonic()
    produce(settings, records)
    done = wait_rows(settings, components, stored + sent, timeout_s)
    components.terminate("sink")
    return warm, SinkPhase(sent, done - began)


def preload_today(settings: Settings, rows: int) -> float:
    """`rows` cost lines of today, inserted by ClickHouse from numbers(); seconds it took. Nothing for 0 rows:
    ClickHouse 18.16 does not finish an INSERT … SELECT … FROM numbers(0) (it ran for 17 minutes at full CPU)."""
    if rows <= 0:
        return 0.0
    client = clickhouse_client(settings)
    started = time.monotonic()
    try:
        client.execute(
            "INSERT INTO cost_lines (line_id, batch_id, source, source_event_id, event_time, event_date, tenant,"
            " team, service, feature, provider, model, input_tokens, output_tokens, cost_usd, priced, status,"
            " ingested_at)"
            " SELECT concat('preload-', toString(number)), concat('preload-', toString(number)), 'llm',"
            " concat('preload-event-', toString(number)), now(), today(), concat('tenant-', toString(number % 500)),"
            " 'team', 'svc', 'feature', 'openai', 'gpt-4o-mini', 1000, 200, toDecimal64(0.000123, 12), 1, 'ok', now()"
            f" FROM numbers({int(rows)})",
            settings={"max_insert_block_size": 1_048_576},
        )
        return time.monotonic() - started
    finally:
        client.disconnect()


def run_sink_bench(base: Settings, options: SinkBenchOptions, progress: Progress, *,
                   scratch_settings: Callable[[Settings], Settings]) -> dict[str, Any]:
    with bench_stack(base, progress):
        return _measure_sink(base, options, progress, scratch_settings=scratch_settings)


def _measure_sink(base: Settings, options: SinkBenchOptions, progress: Progress, *,
                  scratch_settings: Callable[[Settings], Settings]) -> dict[str, Any]:
    logs = Path(base.stack.home).resolve() / "logs" / f"bench-sink-{dt.datetime.now():%Y%m%d-%H%M%S}"
    settings = scratch_settings(base).with_overrides(
        clickhouse={"database": f"prismops_bench_sink_{uuid.uuid4().hex[:8]}"}, sink={"metrics_port": free_port()})
    try:
        ensure_topics(settings, (COST_LINES,))
        apply_migrations(settings)
        progress(f"pricing {2 * options.lines:,} simulated calls into batch records of {options.batch}…")
        first_records = cost_line_records(options.lines, options.batch, seed=1)
        second_records = cost_line_records(options.lines, options.batch, seed=2)
        with Components(settings, logs) as components:
            progress(f"empty table: {options.lines:,} lines through the sink…")
            empty_warm, empty = sink_phase(settings, components, first_records[0], first_records[1:], options.timeout_s)
            progress(f"  {empty.rows_per_s:,.0f} rows/s; preloading {options.preload:,} rows of today…")
            preload_s = preload_today(settings, options.preload)
            progress(f"  preloaded in {preload_s:.1f} s; the sink again, {options.lines:,} new lines…")
            full_warm, preloaded = sink_phase(settings, components, second_records[0], second_records[1:],
                                              options.timeout_s)
        return {
            "timed_rows_per_phase": empty.rows, "batch_lines": options.batch, "preloaded_rows": options.preload,
            "preload_seconds": round(preload_s, 1),
            "empty_rows_per_s": round(empty.rows_per_s), "preloaded_rows_per_s": round(preloaded.rows_per_s),
            "preloaded_vs_empty": round(preloaded.rows_per_s / empty.rows_per_s, 3) if empty.rows_per_s else None,
            "empty_first_batch_seconds": round(empty_warm, 2), "preloaded_first_batch_seconds": round(full_warm, 2),
            "logs": str(logs),
        }
    finally:
        remove_scratch(settings, progress)
