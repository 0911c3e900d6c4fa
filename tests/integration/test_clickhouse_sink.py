"""The ClickHouse sink on the real stack: migrations, exactly-once rows under replay and failure, the DLQ, the CLI."""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import json
import random
import shutil
import time
import uuid
from collections import defaultdict
from decimal import Decimal

import pytest
from click.testing import CliRunner
from clickhouse_driver import Client
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from prismops.cli.app import main
from prismops.settings import Settings
from prismops.sinks.base import SinkRecord, WriteResult
from prismops.sinks.clickhouse import CostLineSink, clickhouse_client
from prismops.sinks.migrations import load_migrations, MIGRATIONS_DIR, MigrationError, apply_migrations, migration_status
from prismops.sinks.reports import count_cost_lines, spend_by_tenant_and_model
from prismops.sinks.runner import Route, SinkRunner, default_routes
from prismops.streams.codecs import codec_for
from prismops.streams.replay import end_offsets
from prismops.streams.topics import COST_LINES, DEAD_LETTERS, ROUTING_DECISIONS
from prismops.testing import read_records_to_end

pytestmark = pytest.mark.integration

IDLE_S = 3.0
RUN_LIMIT_S = 120.0


@pytest.fixture()
def settings(isolated_settings: Settings) -> Settings:
    """Small batches so a few hundred records make several batches across partitions."""
    return isolated_settings.with_overrides(sink={"batch_max_rows": 300, "batch_max_wait_s": 0.5})


@pytest.fixture()
def client(settings: Settings):
    apply_migrations(settings)
    ch = clickhouse_client(settings)
    yield ch
    ch.disconnect()


def make_cost_lines(count: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    start = dt.datetime(2024, 1, 30, tzinfo=dt.timezone.utc)
    lines = []
    for i in range(count):
        lines.append({
            "line_id": f"llm:{uuid.UUID(int=rng.getrandbits(128))}", "source": "llm", "source_event_id": f"evt-{i}",
            "event_time": start + dt.timedelta(seconds=rng.randrange(5 * 86400), microseconds=rng.randrange(10**6)),
            "tenant": rng.choice(["acme", "globex", "initech"]), "team": "search", "product": "assist",
            "service": "chat-api", "feature": "answer", "environment": "prod",
            "provider": "openai", "model": rng.choice(["gpt-4o", "gpt-4o-mini", "o3"]),
            "input_tokens": rng.randrange(10_000), "output_tokens": rng.randrange(2_000),
            "usage_quantity": Decimal(rng.randrange(12_000)),
            "usage_unit": "token", "cost_usd": Decimal(rng.randrange(10**15)).scaleb(-12),
            "priced": True, "price_version": "2024-01", "tag_source": {"team": "explicit"},
            "labels": {"run": str(i % 4)},
        })
    return lines


def produce(settings: Settings, topic: str, values: list[bytes], *, key: bytes | None = b"acme",
            partition: int | None = None, headers: list | None = None) -> None:
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True, "acks": "all"})
    for value in values:
        kwargs = {"partition": partition} if partition is not None else {}
        producer.produce(topic, key=key, value=value, headers=headers, **kwargs)
        producer.poll(0)
    assert producer.flush(30) == 0


def produce_cost_lines(settings: Settings, lines: list[dict]) -> None:
    codec = codec_for("cost_line")
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True, "acks": "all"})
    for line in lines:
        producer.produce(COST_LINES.name(settings), key=line["tenant"].encode(), value=codec.encode(line))
        producer.poll(0)
    assert producer.flush(30) == 0


def committed_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The group's committed offsets (negative = none), read without joining the group."""
    probe = Consumer({**settings.kafka_client_config(), "group.id": settings.sink_group_id})
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        committed = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in committed}
    finally:
        probe.close()


def assert_everything_committed(settings: Settings, topic: str) -> None:
    """Every non-empty partition's committed offset is its end; empty partitions may have no commit."""
    ends = {p: end for p, end in end_offsets(settings, topic).items() if end > 0}
    committed = committed_offsets(settings, topic)
    assert {p: committed[p] for p in ends} == ends


def reset_group_to_beginning(settings: Settings, topic: str) -> None:
    admin = AdminClient(settings.kafka_client_config())
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    request = ConsumerGroupTopicPartitions(settings.sink_group_id, [TopicPartition(topic, p, 0) for p in partitions])
    deadline = time.monotonic() + 30
    while True:
        try:
            admin.alter_consumer_group_offsets([request])[settings.sink_group_id].result()
            return
        except Exception:  # the group may still be finishing the last member's leave
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def table_stats(client: Client, settings: Settings) -> tuple[int, int, Decimal]:
    ((rows, distinct, total),) = client.execute(
        f"SELECT count(), count(DISTINCT line_id), sum(cost_usd) FROM {settings.clickhouse.database}.cost_lines"
    )
    return rows, distinct, total


