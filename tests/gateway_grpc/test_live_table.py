"""The live table and how the follower applies records, without a broker (the integration test uses one)."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

from prismops.gateway_grpc.live_table import LiveModelTable, LiveTableFollower, model_key_from_record_key
from prismops.settings import Settings
from prismops.streams.codecs import codec_for
from prismops.streams.topics import ROUTING_TABLES

NOW = dt.datetime(2025, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def row(provider: str, model: str, p95: float) -> dict:
    return {
        "provider": provider, "model": model, "window_seconds": 300.0, "sample_count": 10, "error_count": 0,
        "error_rate": 0.0, "p50_latency_ms": p95 / 2, "p95_latency_ms": p95, "p99_latency_ms": p95,
        "cost_usd": Decimal("0.01"), "tokens": 1000, "input_price_per_mtok": Decimal("0.15"),
        "output_price_per_mtok": Decimal("0.6"), "updated_at": NOW,
    }


def test_upsert_keeps_the_latest_row_per_model_and_hands_out_copies():
    table = LiveModelTable()
    table.upsert(row("openai", "gpt-4o", 500))
    table.upsert(row("openai", "gpt-4o", 900))
    table.upsert(row("openai", "gpt-4o-mini", 300))

    assert len(table) == 2
    assert table.get("openai", "gpt-4o")["p95_latency_ms"] == 900
    assert table.get("openai", "nope") is None
    table.get("openai", "gpt-4o")["p95_latency_ms"] = 1
    table.snapshot()[("openai", "gpt-4o")]["p95_latency_ms"] = 1
    assert table.get("openai", "gpt-4o")["p95_latency_ms"] == 900
    assert set(table.rows_for([("openai", "gpt-4o"), ("x", "y")])) == {("openai", "gpt-4o")}
    assert table.delete("openai", "gpt-4o") is True
    assert table.delete("openai", "gpt-4o") is False
    assert set(table.snapshot()) == {("openai", "gpt-4o-mini")}


def test_peek_hands_out_the_stored_row_which_an_upsert_replaces_rather_than_changes():
    table = LiveModelTable()
    table.upsert(row("openai", "gpt-4o", 500))
    peeked = table.peek_key(("openai", "gpt-4o"))

    assert peeked is table.peek_key(("openai", "gpt-4o"))
    assert table.peek_key(("openai", "nope")) is None
    table.upsert(row("openai", "gpt-4o", 900))
    assert peeked["p95_latency_ms"] == 500
    assert table.peek_key(("openai", "gpt-4o"))["p95_latency_ms"] == 900


def test_concurrent_upserts_and_reads_stay_consistent():
    table = LiveModelTable()

    def writer(offset: int) -> None:
        for i in range(2000):
            table.upsert(row("p", f"m{i % 50}", offset + i))

    threads = [threading.Thread(target=writer, args=(k * 10_000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for key, value in table.snapshot().items():
            assert key == (value["provider"], value["model"])
    for thread in threads:
        thread.join()
    assert len(table) == 50


def test_record_keys_split_at_the_first_slash():
    assert model_key_from_record_key(b"openai/gpt-4o") == ("openai", "gpt-4o")
    assert model_key_from_record_key(b"together/meta-llama/Llama-3-70b") == ("together", "meta-llama/Llama-3-70b")
    assert model_key_from_record_key(b"no-slash") is None
    assert model_key_from_record_key(None) is None


def test_follower_applies_rows_tombstones_and_survives_bad_records():
    table = LiveModelTable()
    follower = LiveTableFollower(Settings(), ROUTING_TABLES, table)
    codec = codec_for("model_live_stats")

    follower.apply(b"openai/gpt-4o", codec.encode(row("openai", "gpt-4o", 500)))
    follower.apply(b"openai/gpt-4o-mini", codec.encode(row("openai", "gpt-4o-mini", 300)))
    follower.apply(b"openai/gpt-4o", b"\xc3\x01garbage")
    follower.apply(b"openai/gpt-4o", b"not avro at all")
    follower.apply(b"openai/gpt-4o-mini", None)
    follower.apply(b"unkeyed", None)

    assert set(table.snapshot()) == {("openai", "gpt-4o")}
    assert table.get("openai", "gpt-4o")["cost_usd"] == Decimal("0.01")
    assert (follower.records_applied, follower.tombstones_applied, follower.bad_records) == (2, 1, 3)
    assert not follower.caught_up.is_set()


def test_follower_consumer_never_commits_and_uses_a_unique_group():
    settings = Settings()
    first = LiveTableFollower(settings, ROUTING_TABLES, LiveModelTable()).consumer_config()
    second = LiveTableFollower(settings, ROUTING_TABLES, LiveModelTable()).consumer_config()
    assert first["enable.auto.commit"] is False
    assert first["group.id"] != second["group.id"]
    assert first["bootstrap.servers"] == settings.kafka_bootstrap
