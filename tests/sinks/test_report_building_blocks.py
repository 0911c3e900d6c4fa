"""The parts of the reports that need no ClickHouse: literals for the in-process engine, periods, rounding,
dimension checks, the SVG chart, and what a tenant user's files and statements say."""

from __future__ import annotations

import datetime as dt
import hashlib
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prismops.sinks import reports
from prismops.sinks.chdb_client import parse_value, sql_literal
from prismops.sinks.rollups import ROLLUPS, rollup_for
from prismops.sinks.svg_chart import bar_chart_svg
from prismops.sinks.tenant_users import tenant_database, tenant_slug, users_xml

SVG = "{http://www.w3.org/2000/svg}"


def test_literals_are_quoted_and_escaped_like_the_native_driver_does() -> None:
    assert sql_literal("it's\\") == "'it\\'s\\\\'"
    assert sql_literal((dt.date(2025, 6, 1), 7)) == "('2025-06-01', 7)"
    assert sql_literal(["a", None]) == "['a', NULL]"
    assert sql_literal(dt.datetime(2025, 6, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2)))) == "'2025-06-01 00:00:00'"
    assert sql_literal(Decimal("1E-12")) == "0.000000000001"
    with pytest.raises(TypeError):
        sql_literal(object())


@given(st.decimals(min_value=Decimal("-1e20"), max_value=Decimal("1e20"), places=12))
def test_decimals_come_back_exactly(value: Decimal) -> None:
    assert parse_value("Nullable(Decimal(38, 12))", format(value, "f")) == value


def test_nested_types_are_parsed_by_their_declared_type() -> None:
    parsed = parse_value("Tuple(UInt64, Array(Nullable(Decimal(38, 12))), DateTime('UTC'))",
                         ["5", ["1.5", None], "2025-06-01 10:00:00"])
    assert parsed == (5, [Decimal("1.5"), None], dt.datetime(2025, 6, 1, 10, tzinfo=dt.timezone.utc))


def test_a_month_is_its_first_day_to_the_first_day_of_the_next() -> None:
    assert reports.month_range("2025-12") == (dt.date(2025, 12, 1), dt.date(2026, 1, 1))
    assert reports.month_range("2024-02") == (dt.date(2024, 2, 1), dt.date(2024, 3, 1))
    with pytest.raises(ValueError, match="YYYY-MM"):
        reports.month_range("2025-13")


def test_per_unit_figures_are_rounded_once_half_even_and_none_without_a_denominator() -> None:
    assert reports._ratio(Decimal("1"), 3, reports.PER_UNIT_PLACES) == Decimal("0.333333333333")
    assert reports._ratio(Decimal("0.0000000000025"), 1, reports.PER_UNIT_PLACES) == Decimal("0.000000000002")
    assert reports._ratio(Decimal("5"), 0, reports.RATE_PLACES) is None


def test_unknown_or_missing_dimensions_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="region"):
        reports._check_dimensions(["team", "region"])
    with pytest.raises(ValueError, match="--by needs"):
        reports._check_dimensions([])


def test_each_report_dimension_has_a_rollup_and_customer_combines_only_with_tenant() -> None:
    for dimension in reports.SHOWBACK_DIMENSIONS:
        assert rollup_for([dimension]) is not None
    assert rollup_for(["tenant", "customer"]).table == "cost_daily_customers"
    assert rollup_for(["team", "customer"]) is None
    assert rollup_for(["team", "model", "node"]) is ROLLUPS[0]


def test_the_chart_has_one_bar_per_group_proportional_to_cost_and_escapes_labels() -> None:
    svg = bar_chart_svg("cost <by> team", ["a&b", "c", ""], [Decimal("200"), Decimal("50"), Decimal("-5")])
    root = ET.fromstring(svg)
    bars = root.findall(f"{SVG}rect")[1:]
    assert [int(bar.get("width")) for bar in bars] == [460, 115, 0]
    texts = [t.text for t in root.findall(f"{SVG}text")]
    assert "cost <by> team" in texts and "a&b" in texts and "(none)" in texts
    with pytest.raises(ValueError):
        bar_chart_svg("x", ["a"], [])


def test_tenant_names_become_distinct_identifiers() -> None:
    assert tenant_slug("acme") == "acme"
    assert tenant_slug("Acme Corp") != tenant_slug("acme-corp")
    assert tenant_database("prismops", "acme") == "prismops_tenant_acme"
    assert tenant_slug("Ünïcode!").replace("_", "").isalnum()


def test_the_users_file_stores_only_the_password_hash_and_one_database(tmp_path: Path) -> None:
    text = users_xml("tenant_acme", "s3cret", "prismops_tenant_acme", ("127.0.0.1",))
    root = ET.fromstring(text)
    user = root.find("users/tenant_acme")
    assert "s3cret" not in text
    assert user.findtext("password_sha256_hex") == hashlib.sha256(b"s3cret").hexdigest()
    assert [d.text for d in user.findall("allow_databases/database")] == ["prismops_tenant_acme"]
    assert root.findtext("profiles/prismops_tenant_readonly/readonly") == "1"
    assert user.findtext("profile") == "prismops_tenant_readonly"