def test_migrations_apply_in_order_and_reapplying_is_a_no_op(isolated_settings):
    shipped = load_migrations()
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))
    first = apply_migrations(isolated_settings)
    assert [(s.version, s.state) for s in first] == [(m.version, "applied_now") for m in shipped]
    second = apply_migrations(isolated_settings)
    assert [s.state for s in second] == ["applied"] * len(shipped)
    assert [s.applied_at for s in second] == [s.applied_at for s in first]

    ch = clickhouse_client(isolated_settings)
    try:
        tables = {name for (name,) in ch.execute(f"SHOW TABLES FROM {isolated_settings.clickhouse.database}")}
        assert {"cost_lines", "routing_decisions", "dead_letters", "schema_migrations"} <= tables
        assert ch.execute("SELECT version, name FROM schema_migrations ORDER BY version")[:3] == [
            (1, "cost_lines"), (2, "routing_decisions"), (3, "dead_letters"),
        ]
        assert len(ch.execute("SELECT version FROM schema_migrations")) == len(shipped)
        ((engine,),) = ch.execute(
            "SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = 'cost_lines'"
        )
        assert engine == "ReplacingMergeTree"
    finally:
        ch.disconnect()


def test_a_migration_edited_after_it_was_applied_is_refused_naming_the_file(isolated_settings, tmp_path):
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    apply_migrations(isolated_settings, directory)
    edited = directory / "0002_routing_decisions.sql"
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    (directory / "9999_more.sql").write_text("CREATE TABLE IF NOT EXISTS more (x UInt8) ENGINE = MergeTree ORDER BY x")
    with pytest.raises(MigrationError, match="0002_routing_decisions.sql"):
        apply_migrations(isolated_settings, directory)
    with pytest.raises(MigrationError, match="0002_routing_decisions.sql"):
        migration_status(isolated_settings, directory)
    ch = clickhouse_client(isolated_settings)
    try:
        assert ch.execute("EXISTS TABLE more") == [(0,)], "nothing may be applied while a file is changed"
    finally:
        ch.disconnect()


def test_cost_lines_are_written_exactly_once_even_when_the_group_replays(settings, client):
    lines = make_cost_lines(1500)
    repeated = lines[:40]  # a producer retry upstream: same line ids again, later in the stream
    produce_cost_lines(settings, lines + repeated)
    expected_total = sum((line["cost_usd"] for line in lines), Decimal(0))

    with SinkRunner(settings, default_routes(settings)) as runner:
        counters = runner.run_until_idle(IDLE_S, max_s=RUN_LIMIT_S)
    assert counters.records == 1540 and counters.rows_written == 1500 and counters.duplicates_skipped == 40
    assert counters.batches >= 5 and counters.failed_batches == 0 and counters.dead_letters == 0
    assert table_stats(client, settings) == (1500, 1500, expected_total)
    topic = COST_LINES.name(settings)
    assert_everything_committed(settings, topic)

    expected = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    for line in lines:
        bucket = expected[(line["tenant"], line["provider"], line["model"])]
        bucket[0] += 1
        bucket[1] += line["input_tokens"]
        bucket[2] += line["output_tokens"]
        bucket[3] += line["cost_usd"]
    report = spend_by_tenant_and_model(client, settings.clickhouse.database)
    assert {(r["tenant"], r["provider"], r["model"]): [r["calls"], r["input_tokens"], r["output_tokens"], r["cost_usd"]]
            for r in report} == dict(expected)
    assert [r["cost_usd"] for r in report] == sorted((r["cost_usd"] for r in report), reverse=True)
    assert all(isinstance(r["cost_usd"], Decimal) for r in report)
    assert count_cost_lines(client, settings.clickhouse.database) == 1500
    assert count_cost_lines(client, settings.clickhouse.database, since=dt.date(2024, 2, 1)) == sum(
        1 for line in lines if line["event_time"].date() >= dt.date(2024, 2, 1)
    )

    reset_group_to_beginning(settings, topic)
    assert set(committed_offsets(settings, topic).values()) == {0}
    with SinkRunner(settings, default_routes(settings)) as replay:
        replayed = replay.run_until_idle(IDLE_S, max_s=RUN_LIMIT_S)
    assert replayed.records == 1540 and replayed.rows_written == 0 and replayed.duplicates_skipped == 1540
    assert table_stats(client, settings) == (1500, 1500, expected_total)
    assert_everything_committed(settings, topic)


