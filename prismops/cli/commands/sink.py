"""`prismops sink`: write the pipeline's records from Kafka into ClickHouse: cost lines, routing decisions, dead
letters, budget events, GPU allocations and usage windows, policy audit records and anomalies."""

from __future__ import annotations

import click

from prismops.cli.commands.foreground import run_until_signalled
from prismops.cli.output import FORMAT_OPTION, emit, stderr_console
from prismops.settings import Settings


@click.command(name="sink")
@click.option("--until-idle", "idle_s", type=float, default=None,
              help="stop after this many seconds without records instead of running until SIGINT/SIGTERM")
@FORMAT_OPTION
@click.pass_obj
def command(settings: Settings, idle_s: float | None, fmt: str) -> None:
    """Run the ClickHouse sink in the foreground; prints a line per batch to stderr and the totals at exit."""
    from prismops.sinks.runner import BatchReport, SinkRunner, default_routes
    from prismops.streams.garbage_collector import tune_collector
    from prismops.streams.metrics import serve_metrics
    from prismops.streams.telemetry import configure_tracing

    def progress(report: BatchReport) -> None:
        stderr_console.print(
            f"batch: {report.records} records, {report.rows_written} rows written, "
            f"{report.duplicates_skipped} duplicates skipped, {report.dead_letters} dead-lettered, "
            f"{report.seconds * 1000:.0f} ms",
            style="dim", highlight=False,
        )

    tune_collector(settings.sink.gc_gen0_threshold)
    serve_metrics(settings.sink.metrics_port, "sink")
    configure_tracing(settings, "sink")
    with run_until_signalled(settings) as stop, \
            SinkRunner(settings, default_routes(settings), on_batch=progress) as runner:
        stderr_console.print(
            f"sinking {', '.join(runner.topics)} into {settings.clickhouse.database} "
            f"(group {settings.sink_group_id}); Ctrl-C stops", highlight=False,
        )
        counters = runner.run(stop) if idle_s is None else runner.run_until_idle(idle_s)
    emit([counters.as_dict()], fmt, title="sink totals")
