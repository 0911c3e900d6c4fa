"""FOCUS files as clouds deliver them: versions 1.0-1.3, .csv, .csv.gz, .zip of CSVs and Parquet, byte-order mark and
CRLF, `NULL` cells, date-times without an offset, 16-decimal costs, tags of every JSON type, bills in EUR.

Every file is written here from CSV text built after the spec's column lists (FOCUS_Spec tags v1.0, v1.1, v1.2;
1.3 per DESIGN.md); the compressed and Parquet files are made from that text in tmp_path (no binary fixture is
committed). Expected totals come from the CSV text alone, with `csv` and `Decimal`, never from the module under test.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import gzip
import io
import json
import zipfile
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from prismops.cli.app import main
from prismops.errors import FieldRuleError
from prismops.finops.focus_billing import (
    FocusFileError,
    MoneyCarry,
    cloud_cost_line_to_cost_line,
    open_focus_file,
    process_cloud_cost_line,
    read_focus_file,
)
from prismops.finops.fx import FxError, load_fx_table, parse_fx_rows
from prismops.settings import Settings
from prismops.streams.codecs import codec_for

UTC = dt.timezone.utc
EXACT = decimal.Context(prec=100, traps=[decimal.Inexact])
MONEY = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")
QUANTITIES = ("PricingQuantity", "ConsumedQuantity")
TIMESTAMPS = ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")
DOCS = Path(__file__).parents[2] / "docs"

# The columns of each version (specification/columns/*.md at the spec's tags).
COLUMNS_1_0 = [
    "AvailabilityZone", "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargeFrequency", "ChargePeriodEnd",
    "ChargePeriodStart", "CommitmentDiscountCategory", "CommitmentDiscountId", "CommitmentDiscountName",
    "CommitmentDiscountStatus", "CommitmentDiscountType", "ConsumedQuantity", "ConsumedUnit", "ContractedCost",
    "ContractedUnitPrice", "EffectiveCost", "InvoiceIssuerName", "ListCost", "ListUnitPrice", "PricingCategory",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "RegionId", "RegionName", "ResourceId",
    "ResourceName", "ResourceType", "ServiceCategory", "ServiceName", "SkuId", "SkuPriceId", "SubAccountId",
    "SubAccountName", "Tags",
]
ADDED_1_1 = ["CapacityReservationId", "CapacityReservationStatus", "CommitmentDiscountQuantity", "CommitmentDiscountUnit",
             "ServiceSubcategory", "SkuMeter", "SkuPriceDetails"]
ADDED_1_2 = ["BillingAccountType", "InvoiceId", "PricingCurrency", "PricingCurrencyContractedUnitPrice",
             "PricingCurrencyEffectiveCost", "PricingCurrencyListUnitPrice", "SubAccountType"]
COLUMNS = {
    "1.0": COLUMNS_1_0,
    "1.1": COLUMNS_1_0 + ADDED_1_1,
    "1.2": COLUMNS_1_0 + ADDED_1_1 + ADDED_1_2,
    "1.3": COLUMNS_1_0 + ADDED_1_1 + ADDED_1_2 + ["ServiceProviderName", "HostProviderName"],
}


def _row(**cells: str) -> dict[str, str]:
    return cells


# Rows of each version. 1.0 is written the way the FinOps Foundation's own 1.0 sample is: date-times without an
# offset (two spellings), NULL for every empty value.
ROWS = {
    "1.0": [
        _row(BilledCost="12.3456789012", EffectiveCost="12.3456789012", ListCost="13.0000000000",
             ContractedCost="12.3456789012", BillingAccountId="8901-2345", BillingAccountName="Contoso",
             BillingCurrency="USD", BillingPeriodStart="2024-09-01 00:00:00", BillingPeriodEnd="2024-10-01 00:00:00",
             ChargePeriodStart="2024-09-03 00:00:00", ChargePeriodEnd="2024-09-04 00:00:00", ChargeCategory="Usage",
             ChargeClass="NULL", ChargeDescription="D4s v5 hours", ChargeFrequency="Usage-Based",
             ConsumedQuantity="24", ConsumedUnit="Hours", PricingQuantity="24", PricingUnit="Hours",
             InvoiceIssuerName="Microsoft", ProviderName="Microsoft", PublisherName="Microsoft",
             ServiceCategory="Compute", ServiceName="Virtual Machines", RegionId="eastus",
             CommitmentDiscountId="NULL", Tags='{"tenant":"acme","env":"prod"}'),
        _row(BilledCost="0.0000000000", EffectiveCost="4.1200000000", ListCost="6.0000000000",
             ContractedCost="6.0000000000", BillingAccountId="8901-2345", BillingAccountName="Contoso",
             BillingCurrency="USD", BillingPeriodStart="2024-09-01T00:00:00", BillingPeriodEnd="2024-10-01T00:00:00",
             ChargePeriodStart="2024-09-03T00:00:00", ChargePeriodEnd="2024-09-04T00:00:00", ChargeCategory="Usage",
             ChargeClass="NULL", ChargeDescription="Reserved D4s v5 hours", ChargeFrequency="Usage-Based",
             ConsumedQuantity="24", ConsumedUnit="Hours", PricingQuantity="24", PricingUnit="Hours",
             InvoiceIssuerName="Microsoft", ProviderName="Microsoft", PublisherName="Microsoft",
             ServiceCategory="Compute", ServiceName="Virtual Machines", CommitmentDiscountId="ri-1",
             Tags="NULL"),
        _row(BilledCost="1.2345678901", EffectiveCost="1.2345678901", ListCost="1.2345678901",
             ContractedCost="1.2345678901", BillingAccountId="8901-2345", BillingAccountName="Contoso",
             BillingCurrency="USD", BillingPeriodStart="2024-09-01 00:00:00", BillingPeriodEnd="2024-10-01 00:00:00",
             ChargePeriodStart="2024-09-01 00:00:00", ChargePeriodEnd="2024-10-01 00:00:00", ChargeCategory="Tax",
             ChargeClass="NULL", ChargeDescription="VAT", ChargeFrequency="Recurring", ConsumedQuantity="NULL",
             ConsumedUnit="NULL", PricingQuantity="NULL", PricingUnit="NULL", InvoiceIssuerName="Microsoft",
             ProviderName="Microsoft", PublisherName="Microsoft", ServiceCategory="Other", ServiceName="Tax",
             Tags="{}"),
        _row(BilledCost="-2.5000000000", EffectiveCost="-2.5000000000", ListCost="0", ContractedCost="0",
             BillingAccountId="8901-2345", BillingAccountName="Contoso", BillingCurrency="USD",
             BillingPeriodStart="2024-09-01 00:00:00", BillingPeriodEnd="2024-10-01 00:00:00",
             ChargePeriodStart="2024-09-05 00:00:00", ChargePeriodEnd="2024-09-06 00:00:00", ChargeCategory="Credit",
             ChargeClass="Correction", ChargeDescription="SLA credit", ChargeFrequency="One-Time",
             ConsumedQuantity="NULL", ConsumedUnit="NULL", PricingQuantity="NULL", PricingUnit="NULL",
             InvoiceIssuerName="Microsoft", ProviderName="Microsoft", PublisherName="Microsoft",
             ServiceCategory="Storage", ServiceName="Storage Accounts", Tags='{"tenant":"globex"}'),
    ],
    "1.1": [
        _row(BilledCost="0.000125", EffectiveCost="0.000125", ListCost="0.00015", ContractedCost="0.000125",
             BillingAccountId="123456789012", BillingAccountName="payer", BillingCurrency="USD",
             BillingPeriodStart="2025-05-01T00:00:00Z", BillingPeriodEnd="2025-06-01T00:00:00Z",
             ChargePeriodStart="2025-05-02T00:00:00Z", ChargePeriodEnd="2025-05-03T00:00:00Z", ChargeCategory="Usage",
             ChargeClass="", ChargeDescription="Lambda requests", ChargeFrequency="Usage-Based",
             ConsumedQuantity="625.000000000000001", ConsumedUnit="Requests", PricingQuantity="0.000625",
             PricingUnit="1M Requests", InvoiceIssuerName="AWS", ProviderName="AWS", PublisherName="AWS",
             ServiceCategory="Compute", ServiceName="AWS Lambda", SkuMeter="Requests",
             SkuPriceDetails='{"x_Architecture":"arm64"}', ServiceSubcategory="Serverless Compute",
             Tags='{"user:team":"search","user:tenant":"acme"}'),
        _row(BilledCost="730.00", EffectiveCost="60.83", ListCost="730.00", ContractedCost="730.00",
             BillingAccountId="123456789012", BillingAccountName="payer", BillingCurrency="USD",
             BillingPeriodStart="2025-05-01T00:00:00Z", BillingPeriodEnd="2025-06-01T00:00:00Z",
             ChargePeriodStart="2025-05-01T00:00:00Z", ChargePeriodEnd="2025-06-01T00:00:00Z",
             ChargeCategory="Purchase", ChargeClass="", ChargeDescription="Savings Plan fee",
             ChargeFrequency="Recurring", ConsumedQuantity="", ConsumedUnit="", PricingQuantity="1",
             PricingUnit="Commitment", InvoiceIssuerName="AWS", ProviderName="AWS", PublisherName="AWS",
             ServiceCategory="Compute", ServiceName="Savings Plans for AWS Compute usage",
             CommitmentDiscountQuantity="1", CommitmentDiscountUnit="Commitment", Tags=""),
    ],
    "1.2": [
        _row(BilledCost="41.7", EffectiveCost="41.7", ListCost="46.33", ContractedCost="41.7",
             BillingAccountId="billing-eu-01", BillingAccountName="PrismOps GmbH", BillingCurrency="EUR",
             BillingPeriodStart="2025-06-01T00:00:00+00:00", BillingPeriodEnd="2025-07-01T00:00:00+00:00",
             ChargePeriodStart="2025-06-10T02:00:00+02:00", ChargePeriodEnd="2025-06-11T02:00:00+02:00",
             ChargeCategory="Usage", ChargeClass="", ChargeDescription="Vertex AI Gemini input tokens",
             ChargeFrequency="Usage-Based", ConsumedQuantity="16680", ConsumedUnit="1K Tokens",
             PricingQuantity="16680", PricingUnit="1K Tokens", InvoiceIssuerName="Google", ProviderName="Google",
             PublisherName="Google", ServiceCategory="AI and Machine Learning", ServiceName="Vertex AI",
             InvoiceId="EU-2025-06", BillingAccountType="Billing Account", PricingCurrency="USD",
             Tags='{"tenant":"initech","feature":"summarize"}'),
        _row(BilledCost="3.14", EffectiveCost="3.14", ListCost="3.14", ContractedCost="3.14",
             BillingAccountId="billing-eu-01", BillingAccountName="PrismOps GmbH", BillingCurrency="EUR",
             BillingPeriodStart="2025-06-01T00:00:00+00:00", BillingPeriodEnd="2025-07-01T00:00:00+00:00",
             ChargePeriodStart="2025-06-10T00:00:00+00:00", ChargePeriodEnd="2025-06-11T00:00:00+00:00",
             ChargeCategory="Usage", ChargeClass="", ChargeDescription="Cloud Storage", ChargeFrequency="Usage-Based",
             ConsumedQuantity="157", ConsumedUnit="GiB-Months", PricingQuantity="157", PricingUnit="GiB-Months",
             InvoiceIssuerName="Google", ProviderName="Google", PublisherName="Google", ServiceCategory="Storage",
             ServiceName="Cloud Storage", InvoiceId="EU-2025-06", Tags='{"tenant":"initech"}'),
        _row(BilledCost="9.99", EffectiveCost="9.99", ListCost="9.99", ContractedCost="9.99",
             BillingAccountId="billing-us-01", BillingAccountName="PrismOps Inc", BillingCurrency="USD",
             BillingPeriodStart="2025-06-01T00:00:00+00:00", BillingPeriodEnd="2025-07-01T00:00:00+00:00",
             ChargePeriodStart="2025-06-12T00:00:00+00:00", ChargePeriodEnd="2025-06-13T00:00:00+00:00",
             ChargeCategory="Usage", ChargeClass="", ChargeDescription="Vertex AI Gemini output tokens",
             ChargeFrequency="Usage-Based", ConsumedQuantity="999", ConsumedUnit="1K Tokens",
             PricingQuantity="999", PricingUnit="1K Tokens", InvoiceIssuerName="Google", ProviderName="Google",
             PublisherName="Google", ServiceCategory="AI and Machine Learning", ServiceName="Vertex AI",
             InvoiceId="US-2025-06", Tags=""),
    ],
    # The AWS 1.3 sample row that used to be refused (ListCost with 14 places, $19.30 of BilledCost), 16-decimal
    # costs, a 15-decimal quantity, tags of every JSON type, a EUR bill beside a USD one.
    "1.3": [
        _row(BilledCost="19.304861037", EffectiveCost="19.304861037", ListCost="21.44988849635786",
             ContractedCost="19.304861037", BillingAccountId="100000000001", BillingAccountName="ExampleCorp",
             BillingCurrency="USD", BillingPeriodStart="2026-05-01T00:00:00Z", BillingPeriodEnd="2026-06-01T00:00:00Z",
             ChargePeriodStart="2026-05-01T15:00:00Z", ChargePeriodEnd="2026-05-01T16:00:00Z", ChargeCategory="Usage",
             ChargeClass="", ChargeDescription="Lambda function duration", ChargeFrequency="Usage-Based",
             ConsumedQuantity="1286990.735812345678901", ConsumedUnit="GB-Seconds",
             PricingQuantity="1286990.7358", PricingUnit="GB-Seconds", InvoiceIssuerName="AWS", ProviderName="AWS",
             ServiceProviderName="AWS", HostProviderName="AWS", PublisherName="AWS", ServiceCategory="Compute",
             ServiceName="AWSLambda",
             Tags='{"tenant":"acme","cost":12.50,"billable":false,"owner":null,"team":true,"nested":{"a":[1,"x"]}}'),
        _row(BilledCost="0.1234567890123456", EffectiveCost="0.1234567890123456", ListCost="0.2000000000000001",
             ContractedCost="0.1234567890123456", BillingAccountId="100000000001", BillingAccountName="ExampleCorp",
             BillingCurrency="USD", BillingPeriodStart="2026-05-01T00:00:00Z", BillingPeriodEnd="2026-06-01T00:00:00Z",
             ChargePeriodStart="2026-05-02T00:00:00Z", ChargePeriodEnd="2026-05-03T00:00:00Z", ChargeCategory="Usage",
             ChargeClass="", ChargeDescription="DynamoDB writes", ChargeFrequency="Usage-Based",
             ConsumedQuantity="4094548.5065", ConsumedUnit="Requests", PricingQuantity="4094548.5065",
             PricingUnit="Requests", InvoiceIssuerName="AWS", ProviderName="AWS", ServiceProviderName="AWS",
             HostProviderName="AWS", PublisherName="AWS", ServiceCategory="Databases", ServiceName="AmazonDynamoDB",
             Tags='{"tenant":7,"Environment":"prod"}'),
        _row(BilledCost="0.8765432109876544", EffectiveCost="0.8765432109876544", ListCost="0.7999999999999999",
             ContractedCost="0.8765432109876544", BillingAccountId="100000000001", BillingAccountName="ExampleCorp",
             BillingCurrency="USD", BillingPeriodStart="2026-05-01T00:00:00Z", BillingPeriodEnd="2026-06-01T00:00:00Z",
             ChargePeriodStart="2026-05-02T00:00:00Z", ChargePeriodEnd="2026-05-03T00:00:00Z", ChargeCategory="Usage",
             ChargeClass="", ChargeDescription="DynamoDB reads", ChargeFrequency="Usage-Based",
             ConsumedQuantity="1.000000000000001", ConsumedUnit="Requests", PricingQuantity="1",
             PricingUnit="Requests", InvoiceIssuerName="AWS", ProviderName="AWS", ServiceProviderName="AWS",
             HostProviderName="AWS", PublisherName="AWS", ServiceCategory="Databases", ServiceName="AmazonDynamoDB",
             Tags='{"marker":true}'),
        _row(BilledCost="0.0794880000000001", EffectiveCost="0.0794880000000001", ListCost="0.08832",
             ContractedCost="0.079488", BillingAccountId="200000000002", BillingAccountName="ExampleCorp EU",
             BillingCurrency="EUR", BillingPeriodStart="2026-05-01T00:00:00Z", BillingPeriodEnd="2026-06-01T00:00:00Z",
             ChargePeriodStart="2026-05-01T06:00:00Z", ChargePeriodEnd="2026-05-01T07:00:00Z", ChargeCategory="Usage",
             ChargeClass="", ChargeDescription="Linux on-demand m6i.large", ChargeFrequency="Usage-Based",
             ConsumedQuantity="1", ConsumedUnit="Hours", PricingQuantity="1", PricingUnit="Hours",
             InvoiceIssuerName="AWS EMEA SARL", ProviderName="AWS", ServiceProviderName="AWS", HostProviderName="AWS",
             PublisherName="AWS", ServiceCategory="Compute", ServiceName="AmazonEC2",
             Tags='{"tenant":"initech","env":"prod"}'),
        _row(BilledCost="-0.0000000000000001", EffectiveCost="-0.0000000000000001", ListCost="0",
             ContractedCost="0", BillingAccountId="200000000002", BillingAccountName="ExampleCorp EU",
             BillingCurrency="EUR", BillingPeriodStart="2026-05-01T00:00:00Z", BillingPeriodEnd="2026-06-01T00:00:00Z",
             ChargePeriodStart="2026-05-01T00:00:00Z", ChargePeriodEnd="2026-06-01T00:00:00Z",
             ChargeCategory="Adjustment", ChargeClass="Correction", ChargeDescription="rounding adjustment",
             ChargeFrequency="One-Time", ConsumedQuantity="", ConsumedUnit="", PricingQuantity="", PricingUnit="",
             InvoiceIssuerName="AWS EMEA SARL", ProviderName="AWS", ServiceProviderName="AWS", HostProviderName="AWS",
             PublisherName="AWS", ServiceCategory="Compute", ServiceName="AmazonEC2", Tags=""),
    ],
}
VERSIONS = list(ROWS)
NULL_1_0 = "NULL"


def csv_text(version: str, rows: list[dict[str, str]] | None = None) -> str:
    """The version's file as CSV text: every column of the version, cells not given are null (NULL in 1.0)."""
    empty = NULL_1_0 if version == "1.0" else ""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS[version])
    for row in ROWS[version] if rows is None else rows:
        assert set(row) <= set(COLUMNS[version]), set(row) - set(COLUMNS[version])
        writer.writerow([row.get(column, empty) for column in COLUMNS[version]])
    return out.getvalue()


