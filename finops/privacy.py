"""Keep personal data out of storage.

- Raw prompts and completions are never accepted: no schema has a field for them, and a JSON event that
  carries one anyway, at any depth, has it dropped (and counted) before anything is decoded further or
  dead-lettered.
- End-user ids are stored only as HMAC-SHA256 under a secret key: stable per user (so per-user cost can
  be counted), but not reversible or guessable without the key, unlike a plain hash of an email.
- Emails and phone numbers inside free-text labels (and the customer field) are masked.
- What a dead letter keeps of a rejected message (`redact_for_storage`, `redact_text`) is redacted the same
  way at any depth, and bytes that cannot be parsed are never stored verbatim (see `redact_for_storage`).

Which field names are conversation content (`is_content_field`): a name is content when

1. its lower-cased form is one of `CONTENT_FIELDS` (`prompt`, `messages`, `response`, `chat_history`, ...), or
2. one of its words is a `CONTENT_WORDS` word (prompt, message, completion, content, conversation,
   transcript, singular or plural) and no word after it is a `MEASURE_WORDS` word (chars, tokens, count,
   id, ...). Words are split at `_`, `-`, `.`, spaces and camelCase humps, compared lower-cased.

So `prompt_text`, `userMessage`, `system_prompt`, `chat_history`, `Content` are content; `prompt_chars`,
`prompt_tokens`, `completionTokens`, `prompt_tokens_details`, `message_id` and `content_type` are not (they
are counts and references we rely on). `error_message` and `message` are content by rule 2: in a JSON
document we cannot tell a system text from a user's words, so the conservative reading wins. Fields an Avro
schema declares are never content (a schema has no place for conversations); in Avro maps the rule applies.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import io
import json
import re
import unicodedata
import uuid
from collections.abc import Mapping
from functools import cache
from typing import Any

import fastavro

from prismops import schemas
from prismops.streams.codecs import SINGLE_OBJECT_MAGIC, schema_fingerprint

# Fields a caller might use to send conversation content; never stored anywhere, not even in the DLQ.
CONTENT_FIELDS = frozenset({"prompt", "prompts", "messages", "completion", "completions", "response", "content",
                            "input_text", "output_text", "system_prompt", "instructions", "chat_history"})
# A name with one of these words is content (rule 2 of the module docstring) ...
CONTENT_WORDS = frozenset({"prompt", "prompts", "message", "messages", "completion", "completions", "content",
                           "contents", "conversation", "conversations", "transcript", "transcripts"})
# ... unless a later word says it only counts, measures or refers to the content.
MEASURE_WORDS = frozenset({"chars", "characters", "tokens", "bytes", "length", "len", "count", "counts", "size",
                           "words", "lines", "ms", "seconds", "id", "ids", "hash", "sha256", "md5", "checksum",
                           "type", "kind", "version", "code", "status", "format", "encoding", "language",
                           "disposition", "schema", "bucket", "cost", "usd"})

# The lookbehind lets a match start only where a run of address characters starts: without it a long run
# with no '@' (a 900 KB name) is rescanned from every position, quadratic time that froze the worker.
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A phone number: at least 7 digits, written as +country then groups (+1 415 555 0100, +44 7911 123456),
# an area code in parentheses then groups ((415) 555-0100), or three or more groups separated by spaces,
# dots or dashes (415.555.0100). Plain digit runs without a '+' (order ids, timestamps) and dates
# (2026-11-21, 21.11.2026) are left alone, and so are digit groups inside a longer hyphen or dot joined token: the
# middle of a UUID (739a3198-7089-4906-9891-eef34eed4f52) or a version string is not a phone number.
_DATE = r"(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4})(?!\d)"
_PHONE = re.compile(
    r"(?<![\w+])(?<!\w[-.])(?!" + _DATE + r")"
    r"(?:\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,6}(?:[\s.-]\d{1,6}){1,5}"
    r"|\(\d{1,4}\)[\s.-]?\d{2,4}(?:[\s.-]\d{2,4}){1,3}"
    r"|\d{2,4}(?:[\s.-]\d{2,4}){2,4})(?![-.]?\w)"
    r"|\+\d{7,15}(?!\w)"
)
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")

EMAIL_MASK = "[email]"
PHONE_MASK = "[phone]"
CONTENT_MASK = "[content]"

REDACTION_MODES = ("strict", "verbatim")
TEXT_MAX_CHARS = 2000
"""`redact_text` keeps at most this many characters (then `TRUNCATED_MARK`)."""
TRUNCATED_MARK = "…[truncated]"
PREFIX_CHARS = 64
"""Characters of redacted prefix an unparsable value keeps."""
PREFIX_WINDOW_BYTES = 4096
"""Bytes read to build that prefix: masking and content removal see this much, so a value cut at the prefix
boundary cannot leave half an email behind."""
TEXT_MASK_LIMIT_CHARS = 1_000_000
"""`redact_text` masks the whole text up to this size; beyond it, this much (cut at a safe boundary)."""
# Characters an email or a phone number may be written with: a window is cut before a trailing run of them,
# so the text masked never ends in half of one.
_PII_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+@()- \t\n\r\f\v")


def hash_user_id(user_id: str, key: bytes) -> str:
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()


class ShortTextMemo(dict):
    """Answers for short texts remembered, at most `entries` of them (forgotten all at once when full): label
    keys and values and customer names recur in every batch, and the pricing stage masked each one per event
    (4% of a loaded worker, py-spy). Long texts are never kept, so a huge value cannot pin memory."""

    def __init__(self, entries: int = 8192, max_chars: int = 256):
        super().__init__()
        self.entries, self.max_chars = entries, max_chars

    def remember(self, text: str, answer: Any) -> Any:
        if len(text) <= self.max_chars:
            if len(self) >= self.entries:
                self.clear()
            self[text] = answer
        return answer


_masked_texts = ShortTextMemo()
_content_names = ShortTextMemo()


def mask_personal_data(text: str) -> str:
    masked = _masked_texts.get(text)
    if masked is not None:
        return masked
    masked = _masked_copy(text)
    if masked != text:
        return masked  # a text holding personal data is masked every time, never kept in memory
    return _masked_texts.remember(text, masked)


def _masked_copy(text: str) -> str:
    masked = _EMAIL.sub(EMAIL_MASK, text)
    return _PHONE.sub(lambda m: PHONE_MASK if sum(c.isdigit() for c in m.group()) >= 7 else m.group(), masked)


def is_content_field(name: object) -> bool:
    """Whether a field named `name` carries conversation content (the rule in the module docstring)."""
    text = str(name)
    known = _content_names.get(text)
    if known is not None:
        return known
    return _content_names.remember(text, _names_content(text))


def _names_content(text: str) -> bool:
    if text.lower() in CONTENT_FIELDS:
        return True
    words = [w.lower() for w in _WORD.findall(text)]
    for index, word in enumerate(words):
        if word in CONTENT_WORDS and not MEASURE_WORDS.intersection(words[index + 1:]):
            return True
    return False


def mask_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Masked values; labels whose key names conversation content are dropped altogether."""
    return {key: mask_personal_data(value) for key, value in labels.items() if not is_content_field(key)}


