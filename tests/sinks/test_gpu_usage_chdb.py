"""Migration 0018 on a current ClickHouse engine (chdb): gpu_usage rows go in, `gpu_usage_events` reads them back
(FINAL, by UTC day of the window start) as exactly the events they came from, also with every row stored twice,
and the job profiles and recommendations made from them equal those made from the events themselves."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pytest

from prismops.finops.gpu_pricing import load_gpu_catalog
from prismops.finops.gpu_recommendations import load_gpu_types, profiles_from_events, recommend
from prismops.sinks.chdb_client import ChdbClient
from prismops.sinks.clickhouse import gpu_usage_events, gpu_usage_row

DATABASE = "prismops_gpu_usage"
UTC = dt.timezone.utc
DAY = dt.date(2026, 12, 1)
START = dt.datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
MINUTE = dt.timedelta(minutes=1)
AT = dt.datetime(2026, 12, 1, tzinfo=UTC)


def event(i: int, start: dt.datetime, *, job: str, used: str, memory_gib: int, gpu_index: int = 0,
          mig_profile: str | None = None, fraction: str = "1", requested: str = "60", **extra) -> dict:
    return {
        "event_id": f"dcgm/c1/n1/{gpu_index}/{i}", "window_start": start, "window_end": start + MINUTE,
        "cluster": "c1", "node": "n1", "gpu_model": "A100-SXM4-80GB", "gpu_index": gpu_index,
        "gpu_fraction": Decimal(fraction), "mig_profile": mig_profile, "capacity_type": "on_demand",
        "tenant": "acme", "team": "search", "namespace": "ml", "job": job,
        "requested_gpu_seconds": Decimal(requested), "used_gpu_seconds": Decimal(used),
        "memory_bytes": memory_gib * 2**30, "source": "dcgm", "labels": {"pod": f"{job}-0"}, **extra,
    }


def events() -> list[dict]:
    return [
        # train: 2 GPUs for two windows, a gap, one more window (one interruption)
        event(1, START, job="train", used="54", memory_gib=60),
        event(2, START, job="train", used="48", memory_gib=62, gpu_index=1),
        event(3, START + MINUTE, job="train", used="57", memory_gib=61),
        event(4, START + MINUTE, job="train", used="59.5", memory_gib=63, gpu_index=1),
        event(5, START + 5 * MINUTE, job="train", used="60", memory_gib=64),
        # notebook: a mostly idle MIG slice, with microseconds in its window
        event(6, START + dt.timedelta(microseconds=500), job="notebook", used="0.4", memory_gib=3, gpu_index=2,
              mig_profile="1g.10gb", fraction="0.142857", requested="8.571428"),
        # no job: profiled by namespace; team and labels absent
        event(7, START, job=None, used="30", memory_gib=10, gpu_index=3, team=None, labels={}),
    ]


def insert(client: ChdbClient, values: list[dict], ingested_at: dt.datetime) -> None:
    rows = [gpu_usage_row(v, kafka_partition=0, kafka_offset=i, ingested_at=ingested_at) for i, v in enumerate(values)]
    client.execute(f"INSERT INTO {DATABASE}.gpu_usage ({', '.join(rows[0])}) VALUES", rows)


@pytest.fixture()
def engine(tmp_path) -> Iterator[ChdbClient]:
    client = ChdbClient.migrated(str(tmp_path / "chdb"), DATABASE)
    yield client
    client.disconnect()


def by_id(values: list[dict]) -> dict[str, dict]:
    return {v["event_id"]: v for v in values}


def test_stored_windows_read_back_exactly_and_once(engine):
    insert(engine, events(), dt.datetime(2026, 12, 1, 11, tzinfo=UTC))
    insert(engine, events(), dt.datetime(2026, 12, 1, 12, tzinfo=UTC))  # a replay the sink would have skipped
    next_day = event(8, START + dt.timedelta(days=1), job="train", used="1", memory_gib=1)
    insert(engine, [next_day], dt.datetime(2026, 12, 2, 12, tzinfo=UTC))
    assert engine.execute(f"SELECT count() FROM {DATABASE}.gpu_usage")[0][0] == 2 * len(events()) + 1

    read = gpu_usage_events(engine, DATABASE, since=DAY, until=DAY + dt.timedelta(days=1))
    assert len(read) == len(events()), "FINAL: each event once; the next day is outside [since, until)"
    assert by_id(read) == by_id(events())
    notebook = by_id(read)["dcgm/c1/n1/2/6"]
    assert notebook["window_start"].microsecond == 500 and notebook["gpu_fraction"] == Decimal("0.142857")
    assert [e["event_id"] for e in gpu_usage_events(engine, DATABASE, since=DAY, until=DAY + dt.timedelta(days=2))][-1] == "dcgm/c1/n1/0/8"


def test_profiles_and_recommendations_from_clickhouse_equal_those_from_the_events(engine):
    insert(engine, list(reversed(events())), dt.datetime(2026, 12, 1, 11, tzinfo=UTC))
    read = gpu_usage_events(engine, DATABASE, since=DAY, until=DAY + dt.timedelta(days=1))
    from_clickhouse, from_events = profiles_from_events(read), profiles_from_events(events())
    assert from_clickhouse == from_events
    profiles = {(p.tenant, p.job): p for p in from_clickhouse}
    train = profiles[("acme", "train")]
    assert (train.gpus, train.windows, train.interruptions, train.duration_s) == (2, 3, 1, Decimal(180))
    assert train.peak_memory_bytes == 64 * 2**30 and train.util_p95 == Decimal(1)
    assert profiles[("acme", "notebook")].mig_profile == "1g.10gb"
    assert ("acme", "ml") in profiles, "no job: the namespace names it"

    types, prices = load_gpu_types(), load_gpu_catalog()
    assert [recommend(p, types, prices, at=AT).as_dict() for p in from_clickhouse] == [
        recommend(p, types, prices, at=AT).as_dict() for p in from_events]
