"""`prismops simulate`: produce realistic multi-tenant LLM (or GPU) usage through the SDK."""

from __future__ import annotations

import click
from rich.progress import Progress

from prismops.cli.output import FORMAT_OPTION, emit, fail, stderr_console
from prismops.settings import Settings


@click.command("simulate")
@click.option("--events", "count", default=10_000, show_default=True, type=click.IntRange(min=1))
@click.option("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--kind", type=click.Choice(["llm", "gpu"]), default="llm", show_default=True,
    help="llm: LLM calls to usage.llm.v1; gpu: per-minute GPU usage to usage.gpu.v1, ending now",
)
@FORMAT_OPTION
@click.pass_obj
def command(settings: Settings, count: int, rate: float | None, seed: int, kind: str, fmt: str) -> None:
    """Produce COUNT usage events: LLM calls from several tenants, services, features and models, or GPU
    usage from several clusters, GPU models and capacity types (MIG slices, fractional GPUs, idle capacity)."""
    from prismops.streams.producer import DeliveryFailed, UsageProducer
    from prismops.streams.simulation import GpuTrafficGenerator, TrafficGenerator, simulate
    from prismops.streams.topics import ensure_topics

    try:
        ensure_topics(settings)
    except Exception as exc:
        fail(f"Kafka at {settings.kafka_bootstrap} is not reachable ({exc}); start it with `prismops stack up`")
    producer = UsageProducer(settings)
    if kind == "gpu":
        events, record = GpuTrafficGenerator(seed).events(count), producer.record_gpu_usage
    else:
        events, record = TrafficGenerator(seed).events(count), producer.record_llm_call
    with Progress(transient=True, disable=fmt == "json", console=stderr_console) as bar:
        task = bar.add_task("producing", total=count)
        try:
            result = simulate(producer, events, rate, lambda n: bar.update(task, completed=n), record=record)
        except DeliveryFailed as exc:
            fail(str(exc))
    emit([{"kind": kind, "events": result.events, "seconds": round(result.seconds, 3),
           "events_per_s": round(result.events_per_second, 1)}], fmt, title=f"simulated {kind} traffic")
    if kind == "gpu" and fmt != "json":
        gpu = settings.gpu
        stderr_console.print(
            f"GPU cost is attributed per {gpu.window_s:g} s event-time window once event time passes its end plus "
            f"{gpu.grace_s:g} s of grace (or, for a quiet pool, that long after its last event by the clock): expect rows "
            f"in gpu_allocations about {(gpu.window_s + gpu.grace_s) / 60:g} minutes after the window's start. Set "
            "PRISMOPS_GPU__WINDOW_S=60 PRISMOPS_GPU__GRACE_S=10 on the worker to see cost within a minute or two.", highlight=False, soft_wrap=True)
