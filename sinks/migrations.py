"""Versioned ClickHouse migrations: `sinks/migrations/NNNN_<what>.sql`, applied once each, in version order.

Each applied file is recorded in `schema_migrations` (version, name, checksum, applied_at) in the target
database, so re-running applies nothing new. Editing a file after it was applied is refused (its checksum
no longer matches): schema changes go in a new file. ClickHouse has no DDL transactions, so statements are
written to be re-runnable (`IF NOT EXISTS`): a file that failed half-way is simply applied again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clickhouse_driver import Client

from prismops.settings import Settings
from prismops.sinks.clickhouse import clickhouse_client, quote_identifier, server_message

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATIONS_TABLE = "schema_migrations"
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

_CREATE_MIGRATIONS_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    version UInt32,
    name String,
    checksum String COMMENT 'sha256 of the file bytes when it was applied',
    applied_at DateTime('UTC')
)
ENGINE = MergeTree
ORDER BY version
"""


class MigrationError(RuntimeError):
    """A migration set that cannot be applied safely; the message names the file and what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str

    @property
    def file_name(self) -> str:
        return self.path.name

    def statements(self) -> list[str]:
        return split_statements(self.sql)


@dataclass(frozen=True)
class MigrationState:
    """One migration as the database sees it: `applied`, `applied_now`, `pending` or `applied_missing_file`."""

    version: int
    name: str
    checksum: str
    state: str
    applied_at: dt.datetime | None

    def as_row(self) -> dict[str, Any]:
        return {
            "version": self.version, "name": self.name, "state": self.state,
            "checksum": self.checksum, "applied_at": self.applied_at,
        }


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every `NNNN_<what>.sql` in `directory`, by version; stray `.sql` names and repeated versions are errors."""
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_<lowercase_words>.sql")
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(f"{path.name}: version {version:04d} is also used by {migrations[version].file_name}")
        data = path.read_bytes()
        migrations[version] = Migration(
            version=version, name=match["name"], path=path, sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [migrations[v] for v in sorted(migrations)]


def split_statements(sql: str) -> list[str]:
    """Split a file on `;` outside quotes and comments (the native protocol runs one statement per query).

    Comments are dropped; statements are returned stripped, empty ones left out.
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end == -1 else end
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end == -1:
                raise MigrationError("unterminated /* comment")
            i = end + 2
            current.append(" ")
            continue
        if char in "'\"`":
            end = _closing_quote(sql, i)
            current.append(sql[i:end + 1])
            i = end + 1
            continue
        if char == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def _closing_quote(sql: str, start: int) -> int:
    quote = sql[start]
    i = start + 1
    while i < len(sql):
        if sql[i] == "\\":
            i += 2
            continue
        if sql[i] == quote:
            if sql.startswith(quote * 2, i):
                i += 2
                continue
            return i
        i += 1
    raise MigrationError(f"unterminated {quote} quote starting at character {start}")


def ensure_database(settings: Settings) -> None:
    """Create the settings' database if missing (through a connection that does not need it to exist)."""
    client = clickhouse_client(settings, database="")
    try:
        client.execute(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(settings.clickhouse.database)}")
    finally:
        client.disconnect()


def _applied(client: Client) -> dict[int, tuple[str, str, dt.datetime]]:
    """version -> (name, checksum, applied_at); the first record wins if two migrators raced."""
    client.execute(_CREATE_MIGRATIONS_TABLE)
    rows = client.execute(
        f"SELECT version, argMin(name, applied_at), argMin(checksum, applied_at), min(applied_at)"
        f" FROM {MIGRATIONS_TABLE} GROUP BY version"
    )
    return {int(version): (name, checksum, applied_at) for version, name, checksum, applied_at in rows}


def _check_unchanged(migrations: list[Migration], applied: dict[int, tuple[str, str, dt.datetime]]) -> None:
    for migration in migrations:
        record = applied.get(migration.version)
        if record and record[1] != migration.checksum:
            raise MigrationError(
                f"{migration.file_name} was changed after it was applied (applied checksum {record[1][:12]}, "
                f"file now {migration.checksum[:12]}): restore the file and put the change in a new migration"
            )


def _states(
    migrations: list[Migration], applied: dict[int, tuple[str, str, dt.datetime]], applied_now: set[int],
) -> list[MigrationState]:
    states = []
    known = {m.version for m in migrations}
    for migration in migrations:
        record = applied.get(migration.version)
        if migration.version in applied_now:
            state = "applied_now"
        elif record:
            state = "applied"
        else:
            state = "pending"
        states.append(MigrationState(
            migration.version, migration.name, migration.checksum, state, record[2] if record else None,
        ))
    for version in sorted(set(applied) - known):
        name, checksum, applied_at = applied[version]
        states.append(MigrationState(version, name, checksum, "applied_missing_file", applied_at))
    return sorted(states, key=lambda s: s.version)


def _open_ledger(settings: Settings, directory: Path) -> tuple[list[Migration], Client, dict[int, tuple[str, str, dt.datetime]]]:
    """The migration files, a connection, and what the ledger says is applied (checked against the files)."""
    migrations = load_migrations(directory)
    ensure_database(settings)
    client = clickhouse_client(settings)
    try:
        applied = _applied(client)
        _check_unchanged(migrations, applied)
    except BaseException:
        client.disconnect()
        raise
    return migrations, client, applied


def migration_status(settings: Settings, directory: Path = MIGRATIONS_DIR) -> list[MigrationState]:
    """What is applied and what is pending, without changing anything (beyond creating the database)."""
    migrations, client, applied = _open_ledger(settings, directory)
    try:
        return _states(migrations, applied, set())
    finally:
        client.disconnect()


def apply_migrations(settings: Settings, directory: Path = MIGRATIONS_DIR) -> list[MigrationState]:
    """Create the database if missing, apply every pending migration in version order, return all states.

    Refuses to apply anything when an applied migration's file has changed.
    """
    migrations, client, applied = _open_ledger(settings, directory)
    try:
        applied_now: set[int] = set()
        for migration in migrations:
            if migration.version in applied:
                continue
            for statement in migration.statements():
                try:
                    client.execute(statement)
                except Exception as exc:
                    raise MigrationError(f"{migration.file_name}: {server_message(exc)}") from exc
            applied_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
            client.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum, applied_at) VALUES",
                [(migration.version, migration.name, migration.checksum, applied_at)],
            )
            applied[migration.version] = (migration.name, migration.checksum, applied_at)
            applied_now.add(migration.version)
        return _states(migrations, applied, applied_now)
    finally:
        client.disconnect()
