"""Realistic multi-tenant LLM traffic for demos, tests and benchmarks, produced through the SDK.

Tenants differ in size; each service has its own features and model mix; latencies are log-normal with
a heavy tail (a small share of calls is several times slower); errors, timeouts and rate limits occur at
per-model rates; token counts are log-normal per feature. Deterministic for a given seed.
`GpuTrafficGenerator` does the same for GPU usage (several clusters, GPU models, capacity types, MIG slices
and fractional GPUs, with idle capacity).
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Any

from prismops.streams.producer import UsageProducer


@dataclass(frozen=True)
class ModelProfile:
    provider: str
    model: str
    median_latency_ms: float
    tail_share: float
    failure_rate: float


@dataclass(frozen=True)
class ServiceProfile:
    name: str
    features: tuple[tuple[str, int, int], ...]
    models: tuple[tuple[str, float], ...]


MODELS: dict[str, ModelProfile] = {
    p.model: p
    for p in (
        ModelProfile("openai", "gpt-4o", 900, 0.03, 0.02),
        ModelProfile("openai", "gpt-4o-mini", 450, 0.02, 0.015),
        ModelProfile("anthropic", "claude-sonnet-4", 1100, 0.04, 0.02),
        ModelProfile("google", "gemini-2.0-flash", 380, 0.03, 0.025),
        ModelProfile("openai", "text-embedding-3-small", 60, 0.01, 0.005),
        ModelProfile("local", "llama-3.1-8b", 250, 0.05, 0.01),
        ModelProfile("local", "mistral-7b", 220, 0.05, 0.01),
    )
}

SERVICES: tuple[ServiceProfile, ...] = (
    ServiceProfile("support-bot", (("answer", 1200, 250), ("triage", 400, 40)),
                   (("gpt-4o-mini", 0.6), ("claude-sonnet-4", 0.25), ("gpt-4o", 0.15))),
    ServiceProfile("search", (("rerank", 2000, 30), ("query-rewrite", 150, 40)),
                   (("gemini-2.0-flash", 0.7), ("gpt-4o-mini", 0.3))),
    ServiceProfile("doc-summarizer", (("summarize", 6000, 400),), (("claude-sonnet-4", 0.5), ("gpt-4o", 0.5))),
    ServiceProfile("code-assist", (("complete", 800, 120), ("explain", 1500, 600)),
                   (("gpt-4o", 0.4), ("llama-3.1-8b", 0.35), ("mistral-7b", 0.25))),
    ServiceProfile("embeddings-indexer", (("embed", 500, 0),), (("text-embedding-3-small", 1.0),)),
)

TENANTS: tuple[tuple[str, float], ...] = (("acme", 0.35), ("globex", 0.25), ("initech", 0.2), ("umbrella", 0.12), ("hooli", 0.08))
_FAILURES = (("error", "500"), ("timeout", "timeout"), ("rate_limited", "429"))


class TrafficGenerator:
    def __init__(self, seed: int = 7, start: dt.datetime | None = None, latency_scale: dict[str, float] | None = None):
        self.rng = random.Random(seed)
        self.start = start
        self.latency_scale = dict(latency_scale or {})
        self._uuid_rng = random.Random(seed + 1)

    def _pick(self, weighted: tuple[tuple[str, float], ...]) -> str:
        names, weights = zip(*weighted)
        return self.rng.choices(names, weights)[0]

    def _tokens(self, median: int) -> int:
        return 0 if median == 0 else max(1, int(self.rng.lognormvariate(math.log(median), 0.6)))

    def event(self, index: int = 0) -> dict[str, Any]:
        tenant = self._pick(TENANTS)
        service = self.rng.choice(SERVICES)
        feature, input_median, output_median = self.rng.choice(service.features)
        profile = MODELS[self._pick(service.models)]
        latency = self.rng.lognormvariate(math.log(profile.median_latency_ms), 0.35)
        if self.rng.random() < profile.tail_share:
            latency *= self.rng.uniform(3, 8)
        latency *= self.latency_scale.get(profile.model, 1.0)
        status, error_code = "ok", None
        if self.rng.random() < profile.failure_rate:
            status, error_code = self.rng.choice(_FAILURES)
        input_tokens = self._tokens(input_median)
        output_tokens = self._tokens(output_median) if status == "ok" else 0
        cached = int(input_tokens * self.rng.choice((0, 0, 0.5, 0.8))) if profile.provider != "local" else 0
        now = self.start + dt.timedelta(milliseconds=index) if self.start else dt.datetime.now(dt.timezone.utc)
        event_id = str(uuid.UUID(int=self._uuid_rng.getrandbits(128), version=4))
        return {
            "event_id": event_id,
            "event_time": now,
            "tenant": tenant,
            "service": service.name,
            "feature": feature,
            "customer": f"cust-{self.rng.randint(1, 40):03d}",
            "session_id": None,
            "request_id": event_id,
            "environment": "prod",
            "provider": profile.provider,
            "model": profile.model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_input_tokens": cached,
            "reasoning_tokens": 0,
            "latency_ms": int(latency),
            "time_to_first_token_ms": int(latency * 0.3) if status == "ok" else None,
            "status": status,
            "error_code": error_code,
            "prompt_chars": input_tokens * 4,
            "labels": {"region": self.rng.choice(("us-east-1", "eu-west-1"))},
        }

    def events(self, count: int) -> Iterator[dict[str, Any]]:
        for index in range(count):
            yield self.event(index)


@dataclass(frozen=True)
class SimulationResult:
    events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def simulate(
    producer: UsageProducer,
    events: Iterator[dict[str, Any]],
    rate_per_s: float | None = None,
    progress: Callable[[int], None] | None = None,
    record: Callable[[dict[str, Any]], None] | None = None,
) -> SimulationResult:
    """Produce every event (paced to `rate_per_s` when given), flush, and time it end to end.
    `record` sends one event (default: `producer.record_llm_call`; GPU traffic: `producer.record_gpu_usage`)."""
    record = record or producer.record_llm_call
    started = time.perf_counter()
    sent = 0
    for event in events:
        record(event)
        sent += 1
        if rate_per_s:
            ahead = sent / rate_per_s - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
        if progress and sent % 1000 == 0:
            progress(sent)
    producer.flush()
    return SimulationResult(sent, time.perf_counter() - started)


@dataclass(frozen=True)
class GpuSlot:
    """One schedulable piece of a GPU: a whole GPU, a MIG slice or a time-sliced fraction."""

    cluster: str
    node: str
    gpu_model: str
    capacity_type: str
    source: str
    gpu_index: int
    gpu_fraction: Decimal
    mig_profile: str | None = None


@dataclass(frozen=True)
class GpuWorkloadProfile:
    tenant: str
    team: str
    namespace: str
    job: str
    kind: str  # training | inference | notebook


def _gpu_fleet() -> tuple[GpuSlot, ...]:
    whole, seventh = Decimal(1), Decimal("0.142857")
    slots: list[GpuSlot] = []
    for index in range(8):
        slots.append(GpuSlot("aws-use1", "p5-h100-a", "H100-SXM-80GB", "on_demand", "dcgm", index, whole))
    for index in range(8):
        slots.append(GpuSlot("aws-use1", "p4de-a100-spot", "A100-SXM4-80GB", "spot", "dcgm", index, whole))
    for index in range(2):  # on-prem DGX: two GPUs cut into 1g.10gb slices, one into 3g + 4g, the rest whole
        slots += [GpuSlot("onprem-dc1", "dgx-h100-01", "H100-SXM-80GB", "on_prem", "nvml", index, seventh, "1g.10gb")] * 7
    slots.append(GpuSlot("onprem-dc1", "dgx-h100-01", "H100-SXM-80GB", "on_prem", "nvml", 2, Decimal("0.428571"), "3g.40gb"))
    slots.append(GpuSlot("onprem-dc1", "dgx-h100-01", "H100-SXM-80GB", "on_prem", "nvml", 2, Decimal("0.571428"), "4g.40gb"))
    for index in range(3, 8):
        slots.append(GpuSlot("onprem-dc1", "dgx-h100-01", "H100-SXM-80GB", "on_prem", "slurm", index, whole))
    for index in range(4):  # GKE L4s time-sliced in halves
        slots += [GpuSlot("gke-euw4", "l4-pool-1", "L4-24GB", "reserved", "k8s", index, Decimal("0.5"))] * 2
    return tuple(slots)


GPU_FLEET: tuple[GpuSlot, ...] = _gpu_fleet()
GPU_WORKLOADS: tuple[GpuWorkloadProfile, ...] = (
    GpuWorkloadProfile("acme", "ml-platform", "training", "llama-finetune", "training"),
    GpuWorkloadProfile("acme", "search", "inference", "reranker-serving", "inference"),
    GpuWorkloadProfile("globex", "research", "notebooks", "jupyter-alice", "notebook"),
    GpuWorkloadProfile("initech", "vision", "training", "detector-train", "training"),
    GpuWorkloadProfile("umbrella", "nlp", "inference", "embeddings-serving", "inference"),
    GpuWorkloadProfile("hooli", "research", "notebooks", "jupyter-bob", "notebook"),
)
_UTILIZATION = {"training": (0.85, 0.99), "inference": (0.3, 0.7), "notebook": (0.02, 0.4)}
_MICRO = Decimal("0.000001")


class GpuTrafficGenerator:
    """GPU usage per collection interval (default 60 s) for a mixed fleet: two AWS nodes (on-demand H100,
    spot A100), an on-prem DGX (amortized H100, MIG slices), a GKE L4 pool (reserved, time-sliced halves).

    A fixed set of slots is busy (about 70%); the others never report, so MIG GPUs and L4s are partly idle.
    Workloads move between busy slots now and then. Training and inference request their whole slot;
    notebooks request nothing (burstable) and are charged what they use. Deterministic for a given seed; with
    no `start`, the last interval ends at the current interval boundary, so nothing is in the future.
    """

    def __init__(self, seed: int = 7, start: dt.datetime | None = None, interval_s: int = 60):
        self.rng = random.Random(seed)
        self._uuid_rng = random.Random(seed + 1)
        self.start = start
        self.interval_s = interval_s
        self.busy = [slot for slot in GPU_FLEET if self.rng.random() < 0.7]
        self.assignment = [self.rng.choice(GPU_WORKLOADS) for _ in self.busy]

    def intervals_for(self, count: int) -> int:
        return -(-count // len(self.busy))

    def _start_for(self, count: int) -> dt.datetime:
        if self.start is not None:
            return self.start
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        aligned = now - dt.timedelta(seconds=int(now.timestamp()) % self.interval_s)
        return aligned - dt.timedelta(seconds=self.intervals_for(count) * self.interval_s)

    def _event(self, slot: GpuSlot, workload: GpuWorkloadProfile, window_start: dt.datetime) -> dict[str, Any]:
        capacity = (Decimal(self.interval_s) * slot.gpu_fraction).quantize(_MICRO, rounding=ROUND_DOWN)
        low, high = _UTILIZATION[workload.kind]
        used = (capacity * Decimal(str(round(self.rng.uniform(low, high), 4)))).quantize(_MICRO, rounding=ROUND_DOWN)
        requested = Decimal(0).quantize(_MICRO) if workload.kind == "notebook" else capacity
        return {
            "event_id": str(uuid.UUID(int=self._uuid_rng.getrandbits(128), version=4)),
            "window_start": window_start,
            "window_end": window_start + dt.timedelta(seconds=self.interval_s),
            "cluster": slot.cluster,
            "node": slot.node,
            "gpu_model": slot.gpu_model,
            "gpu_index": slot.gpu_index,
            "gpu_fraction": slot.gpu_fraction,
            "mig_profile": slot.mig_profile,
            "capacity_type": slot.capacity_type,
            "tenant": workload.tenant,
            "team": workload.team,
            "namespace": workload.namespace,
            "job": workload.job,
            "requested_gpu_seconds": requested,
            "used_gpu_seconds": used,
            "memory_bytes": int(slot.gpu_fraction * 80 * 2**30 * Decimal(str(round(self.rng.uniform(0.2, 0.9), 3)))),
            "source": slot.source,
            "labels": {},
        }

    def events(self, count: int) -> Iterator[dict[str, Any]]:
        """`count` events in time order: every busy slot reports once per interval."""
        start = self._start_for(count)
        sent = 0
        for interval in range(self.intervals_for(count)):
            window_start = start + dt.timedelta(seconds=interval * self.interval_s)
            for position, slot in enumerate(self.busy):
                if self.rng.random() < 0.05:
                    self.assignment[position] = self.rng.choice(GPU_WORKLOADS)
                if sent == count:
                    return
                yield self._event(slot, self.assignment[position], window_start)
                sent += 1
