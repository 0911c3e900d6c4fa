"""`prismops stack up|down|status`: the local Kafka + ClickHouse (+ Prometheus) for development and tests."""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.markup import escape

from prismops.cli.output import FORMAT_OPTION, emit, fail, stderr_console
from prismops.settings import Settings

TABLE_COLUMNS = ["name", "state", "address", "pid", "log_path"]


def _run(settings: Settings, fmt: str, title: str, action: Callable, with_prometheus: bool = False,
         with_registry: bool = False) -> None:
    """Runs one LocalStack action and prints its statuses; stack errors become a clean non-zero exit."""
    from prismops.infra.registry import attach_registry
    from prismops.infra.stack import LocalStack, StackError

    try:
        stack = LocalStack(settings, with_prometheus=with_prometheus)
        attach_registry(stack, start=with_registry or bool(getattr(settings.stack, "with_registry", False)))
        statuses = action(stack)
    except StackError as error:
        fail(escape(str(error)))
    emit([status.as_row() for status in statuses], fmt, title=title, columns=TABLE_COLUMNS)


def _progress(message: str) -> None:
    stderr_console.print(escape(message), style="dim", highlight=False)


@click.group(name="stack")
def command() -> None:
    """Run the local Kafka (KRaft) + ClickHouse (+ Prometheus) stack on loopback ports from settings."""


WITH_PROMETHEUS = click.option(
    "--with-prometheus", is_flag=True,
    help="also Prometheus on stack.prometheus_port, scraping the worker, sink and gateway (Debian's package)",
)


WITH_REGISTRY = click.option(
    "--with-registry", is_flag=True,
    help="also the schema registry (Apicurio, Confluent API at http://127.0.0.1:<stack.registry_port>/apis/ccompat/v7), "
         "built from Maven Central on first use; same as stack.with_registry",
)


@command.command()
@WITH_PROMETHEUS
@WITH_REGISTRY
@FORMAT_OPTION
@click.pass_obj
def up(settings: Settings, with_prometheus: bool, with_registry: bool, fmt: str) -> None:
    """Start Kafka and ClickHouse (and Prometheus with --with-prometheus, the schema registry with
    --with-registry), fetching what is missing, and wait until they answer."""
    _run(settings, fmt, "local stack", lambda stack: stack.up(progress=_progress), with_prometheus, with_registry)


@command.command()
@FORMAT_OPTION
@click.pass_obj
def down(settings: Settings, fmt: str) -> None:
    """Stop the servers this stack started (Prometheus and the schema registry too); data stays on disk."""
    _run(settings, fmt, "local stack", lambda stack: stack.down())


@command.command()
@WITH_PROMETHEUS
@FORMAT_OPTION
@click.pass_obj
def status(settings: Settings, with_prometheus: bool, fmt: str) -> None:
    """Show whether each server is running (ours), external (someone else's) or stopped; Prometheus is listed
    when ours runs or with --with-prometheus."""
    _run(settings, fmt, "local stack", lambda stack: stack.status(), with_prometheus)
