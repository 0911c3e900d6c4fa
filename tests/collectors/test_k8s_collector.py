"""A Kubernetes PodList joined to DCGM usage by pod."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from prismops.collectors.common import CollectorInputError
from prismops.collectors.dcgm import WindowAccumulator, parse_exposition
from prismops.collectors.k8s import k8s_events, parse_pod_list

UTC = dt.timezone.utc
START = dt.datetime(2026, 12, 5, 10, tzinfo=UTC)
END = START + dt.timedelta(hours=1)


@pytest.fixture()
def pod_list(fixtures):
    return json.loads((fixtures / "k8s" / "podlist.json").read_text())


@pytest.fixture()
def series(fixtures):
    accumulator = WindowAccumulator()
    accumulator.add(parse_exposition((fixtures / "dcgm" / "metrics.txt").read_text()))
    return accumulator.series()


def test_pod_requests_are_read(pod_list):
    pods = {p.name: p for p in parse_pod_list(pod_list)}
    assert sorted(pods) == ["chat-6b5c4-p9z8w", "done-job-abc12", "embedder-7d9f8-x2k4q", "llm-train-0", "notebook-dave"]
    assert pods["llm-train-0"].gpus == 1 and pods["llm-train-0"].tenant == "acme" and pods["llm-train-0"].team == "nlp-research"
    assert pods["embedder-7d9f8-x2k4q"].mig == {"1g.5gb": 1}
    assert pods["notebook-dave"].gpus == 2  # an integer quantity is accepted as well as a string
    assert pods["chat-6b5c4-p9z8w"].tenant == "inference"  # no tenant label: the namespace


def test_join_takes_tenant_team_and_job_from_the_pod(pod_list, series, catalog, accept):
    result = k8s_events(parse_pod_list(pod_list), series, START, END, cluster="prod", catalog=catalog)
    accept(result.events)
    by_pod = {e["labels"]["pod"]: e for e in result.events}
    train = by_pod["llm-train-0"]
    assert (train["tenant"], train["team"], train["job"], train["source"]) == ("acme", "nlp-research", "Job/llm-train", "k8s")
    assert train["labels"]["requested"] == "gpu=1"
    assert train["used_gpu_seconds"] == Decimal("3060.000000")
    embedder = by_pod["embedder-7d9f8-x2k4q"]
    assert (embedder["tenant"], embedder["mig_profile"], embedder["job"]) == ("globex", "1g.5gb", "ReplicaSet/embedder-7d9f8")
    # the GPU-requesting pod without DCGM series is reported, the finished pod is not
    assert [p.name for p in result.unmatched_pods] == ["notebook-dave"]
    assert result.unknown_series == []


def test_series_of_a_pod_missing_from_the_list_is_reported(pod_list, series, catalog):
    pod_list["items"] = [i for i in pod_list["items"] if i["metadata"]["name"] != "llm-train-0"]
    result = k8s_events(parse_pod_list(pod_list), series, START, END, cluster="prod", catalog=catalog)
    assert [s.key.pod for s in result.unknown_series] == ["llm-train-0"]
    assert "llm-train-0" not in {e["labels"]["pod"] for e in result.events}


def test_bad_pod_list_names_field_and_rule(pod_list):
    with pytest.raises(CollectorInputError) as caught:
        parse_pod_list({"kind": "NodeList", "items": []})
    assert (caught.value.field, caught.value.rule) == ("kind", "pod_list")
    pod_list["items"][0]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "0.5"
    with pytest.raises(CollectorInputError) as caught:
        parse_pod_list(pod_list)
    assert caught.value.rule == "whole_devices"
    assert caught.value.field == "items[0].spec.containers[0].resources.nvidia.com/gpu"
