"""FOCUS 1.0–1.3 cost-and-usage files in, cloud_cost_line records out; and those records as cost lines.

Plain Python (no Kafka, no ClickHouse), used by `prismops ingest focus` (file → records) and by the billing agent
(record → cost line). Files are read as providers deliver them: `.csv`, `.csv.gz`, a `.zip` of `.csv` (or
`.csv.gz`) files and Parquet, told apart by their first bytes, not their names; UTF-8 with or without a byte-order
mark, LF or CRLF line ends. An empty cell and the literal `NULL` are both FOCUS nulls.

The rules, each with the name bad rows and dead letters carry:

- file level (`FocusFileError`, nothing from the file is ingested): `readable`, `utf8`, `csv`, `header`,
  `duplicate_column`, `focus_version`, `mandatory_column`, `unchanged`, `parquet` (pyarrow missing);
- row level (`RowError`, the row is rejected, the other rows are not): `column_count`, `required`,
  `decimal` (plain decimal text; never parsed through a float), `decimal_scale` (more than 38 places),
  `decimal_precision` (more than 26 digits before the point: more than a Decimal(38, 12) holds), `timestamp`
  (ISO-8601; with Z or an offset, or without one: then read as UTC, as FOCUS date-times are, and counted in
  `FocusRow.naive_timestamps` so the command can warn), `period_order` (start < end; FOCUS ends are exclusive),
  `currency` (an ISO 4217 code: three capital letters), `one_of` (ChargeCategory, ChargeClass, ServiceCategory,
  focus_version), `required_with` (a quantity needs its unit), `tags` (a JSON object; its values may be any JSON
  value), `max_length` and `printable` (the text limits of `TEXT_COLUMN_LIMITS` and of tags, see
  `check_text_columns`), `max_entries` (at most 64 tags).

Precision (the FOCUS spec sets no limit on decimal places): every decimal cell is read exactly and kept exactly
as text in the record's `exact_decimals` (up to 38 places, beyond any bill seen). The Avro decimal fields (and so
the cost lines, Decimal(38, 12)) hold the value at 12 places: money columns are rounded ONCE with the residue
carried along the file (`MoneyCarry`): within one chain (BillingAccountId, BillingPeriodStart, BillingCurrency,
column), in file order, each rounded value is round(exact running sum) − round(previous running sum), so every
prefix of a chain, and the chain as a whole, sums to the exact sum rounded once half-even to 12 places: equal to
the file's column sum to the last digit whenever that sum has at most 12 places (an invoice total always does).
No single line moves by more than 1e-12. Quantities are not money: they are rounded half-even per value, exact
text kept. The totals `FocusTotals` prints are summed from the exact values, so they are the file's column sums.

Tags: the record's `Tags` map holds each value as text (a string as is, true/false, a number as written, null as
"", an object or array as compact JSON); `tags_json` keeps the column's JSON exactly, types included. FOCUS writes
a tag without a value as `true`. Only string and number values can name a dimension (tenant, team, ...).

Currencies: any ISO 4217 BillingCurrency is kept in its currency (see `cloud_cost_line_to_cost_line`).

Event ids are the SHA-256 of the file's bytes, the export sequence the ingest gave the row's billing period (when
it has one, see sinks/billing_exports.py) and the row's place in the file (line, or member and line of a zip,
or row of a Parquet file), so ingesting the same file again for the same export produces the same ids (and the same
cost line ids): the sink then writes no duplicate. A file that differs by one byte is a different file, and all
its ids differ.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import decimal
import gzip
import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from prismops.finops.llm_usage import Rejection, cost_line_id
from prismops.finops.tagging import UNALLOCATED, normalize
from prismops.finops.text_rules import ID_MAX_CHARS, LABELS_MAX, NAME_MAX_CHARS, TEXT_MAX_CHARS, check_text
from prismops.streams.codecs import CodecError, codec_for
from prismops.errors import FieldRuleError

FOCUS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")
CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")  # ISO 4217 alphabetic code
NULL_TEXT = "NULL"  # the FinOps Foundation's own samples write nulls so
CHARGE_CATEGORIES = ("Usage", "Purchase", "Tax", "Credit", "Adjustment")
CHARGE_CLASSES = ("Correction",)  # or null
SERVICE_CATEGORIES = (
    "AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases", "Developer Tools",
    "Multicloud", "Identity", "Integration", "Internet of Things", "Management and Governance", "Media",
    "Migration", "Mobile", "Networking", "Security", "Storage", "Web", "Other",
)

# The columns whose "Feature level" is Mandatory in the spec (FOCUS_Spec specification/columns/*.md): the same 21
# columns in 1.0, 1.1 and 1.2.
_MANDATORY_1_0 = (
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "ChargePeriodStart", "ChargePeriodEnd",
    "ChargeCategory", "ChargeClass", "ChargeDescription", "BillingAccountId", "BillingAccountName",
    "BillingCurrency", "BillingPeriodStart", "BillingPeriodEnd", "InvoiceIssuerName", "ProviderName",
    "PublisherName", "PricingQuantity", "PricingUnit", "ServiceCategory", "ServiceName",
)
MANDATORY_COLUMNS: dict[str, tuple[str, ...]] = {
    "1.0": _MANDATORY_1_0,
    "1.1": _MANDATORY_1_0,
    "1.2": _MANDATORY_1_0,
    # DESIGN.md: 1.3 makes ServiceProviderName and HostProviderName mandatory in place of ProviderName.
    "1.3": tuple(c for c in _MANDATORY_1_0 if c != "ProviderName") + ("ServiceProviderName", "HostProviderName"),
}
# The columns each version added (the spec's tags v1.0, v1.1, v1.2 and DESIGN.md for 1.3): how the version is
# told from a header. A file is taken as the newest version whose added columns it has any of; a 1.1 or 1.2 file
# that carries none of its version's optional new columns reads as the version before, which has the same
# mandatory columns and rules, so only the recorded focus_version differs (pass --focus-version to set it).
INTRODUCED_COLUMNS: dict[str, tuple[str, ...]] = {
    "1.1": ("CapacityReservationId", "CapacityReservationStatus", "CommitmentDiscountQuantity",
            "CommitmentDiscountUnit", "ServiceSubcategory", "SkuMeter", "SkuPriceDetails"),
    "1.2": ("BillingAccountType", "InvoiceId", "PricingCurrency", "PricingCurrencyContractedUnitPrice",
            "PricingCurrencyEffectiveCost", "PricingCurrencyListUnitPrice", "SubAccountType"),
    "1.3": ("ServiceProviderName", "HostProviderName"),
}

MONEY_COLUMNS = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")
QUANTITY_COLUMNS = ("PricingQuantity", "ConsumedQuantity")
DECIMAL_COLUMNS = MONEY_COLUMNS + QUANTITY_COLUMNS
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
    "1.0": _COMMON_REQUIRED_STRINGS + ("ProviderName",),
    "1.1": _COMMON_REQUIRED_STRINGS + ("ProviderName",),
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
# may span lines); source_file is a path (with a zip member's name), so up to Linux's PATH_MAX.
DESCRIPTIVE_MAX_CHARS: dict[str, int] = {
    **{c: TEXT_MAX_CHARS for c in STRING_COLUMNS if c not in TEXT_COLUMN_LIMITS}, "source_file": 4096,
}
# Tags: every key and value becomes a cost-line label; the values of tenant, team, product, service, feature,
# environment and customer tags become dimensions, so those are names. Keys may carry a provider prefix such as
# AWS's "user:" on top of the provider's 128-character limit; cloud providers cap tag values at 256.
TAGS_MAX = LABELS_MAX
TAG_KEY_MAX_CHARS = ID_MAX_CHARS
TAG_VALUE_MAX_CHARS = ID_MAX_CHARS
TAGS_JSON_MAX_CHARS = 65_536  # the Tags cell as written: 64 tags of 256 + 256 characters fit with room to spare

MONEY_SCALE, MONEY_PRECISION = 12, 38  # the Avro decimal(38, 12) of cloud_cost_line and cost_line
MAX_INTEGER_DIGITS = MONEY_PRECISION - MONEY_SCALE  # 26: what a Decimal(38, 12) holds before the point
MAX_DECIMAL_PLACES = 38  # the largest scale of a Decimal128; far beyond any bill (AWS writes up to 16)
_TWELVE_PLACES = Decimal(1).scaleb(-MONEY_SCALE)
_DECIMAL_TEXT = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_EXPONENT_LIMIT = 1000  # an exponent beyond ±1000 is refused before Decimal expands it
# Wide enough that no sum of accepted values (26 + 38 digits) is ever rounded; Inexact traps if one would be.
_EXACT = decimal.Context(prec=200, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])
# Rounding to 12 places is meant to be inexact: the same width, half-even, without the Inexact trap.
_ROUNDING = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation, decimal.Overflow])


class FocusFileError(FieldRuleError):
    """A problem with the whole file (unreadable, not CSV, a mandatory column missing): nothing is ingested."""


@dataclass(frozen=True)
class RowError:
    """One broken rule of one data row; `line` is the physical line where the row starts (the header is line 1),
    or the row number of a Parquet file (the first data row is 1); `member` names the file inside a zip."""

    line: int
    column: str | None
    rule: str
    message: str
    member: str | None = None

    def as_dict(self) -> dict[str, Any]:
        found = {"line": self.line, "column": self.column, "rule": self.rule, "message": self.message}
        return found | ({"member": self.member} if self.member is not None else {})


@dataclass(frozen=True)
class FocusRow:
    """A data row: its cloud_cost_line record when every rule holds, else the rules it breaks."""

    line: int
    record: dict[str, Any] | None
    errors: tuple[RowError, ...] = ()
    naive_timestamps: int = 0  # date-times without Z or an offset, read as UTC
    member: str | None = None


@dataclass(frozen=True)
class FocusPart:
    """One table of a file: the file itself, or one CSV member of a zip (`member` its name in the archive)."""

    member: str | None
    columns: tuple[str, ...]
    compressed: bool = False  # a .csv.gz member of a zip


@dataclass(frozen=True)
class FocusFile:
    """An opened FOCUS file: its format, version, columns and content hash; read its rows with `iter_focus_rows`."""

    path: Path
    focus_version: str
    columns: tuple[str, ...]
    content_hash: str
    size_bytes: int
    modified_ns: int
    format: str = "csv"  # csv, csv.gz, zip or parquet
    parts: tuple[FocusPart, ...] = ()


# ---------------------------------------------------------------------------------------------------------------
# the file

_GZIP_MAGIC, _ZIP_MAGICS, _PARQUET_MAGIC = b"\x1f\x8b", (b"PK\x03\x04", b"PK\x05\x06"), b"PAR1"


def detect_focus_version(columns: Iterable[str]) -> str:
    """1.3 names ServiceProviderName/HostProviderName where 1.0–1.2 have ProviderName (a 1.3 file may keep both);
    among 1.0–1.2, the newest version whose added columns the header has (see INTRODUCED_COLUMNS)."""
    present = set(columns)
    if present & set(INTRODUCED_COLUMNS["1.3"]):
        return "1.3"
    if "ProviderName" not in present:
        raise FocusFileError(
            "ProviderName", "mandatory_column",
            "mandatory column ProviderName (FOCUS 1.0-1.2) or ServiceProviderName and HostProviderName (FOCUS 1.3) "
            "is missing, so the FOCUS version cannot be told; add the column or pass --focus-version",
        )
    for version in ("1.2", "1.1"):
        if present & set(INTRODUCED_COLUMNS[version]):
            return version
    return "1.0"


def check_mandatory_columns(columns: Sequence[str], focus_version: str, *, where: str = "") -> None:
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
        f"{where}mandatory FOCUS {focus_version} column{'s' if len(missing) > 1 else ''} missing: {', '.join(hints)}",
    )


def file_format(path: Path) -> str:
    """csv, csv.gz, zip or parquet, from the file's first bytes (a name can lie; a cloud's export names rarely do)."""
    with path.open("rb") as raw:
        head = raw.read(4)
    if head[:2] == _GZIP_MAGIC:
        return "csv.gz"
    if head in _ZIP_MAGICS:
        return "zip"
    if head == _PARQUET_MAGIC:
        return "parquet"
    return "csv"


def open_focus_file(path: str | os.PathLike[str], focus_version: str | None = None) -> FocusFile:
    """Hash the file, check every CSV table in it is UTF-8, read the headers, settle the version, check the columns.

    Every file-level problem is found here, before any row is read, so a file is either ingested or not touched.
    """
    path = Path(path)
    try:
        stat = path.stat()
        content_hash = _sha256(path)
        fmt = file_format(path)
    except OSError as exc:
        raise FocusFileError(None, "readable", f"cannot read {path}: {exc.strerror or exc}") from exc
    if fmt == "parquet":
        parts = (FocusPart(None, _parquet_columns(path)),)
    elif fmt == "zip":
        parts = tuple(_zip_parts(path))
    else:
        parts = (FocusPart(None, _csv_header(path, fmt, None, False)),)
    for part in parts:
        where = f"{path}!{part.member}: " if part.member else ""
        if not any(part.columns):
            raise FocusFileError(None, "header", f"{path}{'!' + part.member if part.member else ''} is empty: a FOCUS "
                                 "file starts with a header row of column names")
        repeated = sorted({c for c in part.columns if part.columns.count(c) > 1})
        if repeated:
            raise FocusFileError(", ".join(repeated), "duplicate_column", f"{where}column{'s' if len(repeated) > 1 else ''} "
                                 f"{', '.join(repeated)} appear more than once in the header")
    version = focus_version or detect_focus_version(parts[0].columns)
    for part in parts:
        check_mandatory_columns(part.columns, version, where=f"{part.member}: " if part.member else "")
    return FocusFile(path, version, parts[0].columns, content_hash, stat.st_size, stat.st_mtime_ns, fmt, parts)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as raw:
        while chunk := raw.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _label(path: Path, member: str | None) -> str:
    return f"{path}!{member}" if member else str(path)


@contextmanager
def _binary_table(path: Path, fmt: str, member: str | None, compressed: bool,
                  counter: Callable[[int], None] | None = None) -> Iterator[IO[bytes]]:
    """The bytes of one CSV table, decompressed; `counter` hears how many bytes of the file have been read."""
    if fmt == "zip":
        with zipfile.ZipFile(path) as archive, archive.open(member or "") as stream:
            yield gzip.GzipFile(fileobj=stream) if compressed else stream
        return
    with path.open("rb", buffering=0) as raw:
        source: IO[bytes] = io.BufferedReader(_CountingReader(raw, counter)) if counter else raw  # type: ignore[arg-type]
        yield gzip.GzipFile(fileobj=source) if fmt == "csv.gz" else source


_DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, zipfile.LargeZipFile)


def _csv_header(path: Path, fmt: str, member: str | None, compressed: bool) -> tuple[str, ...]:
    """Check the table is UTF-8 (naming the first line that is not) and return its header's column names."""
    label = _label(path, member)
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    try:
        with _binary_table(path, fmt, member, compressed) as stream:
            while chunk := stream.read(1 << 20):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    line_at = line + chunk[: exc.start].count(b"\n")
                    raise FocusFileError(None, "utf8", f"{label}: line {line_at} is not UTF-8 text ({exc.reason})") from exc
                line += chunk.count(b"\n")
            decoder.decode(b"", final=True)
        with _binary_table(path, fmt, member, compressed) as stream:
            text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
            header = next(csv.reader(text), None)
    except UnicodeDecodeError as exc:
        raise FocusFileError(None, "utf8", f"{label}: the file ends inside a UTF-8 character") from exc
    except csv.Error as exc:
        raise FocusFileError(None, "csv", f"{label}: the header is not valid CSV: {exc}") from exc
    except _DECOMPRESSION_ERRORS as exc:
        what = {"csv.gz": "a readable gzip file", "zip": "a readable zip file"}.get(fmt, "readable")
        raise FocusFileError(None, "readable", f"cannot read {label}: not {what} ({getattr(exc, 'strerror', None) or exc})") from exc
    return tuple(c.strip() for c in header or ())


