"""Avro schemas, the single source of truth for every topic's value.

Files are named `<name>.v<N>.avsc`. Evolution rule: a new version may only add fields with defaults
(or widen per Avro resolution rules), so every older version stays readable with the newest one.

Batch schemas (`*_batch`) hold an array of another schema's records. Their file names the item by its Avro
full name plus `"prismops.items": "<name>.v<N>"`, and the item's definition is expanded in place on load, so
the item's fields are written once (in its own file) and each batch version pins the item version it carries.
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
_PINNED = re.compile(r"^(?P<name>[a-z_]+)\.v(?P<version>\d+)$")


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
        found.setdefault(name, {})[version] = json.loads(entry.read_text())
    return {
        name: {version: SchemaVersion(name, version, _expand_items(definition, found))
               for version, definition in by_version.items()}
        for name, by_version in found.items()
    }


def _expand_items(definition: Any, found: dict[str, dict[int, Any]]) -> Any:
    """Replace every array's `items` reference that names a `prismops.items` file with that file's definition."""
    if isinstance(definition, list):
        return [_expand_items(branch, found) for branch in definition]
    if not isinstance(definition, dict):
        return definition
    expanded = {key: _expand_items(value, found) for key, value in definition.items()}
    pinned = expanded.pop("prismops.items", None)
    if pinned is not None:
        match = _PINNED.match(pinned)
        if not match or int(match["version"]) not in found.get(match["name"], {}):
            raise ValueError(f"prismops.items {pinned!r} names no shipped schema file")
        expanded["items"] = found[match["name"]][int(match["version"])]
    return expanded


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
