"""sacct --json and sacct -P -> usage.gpu.v1 events per job, node-GPU and window (hand-computed)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from prismops.collectors.common import CollectorInputError
from prismops.collectors.slurm import expand_hostlist, parse_sacct_json, parse_sacct_parsable, slurm_events

UTC = dt.timezone.utc
W10 = dt.datetime(2026, 12, 5, 10, tzinfo=UTC)
W11 = W10 + dt.timedelta(hours=1)
W12 = W11 + dt.timedelta(hours=1)


@pytest.fixture(params=["json", "parsable"])
def jobs(request, fixtures):
    if request.param == "json":
        return parse_sacct_json(json.loads((fixtures / "slurm" / "sacct.json").read_text()))
    return parse_sacct_parsable((fixtures / "slurm" / "sacct_parsable.txt").read_text())


def test_both_formats_read_the_same_jobs(jobs):
    by_id = {j.job_id: j for j in jobs}
    train = by_id["48213"]
    assert (train.account, train.user, train.qos, train.gpus, train.gpu_type) == ("nlp", "alice", "normal", 4, "a100")
    assert train.nodes == ["gpu-a01", "gpu-a02"]
    assert (train.start, train.end) == (dt.datetime(2026, 12, 5, 10, 20, tzinfo=UTC), dt.datetime(2026, 12, 5, 11, 50, tzinfo=UTC))
    assert train.utilization_pct == Decimal(72)
    assert train.gpu_mem_peak_bytes == 150000 * 2**20
    assert by_id["48220"].end is None and by_id["48220"].state == "RUNNING"
    assert by_id["48221"].gpus == 0


def test_windows_split_the_job_exactly(jobs, accept):
    first = slurm_events(jobs, W10, W11, cluster="fallback")
    second = slurm_events(jobs, W11, W12, cluster="fallback")
    accept(first + second)
    train_first = [e for e in first if e["job"] == "48213"]
    # 4 A100s over two nodes, 10:20-11:00 = 2400 s each, 72 % used
    assert sorted((e["node"], e["gpu_index"]) for e in train_first) == [("gpu-a01", 0), ("gpu-a01", 1), ("gpu-a02", 0), ("gpu-a02", 1)]
    assert {e["requested_gpu_seconds"] for e in train_first} == {Decimal("2400.000000")}
    assert {e["used_gpu_seconds"] for e in train_first} == {Decimal("1728.000000")}
    assert {(e["tenant"], e["cluster"], e["gpu_model"], e["capacity_type"]) for e in train_first} == {("nlp", "hpc1", "A100-SXM4-80GB", "on_prem")}
    assert train_first[0]["labels"]["user"] == "alice" and train_first[0]["labels"]["qos"] == "normal"
    # the whole job: 4 GPUs x 5400 s
    total = sum(e["requested_gpu_seconds"] for e in first + second if e["job"] == "48213")
    assert total == Decimal(4 * 5400)
    running = [e for e in second if e["job"] == "48220"]
    assert len(running) == 1 and running[0]["requested_gpu_seconds"] == Decimal("3000.000000")
    assert running[0]["used_gpu_seconds"] == 0 and running[0]["labels"]["utilization_source"] == "none"
    assert not [e for e in first + second if e["job"] == "48221"]  # no GPU


def test_json_gres_detail_gives_real_gpu_indexes(fixtures):
    jobs = parse_sacct_json(json.loads((fixtures / "slurm" / "sacct.json").read_text()))
    (event,) = [e for e in slurm_events(jobs, W11, W12, cluster="c") if e["job"] == "48220"]
    assert (event["node"], event["gpu_index"], event["gpu_model"]) == ("gpu-b07", 3, "H100-SXM-80GB")


def test_ids_repeat_for_a_repeated_window_only(jobs):
    a, b = slurm_events(jobs, W10, W11, cluster="c"), slurm_events(jobs, W10, W11, cluster="c")
    assert [e["event_id"] for e in a] == [e["event_id"] for e in b]
    later = {e["event_id"] for e in slurm_events(jobs, W11, W12, cluster="c")}
    assert not later & {e["event_id"] for e in a}


def test_hostlists_expand():
    assert expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_hostlist("None assigned") == []


@pytest.mark.parametrize("mutate, field, rule", [
    (lambda d: d.pop("jobs"), "jobs", "required"),
    (lambda d: d["jobs"][0].pop("job_id"), "jobs[0].job_id", "required"),
    (lambda d: d["jobs"][0]["time"].update(start="yesterday"), "jobs[0].time.start", "epoch_seconds"),
    (lambda d: d["jobs"][0]["tres"]["allocated"][4].update(count="four"), "jobs[0].tres.allocated.gres/gpu", "gpu_count"),
    (lambda d: d["jobs"][0]["steps"][1]["tres"]["requested"]["average"][1].update(count=250),
     "jobs[0].steps.gres/gpuutil", "percent_0_100"),
])
def test_bad_json_names_field_and_rule(fixtures, mutate, field, rule):
    document = json.loads((fixtures / "slurm" / "sacct.json").read_text())
    mutate(document)
    with pytest.raises(CollectorInputError) as caught:
        parse_sacct_json(document)
    assert (caught.value.field, caught.value.rule) == (field, rule)


def test_bad_parsable_names_line_field_and_rule(fixtures):
    text = (fixtures / "slurm" / "sacct_parsable.txt").read_text()
    with pytest.raises(CollectorInputError) as caught:
        parse_sacct_parsable(text.replace("2026-12-05T11:10:00", "5 Dec 11:10"))
    assert (caught.value.field, caught.value.rule) == ("line 5.Start", "iso_time")
    with pytest.raises(CollectorInputError) as caught:
        parse_sacct_parsable(text.replace("AllocTRES", "Alloc"))
    assert caught.value.rule == "required_column"