def _zip_parts(path: Path) -> Iterator[FocusPart]:
    """The .csv and .csv.gz members of a zip, in name order (folders, macOS resource forks and dot files left out)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(
                info.filename for info in archive.infolist()
                if not info.is_dir() and not info.filename.startswith("__MACOSX/")
                and not Path(info.filename).name.startswith(".")
                and info.filename.lower().endswith((".csv", ".csv.gz"))
            )
    except _DECOMPRESSION_ERRORS as exc:
        raise FocusFileError(None, "readable", f"cannot read {path}: not a readable zip file ({exc})") from exc
    if not names:
        raise FocusFileError(None, "readable", f"{path} is a zip file with no .csv or .csv.gz file in it")
    for name in names:
        compressed = name.lower().endswith(".gz")
        yield FocusPart(name, _csv_header(path, "zip", name, compressed), compressed)


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as parquet  # the platform extra installs it
    except ImportError as exc:  # pragma: no cover - the platform extra installs pyarrow
        raise FocusFileError(None, "parquet", "reading Parquet needs pyarrow: pip install 'prismops[platform]'") from exc
    return parquet


def _parquet_columns(path: Path) -> tuple[str, ...]:
    parquet = _pyarrow_parquet()
    try:
        return tuple(parquet.ParquetFile(path).schema_arrow.names)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise FocusFileError(None, "readable", f"cannot read {path}: not a readable Parquet file ({exc})") from exc


class _CountingReader(io.RawIOBase):
    """Reports how many bytes have been read, for a progress bar over a file of unknown row count."""

    def __init__(self, raw: Any, on_bytes: Callable[[int], None]):
        self._raw, self._on_bytes, self.count = raw, on_bytes, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer) or 0
        self.count += n
        self._on_bytes(self.count)
        return n


def iter_focus_rows(
    focus_file: FocusFile, on_bytes: Callable[[int], None] | None = None, *,
    export_seqs: Mapping[tuple[str, dt.datetime], int] | None = None,
) -> Iterator[FocusRow]:
    """Every data row of the file, parsed and checked, money rounded with the carry (`MoneyCarry`); blank lines are
    skipped. `export_seqs` gives the export sequence of each (BillingAccountId, BillingPeriodStart) the ingest put in
    force (it becomes part of the event ids). Raises FocusFileError if the file changed since it was opened (its ids
    would no longer match its content) or stops being valid CSV."""
    _check_unchanged(focus_file)
    notify = on_bytes or (lambda _n: None)
    carry = MoneyCarry()
    parts = focus_file.parts or (FocusPart(None, focus_file.columns),)
    many = len(parts) > 1 or parts[0].member is not None
    for index, part in enumerate(parts):
        source_file = _label(focus_file.path, part.member)
        if focus_file.format == "parquet":
            cells_of = _parquet_cells(focus_file.path, notify, focus_file.size_bytes)
        else:
            cells_of = _csv_cells(focus_file, part, notify)
        for line, cells in cells_of:
            if isinstance(cells, int):
                error = RowError(line, None, "column_count",
                                 f"the row has {cells} values, the header {len(part.columns)} columns", part.member)
                yield FocusRow(line, None, (error,), member=part.member)
                continue
            yield parse_focus_row(
                cells, focus_file.focus_version, line=line, content_hash=focus_file.content_hash,
                source_file=source_file, member=part.member, place=f"{index + 1}/{line}" if many else str(line),
                carry=carry, export_seqs=export_seqs,
            )
    if focus_file.format == "zip":
        notify(focus_file.size_bytes)
    _check_unchanged(focus_file)


def _csv_cells(focus_file: FocusFile, part: FocusPart, notify: Callable[[int], None]) -> Iterator[tuple[int, Any]]:
    """(line, column → text) of every non-blank data row of one CSV table, or (line, number of values) for a row
    whose width differs from the header's."""
    label = _label(focus_file.path, part.member)
    width = len(part.columns)
    counter = None if focus_file.format == "zip" else notify
    try:
        with _binary_table(focus_file.path, focus_file.format, part.member, part.compressed, counter) as stream:
            reader = csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig", newline=""))
            try:
                next(reader)  # the header, checked by open_focus_file
                previous_end = reader.line_num
                for cells in reader:
                    line, previous_end = previous_end + 1, reader.line_num
                    if not cells or (len(cells) == 1 and not cells[0].strip()):
                        continue
                    if len(cells) != width:
                        yield line, len(cells)
                        continue
                    yield line, dict(zip(part.columns, cells))
            except csv.Error as exc:
                raise FocusFileError(None, "csv", f"{label}: line {reader.line_num} is not valid CSV: {exc}") from exc
    except UnicodeDecodeError as exc:  # checked when opened: the file changed since
        raise FocusFileError(None, "unchanged", f"{label} changed while it was being read; ingest it again") from exc
    except _DECOMPRESSION_ERRORS as exc:
        raise FocusFileError(None, "readable", f"cannot read {label}: {getattr(exc, 'strerror', None) or exc}") from exc


