"""One output vocabulary for every command: compact numbers that fit, --wide for whole ones, "no rows" said,
strict --where, one JSON shape for list reports, one date vocabulary."""

from __future__ import annotations

from decimal import Decimal

import click
import pytest
from click.testing import CliRunner

from prismops.cli.commands.report import parse_where, sum_columns
from prismops.cli.output import FORMAT_OPTION, _Display, compact_number, emit_table, table_cell


@pytest.mark.parametrize(("value", "money", "shown"), [
    (4_612_776, False, "4.6M"), (12_345, False, "12.3k"), (5_000, False, None), (999, False, None),
    (Decimal("1234.5"), True, "$1.2k"), (Decimal("-2500000"), True, "-$2.5M"), (Decimal("12.345678"), True, None),
    (3 * 10**12, False, "3.0T"),
])
def test_compact_numbers(value, money, shown):
    assert compact_number(value, money) == shown


@click.command()
@FORMAT_OPTION
def table_command(fmt: str) -> None:
    emit_table([{"model": "anthropic/claude-sonnet-4-20250514-long-name", "input_tokens": 4_612_776,
                 "cost_usd": Decimal("1234.567891234567")}], title="t")


@click.command()
@FORMAT_OPTION
def empty_command(fmt: str) -> None:
    emit_table([], title="cost by team")


def test_tables_are_compact_by_default_and_whole_with_wide_and_never_cut_a_cell():
    runner = CliRunner()
    compact = runner.invoke(table_command, [], terminal_width=60)
    assert "4.6M" in compact.output and "$1.2k" in compact.output
    assert "anthropic/claude-sonnet-4-20250514-long-name" in compact.output.replace("│", "").replace("\n", "").replace(" ", "")
    wide = runner.invoke(table_command, ["--wide"])
    assert "4612776" in wide.output and "1234.567891234567" in wide.output


def test_a_count_in_a_column_named_after_money_is_not_shown_as_dollars(monkeypatch):
    monkeypatch.setattr(_Display, "wide", False)  # an earlier --wide in this process sticks, as in one CLI run
    assert table_cell("tenants_with_budgets", 10_000) == "10.0k"
    assert table_cell("budget_usd", Decimal("10000")) == "$10.0k"


def test_an_empty_report_says_so():
    result = CliRunner().invoke(empty_command, [])
    assert result.exit_code == 0 and "cost by team: no rows" in result.output


@pytest.mark.parametrize("item", ["team==x", "team", "=x", "team=", "team!=x", "nosuch=x"])
def test_where_is_parsed_strictly(item):
    with pytest.raises(ValueError, match="--where"):
        parse_where(item)


def test_where_takes_dimension_equals_value():
    assert parse_where(" team = devtools ") == ("team", "devtools")


def test_a_list_reports_total_sums_numbers_exactly_and_labels_itself():
    rows = [{"team": "a", "lines": 2, "cost_usd": Decimal("0.1")}, {"team": "b", "lines": 3, "cost_usd": Decimal("0.2")}]
    assert sum_columns(rows, ["team", "lines", "cost_usd"]) == {"team": "TOTAL", "lines": 5, "cost_usd": Decimal("0.3")}


def test_every_date_range_command_takes_since_until_and_from_to():
    from prismops.cli.app import main

    for command in (["report", "spend"], ["report", "costs"], ["report", "showback"], ["db", "settle"]):
        result = CliRunner().invoke(main, [*command, "--help"])
        assert "--since, --from" in result.output and "--until, --to" in result.output, command
