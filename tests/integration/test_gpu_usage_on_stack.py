"""GPU usage windows on the real stack: SDK → usage.gpu.v1 → `prismops sink` (a child process) → ClickHouse 18.16
gpu_usage (migration 0018), exactly once under a producer re-send and a consumer-group replay; an unreadable record
is dead-lettered; then `prismops recommend gpu --from-clickhouse` (a child process) gives the same recommendations
as `profiles_from_events` + `recommend` on the events that were sent."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from prismops.cli.output import to_jsonable
from prismops.finops.gpu_pricing import load_gpu_catalog
from prismops.finops.gpu_recommendations import load_gpu_types, profiles_from_events, recommend
from prismops.infra.components import Components
from prismops.settings import Settings, settings_as_env
from prismops.sinks.migrations import apply_migrations
from prismops.sinks.runner import SinkRunner, default_routes
from prismops.streams.producer import UsageProducer
from prismops.streams.topics import GPU_USAGE
from prismops.testing import clickhouse, free_port, isolated, wait_for

UTC = dt.timezone.utc
DAY = (dt.datetime.now(UTC) - dt.timedelta(days=1)).date()
START = dt.datetime(DAY.year, DAY.month, DAY.day, 10, 0, tzinfo=UTC)
MINUTE = dt.timedelta(minutes=1)
CHECKPOINT_COST_S = Decimal(60)


@pytest.fixture(scope="module")
def usage_sink(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Components]]:
    with isolated(stack_settings) as settings:
        apply_migrations(settings)
        with Components(settings, tmp_path_factory.mktemp("gpu-usage-logs")) as components:
            components.start("sink")
            yield settings, components


def event(i: int, start: dt.datetime, *, node: str, gpu_index: int, tenant: str, job: str | None, used: str,
          memory_gib: int, capacity_type: str = "on_demand", gpu_model: str = "A100-SXM4-80GB",
          requested: str = "60", fraction: str = "1", mig_profile: str | None = None, length: dt.timedelta = MINUTE) -> dict:
    return {
        "event_id": f"it-gpu-usage/{node}/{gpu_index}/{mig_profile}/{i}", "window_start": start,
        "window_end": start + length, "cluster": "it-c", "node": node, "gpu_model": gpu_model, "gpu_index": gpu_index,
        "gpu_fraction": Decimal(fraction), "mig_profile": mig_profile, "capacity_type": capacity_type,
        "tenant": tenant, "team": "research", "namespace": "ml", "job": job,
        "requested_gpu_seconds": Decimal(requested), "used_gpu_seconds": Decimal(used), "memory_bytes": memory_gib * 2**30,
        "source": "dcgm", "labels": {"pod": f"{job or 'ns'}-0"},
    }


def events() -> list[dict]:
    sent = []
    # acme/train: 2 GPUs on spot, three windows, a gap before the third (one interruption), busy
    for i, (offset, used) in enumerate([(0, ("54", "50")), (1, ("58", "57.5")), (4, ("60", "59"))]):
        for gpu in (0, 1):
            sent.append(event(10 * i + gpu, START + offset * MINUTE, node="gpu-a", gpu_index=gpu, tenant="acme",
                              job="train", used=used[gpu], memory_gib=58 + i + gpu, capacity_type="spot"))
    # globex/notebook: a whole H100 mostly idle (over-provisioned), on another node
    for i in range(3):
        sent.append(event(100 + i, START + i * MINUTE, node="gpu-b", gpu_index=0, tenant="globex", job="notebook",
                          used="6", memory_gib=7, gpu_model="H100-SXM-80GB"))
    # initech: a MIG slice with microseconds in its window, no job name (profiled by namespace)
    sent.append(event(200, START + dt.timedelta(microseconds=250), node="gpu-b", gpu_index=1, tenant="initech",
                      job=None, used="5", memory_gib=4, requested="8.571428", fraction="0.142857", mig_profile="1g.10gb"))
    return sent


def committed(settings: Settings, group: str) -> int:
    topic = GPU_USAGE.name(settings)
    consumer = Consumer(settings.kafka_client_config() | {"group.id": group, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.default_partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


def stored(client) -> tuple[int, int]:
    return tuple(client.execute("SELECT count(), uniqExact(event_id) FROM gpu_usage")[0])


def test_usage_windows_are_stored_once_and_recommend_reads_them(usage_sink):
    settings, components = usage_sink
    sent = events()
    client = clickhouse(settings)
    with UsageProducer(settings) as producer:
        for value in sent:
            producer.record_gpu_usage(value)
    wait_for(lambda: stored(client)[0] >= len(sent), 120, components, "the gpu_usage rows")
    assert stored(client) == (len(sent), len(sent))
    (start_us, fraction, requested) = client.execute(
        "SELECT window_start_us, gpu_fraction, requested_gpu_seconds FROM gpu_usage WHERE mig_profile = '1g.10gb'")[0]
    assert (start_us, fraction, requested) == (250, Decimal("0.142857"), Decimal("8.571428"))

    # a collector restart re-sends its windows (same event ids): nothing new is stored
    with UsageProducer(settings) as producer:
        for value in sent:
            producer.record_gpu_usage(value)
    wait_for(lambda: committed(settings, settings.sink_group_id) >= 2 * len(sent), 120, components,
             "the sink to commit the re-sent usage")
    assert stored(client) == (len(sent), len(sent))

    # a consumer group reading the topic again from the start (a replay) writes nothing either
    replay_settings = settings.with_overrides(sink={"group_id": f"{settings.sink.group_id}-replay",
                                                    "metrics_port": free_port()})
    with SinkRunner(replay_settings, default_routes(replay_settings)) as replay:
        counters = replay.run_until_idle(3.0, max_s=90)
    assert (counters.records, counters.rows_written, counters.duplicates_skipped) == (2 * len(sent), 0, 2 * len(sent))
    assert committed(replay_settings, replay_settings.sink_group_id) == 2 * len(sent)
    assert stored(client) == (len(sent), len(sent))

    # the same events, profiled and priced here, are what the command prints from ClickHouse
    types, prices = load_gpu_types(), load_gpu_catalog(settings.gpu.price_table)
    profiles = [dataclasses.replace(p, checkpoint_cost_s=CHECKPOINT_COST_S) for p in profiles_from_events(sent)]
    at = dt.datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    expected = json.loads(json.dumps(to_jsonable([recommend(p, types, prices, at=at).as_dict() for p in profiles])))
    assert {(r["tenant"], r["job"]) for r in expected} == {("acme", "train"), ("globex", "notebook"), ("initech", "ml")}

    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISMOPS_")} | settings_as_env(settings)
    for window in (["--since", DAY.isoformat(), "--until", (DAY + dt.timedelta(days=1)).isoformat()], ["--days", "2"]):
        shown = subprocess.run(
            [sys.executable, "-m", "prismops", "recommend", "gpu", "--from-clickhouse", *window, "--at", DAY.isoformat(),
             "--checkpoint-cost-s", str(CHECKPOINT_COST_S), "--format", "json"],
            env=env, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == expected, window
    by_job = {r["job"]: r for r in expected}
    assert by_job["train"]["profile"]["interruptions"] == 1 and by_job["train"]["profile"]["gpus"] == 2
    assert "over_provisioned" in by_job["notebook"]["flags"] or "idle" in by_job["notebook"]["flags"]

    empty = subprocess.run(
        [sys.executable, "-m", "prismops", "recommend", "gpu", "--from-clickhouse", "--since", "2001-01-01",
         "--until", "2001-01-02", "--format", "json"], env=env, capture_output=True, text=True, timeout=120)
    assert empty.returncode == 0 and json.loads(empty.stdout) == [], empty.stderr


def test_an_unreadable_usage_record_is_dead_lettered_and_the_rest_is_stored(usage_sink):
    settings, components = usage_sink
    client = clickhouse(settings)
    topic = GPU_USAGE.name(settings)
    before = stored(client)[0]
    producer = Producer(settings.kafka_client_config())
    producer.produce(topic, key=b"it-c/gpu-z", value=b"\x00not an avro record")
    assert producer.flush(30) == 0
    good = event(900, START + 9 * MINUTE, node="gpu-z", gpu_index=0, tenant="acme", job="after", used="1", memory_gib=1)
    with UsageProducer(settings) as usage:
        usage.record_gpu_usage(good)
    letters = wait_for(lambda: client.execute(
        "SELECT stage, error_rule FROM dead_letters WHERE source_topic = %(topic)s", {"topic": topic}),
        120, components, "the dead letter of the unreadable usage record")
    assert letters[0][0] == "sink.clickhouse"
    wait_for(lambda: stored(client)[0] == before + 1, 60, components, "the good record after the bad one")
    assert client.execute("SELECT job FROM gpu_usage WHERE event_id = %(id)s", {"id": good["event_id"]}) == [("after",)]
