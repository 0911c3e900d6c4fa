"""Wire formats for topic values: Avro single-object encoding (the default) and plain JSON (accepted on input).

Single-object encoding (Avro spec): 0xC3 0x01, the 8-byte little-endian CRC-64-AVRO fingerprint of the
writer schema's Parsing Canonical Form, then the Avro binary body. The fingerprint tells the reader which
version of the schema wrote the bytes, so data written with any shipped version is resolved to the newest.

Confluent wire format (magic byte 0, a 4-byte schema id, the Avro body) is read when a schema registry is
configured (`streams.schema_registry`): the writer schema comes from the registry by id (once per process) and is
resolved against our newest version; a writer schema byte-identical in canonical form to a shipped version takes
that version's fast path. Without a registry such a value is refused (`wire_format`). With a registry the
codecs also write Confluent-framed values (what the worker, gateways and tools produce): each schema is registered
once per process under its record full name (Confluent's RecordNameStrategy, BACKWARD compatibility), since a
codec serves several topics; the SDK registers `<topic>-value` itself (streams.producer).

JSON input is a plain object (not Avro's JSON encoding): timestamps as ISO-8601 strings or epoch
microseconds, money as decimal strings or numbers (parsed exactly), enums as their symbol, unions as the
bare value. Every failure raises `CodecError` naming the field and the rule it breaks.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import functools
import io
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from prismops import schemas
from prismops.errors import FieldRuleError
from prismops.streams.avro_writer import RecordTemplate, Writer, compile_writer, zigzag
from prismops.streams.schema_registry import (
    CONFLUENT_HEADER_LEN,
    SchemaNotInRegistry,
    confluent_header,
    confluent_schema_id,
    is_confluent_framed,
    record_full_name,
    schema_registry,
)

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_HEADER_LEN = 10


class CodecError(FieldRuleError):
    """A value that cannot be decoded or encoded."""


def schema_fingerprint(parsed_schema: Any) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, in the little-endian byte order the spec puts on the wire."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed_schema), "CRC-64-AVRO"))


class AvroCodec:
    """Encodes and decodes one schema's records; reads every shipped version, writes the newest."""

    def __init__(self, schema_name: str):
        self.schema_name = schema_name
        self.reader = schemas.latest(schema_name)
        self._reader_schema = self.reader.parsed
        self._fingerprint = schema_fingerprint(self._reader_schema)
        self._writers = {schema_fingerprint(v.parsed): v for v in schemas.versions(schema_name)}
        self._fingerprint_of = {v.version: fp for fp, v in self._writers.items()}
        self.full_name = record_full_name(self.reader.definition)
        self._by_registry_id: dict[int, tuple[Any, Any]] = {}
        self._confluent_headers: dict[tuple[Any, int | None], bytes] = {}

    @property
    def fingerprint(self) -> bytes:
        return self._fingerprint

    def encode(self, record: Mapping[str, Any], *, version: int | None = None) -> bytes:
        """Single-object bytes; `version` writes with an older schema (used to prove evolution)."""
        if not version:
            return self.header() + self.encode_body(record)
        writer = schemas.get(self.schema_name, version)
        body = io.BytesIO()
        fastavro.schemaless_writer(body, writer.parsed, coerce(writer.definition, record, path=""))
        return self.header(writer.version) + body.getvalue()

    def header(self, version: int | None = None) -> bytes:
        """What goes before an Avro body this codec writes: the single-object header, or, with a schema registry
        configured, the Confluent header of the schema's registry id (registered on first use, then cached)."""
        registry = schema_registry()
        if registry is None:
            return SINGLE_OBJECT_MAGIC + (self._fingerprint if version is None else self._fingerprint_of[version])
        key = (registry, version)
        header = self._confluent_headers.get(key)
        if header is None:
            writer = self.reader if version is None else schemas.get(self.schema_name, version)
            header = confluent_header(registry.register(self.full_name, writer.definition))
            self._confluent_headers[key] = header
        return header

    def encode_json(self, record: Mapping[str, Any]) -> bytes:
        value = coerce(self.reader.definition, record, path="")
        return json.dumps(_to_json(value), separators=(",", ":")).encode()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if not data:
            raise CodecError(None, "non_empty", "message value is empty")
        if data[:2] == SINGLE_OBJECT_MAGIC:
            return self._decode_single_object(data)
        if is_confluent_framed(data):
            return self.decode_confluent(data)
        if data.lstrip()[:1] == b"{":
            return self.decode_json(data)
        raise CodecError(None, "wire_format", "value is neither Avro single-object (0xC3 0x01 header), "
                                              "Confluent-framed Avro (magic byte 0) nor a JSON object")

    def decode_confluent(self, data: bytes) -> dict[str, Any]:
        """A Confluent-framed value: writer schema by id from the registry, resolved against our newest version."""
        writer, reader = self._confluent_schemas(confluent_schema_id(data))
        try:
            return fastavro.schemaless_reader(io.BytesIO(data[CONFLUENT_HEADER_LEN:]), writer, reader)
        except Exception as exc:  # fastavro raises many types for corrupt bodies and unresolvable schemas
            raise CodecError(None, "avro_decode", f"corrupt Avro body or a writer schema that does not resolve to "
                                                  f"{self.full_name}: {exc}") from exc

    def _confluent_schemas(self, schema_id: int) -> tuple[Any, Any]:
        """(writer, reader) for fastavro, cached per id; reader None when the writer is our newest version."""
        cached = self._by_registry_id.get(schema_id)
        if cached is not None:
            return cached
        writer = registry_writer_schema(schema_id)
        shipped = self._writers.get(schema_fingerprint(writer))
        if shipped is not None:  # one of our versions: skip the slow resolution of a schema against itself
            writer = shipped.parsed
            pair = (writer, None if shipped is self.reader else self._reader_schema)
        else:
            if isinstance(writer, dict) and writer.get("name") not in (self.full_name, self.reader.definition["name"]):
                raise CodecError(None, "unknown_schema", f"schema id {schema_id} is {writer.get('name')!r}, not "
                                                         f"{self.full_name} (nor a batch of it)")
            pair = (writer, self._reader_schema)
        self._by_registry_id[schema_id] = pair
        return pair

    def _decode_single_object(self, data: bytes) -> dict[str, Any]:
        if len(data) < _HEADER_LEN:
            raise CodecError(None, "avro_decode", "truncated single-object header")
        writer = self._writers.get(data[2:_HEADER_LEN])
        if writer is None:
            raise CodecError(
                None, "unknown_schema",
                f"fingerprint {data[2:_HEADER_LEN].hex()} matches no version of schema {self.schema_name!r}",
            )
        reader = None if writer is self.reader else self._reader_schema  # resolving a schema against itself is slow
        try:
            return fastavro.schemaless_reader(io.BytesIO(data[_HEADER_LEN:]), writer.parsed, reader)
        except Exception as exc:  # fastavro raises many types for corrupt bodies
            raise CodecError(None, "avro_decode", f"corrupt Avro body: {exc}") from exc

    def knows(self, data: bytes) -> bool:
        """Whether `data` is single-object bytes written with a version of this schema."""
        return data[:2] == SINGLE_OBJECT_MAGIC and data[2:_HEADER_LEN] in self._writers

    def encode_body(self, record: Mapping[str, Any]) -> bytes:
        """The Avro binary body alone (newest version, checked like `encode`), to be framed into a batch. What
        `coerce` returns is in the schema's exact shape, so the compiled writer writes it (fastavro's bytes, a
        test checks)."""
        out = bytearray()
        self.trusted_writer(self.coercer(record, ""), out)
        return bytes(out)

    def encode_trusted(self, record: Mapping[str, Any]) -> bytes:
        """Single-object bytes of a record this process built itself in the newest shape, written by the compiled
        writer (`streams.avro_writer`), without the field-by-field coercion that outside input needs."""
        out = bytearray(self.header())
        self.trusted_writer(record, out)
        return bytes(out)

    def template(self, record: Mapping[str, Any], open_fields: Collection[str]) -> RecordTemplate:
        """`record` written once but for `open_fields`, for `encode_templated` (see `RecordTemplate`)."""
        return RecordTemplate(self.trusted_writer, record, open_fields)

    def encode_templated(self, template: RecordTemplate, record: Mapping[str, Any]) -> bytes:
        """`encode_trusted(record)` for a record equal to the template's in every field but its open ones."""
        return self.header() + template.encode(record)

    @functools.cached_property
    def coercer(self) -> Callable[[Any, str], Any]:
        """`coerce` of the newest version, compiled (`compile_coercer`)."""
        return compile_coercer(self.reader.definition)

    @functools.cached_property
    def trusted_writer(self) -> Writer:
        return compile_writer(self.reader.definition)

    def writer_is_this_schema(self, data: bytes) -> bool:
        """Whether a Confluent-framed value's writer schema (asked of the registry) is a record of this schema."""
        writer = registry_writer_schema(confluent_schema_id(data))
        return isinstance(writer, dict) and writer.get("name") in (self.full_name, self.reader.definition["name"])

    def decode_json(self, data: bytes) -> dict[str, Any]:
        document = _json_document(data)
        if not isinstance(document, dict):
            raise CodecError(None, "json_decode", "JSON value must be an object")
        return coerce(self.reader.definition, document, path="")


