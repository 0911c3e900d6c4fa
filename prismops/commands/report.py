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


def _day(value: str) -> dt.date:
    today = dt.datetime.now(dt.timezone.utc).date()
    named = {"today": today, "yesterday": today - dt.timedelta(days=1)}
    if value in named:
        return named[value]
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not YYYY-MM-DD, today or yesterday", param_hint="--on") from None


@command.command()
@click.option("--by", "group_by", multiple=True, help="dimension to group by (repeatable): team, tenant, source, …")
@click.option("--where", "filters", multiple=True, help="dimension=value filter (repeatable), e.g. team=devtools")
@click.option("--on", "on_day", default=None, help="one UTC day: YYYY-MM-DD, today or yesterday")
@click.option("--since", type=DATE, default=None, help="first UTC event date, inclusive")
@click.option("--until", type=DATE, default=None, help="last UTC event date, exclusive")
@FORMAT_OPTION
@click.pass_obj
def costs(settings: Settings, group_by: tuple[str, ...], filters: tuple[str, ...], on_day: str | None,
          since: dt.datetime | None, until: dt.datetime | None, fmt: str) -> None:
    """Cost from every source (LLM, GPU, cloud) by any dimensions: `--by team --by source --where team=X --on yesterday`."""
    from sinks.clickhouse import clickhouse_client, server_message
    from sinks.reports import costs_by

    where = {}
    for item in filters:
        name, sep, value = item.partition("=")
        if not sep:
            fail(f"--where {item!r}: expected dimension=value")
        where[name.strip()] = value.strip()
    first, last = (since.date() if since else None), (until.date() if until else None)
    if on_day:
        first = _day(on_day)
        last = first + dt.timedelta(days=1)
    client = clickhouse_client(settings)
    try:
        rows = costs_by(client, settings.clickhouse.database, list(group_by), where=where, since=first, until=last)
    except ValueError as error:
        fail(str(error))
    except (ClickHouseError, OSError) as error:
        fail(escape(f"ClickHouse {settings.clickhouse_host}:{settings.clickhouse_port}: {server_message(error)}"))
    finally:
        client.disconnect()
    span = f"{first or 'start'} to {last or 'now'}"
    emit(rows, fmt, title=f"cost by {', '.join(group_by) or 'everything'} ({span})")
