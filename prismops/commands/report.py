"""`prismops report …`: showback queries over the ClickHouse tables the sink fills."""

from __future__ import annotations

import datetime as dt

import click
from clickhouse_driver.errors import Error as ClickHouseError
from rich.markup import escape

from prismops.output import FORMAT_OPTION, emit, fail
from prismops.settings import Settings

DATE = click.DateTime(formats=["%Y-%m-%d"])
SPEND_COLUMNS = ["tenant", "provider", "model", "calls", "input_tokens", "output_tokens", "cost_usd"]


@click.group(name="report")
def command() -> None:
    """Reports from ClickHouse (exact Decimal money; JSON prints it as strings)."""


@command.command()
@click.option("--since", type=DATE, default=None, help="first UTC event date, inclusive (YYYY-MM-DD)")
@click.option("--until", type=DATE, default=None, help="last UTC event date, exclusive (YYYY-MM-DD)")
@FORMAT_OPTION
@click.pass_obj
def spend(settings: Settings, since: dt.datetime | None, until: dt.datetime | None, fmt: str) -> None:
    """Spend by tenant and model, most expensive first."""
    from sinks.clickhouse import clickhouse_client, server_message
    from sinks.reports import spend_by_tenant_and_model

    client = clickhouse_client(settings)
    try:
        rows = spend_by_tenant_and_model(
            client, settings.clickhouse.database,
            since=since.date() if since else None, until=until.date() if until else None,
        )
    except (ClickHouseError, OSError) as error:
        fail(escape(
            f"ClickHouse {settings.clickhouse_host}:{settings.clickhouse_port}: {server_message(error)} "
            "(has `prismops migrate` been run for this database?)"
        ))
    finally:
        client.disconnect()
    emit(rows, fmt, title=f"spend by tenant and model ({settings.clickhouse.database})", columns=SPEND_COLUMNS)
