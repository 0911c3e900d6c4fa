"""`prismops ingest focus` on the real stack: FOCUS file → billing.cloud.v1 → worker → cost.lines.v1 → ClickHouse.

Worker, sink and gateway run as the real commands (the `pipeline` fixture). Expected sums come from the CSV
text via `csv` and `Decimal`, never from the code under test.
"""

from __future__ import annotations

import csv
import decimal
import json
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from clickhouse_driver import Client
from confluent_kafka import Consumer, Producer, TopicPartition

from prismops.cli.app import main
from prismops.testing import clickhouse, read_topic_to_end, wait_for
from prismops.streams.codecs import codec_for
from prismops.streams.replay import end_offsets
from prismops.streams.topics import CLOUD_BILLING, COST_LINES, DEAD_LETTERS

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[1] / "fixtures" / "focus"
SAMPLE_1_2 = FIXTURES / "focus_1_2_sample.csv"
SAMPLE_1_3 = FIXTURES / "focus_1_3_sample.csv"
BAD_ROWS = FIXTURES / "focus_bad_rows.csv"
EXACT = decimal.Context(prec=100, traps=[decimal.Inexact])


def file_sums(path: Path) -> dict:
    """{"rows", "BilledCost", "EffectiveCost", "by_service": {name: (rows, billed, effective)},
    "by_category": {...}} straight from the CSV text."""
    by_service: dict = defaultdict(lambda: [0, Decimal(0), Decimal(0)])
    by_category: dict = defaultdict(lambda: [0, Decimal(0), Decimal(0)])
    total = [0, Decimal(0), Decimal(0)]
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for group in (by_service[row["ServiceName"]], by_category[row["ChargeCategory"]], total):
                group[0] += 1
                group[1] = EXACT.add(group[1], Decimal(row["BilledCost"]))
                group[2] = EXACT.add(group[2], Decimal(row["EffectiveCost"]))
    return {
        "rows": total[0], "BilledCost": total[1], "EffectiveCost": total[2],
        "by_service": {k: tuple(v) for k, v in by_service.items()},
        "by_category": {k: tuple(v) for k, v in by_category.items()},
    }


def ingest(settings, *args: str):
    return CliRunner().invoke(main, ["ingest", "focus", *args], obj=settings)


def id_prefix(document: dict) -> str:
    """The LIKE pattern of the event ids of one ingested file (content hash, export sequence, line number)."""
    [sequence] = {period["export_seq"] for period in document["periods"]}
    return f"focus:{document['content_hash']}:{sequence}:%"


def stored_count(client: Client, prefix: str) -> int:
    return client.execute(
        "SELECT count() FROM cost_lines WHERE source = 'cloud' AND source_event_id LIKE %(prefix)s", {"prefix": prefix},
    )[0][0]


def sink_committed(settings, topic: str, partitions) -> dict[int, int]:
    consumer = Consumer(settings.kafka_client_config() | {"group.id": settings.sink_group_id, "enable.auto.commit": False})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in committed}
    finally:
        consumer.close()


