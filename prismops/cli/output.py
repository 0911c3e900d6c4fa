"""How every CLI command prints: a rich table for people, JSON with `--format json` for scripts."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from decimal import Decimal
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

_FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="table for people, json for scripts",
)


class _Display:
    """How tables show numbers: compact (4.6M, $1.2k) so they fit the terminal, or whole with `--wide`."""

    wide = False


def _set_wide(_ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    _Display.wide = _Display.wide or bool(value)
    return value


WIDE_OPTION = click.option("--wide", is_flag=True, expose_value=False, callback=_set_wide,
                           help="tables show every number whole (default: compact, 4.6M tokens, $1.2k)")


def FORMAT_OPTION(function):  # noqa: N802 (used as a decorator constant, like click's options)
    """`--format table|json` and `--wide`, on every command that prints."""
    return _FORMAT(WIDE_OPTION(function))

# Piped output is not cut to 80 columns: scripts get whole lines (or use --format json).
stdout_console = Console(width=None if sys.stdout.isatty() else 160)
stderr_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def to_jsonable(value: Any) -> Any:
    """Decimals become strings so money never passes through a float."""
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    return value


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(payload), indent=2, sort_keys=False) + "\n")


MONEY_WORDS = ("usd", "cost", "spend", "spent", "price", "budget")
_UNITS = ((Decimal(10) ** 12, "T"), (Decimal(10) ** 9, "B"), (Decimal(10) ** 6, "M"), (Decimal(10) ** 3, "k"))


def compact_number(value: int | Decimal, money: bool = False) -> str | None:
    """4612776 → 4.6M, Decimal('1234.5') as money → $1.2k; None for numbers that are short already (they are
    shown whole, every decimal kept)."""
    number = Decimal(value)
    magnitude = abs(number)
    for size, unit in _UNITS:
        if magnitude >= size * 10 or (magnitude >= size and (unit != "k" or money)):
            shown = (magnitude / size).quantize(Decimal("0.1"))
            return f"{'-' if number < 0 else ''}{'$' if money else ''}{shown}{unit}"
    return None


def table_cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if not _Display.wide and isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        # money is always a Decimal here; an int in a column named after money is a count (tenants_with_budgets)
        money = isinstance(value, Decimal) and any(word in column.lower() for word in MONEY_WORDS)
        compact = compact_number(value, money=money)
        if compact is not None:
            return compact
    return str(to_jsonable(value))


def emit_table(rows: Sequence[Mapping[str, Any]], title: str | None = None, columns: Sequence[str] | None = None) -> None:
    """Cells wrap instead of being cut; with no rows the table says so (stderr) instead of printing nothing."""
    columns = list(columns or (rows[0].keys() if rows else []))
    if not rows:
        stderr_console.print(f"{title + ': ' if title else ''}no rows", highlight=False, soft_wrap=True)
        return
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(table_cell(c, row.get(c)) for c in columns))
    stdout_console.print(table)


def report_json(title: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]],
                total: Mapping[str, Any] | None) -> dict[str, Any]:
    """The one JSON shape of every report: what it is, its columns, its rows and its total row (or null)."""
    return {"title": title, "columns": list(columns), "rows": list(rows), "total": total}


def emit(rows: Sequence[Mapping[str, Any]], fmt: str, title: str | None = None, columns: Sequence[str] | None = None) -> None:
    if fmt == "json":
        emit_json(list(rows))
    else:
        emit_table(rows, title=title, columns=columns)


def fail(message: str, exit_code: int = 1) -> NoReturn:
    """Print an error to stderr, on one line however long, and exit non-zero."""
    stderr_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise SystemExit(exit_code)
