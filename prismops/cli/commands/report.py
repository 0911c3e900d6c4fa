"""`prismops report …`: showback queries over the ClickHouse tables the sink fills."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path

import click

from prismops.cli.errors import clickhouse_session
from prismops.cli.output import FORMAT_OPTION, WIDE_OPTION, emit, emit_json, fail, report_json
from prismops.settings import Settings

DATE = click.DateTime(formats=["%Y-%m-%d"])
SPEND_COLUMNS = ["tenant", "provider", "model", "calls", "input_tokens", "output_tokens", "cost_usd"]


@click.group(name="report")
def command() -> None:
    """Reports from ClickHouse (exact Decimal money; JSON prints it as strings)."""


SINCE_HELP = "first UTC day included, YYYY-MM-DD (--from is the same flag)"
UNTIL_HELP = "first UTC day NOT included, YYYY-MM-DD (--to is the same flag)"


def date_range_options(function):  # type: ignore[no-untyped-def]
    """The one date vocabulary of every command: --since/--until, also spelled --from/--to; --until is exclusive."""
    function = click.option("--until", "--to", "until", type=DATE, default=None, help=UNTIL_HELP)(function)
    return click.option("--since", "--from", "since", type=DATE, default=None, help=SINCE_HELP)(function)


def sum_columns(rows: list[dict], columns: list[str]) -> dict:
    """The TOTAL row of a list report: numbers summed exactly, text columns empty, the first labelled TOTAL."""
    total: dict = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        numbers = [v for v in values if isinstance(v, (int, decimal.Decimal)) and not isinstance(v, bool)]
        total[column] = sum(numbers, decimal.Decimal(0) if any(isinstance(v, decimal.Decimal) for v in numbers) else 0) \
            if numbers and len(numbers) == len(values) else None
    total[columns[0]] = "TOTAL"
    return total


def emit_list_report(rows: list[dict], fmt: str, title: str, columns: list[str]) -> None:
    """A list report (spend, costs) printed like every other report: JSON {title, columns, rows, total}."""
    total = sum_columns(rows, columns) if rows else None
    if fmt == "json":
        emit_json(report_json(title, columns, rows, total))
    else:
        emit([*rows, total] if total else rows, "table", title=title, columns=columns)


@command.command()
@date_range_options
@FORMAT_OPTION
@click.pass_obj
def spend(settings: Settings, since: dt.datetime | None, until: dt.datetime | None, fmt: str) -> None:
    """Spend by tenant and model, most expensive first."""
    from prismops.sinks.reports import spend_by_tenant_and_model

    with clickhouse_session(settings) as client:
        rows = spend_by_tenant_and_model(
            client, settings.clickhouse.database,
            since=since.date() if since else None, until=until.date() if until else None,
        )
    emit_list_report(rows, fmt, f"spend by tenant and model ({settings.clickhouse.database})", SPEND_COLUMNS)


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
@date_range_options
@FORMAT_OPTION
@click.pass_obj
def costs(settings: Settings, group_by: tuple[str, ...], filters: tuple[str, ...], on_day: str | None,
          since: dt.datetime | None, until: dt.datetime | None, fmt: str) -> None:
    """Cost from every source (LLM, GPU, cloud) by any dimensions: `--by team --by source --where team=X --on yesterday`."""
    from prismops.sinks.reports import costs_by

    where = {}
    for item in filters:
        try:
            name, value = parse_where(item)
        except ValueError as error:
            fail(str(error))
        where[name] = value
    if on_day and (since or until):
        fail("give --on or --since/--until, not both")
    first, last = (since.date() if since else None), (until.date() if until else None)
    if on_day:
        first = _day(on_day)
        last = first + dt.timedelta(days=1)
    with clickhouse_session(settings) as client:
        rows = costs_by(client, settings.clickhouse.database, list(group_by), where=where, since=first, until=last)
    span = f"{first or 'start'} to {last or 'now'}"
    columns = [*(group_by or ["scope"]), "lines", "cost_usd", "unpriced_lines"]
    emit_list_report(rows, fmt, f"cost by {', '.join(group_by) or 'everything'} ({span})", columns)


def parse_where(item: str) -> tuple[str, str]:
    """`dimension=value`, strictly: one `=`, a known dimension, a value that does not start with `=` or `!`."""
    from prismops.sinks.reports import COST_DIMENSIONS

    name, sep, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise ValueError(f"--where {item!r}: expected dimension=value, e.g. team=devtools")
    if name.endswith(("!", "<", ">")) or value.startswith(("=", "!", "<", ">")):
        raise ValueError(f"--where {item!r}: only dimension=value (one '=') is supported")
    if name not in COST_DIMENSIONS:
        raise ValueError(f"--where {item!r}: {name!r} is not a dimension; use one of {', '.join(COST_DIMENSIONS)}")
    if not value:
        raise ValueError(f"--where {item!r}: the value is empty")
    return name, value


# ---------------------------------------------------------------------------------------------------------------
# showback, unit economics, monthly, anomalies: exact reports with a TOTAL row (prismops.sinks.reports, prismops.sinks.rollups)

_REPORT_FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
    help="table for people, csv for spreadsheets, json for scripts (money as exact decimal strings)",
)


def REPORT_FORMAT_OPTION(function):  # type: ignore[no-untyped-def]  # noqa: N802
    return _REPORT_FORMAT(WIDE_OPTION(function))
BY_CHOICE = click.Choice(["team", "tenant", "feature", "model", "customer", "product", "service", "environment",
                          "provider", "source", "node"])


def _period(since: dt.datetime | None, until: dt.datetime | None, month: str | None) -> tuple[dt.date, dt.date]:
    """--month, or --since/--until (--until is the first day NOT included, like FOCUS period ends); default: this
    month."""
    from prismops.sinks.reports import month_range

    if month and (since or until):
        fail("give --month or --since/--until, not both")
    if month:
        try:
            return month_range(month)
        except ValueError as error:
            fail(str(error))
    today = dt.datetime.now(dt.timezone.utc).date()
    first = since.date() if since else today.replace(day=1)
    last = until.date() if until else today + dt.timedelta(days=1)
    if last <= first:
        fail(f"--until {last} must be after --since {first} (--until is exclusive)")
    return first, last


def period_options(function):  # type: ignore[no-untyped-def]
    function = click.option("--month", default=None, help="one UTC calendar month, YYYY-MM")(function)
    function = click.option("--until", "--to", "until", type=DATE, default=None,
                            help=UNTIL_HELP + " (default: tomorrow)")(function)
    return click.option("--since", "--from", "since", type=DATE, default=None,
                        help=SINCE_HELP + " (default: the 1st of this month)")(function)


def write_csv(columns: list[str], rows: list[dict]) -> None:
    import csv
    import sys

    from prismops.cli.output import to_jsonable

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else to_jsonable(row.get(c)) for c in columns])


def emit_report(report, fmt: str) -> None:  # type: ignore[no-untyped-def]
    from prismops.cli.output import emit_json

    if fmt == "json":
        emit_json(report.as_json())
    elif fmt == "csv":
        write_csv(report.columns, report.table_rows())
    else:
        emit(report.table_rows(), "table", title=report.title, columns=report.columns)


def run_report(settings: Settings, build):  # type: ignore[no-untyped-def]
    """Open a connection, build the report, turn errors into one clear line."""

    with clickhouse_session(settings) as client:
        return build(client, settings.clickhouse.database)


@command.command()
@click.option("--by", "by", multiple=True, type=BY_CHOICE, default=("team",), show_default=True,
              help="dimension to group by (repeatable, e.g. --by tenant --by customer)")
@period_options
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also write a bar chart of cost by group to this .svg file")
@REPORT_FORMAT_OPTION
@click.pass_obj
def showback(settings: Settings, by: tuple[str, ...], since: dt.datetime | None, until: dt.datetime | None,
             month: str | None, chart: Path | None, fmt: str) -> None:
    """Cost by team, tenant, feature, model or customer (every source: LLM, GPU, cloud), with a TOTAL row equal
    to the raw table's total for the period."""
    from prismops.sinks import reports

    if chart is not None and chart.suffix.lower() != ".svg":
        fail(f"--chart {chart}: the chart is written as SVG; name the file *.svg")
    first, last = _period(since, until, month)
    report = run_report(settings, lambda client, db: reports.showback(client, db, by, since=first, until=last))
    if chart is not None:
        from prismops.sinks.svg_chart import bar_chart_svg

        labels = [" / ".join(str(row[d]) or "(none)" for d in by) for row in report.rows]
        chart.write_text(bar_chart_svg(report.title, labels, [row["cost_usd"] for row in report.rows]),
                         encoding="utf-8")
    emit_report(report, fmt)


