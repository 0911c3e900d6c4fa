"""Realistic multi-tenant LLM traffic for demos, tests and benchmarks, produced through the SDK.

Tenants differ in size; each service has its own features and model mix; latencies are log-normal with
a heavy tail (a small share of calls is several times slower); errors, timeouts and rate limits occur at
per-model rates; token counts are log-normal per feature. Deterministic for a given seed.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from streams.producer import UsageProducer


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
) -> SimulationResult:
    """Produce every event (paced to `rate_per_s` when given), flush, and time it end to end."""
    started = time.perf_counter()
    sent = 0
    for event in events:
        producer.record_llm_call(event)
        sent += 1
        if rate_per_s:
            ahead = sent / rate_per_s - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
        if progress and sent % 1000 == 0:
            progress(sent)
    producer.flush()
    return SimulationResult(sent, time.perf_counter() - started)
