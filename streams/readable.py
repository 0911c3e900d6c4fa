"""Topic values as JSON people and scripts can read, whatever wire format wrote them (`prismops topics tail`).

Every format PrismOps writes or accepts is decoded with the topic's own codec: Avro single-object, Confluent
wire format (with a schema registry), JSON objects and arrays, and batch records, which become one line per
item (`batch_index`). Values come back in the plain JSON shape the codecs accept on input (decimals as strings,
timestamps as ISO-8601), so a line can be pasted back as a JSON event.
"""

from __future__ import annotations

from typing import Any

from prismops.streams.codecs import BATCH_SCHEMAS, SINGLE_OBJECT_MAGIC, CodecError, batch_codec_for, codec_for, to_json
from prismops.streams.schema_registry import confluent_schema_id, is_confluent_framed


def wire_format(data: bytes | None) -> str:
    """Which of our wire formats `data` is in: single-object, confluent, json or unknown (empty: empty)."""
    if not data:
        return "empty"
    if data[:2] == SINGLE_OBJECT_MAGIC:
        return "single-object"
    if is_confluent_framed(data):
        return "confluent"
    if data.lstrip()[:1] in (b"{", b"["):
        return "json"
    return "unknown"


def readable_values(schema: str, data: bytes | None) -> list[dict[str, Any]]:
    """One dict per record (a batch gives one per item): `format`, `batch_index` (None for a single record),
    `schema_id` (Confluent only), and `value` (JSON-able) or `error` {field, rule, message}."""
    fmt = wire_format(data)
    base: dict[str, Any] = {"format": fmt}
    if fmt == "confluent":
        base["schema_id"] = confluent_schema_id(data or b"")
    try:
        if schema in BATCH_SCHEMAS:
            decoded = batch_codec_for(schema).decode(data)
            single = len(decoded.items) == 1 and decoded.items[0].original is not None
            out = []
            for index, item in enumerate(decoded.items):
                row = base | {"batch_index": None if single else index}
                if item.error is not None:
                    row["error"] = _error(item.error)
                else:
                    row["value"] = to_json(item.value)
                out.append(row)
            return out
        return [base | {"batch_index": None, "value": to_json(codec_for(schema).decode(data))}]
    except CodecError as error:
        return [base | {"batch_index": None, "error": _error(error)}]


def _error(error: CodecError) -> dict[str, Any]:
    return {"field": error.field, "rule": error.rule, "message": error.message}