@command.command(name="unit-economics")
@click.option("--by", "by", multiple=True, type=BY_CHOICE, default=("feature",), show_default=True,
              help="dimension to group by (repeatable)")
@period_options
@REPORT_FORMAT_OPTION
@click.pass_obj
def unit_economics(settings: Settings, by: tuple[str, ...], since: dt.datetime | None, until: dt.datetime | None,
                   month: str | None, fmt: str) -> None:
    """LLM cost per request, session, customer and 1k tokens, with cache-hit, fallback and error rates."""
    from prismops.sinks import reports

    first, last = _period(since, until, month)
    emit_report(run_report(settings, lambda client, db: reports.unit_economics(client, db, by, since=first, until=last)),
                fmt)


@command.command(name="cache")
@click.option("--by", "by", multiple=True, type=BY_CHOICE, default=("tenant", "service", "feature"), show_default=True,
              help="dimension to group by (repeatable)")
@click.option("--tenant", default=None, help="only this tenant")
@period_options
@REPORT_FORMAT_OPTION
@click.pass_obj
def cache(settings: Settings, by: tuple[str, ...], tenant: str | None, since: dt.datetime | None,
          until: dt.datetime | None, month: str | None, fmt: str) -> None:
    """Response cache: hits, hit rate and the dollars the hits saved, per group (most saved first)."""
    from prismops.sinks import reports

    first, last = _period(since, until, month)
    emit_report(run_report(settings, lambda client, db: reports.cache_savings(client, db, by, since=first, until=last,
                                                                              tenant=tenant)), fmt)


