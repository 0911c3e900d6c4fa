"""`prismops demo`: run the main job end to end on the local stack and print what it found."""

from __future__ import annotations

import click

from prismops.cli.output import FORMAT_OPTION, emit_json, emit_table, fail, stderr_console
from prismops.settings import Settings


@click.command("demo")
@click.option("--events", default=20_000, show_default=True, type=click.IntRange(min=100))
@click.option("--keep-stack", is_flag=True, help="leave Kafka and ClickHouse running afterwards")
@FORMAT_OPTION
@click.pass_obj
def command(settings: Settings, events: int, keep_stack: bool, fmt: str) -> None:
    """Stack up, worker + sink + gateway, simulated traffic, then spend from ClickHouse and routing decisions."""
    from prismops.cli.demo import run_demo

    try:
        report = run_demo(settings, events, lambda line: stderr_console.print(line, highlight=False), keep_stack)
    except Exception as exc:
        fail(f"demo failed: {exc}")
    throughput = {
        "events": report.events,
        "produce_seconds": round(report.produce_seconds, 2),
        "produce_events_per_s": round(report.produce_events_per_s, 1),
        "end_to_end_seconds": round(report.end_to_end_seconds, 2),
        "end_to_end_events_per_s": round(report.end_to_end_events_per_s, 1),
    }
    if fmt == "json":
        emit_json({"throughput": throughput, "spend": report.spend, "decisions": report.decisions,
                   "database": report.database, "logs": report.logs, "gpu_recommendation": report.gpu_recommendation,
                   "inference_costs": report.inference_costs})
        return
    emit_table(report.spend, title=f"Spend by tenant and model (ClickHouse {report.database}.cost_lines)")
    emit_table(report.decisions, title="Routing decisions (routing.v1.Router/Decide)")
    if report.gpu_recommendation:
        emit_table([report.gpu_recommendation], title="A GPU recommendation (simulated fleet; `prismops recommend gpu`)")
    emit_table(report.inference_costs,
               title="Self-hosted inference: the pool's GPU cost split by tokens, $ per million tokens "
                     f"(ClickHouse {report.database}.gpu_allocations)")
    emit_table([throughput], title="Throughput: SDK produce, and SDK → worker → sink → ClickHouse")
