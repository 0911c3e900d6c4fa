"""FOCUS 1.2/1.3 cost-and-usage files in, cloud_cost_line records out; and those records as cost lines.

Plain Python (no Kafka), used by `prismops ingest focus` (file → records) and by the billing agent
(record → cost line). The rules, each with the name bad rows and dead letters carry:

- file level (`FocusFileError`, nothing from the file is ingested): `readable`, `utf8`, `csv`, `header`,
  `duplicate_column`, `focus_version`, `mandatory_column`, `unchanged`;
- row level (`RowError`, the row is rejected, the other rows are not): `column_count`, `required`,
  `decimal` (plain decimal text; never parsed through a float), `decimal_scale` (more than 12 places
  would need rounding), `decimal_precision` (more than 38 digits), `timestamp` (ISO-8601 with a UTC
  offset or Z), `period_order` (start < end; FOCUS ends are exclusive), `currency` (only USD for now),
  `one_of` (ChargeCategory, ChargeClass, ServiceCategory, focus_version), `required_with` (a quantity
  needs its unit), `tags` (a JSON object whose values are strings), `max_length` and `printable` (the text
  limits of `TEXT_COLUMN_LIMITS` and of tags, see `check_text_columns`), `max_entries` (at most 64 tags).

Event ids are the SHA-256 of the file's bytes plus the row's line number, so ingesting the same file
again produces the same ids (and the same cost line ids): the sink then writes no duplicate. A file that
differs by one byte is a different file, and all its ids differ.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import decimal
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from prismops.finops.llm_usage import Rejection, cost_line_id
from prismops.finops.tagging import UNALLOCATED, normalize
from prismops.finops.text_rules import ID_MAX_CHARS, LABELS_MAX, NAME_MAX_CHARS, TEXT_MAX_CHARS, check_text
from prismops.streams.codecs import CodecError, codec_for, exact_decimal
from prismops.errors import FieldRuleError

FOCUS_VERSIONS = ("1.2", "1.3")
SUPPORTED_CURRENCIES = ("USD",)
CHARGE_CATEGORIES = ("Usage", "Purchase", "Tax", "Credit", "Adjustment")
CHARGE_CLASSES = ("Correction",)  # or null
SERVICE_CATEGORIES = (
    "AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases", "Developer Tools",
    "Multicloud", "Identity", "Integration", "Internet of Things", "Management and Governance", "Media",
    "Migration", "Mobile", "Networking", "Security", "Storage", "Web", "Other",
)

_MANDATORY_1_2 = (
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "ChargePeriodStart", "ChargePeriodEnd",
    "ChargeCategory", "ChargeClass", "ChargeDescription", "BillingAccountId", "BillingAccountName",
    "BillingCurrency", "BillingPeriodStart", "BillingPeriodEnd", "InvoiceIssuerName", "ProviderName",
    "PublisherName", "PricingQuantity", "PricingUnit", "ServiceCategory", "ServiceName",
)
MANDATORY_COLUMNS: dict[str, tuple[str, ...]] = {
    "1.2": _MANDATORY_1_2,
    # DESIGN.md: 1.3 makes ServiceProviderName and HostProviderName mandatory in place of ProviderName.
    "1.3": tuple(c for c in _MANDATORY_1_2 if c != "ProviderName") + ("ServiceProviderName", "HostProviderName"),
}

MONEY_COLUMNS = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")
QUANTITY_COLUMNS = ("PricingQuantity", "ConsumedQuantity")
TIMESTAMP_COLUMNS = ("ChargePeriodStart", "ChargePeriodEnd", "BillingPeriodStart", "BillingPeriodEnd")
STRING_COLUMNS = (
    "ChargeCategory", "ChargeClass", "ChargeDescription", "BillingAccountId", "BillingAccountName", "BillingCurrency",
    "InvoiceIssuerName", "ProviderName", "PublisherName", "PricingUnit", "ServiceCategory", "ServiceName",
    "ServiceProviderName", "HostProviderName", "ResourceId", "ResourceName", "ResourceType", "RegionId", "SkuId",
    "ConsumedUnit",
)
_COMMON_REQUIRED_STRINGS = (
    "ChargeCategory", "BillingAccountId", "BillingCurrency", "InvoiceIssuerName", "ServiceCategory", "ServiceName",
)
REQUIRED_STRINGS: dict[str, tuple[str, ...]] = {
    "1.2": _COMMON_REQUIRED_STRINGS + ("ProviderName",),
    "1.3": _COMMON_REQUIRED_STRINGS + ("ServiceProviderName", "HostProviderName"),
}
UNIT_OF = {"PricingQuantity": "PricingUnit", "ConsumedQuantity": "ConsumedUnit"}
# Columns that become cost-line fields or labels, with the longest value each may hold; each must also be
# printable (finops/text_rules.py: no control, bidi, zero-width or other format characters). ResourceId is
# the cost line's `resource` (never a key): cloud resource ids (ARNs, Azure ids) run past 256 characters.
TEXT_COLUMN_LIMITS: dict[str, int] = {
    "event_id": ID_MAX_CHARS,  # source_event_id, and the seed of line_id
    "ServiceName": NAME_MAX_CHARS,  # the cost line's model
    "ProviderName": NAME_MAX_CHARS,  # provider
    "ServiceProviderName": NAME_MAX_CHARS,
    "HostProviderName": NAME_MAX_CHARS,  # a label too
    "RegionId": NAME_MAX_CHARS,  # region
    "ResourceId": TEXT_MAX_CHARS,  # resource
    "ChargeCategory": NAME_MAX_CHARS,  # charge_category
    "ChargeClass": NAME_MAX_CHARS,
    "ServiceCategory": NAME_MAX_CHARS,  # a label
    "BillingCurrency": NAME_MAX_CHARS,
    "PricingUnit": NAME_MAX_CHARS,  # usage_unit
    "ConsumedUnit": NAME_MAX_CHARS,
    "BillingAccountId": ID_MAX_CHARS,  # a label
    "SkuId": ID_MAX_CHARS,  # a label
}
# Descriptive columns kept only in the cloud_cost_line record: a length limit, any characters (a description
# may span lines); source_file is a path, so up to Linux's PATH_MAX.
DESCRIPTIVE_MAX_CHARS: dict[str, int] = {
    **{c: TEXT_MAX_CHARS for c in STRING_COLUMNS if c not in TEXT_COLUMN_LIMITS}, "source_file": 4096,
}
# Tags: every key and value becomes a cost-line label; the values of tenant, team, product, service, feature,
# environment and customer tags become dimensions, so those are names. Keys may carry a provider prefix such as
# AWS's "user:" on top of the provider's 128-character limit; cloud providers cap tag values at 256.
TAGS_MAX = LABELS_MAX
TAG_KEY_MAX_CHARS = ID_MAX_CHARS
TAG_VALUE_MAX_CHARS = ID_MAX_CHARS

MONEY_SCALE, MONEY_PRECISION = 12, 38  # the Avro decimal(38, 12) of cloud_cost_line and cost_line
_DECIMAL_TEXT = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
# Wide enough that no sum of decimal(38, 12) values is ever rounded; Inexact traps if one would be.
_EXACT = decimal.Context(prec=120, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])


class FocusFileError(FieldRuleError):
    """A problem with the whole file (unreadable, not CSV, a mandatory column missing): nothing is ingested."""


@dataclass(frozen=True)
class RowError:
    """One broken rule of one data row; `line` is the physical line where the row starts (the header is line 1)."""

    line: int
    column: str | None
    rule: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "rule": self.rule, "message": self.message}


@dataclass(frozen=True)
class FocusRow:
    """A data row: its cloud_cost_line record when every rule holds, else the rules it breaks."""

    line: int
    record: dict[str, Any] | None
    errors: tuple[RowError, ...] = ()


@dataclass(frozen=True)
class FocusFile:
    """An opened FOCUS file: its version, columns and content hash; read its rows with `iter_focus_rows`."""

    path: Path
    focus_version: str
    columns: tuple[str, ...]
    content_hash: str
    size_bytes: int
    modified_ns: int


# ---------------------------------------------------------------------------------------------------------------
# the file


def detect_focus_version(columns: Iterable[str]) -> str:
    """1.3 names ServiceProviderName/HostProviderName where 1.2 has ProviderName; a 1.3 file may keep both."""
    present = set(columns)
    if present & {"ServiceProviderName", "HostProviderName"}:
        return "1.3"
    if "ProviderName" in present:
        return "1.2"
    raise FocusFileError(
        "ProviderName", "mandatory_column",
        "mandatory column ProviderName (FOCUS 1.2) or ServiceProviderName and HostProviderName (FOCUS 1.3) is "
        "missing, so the FOCUS version cannot be told; add the column or pass --focus-version",
    )


def check_mandatory_columns(columns: Sequence[str], focus_version: str) -> None:
    """Raise one FocusFileError naming every mandatory column of `focus_version` the header lacks."""
    if focus_version not in MANDATORY_COLUMNS:
        raise FocusFileError(None, "focus_version", f"FOCUS version {focus_version!r} is not one of {', '.join(FOCUS_VERSIONS)}")
    present = set(columns)
    missing = [c for c in MANDATORY_COLUMNS[focus_version] if c not in present]
    if not missing:
        return
    by_case = {c.lower(): c for c in columns}
    hints = [f"{m} (found {by_case[m.lower()]!r}: FOCUS column names are case-sensitive)" if m.lower() in by_case else m
             for m in missing]
    raise FocusFileError(
        ", ".join(missing), "mandatory_column",
        f"mandatory FOCUS {focus_version} column{'s' if len(missing) > 1 else ''} missing: {', '.join(hints)}",
    )


def open_focus_file(path: str | os.PathLike[str], focus_version: str | None = None) -> FocusFile:
    """Hash the file (checking it is UTF-8 on the way), read its header, settle the version, check the columns.

    Every file-level problem is found here, before any row is read, so a file is either ingested or not touched.
    """
    path = Path(path)
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    try:
        stat = path.stat()
        with path.open("rb") as raw:
            while chunk := raw.read(1 << 20):
                digest.update(chunk)
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    line_at = line + chunk[: exc.start].count(b"\n")
                    raise FocusFileError(None, "utf8", f"{path}: line {line_at} is not UTF-8 text ({exc.reason})") from exc
                line += chunk.count(b"\n")
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise FocusFileError(None, "utf8", f"{path}: the file ends inside a UTF-8 character") from exc
    except OSError as exc:
        raise FocusFileError(None, "readable", f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as text:
            header = next(csv.reader(text), None)
    except csv.Error as exc:
        raise FocusFileError(None, "csv", f"{path}: the header is not valid CSV: {exc}") from exc
    columns = tuple(c.strip() for c in header or ())
    if not any(columns):
        raise FocusFileError(None, "header", f"{path} is empty: a FOCUS file starts with a header row of column names")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise FocusFileError(", ".join(repeated), "duplicate_column", f"column{'s' if len(repeated) > 1 else ''} "
                             f"{', '.join(repeated)} appear more than once in the header")
    version = focus_version or detect_focus_version(columns)
    check_mandatory_columns(columns, version)
    return FocusFile(path, version, columns, digest.hexdigest(), stat.st_size, stat.st_mtime_ns)


class _CountingReader(io.RawIOBase):
    """Reports how many bytes have been read, for a progress bar over a file of unknown row count."""

    def __init__(self, raw: io.RawIOBase, on_bytes: Callable[[int], None]):
        self._raw, self._on_bytes, self.count = raw, on_bytes, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer) or 0
        self.count += n
        self._on_bytes(self.count)
        return n


def iter_focus_rows(focus_file: FocusFile, on_bytes: Callable[[int], None] | None = None) -> Iterator[FocusRow]:
    """Every data row of the file, parsed and checked; blank lines are skipped. Raises FocusFileError if the file
    changed since it was opened (its ids would no longer match its content) or stops being valid CSV."""
    _check_unchanged(focus_file)
    source_file = str(focus_file.path)
    width = len(focus_file.columns)
    with focus_file.path.open("rb", buffering=0) as raw:
        counted = _CountingReader(raw, on_bytes or (lambda _n: None))
        text = io.TextIOWrapper(io.BufferedReader(counted), encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        try:
            next(reader)  # the header, checked by open_focus_file
            previous_end = reader.line_num
            for cells in reader:
                line, previous_end = previous_end + 1, reader.line_num
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                if len(cells) != width:
                    yield FocusRow(line, None, (RowError(
                        line, None, "column_count", f"the row has {len(cells)} values, the header {width} columns",
                    ),))
                    continue
                yield parse_focus_row(
                    dict(zip(focus_file.columns, cells)), focus_file.focus_version,
                    line=line, content_hash=focus_file.content_hash, source_file=source_file,
                )
        except csv.Error as exc:
            raise FocusFileError(None, "csv", f"{source_file}: line {reader.line_num} is not valid CSV: {exc}") from exc
    _check_unchanged(focus_file)


def _check_unchanged(focus_file: FocusFile) -> None:
    try:
        stat = focus_file.path.stat()
    except OSError as exc:
        raise FocusFileError(None, "readable", f"cannot read {focus_file.path}: {exc.strerror or exc}") from exc
    if (stat.st_size, stat.st_mtime_ns) != (focus_file.size_bytes, focus_file.modified_ns):
        raise FocusFileError(None, "unchanged", f"{focus_file.path} changed while it was being read; ingest it again")


# ---------------------------------------------------------------------------------------------------------------
# one row


def focus_event_id(content_hash: str, line: int) -> str:
    """Same file bytes and line → same id, so a re-ingest is recognised downstream."""
    return f"focus:{content_hash}:{line}"


def parse_decimal(column: str, text: str) -> Decimal:
    """Exact decimal from text: plain or exponent notation, at most 12 places and 38 digits; never a float."""
    if not _DECIMAL_TEXT.match(text):
        raise FieldRuleError(column, "decimal", f"{text!r} is not a decimal number (digits, one '.', optional exponent)")
    return exact_decimal(Decimal(text), scale=MONEY_SCALE, precision=MONEY_PRECISION, field=column)


def parse_timestamp(column: str, text: str) -> dt.datetime:
    """ISO-8601 date-time with Z or a UTC offset, returned in UTC; FOCUS date-times are UTC, so a bare local
    time is refused rather than guessed."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FieldRuleError(column, "timestamp", f"{text!r} is not an ISO-8601 date-time (e.g. 2025-06-01T00:00:00Z)") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise FieldRuleError(column, "timestamp", f"{text!r} has no UTC offset; FOCUS date-times are UTC (end with Z)")
    return moment.astimezone(dt.timezone.utc)