@command.command(name="gpu-kpis")
@click.option("--by", "by", multiple=True, type=click.Choice(["pool", "cluster", "gpu_model", "capacity_type"]),
              default=("pool",), show_default=True, help="dimension to group by (repeatable)")
@period_options
@REPORT_FORMAT_OPTION
@click.pass_obj
def gpu_kpis(settings: Settings, by: tuple[str, ...], since: dt.datetime | None, until: dt.datetime | None,
             month: str | None, fmt: str) -> None:
    """GPU KPIs from gpu_allocations: allocation utilization %, $ per GPU-hour, spot savings vs on-demand (the
    GPU price table), interruptions and mean restart gap. The preemption loss rate is not shown: the work lost per
    preemption (time since the last checkpoint) is not stored (docs/gpu_collectors.md)."""
    from prismops.finops.gpu_pricing import load_gpu_catalog
    from prismops.sinks import reports

    first, last = _period(since, until, month)
    try:
        catalog = load_gpu_catalog(settings.gpu.price_table)
    except (OSError, ValueError) as error:
        from rich.markup import escape

        fail(escape(f"GPU price table: {error}"))
    emit_report(run_report(settings, lambda client, db: reports.gpu_kpis(
        client, db, by, since=first, until=last, catalog=catalog)), fmt)


@command.command()
@click.option("--month", required=True, help="UTC calendar month, YYYY-MM")
@REPORT_FORMAT_OPTION
@click.pass_obj
def monthly(settings: Settings, month: str, fmt: str) -> None:
    """One month's cost by service (LLM and cloud lines) and node (GPU lines), with the month's TOTAL."""
    from prismops.sinks import reports

    emit_report(run_report(settings, lambda client, db: reports.monthly(client, db, month)), fmt)


@command.command(name="anomalies")
@period_options
@click.option("--severity", type=click.Choice(["info", "warning", "critical"]), default="info", show_default=True,
              help="the lowest severity listed")
@click.option("--tenant", default=None, help="only this tenant's series")
@REPORT_FORMAT_OPTION
@click.pass_obj
def anomalies_report(settings: Settings, since: dt.datetime | None, until: dt.datetime | None, month: str | None,
                     severity: str, tenant: str | None, fmt: str) -> None:
    """Anomalous windows, newest first, with expected vs actual and the excess cost in total."""
    from prismops.sinks import reports

    first, last = _period(since, until, month)
    emit_report(run_report(settings, lambda client, db: reports.anomalies(
        client, db, since=first, until=last, min_severity=severity, tenant=tenant)), fmt)


@command.command(name="cloud")
@period_options
@click.option("--fx", "fx_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="effective-dated FX table (CSV: currency,effective_from,usd_per_unit; see docs/fx_rates.example.csv)"
                   " to add USD columns")
@REPORT_FORMAT_OPTION
@click.pass_obj
def cloud(settings: Settings, since: dt.datetime | None, until: dt.datetime | None, month: str | None,
          fx_file: Path | None, fmt: str) -> None:
    """Cloud bills (FOCUS) by BillingCurrency and ServiceName, in each bill's own currency; with --fx also in USD,
    converted per day at the rate in force (never at a guessed rate: a missing rate is an error)."""
    from prismops.errors import FieldRuleError
    from prismops.finops.fx import load_fx_table
    from prismops.sinks import reports

    first, last = _period(since, until, month)
    try:
        fx = load_fx_table(fx_file) if fx_file is not None else None
        report = run_report(settings, lambda client, db: reports.cloud_bills(client, db, since=first, until=last, fx=fx))
    except FieldRuleError as error:
        from rich.markup import escape

        fail(escape(str(error)))
    emit_report(report, fmt)


@command.command(name="inference")
@period_options
@REPORT_FORMAT_OPTION
@click.pass_obj
def inference(settings: Settings, since: dt.datetime | None, until: dt.datetime | None, month: str | None,
              fmt: str) -> None:
    """Self-hosted inference pools: each window's GPU cost split by tenants' tokens, with $ per million tokens."""
    from prismops.sinks import reports

    first, last = _period(since, until, month)
    emit_report(run_report(settings, lambda client, db: reports.inference_pool_costs(client, db, since=first, until=last)),
                fmt)
