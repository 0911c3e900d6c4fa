"""`prismops worker`: run the Faust stream processors."""

from __future__ import annotations

import click

from prismops.cli.errors import show_kafka_client_logs
from prismops.settings import Settings


@click.command("worker")
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_obj
def command(settings: Settings, loglevel: str) -> None:
    """Run the Faust worker (pricing, tagging, live model table) until SIGINT/SIGTERM."""
    from prismops.agents.worker import run_worker

    show_kafka_client_logs()
    run_worker(settings, loglevel=loglevel)