_PRIMITIVE_CHECKS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "bytes": (bytes,),
    "double": (int, float, decimal.Decimal),
    "float": (int, float, decimal.Decimal),
}


def coerce(schema: Any, value: Any, path: str) -> Any:
    """Turn a plain Python/JSON value into what fastavro writes for `schema`, or raise CodecError."""
    if isinstance(schema, list):
        return _coerce_union(schema, value, path)
    if isinstance(schema, str):
        return _coerce_primitive(schema, value, path)
    kind = schema["type"]
    logical = schema.get("logicalType")
    if logical == "timestamp-micros":
        return _coerce_timestamp(value, path)
    if logical == "decimal":
        return _coerce_decimal(schema, value, path)
    if kind == "record":
        if not isinstance(value, Mapping):
            raise CodecError(path or None, "type", f"expected an object, got {type(value).__name__}")
        out = {}
        for field in schema["fields"]:
            name = field["name"]
            field_path = f"{path}.{name}" if path else name
            if name in value and value[name] is not None:
                out[name] = coerce(field["type"], value[name], field_path)
            elif "default" in field:
                out[name] = _default(field) if name not in value else coerce(field["type"], None, field_path)
            else:
                raise CodecError(field_path, "required", "is required")
        return out
    if kind == "enum":
        if value not in schema["symbols"]:
            raise CodecError(path, "enum", f"{value!r} is not one of {', '.join(schema['symbols'])}")
        return value
    if kind == "map":
        if not isinstance(value, Mapping):
            raise CodecError(path, "type", "expected an object of string keys")
        return {str(k): coerce(schema["values"], v, f"{path}.{k}") for k, v in value.items()}
    if kind == "array":
        if not isinstance(value, (list, tuple)):
            raise CodecError(path, "type", "expected an array")
        return [coerce(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)]
    return coerce(kind, value, path)


