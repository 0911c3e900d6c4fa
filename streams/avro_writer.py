"""A fast Avro binary writer for records this process builds itself, compiled once per schema into closures.

Why: fastavro's writer spends about a microsecond per field on our cost lines (union branch checks and logical
type conversions per value), which made encoding a priced line cost more than pricing it. The schemas we
write need only a small part of Avro: records, enums, arrays, maps, `[null, X]` unions, the primitives, and
the `decimal` (bytes) and `timestamp-micros` logical types; each field's writer is chosen once, when the schema
is compiled, and each record's writer is one function generated from the schema, with its primitive fields
written inline. Output is standard Avro binary (fastavro reads it back: tests/streams/test_avro_writer.py checks
every shipped schema both ways). `RecordTemplate` keeps a record's bytes with a few fields left open.

Values are trusted: the caller built them in the schema's shape. A wrong type raises (TypeError, KeyError,
AttributeError) rather than writing something else; a decimal with more places than its scale raises
ValueError instead of rounding.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Callable, Collection, Mapping
from decimal import Context, Decimal
from typing import Any

Writer = Callable[[Any, bytearray], None]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MICROSECOND = dt.timedelta(microseconds=1)
_WIDE = Context(prec=100)
_SMALL = [bytes([n << 1]) for n in range(64)]  # 0..63 zig-zag to one byte each
_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")


class UnsupportedSchema(TypeError):
    """A schema using a part of Avro this writer does not cover (fixed, general unions, other logical types)."""


def zigzag(value: int) -> bytes:
    """Avro's variable-length zig-zag encoding of an int or long."""
    if 0 <= value < 64:
        return _SMALL[value]
    number = (value << 1) ^ (value >> 63)
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _write_long(value: int, out: bytearray) -> None:
    if value.__class__ is bool:
        raise TypeError("a boolean is not an Avro long")
    if 0 <= value < 64:
        out.append(value << 1)
    else:
        out += zigzag(value)


def _write_string(value: str, out: bytearray) -> None:
    data = value.encode()
    size = len(data)
    if size < 64:  # most names and ids: the length is one byte
        out.append(size << 1)
    else:
        out += zigzag(size)
    out += data


def _write_bytes(value: bytes, out: bytearray) -> None:
    out += zigzag(len(value))
    out += value


def _write_boolean(value: bool, out: bytearray) -> None:
    if value.__class__ is not bool:
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    out.append(1 if value else 0)


def _write_double(value: float, out: bytearray) -> None:
    out += _DOUBLE.pack(value)


def _write_float(value: float, out: bytearray) -> None:
    out += _FLOAT.pack(value)


def _write_null(value: None, out: bytearray) -> None:
    if value is not None:
        raise TypeError("expected null")


def _write_timestamp_micros(value: dt.datetime, out: bytearray) -> None:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    out += zigzag((value - _EPOCH) // _MICROSECOND)


def _decimal_writer(scale: int) -> Writer:
    def write(value: Decimal, out: bytearray) -> None:
        if not value.is_finite():
            raise ValueError(f"{value} is not a finite decimal")
        shifted = value.scaleb(scale, context=_WIDE)
        unscaled = int(shifted)
        if unscaled != shifted:  # digits past the scale: refused, never rounded (trailing zeros are not digits)
            raise ValueError(f"{value} has more than {scale} decimal places")
        data = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
        out += zigzag(len(data))
        out += data
    return write


_PRIMITIVES: dict[str, Writer] = {
    "null": _write_null, "boolean": _write_boolean, "int": _write_long, "long": _write_long,
    "float": _write_float, "double": _write_double, "bytes": _write_bytes, "string": _write_string,
}


def compile_writer(schema: Any, named: dict[str, Writer] | None = None, namespace: str = "") -> Writer:
    """The writer of one schema definition (the JSON form, as `prismops.schemas` loads it)."""
    named = {} if named is None else named
    if isinstance(schema, list):
        return _union_writer(schema, named, namespace)
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema]
        full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
        if full in named:
            return named[full]
        raise UnsupportedSchema(f"unknown type {schema}")
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "decimal" and kind == "bytes":
        return _decimal_writer(schema.get("scale", 0))
    if logical == "timestamp-micros" and kind == "long":
        return _write_timestamp_micros
    if logical is not None:
        raise UnsupportedSchema(f"logical type {logical} on {kind}")
    if kind == "record":
        return _record_writer(schema, named, schema.get("namespace", namespace))
    if kind == "enum":
        index = {symbol: zigzag(i) for i, symbol in enumerate(schema["symbols"])}

        def write_enum(value: str, out: bytearray) -> None:
            out += index[value]
        _name(schema, namespace, named, write_enum)
        return write_enum
    if kind == "array":
        item = compile_writer(schema["items"], named, namespace)

        def write_array(value: list, out: bytearray) -> None:
            if value:
                out += zigzag(len(value))
                for element in value:
                    item(element, out)
            out.append(0)
        write_array.item = item  # type: ignore[attr-defined]  # read by BatchCodec, for its items' templates
        return write_array
    if kind == "map":
        values = compile_writer(schema["values"], named, namespace)

        def write_map(value: Mapping[str, Any], out: bytearray) -> None:
            if value:
                out += zigzag(len(value))
                for key, element in value.items():
                    _write_string(key, out)
                    values(element, out)
            out.append(0)
        return write_map
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    raise UnsupportedSchema(f"type {kind}")