# --- JSON ----------------------------------------------------------------------------------------------------

def _load_json(value: bytes) -> Any:
    """Numbers with a fraction or exponent as Decimal, so re-serializing never changes a digit."""
    return json.loads(value, parse_float=decimal.Decimal)


def _dump_json(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dump_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump_json(v) for v in value) + "]"
    if isinstance(value, decimal.Decimal):
        return str(value)
    return json.dumps(value)


def _without_content(node: Any, path: str, found: list[str]) -> Any:
    """`node` without content fields at any depth; their dotted paths (`[]` for list items) go to `found`."""
    if isinstance(node, dict):
        kept = {}
        for key, child in node.items():
            child_path = f"{path}.{key}" if path else str(key)
            if is_content_field(key):
                found.append(mask_personal_data(child_path))
            else:
                kept[key] = _without_content(child, child_path, found)
        return kept
    if isinstance(node, list):
        return [_without_content(child, f"{path}[]", found) for child in node]
    return node


def strip_content_fields(value: bytes | None) -> tuple[bytes | None, list[str]]:
    """For a JSON object (or array of objects: a batch) carrying content fields at any depth: the same value
    without them, and their names.

    Names are dotted paths (`labels.completion`, `metadata.prompt`, `turns[].content`; `[].prompt` in a batch),
    emails and phones in them masked, sorted. Anything else comes back untouched, and so does a value without
    content (byte for byte). Avro values are returned untouched: their schema has no place for content.
    """
    if not value or value.lstrip()[:1] not in (b"{", b"["):
        return value, []
    try:
        document = _load_json(value)
        if not isinstance(document, (dict, list)):
            return value, []
        found: list[str] = []
        cleaned = _without_content(document, "", found)
        if not found:
            return value, []
        return _dump_json(cleaned).encode(), sorted(found)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return value, []


