"""A tenant's read-only user on Debian's clickhouse-server 18.16 reads its own rows and nothing else: not the
other tenant's rows, not the main database, not the other tenant's database, and it cannot write; rows that
arrive after the user was created reach only the right tenant; its reports total its own cost exactly."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

from prismops.infra.config import StackPaths
from prismops.settings import Settings
from prismops.testing import clickhouse
from prismops.sinks import reports
from prismops.sinks.base import SinkRecord
from prismops.sinks.clickhouse import CostLineSink
from prismops.sinks.migrations import apply_migrations
from prismops.testing.synthetic_month import SyntheticMonth, synthetic_month
from prismops.sinks.tenant_users import create_tenant_user, drop_tenant_user

MONTH = dt.date(2025, 6, 1)
ACCESS_DENIED = 291
READONLY = 164


def write_lines(client: Client, database: str, lines: list[dict]) -> None:
    sink = CostLineSink(client, database)
    sink.open()
    assert sink.write([SinkRecord("topic", 0, n, None, line) for n, line in enumerate(lines)]).rows_written == len(lines)


def connect_when_ready(settings: Settings, user: str, password: str, database: str) -> Client:
    """The server reloads users.d by itself within a few seconds."""
    deadline = time.monotonic() + 20
    while True:
        client = Client(settings.clickhouse_host, port=settings.clickhouse_port, user=user, password=password,
                        database=database)
        try:
            client.execute("SELECT 1")
            return client
        except ServerException:
            client.disconnect()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture()
def tenants(isolated_settings: Settings) -> Iterator[tuple[Settings, SyntheticMonth, dict[str, tuple[str, str, str]]]]:
    settings = isolated_settings
    database = settings.clickhouse.database
    apply_migrations(settings)
    admin = clickhouse(settings)
    data = synthetic_month(MONTH, llm_calls_per_day=10)
    write_lines(admin, database, data.cost_lines)
    users_dir = StackPaths.from_settings(settings.stack).clickhouse_dir / "users.d"
    created: dict[str, tuple[str, str, str]] = {}
    try:
        for tenant in ("acme", "initech"):
            user, password = f"{database}_{tenant}", f"secret-{tenant}-{database}"
            access = create_tenant_user(admin, database, tenant, password=password, users_dir=users_dir, user=user)
            assert access.mechanism == "tenant_database" and "cost_lines" in access.tables
            assert isinstance(access.users_file, Path) and access.users_file.is_file()
            created[tenant] = (user, password, access.database)
        yield settings, data, created
    finally:
        for tenant, (user, _password, _db) in created.items():
            drop_tenant_user(admin, database, tenant, users_dir=users_dir, user=user)
        admin.disconnect()


def test_a_tenant_user_reads_only_its_own_rows(tenants: tuple[Settings, SyntheticMonth, dict]) -> None:
    settings, data, created = tenants
    user, password, own_database = created["acme"]
    acme = connect_when_ready(settings, user, password, own_database)
    try:
        assert acme.execute("SELECT DISTINCT tenant FROM cost_lines") == [("acme",)]
        acme_lines = [line for line in data.cost_lines if line["tenant"] == "acme"]
        ((count, total),) = acme.execute("SELECT count(), sum(cost_usd) FROM cost_lines FINAL")
        assert (count, total) == (len(acme_lines), sum((line["cost_usd"] for line in acme_lines), Decimal(0)))

        report = reports.showback(acme, own_database, ["team"], since=MONTH, until=dt.date(2025, 7, 1))
        assert report.total["cost_usd"] == total

        for forbidden in (f"{settings.clickhouse.database}.cost_lines", f"{created['initech'][2]}.cost_lines"):
            with pytest.raises(ServerException) as denied:
                acme.execute(f"SELECT count() FROM {forbidden}")
            assert denied.value.code == ACCESS_DENIED
        with pytest.raises(ServerException) as refused:
            acme.execute("INSERT INTO cost_lines (line_id) VALUES", [{"line_id": "x"}])
        assert refused.value.code in (READONLY, ACCESS_DENIED)

        newcomers = [dict(line, line_id=f"late-{n}", source_event_id=f"late-{n}", tenant=tenant)
                     for n, (line, tenant) in enumerate(zip(data.cost_lines, ("acme", "initech", "initech")))]
        admin = clickhouse(settings)
        write_lines(admin, settings.clickhouse.database, newcomers)
        admin.disconnect()
        assert acme.execute("SELECT line_id FROM cost_lines WHERE line_id LIKE 'late-%'") == [("late-0",)]
    finally:
        acme.disconnect()