def _name(schema: Mapping[str, Any], namespace: str, named: dict[str, Writer], writer: Writer) -> None:
    name = schema["name"]
    named[name if "." in name else f"{schema.get('namespace', namespace)}.{name}".lstrip(".")] = writer


def _union_writer(branches: list[Any], named: dict[str, Writer], namespace: str) -> Writer:
    if len(branches) != 2 or branches[0] != "null":
        raise UnsupportedSchema(f"union {branches}: only [null, X] is covered")
    other = compile_writer(branches[1], named, namespace)

    def write_optional(value: Any, out: bytearray) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(2)  # branch 1, zig-zag encoded
            other(value, out)
    return write_optional


def _record_writer(schema: Mapping[str, Any], named: dict[str, Writer], namespace: str) -> Writer:
    """One function generated for the record (`_record_source`): the fields' reads and their primitive writes
    inline, a call only for the other types. A loop over per-field writers paid a Python call and a tuple unpack
    per field, most of a 51-field cost line's time."""
    fields: list[tuple[str, Writer, Any, bool]] = []
    generated: list[Writer] = []

    def write_named(value: Mapping[str, Any], out: bytearray) -> None:  # what a record naming itself calls
        generated[0](value, out)

    _name(schema, namespace, named, write_named)  # before the fields: a record may refer to itself
    for field in schema["fields"]:
        fields.append((field["name"], compile_writer(field["type"], named, namespace), field.get("default"),
                       "default" in field))
    scope: dict[str, Any] = dict(_GENERATED_SCOPE)
    for index, (_name_, write, default, _has_default) in enumerate(fields):
        scope[f"write_{index}"], scope[f"default_{index}"] = write, default
    source = _record_source([(name, field["type"], has_default)
                             for (name, _write, _default, has_default), field in zip(fields, schema["fields"])])
    exec(compile(source, f"<avro writer of {schema['name']}>", "exec"), scope)  # noqa: S102 (our own source)
    write_record = scope["write_record"]
    generated.append(write_record)
    _name(schema, namespace, named, write_record)
    write_record.fields = fields  # read by RecordTemplate, with the field types
    write_record.field_types = [field["type"] for field in schema["fields"]]
    return write_record


_INLINE: dict[str, list[str]] = {
    "string": ["data = value_.encode()", "size = len(data)", "if size < 64:", "    out.append(size << 1)",
               "else:", "    out += zigzag(size)", "out += data"],
    "long": ["if value_.__class__ is bool:", "    raise TypeError('a boolean is not an Avro long')",
             "if 0 <= value_ < 64:", "    out.append(value_ << 1)", "else:", "    out += zigzag(value_)"],
    "boolean": ["if value_ is True:", "    out.append(1)", "elif value_ is False:", "    out.append(0)", "else:",
                "    raise TypeError(f'expected a boolean, got {type(value_).__name__}')"],
    "double": ["out += pack_double(value_)"],
    "float": ["out += pack_float(value_)"],
}
_INLINE["int"] = _INLINE["long"]
_GENERATED_SCOPE = {"zigzag": zigzag, "pack_double": _DOUBLE.pack, "pack_float": _FLOAT.pack}
"""The names `_INLINE` code calls, for every generated writer's scope."""


def _record_source(fields: list[tuple[str, Any, bool]]) -> str:
    """Python source of `write_record(value, out)` for fields (name, type, has default), each as `_field_source`."""
    lines = ["def write_record(value, out):"]
    for index, (name, kind, has_default) in enumerate(fields):
        lines += _field_source(index, name, kind, has_default)
    if not fields:
        lines.append("    return None")
    return "\n".join(lines) + "\n"


