"""How every CLI command prints: a rich table for people, JSON with `--format json` for scripts."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

FORMAT_OPTION = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="table for people, json for scripts",
)

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


def emit_table(rows: Sequence[Mapping[str, Any]], title: str | None = None, columns: Sequence[str] | None = None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(to_jsonable(row.get(c))) for c in columns))
    stdout_console.print(table)


def emit(rows: Sequence[Mapping[str, Any]], fmt: str, title: str | None = None, columns: Sequence[str] | None = None) -> None:
    if fmt == "json":
        emit_json(list(rows))
    else:
        emit_table(rows, title=title, columns=columns)


def fail(message: str, exit_code: int = 1) -> NoReturn:
    """Print an error to stderr, on one line however long, and exit non-zero."""
    stderr_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise SystemExit(exit_code)