def column_sums(text: str) -> dict:
    """Rows and the four cost columns' sums from the CSV text alone: in all, by ServiceName, by BillingCurrency."""
    def zero() -> list:
        return [0, *(Decimal(0) for _ in MONEY)]

    total, by_service, by_currency = zero(), defaultdict(zero), defaultdict(zero)
    for row in csv.DictReader(io.StringIO(text.lstrip("\ufeff"))):
        for group in (total, by_service[row["ServiceName"]], by_currency[row["BillingCurrency"]]):
            group[0] += 1
            for i, column in enumerate(MONEY, start=1):
                group[i] = EXACT.add(group[i], Decimal(row[column]))
    as_dict = lambda g: dict(zip(("rows", *MONEY), g))  # noqa: E731
    return {"total": as_dict(total), "by_service_name": {k: as_dict(v) for k, v in by_service.items()},
            "by_billing_currency": {k: as_dict(v) for k, v in by_currency.items()}}


def _parquet_table(text: str) -> pa.Table:
    """The CSV text as a typed Parquet table: costs and quantities as decimal128(38, 18) (exact), date-times as
    timestamps (UTC where the text has an offset, zone-less where it has none), NULL and empty as null, the rest
    strings."""
    rows = list(csv.DictReader(io.StringIO(text)))
    columns = {}
    for name in rows[0]:
        values = [None if row[name] in ("", NULL_1_0) else row[name] for row in rows]
        if name in MONEY + QUANTITIES:
            columns[name] = pa.array([None if v is None else Decimal(v) for v in values], pa.decimal128(38, 18))
        elif name in TIMESTAMPS:
            moments = [None if v is None else dt.datetime.fromisoformat(v) for v in values]
            aware = any(m is not None and m.tzinfo is not None for m in moments)
            columns[name] = pa.array([None if m is None else (m.astimezone(UTC) if aware else m) for m in moments],
                                     pa.timestamp("us", tz="UTC" if aware else None))
        else:
            columns[name] = pa.array(values, pa.string())
    return pa.table(columns)


