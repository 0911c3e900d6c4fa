"""FOCUS files → cloud_cost_line records → cost lines, without Kafka.

Expected totals are computed here from the CSV text with `csv` and `Decimal` alone, not with the module's parser.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import shutil
import time
import unicodedata
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from prismops.finops.focus_billing import (
    MANDATORY_COLUMNS,
    TEXT_COLUMN_LIMITS,
    FocusFileError,
    check_cloud_cost_line,
    check_mandatory_columns,
    cloud_cost_line_to_cost_line,
    detect_focus_version,
    dimensions_from_tags,
    focus_event_id,
    open_focus_file,
    parse_decimal,
    parse_focus_row,
    parse_timestamp,
    process_cloud_cost_line,
    read_focus_file,
)
from prismops.finops.llm_usage import Rejection, cost_line_id
from prismops.cli.app import main
from prismops.settings import Settings
from prismops.streams.codecs import codec_for
from prismops.errors import FieldRuleError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "focus"
SAMPLE_1_2 = FIXTURES / "focus_1_2_sample.csv"
SAMPLE_1_3 = FIXTURES / "focus_1_3_sample.csv"
BAD_ROWS = FIXTURES / "focus_bad_rows.csv"
SAMPLES = [SAMPLE_1_2, SAMPLE_1_3]
UTC = dt.timezone.utc

# (line, column, rule) of every broken rule in focus_bad_rows.csv; lines 2, 12 (a quoted value spanning
# lines 12-13) and 20 are good.
BAD_ROWS_EXPECTED = {
    (3, "BilledCost", "decimal"),
    (4, "EffectiveCost", "decimal_scale"),
    (5, "ChargePeriodEnd", "period_order"),
    (6, "ChargePeriodStart", "timestamp"),
    (7, "BillingCurrency", "currency"),
    (8, "ChargeCategory", "one_of"),
    (9, "Tags", "tags"),
    (10, "Tags", "tags"),
    (11, "ServiceName", "required"),
    (14, None, "column_count"),
    (15, "BillingPeriodEnd", "period_order"),
    (16, "BilledCost", "decimal"),
    (17, "PricingUnit", "required_with"),
    (18, "BilledCost", "decimal"),
    (19, "ChargePeriodStart", "timestamp"),
    (19, "BillingCurrency", "required"),
}


def column_sums(path: Path) -> dict:
    """BilledCost/EffectiveCost sums straight from the CSV text: by ServiceName, by ChargeCategory, in all."""
    exact = decimal.Context(prec=100, traps=[decimal.Inexact])
    by_service: dict = defaultdict(lambda: [0, Decimal(0), Decimal(0)])
    by_category: dict = defaultdict(lambda: [0, Decimal(0), Decimal(0)])
    total = [0, Decimal(0), Decimal(0)]
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for group in (by_service[row["ServiceName"]], by_category[row["ChargeCategory"]], total):
                group[0] += 1
                group[1] = exact.add(group[1], Decimal(row["BilledCost"]))
                group[2] = exact.add(group[2], Decimal(row["EffectiveCost"]))
    return {"by_service_name": dict(by_service), "by_charge_category": dict(by_category), "total": total}


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def sample_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------------------------
# versions and columns


def test_the_version_is_told_from_the_provider_columns():
    assert read_focus_file(SAMPLE_1_2).file.focus_version == "1.2"
    assert read_focus_file(SAMPLE_1_3).file.focus_version == "1.3"
    assert detect_focus_version(MANDATORY_COLUMNS["1.2"]) == "1.0", "1.0-1.2 share their mandatory columns"
    assert detect_focus_version(MANDATORY_COLUMNS["1.0"] + ("SkuPriceDetails",)) == "1.1"
    assert detect_focus_version(MANDATORY_COLUMNS["1.0"] + ("SkuMeter", "InvoiceId")) == "1.2"
    assert detect_focus_version(MANDATORY_COLUMNS["1.3"]) == "1.3"
    assert detect_focus_version(MANDATORY_COLUMNS["1.3"] + ("ProviderName",)) == "1.3", "1.3 may keep the deprecated column"


def test_a_file_with_no_provider_column_names_the_column_it_lacks():
    with pytest.raises(FocusFileError) as caught:
        detect_focus_version([c for c in MANDATORY_COLUMNS["1.2"] if c != "ProviderName"])
    assert caught.value.field == "ProviderName" and caught.value.rule == "mandatory_column"
    assert "--focus-version" in caught.value.message


def test_an_explicit_version_is_checked_against_the_columns():
    with pytest.raises(FocusFileError) as caught:
        open_focus_file(SAMPLE_1_3, focus_version="1.2")
    assert (caught.value.field, caught.value.rule) == ("ProviderName", "mandatory_column")
    assert open_focus_file(SAMPLE_1_2, focus_version="1.2").focus_version == "1.2"


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("missing", ["BilledCost", "ChargePeriodEnd", "BillingCurrency", "ServiceName", "PricingUnit"])
def test_each_missing_mandatory_column_is_one_error_naming_it(tmp_path, version, missing):
    header = [c for c in MANDATORY_COLUMNS[version] if c != missing]
    path = write_csv(tmp_path / "bill.csv", header, [["x"] * len(header)])
    with pytest.raises(FocusFileError) as caught:
        open_focus_file(path, focus_version=version)
    assert caught.value.field == missing and caught.value.rule == "mandatory_column"
    assert missing in str(caught.value) and f"FOCUS {version}" in str(caught.value)


def test_several_missing_columns_are_named_together_with_a_case_hint():
    columns = [c for c in MANDATORY_COLUMNS["1.3"] if c not in ("ListCost", "HostProviderName")] + ["listcost"]
    with pytest.raises(FocusFileError) as caught:
        check_mandatory_columns(columns, "1.3")
    assert caught.value.field == "ListCost, HostProviderName"
    assert "'listcost'" in caught.value.message and "case-sensitive" in caught.value.message


@pytest.mark.parametrize("content, rule", [
    (b"", "header"),
    (b"BilledCost,BilledCost\n1,2\n", "duplicate_column"),
    ("BilledCost\n1\n".encode() + b"\xff\xfe\n", "utf8"),
])
def test_unreadable_files_are_file_errors(tmp_path, content, rule):
    path = tmp_path / "bill.csv"
    path.write_bytes(content)
    with pytest.raises(FocusFileError) as caught:
        open_focus_file(path)
    assert caught.value.rule == rule


def test_a_missing_file_is_a_file_error(tmp_path):
    with pytest.raises(FocusFileError) as caught:
        open_focus_file(tmp_path / "nope.csv")
    assert caught.value.rule == "readable" and "nope.csv" in caught.value.message


def test_the_utf8_error_names_its_line(tmp_path):
    path = tmp_path / "bill.csv"
    path.write_bytes(b"a,b\n1,2\n3,\xc3(\n")
    with pytest.raises(FocusFileError) as caught:
        open_focus_file(path)
    assert "line 3" in caught.value.message


# ---------------------------------------------------------------------------------------------------------------
# row rules


def test_every_broken_rule_of_the_bad_rows_file_is_reported_with_its_line_column_and_rule():
    result = read_focus_file(BAD_ROWS)
    assert {(e.line, e.column, e.rule) for e in result.errors} == BAD_ROWS_EXPECTED
    assert len(result.errors) == len(BAD_ROWS_EXPECTED), "one error per broken rule, none repeated"
    assert result.bad_lines == sorted({line for line, _, _ in BAD_ROWS_EXPECTED})
    assert [r["source_line"] for r in result.records] == [2, 12, 20]
    assert result.records[1]["ChargeDescription"] == "multi-line\ndescription, quoted"
    by_line = {(e.line, e.column): e.message for e in result.errors}
    assert "'12,50'" in by_line[(3, "BilledCost")]
    assert "'EURO'" in by_line[(7, "BillingCurrency")] and "ISO 4217" in by_line[(7, "BillingCurrency")]


def test_good_rows_of_a_partly_bad_file_still_add_up():
    result = read_focus_file(BAD_ROWS)
    assert result.totals.total.as_dict() == {
        "rows": 3, "BilledCost": Decimal("10.50") + Decimal("3.25") - Decimal("4.75"),
        "EffectiveCost": Decimal("10.50") + Decimal("3.25") - Decimal("4.75"),
        "ListCost": Decimal("12.00") + Decimal("12.00") + Decimal("0"),
        "ContractedCost": Decimal("10.50") + Decimal("10.50") + Decimal("0"),
    }


@pytest.mark.parametrize("text, value", [
    ("12", Decimal("12")), ("-0.5", Decimal("-0.5")), ("+3.", Decimal(3)), (".25", Decimal("0.25")),
    ("1.5E-3", Decimal("0.0015")), ("0.000000000001", Decimal("1e-12")), ("1.500000000000000", Decimal("1.5")),
    ("21.44988849635786", Decimal("21.44988849635786")), ("1e-13", Decimal("1e-13")),
    ("0." + "0" * 37 + "1", Decimal("1e-38")), ("1" * 26 + ".5", Decimal("1" * 26 + ".5")),
    ("0.5" + "0" * 60, Decimal("0.5")),
])
def test_decimal_syntax_is_exact(text, value):
    parsed = parse_decimal("BilledCost", text)
    assert parsed == value and isinstance(parsed, Decimal)


@pytest.mark.parametrize("text, rule", [
    ("1,5", "decimal"), ("$5", "decimal"), ("NaN", "decimal"), ("inf", "decimal"), ("1_000", "decimal"),
    ("0x10", "decimal"), ("1e-39", "decimal_scale"), ("0." + "0" * 38 + "1", "decimal_scale"), ("1e-99999", "decimal_scale"),
    ("1" * 27 + ".5", "decimal_precision"), ("1e999", "decimal_precision"),
])
def test_decimal_rules(text, rule):
    with pytest.raises(FieldRuleError) as caught:
        parse_decimal("EffectiveCost", text)
    assert (caught.value.field, caught.value.rule) == ("EffectiveCost", rule)


def test_timestamps_are_utc_iso_8601():
    assert parse_timestamp("ChargePeriodStart", "2025-06-01T02:00:00+02:00") == dt.datetime(2025, 6, 1, tzinfo=UTC)
    assert parse_timestamp("ChargePeriodStart", "2025-06-01T00:00:00.000Z") == dt.datetime(2025, 6, 1, tzinfo=UTC)
    for text in ("2025-06-01", "2025-06-01T00:00:00", "2025-06-01 00:00:00"):  # no offset: FOCUS date-times are UTC
        assert parse_timestamp("ChargePeriodStart", text) == dt.datetime(2025, 6, 1, tzinfo=UTC), text
    for text in ("06/01/2025", "2025-13-01T00:00:00Z", "2025-06-01T24:00:00Z", "yesterday"):
        with pytest.raises(FieldRuleError) as caught:
            parse_timestamp("ChargePeriodStart", text)
        assert caught.value.rule == "timestamp", text


def one_row_file(tmp_path: Path, **changes: str) -> Path:
    """The first row of the 1.2 sample with `changes`, as a one-row file."""
    row = sample_rows(SAMPLE_1_2)[0] | changes
    return write_csv(tmp_path / "one.csv", list(row), [list(row.values())])


@pytest.mark.parametrize("changes, column, rule", [
    ({"ChargeClass": "Refund"}, "ChargeClass", "one_of"),
    ({"ServiceCategory": "Computers"}, "ServiceCategory", "one_of"),
    ({"BillingAccountId": "  "}, "BillingAccountId", "required"),
    ({"ProviderName": ""}, "ProviderName", "required"),
    ({"InvoiceIssuerName": ""}, "InvoiceIssuerName", "required"),
    ({"BilledCost": ""}, "BilledCost", "required"),
    ({"BillingPeriodStart": ""}, "BillingPeriodStart", "required"),
    ({"ConsumedUnit": ""}, "ConsumedUnit", "required_with"),
    ({"ConsumedQuantity": "2.5.1"}, "ConsumedQuantity", "decimal"),
    ({"BillingCurrency": "usd"}, "BillingCurrency", "currency"),
    ({"ChargePeriodEnd": "2025-06-01T00:00:00Z"}, "ChargePeriodEnd", "period_order"),
    ({"Tags": "[\"tenant\", \"acme\"]"}, "Tags", "tags"),
    ({"Tags": "{\"tenant\": NaN}"}, "Tags", "tags"),
    ({"BillingCurrency": "EURO"}, "BillingCurrency", "currency"),
])
def test_each_rule_rejects_the_row_at_its_line(tmp_path, changes, column, rule):
    result = read_focus_file(one_row_file(tmp_path, **changes))
    assert result.records == []
    assert [(e.line, e.column, e.rule) for e in result.errors] == [(2, column, rule)]


def test_the_first_sample_row_alone_is_valid(tmp_path):
    result = read_focus_file(one_row_file(tmp_path))
    assert result.errors == [] and len(result.records) == 1


def test_charge_class_may_be_correction_and_tax_rows_have_no_quantity(tmp_path):
    records = read_focus_file(SAMPLE_1_2).records
    assert any(r["ChargeClass"] == "Correction" for r in records)
    taxes = [r for r in records if r["ChargeCategory"] == "Tax"]
    assert taxes and all(r["PricingQuantity"] is None and r["PricingUnit"] is None for r in taxes)


# ---------------------------------------------------------------------------------------------------------------
# the sample files and their totals


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_the_sample_files_are_realistic_and_entirely_valid(path):
    result = read_focus_file(path)
    raw = sample_rows(path)
    assert result.errors == []
    assert len(result.records) == len(raw) >= 50
    categories = {r["ChargeCategory"] for r in result.records}
    assert {"Usage", "Purchase", "Tax", "Credit", "Adjustment"} <= categories
    assert any(r["ChargeCategory"] == "Credit" and r["BilledCost"] < 0 for r in result.records)
    assert len({r["ServiceName"] for r in result.records}) >= 5
    assert any("tenant" in {k.lower() for k in r["Tags"]} for r in result.records)
    assert any(not r["Tags"] for r in result.records)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_totals_equal_the_column_sums_to_the_last_digit(path):
    expected = column_sums(path)
    totals = read_focus_file(path).totals.as_dict()
    assert {k: totals["total"][k] for k in ("rows", "BilledCost", "EffectiveCost")} == dict(
        zip(("rows", "BilledCost", "EffectiveCost"), expected["total"]))
    assert {r["ServiceName"]: (r["rows"], r["BilledCost"], r["EffectiveCost"]) for r in totals["by_service_name"]} == {
        name: tuple(v) for name, v in expected["by_service_name"].items()
    }
    assert {r["ChargeCategory"]: (r["rows"], r["BilledCost"], r["EffectiveCost"]) for r in totals["by_charge_category"]} == {
        name: tuple(v) for name, v in expected["by_charge_category"].items()
    }
    assert totals["total"]["BilledCost"] != totals["total"]["EffectiveCost"], "the samples amortize purchases"


_money_text = st.decimals(
    min_value=Decimal("-1e25"), max_value=Decimal("1e25"), places=12, allow_nan=False, allow_infinity=False,
).map(lambda d: format(d, "f"))


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(costs=st.lists(st.tuples(_money_text, _money_text, st.sampled_from(["A", "B", "C"])), min_size=1, max_size=30))
def test_totals_of_large_twelve_place_amounts_are_never_rounded(tmp_path, costs):
    template = sample_rows(SAMPLE_1_2)[0]
    rows = [list((template | {"BilledCost": b, "EffectiveCost": e, "ServiceName": s}).values()) for b, e, s in costs]
    path = write_csv(tmp_path / "big.csv", list(template), rows)
    totals = read_focus_file(path).totals
    assert totals.total.BilledCost == sum_exact(b for b, _, _ in costs)
    assert totals.total.EffectiveCost == sum_exact(e for _, e, _ in costs)
    for service in {s for _, _, s in costs}:
        assert totals.by_service_name[service].BilledCost == sum_exact(b for b, _, s in costs if s == service)


def sum_exact(texts) -> Decimal:
    context = decimal.Context(prec=100, traps=[decimal.Inexact])
    total = Decimal(0)
    for text in texts:
        total = context.add(total, Decimal(text))
    return total


# ---------------------------------------------------------------------------------------------------------------
# text columns: length and character rules (finops/text_rules.py)

CSV_TEXT_COLUMNS = sorted(set(TEXT_COLUMN_LIMITS) - {"event_id"})
ONE_OF_COLUMNS = {"ChargeCategory", "ChargeClass", "ServiceCategory", "BillingCurrency"}  # only a few values pass


def text_row_file(tmp_path: Path, **changes: str) -> Path:
    """The first row of the 1.2 sample (of the 1.3 sample for its own columns) with `changes`, as a one-row file."""
    sample = SAMPLE_1_2 if set(changes) <= set(sample_rows(SAMPLE_1_2)[0]) else SAMPLE_1_3
    row = sample_rows(sample)[0] | changes
    return write_csv(tmp_path / "one.csv", list(row), [list(row.values())])


def row_errors(tmp_path, **changes) -> list[tuple[int, str | None, str]]:
    result = read_focus_file(text_row_file(tmp_path, **changes))
    return [(e.line, e.column, e.rule) for e in result.errors]


def test_the_columns_that_become_cost_line_fields_are_names_or_ids():
    names = {"ServiceName", "ProviderName", "ServiceProviderName", "HostProviderName", "RegionId", "ChargeCategory",
             "ChargeClass", "ServiceCategory", "BillingCurrency", "PricingUnit", "ConsumedUnit"}
    assert {c for c, n in TEXT_COLUMN_LIMITS.items() if n == 128} == names
    assert {c for c, n in TEXT_COLUMN_LIMITS.items() if n == 256} == {"BillingAccountId", "SkuId", "event_id"}
    assert TEXT_COLUMN_LIMITS["ResourceId"] == 1024


@pytest.mark.parametrize("column", CSV_TEXT_COLUMNS)
def test_one_character_over_the_limit_rejects_the_row_once_naming_the_column(tmp_path, column):
    limit = TEXT_COLUMN_LIMITS[column]
    errors = row_errors(tmp_path, **{column: "a" * (limit + 1)})
    assert errors == [(2, column, "max_length")], "one error: the one_of/currency rules never see the value"


@pytest.mark.parametrize("column", sorted(set(CSV_TEXT_COLUMNS) - ONE_OF_COLUMNS))
def test_a_value_at_the_limit_passes(tmp_path, column):
    assert row_errors(tmp_path, **{column: "a" * TEXT_COLUMN_LIMITS[column]}) == []


@pytest.mark.parametrize("column", CSV_TEXT_COLUMNS)
@pytest.mark.parametrize("char", ["\u0000", "\t", "\u202e", "\u200d", "\u2028"],
                         ids=["NUL", "tab", "RLO", "ZWJ", "line-separator"])
def test_control_and_format_characters_reject_the_row_naming_the_column(tmp_path, column, char):
    result = read_focus_file(text_row_file(tmp_path, **{column: f"x{char}y"}))
    assert [(e.line, e.column, e.rule) for e in result.errors] == [(2, column, "printable")]
    assert f"U+{ord(char):04X}" in result.errors[0].message


@pytest.mark.parametrize("column, value", [
    ("ServiceName", "Amazon Simple Storage Service — Zürich"), ("RegionId", "東京"), ("ProviderName", "Café Cloud"),
])
def test_letters_of_any_script_pass_in_text_columns(tmp_path, column, value):
    result = read_focus_file(text_row_file(tmp_path, **{column: value}))
    assert result.errors == [] and result.records[0][column] == value


def test_a_resource_id_may_be_a_long_arn_up_to_1024_characters(tmp_path):
    arn = "arn:aws:s3:::" + "b" * (1024 - len("arn:aws:s3:::"))
    assert row_errors(tmp_path, ResourceId=arn) == []
    assert row_errors(tmp_path, ResourceId=arn + "b") == [(2, "ResourceId", "max_length")]


def test_descriptive_columns_take_any_characters_up_to_1024(tmp_path):
    description = "line one\nline\ttwo \u202e" + "d" * (1024 - 19)
    assert len(description) == 1024 and row_errors(tmp_path, ChargeDescription=description) == []
    assert row_errors(tmp_path, ChargeDescription=description + "d") == [(2, "ChargeDescription", "max_length")]
    assert row_errors(tmp_path, ResourceName="r" * 1025) == [(2, "ResourceName", "max_length")]


def test_a_cell_over_the_csv_field_limit_stops_the_file(tmp_path):
    with pytest.raises(FocusFileError) as caught:
        read_focus_file(text_row_file(tmp_path, ChargeDescription="d" * 200_000))
    assert caught.value.rule == "csv"


def test_a_900_kb_service_name_is_rejected_fast_and_not_quoted():
    cells = sample_rows(SAMPLE_1_2)[0] | {"ServiceName": "s" * 900_000, "BillingCurrency": "EURO"}
    started = time.perf_counter()
    row = parse_focus_row(cells, "1.2", line=2, content_hash="0" * 64, source_file=None)
    assert time.perf_counter() - started < 0.5
    assert row.record is None
    assert [(e.column, e.rule) for e in row.errors] == [("ServiceName", "max_length"), ("BillingCurrency", "currency")]
    assert all(len(e.message) < 200 for e in row.errors)


def tags_errors(tmp_path, tags: dict) -> list[tuple[int, str | None, str]]:
    return row_errors(tmp_path, Tags=json.dumps(tags, ensure_ascii=False))


def test_65_tags_are_too_many_and_64_pass(tmp_path):
    assert tags_errors(tmp_path, {f"k{i}": "v" for i in range(65)}) == [(2, "Tags", "max_entries")]
    assert tags_errors(tmp_path, {f"k{i}": "v" for i in range(64)}) == []


@pytest.mark.parametrize("tags, rule, named", [
    ({"tenant": "t" * 129}, "max_length", "'tenant'"),
    ({"Tenant": "acme\u202e"}, "printable", "'Tenant'"),
    ({"user:cost-center": "ML\tResearch"}, "printable", "'user:cost-center'"),  # a dimension: no tab
    ({"note": "n" * 257}, "max_length", "'note'"),
    ({"note": "a\nb"}, "printable", "'note'"),
    ({"k" * 257: "v"}, "max_length", "tag key"),
    ({"no\u0000te": "v"}, "printable", "tag key"),
])
def test_broken_tags_reject_the_row_naming_the_tags_column(tmp_path, tags, rule, named):
    result = read_focus_file(text_row_file(tmp_path, Tags=json.dumps(tags)))
    assert [(e.line, e.column, e.rule) for e in result.errors] == [(2, "Tags", rule)]
    assert named in result.errors[0].message


@pytest.mark.parametrize("tags", [
    {"tenant": "t" * 128},
    {"note": "a\tb", "Owner": "n" * 256},
    {"user:" + "k" * 128: "v"},  # AWS's 128-character key with its prefix
    {"tenant": "東京", "team": "équipe café"},
])
def test_tags_within_the_limits_pass(tmp_path, tags):
    assert tags_errors(tmp_path, tags) == []


def test_a_unicode_tenant_tag_becomes_the_dimension(tmp_path):
    record = read_focus_file(text_row_file(tmp_path, Tags=json.dumps({"tenant": "東京"}))).records[0]
    assert cloud_cost_line_to_cost_line(record)["tenant"] == "東京"


@pytest.mark.parametrize("changes, field, rule", [
    ({"ServiceName": "s" * 900_000}, "ServiceName", "max_length"),
    ({"RegionId": "us-east-1\u202e"}, "RegionId", "printable"),
    ({"Tags": {"tenant": "acme\u0000"}}, "Tags", "printable"),
    ({"event_id": "e" * 257}, "event_id", "max_length"),
    ({"source_file": "/" + "p" * 4096}, "source_file", "max_length"),
])
def test_the_billing_agent_rejects_a_record_that_breaks_a_text_rule(changes, field, rule):
    record = read_focus_file(SAMPLE_1_2).records[0] | changes
    outcome = process_cloud_cost_line(codec_for("cloud_cost_line").encode(record))
    assert isinstance(outcome, Rejection) and (outcome.field, outcome.rule) == (field, rule)
    assert len(outcome.message) < 300


def test_a_huge_focus_version_is_not_quoted():
    problems = check_cloud_cost_line(read_focus_file(SAMPLE_1_2).records[0] | {"focus_version": "9" * 900_000})
    assert [(p.field, p.rule) for p in problems] == [("focus_version", "one_of")]
    assert "900000-character" in problems[0].message and len(problems[0].message) < 200


@hypothesis_settings(max_examples=150, deadline=None)
@given(value=st.one_of(
    st.text(max_size=140),
    st.text(st.characters(categories=["Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs", "L"]), max_size=140),
    st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=120, max_size=140),
))
def test_a_region_is_accepted_exactly_when_short_and_printable(value):
    record = read_focus_file(SAMPLE_1_2).records[0] | {"RegionId": value}
    problems = [(p.field, p.rule) for p in check_cloud_cost_line(record)]
    printable = len(value) <= 128 and not any(
        unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"} for c in value)
    if printable:
        assert problems == []
    else:
        assert problems == [("RegionId", "max_length" if len(value) > 128 else "printable")]


# ---------------------------------------------------------------------------------------------------------------
# ids


def test_event_ids_are_the_content_hash_and_line_and_stable_across_reads_and_paths(tmp_path):
    first = read_focus_file(SAMPLE_1_2)
    copy = tmp_path / "renamed.csv"
    shutil.copy(SAMPLE_1_2, copy)
    again, elsewhere = read_focus_file(SAMPLE_1_2), read_focus_file(copy)
    ids = [r["event_id"] for r in first.records]
    assert ids == [r["event_id"] for r in again.records] == [r["event_id"] for r in elsewhere.records]
    assert len(set(ids)) == len(ids)
    assert ids[0] == focus_event_id(first.file.content_hash, 2) and first.records[0]["source_line"] == 2
    assert elsewhere.records[0]["source_file"] == str(copy)


def test_a_file_that_differs_by_one_byte_gets_other_ids(tmp_path):
    changed = tmp_path / "changed.csv"
    changed.write_bytes(SAMPLE_1_2.read_bytes().replace(b"prismops-payer", b"prismops-payex", 1))
    original, other = read_focus_file(SAMPLE_1_2), read_focus_file(changed)
    assert not {r["event_id"] for r in original.records} & {r["event_id"] for r in other.records}


# ---------------------------------------------------------------------------------------------------------------
# cost lines


def record_with(**changes):
    return read_focus_file(SAMPLE_1_2).records[0] | changes


@pytest.mark.parametrize("tags, expected", [
    ({"tenant": "Acme", "team": "Search"}, {"tenant": "acme", "team": "search"}),
    ({"Tenant": "globex", "Team": "Support-Bot", "Environment": "prod"}, {"tenant": "globex", "team": "support-bot", "environment": "prod"}),
    ({"user:cost-center": "ML Research", "env": "staging"}, {"team": "ml research", "environment": "staging"}),
    ({"Cost Center": "platform", "cost_center": "ignored-second"}, {"team": "platform"}),
    ({"team": "owner", "cost-center": "alias-loses"}, {"team": "owner"}),
    ({"product": "copilot", "feature": "summarize", "service": "api", "customer": "Cust-9"},
     {"product": "copilot", "feature": "summarize", "service": "api", "customer": "Cust-9"}),
    ({"team": "  "}, {}),
    ({}, {}),
])
def test_dimensions_come_from_tags_or_default_to_unallocated(tags, expected):
    dims, source = dimensions_from_tags(tags)
    for dimension in ("tenant", "team", "product", "service", "feature", "environment", "customer"):
        if dimension in expected:
            assert (dims[dimension], source[dimension]) == (expected[dimension], "explicit"), dimension
        else:
            default = None if dimension == "customer" else "unallocated"
            assert (dims[dimension], source[dimension]) == (default, "default"), dimension


def test_a_bill_row_becomes_a_cloud_cost_line():
    record = record_with(Tags={"tenant": "acme", "Team": "Search"})
    line = cloud_cost_line_to_cost_line(record)
    assert line["line_id"] == cost_line_id("cloud", record["event_id"])
    assert line["source"] == "cloud" and line["source_event_id"] == record["event_id"]
    assert line["event_time"] == record["ChargePeriodStart"]
    assert (line["tenant"], line["team"], line["product"]) == ("acme", "search", "unallocated")
    assert line["tag_source"]["tenant"] == "explicit" and line["tag_source"]["product"] == "default"
    assert (line["provider"], line["model"]) == ("Amazon Web Services", "Amazon Elastic Compute Cloud")
    assert line["cost_usd"] == record["EffectiveCost"] and line["billed_cost_usd"] == record["BilledCost"]
    assert line["list_cost_usd"] == record["ListCost"] and line["charge_category"] == "Usage"
    assert (line["region"], line["resource"]) == (record["RegionId"], record["ResourceId"])
    assert line["priced"] is True and line["price_version"] == "focus-1.2"
    assert line["labels"]["Team"] == "Search" and line["labels"]["focus.BillingAccountId"] == "123456789012"
    decoded = codec_for("cost_line").decode(codec_for("cost_line").encode(line))
    assert decoded["cost_usd"] == record["EffectiveCost"] and decoded["source"] == "cloud"


def test_the_quantity_is_consumed_then_pricing_then_zero():
    line = cloud_cost_line_to_cost_line(record_with(
        ConsumedQuantity=Decimal("3"), ConsumedUnit="GB", PricingQuantity=Decimal("1"), PricingUnit="TB"))
    assert (line["usage_quantity"], line["usage_unit"]) == (Decimal("3"), "GB")
    line = cloud_cost_line_to_cost_line(record_with(
        ConsumedQuantity=None, ConsumedUnit=None, PricingQuantity=Decimal("1"), PricingUnit="TB"))
    assert (line["usage_quantity"], line["usage_unit"]) == (Decimal("1"), "TB")
    line = cloud_cost_line_to_cost_line(record_with(
        ConsumedQuantity=None, ConsumedUnit=None, PricingQuantity=None, PricingUnit=None))
    assert (line["usage_quantity"], line["usage_unit"]) == (Decimal(0), "")


def test_a_focus_1_3_line_takes_its_provider_from_service_provider_name():
    records = read_focus_file(SAMPLE_1_3).records
    snowflake = next(r for r in records if r["ServiceName"] == "Snowflake Data Cloud")
    line = cloud_cost_line_to_cost_line(snowflake | {"ProviderName": "Amazon Web Services"})
    assert line["provider"] == "Snowflake" and line["price_version"] == "focus-1.3"
    assert line["labels"]["focus.HostProviderName"] == "Amazon Web Services"


# ---------------------------------------------------------------------------------------------------------------
# the agent's per-message logic


def test_the_agent_logic_turns_an_encoded_record_into_its_cost_line():
    record = read_focus_file(SAMPLE_1_3).records[3]
    line = process_cloud_cost_line(codec_for("cloud_cost_line").encode(record))
    assert line == cloud_cost_line_to_cost_line(record)


@pytest.mark.parametrize("value, field, rule", [
    (b"\x00garbage", None, "wire_format"),
    (b"", None, "non_empty"),
    (b'{"event_id": "x"}', "focus_version", "required"),
])
def test_undecodable_messages_are_rejections_naming_the_rule(value, field, rule):
    outcome = process_cloud_cost_line(value)
    assert isinstance(outcome, Rejection) and (outcome.field, outcome.rule) == (field, rule)


def test_a_decodable_record_that_breaks_a_rule_is_rejected_too():
    record = read_focus_file(SAMPLE_1_2).records[0] | {"BillingCurrency": "EURO", "ChargeCategory": "Refund"}
    outcome = process_cloud_cost_line(codec_for("cloud_cost_line").encode_json(record))
    assert isinstance(outcome, Rejection)
    assert (outcome.field, outcome.rule) == ("BillingCurrency", "currency")
    assert "ChargeCategory" in outcome.message and "[one_of]" in outcome.message


# ---------------------------------------------------------------------------------------------------------------
# the command, where it needs no Kafka (--dry-run, file errors)


def ingest(*args: str):
    return CliRunner().invoke(main, ["ingest", "focus", *args], obj=Settings())


def test_dry_run_prints_the_totals_as_json_and_exits_zero():
    result = ingest(str(SAMPLE_1_3), "--dry-run", "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    expected = column_sums(SAMPLE_1_3)
    assert (document["focus_version"], document["rows"], document["bad_rows"], document["produced"]) == ("1.3", 57, 0, 0)
    assert Decimal(document["totals"]["total"]["BilledCost"]) == expected["total"][1]
    assert Decimal(document["totals"]["total"]["EffectiveCost"]) == expected["total"][2]
    assert document["errors"] == []


def test_dry_run_of_the_bad_rows_file_lists_them_and_exits_three():
    result = ingest(str(BAD_ROWS), "--dry-run", "--format", "json")
    assert result.exit_code == 3, result.output
    document = json.loads(result.stdout)
    assert {(e["line"], e["column"], e["rule"]) for e in document["errors"]} == BAD_ROWS_EXPECTED
    assert (document["good_rows"], document["bad_rows"], document["produced"]) == (3, 15, 0)
    assert "15 of 18 rows broke a rule" in result.stderr


def test_the_table_output_shows_totals_and_bad_rows():
    result = ingest(str(BAD_ROWS), "--dry-run")
    assert result.exit_code == 3
    for text in ("totals by ServiceName", "totals by ChargeCategory", "bad rows", "period_order", "currency"):
        assert text in result.stdout, text


def test_a_missing_mandatory_column_fails_on_stderr_with_exit_one(tmp_path):
    header = [c for c in MANDATORY_COLUMNS["1.2"] if c != "EffectiveCost"]
    path = write_csv(tmp_path / "bill.csv", header, [["1"] * len(header)])
    result = ingest(str(path), "--format", "json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "EffectiveCost" in result.stderr and "mandatory" in result.stderr


def test_an_unreadable_file_fails_with_exit_one(tmp_path):
    result = ingest(str(tmp_path / "missing.csv"))
    assert result.exit_code == 1 and "cannot read" in result.stderr


def test_text_from_the_file_is_never_read_as_table_markup(tmp_path):
    path = one_row_file(tmp_path, ServiceName="Compute [Preview]", BillingCurrency="[/eur]")
    result = ingest(str(path), "--dry-run")
    assert result.exit_code == 3, result.output
    assert "[/eur]" in result.stdout and "currency" in result.stdout
