"""`prismops recommend gpu --from-clickhouse` option rules, checked before any connection (no stack needed)."""

from __future__ import annotations

from click.testing import CliRunner

from prismops.cli.app import main
from prismops.settings import Settings


def invoke(*args: str):
    return CliRunner().invoke(main, ["recommend", "gpu", *args], obj=Settings())


def test_exactly_one_input(tmp_path):
    events = tmp_path / "e.jsonl"
    events.write_text("")
    for args in ([], ["--events", str(events), "--from-clickhouse"]):
        result = invoke(*args)
        assert result.exit_code == 1 and "exactly one of --profiles, --events, --from-clickhouse" in result.stderr


def test_date_options_only_with_from_clickhouse_and_days_or_a_range(tmp_path):
    events = tmp_path / "e.jsonl"
    events.write_text("")
    result = invoke("--events", str(events), "--days", "7")
    assert result.exit_code == 1 and "go with --from-clickhouse" in result.stderr
    result = invoke("--from-clickhouse", "--days", "7", "--since", "2026-12-01")
    assert result.exit_code == 1 and "--days or --since/--until" in result.stderr
    result = invoke("--from-clickhouse", "--since", "2026-12-02", "--until", "2026-12-01")
    assert result.exit_code == 1 and "must be after" in result.stderr
    assert invoke("--from-clickhouse", "--days", "0").exit_code == 2
