"""`prismops migrate`: apply the ClickHouse migrations in `sinks/migrations/` and show what is applied."""

from __future__ import annotations

import click
from clickhouse_driver.errors import Error as ClickHouseError
from rich.markup import escape

from prismops.output import FORMAT_OPTION, emit, fail
from prismops.settings import Settings

TABLE_COLUMNS = ["version", "name", "state", "applied_at", "checksum"]


@click.command(name="migrate")
@click.option("--status", "status_only", is_flag=True, help="only show applied and pending migrations")
@FORMAT_OPTION
@click.pass_obj
def command(settings: Settings, status_only: bool, fmt: str) -> None:
    """Create the database if missing and apply pending migrations in order (re-running applies nothing)."""
    from sinks.clickhouse import server_message
    from sinks.migrations import MigrationError, apply_migrations, migration_status

    where = f"{settings.clickhouse.database} on {settings.clickhouse_host}:{settings.clickhouse_port}"
    try:
        states = migration_status(settings) if status_only else apply_migrations(settings)
    except MigrationError as error:
        fail(escape(str(error)))
    except (ClickHouseError, OSError) as error:
        fail(escape(f"ClickHouse {where}: {server_message(error)}"))
    emit([state.as_row() for state in states], fmt, title=f"migrations of {where}", columns=TABLE_COLUMNS)