def test_ingested_files_land_in_clickhouse_with_every_row_and_exact_sums(pipeline):
    settings, components = pipeline
    client = clickhouse(settings)
    for path in (SAMPLE_1_2, SAMPLE_1_3):
        expected = file_sums(path)
        result = ingest(settings, str(path), "--format", "json")
        assert result.exit_code == 0, result.output + result.stderr
        document = json.loads(result.stdout)
        assert (document["rows"], document["good_rows"], document["bad_rows"]) == (expected["rows"], expected["rows"], 0)
        assert document["produced"] == expected["rows"]
        assert document["topic"] == CLOUD_BILLING.name(settings)

        totals = document["totals"]
        assert Decimal(totals["total"]["BilledCost"]) == expected["BilledCost"]
        assert Decimal(totals["total"]["EffectiveCost"]) == expected["EffectiveCost"]
        assert {r["ServiceName"]: (r["rows"], Decimal(r["BilledCost"]), Decimal(r["EffectiveCost"]))
                for r in totals["by_service_name"]} == expected["by_service"]
        assert {r["ChargeCategory"]: (r["rows"], Decimal(r["BilledCost"]), Decimal(r["EffectiveCost"]))
                for r in totals["by_charge_category"]} == expected["by_category"]

        prefix = id_prefix(document)
        wait_for(lambda: stored_count(client, prefix) >= expected["rows"], 180, components, f"{path.name} in ClickHouse")
        (rows, distinct, billed, effective), = client.execute(
            "SELECT count(), uniqExact(source_event_id), sum(billed_cost_usd), sum(cost_usd) FROM cost_lines"
            " WHERE source = 'cloud' AND source_event_id LIKE %(prefix)s", {"prefix": prefix},
        )
        assert (rows, distinct) == (expected["rows"], expected["rows"]), "every row exactly once"
        assert Decimal(billed) == expected["BilledCost"] and Decimal(effective) == expected["EffectiveCost"]

        by_service = client.execute(
            "SELECT model, count(), sum(billed_cost_usd), sum(cost_usd) FROM cost_lines"
            " WHERE source = 'cloud' AND source_event_id LIKE %(prefix)s GROUP BY model", {"prefix": prefix},
        )
        assert {m: (n, Decimal(b), Decimal(e)) for m, n, b, e in by_service} == expected["by_service"]
        by_category = client.execute(
            "SELECT charge_category, count(), sum(billed_cost_usd) FROM cost_lines"
            " WHERE source = 'cloud' AND source_event_id LIKE %(prefix)s GROUP BY charge_category", {"prefix": prefix},
        )
        assert {c: (n, Decimal(b)) for c, n, b in by_category} == {k: v[:2] for k, v in expected["by_category"].items()}

        versions = client.execute(
            "SELECT DISTINCT price_version, priced FROM cost_lines WHERE source_event_id LIKE %(prefix)s", {"prefix": prefix},
        )
        assert versions == [(f"focus-{document['focus_version']}", 1)]

    tenants = dict(client.execute(
        "SELECT tenant, count() FROM cost_lines WHERE source = 'cloud' GROUP BY tenant"
    ))
    assert {"acme", "globex", "initech", "unallocated"} <= set(tenants)
    (defaults,), = client.execute(
        "SELECT count() FROM cost_lines WHERE source = 'cloud' AND tenant = 'unallocated'"
        " AND has(tag_source_keys, 'tenant') AND tag_source_values[indexOf(tag_source_keys, 'tenant')] = 'default'"
    )
    assert defaults == tenants["unallocated"], "unallocated cost says its tenant was defaulted"
    client.disconnect()


def test_ingesting_the_same_file_again_adds_no_rows(pipeline):
    settings, components = pipeline
    client = clickhouse(settings)
    cost_topic = COST_LINES.name(settings)
    expected_rows = file_sums(SAMPLE_1_2)["rows"]

    first = ingest(settings, str(SAMPLE_1_2), "--format", "json")
    assert first.exit_code == 0, first.output
    prefix = id_prefix(json.loads(first.stdout))
    wait_for(lambda: stored_count(client, prefix) >= expected_rows, 180, components, "the first ingest")

    before = sum(end_offsets(settings, cost_topic).values())
    again = ingest(settings, str(SAMPLE_1_2), "--format", "json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["produced"] == expected_rows, "the rows are sent again; downstream drops them"
    # The worker turns every resent row into a cost line again; wait until it has, and until the sink has
    # committed past all of them, so any duplicate would be in ClickHouse by now.
    wait_for(lambda: sum(end_offsets(settings, cost_topic).values()) >= before + expected_rows, 180, components,
             "the worker's cost lines for the resent rows")
    ends = end_offsets(settings, cost_topic)
    wait_for(lambda: all(sink_committed(settings, cost_topic, ends)[p] >= end for p, end in ends.items()), 180,
             components, "the sink to commit past the resent cost lines")
    assert stored_count(client, prefix) == expected_rows
    (rows,), = client.execute("SELECT count() FROM cost_lines WHERE source_event_id LIKE %(prefix)s", {"prefix": prefix})
    assert rows == expected_rows, "no duplicate, counted without FINAL"
    client.disconnect()


def test_the_bad_rows_file_reports_lines_and_rules_and_its_good_rows_still_land(pipeline):
    settings, components = pipeline
    client = clickhouse(settings)

    strict = ingest(settings, str(BAD_ROWS), "--strict", "--format", "json")
    assert strict.exit_code == 3, strict.output
    assert json.loads(strict.stdout)["produced"] == 0

    result = ingest(settings, str(BAD_ROWS), "--format", "json")
    assert result.exit_code == 3, result.output
    document = json.loads(result.stdout)
    reported = {(e["line"], e["rule"]) for e in document["errors"]}
    assert {(3, "decimal"), (4, "decimal_scale"), (5, "period_order"), (6, "timestamp"), (7, "currency"),
            (8, "one_of"), (9, "tags"), (11, "required"), (14, "column_count"), (17, "required_with")} <= reported
    assert not {line for line, _ in reported} & {2, 12, 20}
    assert (document["good_rows"], document["produced"]) == (3, 3)
    assert "rows broke a rule" in result.stderr

    prefix = id_prefix(document)
    wait_for(lambda: stored_count(client, prefix) >= 3, 180, components, "the good rows of the bad file")
    lines = client.execute(
        "SELECT source_event_id, cost_usd, charge_category FROM cost_lines WHERE source_event_id LIKE %(prefix)s"
        " ORDER BY source_event_id", {"prefix": prefix},
    )
    assert sorted(int(event_id.rsplit(":", 1)[1]) for event_id, _, _ in lines) == [2, 12, 20]
    assert sum(Decimal(cost) for _, cost, _ in lines) == Decimal("10.50") + Decimal("3.25") - Decimal("4.75")
    client.disconnect()


def test_bad_messages_on_the_billing_topic_go_to_the_dlq_with_their_bytes(pipeline):
    settings, components = pipeline
    client = clickhouse(settings)
    topic = CLOUD_BILLING.name(settings)
    codec = codec_for("cloud_cost_line")
    garbage = b"\x00not a bill line"
    with SAMPLE_1_2.open(newline="") as handle:
        row = next(csv.DictReader(handle))
    euro = {
        "event_id": f"focus:test-{uuid.uuid4()}:2", "focus_version": "1.2", "BillingCurrency": "EURO",
        "ChargePeriodStart": "2025-06-01T00:00:00Z", "ChargePeriodEnd": "2025-06-02T00:00:00Z",
        "BillingPeriodStart": "2025-06-01T00:00:00Z", "BillingPeriodEnd": "2025-07-01T00:00:00Z",
        **{k: row[k] for k in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "ChargeCategory",
                               "BillingAccountId", "InvoiceIssuerName", "ProviderName", "ServiceCategory", "ServiceName")},
    }
    euro_bytes = codec.encode_json(euro)  # EUR is a currency; "EURO" is not an ISO 4217 code
    good = euro | {"event_id": f"focus:test-{uuid.uuid4()}:3", "BillingCurrency": "USD"}
    producer = Producer(settings.kafka_client_config())
    for value in (garbage, euro_bytes, codec.encode(good)):
        producer.produce(topic, key=row["BillingAccountId"].encode(), value=value)
    assert producer.flush(30) == 0

    wait_for(lambda: client.execute(
        "SELECT count() FROM cost_lines WHERE source_event_id = %(id)s", {"id": good["event_id"]})[0][0],
        180, components, "the good record after the bad ones")
    def both_letters() -> list[dict]:  # read by assignment to the topic's end, again until both are there
        found = [letter for _key, letter in read_topic_to_end(settings, DEAD_LETTERS)
                 if letter["stage"] == "worker.cost_cloud_billing"]
        return found if len(found) >= 2 else []
    letters = wait_for(both_letters, 60, components, "the two dead letters of the billing agent")
    by_rule = {letter["error_rule"]: letter for letter in letters}
    assert set(by_rule) == {"wire_format", "currency"} and by_rule["currency"]["error_field"] == "BillingCurrency"
    assert json.loads(by_rule["currency"]["original_value"]) == json.loads(euro_bytes)
    summary = json.loads(by_rule["wire_format"]["original_value"])
    assert summary["redacted"] == "unparsable" and summary["length"] == len(garbage)
    assert all(letter["source_topic"] == topic for letter in letters)
    client.disconnect()


