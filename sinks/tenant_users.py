"""A read-only ClickHouse user per tenant that can read only that tenant's rows.

Two mechanisms, chosen by the server's version:

- ClickHouse 20.4 and later (SQL access control): `CREATE USER … SETTINGS readonly = 1`, SELECT granted on the
  tables that have a tenant, and a row policy per table (`USING tenant = '…'`) — `row_policy_statements`.
- Older servers, Debian's 18.16 among them, have neither row policies nor the users.xml row filter (it came in
  19.x; 18.16 ignores it), and a view does not help: reading a view checks access to the database of the table
  under it. So the tenant gets its own database, `<database>_tenant_<tenant>`, holding a copy of each table that
  has a tenant column, kept current by a materialized view on the main table that inserts the tenant's rows of
  every insert (and filled once from what is already stored). The user, defined in a file of the server's
  users config directory (`users.d/`, which 18.16 reloads by itself), may use only that database, read-only.
  The copies are ReplacingMergeTree like the originals and the reports read them with FINAL, so a row the
  backfill and the view both copied is still counted once.

Tables whose rows belong to no tenant (dead letters, policy audit, settlements, rollups) are not copied;
the tenant's reports read its copy of cost_lines directly (`prismops.sinks.rollups.has_rollups` is false there).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from prismops.sinks.clickhouse import quote_identifier, table_ref

# table -> condition selecting the tenant's rows (%(tenant)s is the tenant's name)
TENANT_FILTERS: dict[str, str] = {
    "cost_lines": "tenant = %(tenant)s",
    "gpu_allocations": "tenant = %(tenant)s",
    "routing_decisions": "tenant = %(tenant)s",
    "anomalies": "tenant = %(tenant)s",
    "budget_events": "scope = 'tenant' AND scope_id = %(tenant)s",
}
READONLY_PROFILE = "prismops_tenant_readonly"
ROW_POLICY_VERSION = (20, 4)
_SLUG = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class TenantAccess:
    tenant: str
    user: str
    database: str  # what the user connects to and reads
    mechanism: str  # tenant_database or row_policy
    tables: list[str]
    users_file: Path | None = None
    statements: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "user": self.user, "database": self.database, "mechanism": self.mechanism,
                "tables": ", ".join(self.tables), "users_file": self.users_file}


def tenant_slug(tenant: str) -> str:
    """An identifier-safe form of the tenant; a hash suffix keeps two tenants that differ only in punctuation
    or case apart."""
    slug = _SLUG.sub("_", tenant.lower()).strip("_") or "tenant"
    if slug != tenant:
        slug = f"{slug}_{hashlib.sha256(tenant.encode()).hexdigest()[:8]}"
    return slug


def tenant_database(database: str, tenant: str) -> str:
    return f"{database}_tenant_{tenant_slug(tenant)}"


def default_user(tenant: str) -> str:
    return f"tenant_{tenant_slug(tenant)}"


def server_version(client: Any) -> tuple[int, ...]:
    ((version,),) = client.execute("SELECT version()")
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def password_sha256(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def users_xml(user: str, password: str, database: str, networks: tuple[str, ...]) -> str:
    """The users.d file: a read-only user that may use only `database`; the password is stored as SHA-256."""
    ips = "".join(f"<ip>{xml_escape(ip)}</ip>" for ip in networks)
    return (
        '<?xml version="1.0"?>\n'
        "<!-- Written by `prismops db tenant-user`: a read-only user of one tenant's database. -->\n"
        "<yandex>\n"
        f"    <profiles><{READONLY_PROFILE}><readonly>1</readonly></{READONLY_PROFILE}></profiles>\n"
        "    <users>\n"
        f"        <{user}>\n"
        f"            <password_sha256_hex>{password_sha256(password)}</password_sha256_hex>\n"
        f"            <networks>{ips}</networks>\n"
        f"            <profile>{READONLY_PROFILE}</profile>\n"
        "            <quota>default</quota>\n"
        f"            <allow_databases><database>{xml_escape(database)}</database></allow_databases>\n"
        f"        </{user}>\n"
        "    </users>\n"
        "</yandex>\n"
    )


def users_file(users_dir: Path, user: str) -> Path:
    return users_dir / f"prismops_{user}.xml"


def _write_atomically(path: Path, text: str) -> None:
    """The server reloads the directory by itself: it must never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _columns(client: Any, database: str, table: str) -> list[str]:
    """The columns an INSERT can write (not MATERIALIZED or ALIAS ones), in table order."""
    return [name for name, _type, default_kind, *_rest in client.execute(f"DESCRIBE TABLE {table_ref(database, table)}")
            if default_kind not in ("MATERIALIZED", "ALIAS")]


