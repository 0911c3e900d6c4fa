"""`prismops simulate`: produce realistic multi-tenant LLM traffic through the SDK."""

from __future__ import annotations

import click
from rich.progress import Progress

from prismops.output import FORMAT_OPTION, emit, fail, stderr_console
from prismops.settings import Settings


@click.command("simulate")
@click.option("--events", "count", default=10_000, show_default=True, type=click.IntRange(min=1))
@click.option("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
@click.option("--seed", default=7, show_default=True)
@FORMAT_OPTION
@click.pass_obj
def command(settings: Settings, count: int, rate: float | None, seed: int, fmt: str) -> None:
    """Produce COUNT LLM usage events from several tenants, services, features and models."""
    from streams.producer import DeliveryFailed, UsageProducer
    from streams.simulation import TrafficGenerator, simulate
    from streams.topics import ensure_topics

    try:
        ensure_topics(settings)
    except Exception as exc:
        fail(f"Kafka at {settings.kafka_bootstrap} is not reachable ({exc}); start it with `prismops stack up`")
    producer = UsageProducer(settings)
    with Progress(transient=True, disable=fmt == "json", console=stderr_console) as bar:
        task = bar.add_task("producing", total=count)
        try:
            result = simulate(producer, TrafficGenerator(seed).events(count), rate, lambda n: bar.update(task, completed=n))
        except DeliveryFailed as exc:
            fail(str(exc))
    emit([{"events": result.events, "seconds": round(result.seconds, 3),
           "events_per_s": round(result.events_per_second, 1)}], fmt, title="simulated traffic")