class FailingOnceCostLineSink(CostLineSink):
    """Raises on the first write, like a ClickHouse timeout; records what Kafka had committed at the retry."""

    def __init__(self, client: Client, database: str, settings: Settings) -> None:
        super().__init__(client, database)
        self.settings = settings
        self.calls: list[list[tuple[int, int]]] = []
        self.committed_at_retry: dict[int, int] | None = None

    def write(self, batch: list[SinkRecord]) -> WriteResult:
        self.calls.append([(record.partition, record.offset) for record in batch])
        if len(self.calls) == 1:
            raise ConnectionError("simulated: ClickHouse did not confirm the insert")
        if len(self.calls) == 2:
            self.committed_at_retry = committed_offsets(self.settings, COST_LINES.name(self.settings))
        return super().write(batch)


def test_a_failed_write_commits_nothing_and_the_batch_arrives_on_retry(settings, client):
    lines = make_cost_lines(600, seed=11)
    produce_cost_lines(settings, lines)
    sink = FailingOnceCostLineSink(clickhouse_client(settings), settings.clickhouse.database, settings)

    with SinkRunner(settings, [Route(COST_LINES, sink)]) as runner:
        counters = runner.run_until_idle(IDLE_S, max_s=RUN_LIMIT_S)

    assert counters.failed_batches == 1
    assert sink.committed_at_retry is not None and all(o < 0 for o in sink.committed_at_retry.values()), (
        f"the failed batch must leave nothing committed, found {sink.committed_at_retry}"
    )
    failed = set(sink.calls[0])
    redelivered = set().union(*map(set, sink.calls[1:]))
    assert failed and failed <= redelivered
    assert counters.rows_written == 600 and counters.duplicates_skipped == 0
    assert table_stats(client, settings) == (600, 600, sum((line["cost_usd"] for line in lines), Decimal(0)))
    topic = COST_LINES.name(settings)
    assert_everything_committed(settings, topic)


def test_malformed_values_go_to_the_dlq_with_their_bytes_and_reason_while_good_ones_are_written(settings, client):
    codec = codec_for("cost_line")
    good = make_cost_lines(4, seed=3)
    missing_field = b'{"line_id": "llm:broken"}'
    garbage = b"\xc3\x01" + b"\x00" * 8 + b"\xff\xfe not avro"
    topic = COST_LINES.name(settings)
    produce(settings, topic, [codec.encode(good[0]), codec.encode(good[1])], partition=0)
    produce(settings, topic, [missing_field], partition=0, headers=[("trace-id", b"t-1")])
    produce(settings, topic, [codec.encode(good[2]), garbage, codec.encode(good[3])], partition=0)
    dlq_topic = DEAD_LETTERS.name(settings)
    produce(settings, dlq_topic, [b"not a dead letter"], key=None)

    with SinkRunner(settings, default_routes(settings)) as runner:
        counters = runner.run_until_idle(IDLE_S, max_s=RUN_LIMIT_S)

    assert counters.dead_letters == 2 and counters.unreadable_dead_letters == 1
    assert table_stats(client, settings)[:2] == (4, 4)
    assert {line_id for (line_id,) in client.execute("SELECT line_id FROM cost_lines")} == {g["line_id"] for g in good}

    dlq = read_records_to_end(settings, dlq_topic)  # the sink flushed its dead letters before it stopped
    assert len(dlq) == 3, "the unreadable dead letter must not be re-sent to the DLQ"
    letters = {}
    for message in dlq:
        if message.value() != b"not a dead letter":
            letter = codec_for("dead_letter").decode(message.value())
            letters[letter["source_offset"]] = letter
    assert sorted(letters) == [2, 4]
    broken = letters[2]
    assert json.loads(broken["original_value"]) == json.loads(missing_field) and broken["original_key"] == b"acme"
    assert broken["original_headers"] == {"trace-id": b"t-1"}
    assert (broken["stage"], broken["source_topic"], broken["source_partition"]) == ("sink.clickhouse", topic, 0)
    assert broken["error_rule"] == "required" and broken["error_field"] == "source"
    summary = json.loads(letters[4]["original_value"])
    assert letters[4]["error_rule"] == "unknown_schema"
    assert summary["redacted"] == "unparsable" and summary["sha256"] == hashlib.sha256(garbage).hexdigest()

    stored = client.execute(
        "SELECT source_offset, error_rule, original_value FROM dead_letters ORDER BY source_offset",
        settings={"strings_as_bytes": True},
    )
    assert [(offset, rule) for offset, rule, _ in stored] == [(2, b"required"), (4, b"unknown_schema")]
    assert [value for _, _, value in stored] == [broken["original_value"], letters[4]["original_value"]]
    assert_everything_committed(settings, topic)


