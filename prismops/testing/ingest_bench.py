"""`prismops bench ingest`: usage events over HTTP to Kafka's acks, against the same events produced straight to
Kafka by one confluent-kafka producer in the same run (the floor an HTTP hop is measured by).

Scratch topics (a fresh namespace) are removed afterwards. The server runs in this process on a free port;
clients are threads on keep-alive connections, each sending `batch` events per request and waiting for the 202.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Producer

from prismops.gateway_http.access import parse_tenant_tokens
from prismops.gateway_http.server import USAGE_PATH, HttpIngest, serve_ingest
from prismops.settings import Settings
from prismops.streams.producer import safe_producer_config
from prismops.streams.topics import LLM_USAGE, delete_topics, ensure_topics

TOKEN = "bench-token"


@dataclass(frozen=True)
class IngestBenchResult:
    events: int
    batch: int
    concurrency: int
    http_events_per_s: float
    http_requests_per_s: float
    request_p50_ms: float
    request_p99_ms: float
    rejected: int
    errors: int
    kafka_events_per_s: float

    def as_dict(self) -> dict[str, object]:
        return {
            "events": self.events, "batch": self.batch, "concurrency": self.concurrency,
            "http_events_per_s": round(self.http_events_per_s), "http_requests_per_s": round(self.http_requests_per_s, 1),
            "request_p50_ms": round(self.request_p50_ms, 2), "request_p99_ms": round(self.request_p99_ms, 2),
            "rejected": self.rejected, "errors": self.errors,
            "kafka_producer_events_per_s": round(self.kafka_events_per_s),
            "http_vs_kafka_producer": round(self.http_events_per_s / self.kafka_events_per_s, 3)
            if self.kafka_events_per_s else None,
        }


def _event(index: int, now: str) -> dict:
    return {"event_id": f"bench-{index}-{uuid.uuid4().hex[:6]}", "event_time": now, "service": "search",
            "feature": "rerank", "environment": "prod", "provider": "openai", "model": "gpt-4o-mini",
            "input_tokens": 1000 + index % 500, "output_tokens": 200, "latency_ms": 300, "status": "ok"}


def _nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))] if ordered else 0.0


def run_ingest_bench(settings: Settings, *, events: int, batch: int, concurrency: int,
                     on_progress: Callable[[int], None] = lambda n: None) -> IngestBenchResult:
    suffix = uuid.uuid4().hex[:8]
    settings = settings.with_overrides(
        kafka={"topic_namespace": f"bench{suffix}."},
        http_ingest={"rate_events_per_s": 10**9, "rate_burst_events": 10**9, "max_events_per_request": max(batch, 1)},
    )
    ensure_topics(settings)
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    bodies = [json.dumps([_event(i, now) for i in range(start, min(events, start + batch))]).encode()
              for start in range(0, events, batch)]
    try:
        kafka_rate = _kafka_floor(settings, bodies)
        ingest = HttpIngest(settings, parse_tenant_tokens([{"tenant": "bench", "token": TOKEN}], "bench"))
        server = serve_ingest(ingest, "127.0.0.1", 0)
        port = server.server_address[1]
        latencies: list[float] = []
        counts = {"rejected": 0, "errors": 0}
        lock = threading.Lock()
        queue = list(reversed(bodies))

        def client() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
            while True:
                with lock:
                    if not queue:
                        break
                    body = queue.pop()
                started = time.perf_counter()
                connection.request("POST", USAGE_PATH, body=body, headers=headers)
                response = connection.getresponse()
                answer = json.loads(response.read())
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    latencies.append(elapsed)
                    if response.status != 202:
                        counts["errors"] += 1
                    counts["rejected"] += answer.get("rejected", 0)
                on_progress(answer.get("accepted", 0))
            connection.close()

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        server.shutdown()
        ingest.close()
    finally:
        delete_topics(settings)
    return IngestBenchResult(
        events=events, batch=batch, concurrency=concurrency, http_events_per_s=events / seconds,
        http_requests_per_s=len(bodies) / seconds, request_p50_ms=_nearest_rank(latencies, 0.50),
        request_p99_ms=_nearest_rank(latencies, 0.99), rejected=counts["rejected"], errors=counts["errors"],
        kafka_events_per_s=kafka_rate,
    )


def _kafka_floor(settings: Settings, bodies: list[bytes]) -> float:
    """The same JSON batches produced straight to the usage topic (acks=all, idempotent), waited for."""
    producer = Producer(safe_producer_config(settings))
    topic = LLM_USAGE.name(settings)
    events = sum(len(json.loads(body)) for body in bodies)
    started = time.perf_counter()
    for body in bodies:
        producer.produce(topic, key=b"bench", value=body)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("Kafka did not confirm the baseline records within 60 s")
    return events / (time.perf_counter() - started)