# --- restatements: a new export of a billing period replaces its lines; the same export again changes nothing ----

RESTATED_COLUMNS = (
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingAccountId", "BillingAccountName",
    "BillingCurrency", "BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd",
    "ChargeCategory", "ChargeClass", "ChargeDescription", "InvoiceIssuerName", "ServiceProviderName",
    "HostProviderName", "PublisherName", "PricingQuantity", "PricingUnit", "ServiceCategory", "ServiceName", "Tags",
)
MONEY = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")


def bill_file(path: Path, account: str, tenant: str, lines: list[tuple[str, str, str]]) -> Path:
    """A FOCUS 1.3 export of May 2026 for `account`: one row per (day, ServiceName, cost) with every cost column
    equal to `cost`; written with CRLF line ends and a byte-order mark, as some exporters do."""
    rows = [",".join(RESTATED_COLUMNS)]
    for day, service, cost in lines:
        cells = {
            **{column: cost for column in MONEY}, "BillingAccountId": account, "BillingAccountName": "restated",
            "BillingCurrency": "USD", "BillingPeriodStart": "2026-05-01T00:00:00Z",
            "BillingPeriodEnd": "2026-06-01T00:00:00Z", "ChargePeriodStart": f"2026-05-{day}T00:00:00Z",
            "ChargePeriodEnd": f"2026-05-{day}T01:00:00Z", "ChargeCategory": "Usage", "ChargeClass": "",
            "ChargeDescription": "restatement test", "InvoiceIssuerName": "AWS", "ServiceProviderName": "AWS",
            "HostProviderName": "AWS", "PublisherName": "AWS", "PricingQuantity": "1", "PricingUnit": "Hours",
            "ServiceCategory": "Compute", "ServiceName": service, "Tags": f'"{{""tenant"":""{tenant}""}}"',
        }
        rows.append(",".join(cells[column] for column in RESTATED_COLUMNS))
    path.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode())
    return path


