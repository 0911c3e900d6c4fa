"""`prismops bench pipeline`: the whole path on the local stack, measured in one run against a raw Kafka floor.

One run, in this order, on a scratch topic namespace and ClickHouse database (both removed at the end):

1. **Pass-through floor** — before any PrismOps component runs: max(N, PASSTHROUGH_MIN_RECORDS) usage-sized
   records are pre-filled into a scratch topic, then a plain confluent-kafka loop consumes them and produces
   each to a second scratch topic, timed from the first record consumed to the end of the flush. Same producer
   settings as the SDK.
2. **Burst** — after one warm-up event has reached ClickHouse (worker, sink and gateway are up and assigned):
   N events, simulated beforehand, through `UsageProducer.record_llm_call` + flush (SDK rate); a sampler reads the
   worker's count of cost lines out (`worker_lines_out`) and the rows in ClickHouse every 0.25 s (worker and sink rates);
   end to end is first produce → the last row queryable (`wait_for_rows`, FINAL).
3. **Steady** — events paced at `rate` for `steady_seconds`. Every `PROBE_INTERVAL_S` one event of the
   `PROBE_TENANT` tenant carries a request id of its own; ClickHouse is polled every 50 ms until each is a row
   (freshness = queryable − produced). K tenants have a tiny daily USD budget (a budgets YAML in the run's log
   folder; the seeds' defaults are off); one line of each, spread over the run, crosses it, and the gateway's
   Decide is polled for that tenant until it refuses (reaction = refusal seen − crossing produced). Every
   successful Decide of the run gives a `live_table_age_ms`.
4. The worker's peak RSS (VmHWM of its process) before it is stopped.
5. **CPU per event** of the burst, per process: the bench process while it produced (the SDK: the burst's events
   are simulated before the clock starts) and the worker, sink, gateway, Kafka broker and ClickHouse server from the
   first produce to the last row. PrismOps' own processes (SDK, worker, sink, gateway) run flat out through a burst,
   so their CPU per event is what each further event costs; times a rate it is the CPU cores that rate needs of
   them alone: at P1's 50,000 ev/s, again with the worker at P1's own budget (1 s / 50,000 = 20 µs an event), and
   at the steady rate, beside the cores this machine has. The broker's and ClickHouse's CPU is printed but left out
   of the cores: much of it is paid per request and per second (consumers' fetches, the bench's own row counts),
   not per event, so it would not grow in step with the rate. The cores are therefore a floor.

The figures come back as one flat dict whose keys are `RESULT_KEYS` (table and JSON alike). This module may
not import the CLI (layers), so the CLI hands in the demo's pieces: `demo_settings` and `wait_for_rows`.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from prismops.gateway_grpc.client import RouterClient, wait_for_router
from prismops.infra.components import Components
from prismops.infra.processes import cpu_seconds
from prismops.infra.stack import LocalStack
from prismops.settings import Settings
from prismops.sinks.clickhouse import clickhouse_client, table_ref
from prismops.sinks.migrations import apply_migrations
from prismops.streams.codecs import codec_for
from prismops.streams.producer import AVRO_SINGLE_OBJECT, CONTENT_TYPE_HEADER, UsageProducer, safe_producer_config
from prismops.streams.simulation import TrafficGenerator, simulate
from prismops.streams.topics import LLM_USAGE, TopicPlan, ensure_topic_plans, ensure_topics
from prismops.testing import free_port
from prismops.testing.bench_scratch import bench_stack, remove_scratch

Progress = Callable[[str], None]
WaitForRows = Callable[[Settings, int, Components, float], float]

PROBE_TENANT = "bench-probe"
BUDGET_TENANT_PREFIX = "bench-budget-"
WARMUP_TENANT = "bench-warmup"
BUDGET_LIMIT_USD = "0.001"
PROBE_INTERVAL_S = 0.2
PROBE_POLL_S = 0.05
ROUTER_POLL_S = 0.02
AGE_SAMPLE_S = 0.1
SAMPLE_S = 0.25
PASSTHROUGH_MIN_RECORDS = 100_000  # fewer records move in a few tens of milliseconds: too short to time
HELD_SHARE = 0.95  # the steady rate counts as held when at least this share of it was achieved
P1_EVENTS_PER_S = 50_000  # issue 13's P1: events/s through one worker end to end
P1_WORKER_US_PER_EVENT = 1e6 / P1_EVENTS_PER_S  # one worker process is one core: its whole budget per event
PRISMOPS_PROCESSES = ("sdk", "worker", "sink", "gateway")  # busy through a burst: CPU grows with the events
SERVER_PROCESSES = ("kafka", "clickhouse")  # much of their CPU is per request and per second
CPU_PROCESSES = PRISMOPS_PROCESSES + SERVER_PROCESSES
# the request whose Decide samples the live table age (the demo's first routing scenario)
AGE_REQUEST: dict[str, Any] = {"service": "search", "feature": "rerank", "latency_slo_ms": 1200,
                               "allowed": [("openai", "gpt-4o-mini"), ("google", "gemini-2.0-flash")]}

# Every key of the result, in order, with what it measures (the table shows these; JSON has exactly these).
RESULT_KEYS: dict[str, str] = {
    "events": "burst events: SDK → worker → sink → ClickHouse",
    "record_bytes": "mean usage record value size; the pass-through moves records of this size",
    "passthrough_msgs_per_s": "floor: plain confluent-kafka consume → produce → flush on scratch topics "
                              f"(max(events, {PASSTHROUGH_MIN_RECORDS}) records)",
    "sdk_produce_events_per_s": "UsageProducer.record_llm_call + flush (acks=all, idempotent) of events simulated "
                                "beforehand",
    "worker_events_per_s": "cost lines out of the worker, first → last line of the burst",
    "sink_rows_per_s": "rows appearing in ClickHouse cost_lines, first → last row of the burst",
    "end_to_end_seconds": "first produce → last row queryable in ClickHouse (FINAL count)",
    "end_to_end_events_per_s": "events / end_to_end_seconds",
    "worker_vs_passthrough": "worker_events_per_s / passthrough_msgs_per_s",
    "end_to_end_vs_passthrough": "end_to_end_events_per_s / passthrough_msgs_per_s",
    "steady_rate_target_per_s": "--rate",
    "steady_rate_achieved_per_s": "events produced / (seconds incl. flush) during the steady run",
    "steady_rate_held": f"achieved >= {HELD_SHARE:.0%} of the target",
    "steady_seconds": "--steady-seconds",
    "steady_backlog_events": "steady-run events not yet turned into cost lines by the worker when producing ended",
    "freshness_probes_sent": f"probe events, one per {PROBE_INTERVAL_S} s of the steady run",
    "freshness_probes_seen": "probes that became queryable rows before the drain deadline",
    "freshness_p50_ms": "row queryable − probe produced, p50 (empty: the rank fell on a probe never seen)",
    "freshness_p99_ms": "row queryable − probe produced, p99 (empty: the rank fell on a probe never seen)",
    "budget_tenants": f"tenants with a ${BUDGET_LIMIT_USD}/day budget, each crossed by one line",
    "budget_refusals_seen": "of them, refused by Decide (FAILED_PRECONDITION) before the drain deadline",
    "budget_reaction_p99_ms": "Decide refusal seen − crossing line produced, p99 (empty: a refusal never came)",
    "live_table_age_p99_ms": "live_table_age_ms of the Decide answers during the steady run, p99",
    "live_table_age_max_ms": "live_table_age_ms of the Decide answers during the steady run, max",
    "worker_peak_rss_mib": "VmHWM of the worker process",
    "worker_output_path": "worker.output_path: how the worker's outputs and changelogs reached Kafka",
    "cpu_us_per_event_sdk": "bench process CPU while it produced the burst (UsageProducer and librdkafka) / events",
    "cpu_us_per_event_worker": "worker process CPU, first produce → last row of the burst / events",
    "cpu_us_per_event_sink": "sink process CPU over the burst / events",
    "cpu_us_per_event_gateway": "gateway process CPU over the burst / events",
    "cpu_us_per_event_kafka": "Kafka broker process CPU over the burst / events",
    "cpu_us_per_event_clickhouse": "ClickHouse server process CPU over the burst / events",
    "cpu_us_per_event_prismops": "SDK + worker + sink + gateway: PrismOps' own CPU per event",
    "cpu_us_per_event_total": "all six above: what one event of the burst cost this machine",
    "cores_needed_at_p1": f"cpu_us_per_event_prismops × {P1_EVENTS_PER_S:,} ev/s: cores P1 needs of PrismOps' "
                          "processes alone (a floor: Kafka and ClickHouse left out)",
    "cores_needed_at_p1_worker_on_budget": f"the same with the worker at P1's {P1_WORKER_US_PER_EVENT:g} µs an "
                                           "event: what the SDK and sink alone leave no room for",
    "cores_needed_at_steady_rate": "cpu_us_per_event_prismops × the steady target rate (a floor, as above)",
    "machine_cores": "CPU cores this process may run on (os.sched_getaffinity)",
    "notes": "what limits or invalidates the figures above",
}


# --- pure parts ------------------------------------------------------------------------------------------------

def percentile(values: Sequence[float | None], fraction: float) -> float | None:
    """Nearest-rank percentile. A None is a measurement that never completed (a probe never seen) and ranks
    above every number: when the rank lands on one the percentile is unknown (None). Empty input: None."""
    if not values:
        return None
    known = sorted(v for v in values if v is not None)
    rank = max(0, math.ceil(fraction * len(values)) - 1)
    return known[rank] if rank < len(known) else None


def span_rate(samples: Sequence[tuple[float, int]], base: int, count: int) -> float | None:
    """Rate of a counter moving from `base` to `base + count`, from (time, value) samples in time order: over
    the samples between the first above `base` and the first at `base + count`. None if it never got there
    or both are the same sample."""
    first = next(((t, v) for t, v in samples if v > base), None)
    last = next(((t, v) for t, v in samples if v >= base + count), None)
    if first is None or last is None or last[0] <= first[0]:
        return None
    return (last[1] - first[1]) / (last[0] - first[0])


_COST_LINES_SAMPLE = re.compile(r"^prismops_cost_lines_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)", re.MULTILINE)


def cost_lines_in_metrics(page: str) -> int:
    """Cost lines the worker has produced, from its /metrics page: the sum of `prismops_cost_lines_total`, which
    the worker increments once per line (not per record). THE place where lines out of the worker are counted:
    if lines travel in batch records, this stays right as long as that counter counts lines."""
    return int(sum(float(value) for value in _COST_LINES_SAMPLE.findall(page)))


def worker_lines_out(settings: Settings, timeout_s: float = 2.0) -> int:
    """Cost lines produced so far by the worker serving `settings.worker.web_port`."""
    url = f"http://127.0.0.1:{settings.worker.web_port}/metrics?name[]=prismops_cost_lines_total"  # not the whole page
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return cost_lines_in_metrics(response.read().decode())


def steady_schedule(total: int, rate_per_s: float, budget_tenants: int,
                    probe_interval_s: float = PROBE_INTERVAL_S) -> tuple[list[int], dict[int, int]]:
    """Which of the steady run's `total` events cross a budget ({index: tenant number}, spread evenly between
    1/(K+1) and K/(K+1) of the run; at most one per event) and which are probes (every `probe_interval_s` at
    the rate; a probe that falls on a crossing moves to the next free event, or is left out at the end)."""
    crossings: dict[int, int] = {}
    for number in range(min(budget_tenants, total)):
        index = min(total - 1, total * (number + 1) // (budget_tenants + 1))
        while index in crossings:
            index = (index + 1) % total
        crossings[index] = number
    every = max(1, round(rate_per_s * probe_interval_s))
    probes: list[int] = []
    for index in range(every // 2, total, every):
        while index in crossings or (probes and index <= probes[-1]):
            index += 1
        if index < total:
            probes.append(index)
    return probes, crossings


def budget_tenant(number: int) -> str:
    return f"{BUDGET_TENANT_PREFIX}{number}"


def budgets_document(tenants: int, limit_usd: str = BUDGET_LIMIT_USD) -> dict[str, Any]:
    """The budgets YAML of the run: one tiny daily USD budget per bench tenant, nothing else."""
    return {"budgets": [
        {"id": f"bench-daily-usd-{number}", "scope": "tenant", "scope_id": budget_tenant(number),
         "period": "daily", "unit": "usd", "limit": limit_usd}
        for number in range(tenants)
    ]}


def crossing_event(generator: TrafficGenerator, tenant: str) -> dict[str, Any]:
    """One call that alone costs far more than BUDGET_LIMIT_USD (20k gpt-4o input tokens, about $0.06)."""
    event = generator.event()
    event.update(tenant=tenant, service="search", feature="rerank", provider="openai", model="gpt-4o",
                 input_tokens=20_000, output_tokens=1_000, cached_input_tokens=0, reasoning_tokens=0,
                 status="ok", error_code=None, prompt_chars=80_000, time_to_first_token_ms=100, latency_ms=400)
    return event


def probe_event(generator: TrafficGenerator, request_id: str) -> dict[str, Any]:
    event = generator.event()
    event.update(tenant=PROBE_TENANT, request_id=request_id)
    return event


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 4) if numerator is not None and denominator else None


def _round(value: float | None) -> int | None:
    return None if value is None else round(value)


def _round1(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# --- measurements ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PassThrough:
    records: int
    seconds: float
    record_bytes: float

    @property
    def msgs_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds each process of CPU_PROCESSES used for a number of events (None: it could not be read)."""

    events: int
    seconds: Mapping[str, float | None] = field(default_factory=dict)

    def us_per_event(self, process: str) -> float | None:
        used = self.seconds.get(process)
        return None if used is None or self.events <= 0 else 1e6 * used / self.events

    def total_us_per_event(self, processes: Sequence[str] = CPU_PROCESSES) -> float | None:
        """The processes' together; None unless every one was read (a partial sum would understate the need)."""
        each = [self.us_per_event(process) for process in processes]
        return None if any(us is None for us in each) else sum(each)  # type: ignore[arg-type]

    def cores_at(self, events_per_s: float, worker_us_per_event: float | None = None) -> float | None:
        """CPU cores `events_per_s` needs of PrismOps' own processes at these per-event costs, the worker's replaced
        by `worker_us_per_event` when given."""
        total, worker = self.total_us_per_event(PRISMOPS_PROCESSES), self.us_per_event("worker")
        if total is None or worker is None:
            return None
        if worker_us_per_event is not None:
            total += worker_us_per_event - worker
        return total * events_per_s / 1e6


