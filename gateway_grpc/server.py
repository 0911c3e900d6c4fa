"""routing.v1.Router and RouterAdmin over gRPC: thin adapters from the wire to `policy.decide`.

The gateway answers from in-memory state (`GatewayState`): the live model table and the budget table, each
following a compacted topic; the circuit breakers fed by ReportOutcome and live error rates; the canary
tracker; and the installed policy (file, hot-reloaded, or SetPolicy). Every decision, refusals included,
is published to ROUTING_DECISIONS without waiting for the broker; every policy change is published to
POLICY_AUDIT *before* it is installed, so no change goes unaudited.

Status codes: INVALID_ARGUMENT names the field and the rule, including every length, character and list-size
bound of `request_bounds` (checked before anything else reads the request); FAILED_PRECONDITION names the
budget that refuses a tenant; RESOURCE_EXHAUSTED when more than `gateway.max_concurrent_rpcs` calls are in
flight or a request is larger than `gateway.max_request_bytes` (grpc answers both before our code runs);
UNAVAILABLE while the tables load; UNAUTHENTICATED / PERMISSION_DENIED from `auth`. Every status message this
module sends goes through `request_bounds.cap_detail`, so no error can outgrow the metadata limits. Health
says NOT_SERVING until both tables have caught up; reflection lets grpcurl list and call.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol

import grpc
from confluent_kafka import KafkaException, Producer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER
from prometheus_client import REGISTRY

from prismops.finops.pricing import PriceCatalog, load_catalog
from prismops.finops.privacy import mask_personal_data
from prismops.gateway_grpc.auth import BearerAuthInterceptor, TokensFileError, current_principal, load_token_grants
from prismops.gateway_grpc.breakers import BreakerBoard, BreakerConfig, classify_outcome
from prismops.gateway_grpc.budget_gate import BudgetGate
from prismops.gateway_grpc.experiments import CanaryTracker
from prismops.gateway_grpc.limiter import Limiter, token_charges
from prismops.gateway_grpc.limits import Charge, LimitError, LocalLimitStore
from prismops.gateway_grpc.live_table import BudgetStateTable, LiveModelTable, LiveTableFollower
from prismops.gateway_grpc.metrics import DECISIONS, GatewayStateCollector
from prismops.gateway_grpc.policy import (
    CONCURRENCY_LIMITED, PolicyInputError, RoutingChoice, RoutingRequest, RoutingState, decide, format_usd,
    validate_request,
)
from prismops.finops.text_rules import ID_MAX_CHARS, NAME_MAX_CHARS
from prismops.gateway_grpc.policy_config import (
    BreakerPolicy, InstalledPolicy, PolicyChange, PolicyConfigError, PolicyStore, PolicyVersionConflict, RetryConfig, sha256_text,
)
from prismops.gateway_grpc.request_bounds import (
    MAX_HINTS, MAX_RESPONSE_BYTES, cap_detail, check_decide, check_report_outcome, check_set_policy,
)
from prismops.gateway_grpc.routing.v1 import routing_pb2, routing_pb2_grpc
from prismops.settings import Settings
from prismops.streams.codecs import AvroCodec, CodecError, TemplatedRecord, codec_for
from prismops.errors import FieldRuleError
from prismops.streams.metrics import serve_metrics
from prismops.streams.telemetry import configure_tracing, context_from_headers
from prismops.streams.topics import BUDGET_STATE, POLICY_AUDIT, ROUTING_DECISIONS, ROUTING_TABLES, TopicSpec

log = logging.getLogger(__name__)

_tracer = trace.get_tracer("prismops.gateway")
ROUTER_SERVICE = routing_pb2.DESCRIPTOR.services_by_name["Router"].full_name
ADMIN_SERVICE = routing_pb2.DESCRIPTOR.services_by_name["RouterAdmin"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
OVERALL_HEALTH = ""
DEFAULT_GRACE_S = 5.0
AUDIT_DELIVERY_TIMEOUT_S = 10.0


class ServeError(RuntimeError):
    """The gateway cannot start, e.g. its address is taken or its policy/tokens file is invalid."""


class AuditNotDelivered(RuntimeError):
    """The audit event of a policy change did not reach Kafka; the change was not installed."""


class RecordPublisher(Protocol):
    """Where decisions and audit events go; Kafka in production, a list in unit tests."""

    def publish(self, key: str, record: Mapping[str, Any]) -> None: ...

    def publish_and_wait(self, key: str, record: Mapping[str, Any], timeout_s: float) -> None: ...

    def close(self) -> None: ...


class DiscardingPublisher:
    """Records go nowhere: for embedded use without Kafka, benchmarks of the RPC alone, and tests."""

    def publish(self, key: str, record: Mapping[str, Any]) -> None:
        return None

    def publish_and_wait(self, key: str, record: Mapping[str, Any], timeout_s: float) -> None:
        return None

    def close(self) -> None:
        return None


def encode_gateway_record(codec: AvroCodec, record: Mapping[str, Any]) -> bytes:
    """A record the gateway built itself, in the schema's newest shape, written by the compiled writer (a
    decision: 21 µs against 123 µs for the checked encoder, on the RPC's own thread; a remembered decision's
    per-call fields alone, when it carries its template). A value the writer cannot take as it is goes to the
    checked encoder, which coerces it or names the field (CodecError)."""
    try:
        if record.__class__ is TemplatedRecord and record.codec is codec:  # type: ignore[attr-defined]
            return codec.encode_templated(record.template, record)  # type: ignore[attr-defined]
        return codec.encode_trusted(record)
    except (TypeError, KeyError, AttributeError, ValueError):
        return codec.encode(record)


class EncodingPublisher:
    """Encodes each record as KafkaRecordPublisher does, then drops it: benchmarks of Decide as a deployed gateway
    runs it (the encoding is on the RPC's thread) without a broker."""

    def __init__(self, spec: TopicSpec):
        self._codec = codec_for(spec.schema)

    def publish(self, key: str, record: Mapping[str, Any]) -> None:
        encode_gateway_record(self._codec, record)

    def publish_and_wait(self, key: str, record: Mapping[str, Any], timeout_s: float) -> None:
        self.publish(key, record)

    def close(self) -> None:
        return None


class KafkaRecordPublisher:
    """Publishes one topic's records; `publish` never blocks the RPC on delivery, `publish_and_wait` does."""

    FLUSH_TIMEOUT_S = 10.0

    def __init__(self, settings: Settings, spec: TopicSpec, client_id: str):
        self.topic = spec.name(settings)
        self.published = 0
        self.failures = 0
        self._codec = codec_for(spec.schema)
        self._producer = Producer({
            **settings.kafka_client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "client.id": client_id,
        })

    def publish(self, key: str, record: Mapping[str, Any]) -> None:
        what = record.get("decision_id") or record.get("audit_id")
        try:
            value = encode_gateway_record(self._codec, record)
        except CodecError as exc:
            self.failures += 1
            log.error("%s not published to %s, it does not fit the schema: %s", what, self.topic, exc)
            return
        try:
            self._produce(key, value, self._on_delivery)
        except BufferError:
            self._producer.poll(0.5)
            try:
                self._produce(key, value, self._on_delivery)
            except (BufferError, KafkaException) as exc:
                self.failures += 1
                log.error("%s not published, the producer queue is full: %s", what, exc)
                return
        except KafkaException as exc:
            self.failures += 1
            log.error("%s not published to %s: %s", what, self.topic, exc)
            return
        self._producer.poll(0)

    def publish_and_wait(self, key: str, record: Mapping[str, Any], timeout_s: float) -> None:
        """Raise AuditNotDelivered unless the broker acknowledged the record within `timeout_s`."""
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def delivered(error: Any, _message: Any) -> None:
            outcome["error"] = error
            done.set()

        try:
            self._produce(key, encode_gateway_record(self._codec, record), delivered)
        except (BufferError, KafkaException, CodecError) as exc:
            raise AuditNotDelivered(f"cannot produce to {self.topic}: {exc}") from exc
        self._producer.flush(timeout_s)
        if not done.is_set():
            raise AuditNotDelivered(f"{self.topic} did not acknowledge within {timeout_s:g} s")
        if outcome["error"] is not None:
            raise AuditNotDelivered(f"{self.topic} refused the record: {outcome['error']}")
        self.published += 1

    def _produce(self, key: str, value: bytes, on_delivery: Callable[[Any, Any], None]) -> None:
        self._producer.produce(self.topic, key=key.encode(), value=value, on_delivery=on_delivery)

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is not None:
            self.failures += 1
            log.error("delivery to %s failed: %s", self.topic, error)
        else:
            self.published += 1

    def close(self) -> None:
        undelivered = self._producer.flush(self.FLUSH_TIMEOUT_S)
        if undelivered:
            log.error("%d records were still undelivered to %s at shutdown", undelivered, self.topic)


class _DecisionIds:
    """Random (version 4) UUID strings from os.urandom read 4 KiB (256 ids) at a time. `uuid.uuid4()` reads 16
    bytes per call, and os.urandom lets go of the GIL: under load the Decide that called it then queues for the
    GIL behind the other threads, which alone put the server-side p99 near 1 ms. The version and variant bits
    are set and the pool turned to hex once per refill, so an id is a slice and a format (what
    `str(uuid.UUID(bytes=raw, version=4))` gives). A forked child starts afresh, so it never repeats its
    parent's ids."""

    BATCH_BYTES = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = ""
        self._used = 0
        os.register_at_fork(after_in_child=self._forget)

    def new(self) -> str:
        with self._lock:
            if self._used == len(self._pool):
                self._pool, self._used = self._refill(), 0
            at = self._used
            self._used = at + 32
        h = self._pool
        return f"{h[at:at + 8]}-{h[at + 8:at + 12]}-{h[at + 12:at + 16]}-{h[at + 16:at + 20]}-{h[at + 20:at + 32]}"

    def _refill(self) -> str:
        raw = bytearray(os.urandom(self.BATCH_BYTES))
        for start in range(0, self.BATCH_BYTES, 16):
            raw[start + 6] = (raw[start + 6] & 0x0F) | 0x40  # version 4
            raw[start + 8] = (raw[start + 8] & 0x3F) | 0x80  # RFC 4122 variant
        return raw.hex()

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._used = "", 0


_decision_ids = _DecisionIds()


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def breaker_config(policy: BreakerPolicy) -> BreakerConfig:
    return BreakerConfig(
        failure_threshold=policy.failure_threshold, open_s=policy.open_s, half_open_probes=policy.half_open_probes,
        probe_timeout_s=policy.open_s, error_rate_trip=policy.error_rate_trip,
        error_rate_min_samples=policy.error_rate_min_samples,
    )


class LiveRows:
    """The live table as the engine's read-only mapping, without copying the table, or even a row, per request."""

    def __init__(self, table: LiveModelTable):
        self._table = table

    def get(self, key: tuple[str, str], default: Any = None) -> Mapping[str, Any] | None:
        row = self._table.peek_key(key)
        return row if row is not None else default


def audit_record(change: PolicyChange) -> dict[str, Any]:
    """The policy_audit Avro record (schemas/policy_audit.v1.avsc) of one change."""
    return {
        "audit_id": str(uuid.uuid4()),
        "changed_at": change.changed_at,
        "actor": change.actor,
        "role": change.role,
        "action": change.action,
        "source": change.source,
        "old_version": change.old_version,
        "new_version": change.new_version,
        "old_sha256": sha256_text(change.old_text),
        "new_sha256": sha256_text(change.new_text),
        "diff": change.diff,
        "comment": change.comment,
    }


@dataclass
class GatewayState:
    """Everything a decision reads, in one place the servicers share."""

    settings: Settings
    table: LiveModelTable
    policy_store: PolicyStore
    budgets: BudgetStateTable | None = None
    breakers: BreakerBoard = field(default_factory=BreakerBoard)
    canaries: CanaryTracker = field(default_factory=CanaryTracker)
    catalog: PriceCatalog | None = None
    clock: Callable[[], dt.datetime] = _utc_now
    last_audit_ids: dict[int, str] = field(default_factory=dict)
    limiter: Limiter | None = None
    reservations: "Reservations" = field(default_factory=lambda: Reservations())

    def __post_init__(self) -> None:
        if self.limiter is None:
            self.limiter = limiter_from_settings(self.settings)
        self.budget_gate = BudgetGate.from_settings(self.settings, self.budgets) if self.budgets is not None else None
        self.breakers.replace_config(breaker_config(self.policy_store.current.policy.defaults.breaker))
        self._breaker_policy_version = self.policy_store.current.version

    def static_prices(self, key: tuple[str, str], at: dt.datetime) -> tuple[Decimal, Decimal] | None:
        quote = self.catalog.quote(key[0], key[1], at) if self.catalog is not None else None
        if quote is None:
            return None
        prices = quote.prices.per_million()
        return prices["input"], prices["output"]

    def installed_policy(self) -> InstalledPolicy:
        """The running policy, with the breakers following its settings (after SetPolicy or a file reload)."""
        installed = self.policy_store.current
        if installed.version != self._breaker_policy_version:
            self.breakers.replace_config(breaker_config(installed.policy.defaults.breaker))
            self._breaker_policy_version = installed.version
        return installed

    def routing_state(self, request: RoutingRequest, now: dt.datetime) -> RoutingState:
        installed = self.installed_policy()
        return RoutingState(
            policy=installed.policy, policy_version=installed.version, rows=LiveRows(self.table),  # type: ignore[arg-type]
            breakers=self.breakers, canaries=self.canaries,
            budget=self.budget_gate.standing(request, now) if self.budget_gate else None,
            budget_mode=self.settings.budgets.mode, static_prices=self.static_prices, limits=self.limiter,
        )


def limiter_from_settings(settings: Settings) -> Limiter:
    """gateway.limits_store: local (exact, one gateway), share (1/replicas of each limit) or redis (shared)."""
    gateway = settings.gateway
    if gateway.limits_store == "redis":
        from prismops.gateway_grpc.redis_limits import RedisLimitStore

        try:
            return Limiter(RedisLimitStore.from_settings(settings.redis))
        except ImportError as exc:
            raise ServeError("gateway.limits_store is redis but the `redis` package is missing: "
                             "pip install 'prismops[platform]'") from exc
    return Limiter(LocalLimitStore(), share=gateway.replicas if gateway.limits_store == "share" else 1)


@dataclass(frozen=True)
class Reservation:
    """What a Decide charged in estimated tokens, kept until the call's usage is reported."""

    model: tuple[str, str]
    estimated_tokens: int
    charges: tuple[Charge, ...]
    expires_s: float


class Reservations:
    """decision id -> Reservation, bounded and expiring: a decision whose outcome never comes keeps its estimate."""

    MAX_ENTRIES = 100_000
    TTL_S = 600.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Reservation] = {}

    def add(self, decision_id: str, reservation: Reservation) -> None:
        with self._lock:
            while len(self._items) >= self.MAX_ENTRIES:
                self._items.pop(next(iter(self._items)))
            self._items[decision_id] = reservation

    def pop(self, decision_id: str, model: tuple[str, str], now_s: float) -> Reservation | None:
        with self._lock:
            reservation = self._items.get(decision_id)
            if reservation is None or reservation.model != model:
                return None
            del self._items[decision_id]
        return reservation if reservation.expires_s > now_s else None

    def __len__(self) -> int:
        return len(self._items)


