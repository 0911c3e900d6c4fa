"""`prismops ingest serve`: LLM usage over HTTP, written to Kafka with acks=all before the answer.

    POST /v1/usage   CloudEvents 1.0 (structured or batched) or plain JSON; Authorization: Bearer <tenant token>
    GET  /schema     the usage event's JSON Schema, generated from the .avsc
    GET  /healthz    200 when Kafka answered the last metadata request
    GET  /metrics    Prometheus text

Answers to POST: 202 with the accepted event ids and, per rejected event, every broken field (field, rule,
message); 400 when no event of the request passed (same body) or the body is not readable at all; 401 without a
known token; 413 over `http_ingest.max_request_bytes`; 415 for another Content-Type; 429 with Retry-After over
the token's rate; 503 when Kafka did not confirm every record within `delivery_timeout_s` (nothing is reported
accepted then: the client retries, and event ids make a retry harmless downstream).

Accepted events of a request travel as usage batch records keyed by the tenant (so they land on the tenant's
partition, in order, like the SDK's batches); rejected ones go to the dead-letter topic with their own JSON.
The checks are `gateway_http.events`; this module only speaks HTTP and Kafka.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from prismops.finops.dead_letters import dead_letter_record
from prismops.gateway_http.access import TenantTokens, TokenBuckets
from prismops.gateway_http.events import CheckedEvent, RequestError, accepted_and_rejected, check_request
from prismops.gateway_http.json_schema import json_schema_of
from prismops.settings import Settings
from prismops.streams.codecs import batch_codec_for, codec_for
from prismops.streams.producer import safe_producer_config
from prismops.streams.topics import DEAD_LETTERS, LLM_USAGE

log = logging.getLogger(__name__)

STAGE = "http_ingest"
USAGE_PATH = "/v1/usage"
EVENTS_PER_RECORD = 500
EVENTS = Counter("prismops_http_ingest_events_total", "usage events received over HTTP", ["outcome"])
REQUESTS = Counter("prismops_http_ingest_requests_total", "HTTP ingest requests by answer", ["code"])


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class _Deliveries:
    """Counts one request's records down as Kafka acknowledges them."""

    def __init__(self, expected: int):
        self.remaining = expected
        self.errors: list[str] = []
        self.done = threading.Event()
        self._lock = threading.Lock()
        if expected == 0:
            self.done.set()

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        with self._lock:
            if err is not None:
                self.errors.append(err.str())
            self.remaining -= 1
            if self.remaining <= 0:
                self.done.set()


