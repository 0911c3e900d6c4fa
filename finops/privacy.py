"""Keep personal data out of storage.

- Raw prompts and completions are never accepted: no schema has a field for them, and a JSON event that
  carries one anyway has it dropped (and counted) before anything is decoded further or dead-lettered.
- End-user ids are stored only as HMAC-SHA256 under a secret key: stable per user (so per-user cost can
  be counted), but not reversible or guessable without the key, unlike a plain hash of an email.
- Emails and phone numbers inside free-text labels (and the customer field) are masked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping

# Fields a caller might use to send conversation content; never stored anywhere, not even in the DLQ.
CONTENT_FIELDS = frozenset({"prompt", "prompts", "messages", "completion", "completions", "response", "content",
                            "input_text", "output_text", "system_prompt"})

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A phone number: at least 7 digits, written as +country then groups (+1 415 555 0100, +44 7911 123456),
# an area code in parentheses then groups ((415) 555-0100), or three or more groups separated by spaces,
# dots or dashes (415.555.0100). Plain digit runs without a '+' (order ids, timestamps) and dates
# (2026-11-21, 21.11.2026) are left alone.
_DATE = r"(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4})(?!\d)"
_PHONE = re.compile(
    r"(?<![\w+])(?!" + _DATE + r")"
    r"(?:\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,6}(?:[\s.-]\d{1,6}){1,5}"
    r"|\(\d{1,4}\)[\s.-]?\d{2,4}(?:[\s.-]\d{2,4}){1,3}"
    r"|\d{2,4}(?:[\s.-]\d{2,4}){2,4})(?!\w)"
    r"|\+\d{7,15}(?!\w)"
)

EMAIL_MASK = "[email]"
PHONE_MASK = "[phone]"


def hash_user_id(user_id: str, key: bytes) -> str:
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()


def mask_personal_data(text: str) -> str:
    text = _EMAIL.sub(EMAIL_MASK, text)
    return _PHONE.sub(lambda m: PHONE_MASK if sum(c.isdigit() for c in m.group()) >= 7 else m.group(), text)


def mask_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Masked values; labels whose key names conversation content are dropped altogether."""
    return {key: mask_personal_data(value) for key, value in labels.items() if key.lower() not in CONTENT_FIELDS}


def strip_content_fields(value: bytes | None) -> tuple[bytes | None, list[str]]:
    """For a JSON object carrying prompt/completion fields: the same object without them, and their names.

    Avro values are returned untouched: their schema has no place for content.
    """
    if not value or value.lstrip()[:1] != b"{":
        return value, []
    try:
        document = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return value, []
    if not isinstance(document, dict):
        return value, []
    found = sorted(k for k in document if k.lower() in CONTENT_FIELDS)
    labels = document.get("labels")
    if isinstance(labels, dict):
        found += sorted(f"labels.{k}" for k in labels if str(k).lower() in CONTENT_FIELDS)
    if not found:
        return value, []
    cleaned = {k: v for k, v in document.items() if k.lower() not in CONTENT_FIELDS}
    if isinstance(labels, dict):
        cleaned["labels"] = {k: v for k, v in labels.items() if str(k).lower() not in CONTENT_FIELDS}
    return json.dumps(cleaned).encode(), found