def request_from_proto(message: routing_pb2.DecideRequest) -> RoutingRequest:
    return RoutingRequest(
        tenant=message.tenant, service=message.service, feature=message.feature, request_id=message.request_id,
        allowed_models=tuple([(ref.provider, ref.model) for ref in message.allowed_models]),
        latency_slo_ms=message.latency_slo_ms, expected_input_tokens=message.expected_input_tokens,
        expected_output_tokens=message.expected_output_tokens, session_id=message.session_id,
        task_type=message.task_type, hints=tuple(message.hints), prompt_chars=message.prompt_chars,
        requires_structured_output=message.requires_structured_output, requires_vision=message.requires_vision,
        region=message.region, customer=message.customer,
    )


def _usd_text(amount: Any) -> str:
    return format_usd(amount) if amount is not None else ""


def retry_to_proto(retry: RetryConfig | None) -> routing_pb2.RetryPolicy | None:
    if retry is None:
        return None
    return routing_pb2.RetryPolicy(
        max_attempts=retry.max_attempts, backoff_ms=list(retry.backoff_ms[: retry.max_attempts - 1]),
        retry_on=list(retry.retry_on),
    )


_retry_messages: dict[int, tuple[RetryConfig, routing_pb2.RetryPolicy]] = {}


def _retry_message(retry: RetryConfig) -> routing_pb2.RetryPolicy:
    """The RetryPolicy of this very RetryConfig, built once: a decision carries one per step, all from the
    installed policy. Keyed by id and checked by identity (the entry holds the config, so the id stays its)."""
    entry = _retry_messages.get(id(retry))
    if entry is None or entry[0] is not retry:
        if len(_retry_messages) >= 64:
            _retry_messages.clear()
        entry = _retry_messages[id(retry)] = (retry, retry_to_proto(retry))  # type: ignore[assignment]
    return entry[1]


