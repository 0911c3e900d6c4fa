"""Build dead-letter records: why a message was rejected, where it came from, and its original bytes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any


def dead_letter_record(
    *,
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]] | None,
    field: str | None,
    rule: str,
    message: str,
    failed_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """Avro maps have unique keys: of repeated header names, the last one's value is kept."""
    return {
        "failed_at": failed_at or dt.datetime.now(dt.timezone.utc),
        "stage": stage,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "error_field": field,
        "error_rule": rule,
        "error_message": message,
        "original_key": key,
        "original_value": value,
        "original_headers": {k: (v or b"") for k, v in (headers or [])},
    }
