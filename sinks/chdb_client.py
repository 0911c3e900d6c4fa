"""The `execute(query, params)` that sinks and reports use, over an in-process chdb session.

chdb embeds a current ClickHouse engine, so the same migrations, settle statements and report queries that run
on Debian's clickhouse-server 18.16 through clickhouse-driver can be run on today's ClickHouse without a server:
that is what the compatibility test does. Results come back as JSONCompact with decimals quoted, so money is
parsed from its exact text, never through a float. chdb is a dev dependency; import this module only where
chdb is installed.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_OUTPUT_SETTINGS = (
    "output_format_json_quote_decimals = 1, output_format_json_quote_64bit_integers = 1, "
    "output_format_json_quote_denormals = 0"
)
_READS = re.compile(r"^(?:\s|--[^\n]*\n)*(SELECT|WITH|SHOW|EXISTS|DESCRIBE|DESC)\b", re.IGNORECASE)
_WRAPPER = re.compile(r"^(?:Nullable|LowCardinality)\((.*)\)$")
_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def sql_literal(value: Any) -> str:
    """A Python value as a ClickHouse literal, the way clickhouse-driver substitutes %(name)s parameters:
    tuples become (…) (for IN), lists become […] (arrays), datetimes are written in UTC."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        moment = value.astimezone(dt.timezone.utc) if value.tzinfo else value
        return f"'{moment:%Y-%m-%d %H:%M:%S}'"
    if isinstance(value, dt.date):
        return f"'{value:%Y-%m-%d}'"
    if isinstance(value, str):
        return "'" + "".join(_ESCAPES.get(char, char) for char in value) + "'"
    if isinstance(value, tuple):
        return "(" + ", ".join(sql_literal(v) for v in value) + ")"
    if isinstance(value, (list, set, frozenset)):
        return "[" + ", ".join(sql_literal(v) for v in value) + "]"
    raise TypeError(f"no ClickHouse literal for {type(value).__name__}")


def substitute(query: str, params: Mapping[str, Any] | None) -> str:
    if not params:
        return query
    return query % {name: sql_literal(value) for name, value in params.items()}


def parse_value(type_name: str, value: Any) -> Any:
    """A JSONCompact cell as clickhouse-driver would return it for the column's type."""
    if value is None:
        return None
    match = _WRAPPER.match(type_name)
    if match:
        return parse_value(match.group(1), value)
    if type_name.startswith("Array("):
        inner = type_name[len("Array("):-1]
        return [parse_value(inner, item) for item in value]
    if type_name.startswith("Tuple("):
        inner_types = _split_types(type_name[len("Tuple("):-1])
        return tuple(parse_value(t, v) for t, v in zip(inner_types, value))
    if type_name.startswith("Decimal"):
        return decimal.Decimal(str(value))
    if type_name.startswith(("Int", "UInt")):
        return int(value)
    if type_name.startswith("Float"):
        return float(value)
    if type_name == "Date" or type_name == "Date32":
        return dt.date.fromisoformat(value)
    if type_name.startswith("DateTime"):
        return dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    return value


def _split_types(text: str) -> list[str]:
    """Top-level comma split of a type list such as `Date, Tuple(UInt64, String)`."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        depth += char == "("
        depth -= char == ")"
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def _json_cell(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        moment = value.astimezone(dt.timezone.utc) if value.tzinfo else value
        return f"{moment:%Y-%m-%d %H:%M:%S}"
    if isinstance(value, dt.date):
        return f"{value:%Y-%m-%d}"
    if isinstance(value, (list, tuple)):
        return [_json_cell(v) for v in value]
    return value


class ChdbClient:
    """A chdb session in `path` with clickhouse-driver's `execute` shape: DDL returns [], SELECT a list of tuples,
    and `INSERT INTO t (cols) VALUES` with a list of dicts inserts them (as JSONEachRow)."""

    def __init__(self, path: str, database: str = "default") -> None:
        from chdb import session

        self._session = session.Session(path)
        self.database = database

    @classmethod
    def migrated(cls, path: str, database: str) -> "ChdbClient":
        """A session on `database`, created and brought to the newest schema by every shipped migration: the
        same tables the sink writes on the stack, on current ClickHouse."""
        from prismops.sinks.migrations import load_migrations

        client = cls(path)
        client.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
        client.use(database)
        for migration in load_migrations():
            for statement in migration.statements():
                client.execute(statement)
        return client

    def use(self, database: str) -> None:
        self.database = database

    def execute(self, query: str, params: Any = None, **_ignored: Any) -> list[tuple[Any, ...]]:
        stripped = query.strip().rstrip(";")
        if re.search(r"\bVALUES\s*$", stripped, flags=re.IGNORECASE) and isinstance(params, Sequence):
            self._insert(stripped, params)
            return []
        sql = substitute(stripped, params if isinstance(params, Mapping) else None)
        if not _READS.match(sql):
            self._query(sql, "CSV")
            return []
        result = self._query(f"{sql}\nSETTINGS {_OUTPUT_SETTINGS}", "JSONCompact")
        if not result.strip():
            return []
        document = json.loads(result)
        types = [column["type"] for column in document["meta"]]
        return [tuple(parse_value(t, v) for t, v in zip(types, row)) for row in document["data"]]

    def _insert(self, statement: str, rows: Iterable[Mapping[str, Any]]) -> None:
        head = re.sub(r"\bVALUES\s*$", "", statement, flags=re.IGNORECASE).strip()
        body = "\n".join(json.dumps({k: _json_cell(v) for k, v in row.items()}) for row in rows)
        if body:
            self._query(f"{head} FORMAT JSONEachRow\n{body}", "CSV")

    def _query(self, sql: str, fmt: str) -> str:
        if self.database and self.database != "default":
            sql = f"USE {self.database};\n{sql}"
        return self._session.query(sql, fmt).bytes().decode("utf-8")

    def disconnect(self) -> None:
        self._session.close()