def parse_tags(text: str) -> dict[str, str]:
    try:
        tags = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FieldRuleError("Tags", "tags", f"is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(tags, dict):
        raise FieldRuleError("Tags", "tags", f"must be a JSON object of string values, got a JSON {type(tags).__name__}")
    not_strings = sorted(k for k, v in tags.items() if not isinstance(v, str))
    if not_strings:
        raise FieldRuleError("Tags", "tags", f"tag value{'s' if len(not_strings) > 1 else ''} of "
                             f"{', '.join(map(repr, not_strings))} must be string{'s' if len(not_strings) > 1 else ''}")
    return tags


def parse_focus_row(
    cells: Mapping[str, str], focus_version: str, *, line: int, content_hash: str, source_file: str | None,
) -> FocusRow:
    """One CSV row (column → text) as a cloud_cost_line record, or every rule it breaks. Empty cells are FOCUS nulls."""
    problems: list[FieldRuleError] = []
    values: dict[str, Any] = {}

    def text(column: str) -> str:
        return (cells.get(column) or "").strip()

    for column in MONEY_COLUMNS + QUANTITY_COLUMNS:
        raw = text(column)
        if not raw:
            values[column] = None
            if column in MONEY_COLUMNS:
                problems.append(FieldRuleError(column, "required", "must not be empty (a mandatory FOCUS cost column)"))
            continue
        try:
            values[column] = parse_decimal(column, raw)
        except FieldRuleError as exc:
            values[column] = None
            problems.append(exc)
    for column in TIMESTAMP_COLUMNS:
        raw = text(column)
        values[column] = None
        if not raw:
            problems.append(FieldRuleError(column, "required", "must not be empty (a mandatory FOCUS date-time)"))
            continue
        try:
            values[column] = parse_timestamp(column, raw)
        except FieldRuleError as exc:
            problems.append(exc)
    for column in STRING_COLUMNS:
        values[column] = text(column) or None
    tags_text = text("Tags")
    values["Tags"] = {}
    if tags_text:
        try:
            values["Tags"] = parse_tags(tags_text)
        except FieldRuleError as exc:
            problems.append(exc)

    record = {
        "event_id": focus_event_id(content_hash, line),
        "focus_version": focus_version,
        **values,
        "source_file": source_file,
        "source_line": line,
    }
    problems += check_cloud_cost_line(record)
    if problems:
        return FocusRow(line, None, tuple(RowError(line, p.field, p.rule, p.message) for p in problems))
    return FocusRow(line, record)


def check_cloud_cost_line(record: Mapping[str, Any]) -> list[FieldRuleError]:
    """The rules that hold between fields of a decoded record; fields that are None (unparsable, reported
    already) are skipped except where a value is required. The billing agent runs these on every message too.
    The text rules come first; a column that breaks one is reported for that alone."""
    version = record.get("focus_version")
    if version not in FOCUS_VERSIONS:
        long = isinstance(version, str) and len(version) > NAME_MAX_CHARS
        shown = f"a {len(version)}-character value" if long else repr(version)
        return [FieldRuleError("focus_version", "one_of", f"{shown} is not one of {', '.join(FOCUS_VERSIONS)}")]
    text_problems = check_text_columns(record)
    if text_problems:
        # the rules below never see (or quote) a column that broke a text rule
        failed = {p.field for p in text_problems}
        rest = _check_fields({k: v for k, v in record.items() if k not in failed}, version)
        return text_problems + [p for p in rest if p.field not in failed]
    return _check_fields(record, version)


def check_text_columns(record: Mapping[str, Any]) -> list[FieldRuleError]:
    """The length and character rules of every text column and of the tags: one problem per column (Tags: the
    first broken tag), each naming the column and the rule (max_length, printable, max_entries)."""
    problems: list[FieldRuleError] = []
    for column, max_chars in TEXT_COLUMN_LIMITS.items():
        try:
            check_text(column, _string(record.get(column)), max_chars)
        except FieldRuleError as exc:
            problems.append(exc)
    for column, max_chars in DESCRIPTIVE_MAX_CHARS.items():
        value = _string(record.get(column))
        if len(value) > max_chars:
            problems.append(FieldRuleError(column, "max_length", f"must be at most {max_chars} characters, got {len(value)}"))
    try:
        check_tags(record.get("Tags"))
    except FieldRuleError as exc:
        problems.append(exc)
    return problems


def check_tags(tags: Mapping[str, str] | None) -> None:
    """Raise FieldRuleError (field Tags; rule max_entries, max_length or printable) for the first broken tag rule:
    at most TAGS_MAX tags, keys and values printable and at most 256 characters (a tab is allowed in a value, as
    in a label), a value that becomes a dimension at most 128 characters and no tab. The message names the key
    once the key itself has passed, never the value."""
    if not tags:
        return
    if len(tags) > TAGS_MAX:
        raise FieldRuleError("Tags", "max_entries", f"must have at most {TAGS_MAX} tags, got {len(tags)}")
    dimension_keys = {alias for aliases in TAG_ALIASES.values() for alias in aliases}
    for key in sorted(tags):
        _check_tag_text("the tag key", key, TAG_KEY_MAX_CHARS)
        value = _string(tags[key])
        if normalize_tag_key(key) in dimension_keys:
            _check_tag_text(f"the value of tag {key!r} (a dimension)", value, NAME_MAX_CHARS)
        else:
            _check_tag_text(f"the value of tag {key!r}", value, TAG_VALUE_MAX_CHARS, allow_tabs=True)


def _check_tag_text(what: str, value: str, max_chars: int, *, allow_tabs: bool = False) -> None:
    """A text rule on part of the Tags column, reported as the column Tags with `what` in the message."""
    try:
        check_text(what, value, max_chars, allow_tabs=allow_tabs)
    except FieldRuleError as exc:
        raise FieldRuleError("Tags", exc.rule, f"{what} {exc.message}") from None


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _check_fields(record: Mapping[str, Any], version: str) -> list[FieldRuleError]:
    problems: list[FieldRuleError] = []
    for column in REQUIRED_STRINGS[version]:
        if not (record.get(column) or "").strip():
            problems.append(FieldRuleError(column, "required", f"must not be empty (mandatory in FOCUS {version})"))
    for start, end in (("ChargePeriodStart", "ChargePeriodEnd"), ("BillingPeriodStart", "BillingPeriodEnd")):
        if record.get(start) is not None and record.get(end) is not None and not record[start] < record[end]:
            problems.append(FieldRuleError(
                end, "period_order",
                f"{_iso(record[end])} is not after {start} {_iso(record[start])} (the start is inclusive, the end exclusive)",
            ))
    currency = (record.get("BillingCurrency") or "").strip()
    if currency and currency not in SUPPORTED_CURRENCIES:
        problems.append(FieldRuleError(
            "BillingCurrency", "currency", f"{currency!r} is not supported: only {', '.join(SUPPORTED_CURRENCIES)} bills can be ingested for now",
        ))
    for column, allowed, nullable in (
        ("ChargeCategory", CHARGE_CATEGORIES, False), ("ChargeClass", CHARGE_CLASSES, True),
        ("ServiceCategory", SERVICE_CATEGORIES, False),
    ):
        value = record.get(column)
        if value and value not in allowed:
            also = " or empty" if nullable else ""
            problems.append(FieldRuleError(column, "one_of", f"{value!r} is not one of {', '.join(allowed)}{also}"))
    for quantity, unit in UNIT_OF.items():
        if record.get(quantity) is not None and not (record.get(unit) or "").strip():
            problems.append(FieldRuleError(unit, "required_with", f"must not be empty when {quantity} is set"))
    return problems


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------------------------
# totals


@dataclass
class CostTotal:
    rows: int = 0
    BilledCost: Decimal = Decimal(0)
    EffectiveCost: Decimal = Decimal(0)

    def add(self, record: Mapping[str, Any]) -> None:
        self.rows += 1
        self.BilledCost = _EXACT.add(self.BilledCost, record["BilledCost"])
        self.EffectiveCost = _EXACT.add(self.EffectiveCost, record["EffectiveCost"])

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "BilledCost": self.BilledCost, "EffectiveCost": self.EffectiveCost}


