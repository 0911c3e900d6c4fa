"""Migration files: naming, ordering, checksums and statement splitting (no server needed)."""

from __future__ import annotations

import hashlib

import pytest

from prismops.sinks.migrations import MIGRATIONS_DIR, MigrationError, load_migrations, split_statements


def test_shipped_migrations_are_numbered_from_one_without_gaps_and_create_the_tables():
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    created = " ".join(" ".join(m.statements()) for m in migrations)
    tables = ("cost_lines", "routing_decisions", "dead_letters", "gpu_allocations", "budget_events", "policy_audit")
    for table in tables:
        assert f"CREATE TABLE IF NOT EXISTS {table}" in created


def test_shipped_ddl_stays_in_the_subset_clickhouse_18_16_runs():
    text = " ".join(m.sql for m in load_migrations()).lower()
    # ADD COLUMN IF NOT EXISTS came in 19.1: an 18.16 server rejects the whole ALTER
    for forbidden in ("lowcardinality", "datetime64", " map(", " ttl ", " over (", "add column if not exists"):
        assert forbidden not in text, forbidden
    assert "decimal(38, 12)" in text


def test_every_migration_says_what_it_does_and_every_new_table_what_a_row_is():
    for migration in load_migrations():
        assert migration.sql.startswith(f"-- {migration.name}: "), migration.file_name
        if "CREATE TABLE" in migration.sql:
            assert migration.sql.startswith(f"-- {migration.name}: one row per"), migration.file_name


def test_checksum_is_sha256_of_the_file_bytes():
    for migration in load_migrations():
        assert migration.checksum == hashlib.sha256(migration.path.read_bytes()).hexdigest()


def test_files_load_in_version_order(tmp_path):
    (tmp_path / "0010_later.sql").write_text("SELECT 10")
    (tmp_path / "0002_early.sql").write_text("SELECT 2")
    assert [(m.version, m.name) for m in load_migrations(tmp_path)] == [(2, "early"), (10, "later")]


@pytest.mark.parametrize("bad_name", ["1_short.sql", "0001-dash.sql", "0001_Upper.sql", "create_things.sql"])
def test_badly_named_files_are_errors_naming_the_file(tmp_path, bad_name):
    (tmp_path / bad_name).write_text("SELECT 1")
    with pytest.raises(MigrationError, match=bad_name):
        load_migrations(tmp_path)


def test_a_repeated_version_is_an_error_naming_both_files(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0001_b.sql").write_text("SELECT 2")
    with pytest.raises(MigrationError, match="0001_b.sql.*0001_a.sql|0001_a.sql.*0001_b.sql"):
        load_migrations(tmp_path)


def test_split_statements_ignores_semicolons_in_comments_and_quotes():
    sql = """
    -- a comment; with a semicolon
    CREATE TABLE a (x String COMMENT 'it''s; quoted', y String DEFAULT 'a\\';b');
    /* block; comment */ SELECT `odd;name` FROM a;
    ;
    SELECT "q;q"
    """
    assert split_statements(sql) == [
        "CREATE TABLE a (x String COMMENT 'it''s; quoted', y String DEFAULT 'a\\';b')",
        "SELECT `odd;name` FROM a",
        'SELECT "q;q"',
    ]


def test_unterminated_quote_is_an_error():
    with pytest.raises(MigrationError, match="unterminated"):
        split_statements("SELECT 'oops;")


def test_migrations_dir_ships_inside_the_package():
    assert MIGRATIONS_DIR.name == "migrations" and MIGRATIONS_DIR.parent.name == "sinks"


def test_the_routing_decisions_v2_columns_are_added_in_one_alter():
    [migration] = [m for m in load_migrations() if m.name == "routing_decisions_v2"]
    [statement] = migration.statements()  # all or nothing: a failed run leaves no column half-added
    assert statement.startswith("ALTER TABLE routing_decisions")
    assert "candidate_breaker_state Array(Nullable(String))" in statement
    assert "estimated_cost_usd Nullable(Decimal(38, 12))" in statement
