"""`prismops sink`: write cost lines, routing decisions and dead letters from Kafka into ClickHouse."""

from __future__ import annotations

import logging
import signal
import threading

import click
from clickhouse_driver.errors import Error as ClickHouseError
from rich.markup import escape

from prismops.output import FORMAT_OPTION, emit, fail, stderr_console
from prismops.settings import Settings


@click.command(name="sink")
@click.option("--until-idle", "idle_s", type=float, default=None,
              help="stop after this many seconds without records instead of running until SIGINT/SIGTERM")
@FORMAT_OPTION
@click.pass_obj
def command(settings: Settings, idle_s: float | None, fmt: str) -> None:
    """Run the ClickHouse sink in the foreground; prints a line per batch to stderr and the totals at exit."""
    from sinks.clickhouse import SinkNotReady, server_message
    from sinks.runner import BatchReport, SinkRunner, default_routes

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def progress(report: BatchReport) -> None:
        stderr_console.print(
            f"batch: {report.records} records, {report.rows_written} rows written, "
            f"{report.duplicates_skipped} duplicates skipped, {report.dead_letters} dead-lettered, "
            f"{report.seconds * 1000:.0f} ms",
            style="dim", highlight=False,
        )

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with SinkRunner(settings, default_routes(settings), on_batch=progress) as runner:
            stderr_console.print(
                f"sinking {', '.join(runner.topics)} into {settings.clickhouse.database} "
                f"(group {settings.sink.group_id}); Ctrl-C stops", highlight=False,
            )
            counters = runner.run(stop) if idle_s is None else runner.run_until_idle(idle_s)
    except SinkNotReady as error:
        fail(escape(str(error)))
    except (ClickHouseError, OSError) as error:
        fail(escape(f"ClickHouse {settings.clickhouse_host}:{settings.clickhouse_port}: {server_message(error)}"))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    emit([counters.as_dict()], fmt, title="sink totals")