class CpuClock:
    """Reads the CPU seconds of named processes at a start and an end (`/proc/<pid>/stat`): a process gone at
    either reading has none."""

    def __init__(self, pids: Mapping[str, int | None]):
        self.pids = dict(pids)
        self.started = self._read()

    def _read(self) -> dict[str, float | None]:
        return {name: None if pid is None else cpu_seconds(pid) for name, pid in self.pids.items()}

    def used(self) -> dict[str, float | None]:
        ended = self._read()
        return {name: None if self.started[name] is None or ended[name] is None
                else ended[name] - self.started[name]  # type: ignore[operator]
                for name in self.pids}


@dataclass(frozen=True)
class Burst:
    events: int
    produce_seconds: float
    end_to_end_seconds: float
    worker_events_per_s: float | None
    sink_rows_per_s: float | None
    cpu: CpuUse = field(default_factory=lambda: CpuUse(0))


@dataclass
class Steady:
    target_per_s: float
    seconds: float
    produced: int = 0
    produce_seconds: float = 0.0
    backlog: int | None = None
    freshness_ms: list[float | None] = field(default_factory=list)
    reactions_ms: list[float | None] = field(default_factory=list)
    table_ages_ms: list[float] = field(default_factory=list)
    drain_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def achieved_per_s(self) -> float:
        return self.produced / self.produce_seconds if self.produce_seconds > 0 else 0.0