@dataclass
class FocusTotals:
    """BilledCost and EffectiveCost of the accepted rows by ServiceName, by ChargeCategory and in all; exact."""

    by_service_name: dict[str, CostTotal] = field(default_factory=dict)
    by_charge_category: dict[str, CostTotal] = field(default_factory=dict)
    total: CostTotal = field(default_factory=CostTotal)

    def add(self, record: Mapping[str, Any]) -> None:
        self.by_service_name.setdefault(record["ServiceName"], CostTotal()).add(record)
        self.by_charge_category.setdefault(record["ChargeCategory"], CostTotal()).add(record)
        self.total.add(record)

    def as_dict(self) -> dict[str, Any]:
        """Groups ordered by EffectiveCost, largest first (then by name), so the table reads like a bill."""

        def rows(groups: dict[str, CostTotal], key: str) -> list[dict[str, Any]]:
            ordered = sorted(groups.items(), key=lambda item: (-item[1].EffectiveCost, item[0]))
            return [{key: name, **total.as_dict()} for name, total in ordered]

        return {
            "by_service_name": rows(self.by_service_name, "ServiceName"),
            "by_charge_category": rows(self.by_charge_category, "ChargeCategory"),
            "total": self.total.as_dict(),
        }


@dataclass
class FocusIngest:
    """A whole file read into memory: for tests and small files (the CLI streams instead)."""

    file: FocusFile
    records: list[dict[str, Any]]
    errors: list[RowError]
    totals: FocusTotals

    @property
    def bad_lines(self) -> list[int]:
        return sorted({e.line for e in self.errors})