def response_from_choice(choice: RoutingChoice, decision_id: str) -> routing_pb2.DecideResponse:
    """Submessages are filled in place (`add`, `CopyFrom` of a cached RetryPolicy) rather than built and then
    copied in: this is most of what a Decide costs after the policy itself."""
    response = routing_pb2.DecideResponse(
        decision_id=decision_id,
        reason_code=choice.reason_code,
        reason_codes=choice.reason_codes,
        reason=choice.reason,
        estimated_cost_usd=_usd_text(choice.estimated_cost_usd),
        experiment=choice.experiment or "",
        arm=choice.arm or "",
        route=choice.route,
        policy_version=choice.policy_version,
        static_fallback=choice.static_fallback,
        live_table_age_ms=choice.live_table_age_ms if choice.live_table_age_ms is not None else -1,
    )
    model = response.model
    model.provider, model.model = choice.provider or "", choice.model or ""
    if choice.retry is not None:
        response.retry.CopyFrom(_retry_message(choice.retry))
    for c in choice.candidates:
        candidate = response.candidates.add(
            has_live_data=c.has_live_data, p95_latency_ms=c.p95_latency_ms or 0.0, error_rate=c.error_rate or 0.0,
            sample_count=c.sample_count, estimated_cost_usd=_usd_text(c.estimated_cost_usd), eligible=c.eligible,
            verdict=c.verdict, breaker_state=c.breaker_state,
        )
        model = candidate.model
        model.provider, model.model = c.provider, c.model
    for step in choice.fallbacks:
        fallback = response.fallbacks.add(estimated_cost_usd=_usd_text(step.estimated_cost_usd))
        model = fallback.model
        model.provider, model.model = step.provider, step.model
        if step.retry is not None:
            fallback.retry.CopyFrom(_retry_message(step.retry))
    if choice.shadow is not None:
        shadow = response.shadow
        shadow.provider, shadow.model = choice.shadow
    standing = choice.budget
    response.budget.CopyFrom(routing_pb2.BudgetState(
        status=choice.budget_status,
        budget_id=standing.budget_id if standing else "",
        scope=standing.scope if standing else "",
        scope_id=standing.scope_id if standing else "",
        used_pct=standing.used_pct if standing else 0.0,
        downgraded=choice.downgraded,
        tier=choice.downgrade_tier or "",
    ))
    return response


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """End the call with `code`; the message is capped so it always fits the trailers (see request_bounds)."""
    context.abort(code, cap_detail(details))