def bill_sums(lines: list[tuple[str, str, str]]) -> tuple[int, Decimal]:
    total = Decimal(0)
    for _, _, cost in lines:
        total = EXACT.add(total, Decimal(cost))
    return len(lines), total


def stored_period(client: Client, account: str) -> tuple[int, Decimal, Decimal, Decimal, Decimal, Decimal]:
    """(lines, billed, effective, list, contracted, cost_usd) of the account's lines, read with FINAL."""
    (row,) = client.execute(
        "SELECT count(), sum(billed_cost), sum(effective_cost), sum(list_cost), sum(contracted_cost), sum(cost_usd)"
        " FROM cost_lines FINAL WHERE source = 'cloud' AND billing_account_id = %(account)s", {"account": account},
    )
    return (int(row[0]), *(Decimal(v or 0) for v in row[1:]))


def test_a_restated_period_replaces_its_lines_and_the_same_export_again_changes_nothing(pipeline, tmp_path):
    settings, components = pipeline
    client = clickhouse(settings)
    account, tenant = f"restate-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    first_lines = [("03", "AmazonEC2", "10.50"), ("04", "AmazonEC2", "3.25"), ("04", "AmazonS3", "1.000000000001")]
    # 16-decimal costs that add up to 6 exactly: the 12-place cost lines (rounded once, residue carried) must too
    restated_lines = [("03", "AmazonEC2", "0.1234567890123456"), ("04", "AmazonEC2", "0.8765432109876544"),
                      ("05", "AmazonS3", "5.0000000000000004"), ("05", "AmazonS3", "-0.0000000000000004")]
    first = bill_file(tmp_path / "may-v1.csv", account, tenant, first_lines)
    restated = bill_file(tmp_path / "may-v2.csv", account, tenant, restated_lines)
    first_rows, first_sum = bill_sums(first_lines)
    restated_rows, restated_sum = bill_sums(restated_lines)
    assert restated_sum == Decimal(6)

    result = ingest(settings, str(first), "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    [period] = json.loads(result.stdout)["periods"]
    assert (period["action"], period["replaced"]) == ("new", None)
    wait_for(lambda: stored_period(client, account)[0] >= first_rows, 180, components, "the first export")
    assert stored_period(client, account) == (first_rows, *[first_sum] * 5)

    refused = ingest(settings, str(restated), "--format", "json")
    assert refused.exit_code == 1 and refused.stdout == ""
    assert "--replace-period" in refused.stderr and account in refused.stderr and "Traceback" not in refused.stderr

    result = ingest(settings, str(restated), "--replace-period", "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    document = json.loads(result.stdout)
    [period] = document["periods"]
    assert period["action"] == "replaced"
    [old_totals] = period["replaced"]["totals"]
    assert (old_totals["rows"], *(Decimal(old_totals[m]) for m in MONEY)) == (first_rows, *[first_sum] * 4)
    assert period["replaced"]["deleted_lines"] == first_rows
    [new_totals] = period["totals"]
    assert (new_totals["rows"], *(Decimal(new_totals[m]) for m in MONEY)) == (restated_rows, *[restated_sum] * 4)
    wait_for(lambda: stored_period(client, account)[0] >= restated_rows, 180, components, "the restated export")
    assert stored_period(client, account) == (restated_rows, *[restated_sum] * 5), "only the newest export"
    (view_total,), = client.execute(
        "SELECT sum(total_cost_usd) FROM unit_economics_daily WHERE tenant = %(tenant)s", {"tenant": tenant})
    assert Decimal(view_total) == restated_sum, "the analytics views show only the newest export too"

    cost_topic = COST_LINES.name(settings)
    before = sum(end_offsets(settings, cost_topic).values())
    again = ingest(settings, str(restated), "--replace-period", "--format", "json")
    assert again.exit_code == 0, again.output + again.stderr
    assert [p["action"] for p in json.loads(again.stdout)["periods"]] == ["unchanged"]
    assert json.loads(again.stdout)["periods"][0]["export_seq"] == period["export_seq"]
    wait_for(lambda: sum(end_offsets(settings, cost_topic).values()) >= before + restated_rows, 180, components,
             "the worker's cost lines for the resent rows")
    ends = end_offsets(settings, cost_topic)
    wait_for(lambda: all(sink_committed(settings, cost_topic, ends)[p] >= end for p, end in ends.items()), 180,
             components, "the sink to commit past the resent cost lines")
    (plain_count,), = client.execute(
        "SELECT count() FROM cost_lines WHERE billing_account_id = %(account)s", {"account": account})
    assert plain_count == restated_rows, "nothing added, counted without FINAL"
    assert stored_period(client, account) == (restated_rows, *[restated_sum] * 5)
    client.disconnect()