class HttpIngest:
    """The request handling, behind any HTTP server: check, produce, wait for the acks, answer."""

    def __init__(self, settings: Settings, tokens: TenantTokens, *, clock: Any = time.monotonic):
        self.settings = settings
        self.config = settings.http_ingest
        self.tokens = tokens
        self.buckets = TokenBuckets(self.config.rate_events_per_s, self.config.rate_burst_events, clock)
        self.usage_topic = LLM_USAGE.name(settings)
        self.dlq_topic = DEAD_LETTERS.name(settings)
        self._usage = batch_codec_for(LLM_USAGE.schema)
        self._dead_letters = codec_for(DEAD_LETTERS.schema)
        self._schema = json.dumps(json_schema_of(LLM_USAGE.schema), indent=2).encode()
        self._producer = Producer(safe_producer_config(settings))
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="prismops-http-ingest-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    def close(self) -> None:
        self._producer.flush(self.config.delivery_timeout_s)
        self._closed.set()
        self._poller.join(5)

    def kafka_reachable(self) -> bool:
        try:
            self._producer.list_topics(self.usage_topic, timeout=2)
            return True
        except Exception:  # librdkafka raises KafkaException for every way of not answering
            return False

    def get(self, path: str) -> Answer:
        if path == "/schema":
            return Answer(200, self._schema, {"Content-Type": "application/schema+json"})
        if path == "/healthz":
            ok = self.kafka_reachable()
            return Answer(200 if ok else 503, {"status": "ok" if ok else "kafka unreachable"})
        if path == "/metrics":
            return Answer(200, generate_latest(), {"Content-Type": CONTENT_TYPE_LATEST})
        return Answer(404, {"error": f"no such path {path}; POST {USAGE_PATH}, GET /schema, /healthz, /metrics"})

    def post(self, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        if path != USAGE_PATH:
            return Answer(404, {"error": f"POST {USAGE_PATH}"})
        tenant = self.tokens.tenant_of(headers.get("Authorization") or headers.get("authorization"))
        if tenant is None:
            return Answer(401, {"error": "a known bearer token is required (Authorization: Bearer <token>)"},
                          {"WWW-Authenticate": 'Bearer realm="prismops-ingest"'})
        try:
            checked = check_request(
                body, headers.get("Content-Type") or headers.get("content-type"), headers, tenant=tenant,
                now=dt.datetime.now(dt.timezone.utc), max_tokens=self.settings.pricing.max_tokens_per_call,
                max_events=self.config.max_events_per_request)
        except RequestError as exc:
            status = 415 if exc.field == "content-type" else 400
            return Answer(status, {"error": str(exc), "field": exc.field, "rule": exc.rule})
        wait_s = self.buckets.take(tenant, len(checked))
        if wait_s > 0:
            retry = "3600" if wait_s == float("inf") else str(max(1, round(wait_s + 0.5)))
            return Answer(429, {"error": f"over {self.config.rate_events_per_s:g} events/s for this token"},
                          {"Retry-After": retry})
        accepted, rejected = accepted_and_rejected(checked)
        failure = self._produce(tenant, accepted, rejected)
        if failure:
            return Answer(503, {"error": f"Kafka did not confirm the events: {failure}; nothing was accepted, retry"})
        EVENTS.labels("accepted").inc(len(accepted))
        EVENTS.labels("rejected").inc(len(rejected))
        body_out = {"accepted": len(accepted), "rejected": len(rejected),
                    "event_ids": [e.event_id for e in accepted], "errors": [e.error_report() for e in rejected]}
        return Answer(202 if accepted or not rejected else 400, body_out)

    def _produce(self, tenant: str, accepted: list[CheckedEvent], rejected: list[CheckedEvent]) -> str | None:
        """Produce and wait for every ack; the first delivery error, or None."""
        key = tenant.encode()
        records = []
        for start in range(0, len(accepted), EVENTS_PER_RECORD):
            chunk = accepted[start:start + EVENTS_PER_RECORD]
            records.append((self.usage_topic, self._usage.frame([self._usage.items.encode_body(e.value) for e in chunk])))
        for event in rejected:
            first = event.errors[0]
            letter = dead_letter_record(
                stage=STAGE, topic=self.usage_topic, partition=-1, offset=-1, key=key, value=event.original,
                headers=None, field=first.field, rule=first.rule,
                message="; ".join(str(e) for e in event.errors),
                redaction=self.settings.pii.dead_letter_redaction)
            records.append((self.dlq_topic, self._dead_letters.encode(letter)))
        deliveries = _Deliveries(len(records))
        for topic, value in records:
            while True:
                try:
                    self._producer.produce(topic, key=key, value=value, on_delivery=deliveries.on_delivery)
                    break
                except BufferError:
                    time.sleep(0.01)
        if not deliveries.done.wait(self.config.delivery_timeout_s):
            return f"{deliveries.remaining} record(s) unconfirmed after {self.config.delivery_timeout_s:g}s"
        return deliveries.errors[0] if deliveries.errors else None


DISCARDED_BODY_LIMITS = 8  # a refused body is read up to this many times the limit, then the socket closes
DISCARD_READ_TIMEOUT_S = 5.0


def _handler(ingest: HttpIngest) -> type[BaseHTTPRequestHandler]:
    limit = ingest.config.max_request_bytes

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "prismops-ingest"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer(ingest.get(self.path.split("?", 1)[0]))

        def do_POST(self) -> None:  # noqa: N802
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._answer(Answer(411, {"error": "Content-Length is required"}), close=True)
                return
            if int(length) > limit:
                self._answer(Answer(413, {"error": f"body of {length} bytes; at most {limit}"}), close=True)
                self._discard_body(int(length))
                return
            body = self.rfile.read(int(length))
            try:
                answer = ingest.post(self.path.split("?", 1)[0], dict(self.headers.items()), body)
            except Exception as exc:  # never a traceback to the caller; the log has it
                log.exception("HTTP ingest failed")
                answer = Answer(500, {"error": f"internal error: {type(exc).__name__}"})
            self._answer(answer)

        def _discard_body(self, length: int) -> None:
            """Read and drop a refused body (at most DISCARDED_BODY_LIMITS times the limit, each read within
            DISCARD_READ_TIMEOUT_S) before the connection closes. Closed with the body unread, the socket resets,
            and a client still sending it gets a broken pipe instead of the 413 already written to it."""
            self.wfile.flush()
            self.connection.settimeout(DISCARD_READ_TIMEOUT_S)
            left = min(length, DISCARDED_BODY_LIMITS * limit)
            try:
                while left > 0:
                    chunk = self.rfile.read1(min(left, 65536))
                    if not chunk:
                        return
                    left -= len(chunk)
            except OSError:
                return

        def _answer(self, answer: Answer, close: bool = False) -> None:
            REQUESTS.labels(str(answer.status)).inc()
            payload = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
            self.send_response(answer.status, HTTPStatus(answer.status).phrase)
            headers = {"Content-Type": "application/json"} | answer.headers
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


def serve_ingest(ingest: HttpIngest, host: str, port: int) -> ThreadingHTTPServer:
    """A started server (its own thread); `shutdown()` then `ingest.close()` stop it."""
    server = ThreadingHTTPServer((host, port), _handler(ingest))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="prismops-http-ingest", daemon=True).start()
    return server