def _exhausted(context: grpc.ServicerContext, details: str, reason_code: str, retry_after_s: float,
               decision_id: str) -> None:
    """RESOURCE_EXHAUSTED with when to come back, three ways: trailing metadata `retry-after-ms` (whole
    milliseconds, rounded up) and `prismops-reason-code`, and the standard rich status
    (`grpc-status-details-bin`: google.rpc.Status with RetryInfo and ErrorInfo{reason, domain "prismops.dev"})."""
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2

    message = cap_detail(details)
    retry_ms = max(1, math.ceil(retry_after_s * 1000)) if retry_after_s > 0 else 0
    retry_info, error_info = any_pb2.Any(), any_pb2.Any()
    retry_info.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
        seconds=retry_ms // 1000, nanos=(retry_ms % 1000) * 1_000_000)))
    error_info.Pack(error_details_pb2.ErrorInfo(reason=reason_code, domain="prismops.dev",
                                                metadata={"decision_id": decision_id}))
    rich = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message, details=[retry_info, error_info])
    context.set_trailing_metadata((
        ("retry-after-ms", str(retry_ms)), ("prismops-reason-code", reason_code),
        ("prismops-decision-id", decision_id), ("grpc-status-details-bin", rich.SerializeToString()),
    ))
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def _invalid(context: grpc.ServicerContext, error: FieldRuleError) -> None:
    text = f"{error.field}: {error.message} [{error.rule}]" if error.field else f"{error.message} [{error.rule}]"
    _abort(context, grpc.StatusCode.INVALID_ARGUMENT, text)


