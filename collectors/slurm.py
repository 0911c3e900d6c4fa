"""Slurm accounting (`sacct --json`, or `sacct -P` parsable text) -> usage.gpu.v1 events per job, GPU and window.

A job's GPUs come from its allocated TRES (`gres/gpu=4`, or `gres/gpu:a100=4`; JSON: tres.allocated entries of
type gres, name gpu), its nodes from NodeList (`gpu[01-02]` is expanded; GPUs are split evenly over the nodes),
the GPU indexes from gres_detail (`gpu:a100:4(IDX:0-3)`) where present, else 0..n-1 on each node.

Requested GPU-seconds: the part of [start, end) inside the window (a running job counts up to the window's end)
x 1 GPU, per GPU. Utilization: the job's steps' TRES usage average `gres/gpuutil` (percent, Slurm >= 23.02 with
the NVML gpu plugin) where present; used = requested x utilization. Without it used is 0 and the label
utilization_source=none says so (cost is charged on max(requested, used), so attribution is unaffected).
Peak memory: the steps' TRES usage max `gres/gpumem` (JSON counts are MiB, like the mem TRES; -P values carry
units such as 20000M), spread evenly over the job's GPUs.

Tenant is the account; user, QOS and partition go into labels; job is the job id.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from prismops.collectors.common import UTC, CollectorInputError, catalog_model, gpu_event, gpu_seconds, overlap_seconds, parse_decimal

FINISHED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"})
INTERRUPTED_STATES = frozenset({"PREEMPTED", "NODE_FAIL", "REQUEUED"})


@dataclass
class SlurmJob:
    job_id: str
    cluster: str
    account: str
    user: str
    qos: str
    partition: str
    nodes: list[str]
    start: dt.datetime | None
    end: dt.datetime | None
    state: str
    gpus: int
    gpu_type: str | None
    gpu_indexes: list[list[int]] = field(default_factory=list)  # per node, in NodeList order, where known
    utilization_pct: Decimal | None = None
    gpu_mem_peak_bytes: int = 0
    name: str = ""


def expand_hostlist(text: str) -> list[str]:
    """`gpu[01-03,07],login1` -> gpu01, gpu02, gpu03, gpu07, login1 (one bracket group per name)."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", text or ""):
        match = re.fullmatch(r"(.*)\[([^\]]*)\](.*)", part)
        if not match:
            if part.strip() and part.strip() not in ("None assigned", "(null)"):
                hosts.append(part.strip())
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            width = len(lo)
            for number in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{number:0{width}d}{suffix}")
    return hosts


def parse_tres(text: str) -> dict[str, str]:
    """`billing=16,cpu=16,gres/gpu=4,mem=64G` -> {'billing': '16', ..., 'gres/gpu': '4'}."""
    result = {}
    for item in (text or "").split(","):
        if "=" in item:
            name, _, value = item.partition("=")
            result[name.strip()] = value.strip()
    return result


def _gpu_from_tres(tres: Mapping[str, str], where: str) -> tuple[int, str | None]:
    for name, value in tres.items():
        if name == "gres/gpu" or name.startswith("gres/gpu:"):
            if not value.isdigit():
                raise CollectorInputError(f"{where}.{name}", "gpu_count", f"must be a whole number of GPUs, got {value!r}")
            typed = name.partition(":")[2] or None
            if typed or name == "gres/gpu":
                gpu_type = typed or next((n.partition(":")[2] for n in tres if n.startswith("gres/gpu:")), None)
                return int(value), gpu_type
    return 0, None


def _indexes(details: Iterable[str]) -> list[list[int]]:
    """gres_detail has one entry per node: `gpu:a100:2(IDX:0-1)` -> [0, 1]."""
    per_node: list[list[int]] = []
    for detail in details:
        found: list[int] = []
        match = re.search(r"IDX:([0-9,\-]+)", detail or "")
        if match:
            for item in match.group(1).split(","):
                lo, _, hi = item.partition("-")
                found.extend(range(int(lo), int(hi or lo) + 1))
        per_node.append(found)
    return per_node


def _number(value: Any) -> Any:
    """data_parser >= v0.0.40 wraps numbers as {"set": true, "infinite": false, "number": N}."""
    if isinstance(value, Mapping):
        return value.get("number") if value.get("set", True) and not value.get("infinite") else None
    return value