def read_focus_file(path: str | os.PathLike[str], focus_version: str | None = None) -> FocusIngest:
    focus_file = open_focus_file(path, focus_version)
    records: list[dict[str, Any]] = []
    errors: list[RowError] = []
    totals = FocusTotals()
    for row in iter_focus_rows(focus_file):
        if row.record is None:
            errors.extend(row.errors)
        else:
            records.append(row.record)
            totals.add(row.record)
    return FocusIngest(focus_file, records, errors, totals)


# ---------------------------------------------------------------------------------------------------------------
# cost lines

# Tag keys are compared lower-cased, with AWS's "user:" prefix dropped and "_" or spaces read as "-".
# For each dimension the first alias with a non-blank value wins.
TAG_ALIASES: dict[str, tuple[str, ...]] = {
    "tenant": ("tenant", "tenant-id"),
    "team": ("team", "cost-center", "costcenter"),
    "product": ("product",),
    "service": ("service",),
    "feature": ("feature",),
    "environment": ("environment", "env"),
    "customer": ("customer", "customer-id"),
}


def normalize_tag_key(key: str) -> str:
    key = key.strip().lower()
    key = key.removeprefix("user:")
    return re.sub(r"[\s_]+", "-", key)


def dimensions_from_tags(tags: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(dimensions, tag_source) from a bill line's Tags: explicit where a tag names it, else unallocated/default
    (customer: None/default). Of several original keys with the same normalized form, the first in sorted order wins."""
    by_key: dict[str, str] = {}
    for key in sorted(tags):
        value = (tags[key] or "").strip()
        if value:
            by_key.setdefault(normalize_tag_key(key), value)
    dims: dict[str, Any] = {}
    source: dict[str, str] = {}
    for dimension, aliases in TAG_ALIASES.items():
        value = next((by_key[a] for a in aliases if a in by_key), None)
        if value is None:
            dims[dimension] = None if dimension == "customer" else UNALLOCATED
            source[dimension] = "default"
        else:
            dims[dimension] = value if dimension == "customer" else normalize(value)
            source[dimension] = "explicit"
    return dims, source


def cloud_provider(record: Mapping[str, Any]) -> str:
    """Who provides the billed service: ProviderName (1.2) or ServiceProviderName (1.3)."""
    return record.get("ServiceProviderName") or record.get("ProviderName") or record.get("HostProviderName") or UNALLOCATED


def cloud_cost_line_to_cost_line(record: Mapping[str, Any]) -> dict[str, Any]:
    """A FOCUS row as a cost line: cost_usd = EffectiveCost (what it cost after discounts and amortization),
    billed_cost_usd = BilledCost (what the invoice says), model = ServiceName (the thing billed)."""
    dims, tag_source = dimensions_from_tags(record.get("Tags") or {})
    tag_source.update(provider="explicit", model="explicit")
    if record.get("ConsumedQuantity") is not None:
        quantity, unit = record["ConsumedQuantity"], record.get("ConsumedUnit") or ""
    elif record.get("PricingQuantity") is not None:
        quantity, unit = record["PricingQuantity"], record.get("PricingUnit") or ""
    else:
        quantity, unit = Decimal(0), ""
    labels = dict(record.get("Tags") or {})
    for column in ("BillingAccountId", "ServiceCategory", "SkuId", "HostProviderName"):
        if record.get(column):
            labels[f"focus.{column}"] = record[column]
    return {
        "line_id": cost_line_id("cloud", record["event_id"]),
        "source": "cloud",
        "source_event_id": record["event_id"],
        "event_time": record["ChargePeriodStart"],
        **{k: dims[k] for k in ("tenant", "team", "product", "service", "feature", "customer", "environment")},
        "user_hash": None,
        "provider": cloud_provider(record),
        "model": record["ServiceName"],
        "region": record.get("RegionId"),
        "resource": record.get("ResourceId"),
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "usage_quantity": quantity,
        "usage_unit": unit,
        "cost_usd": record["EffectiveCost"],
        "billed_cost_usd": record["BilledCost"],
        "list_cost_usd": record["ListCost"],
        "charge_category": record["ChargeCategory"],
        "priced": True,
        "price_version": f"focus-{record['focus_version']}",
        "status": "ok",
        "tag_source": tag_source,
        "labels": labels,
    }


def process_cloud_cost_line(value: bytes | None) -> dict[str, Any] | Rejection:
    """The billing agent's per-message logic: decode, re-check the rules (a record may come from any producer,
    not only `prismops ingest`), map to a cost line."""
    try:
        record = codec_for("cloud_cost_line").decode(value)
    except CodecError as exc:
        return Rejection(exc.field, exc.rule, exc.message)
    problems = check_cloud_cost_line(record)
    if problems:
        first = problems[0]
        return Rejection(first.field, first.rule, "; ".join(str(p) for p in problems))
    return cloud_cost_line_to_cost_line(record)