def _bounded_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """An unexpected exception would reach the caller as grpc's "Exception calling application: <text>", of
    any length; it goes out capped instead (same code, UNKNOWN). Our own aborts pass through untouched."""

    @functools.wraps(method)
    def handler(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            if context.code() is not None:  # already aborted (or given a status) by the handler itself
                raise
            log.exception("%s failed", method.__name__)
            _abort(context, grpc.StatusCode.UNKNOWN, f"Exception calling application: {exc}")
            raise  # not reached: abort raises

    return handler


_NO_SPAN_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_API_GET_TRACER_PROVIDER = trace.get_tracer_provider
# The API loads a provider named by this variable on its first `get_tracer_provider()`; read once, at import.
_PROVIDER_FROM_ENV = OTEL_PYTHON_TRACER_PROVIDER in os.environ


def _spans_recorded() -> bool:
    """Whether an SDK tracer provider is installed. Without one the Decide span is a no-op that would still
    cost a metadata scan, a context extraction and a context switch on every call. Until a provider is
    installed the API's `get_tracer_provider()` looks the environment up on every call (a few microseconds a
    Decide with the cold caches of a loaded server), so its global is read first: None there, with no provider
    named in the environment and the API's own function in place, is the API's proxy for sure."""
    if getattr(trace, "_TRACER_PROVIDER", _NO_SPAN_PROVIDERS) is None and not _PROVIDER_FROM_ENV \
            and trace.get_tracer_provider is _API_GET_TRACER_PROVIDER:
        return False
    return not isinstance(trace.get_tracer_provider(), _NO_SPAN_PROVIDERS)


_masked: dict[str, str] = {}


def masked_customer(customer: str) -> str:
    """`mask_personal_data` of a Decide's customer (as cost lines store it), remembered: the same few customers
    come again and again, and the two regular expressions are a visible part of a remembered Decide. Bounded:
    customers come from callers (each at most NAME_MAX_CHARS)."""
    text = _masked.get(customer)
    if text is None:
        if len(_masked) >= 4096:
            _masked.clear()
        text = _masked[customer] = mask_personal_data(customer)
    return text


MemoKey = tuple[Any, ...]
# what `_decide_remembered` sets on a remembered decision record; every other field is the remembered one's
PER_CALL_FIELDS = ("decision_id", "decided_at", "request_id", "customer", "live_table_age_ms")


def memo_key(request: routing_pb2.DecideRequest, max_candidates: int) -> MemoKey | None:
    """Every DecideRequest field an answer depends on (all but request_id and customer, which only go into
    the decision record), read once from the message; None unless every bound of `check_decide` plainly
    holds (the same fast test it makes first), so a None sends the request down the checked path."""
    allowed, hints = request.allowed_models, request.hints
    if len(allowed) > max_candidates or len(hints) > MAX_HINTS:
        return None
    models = tuple([(ref.provider, ref.model) for ref in allowed])
    hint_names = tuple(hints)
    tenant, service, feature = request.tenant, request.service, request.feature
    task_type, region, customer = request.task_type, request.region, request.customer
    request_id, session_id = request.request_id, request.session_id
    names = [tenant, service, feature, task_type, region, customer, *hint_names]
    for provider, model in models:
        names += (provider, model)
    if not (max(map(len, names)) <= NAME_MAX_CHARS and len(request_id) <= ID_MAX_CHARS
            and len(session_id) <= ID_MAX_CHARS and "".join(names).isprintable()
            and (request_id + session_id).isprintable()):
        return None
    return (tenant, service, feature, models, request.latency_slo_ms, request.expected_input_tokens,
            request.expected_output_tokens, session_id, task_type, hint_names, request.prompt_chars,
            request.requires_structured_output, request.requires_vision, region)


def memo_shape(request: routing_pb2.DecideRequest) -> bytes:
    """The request's wire form without request_id and customer: what the memo is looked up by. Equal bytes
    are equal fields, so an entry found this way was stored for a request that differs at most in those two
    per-call fields, and passed every bound of `memo_key` (only the per-call fields are left to test, see
    `per_call_fields_plain`). Four calls into the protobuf runtime instead of reading every field into Python
    objects (`memo_key`, about 4x the time, and much more with the cold caches of a loaded server). Unknown
    fields are part of the bytes: a request carrying some is stored under a key of its own, with the same answer."""
    shape = routing_pb2.DecideRequest()
    shape.CopyFrom(request)
    shape.ClearField("request_id")
    shape.ClearField("customer")
    return shape.SerializeToString()


def per_call_fields_plain(request: routing_pb2.DecideRequest) -> bool:
    """The fast test of `memo_key` on the two fields `memo_shape` leaves out."""
    request_id, customer = request.request_id, request.customer
    return len(request_id) <= ID_MAX_CHARS and len(customer) <= NAME_MAX_CHARS and (request_id + customer).isprintable()


@dataclass(frozen=True)
class MemoEntry:
    """One remembered answer and everything its reuse is checked against (see `policy.MemoFacts`)."""

    request: RoutingRequest  # request_id and customer blanked: they are the caller's, per call
    policy: Any
    policy_version: int
    standing: Any
    breaker_version: int
    limiter: Limiter | None
    chosen: tuple[str, str]
    keys: tuple[tuple[str, str], ...]
    rows: tuple[Mapping[str, Any], ...]
    max_age_s: float
    peeks: tuple[Any, ...]
    take: tuple[Charge, ...]
    counted: tuple[Charge, ...]
    reason_code: str
    record: dict[str, Any]
    response: routing_pb2.DecideResponse


class DecisionMemo:
    """Answers of the policy engine by request shape (`memo_shape`), each reused only while `policy.MemoFacts` says
    the engine would give it again: same installed policy and budget standing, the very same fresh live rows,
    no breaker state change, no rate limit spent (peeked on every call, as the engine does). Only the
    decision id, the clock and the live-table age change between two such answers, and those are filled in
    per call; the limits are still spent per call. A repeated request shape then costs a few dictionary
    reads instead of the whole engine. Bounded: keys come from callers."""

    MAX_ENTRIES = 4096

    def __init__(self) -> None:
        self._entries: dict[bytes, MemoEntry] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> MemoEntry | None:
        return self._entries.get(key)

    def put(self, key: bytes, entry: MemoEntry) -> None:
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries = {}
        self._entries[key] = entry

    def forget(self, key: bytes) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class RouterServicer(routing_pb2_grpc.RouterServicer):
    """`decide_ns`, when given, receives the nanoseconds each answered Decide spent in this handler (entry to
    response built): `prismops bench route` reads the server side from it, with no network in between."""

    def __init__(self, state: GatewayState, publisher: RecordPublisher, is_ready: Callable[[], bool] = lambda: True,
                 decide_ns: list[int] | None = None, memo: bool = True):
        self._state = state
        self._defaults = state.settings.gateway
        self._publisher = publisher
        self._is_ready = is_ready
        self._decide_ns = decide_ns
        self._decision_counters: dict[str, Any] = {}
        self.memo = DecisionMemo() if memo else None
        self._decision_codec = codec_for(ROUTING_DECISIONS.schema)

    @_bounded_errors
    def Decide(self, request: routing_pb2.DecideRequest, context: grpc.ServicerContext) -> routing_pb2.DecideResponse:
        started_ns = time.perf_counter_ns()
        if _spans_recorded():
            parent = context_from_headers(context.invocation_metadata())
            with _tracer.start_as_current_span("routing.v1.Router/Decide", context=parent, kind=trace.SpanKind.SERVER):
                response = self._decide(request, context)
        else:
            response = self._decide(request, context)
        if self._decide_ns is not None:
            self._decide_ns.append(time.perf_counter_ns() - started_ns)  # list.append is atomic: no lock
        return response

    def _decide(self, request: routing_pb2.DecideRequest, context: grpc.ServicerContext) -> routing_pb2.DecideResponse:
        memo = self.memo
        key: bytes | None = None
        entry: MemoEntry | None = None
        if memo is not None:
            key = memo_shape(request)
            entry = memo.get(key)
            if entry is not None and not per_call_fields_plain(request):
                entry = key = None  # as memo_key would: the checked path names the field, nothing is remembered
            elif entry is None and memo_key(request, self._defaults.max_candidates) is None:
                key = None  # not every bound plainly holds: checked below, and not remembered
        if key is None:
            try:
                # sizes and characters first: nothing below may build a message from an unbounded field
                check_decide(request, self._defaults.max_candidates)
            except FieldRuleError as error:
                _invalid(context, error)
        if not self._is_ready():
            _abort(context, grpc.StatusCode.UNAVAILABLE, "the live model and budget tables are still loading; retry shortly")
        if key is not None:
            if entry is not None:
                response = self._decide_remembered(entry, request, context)
                if response is not None:
                    memo.hits += 1  # type: ignore[union-attr]
                    return response
                memo.forget(key)  # type: ignore[union-attr]
            memo.misses += 1  # type: ignore[union-attr]
        routing_request = request_from_proto(request)
        try:
            validate_request(routing_request)
        except PolicyInputError as error:
            _invalid(context, error)
        routing_request = routing_request.with_default_tokens(
            self._defaults.default_input_tokens, self._defaults.default_output_tokens
        )
        now = self._state.clock()
        decision_id = _decision_ids.new()
        lease_id = self._acquire_lease(routing_request, decision_id, now, context)
        remember: list[MemoEntry] | None = [] if key is not None else None
        try:
            choice = self._decide_and_charge(routing_request, decision_id, now, remember)
        except PolicyInputError as error:
            self._release_lease(lease_id, now)
            _invalid(context, error)
        except BaseException:
            self._release_lease(lease_id, now)
            raise
        if choice.refused:
            self._release_lease(lease_id, now)
        record = choice.decision_record(routing_request, decision_id)
        if record["customer"]:
            record["customer"] = masked_customer(record["customer"])  # as cost lines store it
        self._publisher.publish(routing_request.tenant, record)
        self._count_decision(choice.reason_code)
        if choice.refused:
            if choice.refusal_kind == "rate":
                _exhausted(context, choice.reason, choice.reason_code, choice.retry_after_s, decision_id)
            context.set_trailing_metadata((("prismops-decision-id", decision_id),
                                           ("prismops-reason-code", choice.reason_code)))
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, choice.reason)
        response = response_from_choice(choice, decision_id)
        if lease_id:
            response.lease_id = lease_id
        if choice.tenant_tier:
            response.tenant_tier = choice.tenant_tier
        if remember:
            self._remember(key, remember[0], choice, routing_request)  # type: ignore[arg-type]
        return response

    def _remember(self, key: bytes, entry: MemoEntry, choice: RoutingChoice, request: RoutingRequest) -> None:
        """Store the answer with its per-call fields blank (filled in by `_decide_remembered`)."""
        template = replace(request, request_id="", customer="")
        record = choice.decision_record(template, "")
        record = TemplatedRecord(record, self._decision_codec, self._decision_codec.template(record, PER_CALL_FIELDS))
        response = response_from_choice(choice, "")
        if choice.tenant_tier:
            response.tenant_tier = choice.tenant_tier
        self.memo.put(key, replace(  # type: ignore[union-attr]
            entry, request=template, reason_code=choice.reason_code, record=record, response=response,
        ))

    def _decide_remembered(self, entry: MemoEntry, request: routing_pb2.DecideRequest,
                           context: grpc.ServicerContext) -> routing_pb2.DecideResponse | None:
        """The remembered answer, when `MemoFacts` still hold (else None: the engine decides); limits, lease,
        reservation, decision record and metrics exactly as after a decision of the engine."""
        state = self._state
        installed = state.installed_policy()
        if installed.policy is not entry.policy or installed.version != entry.policy_version:
            return None
        if state.breakers.state_version != entry.breaker_version or state.limiter is not entry.limiter:
            return None
        now = state.clock()
        standing = state.budget_gate.standing(entry.request, now) if state.budget_gate else None
        if standing != entry.standing:
            return None
        if not state.table.holds(entry.keys, entry.rows):
            return None
        max_age_s = entry.max_age_s
        youngest = math.inf
        for row in entry.rows:
            age_s = (now - row["updated_at"]).total_seconds()
            if age_s > max_age_s:
                return None
            if age_s < youngest:
                youngest = age_s
        limiter = entry.limiter
        now_s = now.timestamp()
        decision_id = _decision_ids.new()
        routing_request = entry.request
        if not installed.policy.limits.concurrency:
            # no concurrency cap in the (checked, unchanged) policy, so no lease, as `_acquire_lease` would find:
            # the limits are checked and the choice's spent in one ask of the store
            lease_id = ""
            if limiter is not None and not limiter.take_unless_blocked(entry.peeks, entry.take, now_s):
                return None
        else:
            if limiter is not None and entry.peeks and limiter.any_blocked(entry.peeks, now_s):
                return None
            lease_id = self._acquire_lease(routing_request, decision_id, now, context)
            if limiter is not None and entry.take and limiter.take(entry.take, now_s) is not None:
                # spent by a concurrent call since the peek: the engine decides again, as it would have
                self._release_lease(lease_id, now)
                return None
        if entry.counted:
            tokens = routing_request.expected_input_tokens + routing_request.expected_output_tokens
            state.reservations.add(decision_id, Reservation(entry.chosen, tokens, entry.counted, now_s + Reservations.TTL_S))
        record = entry.record.copy()
        age_ms = int(youngest * 1000)
        record["decision_id"] = decision_id
        record["decided_at"] = now
        record["live_table_age_ms"] = age_ms
        if request.request_id:
            record["request_id"] = request.request_id
        if request.customer:
            record["customer"] = masked_customer(request.customer)  # as cost lines store it
        self._publisher.publish(routing_request.tenant, record)
        self._count_decision(entry.reason_code)
        response = routing_pb2.DecideResponse()
        response.CopyFrom(entry.response)
        response.decision_id = decision_id
        response.live_table_age_ms = age_ms
        if lease_id:
            response.lease_id = lease_id
        return response

    TAKE_ATTEMPTS = 3

    def _decide_and_charge(self, request: RoutingRequest, decision_id: str, now: dt.datetime,
                           remember: list[MemoEntry] | None = None) -> RoutingChoice:
        """Decide (limits are peeked there), then spend the chosen model's and the tenant's limits at once.
        Another Decide may have spent them in between: then decide again, when the peek sees it. With
        `remember`, an answer the memo may reuse is appended to it (see `MemoEntry`)."""
        state, limiter = self._state, self._state.limiter
        now_s = now.timestamp()
        for _ in range(self.TAKE_ATTEMPTS):
            breaker_version = state.breakers.state_version
            routing_state = state.routing_state(request, now)
            choice = decide(request, routing_state, decision_id, now)
            if choice.refused or limiter is None:
                return choice
            policy = routing_state.policy
            tokens = request.expected_input_tokens + request.expected_output_tokens
            key = (choice.provider or "", choice.model or "")
            charges = limiter.tenant_charges(policy, request.tenant, tokens) + limiter.model_charges(policy, key, tokens)
            blocked = limiter.take(charges, now_s)
            if blocked is None:
                counted = token_charges(charges)
                if counted:
                    state.reservations.add(decision_id, Reservation(key, tokens, tuple(counted), now_s + Reservations.TTL_S))
                facts = choice.memo_facts
                if remember is not None and facts is not None and state.breakers.state_version == breaker_version:
                    remember.append(MemoEntry(
                        request=request, policy=policy, policy_version=routing_state.policy_version,
                        standing=routing_state.budget, breaker_version=breaker_version, limiter=limiter,
                        chosen=key, keys=facts.keys, rows=facts.rows, max_age_s=facts.max_age_s, peeks=facts.peeks,
                        take=tuple(charges), counted=tuple(counted), reason_code=choice.reason_code,
                        record={}, response=routing_pb2.DecideResponse(),
                    ))
                return choice
        assert blocked is not None
        return RoutingChoice(
            provider=None, model=None, reason_code="rate_limited_contended", reason_codes=("rate_limited_contended",),
            reason=f"{blocked.charge.label} spent by concurrent calls; retry in {blocked.wait_s:.1f} s",
            estimated_cost_usd=None, candidates=(), decided_at=now, route=choice.route,
            policy_version=choice.policy_version, refused=True, refusal_kind="rate", retry_after_s=blocked.wait_s,
        )

    def _acquire_lease(self, request: RoutingRequest, decision_id: str, now: dt.datetime,
                       context: grpc.ServicerContext) -> str:
        """The concurrency lease of the request's service/feature, "" when no cap applies; over the cap the
        call ends RESOURCE_EXHAUSTED (reason concurrency_limited) with the policy's lease_retry_ms."""
        limiter = self._state.limiter
        limits = self._state.installed_policy().policy.limits
        cap = limits.concurrency_for(request.service, request.feature) if limits.concurrency else None
        if cap is None or limiter is None:
            return ""
        lease_id = f"{cap.name}/{decision_id}"
        if limiter.store.acquire_lease(cap.name, lease_id, limiter.lease_cap(cap), cap.lease_ttl_s, now.timestamp()):
            return lease_id
        self._count_decision(CONCURRENCY_LIMITED)
        _exhausted(context, f"concurrency cap {cap.name} ({cap.max_in_flight} in flight) is full; retry shortly",
                   CONCURRENCY_LIMITED, limits.lease_retry_ms / 1000.0, decision_id)
        return ""  # not reached

    def _release_lease(self, lease_id: str, now: dt.datetime) -> bool:
        if not lease_id or self._state.limiter is None:
            return False
        scope, _, _ = lease_id.rpartition("/")
        return bool(scope) and self._state.limiter.store.release_lease(scope, lease_id, now.timestamp())

    def _count_decision(self, reason_code: str) -> None:
        """DECISIONS by reason code, with each code's child looked up once (`labels` takes a lock and
        validates the label values on every call)."""
        counter = self._decision_counters.get(reason_code)
        if counter is None:
            counter = self._decision_counters[reason_code] = DECISIONS.labels(reason_code)
        counter.inc()

    @_bounded_errors
    def ReportOutcome(
        self, request: routing_pb2.ReportOutcomeRequest, context: grpc.ServicerContext
    ) -> routing_pb2.ReportOutcomeResponse:
        try:
            check_report_outcome(request)
        except FieldRuleError as error:
            _invalid(context, error)
        if not (request.model.provider and request.model.model):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "model: provider and model are required [required]")
        try:
            # proto3 sends "" and 0 for unset fields: either one alone names the outcome
            status = classify_outcome(request.status or None, request.http_status or None)
        except FieldRuleError as error:
            _invalid(context, error)
        key = (request.model.provider, request.model.model)
        policy = self._state.installed_policy().policy
        retry_after_s = request.retry_after_ms / 1000.0 if request.retry_after_ms else None
        if retry_after_s is not None and retry_after_s > policy.limits.max_retry_after_s:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                   f"retry_after_ms: must be <= {policy.limits.max_retry_after_s * 1000:.0f} "
                   f"(limits.max_retry_after_s), got {request.retry_after_ms} [at_most]")
        if retry_after_s is not None and status != "rate_limited":
            retry_after_s = None  # only a 429's Retry-After says how long the model is out
        now = self._state.clock()
        breakers = self._state.breakers
        if not request.shadow:
            breakers.record_outcome(key, status, now, retry_after_s)
        self._correct_tokens(request, key, now)
        lease_state = ""
        if request.lease_id:
            lease_state = "released" if self._release_lease(request.lease_id, now) else "not_held"
        snapshot = breakers.status(key, now)
        return routing_pb2.ReportOutcomeResponse(
            breaker_state=snapshot["state"], consecutive_failures=snapshot["consecutive_failures"],
            lease_state=lease_state, retry_in_s=snapshot["retry_in_s"],
        )

    def _correct_tokens(self, request: routing_pb2.ReportOutcomeRequest, key: tuple[str, str], now: dt.datetime) -> None:
        """The reported tokens replace Decide's estimate in the token limits (once per decision)."""
        limiter = self._state.limiter
        if limiter is None or request.shadow or not request.decision_id or \
                not (request.input_tokens or request.output_tokens):
            return
        now_s = now.timestamp()
        reservation = self._state.reservations.pop(request.decision_id, key, now_s)
        if reservation is None:
            return
        delta = request.input_tokens + request.output_tokens - reservation.estimated_tokens
        if delta:
            for charge in reservation.charges:
                try:
                    limiter.store.adjust(charge, float(delta), now_s)
                except LimitError as error:
                    log.warning("token correction of %s not applied: %s", request.decision_id, error)

    @_bounded_errors
    def GetTables(self, request: routing_pb2.GetTablesRequest, context: grpc.ServicerContext) -> routing_pb2.GetTablesResponse:
        state, now = self._state, self._state.clock()
        max_age = state.policy_store.current.policy.defaults.live.max_age_s
        models = []
        for (provider, model), row in sorted(state.table.snapshot().items()):
            age_s = (now - row["updated_at"]).total_seconds()
            models.append(routing_pb2.LiveModelRow(
                model=routing_pb2.ModelRef(provider=provider, model=model),
                window_seconds=row["window_seconds"], sample_count=row["sample_count"], error_rate=row["error_rate"],
                rate_limited_rate=row.get("rate_limited_rate") or 0.0, p50_latency_ms=row["p50_latency_ms"],
                p95_latency_ms=row["p95_latency_ms"], p99_latency_ms=row["p99_latency_ms"],
                p95_ttft_ms=row.get("p95_ttft_ms") or 0.0, requests_per_second=row.get("requests_per_second") or 0.0,
                tokens_per_second=row.get("tokens_per_second") or 0.0,
                cost_per_1k_input_usd=_usd_text(row.get("cost_per_1k_input_usd")),
                cost_per_1k_output_usd=_usd_text(row.get("cost_per_1k_output_usd")),
                age_ms=int(age_s * 1000), stale=age_s > max_age,
            ))
        budgets = []
        for (scope, scope_id), row in sorted((state.budgets.snapshot() if state.budgets else {}).items()):
            for usage in row["budgets"]:
                budgets.append(routing_pb2.BudgetRow(
                    scope=scope, scope_id=scope_id, budget_id=usage["budget_id"], period=usage["period"],
                    unit=usage["unit"], limit=format_usd(usage["limit"]), spent=format_usd(usage["spent"]),
                    used_pct=usage["used_pct"], status=usage["status"],
                ))
        breakers = [
            routing_pb2.BreakerRow(
                model=routing_pb2.ModelRef(provider=b["provider"], model=b["model"]), state=b["state"],
                consecutive_failures=b["consecutive_failures"], retry_in_s=b["retry_in_s"],
            )
            for b in state.breakers.snapshot(now)
        ]
        canaries = []
        for c in state.canaries.snapshot():
            route, _, model_name = c["name"].partition(":")
            provider, _, model = model_name.partition("/")
            canaries.append(routing_pb2.CanaryRow(
                route=route, model=routing_pb2.ModelRef(provider=provider, model=model), percent=c["percent"],
                state=c["state"], reason=c["reason"],
            ))
        return routing_pb2.GetTablesResponse(
            models=models, budgets=budgets, breakers=breakers, canaries=canaries,
            policy_version=state.policy_store.current.version,
        )


