"""`prismops bench`: throughput figures, printed rather than asserted in tests."""

from __future__ import annotations

import datetime as dt
import time

import click

from prismops.output import FORMAT_OPTION, emit, fail, stderr_console
from prismops.settings import Settings


@click.group("bench")
def command() -> None:
    """Measure throughput (figures go in issue notes; tests assert behaviour, not timings)."""


@command.command("logic")
@click.option("--events", default=50_000, show_default=True, type=click.IntRange(min=1000))
@FORMAT_OPTION
def logic(events: int, fmt: str) -> None:
    """In-process rates of each step an event takes in the worker: encode, decode + price + tag, encode out."""
    from agents.llm_usage import LlmPricingContext, process_llm_usage
    from prismops.settings import Settings
    from streams.codecs import codec_for
    from streams.simulation import TrafficGenerator

    usage, lines, observations = codec_for("llm_usage_event"), codec_for("cost_line"), codec_for("model_observation")
    generated = list(TrafficGenerator(seed=1).events(events))
    pricing, now = LlmPricingContext.from_settings(Settings()), dt.datetime.now(dt.timezone.utc)

    def timed(step):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        result = step()
        return result, time.perf_counter() - started

    encoded, encode_s = timed(lambda: [usage.encode(e) for e in generated])
    priced, process_s = timed(lambda: [process_llm_usage(b, pricing, now) for b in encoded])
    _, out_s = timed(lambda: [(lines.encode(p.cost_line), observations.encode(p.observation)) for p in priced])
    rows = [
        {"step": "SDK encode (Avro single-object)", "events_per_s": round(events / encode_s)},
        {"step": "decode + validate + price + tag", "events_per_s": round(events / process_s)},
        {"step": "encode cost line + observation", "events_per_s": round(events / out_s)},
        {"step": "worker logic in total", "events_per_s": round(events / (process_s + out_s))},
    ]
    emit(rows, fmt, title=f"per-event logic, {events} simulated events, one core")


@command.command("pipeline")
@click.option("--events", default=20_000, show_default=True, type=click.IntRange(min=1000))
@FORMAT_OPTION
@click.pass_obj
def pipeline(settings: Settings, events: int, fmt: str) -> None:
    """SDK → Kafka → worker → sink → ClickHouse on the local stack, as `prismops demo` runs it."""
    from prismops.demo import run_demo

    try:
        report = run_demo(settings, events, lambda line: stderr_console.print(line, highlight=False))
    except Exception as exc:
        fail(f"benchmark failed: {exc}")
    emit([
        {"measure": "SDK produce (acks=all, idempotent)", "events": events, "seconds": round(report.produce_seconds, 2),
         "events_per_s": round(report.produce_events_per_s)},
        {"measure": "end to end: first produce → last row in ClickHouse", "events": events,
         "seconds": round(report.end_to_end_seconds, 2), "events_per_s": round(report.end_to_end_events_per_s)},
    ], fmt, title="pipeline throughput (everything on this machine)")
