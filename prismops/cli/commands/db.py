"""`prismops db …`: the ClickHouse schema (migrate, status), the settled cost rollups (settle) and the read-only
per-tenant users (tenant-user create|drop)."""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

import click
from clickhouse_driver.errors import Error as ClickHouseError
from rich.markup import escape

from prismops.cli.errors import clickhouse_session, describe_clickhouse_error
from prismops.cli.output import FORMAT_OPTION, emit, emit_json, fail, stdout_console
from prismops.settings import Settings

MIGRATION_COLUMNS = ["version", "name", "state", "applied_at", "checksum"]
DATE = click.DateTime(formats=["%Y-%m-%d"])


def _where(settings: Settings) -> str:
    return f"{settings.clickhouse.database} on {settings.clickhouse_host}:{settings.clickhouse_port}"


def show_migrations(settings: Settings, *, apply: bool, fmt: str) -> None:
    """Apply pending migrations (or only list them) and print every migration's state."""
    from prismops.sinks.migrations import MigrationError, apply_migrations, migration_status

    try:
        states = apply_migrations(settings) if apply else migration_status(settings)
    except MigrationError as error:
        fail(escape(str(error)))
    except (ClickHouseError, OSError) as error:
        fail(escape(describe_clickhouse_error(settings, error)))
    emit([state.as_row() for state in states], fmt, title=f"migrations of {_where(settings)}", columns=MIGRATION_COLUMNS)


@click.group(name="db")
def command() -> None:
    """ClickHouse schema, rollups and tenant users."""


@command.command()
@FORMAT_OPTION
@click.pass_obj
def migrate(settings: Settings, fmt: str) -> None:
    """Create the database if missing and apply pending migrations in order (re-running applies nothing)."""
    show_migrations(settings, apply=True, fmt=fmt)


@command.command()
@FORMAT_OPTION
@click.pass_obj
def status(settings: Settings, fmt: str) -> None:
    """Applied and pending migrations; changes nothing."""
    show_migrations(settings, apply=False, fmt=fmt)


@command.command()
@click.option("--since", "--from", "since", type=DATE, default=None,
              help="first UTC day, inclusive (default: the oldest); --from is the same flag")
@click.option("--until", "--to", "until", type=DATE, default=None,
              help="first UTC day NOT settled (default: today); --to is the same flag")
@click.option("--force", is_flag=True, help="settle again even days whose data has not changed")
@click.option("--prune/--no-prune", default=True, show_default=True,
              help="delete rollup rows of settles replaced more than an hour ago")
@FORMAT_OPTION
@click.pass_obj
def settle(settings: Settings, since: dt.datetime | None, until: dt.datetime | None, force: bool, prune: bool,
           fmt: str) -> None:
    """Write the daily cost rollups of every day whose cost lines changed since it was last settled (not today:
    it is still being written). Reports are exact either way; settled days answer from the rollups, fast."""
    from prismops.sinks.rollups import prune_superseded, settle_days

    today = dt.datetime.now(dt.timezone.utc).date()
    last = until.date() if until else today
    with clickhouse_session(settings) as client:
        settled = settle_days(client, settings.clickhouse.database, since=since.date() if since else None,
                              until=last, before=today)
        pruned = prune_superseded(client, settings.clickhouse.database) if prune else 0
    rows = [{"day": s.event_date, "state": s.state, "inserted_rows": s.inserted_rows, "settle_id": s.settle_id} for s in settled]
    if fmt == "json":
        emit_json({"days": rows, "pruned_settles": pruned})
        return
    emit(rows, fmt, title=f"settled days of {_where(settings)} ({pruned} superseded settles pruned)")


def _users_dir(settings: Settings, users_dir: Path | None) -> Path:
    if users_dir is not None:
        return users_dir
    from prismops.infra.config import StackPaths

    return StackPaths.from_settings(settings.stack).clickhouse_dir / "users.d"


@command.group(name="tenant-user")
def tenant_user() -> None:
    """A read-only ClickHouse user that reads only one tenant's rows."""


USERS_DIR_OPTION = click.option(
    "--users-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="the server's users config directory, for servers older than 20.4 (default: the local stack's users.d)",
)


@tenant_user.command(name="create")
@click.argument("tenant")
@click.option("--user", default=None, help="user name (default: tenant_<tenant>)")
@click.option("--password", default=None, envvar="PRISMOPS_TENANT_PASSWORD",
              help="default: a random one, printed once")
@click.option("--network", "networks", multiple=True, default=("127.0.0.1", "::1"), show_default=True,
              help="address or CIDR the user may connect from (repeatable; servers older than 20.4)")
@USERS_DIR_OPTION
@FORMAT_OPTION
@click.pass_obj
def create_user(settings: Settings, tenant: str, user: str | None, password: str | None, networks: tuple[str, ...],
                users_dir: Path | None, fmt: str) -> None:
    """Create (or complete) TENANT's read-only user: a row policy per table on ClickHouse 20.4+, else the
    tenant's own database of filtered copies plus a users.d file the server reloads by itself."""
    from prismops.sinks.tenant_users import create_tenant_user

    chosen = password or secrets.token_urlsafe(18)
    with clickhouse_session(settings) as client:
        access = create_tenant_user(client, settings.clickhouse.database, tenant, password=chosen,
                                    users_dir=_users_dir(settings, users_dir), user=user, networks=networks)
    result = {**access.as_dict(), "password": None if password else chosen}
    if fmt == "json":
        emit_json(result)
        return
    emit([result], fmt, title=f"tenant user for {tenant}")
    if not password:
        stdout_console.print("the password is shown only now; store it", highlight=False)


@tenant_user.command(name="drop")
@click.argument("tenant")
@click.option("--user", default=None, help="user name (default: tenant_<tenant>)")
@USERS_DIR_OPTION
@click.pass_obj
def drop_user(settings: Settings, tenant: str, user: str | None, users_dir: Path | None) -> None:
    """Remove TENANT's user and (servers older than 20.4) its database of copies."""
    from prismops.sinks.tenant_users import drop_tenant_user

    with clickhouse_session(settings) as client:
        drop_tenant_user(client, settings.clickhouse.database, tenant, users_dir=_users_dir(settings, users_dir),
                         user=user)
    stdout_console.print(f"dropped the tenant user of {escape(tenant)}", highlight=False)