def _existing_tables(client: Any, database: str) -> set[str]:
    return {name for (name,) in client.execute(
        "SELECT name FROM system.tables WHERE database = %(database)s", {"database": database})}


def create_tenant_database(client: Any, database: str, tenant: str) -> tuple[str, list[str]]:
    """The tenant's database with a filtered copy of each tenant table and the views that keep it current.
    Re-running is safe: what exists is kept, and only a newly created feed is backfilled."""
    mirror = tenant_database(database, tenant)
    client.execute(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(mirror)}")
    present = _existing_tables(client, database)
    mirrored_now = _existing_tables(client, mirror)
    tables = []
    for table, condition in TENANT_FILTERS.items():
        if table not in present:
            continue
        tables.append(table)
        source, copy = table_ref(database, table), table_ref(mirror, table)
        feed = table_ref(mirror, f"{table}_feed")
        columns = ", ".join(quote_identifier(c) for c in _columns(client, database, table))
        where = condition % {"tenant": _sql_string(tenant)}
        client.execute(f"CREATE TABLE IF NOT EXISTS {copy} AS {source}")
        if f"{table}_feed" in mirrored_now:
            continue
        client.execute(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {feed} TO {copy} AS"
                       f" SELECT {columns} FROM {source} WHERE {where}")
        client.execute(f"INSERT INTO {copy} ({columns}) SELECT {columns} FROM {source} WHERE {where}")
    return mirror, tables


def drop_tenant_database(client: Any, database: str, tenant: str) -> None:
    """Feeds first (a feed whose copy is gone would fail every insert into the main table), then the rest."""
    mirror = tenant_database(database, tenant)
    for table in TENANT_FILTERS:
        client.execute(f"DROP TABLE IF EXISTS {table_ref(mirror, f'{table}_feed')}")
    client.execute(f"DROP DATABASE IF EXISTS {quote_identifier(mirror)}")


def row_policy_statements(client: Any, database: str, tenant: str, user: str, password: str) -> list[str]:
    """For servers with SQL access control: the user, SELECT on the tenant tables, and one row policy each.
    Servers before 23.x hide every row of a table with a policy from users no policy names: give other readers
    a permissive policy (`USING 1 TO …`) there."""
    present = _existing_tables(client, database)
    statements = [
        f"CREATE USER IF NOT EXISTS {quote_identifier(user)} IDENTIFIED WITH sha256_hash BY "
        f"{_sql_string(password_sha256(password))} SETTINGS readonly = 1",
    ]
    for table, condition in TENANT_FILTERS.items():
        if table not in present:
            continue
        ref = table_ref(database, table)
        statements.append(f"GRANT SELECT ON {ref} TO {quote_identifier(user)}")
        statements.append(
            f"CREATE ROW POLICY IF NOT EXISTS {quote_identifier(f'prismops_{user}')} ON {ref} FOR SELECT"
            f" USING {condition % {'tenant': _sql_string(tenant)}} TO {quote_identifier(user)}"
        )
    return statements


def create_tenant_user(
    client: Any, database: str, tenant: str, *, password: str, users_dir: Path, user: str | None = None,
    networks: tuple[str, ...] = ("127.0.0.1", "::1"),
) -> TenantAccess:
    user = user or default_user(tenant)
    quote_identifier(user)
    if server_version(client) >= ROW_POLICY_VERSION:
        statements = row_policy_statements(client, database, tenant, user, password)
        for statement in statements:
            client.execute(statement)
        tables = [t for t in TENANT_FILTERS if t in _existing_tables(client, database)]
        return TenantAccess(tenant, user, database, "row_policy", tables, statements=statements)
    mirror, tables = create_tenant_database(client, database, tenant)
    path = users_file(users_dir, user)
    _write_atomically(path, users_xml(user, password, mirror, networks))
    return TenantAccess(tenant, user, mirror, "tenant_database", tables, users_file=path)


def drop_tenant_user(client: Any, database: str, tenant: str, *, users_dir: Path, user: str | None = None) -> None:
    user = user or default_user(tenant)
    if server_version(client) >= ROW_POLICY_VERSION:
        for table in TENANT_FILTERS:
            client.execute(f"DROP ROW POLICY IF EXISTS {quote_identifier(f'prismops_{user}')} ON "
                           f"{table_ref(database, table)}")
        client.execute(f"DROP USER IF EXISTS {quote_identifier(user)}")
        return
    users_file(users_dir, user).unlink(missing_ok=True)
    drop_tenant_database(client, database, tenant)
