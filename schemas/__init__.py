"""Avro schemas, the single source of truth for every topic's value.

Files are named `<name>.v<N>.avsc`. Evolution rule: a new version may only add fields with defaults
(or widen per Avro resolution rules), so every older version stays readable with the newest one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastavro

_FILE_NAME = re.compile(r"^(?P<name>[a-z_]+)\.v(?P<version>\d+)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    definition: dict[str, Any]

    @property
    def parsed(self) -> Any:
        return _parse(self.name, self.version)


@cache
def _all() -> dict[str, dict[int, SchemaVersion]]:
    found: dict[str, dict[int, SchemaVersion]] = {}
    for entry in resources.files(__name__).iterdir():
        match = _FILE_NAME.match(entry.name)
        if not match:
            continue
        name, version = match["name"], int(match["version"])
        found.setdefault(name, {})[version] = SchemaVersion(name, version, json.loads(entry.read_text()))
    return found


@cache
def _parse(name: str, version: int) -> Any:
    return fastavro.parse_schema(_all()[name][version].definition)


def schema_names() -> list[str]:
    return sorted(_all())


def versions(name: str) -> list[SchemaVersion]:
    try:
        return [v for _, v in sorted(_all()[name].items())]
    except KeyError:
        raise KeyError(f"no Avro schema named {name!r}; known: {', '.join(schema_names())}") from None


def latest(name: str) -> SchemaVersion:
    return versions(name)[-1]


def get(name: str, version: int | None = None) -> SchemaVersion:
    if version is None:
        return latest(name)
    try:
        return _all()[name][version]
    except KeyError:
        raise KeyError(f"no version {version} of Avro schema {name!r}") from None