def write_as(tmp_path: Path, text: str, fmt: str) -> Path:
    """The CSV text as a file of `fmt`: csv, bom_crlf, csv.gz, zip (two members, one of them gzipped, beside files
    a reader must leave alone) or parquet."""
    if fmt == "csv":
        path = tmp_path / "focus.csv"
        path.write_text(text, encoding="utf-8", newline="")
    elif fmt == "bom_crlf":
        path = tmp_path / "focus.csv"
        path.write_bytes(("\ufeff" + text.replace("\n", "\r\n")).encode("utf-8"))
    elif fmt == "csv.gz":
        path = tmp_path / "focus.csv.gz"
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    elif fmt == "zip":
        header, *lines = text.splitlines(keepends=True)
        half = max(1, len(lines) // 2)
        path = tmp_path / "focus-export.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("2026-05/part-00001.csv", header + "".join(lines[:half]))
            archive.writestr("2026-05/part-00002.csv.gz", gzip.compress((header + "".join(lines[half:])).encode()))
            archive.writestr("2026-05/manifest.json", "{}")
            archive.writestr("__MACOSX/2026-05/._part-00001.csv", b"\x00\x05\x16\x07")
    elif fmt == "parquet":
        path = tmp_path / "focus.parquet"
        pq.write_table(_parquet_table(text), path)
    else:
        raise AssertionError(fmt)
    return path


FORMATS = ["csv", "bom_crlf", "csv.gz", "zip", "parquet"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_in_every_format_is_accepted_and_adds_up_to_the_column_sums(tmp_path, version, fmt):
    text = csv_text(version)
    result = read_focus_file(write_as(tmp_path, text, fmt))
    assert result.errors == []
    assert result.file.focus_version == version
    assert result.file.format == {"bom_crlf": "csv"}.get(fmt, fmt)
    expected = column_sums(text)
    totals = result.totals.as_dict()
    assert totals["total"] == expected["total"]
    assert {r["ServiceName"]: {k: r[k] for k in ("rows", *MONEY)} for r in totals["by_service_name"]} == \
        expected["by_service_name"]
    assert {r["BillingCurrency"]: {k: r[k] for k in ("rows", *MONEY)} for r in totals["by_billing_currency"]} == \
        expected["by_billing_currency"]
    naive = sum(1 for row in ROWS[version] for c in TIMESTAMPS
                if "Z" not in row[c] and "+" not in row[c])
    assert result.naive_timestamps == naive
    assert (version == "1.0") == (naive > 0)


def test_the_1_0_sample_style_reads_null_as_null_and_zone_less_times_as_utc(tmp_path):
    records = read_focus_file(write_as(tmp_path, csv_text("1.0"), "csv")).records
    assert records[0]["ChargeClass"] is None and records[0]["ConsumedQuantity"] == Decimal(24)
    assert records[0]["ChargePeriodStart"] == dt.datetime(2024, 9, 3, tzinfo=UTC)
    assert records[1]["BillingPeriodStart"] == dt.datetime(2024, 9, 1, tzinfo=UTC)
    assert records[1]["Tags"] == {} and records[1]["tags_json"] is None
    assert records[2]["PricingQuantity"] is None and records[2]["PricingUnit"] is None


def test_an_offset_is_honoured_and_times_are_stored_in_utc(tmp_path):
    record = read_focus_file(write_as(tmp_path, csv_text("1.2"), "csv")).records[0]
    assert record["ChargePeriodStart"] == dt.datetime(2025, 6, 10, tzinfo=UTC)


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_the_version_can_be_forced_to_any_of_the_four(tmp_path, version):
    path = write_as(tmp_path, csv_text("1.2"), "csv")
    assert read_focus_file(path, version).file.focus_version == version
    assert {r["focus_version"] for r in read_focus_file(path, version).records} == {version}
    with pytest.raises(FocusFileError) as caught:
        open_focus_file(path, "1.3")
    assert caught.value.rule == "mandatory_column" and "ServiceProviderName" in caught.value.message


# --- precision ---------------------------------------------------------------------------------------------------


def test_16_decimal_costs_are_kept_exactly_and_rounded_once_with_the_residue_carried(tmp_path):
    text = csv_text("1.3")
    result = read_focus_file(write_as(tmp_path, text, "csv"))
    raw = list(csv.DictReader(io.StringIO(text)))
    chains: dict = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for record, row in zip(result.records, raw, strict=True):
        for column in MONEY + QUANTITIES:
            if row[column]:
                assert Decimal(record["exact_decimals"][column]) == Decimal(row[column])
        for column in MONEY:
            exact, rounded = Decimal(row[column]), record[column]
            assert rounded == rounded.quantize(Decimal("1e-12")), "12 places, what a Decimal(38, 12) holds"
            assert abs(rounded - exact) <= Decimal("1e-12")
            chain = chains[(row["BillingAccountId"], row["BillingCurrency"], column)]
            chain[0], chain[1] = EXACT.add(chain[0], exact), EXACT.add(chain[1], rounded)
    for (account, currency, column), (exact, rounded) in chains.items():
        assert rounded == exact.quantize(Decimal("1e-12"), rounding=decimal.ROUND_HALF_EVEN), (account, currency, column)
    # BilledCost 0.1234567890123456 + 0.8765432109876544 + 19.304861037 has 12 places: the 12-place lines add up to
    # it to the last digit
    usd_billed = [r["BilledCost"] for r in result.records if r["BillingCurrency"] == "USD"]
    assert sum(usd_billed) == Decimal("20.304861037")
    assert result.records[0]["ConsumedQuantity"] == Decimal("1286990.735812345679")


def test_the_carry_keeps_tiny_amounts_that_per_line_rounding_would_lose():
    carry = MoneyCarry()
    chain = ("acct", dt.datetime(2026, 5, 1, tzinfo=UTC), "USD", "BilledCost")
    values = [Decimal("0.0000000000004"), Decimal("0.0000000000004"), Decimal("0.0000000000002")]
    rounded = [carry.round(chain, v) for v in values]
    assert rounded == [Decimal(0), Decimal("1e-12"), Decimal(0)]
    assert sum(rounded) == sum(values) == Decimal("1e-12")
    assert sum(v.quantize(Decimal("1e-12")) for v in values) == 0, "what rounding each line alone gives"


def test_the_carry_never_crosses_chains():
    carry = MoneyCarry()
    a = ("a", None, "USD", "BilledCost")
    b = ("b", None, "USD", "BilledCost")
    assert carry.round(a, Decimal("0.0000000000006")) == Decimal("1e-12")
    assert carry.round(b, Decimal("0.0000000000004")) == Decimal(0)
    assert carry.round(a, Decimal("0.0000000000004")) == Decimal(0)
    assert carry.round(b, Decimal("0.0000000000004")) == Decimal("1e-12")


def test_a_quantity_with_15_decimals_is_not_money_and_is_accepted(tmp_path):
    rows = [ROWS["1.1"][0] | {"ConsumedQuantity": "0.123456789012345"}]
    result = read_focus_file(write_as(tmp_path, csv_text("1.1", rows), "csv"))
    assert result.errors == []
    assert result.records[0]["exact_decimals"]["ConsumedQuantity"] == "0.123456789012345"


# --- tags ----------------------------------------------------------------------------------------------------------


def test_tags_of_every_json_type_are_kept_and_only_strings_and_numbers_name_dimensions(tmp_path):
    records = read_focus_file(write_as(tmp_path, csv_text("1.3"), "csv")).records
    first = records[0]
    assert first["Tags"] == {"tenant": "acme", "cost": "12.50", "billable": "false", "owner": "", "team": "true",
                             "nested": '{"a":[1,"x"]}'}
    assert json.loads(first["tags_json"]) == {"tenant": "acme", "cost": 12.5, "billable": False, "owner": None,
                                              "team": True, "nested": {"a": [1, "x"]}}
    line = cloud_cost_line_to_cost_line(first)
    assert line["tenant"] == "acme"
    assert line["team"] == "unallocated" and line["tag_source"]["team"] == "default", "a key-only tag names no team"
    assert line["labels"]["billable"] == "false" and line["labels"]["cost"] == "12.50"
    assert cloud_cost_line_to_cost_line(records[1])["tenant"] == "7", "a number may name a dimension"
    assert records[2]["Tags"] == {"marker": "true"}


# --- currencies ----------------------------------------------------------------------------------------------------


def test_a_eur_bill_stays_in_eur_and_is_never_priced_in_usd(tmp_path):
    records = read_focus_file(write_as(tmp_path, csv_text("1.3"), "csv")).records
    eur = next(r for r in records if r["BillingCurrency"] == "EUR")
    line = cloud_cost_line_to_cost_line(eur)
    assert line["currency"] == "EUR"
    assert (line["billed_cost"], line["effective_cost"], line["list_cost"], line["contracted_cost"]) == (
        eur["BilledCost"], eur["EffectiveCost"], eur["ListCost"], eur["ContractedCost"])
    assert line["cost_usd"] == 0 and line["billed_cost_usd"] is None and line["list_cost_usd"] is None
    assert line["priced"] is False
    usd = cloud_cost_line_to_cost_line(records[0])
    assert usd["currency"] == "USD" and usd["priced"] is True
    assert usd["cost_usd"] == usd["effective_cost"] == records[0]["EffectiveCost"]


def test_the_worker_turns_a_v2_record_into_a_v4_cost_line_and_still_reads_v1_records(tmp_path):
    records = read_focus_file(write_as(tmp_path, csv_text("1.3"), "csv")).records
    codec = codec_for("cloud_cost_line")
    for record in records:
        line = process_cloud_cost_line(codec.encode(record))
        assert isinstance(line, dict), line
        decoded = codec_for("cost_line").decode(codec_for("cost_line").encode(line))
        assert {k: decoded[k] for k in line} == line
    old = {k: v for k, v in records[0].items() if k not in ("exact_decimals", "tags_json", "export_id", "export_seq")}
    line = process_cloud_cost_line(codec.encode(old | {"Tags": {"tenant": "acme"}}, version=1))
    assert isinstance(line, dict) and line["tenant"] == "acme" and line["currency"] == "USD"


# --- Parquet as clouds write it ---------------------------------------------------------------------------------


def test_parquet_doubles_are_read_by_their_shortest_text_and_a_tags_map_as_json(tmp_path):
    base = {k: v for k, v in ROWS["1.2"][2].items() if k not in MONEY + ("Tags",)}
    table = pa.table({
        **{k: pa.array([v, v, v], pa.string()) for k, v in base.items()
           if k not in TIMESTAMPS and k not in QUANTITIES},
        **{k: pa.array([dt.datetime.fromisoformat(base[k])] * 3, pa.timestamp("ms", tz="UTC")) for k in TIMESTAMPS},
        **{k: pa.array([999.0] * 3, pa.float64()) for k in QUANTITIES},
        "BilledCost": pa.array([0.1, 0.2, 0.30000000000000004], pa.float64()),
        "EffectiveCost": pa.array([0.1, 0.2, 1e-05], pa.float64()),
        "ListCost": pa.array([1.0, 2.0, 3.0], pa.float64()),
        "ContractedCost": pa.array([1, 2, 3], pa.int64()),
        "Tags": pa.array([[("tenant", "acme")], [], None], pa.map_(pa.string(), pa.string())),
    })
    path = tmp_path / "aws.parquet"
    pq.write_table(table, path)
    result = read_focus_file(path)
    assert result.errors == [] and result.file.focus_version == "1.2"
    assert result.totals.total.BilledCost == Decimal("0.1") + Decimal("0.2") + Decimal("0.30000000000000004")
    assert result.totals.total.EffectiveCost == Decimal("0.30001")
    assert result.records[0]["Tags"] == {"tenant": "acme"} and result.records[1]["Tags"] == {}
    assert result.records[2]["Tags"] == {}


# --- bad input: a clear error, never a traceback -------------------------------------------------------------------


def ingest(*args: str):
    return CliRunner().invoke(main, ["ingest", "focus", *args], obj=Settings())


@pytest.mark.parametrize("name, content, needle", [
    ("bill.csv.gz", b"\x1f\x8b\x08\x00garbage", "gzip"),
    ("bill.zip", None, "no .csv"),
    ("bill.parquet", b"PAR1 not really parquet", "Parquet"),
    ("bill.csv", b"\xff\xfe\x00B\x00i\x00l\x00l\x00", "UTF-8"),
])
def test_a_broken_file_fails_with_exit_one_naming_it_and_no_traceback(tmp_path, name, content, needle):
    path = tmp_path / name
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "no bill here")
    else:
        path.write_bytes(content)
    result = ingest(str(path), "--dry-run")
    assert result.exit_code == 1, result.output
    assert needle in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.output + result.stderr and result.stdout == ""


def test_a_bad_row_inside_a_zip_names_the_member_line_column_and_rule(tmp_path):
    rows = [ROWS["1.3"][0], ROWS["1.3"][1] | {"BilledCost": "1,5"}]
    path = write_as(tmp_path, csv_text("1.3", rows + [ROWS["1.3"][2]]), "zip")
    result = ingest(str(path), "--dry-run", "--format", "json")
    assert result.exit_code == 3, result.output
    [error] = json.loads(result.stdout)["errors"]
    assert (error["member"], error["line"], error["column"], error["rule"]) == (
        "2026-05/part-00002.csv.gz", 2, "BilledCost", "decimal")


def test_a_cost_with_more_than_38_places_is_refused_naming_the_rule(tmp_path):
    rows = [ROWS["1.3"][0] | {"ListCost": "0." + "1" * 39}]
    result = read_focus_file(write_as(tmp_path, csv_text("1.3", rows), "csv"))
    assert [(e.line, e.column, e.rule) for e in result.errors] == [(2, "ListCost", "decimal_scale")]


# --- the command ---------------------------------------------------------------------------------------------------


def test_dry_run_prints_the_four_totals_by_service_and_currency_equal_to_the_column_sums(tmp_path):
    text = csv_text("1.3")
    result = ingest(str(write_as(tmp_path, text, "zip")), "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    document = json.loads(result.stdout)
    expected = column_sums(text)
    assert (document["format"], document["focus_version"], document["rows"], document["naive_timestamps"]) == (
        "zip", "1.3", 5, 0)
    as_decimals = lambda row: {"rows": row["rows"], **{m: Decimal(row[m]) for m in MONEY}}  # noqa: E731
    assert as_decimals(document["totals"]["total"]) == expected["total"]
    assert {r["ServiceName"]: as_decimals(r) for r in document["totals"]["by_service_name"]} == expected["by_service_name"]
    assert {r["BillingCurrency"]: as_decimals(r) for r in document["totals"]["by_billing_currency"]} == \
        expected["by_billing_currency"]
    assert [(p["BillingAccountId"], [t["BillingCurrency"] for t in p["totals"]]) for p in document["periods"]] == [
        ("100000000001", ["USD"]), ("200000000002", ["EUR"])]
    # the exact text of the sums: 16 places, never cut to 12
    assert document["totals"]["by_billing_currency"][0]["BilledCost"] in ("20.3048610370000000", "0.0794880000000000")


def test_the_table_shows_all_four_totals_and_warns_about_zone_less_times(tmp_path):
    result = ingest(str(write_as(tmp_path, csv_text("1.0"), "csv.gz")), "--dry-run")
    assert result.exit_code == 0, result.output + result.stderr
    for text in ("totals by ServiceName", "totals by BillingCurrency", "ListCost", "ContractedCost",
                 "billing periods", "csv.gz"):
        assert text in result.stdout, text
    assert "16 date-time value(s) had no UTC offset and were read as UTC" in result.stderr


# --- FX tables ----------------------------------------------------------------------------------------------------


def test_the_shipped_fx_example_loads_and_rates_are_effective_dated():
    table = load_fx_table(DOCS / "fx_rates.example.csv")
    assert table.currencies() == ["EUR", "GBP", "JPY"]
    assert table.rate("EUR", dt.date(2025, 6, 30)) == Decimal("1.1412")
    assert table.rate("EUR", dt.date(2025, 7, 1)) == Decimal("1.1687")
    assert table.rate("USD", dt.date(1999, 1, 1)) == 1
    assert table.to_usd(Decimal("0.0794880000000001"), "EUR", dt.date(2025, 6, 2)) == Decimal("0.090711705600")
    with pytest.raises(FxError) as caught:
        table.rate("EUR", dt.date(2025, 4, 30))
    assert caught.value.rule == "fx_missing" and "2025-04-30" in caught.value.message
    with pytest.raises(FxError) as caught:
        table.rate("CHF", dt.date(2025, 6, 1))
    assert caught.value.rule == "fx_missing" and "CHF" in caught.value.message


@pytest.mark.parametrize("lines, column, rule", [
    (["currency,usd_per_unit"], "effective_from", "header"),
    (["currency,effective_from,usd_per_unit", "eur,2025-06-01,1.1"], "currency", "currency"),
    (["currency,effective_from,usd_per_unit", "EUR,June,1.1"], "effective_from", "date"),
    (["currency,effective_from,usd_per_unit", "EUR,2025-06-01,1.1e0"], "usd_per_unit", "positive_decimal"),
    (["currency,effective_from,usd_per_unit", "EUR,2025-06-01,0"], "usd_per_unit", "positive_decimal"),
    (["currency,effective_from,usd_per_unit", "USD,2025-06-01,1.01"], "usd_per_unit", "usd_is_one"),
    (["currency,effective_from,usd_per_unit", "EUR,2025-06-01,1.1", "EUR,2025-06-01,1.2"], "effective_from", "duplicate"),
])
def test_a_bad_fx_table_names_the_line_column_and_rule(lines, column, rule):
    with pytest.raises(FieldRuleError) as caught:
        parse_fx_rows(csv.reader(lines), source="fx.csv")
    assert (caught.value.field, caught.value.rule) == (column, rule)
    if rule != "header":
        assert f"line {len(lines)}" in caught.value.message and "fx.csv" in caught.value.message


def test_report_cloud_refuses_a_bad_fx_table_before_touching_clickhouse(tmp_path):
    rates = tmp_path / "rates.csv"
    rates.write_text("currency,effective_from,usd_per_unit\nEUR,2025-06-01,one\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["report", "cloud", "--month", "2026-05", "--fx", str(rates)], obj=Settings())
    assert result.exit_code == 1 and result.stdout == ""
    assert "line 2" in result.stderr and "usd_per_unit" in result.stderr and "positive_decimal" in result.stderr
    assert "Traceback" not in result.stderr