def _parquet_cells(path: Path, notify: Callable[[int], None], size: int) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, column → text) of every row of a Parquet file: each typed value as the text a CSV export would
    hold (see `parquet_cell_text`), so both formats go through the same rules."""
    parquet = _pyarrow_parquet()
    try:
        handle = parquet.ParquetFile(path)
        total = max(handle.metadata.num_rows, 1)
        batches = handle.iter_batches(batch_size=8192)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise FocusFileError(None, "readable", f"cannot read {path}: not a readable Parquet file ({exc})") from exc
    row = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except Exception as exc:
            raise FocusFileError(None, "readable", f"cannot read {path}: row {row + 1}: {exc}") from exc
        names = batch.schema.names
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for c, field_of in enumerate(batch.schema):  # a map comes as key/value pairs: an object, even when empty
            if str(field_of.type).startswith("map<"):
                columns[c] = [None if v is None else dict(v) for v in columns[c]]
        for i in range(batch.num_rows):
            row += 1
            yield row, {name: parquet_cell_text(columns[c][i]) for c, name in enumerate(names)}
        notify(size * row // total)


def parquet_cell_text(value: Any) -> str:
    """A Parquet value as CSV text: null "", a string as is, a decimal exactly, a double by its shortest round-trip
    text (repr: the decimal the exporter wrote, never the binary expansion), a date-time in ISO-8601 (a zone-less
    one stays zone-less and is counted like a CSV one), a map, struct or list as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return format(value, "f") if isinstance(value, Decimal) else repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "isoformat"):  # datetime, date, pandas Timestamp
        return value.isoformat()
    return json_text(value)


