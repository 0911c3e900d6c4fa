"""`prismops migrate`: kept as an alias of `prismops db migrate` (and `--status` of `prismops db status`)."""

from __future__ import annotations

import click

from prismops.cli.output import FORMAT_OPTION
from prismops.settings import Settings


@click.command(name="migrate")
@click.option("--status", "status_only", is_flag=True, help="only show applied and pending migrations")
@FORMAT_OPTION
@click.pass_obj
def command(settings: Settings, status_only: bool, fmt: str) -> None:
    """Create the database if missing and apply pending migrations in order (same as `prismops db migrate`)."""
    from prismops.cli.commands.db import show_migrations

    show_migrations(settings, apply=not status_only, fmt=fmt)