def _unique_key(key: str, taken: Mapping[str, Any]) -> str:
    """Two keys masked to the same text (`[email]`) stay two entries: `[email]`, `[email]#2`, ..."""
    if key not in taken:
        return key
    number = 2
    while f"{key}#{number}" in taken:
        number += 1
    return f"{key}#{number}"


def _redact_json(node: Any) -> Any:
    """Content fields dropped, emails and phones masked in every string and key, at any depth."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, child in node.items():
            if not is_content_field(key):
                out[_unique_key(mask_personal_data(key), out)] = _redact_json(child)
        return out
    if isinstance(node, list):
        return [_redact_json(child) for child in node]
    if isinstance(node, str):
        return mask_personal_data(node)
    return node


# --- Avro single-object --------------------------------------------------------------------------------------

@cache
def _writers_by_fingerprint() -> dict[bytes, schemas.SchemaVersion]:
    return {schema_fingerprint(version.parsed): version
            for name in schemas.schema_names() for version in schemas.versions(name)}


_AVRO_PRIMITIVE_TYPES: dict[str, tuple[type, ...]] = {
    "null": (type(None),), "boolean": (bool,), "int": (int,), "long": (int,), "float": (float,),
    "double": (float,), "bytes": (bytes, decimal.Decimal), "string": (str,),
}


_LOGICAL_TYPES: dict[str, tuple[type, ...]] = {
    "decimal": (decimal.Decimal,), "timestamp-millis": (dt.datetime,), "timestamp-micros": (dt.datetime,),
    "local-timestamp-millis": (dt.datetime,), "local-timestamp-micros": (dt.datetime,), "date": (dt.date,),
    "time-millis": (dt.time,), "time-micros": (dt.time,), "uuid": (str, uuid.UUID),
}


def _avro_branch_accepts(schema: Any, value: Any, names: Mapping[str, Any]) -> bool:
    """Could a union branch have produced `value` (as fastavro decodes it)? Types only, not contents."""
    if isinstance(schema, str):
        if schema in names:
            return _avro_branch_accepts(names[schema], value, names)
        accepted = _AVRO_PRIMITIVE_TYPES.get(schema)
        return accepted is not None and isinstance(value, accepted) and not (
            schema != "boolean" and isinstance(value, bool))
    if isinstance(schema, list):
        return any(_avro_branch_accepts(branch, value, names) for branch in schema)
    kind = schema["type"]
    if kind in ("record", "error", "map"):
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "enum":
        return isinstance(value, str)
    if kind == "fixed":
        return isinstance(value, (bytes, decimal.Decimal))
    logical = schema.get("logicalType")
    if logical in _LOGICAL_TYPES:
        return isinstance(value, _LOGICAL_TYPES[logical])
    return _avro_branch_accepts(kind, value, names)


def _generic_mask(node: Any) -> Any:
    """For a value whose schema branch is ambiguous: strings and keys masked, nothing dropped."""
    if isinstance(node, dict):
        return {mask_personal_data(k): _generic_mask(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_generic_mask(v) for v in node]
    return mask_personal_data(node) if isinstance(node, str) else node


def _collect_names(schema: Any, namespace: str, names: dict[str, Any]) -> None:
    """Every named type (record, enum, fixed) of a schema, by full and by short name."""
    if isinstance(schema, list):
        for branch in schema:
            _collect_names(branch, namespace, names)
        return
    if not isinstance(schema, dict):
        return
    kind = schema["type"]
    if kind in ("record", "error", "enum", "fixed"):
        name = schema["name"]
        space = name.rsplit(".", 1)[0] if "." in name else schema.get("namespace", namespace)
        short = name.rsplit(".", 1)[-1]
        names.setdefault(f"{space}.{short}" if space else short, schema)
        names.setdefault(short, schema)
        for field in schema.get("fields", ()):
            _collect_names(field["type"], space, names)
    elif kind == "array":
        _collect_names(schema["items"], namespace, names)
    elif kind == "map":
        _collect_names(schema["values"], namespace, names)
    else:
        _collect_names(kind, namespace, names)


@cache
def _named_types(name: str, version: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    definition = schemas.get(name, version).definition
    _collect_names(definition, definition.get("namespace", ""), found)
    return found


def _redact_avro(schema: Any, value: Any, names: Mapping[str, Any], namespace: str) -> Any:
    """Walk `value` along its writer schema: strings masked, map keys masked, map entries named as content
    dropped (a map may lose an entry; a record keeps every field its schema declares)."""
    if isinstance(schema, str):
        named = names.get(f"{namespace}.{schema}") or names.get(schema)
        if named is not None:
            return _redact_avro(named, value, names, namespace)
        return mask_personal_data(value) if schema == "string" and isinstance(value, str) else value
    if isinstance(schema, list):
        if value is None:
            return None
        branches = [b for b in schema if b != "null" and _avro_branch_accepts(b, value, names)]
        return _redact_avro(branches[0], value, names, namespace) if len(branches) == 1 else _generic_mask(value)
    kind = schema["type"]
    if kind in ("enum", "fixed"):
        return value
    if kind in ("record", "error"):
        name = schema["name"]
        space = name.rsplit(".", 1)[0] if "." in name else schema.get("namespace", namespace)
        return {field["name"]: _redact_avro(field["type"], value[field["name"]], names, space)
                for field in schema["fields"] if field["name"] in value}
    if kind == "map":
        out: dict[str, Any] = {}
        for key, child in value.items():
            if not is_content_field(key):
                out[_unique_key(mask_personal_data(key), out)] = _redact_avro(schema["values"], child, names, namespace)
        return out
    if kind == "array":
        return [_redact_avro(schema["items"], child, names, namespace) for child in value]
    if schema.get("logicalType"):
        return value  # decimal, timestamps, dates, uuids: no personal data
    return _redact_avro(kind, value, names, namespace)


def _redact_single_object(value: bytes) -> bytes | None:
    """The same single-object value with its strings redacted, or None when it does not decode exactly."""
    writer = _writers_by_fingerprint().get(value[2:10])
    if writer is None or len(value) < 10:
        return None
    body = io.BytesIO(value[10:])
    try:
        record = fastavro.schemaless_reader(body, writer.parsed, writer.parsed)
        if body.tell() != len(value) - 10:  # trailing bytes: not what the schema wrote
            return None
        names = _named_types(writer.name, writer.version)
        redacted = _redact_avro(writer.definition, record, names, writer.definition.get("namespace", ""))
        out = io.BytesIO()
        fastavro.schemaless_writer(out, writer.parsed, redacted)
    except Exception:  # noqa: BLE001 - fastavro raises many types for corrupt bodies; all mean "unparsable"
        return None
    return value[:10] + out.getvalue()


# --- unparsable bytes --------------------------------------------------------------------------------------

_JSONISH_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[{}\[\]:,]|\s+|[^"{}\[\]:,\s]+', re.DOTALL)


def _string_token_text(token: str) -> str:
    try:
        return json.loads(token) if len(token) > 1 and token.endswith('"') else token[1:]
    except json.JSONDecodeError:
        return token.strip('"')


def _scrub_jsonish(text: str) -> str:
    """Broken JSON (or text that only looks like it): the value after each `"<content name>":` becomes
    `"[content]"`, a nested object or array under it included, even when it never closes."""
    tokens = _JSONISH_TOKEN.findall(text)
    out: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        out.append(token)
        index += 1
        if not token.startswith('"'):
            continue
        colon = index
        while colon < len(tokens) and tokens[colon].isspace():
            colon += 1
        if colon >= len(tokens) or tokens[colon] != ":" or not is_content_field(_string_token_text(token)):
            continue
        out.extend(tokens[index:colon + 1])
        index = colon + 1
        while index < len(tokens) and tokens[index].isspace():
            out.append(tokens[index])
            index += 1
        if index >= len(tokens) or tokens[index] in (",", "}", "]", ":"):
            continue
        if tokens[index] in ("{", "["):
            depth = 0
            while index < len(tokens):
                depth += {"{": 1, "[": 1, "}": -1, "]": -1}.get(tokens[index], 0)
                index += 1
                if depth == 0:
                    break
        else:
            index += 1
        out.append(json.dumps(CONTENT_MASK))
    return "".join(out)


def _escape_controls(text: str) -> str:
    def escape(char: str) -> str:
        if char in "\t\n\r":
            return {"\t": "\\t", "\n": "\\n", "\r": "\\r"}[char]
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
        return char
    return "".join(escape(c) for c in text)


def _cut_at_safe_boundary(text: str) -> str:
    end = len(text)
    while end and text[end - 1] in _PII_CHARS:
        end -= 1
    return text[:end]


def redacted_prefix(value: bytes) -> str:
    """The first `PREFIX_CHARS` characters of the value as text, redacted: decoded with replacement
    characters, content values removed (`_scrub_jsonish`), emails and phones masked over a
    `PREFIX_WINDOW_BYTES` window before the cut, control characters escaped. When the value is longer
    than the window, the window loses its trailing run of characters an email or phone number is written
    with, so the text masked never ends in half of one."""
    text = value[:PREFIX_WINDOW_BYTES].decode("utf-8", errors="replace")
    if len(value) > PREFIX_WINDOW_BYTES:
        text = _cut_at_safe_boundary(text)
    return _escape_controls(mask_personal_data(_scrub_jsonish(text)))[:PREFIX_CHARS]


def unparsable_summary(value: bytes) -> bytes:
    """What strict storage keeps of bytes it cannot parse: never the bytes themselves."""
    return json.dumps({
        "redacted": "unparsable",
        "length": len(value),
        "sha256": hashlib.sha256(value).hexdigest(),
        "prefix": redacted_prefix(value),
    }, separators=(",", ":")).encode()


# --- storage -------------------------------------------------------------------------------------------------

def check_redaction_mode(mode: str) -> str:
    if mode not in REDACTION_MODES:
        raise ValueError(f"redaction mode must be one of {', '.join(REDACTION_MODES)}, got {mode!r}")
    return mode


def redact_for_storage(value: bytes | None, mode: str = "strict") -> bytes | None:
    """What a dead letter may keep of a message value (`settings.pii.dead_letter_redaction`).

    verbatim: the bytes as received (for synthetic data only).
    strict (the default):
      - Avro single-object (0xC3 0x01 + a fingerprint of a shipped schema version): decoded with that
        version, every string and map key masked, map entries named as content dropped, re-encoded with the
        same version and header;
      - any JSON document (object, array or scalar): content fields dropped and emails and phone numbers
        masked in every string value and key, at any depth, re-serialized (numbers keep their digits;
        numbers themselves are not masked);
      - anything else (unparsable or truncated JSON, corrupt Avro, binary, not UTF-8, nesting too deep):
        `unparsable_summary`, a small JSON object with the length, the SHA-256 and a redacted prefix.
    None and empty values stay as they are.
    """
    if check_redaction_mode(mode) == "verbatim" or not value:
        return value
    if value[:2] == SINGLE_OBJECT_MAGIC:
        redacted = _redact_single_object(value)
        return redacted if redacted is not None else unparsable_summary(value)
    try:
        return _dump_json(_redact_json(_load_json(value))).encode()
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        return unparsable_summary(value)


def redact_text(text: str, *, max_chars: int = TEXT_MAX_CHARS) -> str:
    """Error messages, keys, header values: emails and phones masked over the whole text (before cutting, so
    no half address survives the cut), then at most `max_chars` characters followed by `TRUNCATED_MARK`."""
    window = text if len(text) <= TEXT_MASK_LIMIT_CHARS else _cut_at_safe_boundary(text[:TEXT_MASK_LIMIT_CHARS])
    masked = mask_personal_data(window)
    if len(masked) <= max_chars and window is text:
        return masked
    return masked[:max_chars] + TRUNCATED_MARK


def redact_bytes_text(value: bytes | None, *, max_chars: int = TEXT_MAX_CHARS) -> bytes | None:
    """`redact_text` for bytes (a message key, a header value): decoded with replacement characters, masked,
    encoded as UTF-8 again."""
    if value is None:
        return None
    return redact_text(value.decode("utf-8", errors="replace"), max_chars=max_chars).encode()