class _JsonNumber(str):
    """A JSON number kept as the text it was written with (never through a float)."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_text(value: Any) -> str:
    """Compact JSON of a decoded value, numbers exactly as written (`_JsonNumber`) or as exact decimals; a list of
    key/value pairs (how pyarrow hands over a map) becomes an object."""
    if isinstance(value, _JsonNumber):
        return str(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else "null"
    if isinstance(value, (list, tuple)) and value and all(isinstance(x, tuple) and len(x) == 2 for x in value):
        value = dict(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(json_text(v) for v in value) + "]"
    if hasattr(value, "isoformat"):
        return json.dumps(value.isoformat())
    if isinstance(value, bytes):
        return json.dumps(value.decode("utf-8", "replace"), ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


def _check_unchanged(focus_file: FocusFile) -> None:
    try:
        stat = focus_file.path.stat()
    except OSError as exc:
        raise FocusFileError(None, "readable", f"cannot read {focus_file.path}: {exc.strerror or exc}") from exc
    if (stat.st_size, stat.st_mtime_ns) != (focus_file.size_bytes, focus_file.modified_ns):
        raise FocusFileError(None, "unchanged", f"{focus_file.path} changed while it was being read; ingest it again")


# ---------------------------------------------------------------------------------------------------------------
# one row


def focus_event_id(content_hash: str, line: int | str, export_seq: int | None = None) -> str:
    """Same file bytes, export and place → same id, so a re-ingest is recognised downstream. `line` is the row's
    place: its line, "member/line" in a zip, its row number in a Parquet file."""
    if export_seq is None:
        return f"focus:{content_hash}:{line}"
    return f"focus:{content_hash}:{export_seq}:{line}"


def parse_decimal(column: str, text: str) -> Decimal:
    """The exact decimal the text writes, plain or exponent notation, never through a float: at most 26 digits
    before the point (`decimal_precision`: what a Decimal(38, 12) holds) and 38 places after it (`decimal_scale`);
    trailing zeros after the point do not count."""
    if not _DECIMAL_TEXT.match(text):
        raise FieldRuleError(column, "decimal", f"{text!r} is not a decimal number (digits, one '.', optional exponent)")
    exponent_text = re.search(r"[eE]([+-]?\d+)$", text)
    if exponent_text and abs(int(exponent_text[1])) > _EXPONENT_LIMIT:
        if int(exponent_text[1]) > 0:
            raise FieldRuleError(column, "decimal_precision", f"{text} has more than {MAX_INTEGER_DIGITS} digits before the point")
        raise FieldRuleError(column, "decimal_scale", f"{text} has more than {MAX_DECIMAL_PLACES} decimal places")
    value = Decimal(text)
    if value and value.adjusted() + 1 > MAX_INTEGER_DIGITS:
        shown = text if len(text) <= 60 else f"a {len(text)}-character number"
        raise FieldRuleError(column, "decimal_precision", f"{shown} has more than {MAX_INTEGER_DIGITS} digits before the point")
    if exponent_text is None:  # plain notation: the places are the fraction's digits without trailing zeros
        places = len(text.partition(".")[2].rstrip("0"))
    else:
        _, digits, exponent = value.as_tuple()
        trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0")) if any(digits) else len(digits)
        places = -(int(exponent) + trailing_zeros)
    if places > MAX_DECIMAL_PLACES:
        shown = text if len(text) <= 60 else f"a {len(text)}-character number"
        raise FieldRuleError(column, "decimal_scale", f"{shown} has more than {MAX_DECIMAL_PLACES} decimal places")
    return value


def _parse_timestamp(column: str, text: str) -> tuple[dt.datetime, bool]:
    """(the moment in UTC, whether the text had no offset and was read as UTC)."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FieldRuleError(column, "timestamp", f"{text!r} is not an ISO-8601 date-time (e.g. 2025-06-01T00:00:00Z)") from None
    naive = moment.tzinfo is None or moment.utcoffset() is None
    if naive:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc), naive


