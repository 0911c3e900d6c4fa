"""DCGM exporter text and Prometheus API answers -> usage.gpu.v1 events (hand-computed expectations)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from prismops.collectors.common import CollectorInputError
from prismops.collectors.dcgm import WindowAccumulator, dcgm_events, parse_exposition, series_from_prometheus
from prismops.finops.gpu_pricing import UnknownMigProfile

UTC = dt.timezone.utc
START = dt.datetime(2026, 12, 5, 10, tzinfo=UTC)
END = START + dt.timedelta(hours=1)


def events_of(text, catalog, scrapes=1):
    accumulator = WindowAccumulator()
    for _ in range(scrapes):
        accumulator.add(parse_exposition(text))
    return dcgm_events(accumulator.series(), START, END, cluster="prod", catalog=catalog)


def test_exporter_page_gives_one_event_per_pod_gpu_and_mig_slice(fixtures, catalog, accept):
    events = events_of((fixtures / "dcgm" / "metrics.txt").read_text(), catalog)
    accept(events)
    by_pod = {e["labels"]["pod"]: e for e in events}
    assert sorted(by_pod) == ["chat-6b5c4-p9z8w", "embedder-7d9f8-x2k4q", "llm-train-0"]  # the idle GPU 1 has no pod
    train = by_pod["llm-train-0"]
    assert (train["node"], train["gpu_index"], train["gpu_model"], train["mig_profile"]) == ("gpu-node-01", 0, "H100-SXM-80GB", None)
    assert train["requested_gpu_seconds"] == Decimal("3600.000000")
    # GR_ENGINE_ACTIVE (0.85) is preferred to GPU_UTIL (87 %): 3600 x 0.85
    assert train["used_gpu_seconds"] == Decimal("3060.000000")
    assert train["labels"]["utilization_metric"] == "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
    assert train["memory_bytes"] == 61440 * 2**20
    assert train["tenant"] == "research" and train["job"] == "llm-train-0" and train["source"] == "dcgm"
    assert train["labels"]["pipe_tensor_active"] == "0.4123"
    embedder = by_pod["embedder-7d9f8-x2k4q"]
    # MIG 1g.5gb on an A100 40GB: 1/7 of the GPU; 3600/7 = 514.285714 (rounded down), used x 0.25
    assert (embedder["gpu_model"], embedder["mig_profile"], embedder["gpu_fraction"]) == ("A100-SXM4-40GB", "1g.5gb", Decimal("0.142857"))
    assert embedder["requested_gpu_seconds"] == Decimal("514.285714")
    assert embedder["used_gpu_seconds"] == Decimal("128.571428")
    assert embedder["labels"]["mig_instance"] == "7"


def test_event_ids_are_deterministic_and_distinct(fixtures, catalog):
    text = (fixtures / "dcgm" / "metrics.txt").read_text()
    first, again = events_of(text, catalog), events_of(text, catalog)
    assert [e["event_id"] for e in first] == [e["event_id"] for e in again]
    assert len({e["event_id"] for e in first}) == len(first)
    later = dcgm_events(WindowAccumulator().series(), END, END + dt.timedelta(hours=1), cluster="prod", catalog=catalog)
    assert later == []


def test_scrapes_are_averaged_and_presence_counts(catalog):
    line = ('DCGM_FI_DEV_GPU_UTIL{{gpu="0",UUID="GPU-1",modelName="NVIDIA L4",Hostname="n1",namespace="ns",pod="{pod}",container="c"}} {v}\n'
            'DCGM_FI_DEV_FB_USED{{gpu="0",UUID="GPU-1",modelName="NVIDIA L4",Hostname="n1",namespace="ns",pod="{pod}",container="c"}} {m}\n')
    accumulator = WindowAccumulator()
    accumulator.add(parse_exposition(line.format(pod="a", v=20, m=1000)))
    accumulator.add(parse_exposition(line.format(pod="a", v=60, m=3000)))
    accumulator.add(parse_exposition(line.format(pod="b", v=90, m=500)))
    accumulator.add(parse_exposition(line.format(pod="b", v=90, m=500)))
    events = {e["job"]: e for e in dcgm_events(accumulator.series(), START, END, cluster="c", catalog=catalog)}
    # pod a: present in 2 of 4 scrapes -> 1800 s requested, mean util 40 % -> 720 s used, peak 3000 MiB
    assert events["a"]["requested_gpu_seconds"] == Decimal("1800.000000")
    assert events["a"]["used_gpu_seconds"] == Decimal("720.000000")
    assert events["a"]["memory_bytes"] == 3000 * 2**20
    assert events["a"]["gpu_model"] == "L4-24GB"
    assert events["b"]["used_gpu_seconds"] == Decimal("1620.000000")


def test_label_escapes_and_timestamps_are_read():
    text = 'DCGM_FI_DEV_GPU_UTIL{gpu="0",Hostname="n\\"1",pod="p\\\\x",namespace="ns"} 5 1733450400000\n'
    (sample,) = parse_exposition(text)
    assert sample.labels["Hostname"] == 'n"1' and sample.labels["pod"] == "p\\x" and sample.value == 5


@pytest.mark.parametrize("line, field, rule", [
    ('DCGM_FI_DEV_GPU_UTIL{gpu="0",Hostname="n",pod="p"} 140', "DCGM_FI_DEV_GPU_UTIL", "percent_0_100"),
    ('DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",Hostname="n",pod="p"} 1.5', "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "ratio_0_1"),
    ('DCGM_FI_DEV_GPU_UTIL{gpu="x",Hostname="n",pod="p"} 5', "gpu", "gpu_index"),
    ('DCGM_FI_DEV_GPU_UTIL{gpu="0",pod="p"} 5', "Hostname", "required"),
    ('DCGM_FI_DEV_GPU_UTIL{gpu="0",Hostname="n",pod="p"} abc', "DCGM_FI_DEV_GPU_UTIL", "number"),
    ('DCGM_FI_DEV_GPU_UTIL{gpu="0",Hostname="n",pod=p} 5', "line 1", "label_syntax"),
])
def test_bad_input_names_field_and_rule(line, field, rule):
    with pytest.raises(CollectorInputError) as caught:
        WindowAccumulator().add(parse_exposition(line))
    assert field in caught.value.field and caught.value.rule == rule


def test_unknown_mig_profile_is_rejected(catalog):
    line = 'DCGM_FI_DEV_FB_USED{gpu="0",Hostname="n",pod="p",namespace="ns",modelName="NVIDIA A100-SXM4-40GB",GPU_I_PROFILE="9g.99gb",GPU_I_ID="1"} 5'
    accumulator = WindowAccumulator()
    accumulator.add(parse_exposition(line))
    with pytest.raises(UnknownMigProfile):
        dcgm_events(accumulator.series(), START, END, cluster="c", catalog=catalog)


def _vector(rows):
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": labels, "value": [END.timestamp(), value]} for labels, value in rows]}}


def test_prometheus_answers_give_the_same_events(catalog, accept):
    labels = {"gpu": "2", "UUID": "GPU-9", "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "n7",
              "namespace": "team-a", "pod": "svc-0", "container": "main"}
    other = {**labels, "pod": "svc-1", "gpu": "3"}
    answers = {
        "avg:DCGM_FI_DEV_GPU_UTIL": _vector([(labels, "50"), (other, "10")]),
        "avg:DCGM_FI_DEV_FB_USED": _vector([(labels, "1024"), (other, "10")]),
        "max:DCGM_FI_DEV_FB_USED": _vector([(labels, "2048"), (other, "10")]),
        "count": _vector([(labels, "240"), (other, "60")]),
    }
    events = {e["job"]: e for e in dcgm_events(series_from_prometheus(answers), START, END, cluster="p", catalog=catalog)}
    accept(events.values())
    assert events["svc-0"]["requested_gpu_seconds"] == Decimal("3600.000000")
    assert events["svc-0"]["used_gpu_seconds"] == Decimal("1800.000000")
    assert events["svc-0"]["memory_bytes"] == 2048 * 2**20
    # svc-1 was present for 60 of the 240 samples: a quarter of the window
    assert events["svc-1"]["requested_gpu_seconds"] == Decimal("900.000000")
    assert events["svc-1"]["used_gpu_seconds"] == Decimal("90.000000")


def test_prometheus_error_answer_names_the_query():
    with pytest.raises(CollectorInputError) as caught:
        series_from_prometheus({"count": {"status": "error", "errorType": "bad_data", "error": "parse error"}})
    assert caught.value.field == "count.status" and "parse error" in str(caught.value)
    with pytest.raises(CollectorInputError) as caught:
        series_from_prometheus({"count": json.loads('{"status": "success", "data": {"resultType": "matrix", "result": []}}')})
    assert caught.value.rule == "vector"
