"""`prismops export focus`: PrismOps costs as a FOCUS 1.2 cost-and-usage CSV for other FinOps tools."""

from __future__ import annotations

from pathlib import Path

import click

from prismops.cli.errors import clickhouse_session
from prismops.cli.output import FORMAT_OPTION, emit, emit_json
from prismops.settings import Settings


@click.group(name="export")
def command() -> None:
    """Write PrismOps costs in formats other tools read."""


@command.command()
@click.option("--month", required=True, help="UTC calendar month, YYYY-MM")
@click.option("--source", "sources", multiple=True, type=click.Choice(["llm", "gpu", "cloud"]),
              default=("llm", "gpu"), show_default=True,
              help="cost line sources to include (cloud lines came from a provider's own FOCUS file)")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@FORMAT_OPTION
@click.pass_obj
def focus(settings: Settings, month: str, sources: tuple[str, ...], file: Path, fmt: str) -> None:
    """Write MONTH's costs to FILE as FOCUS 1.2 (ServiceCategory "AI and Machine Learning"), one row per day and
    owner/thing; prints the rows written and the exact totals."""
    from prismops.sinks.focus_export import export_focus_month

    with clickhouse_session(settings) as client:
        summary = export_focus_month(client, settings.clickhouse.database, month, file, sources=tuple(sources))
    if fmt == "json":
        emit_json(summary.as_dict())
        return
    emit([summary.as_dict()], fmt, title=f"FOCUS 1.2 export of {month}")