def parse_timestamp(column: str, text: str) -> dt.datetime:
    """ISO-8601 date-time, returned in UTC. FOCUS date-times are UTC, so one without Z or an offset (the FinOps
    Foundation's 1.0 sample writes `2024-09-01 00:00:00`) is read as UTC; `parse_focus_row` counts those."""
    return _parse_timestamp(column, text)[0]


def parse_tags(text: str) -> dict[str, str]:
    """The Tags column (a JSON object) as key → text: a string as is, true/false, a number as written, null as "",
    an object or array as compact JSON. Any JSON value is allowed (FOCUS writes a tag without a value as true)."""
    if len(text) > TAGS_JSON_MAX_CHARS:
        raise FieldRuleError("Tags", "max_length", f"must be at most {TAGS_JSON_MAX_CHARS} characters, got {len(text)}")
    try:
        tags = json.loads(text, parse_float=_JsonNumber, parse_int=_JsonNumber, parse_constant=_no_constants)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        where = f" ({exc.msg} at character {exc.pos})" if isinstance(exc, json.JSONDecodeError) else ""
        raise FieldRuleError("Tags", "tags", f"is not valid JSON{where}") from None
    if not isinstance(tags, dict):
        kind = "string" if isinstance(tags, str) and not isinstance(tags, _JsonNumber) else type(tags).__name__
        raise FieldRuleError("Tags", "tags", f"must be a JSON object of tags, got a JSON {kind}")
    return {key: tag_text(value) for key, value in tags.items()}