_INT_BOUNDS = {"int": 2**31, "long": 2**63}


def compile_coercer(schema: Any) -> Callable[[Any, str], Any]:
    """`coerce(schema, value, path)` compiled once per schema: a value already in the schema's exact shape (a str
    for a string, an int in range for a long, an aware datetime for a timestamp...) is checked in place, and any
    other value goes to `coerce` itself, so results and errors are coerce's (a property test compares them). Why:
    `coerce` dispatched on the schema's JSON for every field of every event, two thirds of the SDK's encoding."""
    if isinstance(schema, list):
        if len(schema) == 2 and schema[0] == "null":
            inner = compile_coercer(schema[1])
            return lambda value, path: None if value is None else inner(value, path)
        return lambda value, path: _coerce_union(schema, value, path)
    if isinstance(schema, str):
        return _primitive_coercer(schema)
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "timestamp-micros":
        return lambda value, path: value if value.__class__ is dt.datetime and value.tzinfo is not None \
            else _coerce_timestamp(value, path)
    if logical == "decimal":
        return lambda value, path: _coerce_decimal(schema, value, path)
    if kind == "record":
        return _record_coercer(schema)
    if kind == "map":
        values = compile_coercer(schema["values"])

        def coerce_map(value: Any, path: str) -> dict[str, Any]:
            if not isinstance(value, Mapping):
                raise CodecError(path, "type", "expected an object of string keys")
            return {str(k): values(v, f"{path}.{k}") for k, v in value.items()}
        return coerce_map
    if kind == "array":
        items = compile_coercer(schema["items"])

        def coerce_array(value: Any, path: str) -> list[Any]:
            if not isinstance(value, (list, tuple)):
                raise CodecError(path, "type", "expected an array")
            return [items(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return coerce_array
    return lambda value, path: coerce(schema, value, path)


def _primitive_coercer(kind: str) -> Callable[[Any, str], Any]:
    if kind == "string":
        return lambda value, path: value if value.__class__ is str else _coerce_primitive(kind, value, path)
    if kind in ("double", "float"):
        return lambda value, path: value if value.__class__ is float else _coerce_primitive(kind, value, path)
    if kind == "boolean":
        return lambda value, path: value if value.__class__ is bool else _coerce_primitive(kind, value, path)
    if kind in _INT_BOUNDS:
        bound = _INT_BOUNDS[kind]
        return lambda value, path: value if value.__class__ is int and -bound <= value < bound \
            else _coerce_primitive(kind, value, path)
    return lambda value, path: coerce(kind, value, path)


def _record_coercer(schema: Mapping[str, Any]) -> Callable[[Any, str], dict[str, Any]]:
    fields = [(field["name"], compile_coercer(field["type"]), "default" in field, field) for field in schema["fields"]]

    def coerce_record(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise CodecError(path or None, "type", f"expected an object, got {type(value).__name__}")
        out = {}
        for name, coerce_field, has_default, field in fields:
            item = value.get(name)
            if item is not None:
                out[name] = coerce_field(item, f"{path}.{name}" if path else name)
            elif has_default:
                out[name] = _default(field) if name not in value else coerce(field["type"], None, f"{path}.{name}" if path else name)
            else:
                raise CodecError(f"{path}.{name}" if path else name, "required", "is required")
        return out
    return coerce_record


def _default(field: Mapping[str, Any]) -> Any:
    """A field's default; containers are copied so a caller mutating its record cannot change the schema."""
    default = field["default"]
    return copy.deepcopy(default) if isinstance(default, (dict, list)) else default


def _coerce_union(branches: list[Any], value: Any, path: str) -> Any:
    if value is None:
        if "null" in branches:
            return None
        raise CodecError(path, "required", "must not be null")
    errors = []
    for branch in branches:
        if branch == "null":
            continue
        try:
            return coerce(branch, value, path)
        except CodecError as exc:
            errors.append(exc)
    raise errors[0] if errors else CodecError(path, "type", "no union branch accepts the value")


def _coerce_primitive(kind: str, value: Any, path: str) -> Any:
    if kind == "null":
        if value is not None:
            raise CodecError(path, "type", "must be null")
        return None
    if kind in ("int", "long"):
        if isinstance(value, bool) or not isinstance(value, (int, decimal.Decimal)):
            raise CodecError(path, "type", f"expected an integer, got {type(value).__name__}")
        if isinstance(value, decimal.Decimal):
            if value != value.to_integral_value():
                raise CodecError(path, "type", f"expected an integer, got {value}")
            value = int(value)
        bits = 31 if kind == "int" else 63
        if not -(2**bits) <= value < 2**bits:
            raise CodecError(path, "range", f"{value} does not fit an Avro {kind}")
        return value
    if kind == "bytes" and isinstance(value, str):
        return _bytes_from_json(value, path)
    accepted = _PRIMITIVE_CHECKS.get(kind)
    if accepted is None:
        raise CodecError(path, "schema", f"unsupported Avro type {kind}")
    if not isinstance(value, accepted) or (kind != "boolean" and isinstance(value, bool)):
        raise CodecError(path, "type", f"expected {kind}, got {type(value).__name__}")
    if kind in ("double", "float"):
        return float(value)
    return value


def _bytes_from_json(value: Any, path: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise CodecError(path, "bytes", "a JSON string for bytes may only hold code points 0-255") from exc


def _coerce_timestamp(value: Any, path: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=value)
        except OverflowError as exc:
            raise CodecError(path, "timestamp", f"{value} epoch microseconds is out of range") from exc
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise CodecError(path, "timestamp", f"{value!r} is not an ISO-8601 timestamp") from exc
    else:
        raise CodecError(path, "timestamp", f"expected an ISO-8601 string or epoch microseconds, got {type(value).__name__}")
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _coerce_decimal(schema: Mapping[str, Any], value: Any, path: str) -> decimal.Decimal:
    if isinstance(value, bool) or isinstance(value, float):
        raise CodecError(path, "decimal", "money and quantities must be exact: send a decimal string, not a float")
    try:
        number = decimal.Decimal(value) if isinstance(value, (str, int)) else value
    except decimal.InvalidOperation as exc:
        raise CodecError(path, "decimal", f"{value!r} is not a decimal number") from exc
    if not isinstance(number, decimal.Decimal) or not number.is_finite():
        raise CodecError(path, "decimal", f"{value!r} is not a finite decimal number")
    return exact_decimal(number, scale=schema.get("scale", 0), precision=schema["precision"], field=path)


def exact_decimal(number: decimal.Decimal, *, scale: int, precision: int, field: str) -> decimal.Decimal:
    """`number` at exactly `scale` places, or CodecError when that would round it or exceed `precision` digits."""
    quantum = decimal.Decimal(1).scaleb(-scale)
    try:
        exact = number.quantize(quantum, context=decimal.Context(prec=precision + 2))
    except decimal.InvalidOperation as exc:  # more digits than even the working precision holds
        raise CodecError(field, "decimal_precision", f"{number} has more than {precision} digits") from exc
    if exact != number:
        raise CodecError(field, "decimal_scale", f"{number} has more than {scale} decimal places")
    if len(exact.as_tuple().digits) > precision:
        raise CodecError(field, "decimal_precision", f"{number} has more than {precision} digits")
    return exact


def to_json(value: Any) -> Any:
    """A decoded record as plain JSON: decimals as strings, timestamps as ISO-8601 (Z), bytes one code point each."""
    return _to_json(value)


def _to_json(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        return value.decode("latin-1")  # Avro's JSON encoding: one code point per byte
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


class BatchItem(NamedTuple):
    """One record of a topic that carries single records and batches: its value, or why it was refused, and the
    bytes to dead-letter for it (None: re-encode `value` alone, as a batch's item has no bytes of its own). A named
    tuple: one is made per event a batch carries, and a frozen dataclass's __init__ cost a microsecond of it."""

    value: dict[str, Any] | None
    error: CodecError | None = None
    original: bytes | None = None


@dataclass(frozen=True)
class DecodedBatch:
    items: list[BatchItem]
    origin: str | None = None
    position: int | None = None


class TemplatedRecord(dict):
    """A record this process built that carries a template of its codec (`RecordTemplate`): its fixed fields are
    those of the record the template was made from, so its encoder writes the open fields alone. The router's
    remembered decisions and the pricing stage's cost lines are written so. Only the template's open fields may be
    changed, on a copy."""

    __slots__ = ("codec", "template")

    def __init__(self, record: Mapping[str, Any], codec: Any, template: RecordTemplate):
        super().__init__(record)
        self.codec = codec
        self.template = template

    def copy(self) -> TemplatedRecord:  # type: ignore[override]
        return TemplatedRecord(self, self.codec, self.template)

    @classmethod
    def of(cls, codec: Any, template: RecordTemplate, *parts: Mapping[str, Any]) -> TemplatedRecord:
        """A TemplatedRecord of `parts` merged in order, filled in place: no record built first and copied."""
        record = cls.__new__(cls)
        for part in parts:
            record.update(part)
        record.codec = codec
        record.template = template
        return record


class BatchCodec:
    """A topic's values: a single item (Avro single-object of any item version, or a JSON object) or a batch
    record (Avro single-object of the batch schema, a JSON array of items, or a JSON object of the batch schema).

    A batch is decoded whole; each item is then its own record: a JSON item that breaks the schema is refused
    alone, the other items go on. Batches are written in the newest batch version."""

    def __init__(self, item_schema: str, batch_schema: str):
        self.items = codec_for(item_schema)
        self.batch = codec_for(batch_schema)
        fields = self.batch.reader.definition["fields"]
        self.array_field = next(f["name"] for f in fields if isinstance(f["type"], dict) and f["type"].get("type") == "array")
        self._header_fields = [(f["name"], f["type"]) for f in fields if f["name"] != self.array_field]
        if fields[-1]["name"] != self.array_field or any(kind not in ("string", "long") for _, kind in self._header_fields):
            raise TypeError(f"{batch_schema}: a batch schema is string/long header fields, then its array, last")
        self._item_names = {f["name"] for f in self.items.reader.definition["fields"]}
        self._write_array = compile_writer(next(f["type"] for f in fields if f["name"] == self.array_field))
        self._write_item: Writer = self._write_array.item  # type: ignore[attr-defined]

    def decode(self, data: bytes | None) -> DecodedBatch:
        """Raises CodecError only when the record as a whole is unreadable."""
        if not data:
            raise CodecError(None, "non_empty", "message value is empty")
        if self.batch.knows(data):
            record = self.batch.decode(data)
            return DecodedBatch([BatchItem(item) for item in record[self.array_field]],
                                record.get("origin"), record.get("position"))
        if data[:2] == SINGLE_OBJECT_MAGIC:
            return DecodedBatch([BatchItem(self.items.decode(data), original=data)])
        if is_confluent_framed(data):
            if self.batch.writer_is_this_schema(data):
                record = self.batch.decode_confluent(data)
                return DecodedBatch([BatchItem(item) for item in record[self.array_field]],
                                    record.get("origin"), record.get("position"))
            return DecodedBatch([BatchItem(self.items.decode_confluent(data), original=data)])
        stripped = data.lstrip()
        if stripped[:1] == b"[":
            return DecodedBatch(self._json_items(data))
        document = _json_document(data) if stripped[:1] == b"{" else None
        if isinstance(document, dict) and self.array_field in document and self.array_field not in self._item_names:
            items = document[self.array_field]
            if not isinstance(items, list):
                raise CodecError(self.array_field, "type", "expected an array")
            header_names = {name for name, _ in self._header_fields}
            header = coerce({"type": "record", "fields": [f for f in self.batch.reader.definition["fields"]
                                                           if f["name"] in header_names]}, document, path="")
            return DecodedBatch([self._json_item(item, index) for index, item in enumerate(items)],
                                header.get("origin"), header.get("position"))
        return DecodedBatch([BatchItem(self.items.decode(data), original=data)])

    def _json_items(self, data: bytes) -> list[BatchItem]:
        document = _json_document(data)
        if not isinstance(document, list):
            raise CodecError(None, "json_decode", "JSON value must be an object or an array of objects")
        return [self._json_item(item, index) for index, item in enumerate(document)]

    def _json_item(self, item: Any, index: int) -> BatchItem:
        original = json.dumps(item, separators=(",", ":"), default=str).encode()
        if not isinstance(item, dict):
            return BatchItem(None, CodecError(f"[{index}]", "json_decode", "each item must be a JSON object"), original)
        try:
            return BatchItem(coerce(self.items.reader.definition, item, path=""), original=original)
        except CodecError as error:
            return BatchItem(None, error, original)

    def encode(self, items: list[Mapping[str, Any]], **header: Any) -> bytes:
        """A batch of records this process built in the newest item shape (see AvroCodec.encode_trusted)."""
        return self.frame_array(self.encode_array(items), **header)

    def encode_array(self, items: list[Mapping[str, Any]]) -> bytes:
        """The Avro array of `items` alone (trusted records, as `encode`), for `frame_array`. An item that is a
        TemplatedRecord of this codec is written from its template (`item_template`)."""
        out = bytearray()
        if items:
            out += zigzag(len(items))
            write_item = self._write_item
            for item in items:
                if item.__class__ is TemplatedRecord and item.codec is self:  # type: ignore[attr-defined]
                    item.template.write(item, out)  # type: ignore[attr-defined]
                else:
                    write_item(item, out)
        out.append(0)
        return bytes(out)

    def item_template(self, record: Mapping[str, Any], open_fields: Collection[str]) -> RecordTemplate:
        """`record` written once as an item of this batch but for `open_fields`: a TemplatedRecord of this codec
        with it is written by `encode_array` from the template."""
        return RecordTemplate(self._write_item, record, open_fields)

    def frame(self, bodies: list[bytes], prefix: bytes | None = None) -> bytes:
        """A batch from item bodies already encoded with `self.items.encode_body`: the Avro array framing around
        them, no second encoding."""
        count = zigzag(len(bodies)) if bodies else b""
        return self.frame_array(count + b"".join(bodies) + b"\x00", prefix)

    def frame_array(self, array: bytes, prefix: bytes | None = None, **header: Any) -> bytes:
        """Single-object (or, with a registry, Confluent) bytes of a batch: its header fields (string or long, in
        schema order) written by hand in front of an encoded array, so a batch split to fit a message is encoded
        once whatever its header says. `prefix` replaces the codec's own header (the SDK's Confluent subject)."""
        parts = [self.batch.header() if prefix is None else prefix]
        for name, kind in self._header_fields:
            value = header.get(name)
            if kind == "long" and isinstance(value, int) and not isinstance(value, bool):
                parts.append(zigzag(value))
            elif kind == "string" and isinstance(value, str):
                text = value.encode()
                parts += [zigzag(len(text)), text]
            else:
                raise CodecError(name, "required", f"a {self.batch.schema_name} needs {name} ({kind})")
        parts.append(array)
        return b"".join(parts)


def registry_writer_schema(schema_id: int) -> Any:
    """The parsed writer schema of a registry id, or CodecError when no registry is configured or it has no such id.
    A registry that cannot be reached raises SchemaRegistryUnavailable (transient: the record is not at fault)."""
    registry = schema_registry()
    if registry is None:
        raise CodecError(None, "wire_format", "Confluent-framed value but no schema registry configured")
    try:
        return registry.writer_schema(schema_id)
    except SchemaNotInRegistry as exc:
        raise CodecError(None, "unknown_schema", str(exc)) from exc


def _json_document(data: bytes) -> Any:
    try:
        return json.loads(data, parse_float=decimal.Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError(None, "json_decode", f"invalid JSON: {exc}") from exc
    except RecursionError as exc:
        raise CodecError(None, "json_decode", "invalid JSON: nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise CodecError(None, "json_decode", f"invalid JSON: {str(exc)[:200]}") from exc


_codecs: dict[str, AvroCodec] = {}
_batch_codecs: dict[str, BatchCodec] = {}


def batch_codec_for(item_schema: str) -> BatchCodec:
    """The BatchCodec of an item schema and its batch schema (BATCH_SCHEMAS), cached like codec_for."""
    if item_schema not in _batch_codecs:
        _batch_codecs[item_schema] = BatchCodec(item_schema, BATCH_SCHEMAS[item_schema])
    return _batch_codecs[item_schema]


BATCH_SCHEMAS = {"llm_usage_event": "llm_usage_batch", "cost_line": "cost_line_batch",
                 "model_call_summary": "model_call_summary_batch"}
"""Item schema → the schema of its batch record."""


def codec_for(schema_name: str) -> AvroCodec:
    """Process-wide cache: building a codec parses every version of the schema."""
    if schema_name not in _codecs:
        _codecs[schema_name] = AvroCodec(schema_name)
    return _codecs[schema_name]