def assemble_result(passthrough: PassThrough, burst: Burst, steady: Steady, worker_rss_kib: int | None, *,
                    output_path: str, notes: Sequence[str] = ()) -> dict[str, Any]:
    """The one result dict: every key of RESULT_KEYS, in order; the notes say what the numbers cannot."""
    notes = list(notes) + list(steady.notes)
    floor = passthrough.msgs_per_s
    end_to_end = burst.events / burst.end_to_end_seconds if burst.end_to_end_seconds > 0 else None
    achieved = steady.achieved_per_s
    held = achieved >= HELD_SHARE * steady.target_per_s
    if not held:
        notes.append(f"the steady rate was not held: {achieved:,.0f} of {steady.target_per_s:,.0f} ev/s produced "
                     "(one Python process, SDK + simulator, could not produce faster on this machine)")
    seen = sum(1 for v in steady.freshness_ms if v is not None)
    if seen < len(steady.freshness_ms):
        notes.append(f"{len(steady.freshness_ms) - seen} of {len(steady.freshness_ms)} probes were not queryable "
                     f"{steady.drain_s:.0f} s after the steady run ended: the pipeline did not keep up with "
                     f"{achieved:,.0f} ev/s")
    refused = sum(1 for v in steady.reactions_ms if v is not None)
    if refused < len(steady.reactions_ms):
        notes.append(f"{len(steady.reactions_ms) - refused} of {len(steady.reactions_ms)} budget crossings were "
                     f"not refused by the gateway {steady.drain_s:.0f} s after the steady run ended")
    if not steady.table_ages_ms:
        notes.append("no Decide answer carried a live table age (no live rows for the sampled models)")
    for name, value in (("worker", burst.worker_events_per_s), ("sink", burst.sink_rows_per_s)):
        if value is None:
            notes.append(f"the {name} rate could not be sampled (its counter never moved across two samples)")
    unread = [process for process in CPU_PROCESSES if burst.cpu.us_per_event(process) is None]
    if unread:
        notes.append(f"no CPU figure for {', '.join(unread)} (the process was not ours or was gone), so no sum "
                     "that needs it")
    cores = len(os.sched_getaffinity(0))
    p1_cores, p1_rest = burst.cpu.cores_at(P1_EVENTS_PER_S), burst.cpu.cores_at(P1_EVENTS_PER_S, P1_WORKER_US_PER_EVENT)
    if p1_rest is not None and p1_rest > cores:
        notes.append(f"P1 needs at least {p1_cores:.1f} CPU cores of PrismOps' processes at these costs, and "
                     f"{p1_rest:.1f} even with the worker on its budget; this machine has {cores}")
    result = {
        "events": burst.events,
        "record_bytes": round(passthrough.record_bytes),
        "passthrough_msgs_per_s": round(floor),
        "sdk_produce_events_per_s": round(burst.events / burst.produce_seconds) if burst.produce_seconds else None,
        "worker_events_per_s": _round(burst.worker_events_per_s),
        "sink_rows_per_s": _round(burst.sink_rows_per_s),
        "end_to_end_seconds": round(burst.end_to_end_seconds, 2),
        "end_to_end_events_per_s": _round(end_to_end),
        "worker_vs_passthrough": _ratio(burst.worker_events_per_s, floor),
        "end_to_end_vs_passthrough": _ratio(end_to_end, floor),
        "steady_rate_target_per_s": round(steady.target_per_s),
        "steady_rate_achieved_per_s": round(achieved),
        "steady_rate_held": held,
        "steady_seconds": steady.seconds,
        "steady_backlog_events": steady.backlog,
        "freshness_probes_sent": len(steady.freshness_ms),
        "freshness_probes_seen": seen,
        "freshness_p50_ms": _round(percentile(steady.freshness_ms, 0.50)),
        "freshness_p99_ms": _round(percentile(steady.freshness_ms, 0.99)),
        "budget_tenants": len(steady.reactions_ms),
        "budget_refusals_seen": refused,
        "budget_reaction_p99_ms": _round(percentile(steady.reactions_ms, 0.99)),
        "live_table_age_p99_ms": _round(percentile(steady.table_ages_ms, 0.99)),
        "live_table_age_max_ms": _round(max(steady.table_ages_ms, default=None)),
        "worker_peak_rss_mib": round(worker_rss_kib / 1024, 1) if worker_rss_kib is not None else None,
        "worker_output_path": output_path,
        **{f"cpu_us_per_event_{process}": _round1(burst.cpu.us_per_event(process)) for process in CPU_PROCESSES},
        "cpu_us_per_event_prismops": _round1(burst.cpu.total_us_per_event(PRISMOPS_PROCESSES)),
        "cpu_us_per_event_total": _round1(burst.cpu.total_us_per_event()),
        "cores_needed_at_p1": _round1(p1_cores),
        "cores_needed_at_p1_worker_on_budget": _round1(p1_rest),
        "cores_needed_at_steady_rate": _round1(burst.cpu.cores_at(steady.target_per_s)),
        "machine_cores": cores,
        "notes": notes,
    }
    assert list(result) == list(RESULT_KEYS)
    return result