def tag_text(value: Any) -> str:
    """One tag value as label text (see `parse_tags`)."""
    if isinstance(value, str):
        return str(value)
    if value is None:
        return ""
    return json_text(value)


def parse_focus_row(
    cells: Mapping[str, str], focus_version: str, *, line: int, content_hash: str, source_file: str | None,
    member: str | None = None, place: str | None = None, carry: MoneyCarry | None = None,
    export_seqs: Mapping[tuple[str, dt.datetime], int] | None = None,
) -> FocusRow:
    """One row (column → text) as a cloud_cost_line record, or every rule it breaks. Empty cells and `NULL` are
    FOCUS nulls. Money is rounded to 12 places through `carry` (per value when there is none), exact text kept."""
    problems: list[FieldRuleError] = []
    values: dict[str, Any] = {}
    exact: dict[str, str] = {}
    naive = 0

    def text(column: str) -> str:
        value = (cells.get(column) or "").strip()
        return "" if value == NULL_TEXT else value

    for column in DECIMAL_COLUMNS:
        raw = text(column)
        values[column] = None
        if not raw:
            if column in MONEY_COLUMNS:
                problems.append(FieldRuleError(column, "required", "must not be empty (a mandatory FOCUS cost column)"))
            continue
        try:
            values[column] = parse_decimal(column, raw)
            exact[column] = format(values[column], "f")
        except FieldRuleError as exc:
            problems.append(exc)
    for column in TIMESTAMP_COLUMNS:
        raw = text(column)
        values[column] = None
        if not raw:
            problems.append(FieldRuleError(column, "required", "must not be empty (a mandatory FOCUS date-time)"))
            continue
        try:
            values[column], without_offset = _parse_timestamp(column, raw)
            naive += without_offset
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

    period = (values.get("BillingAccountId"), values.get("BillingPeriodStart"))
    seq = export_seqs.get(period) if export_seqs is not None and None not in period else None  # type: ignore[arg-type]
    record = {
        "event_id": focus_event_id(content_hash, place or line, seq),
        "focus_version": focus_version,
        **values,
        "source_file": source_file,
        "source_line": line,
        "exact_decimals": exact,
        "tags_json": tags_text or None,
        "export_id": content_hash if seq is not None else None,
        "export_seq": seq,
    }
    problems += check_cloud_cost_line(record)
    if problems:
        return FocusRow(line, None, tuple(RowError(line, p.field, p.rule, p.message, member) for p in problems),
                        naive, member)
    _round_to_twelve_places(record, carry)
    return FocusRow(line, record, (), naive, member)


