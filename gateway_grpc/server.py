"""routing.v1.Router over gRPC: a thin adapter from the wire to `policy.choose_model`.

The server answers Decide from two in-memory tables, each following a compacted topic: the live model table
(ROUTING_TABLES) and the budget table (BUDGET_STATE). A tenant that a budget blocks (MANUAL mode,
`budget_gate`) is refused with RESOURCE_EXHAUSTED naming the tenant, the budget and the numbers. Every
decision, refusals included, is published to ROUTING_DECISIONS (without waiting for the broker). The standard
health service says NOT_SERVING until both tables have caught up with their topics, and server reflection
lets grpcurl and friends work out of the box.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any, Protocol

import grpc
from confluent_kafka import KafkaException, Producer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway_grpc.budget_gate import BudgetGate
from gateway_grpc.live_table import BudgetStateTable, LiveModelTable, LiveTableFollower
from gateway_grpc.policy import (
    PolicyInputError, RoutingChoice, RoutingRequest, choose_model, format_usd, validate_request,
)
from gateway_grpc.routing.v1 import routing_pb2, routing_pb2_grpc
from prismops.settings import Settings
from streams.codecs import CodecError, codec_for
from streams.topics import BUDGET_STATE, ROUTING_DECISIONS, ROUTING_TABLES

log = logging.getLogger(__name__)

ROUTER_SERVICE = routing_pb2.DESCRIPTOR.services_by_name["Router"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
OVERALL_HEALTH = ""
DEFAULT_GRACE_S = 5.0


class ServeError(RuntimeError):
    """The gateway cannot start, e.g. its address is taken."""


class DecisionPublisher(Protocol):
    """Where decisions go; Kafka in production, a list in unit tests."""

    def publish(self, tenant: str, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class KafkaDecisionPublisher:
    """Publishes routing_decision records keyed by tenant; never blocks the RPC on delivery."""

    FLUSH_TIMEOUT_S = 10.0

    def __init__(self, settings: Settings):
        self.topic = ROUTING_DECISIONS.name(settings)
        self.published = 0
        self.failures = 0
        self._codec = codec_for(ROUTING_DECISIONS.schema)
        self._producer = Producer({
            **settings.kafka_client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "client.id": "prismops-gateway",
        })

    def publish(self, tenant: str, record: Mapping[str, Any]) -> None:
        try:
            value = self._codec.encode(record)
        except CodecError as exc:
            self.failures += 1
            log.error("decision %s not published, it does not fit the schema: %s", record.get("decision_id"), exc)
            return
        try:
            self._produce(tenant, value)
        except BufferError:
            self._producer.poll(0.5)
            try:
                self._produce(tenant, value)
            except (BufferError, KafkaException) as exc:
                self.failures += 1
                log.error("decision %s not published, the producer queue is full: %s", record.get("decision_id"), exc)
                return
        except KafkaException as exc:
            self.failures += 1
            log.error("decision %s not published: %s", record.get("decision_id"), exc)
            return
        self._producer.poll(0)

    def _produce(self, tenant: str, value: bytes) -> None:
        self._producer.produce(self.topic, key=tenant.encode(), value=value, on_delivery=self._on_delivery)

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is not None:
            self.failures += 1
            log.error("decision delivery to %s failed: %s", self.topic, error)
        else:
            self.published += 1

    def close(self) -> None:
        undelivered = self._producer.flush(self.FLUSH_TIMEOUT_S)
        if undelivered:
            log.error("%d decisions were still undelivered to %s at shutdown", undelivered, self.topic)


def request_from_proto(message: routing_pb2.DecideRequest) -> RoutingRequest:
    return RoutingRequest(
        tenant=message.tenant,
        service=message.service,
        feature=message.feature,
        request_id=message.request_id,
        allowed_models=tuple((ref.provider, ref.model) for ref in message.allowed_models),
        latency_slo_ms=message.latency_slo_ms,
        expected_input_tokens=message.expected_input_tokens,
        expected_output_tokens=message.expected_output_tokens,
    )


def response_from_choice(choice: RoutingChoice, decision_id: str) -> routing_pb2.DecideResponse:
    return routing_pb2.DecideResponse(
        decision_id=decision_id,
        model=routing_pb2.ModelRef(provider=choice.provider, model=choice.model),
        reason_code=choice.reason_code,
        reason=choice.reason,
        estimated_cost_usd=_usd_text(choice.estimated_cost_usd),
        candidates=[
            routing_pb2.Candidate(
                model=routing_pb2.ModelRef(provider=c.provider, model=c.model),
                has_live_data=c.has_live_data,
                p95_latency_ms=c.p95_latency_ms or 0.0,
                error_rate=c.error_rate or 0.0,
                sample_count=c.sample_count,
                estimated_cost_usd=_usd_text(c.estimated_cost_usd),
                eligible=c.eligible,
                verdict=c.verdict,
            )
            for c in choice.candidates
        ],
    )


def _usd_text(amount: Any) -> str:
    return format_usd(amount) if amount is not None else ""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class RouterServicer(routing_pb2_grpc.RouterServicer):
    def __init__(
        self,
        settings: Settings,
        table: LiveModelTable,
        publisher: DecisionPublisher,
        is_ready: Callable[[], bool] = lambda: True,
        clock: Callable[[], dt.datetime] = _utc_now,
        budget_gate: BudgetGate | None = None,
    ):
        self._defaults = settings.gateway
        self._table = table
        self._publisher = publisher
        self._is_ready = is_ready
        self._clock = clock
        self._budget_gate = budget_gate

    def Decide(self, request: routing_pb2.DecideRequest, context: grpc.ServicerContext) -> routing_pb2.DecideResponse:
        if not self._is_ready():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the live model and budget tables are still loading; retry shortly")
        routing_request = request_from_proto(request).with_default_tokens(
            self._defaults.default_input_tokens, self._defaults.default_output_tokens
        )
        try:
            validate_request(routing_request)
        except PolicyInputError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{error.field}: {error.message}")
        now = self._clock()
        decision_id = str(uuid.uuid4())
        block = self._budget_gate.check(routing_request, now) if self._budget_gate else None
        if block is not None:
            self._publisher.publish(routing_request.tenant, block.decision_record(routing_request, decision_id, now))
            context.set_trailing_metadata((("prismops-decision-id", decision_id),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, block.message)
        rows = self._table.rows_for(routing_request.allowed_models)
        choice = choose_model(routing_request, rows, now)
        self._publisher.publish(routing_request.tenant, choice.decision_record(routing_request, decision_id))
        return response_from_choice(choice, decision_id)


def new_health_servicer(status: int) -> health.HealthServicer:
    servicer = health.HealthServicer()
    for service in (OVERALL_HEALTH, ROUTER_SERVICE):
        servicer.set(service, status)
    return servicer


def build_server(
    settings: Settings,
    table: LiveModelTable,
    *,
    publisher: DecisionPublisher,
    health_servicer: health.HealthServicer | None = None,
    is_ready: Callable[[], bool] = lambda: True,
    budgets: BudgetStateTable | None = None,
) -> grpc.Server:
    """A bound, not yet started server with Router, health and reflection. Without a health servicer
    the router reports SERVING at once (the tables are assumed full, as in tests and embedded use); without
    a budget table no budget is enforced."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.gateway.max_workers, thread_name_prefix="router"),
        # without this a second gateway on the same port would start "fine" and silently share the traffic
        options=[("grpc.so_reuseport", 0)],
    )
    gate = BudgetGate.from_settings(settings, budgets) if budgets is not None else None
    routing_pb2_grpc.add_RouterServicer_to_server(
        RouterServicer(settings, table, publisher, is_ready, budget_gate=gate), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(
        health_servicer or new_health_servicer(health_pb2.HealthCheckResponse.SERVING), server
    )
    reflection.enable_server_reflection((ROUTER_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    address = f"{settings.gateway.host}:{settings.gateway.port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ServeError(f"cannot listen on {address}: {exc}") from exc
    if bound == 0:
        raise ServeError(f"cannot listen on {address}")
    return server


def serve(
    settings: Settings,
    stop_event: threading.Event,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    publisher: DecisionPublisher | None = None,
) -> None:
    """Run the gateway until `stop_event` is set: follow the live model and budget tables, answer Decide,
    publish decisions. Health says NOT_SERVING until both tables have caught up, and again from the start
    of shutdown."""
    table, budgets = LiveModelTable(), BudgetStateTable()
    followers = [LiveTableFollower(settings, ROUTING_TABLES, table), LiveTableFollower(settings, BUDGET_STATE, budgets)]

    def caught_up() -> bool:
        return all(f.caught_up.is_set() for f in followers)

    health_servicer = new_health_servicer(health_pb2.HealthCheckResponse.NOT_SERVING)
    publisher = publisher or KafkaDecisionPublisher(settings)
    try:
        server = build_server(
            settings, table, publisher=publisher, health_servicer=health_servicer, is_ready=caught_up, budgets=budgets,
        )
    except Exception:
        publisher.close()
        raise
    server.start()
    for follower in followers:
        follower.start()
    log.info("routing.v1.Router listening on %s:%d (following %s; budgets in %s mode)", settings.gateway.host,
             settings.gateway.port, ", ".join(f.topic for f in followers), settings.budgets.mode.upper())
    serving = False
    try:
        while not stop_event.wait(0.1):
            if not serving and caught_up():
                for service in (OVERALL_HEALTH, ROUTER_SERVICE):
                    health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
                serving = True
                log.info("tables loaded (%d models, %d budget scopes): SERVING", len(table), len(budgets))
    finally:
        log.info("shutting down: NOT_SERVING, draining for up to %.1f s", grace_s)
        health_servicer.enter_graceful_shutdown()
        server.stop(grace_s).wait()
        for follower in followers:
            follower.stop()
        publisher.close()