def _epoch(value: Any, where: str) -> dt.datetime | None:
    value = _number(value)
    if value in (None, 0, ""):
        return None
    if not isinstance(value, int):
        raise CollectorInputError(where, "epoch_seconds", f"must be Unix seconds, got {value!r}")
    return dt.datetime.fromtimestamp(value, UTC)


def _tres_list(entries: Any, where: str) -> dict[str, str]:
    if entries in (None, ""):
        return {}
    if not isinstance(entries, list):
        raise CollectorInputError(where, "tres_list", "must be a list of {type, name, count}")
    result = {}
    for entry in entries:
        kind, name, count = entry.get("type"), entry.get("name") or "", _number(entry.get("count"))
        result[f"{kind}/{name}" if name else str(kind)] = str(count)
    return result


def parse_sacct_json(document: Any) -> list[SlurmJob]:
    """The jobs of `sacct --json` (data_parser v0.0.39 and later)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("jobs"), list):
        raise CollectorInputError("jobs", "required", "sacct --json output has a top-level `jobs` list")
    jobs = []
    for index, raw in enumerate(document["jobs"]):
        where = f"jobs[{index}]"
        if "job_id" not in raw:
            raise CollectorInputError(f"{where}.job_id", "required", "every job has a job_id")
        times = raw.get("time") or {}
        allocated = _tres_list((raw.get("tres") or {}).get("allocated"), f"{where}.tres.allocated")
        gpus, gpu_type = _gpu_from_tres(allocated, f"{where}.tres.allocated")
        state = raw.get("state") or {}
        current = state.get("current") if isinstance(state, Mapping) else state
        current = current[0] if isinstance(current, list) and current else (current or "")
        utilization, mem_peak = None, 0
        for s_index, step in enumerate(raw.get("steps") or []):
            requested = (step.get("tres") or {}).get("requested") or {}
            average = _tres_list(requested.get("average"), f"{where}.steps[{s_index}].tres.requested.average")
            peak = _tres_list(requested.get("max"), f"{where}.steps[{s_index}].tres.requested.max")
            if "gres/gpuutil" in average:
                value = parse_decimal(f"{where}.steps[{s_index}].gres/gpuutil", average["gres/gpuutil"])
                utilization = value if utilization is None else max(utilization, value)
            if "gres/gpumem" in peak:
                mem_peak = max(mem_peak, int(parse_decimal(f"{where}.steps[{s_index}].gres/gpumem", peak["gres/gpumem"])) * 2**20)
        jobs.append(SlurmJob(
            job_id=str(raw["job_id"]), cluster=raw.get("cluster") or "", account=raw.get("account") or "",
            user=raw.get("user") or "", qos=raw.get("qos") or "", partition=raw.get("partition") or "",
            nodes=expand_hostlist(raw.get("nodes") or ""), start=_epoch(times.get("start"), f"{where}.time.start"),
            end=_epoch(times.get("end"), f"{where}.time.end"), state=str(current).upper(), gpus=gpus,
            gpu_type=gpu_type, gpu_indexes=_indexes(raw.get("gres_detail") or []),
            utilization_pct=_check_pct(utilization, f"{where}.steps.gres/gpuutil"), gpu_mem_peak_bytes=mem_peak,
            name=raw.get("name") or "",
        ))
    return jobs


def _check_pct(value: Decimal | None, where: str) -> Decimal | None:
    if value is not None and not 0 <= value <= 100:
        raise CollectorInputError(where, "percent_0_100", f"GPU utilization must be 0-100 %, got {value}")
    return value


_MEM_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(text: str, where: str) -> int:
    match = re.fullmatch(r"([0-9.]+)([KMGT]?)", text.strip())
    if not match:
        raise CollectorInputError(where, "memory_size", f"must be a size like 20000M, got {text!r}")
    return int(Decimal(match.group(1)) * _MEM_UNITS[match.group(2)])


def _parsable_time(text: str, where: str) -> dt.datetime | None:
    if text in ("", "Unknown", "None"):
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CollectorInputError(where, "iso_time", f"must be YYYY-MM-DDTHH:MM:SS, got {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment  # run sacct with TZ=UTC


PARSABLE_REQUIRED = ("JobID", "Account", "User", "Start", "End", "State", "AllocTRES", "NodeList")


def parse_sacct_parsable(text: str, default_cluster: str = "") -> list[SlurmJob]:
    """`sacct -P -o JobID,Cluster,Account,User,QOS,Partition,NodeList,Start,End,State,AllocTRES,TRESUsageInAve,
    TRESUsageInMax,JobName` output (header line included; run with TZ=UTC). Step lines (`123.batch`, `123.0`)
    add their TRES usage to their job."""
    reader = csv.DictReader(io.StringIO(text), delimiter="|")
    missing = [c for c in PARSABLE_REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise CollectorInputError(f"header.{missing[0]}", "required_column", f"sacct -P output lacks columns {missing}")
    jobs: dict[str, SlurmJob] = {}
    for line_no, row in enumerate(reader, start=2):
        where = f"line {line_no}"
        job_id, _, step = row["JobID"].partition(".")
        if not step:
            gpus, gpu_type = _gpu_from_tres(parse_tres(row["AllocTRES"]), f"{where}.AllocTRES")
            jobs[job_id] = SlurmJob(
                job_id=job_id, cluster=row.get("Cluster") or default_cluster, account=row["Account"], user=row["User"],
                qos=row.get("QOS") or "", partition=row.get("Partition") or "", nodes=expand_hostlist(row["NodeList"]),
                start=_parsable_time(row["Start"], f"{where}.Start"), end=_parsable_time(row["End"], f"{where}.End"),
                state=row["State"].split()[0].upper() if row["State"] else "", gpus=gpus, gpu_type=gpu_type,
                name=row.get("JobName") or "",
            )
            continue
        job = jobs.get(job_id)
        if job is None:
            raise CollectorInputError(f"{where}.JobID", "step_after_job", f"step {row['JobID']} comes before its job line")
        average, peak = parse_tres(row.get("TRESUsageInAve") or ""), parse_tres(row.get("TRESUsageInMax") or "")
        if "gres/gpuutil" in average:
            value = _check_pct(parse_decimal(f"{where}.TRESUsageInAve.gres/gpuutil", average["gres/gpuutil"]),
                               f"{where}.TRESUsageInAve.gres/gpuutil")
            job.utilization_pct = value if job.utilization_pct is None else max(job.utilization_pct, value)
        if "gres/gpumem" in peak:
            job.gpu_mem_peak_bytes = max(job.gpu_mem_peak_bytes, _bytes(peak["gres/gpumem"], f"{where}.TRESUsageInMax.gres/gpumem"))
    return list(jobs.values())


def slurm_events(
    jobs: Iterable[SlurmJob], window_start: dt.datetime, window_end: dt.datetime, *, cluster: str,
    capacity_type: str = "on_prem", default_gpu_model: str = "unknown", model_overrides: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Events for the GPU jobs' time inside [window_start, window_end): one per job, node-GPU and window."""
    events = []
    for job in sorted(jobs, key=lambda j: j.job_id):
        if job.gpus <= 0 or job.start is None or not job.nodes:
            continue
        end = job.end if job.end is not None else window_end
        seconds = overlap_seconds(job.start, end, window_start, window_end)
        if seconds <= 0:
            continue
        model = catalog_model(job.gpu_type, model_overrides) if job.gpu_type else default_gpu_model
        per_node, extra = divmod(job.gpus, len(job.nodes))
        requested = gpu_seconds(seconds, Fraction(1))
        used = gpu_seconds(seconds, Fraction(1), (job.utilization_pct or Decimal(0)) / 100)
        labels = {"user": job.user, "qos": job.qos, "partition": job.partition, "state": job.state,
                  "job_name": job.name, "utilization_source": "tres_usage" if job.utilization_pct is not None else "none",
                  "gpu_mem_peak_bytes": str(job.gpu_mem_peak_bytes) if job.gpu_mem_peak_bytes else ""}
        for node_number, node in enumerate(job.nodes):
            count = per_node + (1 if node_number < extra else 0)
            known = job.gpu_indexes[node_number] if len(job.gpu_indexes) == len(job.nodes) else []
            indexes = known if len(known) == count else list(range(count))
            for gpu_index in indexes:
                events.append(gpu_event(
                    source="slurm", window_start=window_start, window_end=window_end,
                    cluster=job.cluster or cluster, node=node, gpu_model=model, gpu_index=gpu_index,
                    fraction=Fraction(1), mig_profile=None, capacity_type=capacity_type, tenant=job.account or "unknown",
                    team=None, namespace=None, job=job.job_id, requested=requested, used=used,
                    memory_bytes=job.gpu_mem_peak_bytes // max(job.gpus, 1), labels=labels, id_parts=(job.job_id,),
                ))
    return events