class MoneyCarry:
    """Rounds money to 12 places once, carrying the residue: within a chain (BillingAccountId, BillingPeriodStart,
    BillingCurrency, column), in file order, a value becomes round(exact running sum) − round(previous running sum),
    half-even. So the rounded values of any prefix of a chain sum to the exact prefix sum rounded once (no drift
    however many lines), and no value moves by more than one unit in the 12th place."""

    def __init__(self) -> None:
        self._exact: dict[tuple[Any, ...], Decimal] = {}
        self._rounded: dict[tuple[Any, ...], Decimal] = {}

    def round(self, chain: tuple[Any, ...], value: Decimal) -> Decimal:
        exact = _EXACT.add(self._exact.get(chain, Decimal(0)), value)
        target = exact.quantize(_TWELVE_PLACES, context=_ROUNDING)
        rounded = _EXACT.subtract(target, self._rounded.get(chain, Decimal(0)))
        self._exact[chain], self._rounded[chain] = exact, target
        return rounded


def _round_to_twelve_places(record: dict[str, Any], carry: MoneyCarry | None) -> None:
    period = (record["BillingAccountId"], record["BillingPeriodStart"], record["BillingCurrency"])
    for column in MONEY_COLUMNS:
        value = record[column]
        if carry is not None:
            record[column] = carry.round((*period, column), value)
        else:
            record[column] = value.quantize(_TWELVE_PLACES, context=_ROUNDING)
    for column in QUANTITY_COLUMNS:
        if record[column] is not None:
            record[column] = record[column].quantize(_TWELVE_PLACES, context=_ROUNDING)


