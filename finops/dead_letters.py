"""Build dead-letter records: why a message was rejected, where it came from, and what may be kept of it.

The record (schema `dead_letter`, topic prismops.dlq.v1, ClickHouse `dead_letters`) is stored at rest, so
it keeps no personal data unless asked to (`settings.pii.dead_letter_redaction`):

- strict (the default): the value through `privacy.redact_for_storage` (content fields removed at any
  depth, emails and phone numbers masked, unparsable bytes replaced by their length, SHA-256 and a redacted
  prefix); the key, every header value, the error message and the error field through `privacy.redact_text`
  (bytes decoded with replacement characters, masked, encoded as UTF-8 again); headers named as content
  are left out.
- verbatim: everything as received, for synthetic data only.

Either way a stored value is at most VALUE_MAX_BYTES: a longer one (a 900 KB name, say) is kept as its length,
SHA-256 and a redacted prefix, so a dead letter always fits in one record under the broker's limit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
import hashlib
import json
from typing import Any

from prismops.finops.privacy import (
    check_redaction_mode,
    is_content_field,
    mask_personal_data,
    redact_bytes_text,
    redact_for_storage,
    redact_text,
    redacted_prefix,
)

VALUE_MAX_BYTES = 262_144


def oversized_summary(value: bytes) -> bytes:
    return json.dumps({
        "redacted": "oversized", "length": len(value), "sha256": hashlib.sha256(value).hexdigest(),
        "prefix": redacted_prefix(value),
    }, separators=(",", ":")).encode()


def _bounded(value: bytes | None) -> bytes | None:
    return oversized_summary(value) if value is not None and len(value) > VALUE_MAX_BYTES else value


def _headers(headers: Iterable[tuple[str, bytes | None]] | None, strict: bool) -> dict[str, bytes]:
    """Avro maps have unique keys: of repeated header names, the last one's value is kept."""
    if not strict:
        return {k: (v or b"") for k, v in (headers or [])}
    return {mask_personal_data(k): (redact_bytes_text(v) or b"") for k, v in (headers or []) if not is_content_field(k)}


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
    redaction: str = "strict",
) -> dict[str, Any]:
    """The dead-letter record, redacted per `redaction` ("strict" or "verbatim", see the module docstring)."""
    strict = check_redaction_mode(redaction) == "strict"
    return {
        "failed_at": failed_at or dt.datetime.now(dt.timezone.utc),
        "stage": stage,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "error_field": redact_text(field) if strict and field is not None else field,
        "error_rule": rule,
        "error_message": redact_text(message) if strict else message,
        "original_key": _bounded(redact_bytes_text(key) if strict else key),
        "original_value": _bounded(redact_for_storage(value, redaction)),
        "original_headers": _headers(headers, strict),
    }