class RouterAdminServicer(routing_pb2_grpc.RouterAdminServicer):
    def __init__(self, state: GatewayState):
        self._state = state

    @_bounded_errors
    def GetPolicy(self, request: routing_pb2.GetPolicyRequest, context: grpc.ServicerContext) -> routing_pb2.PolicyDocument:
        installed = self._state.policy_store.current
        return routing_pb2.PolicyDocument(
            yaml=installed.text, version=installed.version, updated_by=installed.updated_by,
            updated_at=installed.updated_at.isoformat(),
        )

    @_bounded_errors
    def SetPolicy(self, request: routing_pb2.SetPolicyRequest, context: grpc.ServicerContext) -> routing_pb2.SetPolicyResponse:
        try:
            check_set_policy(request, self._state.settings.gateway.max_request_bytes)
        except FieldRuleError as error:
            _invalid(context, error)
        principal = current_principal.get()
        store = self._state.policy_store
        try:
            change = store.install(
                request.yaml, actor=principal.name, role=principal.role, source="grpc",
                expected_version=request.expected_version, comment=request.comment or None,
            )
        except PolicyConfigError as error:
            _invalid(context, error)
        except PolicyVersionConflict as error:
            _abort(context, grpc.StatusCode.ABORTED, str(error))
        except AuditNotDelivered as error:
            _abort(context, grpc.StatusCode.UNAVAILABLE, f"the policy was not changed: its audit event failed ({error})")
        return routing_pb2.SetPolicyResponse(
            version=change.new_version, audit_id=self._state.last_audit_ids.get(change.new_version, ""), diff=change.diff,
        )


