"""usage.gpu.v1 → gpu_usage rows: every schema field kept exactly, times split into the second and its
microseconds, labels as arrays; the row reads back as the event it came from; the sink is routed by event_id."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from prismops.finops.gpu_recommendations import profiles_from_events
from prismops.settings import Settings
from prismops.sinks.clickhouse import (
    GPU_USAGE_EVENT_COLUMNS, GpuUsageSink, gpu_usage_event, gpu_usage_row,
)
from prismops.sinks.runner import default_routes
from prismops.streams.codecs import codec_for
from prismops.streams.topics import GPU_USAGE

UTC = dt.timezone.utc
INGESTED_AT = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
POSITION = {"kafka_partition": 2, "kafka_offset": 77, "ingested_at": INGESTED_AT}


def usage(**overrides):
    value = {
        "event_id": "dcgm/c1/n1/0/1g.10gb/2026-12-01T00:00:00", "window_start": dt.datetime(2026, 11, 30, 23, 59, 30, 250000, tzinfo=UTC),
        "window_end": dt.datetime(2026, 12, 1, 0, 0, 30, 250000, tzinfo=UTC), "cluster": "c1", "node": "n1",
        "gpu_model": "A100-SXM4-80GB", "gpu_index": 3, "gpu_fraction": Decimal("0.142857"), "mig_profile": "1g.10gb",
        "capacity_type": "spot", "tenant": "acme", "team": "search", "namespace": "ml", "job": "train",
        "requested_gpu_seconds": Decimal("8.571428"), "used_gpu_seconds": Decimal("4.000001"),
        "memory_bytes": 9 * 2**30, "source": "dcgm", "labels": {"pod": "train-0", "container": "main"},
    }
    value.update(overrides)
    codec = codec_for("gpu_usage_event")
    return codec.decode(codec.encode(value))


def test_gpu_usage_row_keeps_every_field_exactly():
    row = gpu_usage_row(usage(), **POSITION)
    assert row["event_id"] == "dcgm/c1/n1/0/1g.10gb/2026-12-01T00:00:00"
    assert (row["window_start"], row["window_start_us"]) == (dt.datetime(2026, 11, 30, 23, 59, 30, tzinfo=UTC), 250000)
    assert (row["window_end"], row["window_end_us"]) == (dt.datetime(2026, 12, 1, 0, 0, 30, tzinfo=UTC), 250000)
    assert row["window_date"] == dt.date(2026, 11, 30), "the UTC day of the window's start"
    assert (row["cluster"], row["node"], row["gpu_model"], row["gpu_index"], row["mig_profile"]) == (
        "c1", "n1", "A100-SXM4-80GB", 3, "1g.10gb")
    assert row["gpu_fraction"] == Decimal("0.142857")
    assert (row["requested_gpu_seconds"], row["used_gpu_seconds"]) == (Decimal("8.571428"), Decimal("4.000001"))
    assert (row["capacity_type"], row["tenant"], row["team"], row["namespace"], row["job"]) == (
        "spot", "acme", "search", "ml", "train")
    assert row["memory_bytes"] == 9 * 2**30 and row["source"] == "dcgm"
    assert (row["label_keys"], row["label_values"]) == (["container", "pod"], ["main", "train-0"])
    assert (row["kafka_partition"], row["kafka_offset"], row["ingested_at"]) == (2, 77, INGESTED_AT)


def test_gpu_usage_row_has_a_column_for_every_schema_field_and_reads_back_as_the_event():
    event = usage()
    row = gpu_usage_row(event, **POSITION)
    for field in codec_for("gpu_usage_event").reader.definition["fields"]:
        name = {"labels": "label_keys"}.get(field["name"], field["name"])
        assert name in row, field["name"]
        assert field["name"] == "labels" or field["name"] in GPU_USAGE_EVENT_COLUMNS, field["name"]
    assert gpu_usage_event({c: row[c] for c in GPU_USAGE_EVENT_COLUMNS}) == dict(event)


def test_optional_fields_become_nulls_and_a_naive_time_is_utc():
    event = usage(mig_profile=None, team=None, namespace=None, job=None, labels={}, memory_bytes=0,
                  gpu_fraction=Decimal(1))
    row = gpu_usage_row(dict(event, window_start=dt.datetime(2026, 12, 1, 1, 2, 3)), **POSITION)
    assert (row["mig_profile"], row["team"], row["namespace"], row["job"]) == (None, None, None, None)
    assert (row["label_keys"], row["label_values"], row["memory_bytes"]) == ([], [], 0)
    assert (row["window_start"], row["window_start_us"]) == (dt.datetime(2026, 12, 1, 1, 2, 3, tzinfo=UTC), 0)


def test_gpu_usage_is_routed_to_its_sink_by_event_id():
    sentinel_client = object()  # the sinks only keep the client until they open
    routes = {route.topic.base_name: route.sink for route in default_routes(Settings(), client=sentinel_client)}
    sink = routes[GPU_USAGE.base_name]
    assert isinstance(sink, GpuUsageSink)
    assert (sink.table, sink.id_column, sink.prune_column, sink.name) == (
        "gpu_usage", "event_id", "window_date", "clickhouse.gpu_usage")
    assert GPU_USAGE.base_name == "usage.gpu.v1" and GPU_USAGE.schema == "gpu_usage_event"


def test_profiles_do_not_depend_on_the_order_of_the_events():
    start = dt.datetime(2026, 12, 1, tzinfo=UTC)
    minute = dt.timedelta(minutes=1)
    events = [
        usage(event_id=f"e{i}", window_start=start + i * minute, window_end=start + (i + 1) * minute,
              gpu_model=model, capacity_type=capacity, mig_profile=None, gpu_fraction=Decimal(1),
              requested_gpu_seconds=Decimal(60), used_gpu_seconds=Decimal(used), memory_bytes=memory)
        for i, (model, capacity, used, memory) in enumerate([
            ("A100-SXM4-80GB", "spot", "30", 2**30), ("H100-SXM-80GB", "on_demand", "45", 3 * 2**30)])
    ]
    forward, backward = profiles_from_events(events), profiles_from_events(list(reversed(events)))
    assert forward == backward
    assert (forward[0].gpu_model, forward[0].capacity_type) == ("A100-SXM4-80GB", "spot"), "a tie keeps the earliest window's"
