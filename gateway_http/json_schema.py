"""A JSON Schema (draft 2020-12) of an event, generated from its `.avsc`, the one source of truth, for services in
any language: the field names, types, enums, which fields are required, and the `.avsc` docs as descriptions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prismops.schemas import latest

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def json_schema_of(schema_name: str) -> dict[str, Any]:
    version = latest(schema_name)
    definition = version.definition
    document = _record(definition)
    document["$schema"] = DRAFT
    document["$id"] = f"urn:prismops:schema:{schema_name}.v{version.version}"
    document["title"] = definition.get("name", schema_name)
    return document


def _record(definition: Mapping[str, Any]) -> dict[str, Any]:
    properties = {}
    required = []
    for field in definition["fields"]:
        prop = _type(field["type"])
        if field.get("doc"):
            prop["description"] = field["doc"]
        if "default" in field:
            prop["default"] = field["default"]
        else:
            required.append(field["name"])
        properties[field["name"]] = prop
    out: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if definition.get("doc"):
        out["description"] = definition["doc"]
    return out


def _type(kind: Any) -> dict[str, Any]:
    if isinstance(kind, list):
        return {"anyOf": [_type(branch) for branch in kind]}
    if isinstance(kind, str):
        return {
            "null": {"type": "null"}, "boolean": {"type": "boolean"}, "int": {"type": "integer"},
            "long": {"type": "integer"}, "float": {"type": "number"}, "double": {"type": "number"},
            "string": {"type": "string"}, "bytes": {"type": "string", "contentEncoding": "base64"},
        }[kind]
    logical = kind.get("logicalType")
    if logical == "timestamp-micros":
        return {"type": "string", "format": "date-time",
                "description": "ISO-8601 with an offset (or Z); microseconds kept"}
    if logical == "decimal":
        return {"type": "string", "pattern": r"^-?\d+(\.\d+)?$",
                "description": f"exact decimal as a string, at most {kind.get('scale', 0)} decimal places"}
    if kind["type"] == "record":
        return _record(kind)
    if kind["type"] == "enum":
        return {"type": "string", "enum": list(kind["symbols"])}
    if kind["type"] == "map":
        return {"type": "object", "additionalProperties": _type(kind["values"])}
    if kind["type"] == "array":
        return {"type": "array", "items": _type(kind["items"])}
    return _type(kind["type"])