def result_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The result as table rows: one per key, with what it measures."""
    rows = []
    for key, about in RESULT_KEYS.items():
        value = result.get(key)
        if key == "notes":
            value = " | ".join(value or []) or "-"
        rows.append({"key": key, "value": value, "what": about})
    return rows


# --- pass-through floor ----------------------------------------------------------------------------------------

def usage_records(count: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """(key, value) of `count` simulated usage events, encoded exactly as the SDK encodes them."""
    codec = codec_for(LLM_USAGE.schema)
    return [(e["tenant"].encode(), codec.encode(e)) for e in TrafficGenerator(seed=seed).events(count)]


def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes | None, headers: Any,
             on_delivery: Callable[[KafkaError | None, Any], None]) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)


def kafka_passthrough(settings: Settings, records: Sequence[tuple[bytes, bytes]], count: int,
                      timeout_s: float = 120.0) -> PassThrough:
    """Pre-fill `count` records (cycling `records`) into a scratch topic, then move them with a plain
    consume → produce loop to a second scratch topic and flush; times the move. The topics are named inside the
    settings' namespace (`<namespace>bench.passthrough.in|out`); deleting the namespace removes them."""
    source, target = settings.namespaced("bench.passthrough.in"), settings.namespaced("bench.passthrough.out")
    partitions = settings.kafka.default_partitions
    ensure_topic_plans(settings, [TopicPlan(source, partitions), TopicPlan(target, partitions)])
    headers = [(CONTENT_TYPE_HEADER, AVRO_SINGLE_OBJECT)]
    failures: list[str] = []
    delivered = [0]

    def on_delivery(error: KafkaError | None, _message: Any) -> None:
        if error is None:
            delivered[0] += 1
        else:
            failures.append(error.str())

    producer = Producer(safe_producer_config(settings))
    for index in range(count):
        key, value = records[index % len(records)]
        _produce(producer, source, key, value, headers, on_delivery)
    if producer.flush(60) or failures:
        raise RuntimeError(f"pre-filling the pass-through topic failed: {failures[:1] or 'records still queued'}")
    delivered[0] = 0
    consumer = Consumer(settings.kafka_client_config() | {
        "group.id": f"prismops-bench-passthrough-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
    })
    moved, size, started = 0, 0, None
    try:
        consumer.assign([TopicPartition(source, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = time.monotonic() + timeout_s
        while moved < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the pass-through moved {moved} of {count} records in {timeout_s:.0f} s")
            for message in consumer.consume(1000, 0.5):
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(message.error())
                if started is None:
                    started = time.perf_counter()
                _produce(producer, target, message.key(), message.value(), message.headers(), on_delivery)
                moved += 1
                size += len(message.value() or b"")
        remaining = producer.flush(60)
        seconds = time.perf_counter() - (started or time.perf_counter())
    finally:
        consumer.close()
    if remaining or failures:
        raise RuntimeError(f"the pass-through did not deliver every record: {failures[:1] or f'{remaining} queued'}")
    return PassThrough(delivered[0], seconds, size / moved if moved else 0.0)


# --- samplers that run beside the producer ---------------------------------------------------------------------

class _Loop(threading.Thread):
    """A daemon thread calling `tick` every `interval_s` until stopped; the first error ends it and is kept."""

    def __init__(self, name: str, interval_s: float):
        super().__init__(name=name, daemon=True)
        self.interval_s = interval_s
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def tick(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                began = time.monotonic()
                self.tick()
                self.stopping.wait(max(0.0, self.interval_s - (time.monotonic() - began)))
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        if self.error is not None:
            raise RuntimeError(f"{self.name} failed: {self.error}") from self.error


class CountSampler(_Loop):
    """(time, cost lines out of the worker) and (time, rows in cost_lines) every SAMPLE_S."""

    def __init__(self, settings: Settings):
        super().__init__("count sampler", SAMPLE_S)
        self.settings = settings
        self.client = clickhouse_client(settings)
        self.lines: list[tuple[float, int]] = []
        self.rows: list[tuple[float, int]] = []
        self.last_lines = 0
        self.lock = threading.Lock()

    def sample_now(self) -> tuple[int, int]:
        """Callable from any thread: the loop and the bench's last sample share one ClickHouse connection,
        which refuses two queries at once."""
        with self.lock:
            now = time.perf_counter()
            try:
                self.last_lines = worker_lines_out(self.settings)
            except OSError:
                pass  # a scrape that misses keeps the last count
            table = table_ref(self.settings.clickhouse.database, "cost_lines")
            ((rows,),) = self.client.execute(f"SELECT count() FROM {table}")
            self.lines.append((now, self.last_lines))
            self.rows.append((now, int(rows)))
            return self.last_lines, int(rows)

    def tick(self) -> None:
        self.sample_now()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.client.disconnect()


class ProbeWatcher(_Loop):
    """Polls ClickHouse every PROBE_POLL_S for the probes produced so far; records when each became a row."""

    def __init__(self, settings: Settings):
        super().__init__("probe watcher", PROBE_POLL_S)
        self.client = clickhouse_client(settings)
        self.table = table_ref(settings.clickhouse.database, "cost_lines")
        self.lock = threading.Lock()
        self.produced: dict[str, float] = {}
        self.seen: dict[str, float] = {}

    def produced_now(self, request_id: str) -> None:
        with self.lock:
            self.produced[request_id] = time.perf_counter()

    def pending(self) -> list[str]:
        with self.lock:
            return [r for r in self.produced if r not in self.seen]

    def tick(self) -> None:
        waiting = self.pending()
        if not waiting:
            return
        asked = time.perf_counter()  # a row found was queryable when the query began
        rows = self.client.execute(f"SELECT DISTINCT request_id FROM {self.table} WHERE tenant = %(tenant)s "
                                   "AND request_id IN %(ids)s", {"tenant": PROBE_TENANT, "ids": tuple(waiting)})
        with self.lock:
            for (request_id,) in rows:
                self.seen.setdefault(request_id, asked)

    def freshness_ms(self) -> list[float | None]:
        with self.lock:
            return [(self.seen[r] - t) * 1000 if r in self.seen else None for r, t in self.produced.items()]

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.client.disconnect()


class RouterWatcher(_Loop):
    """Asks Decide every ROUTER_POLL_S for each budget tenant whose crossing was produced until it is refused,
    and every AGE_SAMPLE_S for AGE_REQUEST; keeps the live_table_age_ms of every answer."""

    def __init__(self, target: str):
        super().__init__("router watcher", ROUTER_POLL_S)
        self.client = RouterClient(target)
        self.lock = threading.Lock()
        self.crossed: dict[str, float] = {}
        self.refused: dict[str, float] = {}
        self.ages_ms: list[float] = []
        self.errors: list[str] = []
        self.next_age = 0.0

    def crossed_now(self, tenant: str) -> None:
        with self.lock:
            self.crossed[tenant] = time.perf_counter()

    def decide(self, tenant: str) -> bool:
        """True when the gateway refused the tenant for its budget; other gRPC errors are kept, not raised."""
        try:
            answer = self.client.decide(tenant, AGE_REQUEST["service"], AGE_REQUEST["feature"], AGE_REQUEST["allowed"],
                                        latency_slo_ms=AGE_REQUEST["latency_slo_ms"], expected_input_tokens=1000,
                                        expected_output_tokens=300)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return True
            self.errors.append(f"{error.code().name}: {error.details()}")
            return False
        if answer.live_table_age_ms >= 0:
            self.ages_ms.append(float(answer.live_table_age_ms))
        return False

    def pending(self) -> list[str]:
        with self.lock:
            return [t for t in self.crossed if t not in self.refused]

    def tick(self) -> None:
        for tenant in self.pending():
            if self.decide(tenant):
                with self.lock:
                    self.refused[tenant] = time.perf_counter()
        if time.monotonic() >= self.next_age:
            self.next_age = time.monotonic() + AGE_SAMPLE_S
            self.decide("globex")

    def reactions_ms(self, tenants: Sequence[str]) -> list[float | None]:
        with self.lock:
            return [(self.refused[t] - self.crossed[t]) * 1000 if t in self.refused and t in self.crossed else None
                    for t in tenants]

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.client.close()


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM (peak resident set) of a live process, in KiB; None when /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# --- the run -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PipelineBenchOptions:
    events: int = 20_000
    rate_per_s: float = 10_000
    steady_seconds: float = 20.0
    budget_tenants: int = 3
    drain_timeout_s: float = 20.0
    timeout_s: float = 600.0


def bench_settings(base: Settings, scratch: Settings, budgets_file: Path) -> Settings:
    """The demo's scratch namespace plus: a database of its own, free ports, only the bench's budgets, and the
    live table publish interval of `base` (the demo shortens it; the table age is measured as configured)."""
    return scratch.with_overrides(
        clickhouse={"database": f"prismops_bench_{uuid.uuid4().hex[:8]}"},
        worker={"web_port": free_port(), "live_publish_interval_s": base.worker.live_publish_interval_s},
        sink={"metrics_port": free_port()},
        gateway={"port": free_port(), "metrics_port": free_port()},
        budgets={"definitions": str(budgets_file), "default_tenant_daily_usd": "0", "default_tenant_daily_tokens": 0},
    )


def _run_burst(settings: Settings, options: PipelineBenchOptions, components: Components, producer: UsageProducer,
               wait_for_rows: WaitForRows, progress: Progress, server_pids: Mapping[str, int | None]) -> Burst:
    events = list(TrafficGenerator(seed=int(time.time())).events(options.events))  # the simulator is not the SDK
    sampler = CountSampler(settings)
    base_lines, base_rows = sampler.sample_now()
    sampler.start()
    try:
        progress(f"burst: {options.events} simulated LLM calls through the SDK…")
        clock = CpuClock({name: components.processes[name].pid for name in ("worker", "sink", "gateway")}
                         | dict(server_pids))
        sdk_cpu_started = time.process_time()
        started = time.perf_counter()
        produced = simulate(producer, iter(events),
                            progress=lambda n: progress(f"  produced {n}/{options.events}") if n % 5000 == 0 else None)
        sdk_cpu = time.process_time() - sdk_cpu_started
        progress(f"produced {produced.events} in {produced.seconds:.1f} s; waiting for every row in ClickHouse…")
        finished = wait_for_rows(settings, base_rows + options.events, components, options.timeout_s)
        used = clock.used()
        sampler.sample_now()
    finally:
        sampler.stop()
    return Burst(
        events=options.events, produce_seconds=produced.seconds, end_to_end_seconds=finished - started,
        worker_events_per_s=span_rate(sampler.lines, base_lines, options.events),
        sink_rows_per_s=span_rate(sampler.rows, base_rows, options.events),
        cpu=CpuUse(options.events, {"sdk": sdk_cpu, **used}),
    )


def _lines_or_none(settings: Settings) -> int | None:
    try:
        return worker_lines_out(settings)
    except OSError:
        return None


def _run_steady(settings: Settings, options: PipelineBenchOptions, target: str, producer: UsageProducer,
                progress: Progress) -> Steady:
    steady = Steady(target_per_s=options.rate_per_s, seconds=options.steady_seconds)
    total = max(1, round(options.rate_per_s * options.steady_seconds))
    probes, crossings = steady_schedule(total, options.rate_per_s, options.budget_tenants)
    tenants = [budget_tenant(n) for n in range(options.budget_tenants)]
    run = uuid.uuid4().hex[:8]
    probe_ids = {index: f"bench-probe-{run}-{n}" for n, index in enumerate(probes)}
    probe_watch, router_watch = ProbeWatcher(settings), RouterWatcher(target)
    for tenant in tenants:  # the measurement means nothing if the tenant is refused before its crossing
        if router_watch.decide(tenant):
            steady.notes.append(f"{tenant} was refused before its crossing; its reaction is not a measurement")
    router_watch.ages_ms.clear()
    generator = TrafficGenerator(seed=int(time.time()) + 1)

    def events() -> Iterator[dict[str, Any]]:
        for index in range(total):
            if index in probe_ids:
                yield probe_event(generator, probe_ids[index])
            elif index in crossings:
                yield crossing_event(generator, tenants[crossings[index]])
            else:
                yield generator.event(index)

    lines_before = _lines_or_none(settings)

    def record(event: dict[str, Any]) -> None:
        if event["tenant"] == PROBE_TENANT:
            probe_watch.produced_now(event["request_id"])
        elif event["tenant"].startswith(BUDGET_TENANT_PREFIX):
            router_watch.crossed_now(event["tenant"])
        producer.record_llm_call(event)

    progress(f"steady: {options.rate_per_s:,.0f} ev/s for {options.steady_seconds:g} s ({total} events, "
             f"{len(probes)} freshness probes, {len(tenants)} budget crossings)…")
    probe_watch.start()
    router_watch.start()
    try:
        produced = simulate(producer, events(), rate_per_s=options.rate_per_s, record=record,
                            progress=lambda n: progress(f"  produced {n}/{total}") if n % 50_000 == 0 else None)
        steady.produced, steady.produce_seconds = produced.events, produced.seconds
        lines_after = _lines_or_none(settings)
        if lines_before is not None and lines_after is not None:
            steady.backlog = max(0, produced.events - (lines_after - lines_before))
        progress(f"produced {produced.events} in {produced.seconds:.1f} s ({steady.achieved_per_s:,.0f} ev/s; "
                 f"worker backlog {steady.backlog}); waiting up to {options.drain_timeout_s:g} s for probes and "
                 "refusals…")
        drain_started = time.monotonic()
        while time.monotonic() - drain_started < options.drain_timeout_s:
            if not probe_watch.pending() and not router_watch.pending():
                break
            time.sleep(0.1)
        steady.drain_s = time.monotonic() - drain_started
    finally:
        probe_watch.stop()
        router_watch.stop()
    steady.freshness_ms = probe_watch.freshness_ms()
    steady.reactions_ms = router_watch.reactions_ms(tenants)
    steady.table_ages_ms = list(router_watch.ages_ms)
    if router_watch.errors:
        steady.notes.append(f"{len(router_watch.errors)} Decide call(s) failed, e.g. {router_watch.errors[0]}")
    return steady


def run_pipeline_bench(base: Settings, options: PipelineBenchOptions, progress: Progress, *,
                       scratch_settings: Callable[[Settings], Settings], wait_for_rows: WaitForRows,
                       keep_stack: bool = False) -> dict[str, Any]:
    with bench_stack(base, progress, keep_stack=keep_stack):
        return _measure_pipeline(base, options, progress, scratch_settings=scratch_settings,
                                 wait_for_rows=wait_for_rows)


def _measure_pipeline(base: Settings, options: PipelineBenchOptions, progress: Progress, *,
                      scratch_settings: Callable[[Settings], Settings], wait_for_rows: WaitForRows) -> dict[str, Any]:
    """Scratch topics and database, the pass-through floor, worker + sink + gateway, warm-up, burst, steady run;
    everything scratch is removed at the end. `scratch_settings` is the demo's `demo_settings`, `wait_for_rows`
    the demo's."""
    logs = Path(base.stack.home).resolve() / "logs" / f"bench-pipeline-{dt.datetime.now():%Y%m%d-%H%M%S}"
    logs.mkdir(parents=True, exist_ok=True)
    budgets_file = logs / "budgets.yaml"
    budgets_file.write_text(yaml.safe_dump(budgets_document(options.budget_tenants), sort_keys=False))
    settings = bench_settings(base, scratch_settings(base), budgets_file)
    try:
        ensure_topics(settings)
        apply_migrations(settings)
        progress(f"pass-through floor: {max(options.events, PASSTHROUGH_MIN_RECORDS)} records through a plain "
                 "confluent-kafka loop…")
        passthrough = kafka_passthrough(settings, usage_records(2000), max(options.events, PASSTHROUGH_MIN_RECORDS),
                                        timeout_s=options.timeout_s)
        progress(f"  moved {passthrough.records} in {passthrough.seconds:.2f} s ({passthrough.msgs_per_s:,.0f} msg/s)")
        with Components(settings, logs) as components:
            progress(f"starting worker, sink and gateway (logs in {logs})…")
            components.start("worker", "sink", "gateway")
            try:
                target = wait_for_router(f"{settings.gateway.host}:{settings.gateway.port}", components.check_alive)
                progress("warm-up: one event until it is a row in ClickHouse…")
                # one producer for the whole run: its connections are up before anything is timed
                producer = UsageProducer(settings)
                producer.record_llm_call(TrafficGenerator(seed=3).event() | {"tenant": WARMUP_TENANT})
                producer.flush()
                wait_for_rows(settings, 1, components, 120)
                servers = {server.name: server.our_pid() for server in LocalStack(base).servers
                           if server.name in SERVER_PROCESSES}
                burst = _run_burst(settings, options, components, producer, wait_for_rows, progress, servers)
                steady = _run_steady(settings, options, target, producer, progress)
                components.check_alive()
                rss = peak_rss_kib(components.processes["worker"].pid)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise RuntimeError(f"{first} (component logs in {logs})") from exc
            progress("stopping worker, sink and gateway…")
        crashed = {name: lines for name in ("worker", "sink", "gateway") if (lines := components.crashes(name))}
        if crashed:
            details = "; ".join(f"{name}: {lines[0].strip()} ({len(lines)} crash lines)"
                                for name, lines in crashed.items())
            raise RuntimeError(f"the run finished, but components crashed on the way: {details}; logs in {logs}")
        return assemble_result(passthrough, burst, steady, rss, output_path=settings.worker.output_path)
    finally:
        remove_scratch(settings, progress)