def new_health_servicer(status: int) -> health.HealthServicer:
    servicer = health.HealthServicer()
    for service in (OVERALL_HEALTH, ROUTER_SERVICE, ADMIN_SERVICE):
        servicer.set(service, status)
    return servicer


def audit_into(state_holder: dict[str, GatewayState], publisher: RecordPublisher) -> Callable[[PolicyChange], None]:
    """The policy store's change hook: publish the audit event and wait for Kafka before the change lands."""

    def on_change(change: PolicyChange) -> None:
        record = audit_record(change)
        publisher.publish_and_wait(record["audit_id"], record, AUDIT_DELIVERY_TIMEOUT_S)
        state = state_holder.get("state")
        if state is not None:
            state.last_audit_ids[change.new_version] = record["audit_id"]
        log.info("policy version %d installed by %s (%s), audit %s", change.new_version, change.actor,
                 change.source, record["audit_id"])

    return on_change


def open_policy_store(settings: Settings, audit_publisher: RecordPublisher | None,
                      holder: dict[str, GatewayState]) -> PolicyStore:
    """The policy from gateway.policy_file (or the bundled one). Without an audit publisher (embedded use,
    unit tests) changes are installed and only logged."""
    try:
        return PolicyStore.from_file(
            settings.gateway.policy_file, on_change=audit_into(holder, audit_publisher) if audit_publisher else None,
        )
    except PolicyConfigError as error:
        raise ServeError(f"routing policy {settings.gateway.policy_file or '(bundled)'}: {error}") from None