def test_routing_decisions_are_written_once_with_their_candidates(settings, client):
    codec = codec_for("routing_decision")
    decisions = [
        {
            "decision_id": f"dec-{i}", "decided_at": dt.datetime(2024, 7, 1, 10, i, tzinfo=dt.timezone.utc),
            "tenant": "acme", "service": "chat-api", "feature": "answer", "latency_slo_ms": 2000.0,
            "chosen_provider": "openai", "chosen_model": "gpt-4o-mini", "reason_code": "cheapest_within_slo",
            "reason": "cheapest within SLO",
            "candidates": [
                {"provider": "openai", "model": "gpt-4o-mini", "p95_latency_ms": 800.0, "error_rate": 0.0,
                 "estimated_cost_usd": Decimal("0.000123456789"), "eligible": True, "verdict": "chosen"},
                {"provider": "openai", "model": "o3", "p95_latency_ms": 9000.0, "error_rate": None,
                 "estimated_cost_usd": None, "eligible": False, "verdict": "over_slo"},
            ],
        }
        for i in range(5)
    ]
    produce(settings, ROUTING_DECISIONS.name(settings), [codec.encode(d) for d in decisions + decisions[:2]])

    with SinkRunner(settings, default_routes(settings)) as runner:
        counters = runner.run_until_idle(IDLE_S, max_s=RUN_LIMIT_S)

    assert counters.rows_written == 5 and counters.duplicates_skipped == 2
    rows = client.execute(
        "SELECT decision_id, candidate_model, candidate_estimated_cost_usd, candidate_eligible"
        " FROM routing_decisions ORDER BY decision_id"
    )
    assert [r[0] for r in rows] == [f"dec-{i}" for i in range(5)]
    assert rows[0][1:] == (["gpt-4o-mini", "o3"], [Decimal("0.000123456789"), None], [1, 0])


@pytest.fixture
def collector_thresholds_kept():
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_cli_migrate_sink_and_report_spend_speak_json(settings, collector_thresholds_kept):
    env = {
        "PRISMOPS_KAFKA__TOPIC_NAMESPACE": settings.kafka.topic_namespace,
        "PRISMOPS_CLICKHOUSE__DATABASE": settings.clickhouse.database,
        "PRISMOPS_SINK__GROUP_ID": settings.sink.group_id,
        "PRISMOPS_SINK__GC_GEN0_THRESHOLD": "4321",
    }
    cli = CliRunner()
    migrated = cli.invoke(main, ["migrate", "--format", "json"], env=env)
    assert migrated.exit_code == 0, migrated.output
    assert [m["state"] for m in json.loads(migrated.stdout)] == ["applied_now"] * len(load_migrations())

    lines = make_cost_lines(30, seed=5)
    produce_cost_lines(settings, lines)
    sunk = cli.invoke(main, ["sink", "--until-idle", str(IDLE_S), "--format", "json"], env=env)
    assert sunk.exit_code == 0, sunk.output
    assert json.loads(sunk.stdout)[0]["rows_written"] == 30
    assert "batch: " in sunk.stderr
    assert gc.get_threshold() == (4321, *collector_thresholds_kept[1:])  # as the sink's settings say

    report = cli.invoke(main, ["report", "spend", "--format", "json"], env=env)
    assert report.exit_code == 0, report.output
    spent = json.loads(report.stdout)
    assert sum(Decimal(r["cost_usd"]) for r in spent["rows"]) == sum((line["cost_usd"] for line in lines), Decimal(0))
    assert Decimal(spent["total"]["cost_usd"]) == sum((line["cost_usd"] for line in lines), Decimal(0))
    assert sum(r["calls"] for r in spent["rows"]) == 30 == spent["total"]["calls"]

    missing = cli.invoke(main, ["report", "spend"], env={**env, "PRISMOPS_CLICKHOUSE__DATABASE": "prismops_absent_db"})
    assert missing.exit_code != 0 and "prismops db migrate" in missing.stderr
