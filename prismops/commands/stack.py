"""`prismops stack up|down|status`: the local Kafka + ClickHouse for development and tests."""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.markup import escape

from prismops.output import FORMAT_OPTION, emit, fail, stderr_console
from prismops.settings import Settings

TABLE_COLUMNS = ["name", "state", "address", "pid", "log_path"]


def _run(settings: Settings, fmt: str, title: str, action: Callable) -> None:
    """Runs one LocalStack action and prints its statuses; stack errors become a clean non-zero exit."""
    from infra.stack import LocalStack, StackError

    try:
        statuses = action(LocalStack(settings))
    except StackError as error:
        fail(escape(str(error)))
    emit([status.as_row() for status in statuses], fmt, title=title, columns=TABLE_COLUMNS)


def _progress(message: str) -> None:
    stderr_console.print(escape(message), style="dim", highlight=False)


@click.group(name="stack")
def command() -> None:
    """Run the local Kafka (KRaft) + ClickHouse stack on loopback ports from settings."""


@command.command()
@FORMAT_OPTION
@click.pass_obj
def up(settings: Settings, fmt: str) -> None:
    """Start Kafka and ClickHouse (fetching what is missing) and wait until both answer."""
    _run(settings, fmt, "local stack", lambda stack: stack.up(progress=_progress))


@command.command()
@FORMAT_OPTION
@click.pass_obj
def down(settings: Settings, fmt: str) -> None:
    """Stop the servers this stack started; data stays on disk."""
    _run(settings, fmt, "local stack", lambda stack: stack.down())


@command.command()
@FORMAT_OPTION
@click.pass_obj
def status(settings: Settings, fmt: str) -> None:
    """Show whether each server is running (ours), external (someone else's) or stopped."""
    _run(settings, fmt, "local stack", lambda stack: stack.status())