REDIS_RPC_THREADS = 16


def rpc_threads(settings: Settings) -> int:
    """`gateway.max_workers`, or by default the machine's cores (at least 2) when limits are counted in process:
    a Decide is Python holding the interpreter's lock, so threads beyond the cores only take turns (16 threads on
    2 cores cost about 100 µs more CPU a call than 2, and 0.85 and 0.78x of the echo against 0.93 and 0.92x in
    `bench route`, docs/routing.md). With limits on Redis each Decide waits on a round trip, and REDIS_RPC_THREADS keep calls in flight."""
    gateway = settings.gateway
    if gateway.max_workers is not None:
        return gateway.max_workers
    if gateway.limits_store == "redis":
        return REDIS_RPC_THREADS
    return max(2, os.cpu_count() or 2)


def build_server(
    settings: Settings,
    table: LiveModelTable,
    *,
    publisher: RecordPublisher,
    health_servicer: health.HealthServicer | None = None,
    is_ready: Callable[[], bool] = lambda: True,
    budgets: BudgetStateTable | None = None,
    state: GatewayState | None = None,
    audit_publisher: RecordPublisher | None = None,
    decide_ns: list[int] | None = None,
) -> grpc.Server:
    """A bound, not yet started server with Router, RouterAdmin, health and reflection. Without a health
    servicer it reports SERVING at once (tables assumed full, as in tests and embedded use); without a budget
    table no budget applies; without `state` one is made from settings (policy file, price catalog).
    `decide_ns` collects the handler time of every answered Decide (benchmarks; it grows without bound)."""
    holder: dict[str, GatewayState] = {}
    if state is None:
        store = open_policy_store(settings, audit_publisher, holder)
        state = GatewayState(
            settings, table, store, budgets=budgets,
            catalog=load_catalog(settings.pricing.catalog, settings.pricing.tenant_overrides),
        )
    holder["state"] = state
    try:
        grants = load_token_grants(settings.gateway.tokens_file)
    except TokensFileError as error:
        raise ServeError(str(error)) from None
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=rpc_threads(settings), thread_name_prefix="router"),
        interceptors=[BearerAuthInterceptor(grants)],
        options=[
            # without this a second gateway on the same port would start "fine" and silently share the traffic
            ("grpc.so_reuseport", 0),
            # a larger request is RESOURCE_EXHAUSTED from grpc itself, before it is parsed
            ("grpc.max_receive_message_length", settings.gateway.max_request_bytes),
            ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
        ],
        maximum_concurrent_rpcs=settings.gateway.max_concurrent_rpcs,
    )
    routing_pb2_grpc.add_RouterServicer_to_server(RouterServicer(state, publisher, is_ready, decide_ns), server)
    routing_pb2_grpc.add_RouterAdminServicer_to_server(RouterAdminServicer(state), server)
    health_pb2_grpc.add_HealthServicer_to_server(
        health_servicer or new_health_servicer(health_pb2.HealthCheckResponse.SERVING), server
    )
    reflection.enable_server_reflection(
        (ROUTER_SERVICE, ADMIN_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
    )
    address = f"{settings.gateway.host}:{settings.gateway.port}"
    try:
        bound = server.add_secure_port(address, server_credentials(settings)) if settings.gateway.tls_cert_file \
            else server.add_insecure_port(address)
    except (RuntimeError, OSError) as exc:
        raise ServeError(f"cannot listen on {address}: {exc}") from exc
    if bound == 0:
        raise ServeError(f"cannot listen on {address}")
    return server


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    gateway = settings.gateway
    if gateway.tls_key_file is None:
        raise ServeError("gateway.tls_cert_file is set but gateway.tls_key_file is not")
    try:
        key, chain = gateway.tls_key_file.read_bytes(), gateway.tls_cert_file.read_bytes()  # type: ignore[union-attr]
    except OSError as exc:
        raise ServeError(f"cannot read the TLS key or certificate: {exc}") from exc
    return grpc.ssl_server_credentials([(key, chain)])


def serve(
    settings: Settings,
    stop_event: threading.Event,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    publisher: RecordPublisher | None = None,
) -> None:
    """Run the gateway until `stop_event` is set: follow the live model and budget tables, watch the policy
    file, answer Router and RouterAdmin, publish decisions and audit events. Health says NOT_SERVING until both
    tables have caught up, and again from the start of shutdown."""
    configure_tracing(settings, "gateway")
    table, budgets = LiveModelTable(), BudgetStateTable()
    followers = [LiveTableFollower(settings, ROUTING_TABLES, table), LiveTableFollower(settings, BUDGET_STATE, budgets)]

    def caught_up() -> bool:
        return all(f.caught_up.is_set() for f in followers)

    health_servicer = new_health_servicer(health_pb2.HealthCheckResponse.NOT_SERVING)
    publisher = publisher or KafkaRecordPublisher(settings, ROUTING_DECISIONS, "prismops-gateway")
    audit_publisher = KafkaRecordPublisher(settings, POLICY_AUDIT, "prismops-gateway-audit")
    holder: dict[str, GatewayState] = {}
    try:
        store = open_policy_store(settings, audit_publisher, holder)
        state = GatewayState(
            settings, table, store, budgets=budgets,
            catalog=load_catalog(settings.pricing.catalog, settings.pricing.tenant_overrides),
        )
        holder["state"] = state
        server = build_server(
            settings, table, publisher=publisher, health_servicer=health_servicer, is_ready=caught_up,
            budgets=budgets, state=state,
        )
    except Exception:
        publisher.close()
        audit_publisher.close()
        raise
    server.start()
    for follower in followers:
        follower.start()
    store.start_watching(settings.gateway.policy_reload_interval_s)
    collector = GatewayStateCollector(state, state.clock)
    REGISTRY.register(collector)
    serve_metrics(settings.gateway.metrics_port, "gateway")
    log.info("routing.v1.Router listening on %s:%d (%s; following %s; policy version %d; budgets in %s mode)",
             settings.gateway.host, settings.gateway.port, "TLS" if settings.gateway.tls_cert_file else "plaintext",
             ", ".join(f.topic for f in followers), store.current.version, settings.budgets.mode.upper())
    serving = False
    try:
        while not stop_event.wait(0.1):
            if not serving and caught_up():
                for service in (OVERALL_HEALTH, ROUTER_SERVICE, ADMIN_SERVICE):
                    health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
                serving = True
                log.info("tables loaded (%d models, %d budget scopes): SERVING", len(table), len(budgets))
    finally:
        log.info("shutting down: NOT_SERVING, draining for up to %.1f s", grace_s)
        health_servicer.enter_graceful_shutdown()
        store.stop_watching()
        REGISTRY.unregister(collector)
        server.stop(grace_s).wait()
        for follower in followers:
            follower.stop()
        publisher.close()
        audit_publisher.close()