def exact_amount(record: Mapping[str, Any], column: str) -> Decimal | None:
    """A decimal column's exact value: from `exact_decimals` where the record has it (a record written before
    that field existed has only the 12-place value)."""
    text = (record.get("exact_decimals") or {}).get(column)
    return Decimal(text) if text is not None else record.get(column)


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
    currency = record.get("BillingCurrency") or ""
    if currency.strip() and not CURRENCY_CODE.fullmatch(currency):
        problems.append(FieldRuleError(
            "BillingCurrency", "currency", f"{currency!r} is not an ISO 4217 currency code (three capital letters, e.g. USD, EUR)",
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
    """Row count and the exact sums of the four FOCUS cost columns (exact values, never the 12-place ones)."""

    rows: int = 0
    BilledCost: Decimal = Decimal(0)
    EffectiveCost: Decimal = Decimal(0)
    ListCost: Decimal = Decimal(0)
    ContractedCost: Decimal = Decimal(0)

    def add(self, record: Mapping[str, Any], amounts: Mapping[str, Decimal] | None = None) -> None:
        """Count the record; `amounts` (column → exact value) saves reading them again for every group."""
        self.rows += 1
        for column in MONEY_COLUMNS:
            amount = amounts[column] if amounts is not None else exact_amount(record, column)
            setattr(self, column, _EXACT.add(getattr(self, column), amount))

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, **{column: getattr(self, column) for column in MONEY_COLUMNS}}


PeriodKey = tuple[str, dt.datetime, dt.datetime]  # BillingAccountId, BillingPeriodStart, BillingPeriodEnd


@dataclass
class FocusTotals:
    """Rows and BilledCost, EffectiveCost, ListCost and ContractedCost of the accepted rows: in all, by ServiceName,
    by BillingCurrency, by ChargeCategory, and by billing period (account, period, currency); exact, so each equals
    the file's column sum to the last digit. The overall total adds every currency together, as a column sum does."""

    by_service_name: dict[str, CostTotal] = field(default_factory=dict)
    by_billing_currency: dict[str, CostTotal] = field(default_factory=dict)
    by_charge_category: dict[str, CostTotal] = field(default_factory=dict)
    by_period: dict[PeriodKey, dict[str, CostTotal]] = field(default_factory=dict)
    total: CostTotal = field(default_factory=CostTotal)

    def add(self, record: Mapping[str, Any]) -> None:
        amounts = {column: exact_amount(record, column) for column in MONEY_COLUMNS}
        self.by_service_name.setdefault(record["ServiceName"], CostTotal()).add(record, amounts)
        self.by_billing_currency.setdefault(record["BillingCurrency"], CostTotal()).add(record, amounts)
        self.by_charge_category.setdefault(record["ChargeCategory"], CostTotal()).add(record, amounts)
        period = (record["BillingAccountId"], record["BillingPeriodStart"], record["BillingPeriodEnd"])
        self.by_period.setdefault(period, {}).setdefault(record["BillingCurrency"], CostTotal()).add(record, amounts)
        self.total.add(record, amounts)

    def as_dict(self) -> dict[str, Any]:
        """Groups ordered by EffectiveCost, largest first (then by name), so the table reads like a bill."""

        def rows(groups: dict[str, CostTotal], key: str) -> list[dict[str, Any]]:
            ordered = sorted(groups.items(), key=lambda item: (-item[1].EffectiveCost, item[0]))
            return [{key: name, **total.as_dict()} for name, total in ordered]

        return {
            "by_service_name": rows(self.by_service_name, "ServiceName"),
            "by_billing_currency": rows(self.by_billing_currency, "BillingCurrency"),
            "by_charge_category": rows(self.by_charge_category, "ChargeCategory"),
            "by_period": [
                {"BillingAccountId": account, "BillingPeriodStart": start, "BillingPeriodEnd": end,
                 "BillingCurrency": currency, **total.as_dict()}
                for (account, start, end), currencies in sorted(self.by_period.items(), key=lambda item: item[0][:2])
                for currency, total in sorted(currencies.items())
            ],
            "total": self.total.as_dict(),
        }


@dataclass
class FocusIngest:
    """A whole file read into memory: for tests and small files (the CLI streams instead)."""

    file: FocusFile
    records: list[dict[str, Any]]
    errors: list[RowError]
    totals: FocusTotals
    naive_timestamps: int = 0

    @property
    def bad_lines(self) -> list[int]:
        return sorted({e.line for e in self.errors})


def read_focus_file(
    path: str | os.PathLike[str], focus_version: str | None = None, *,
    export_seqs: Mapping[tuple[str, dt.datetime], int] | None = None,
) -> FocusIngest:
    focus_file = open_focus_file(path, focus_version)
    records: list[dict[str, Any]] = []
    errors: list[RowError] = []
    totals = FocusTotals()
    naive = 0
    for row in iter_focus_rows(focus_file, export_seqs=export_seqs):
        naive += row.naive_timestamps
        if row.record is None:
            errors.extend(row.errors)
        else:
            records.append(row.record)
            totals.add(row.record)
    return FocusIngest(focus_file, records, errors, totals, naive)


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


def dimension_tags(record: Mapping[str, Any]) -> dict[str, str]:
    """The tags that may name a dimension: those whose JSON value is a string or a number (`tags_json` tells the
    types; a record without it, or whose Tags no longer match it, has every value taken as a string)."""
    tags = record.get("Tags") or {}
    try:
        typed = json.loads(record.get("tags_json") or "null", parse_float=_JsonNumber, parse_int=_JsonNumber,
                           parse_constant=_no_constants)
    except (ValueError, RecursionError):
        typed = None
    if not isinstance(typed, dict) or set(typed) != set(tags):
        return dict(tags)
    return {key: value for key, value in tags.items() if isinstance(typed[key], str)}


def cloud_cost_line_to_cost_line(record: Mapping[str, Any]) -> dict[str, Any]:
    """A FOCUS row as a cost line: model = ServiceName (the thing billed); the four FOCUS costs in BillingCurrency
    (`currency`, `billed_cost`, `effective_cost`, `list_cost`, `contracted_cost`), always; the billing account,
    period and export (for restatements, see sinks/billing_exports.py).

    The USD fields hold USD only: for a USD bill cost_usd = EffectiveCost (what it cost after discounts and
    amortization), billed_cost_usd = BilledCost (what the invoice says), list_cost_usd = ListCost. A bill in another
    currency is never converted here (no rate is known at ingest): its cost_usd is 0 with priced = false, as for any
    line without a USD price, and its amounts stay in its currency; reports convert them only through an
    effective-dated FX table (finops/fx.py)."""
    dims, tag_source = dimensions_from_tags(dimension_tags(record))
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
    currency = record["BillingCurrency"]
    usd = currency == "USD"
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
        "cost_usd": record["EffectiveCost"] if usd else Decimal(0),
        "billed_cost_usd": record["BilledCost"] if usd else None,
        "list_cost_usd": record["ListCost"] if usd else None,
        "charge_category": record["ChargeCategory"],
        "priced": usd,
        "price_version": f"focus-{record['focus_version']}",
        "status": "ok",
        "tag_source": tag_source,
        "labels": labels,
        "currency": currency,
        "billed_cost": record["BilledCost"],
        "effective_cost": record["EffectiveCost"],
        "list_cost": record["ListCost"],
        "contracted_cost": record["ContractedCost"],
        "billing_account_id": record["BillingAccountId"],
        "billing_period_start": record["BillingPeriodStart"],
        "export_id": record.get("export_id"),
        "export_seq": record.get("export_seq"),
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