def _field_source(index: int, name: str, kind: Any, has_default: bool) -> list[str]:
    """The lines that read one field as the per-field loop read it (a missing field takes its default, or raises
    KeyError) and write it: inline when it is a primitive, a [null, primitive] union or a map of strings (the same
    bytes and the same errors as the primitive writers), else by `write_<index>`."""
    if has_default:  # get, not a caught KeyError: a cost line lacks the nine bill-only fields, nine raises a line
        lines = [f"    value_ = value.get({name!r}, default_{index})"]
    else:
        lines = [f"    value_ = value[{name!r}]"]
    if isinstance(kind, str) and kind in _INLINE:
        lines += ["    " + line for line in _INLINE[kind]]
    elif isinstance(kind, list) and len(kind) == 2 and kind[0] == "null" and isinstance(kind[1], str) \
            and kind[1] in _INLINE:
        lines += ["    if value_ is None:", "        out.append(0)", "    else:", "        out.append(2)"]
        lines += ["        " + line for line in _INLINE[kind[1]]]
    elif isinstance(kind, dict) and kind.get("type") == "map" and kind.get("values") == "string":
        lines += ["    if value_:", "        out += zigzag(len(value_))", "        for key_, item_ in value_.items():"]
        lines += ["            " + line.replace("value_", "key_") for line in _INLINE["string"]]
        lines += ["            " + line.replace("value_", "item_") for line in _INLINE["string"]]
        lines.append("    out.append(0)")
    else:
        lines.append(f"    write_{index}(value_, out)")
    return lines


class RecordTemplate:
    """A record's bytes with a few fields left open: the fixed fields are written once, here, and `write` writes
    the bytes between the open fields as they are and only the open fields themselves. Why: the router answers a
    repeated request with a remembered decision whose record differs from the remembered one only in its per-call
    fields (id, clock, request id, customer, table age), and a priced call's cost line differs from the others of
    its tenant, service, model and labels only in its per-call fields; writing the rest again was most of their
    encoding.

    The function that writes the open fields is generated like the record's writer (`_field_source`), once per
    record writer and set of open fields (`_template_functions`), as is the one that writes the fixed bytes:
    a template of its own is only those bytes.

    `encode(record)` gives the bytes `writer(record)` would give when `record` equals the record the
    template was made from in every fixed field; the fixed fields of `record` are not read."""

    __slots__ = ("_function", "_fixed", "open_fields")

    def __init__(self, writer: Writer, record: Mapping[str, Any], open_fields: Collection[str]):
        fields = getattr(writer, "fields", None)
        if fields is None:
            raise UnsupportedSchema("a template is made from the writer of a record schema")
        names = {name for name, _, _, _ in fields}
        unknown = sorted(set(open_fields) - names)
        if unknown:
            raise KeyError(f"open fields {unknown} are not fields of the record")
        self.open_fields = frozenset(open_fields)
        self._function, fixed_parts = _template_functions(writer, self.open_fields)
        self._fixed = fixed_parts(record)

    def write(self, record: Mapping[str, Any], out: bytearray) -> None:
        self._function(record, out, self._fixed)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        out = bytearray()
        self._function(record, out, self._fixed)
        return bytes(out)


def _template_functions(writer: Writer, open_fields: frozenset[str]) -> tuple[Callable[..., None], Callable[..., Any]]:
    """Two functions generated for a record writer and a set of its fields left open, both made once:
    `write_template(value, out, fixed)` writes each run of fixed fields as the next of `fixed` and each open field as
    the record's writer does; `fixed_parts(value)` writes those runs of `value`'s fixed fields, the same way, and
    returns them (a template of its own is made per call shape, so its making is generated code too)."""
    functions: dict[frozenset[str], Any] = writer.__dict__.setdefault("template_functions", {})
    made = functions.get(open_fields)
    if made is not None:
        return made  # type: ignore[no-any-return]
    scope: dict[str, Any] = dict(_GENERATED_SCOPE)
    writes = ["def write_template(value, out, fixed):"]
    parts = ["def fixed_parts(value):", "    parts = []", "    out = bytearray()"]
    runs, after_open = 0, True
    for index, ((name, write, default, has_default), kind) in enumerate(
            zip(writer.fields, writer.field_types)):  # type: ignore[attr-defined]
        scope[f"write_{index}"], scope[f"default_{index}"] = write, default
        if name not in open_fields:
            parts += _field_source(index, name, kind, has_default)
            after_open = False
            continue
        if not after_open:
            writes.append(f"    out += fixed[{runs}]")
            parts += ["    parts.append(bytes(out))", "    out = bytearray()"]
            runs += 1
        after_open = True
        writes += _field_source(index, name, kind, has_default)
    if not after_open:
        writes.append(f"    out += fixed[{runs}]")
        parts.append("    parts.append(bytes(out))")
    if len(writes) == 1:
        writes.append("    return None")
    parts.append("    return tuple(parts)")
    source = "\n".join(writes) + "\n\n\n" + "\n".join(parts) + "\n"
    exec(compile(source, "<avro template>", "exec"), scope)  # noqa: S102 (our own source)
    made = functions[open_fields] = (scope["write_template"], scope["fixed_parts"])
    return made  # type: ignore[no-any-return]


def encode(writer: Writer, value: Any) -> bytes:
    out = bytearray()
    writer(value, out)
    return bytes(out)
