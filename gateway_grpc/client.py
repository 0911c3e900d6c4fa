"""What a service needs to ask the router which model to call, and to walk the answer's fallback chain.

`RouterClient` is one channel to a gateway (bearer token and TLS optional). `call_with_fallback` is the loop
every service would otherwise write by hand: decide, call the chosen model with the step's retry policy, fall
back in order, run the shadow call in the background, and report every attempt both to the router (its
circuit breakers) and, with a `UsageProducer`, to the usage topic with the decision id that closes the loop.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prismops.gateway_grpc import response_cache as rc
from prismops.gateway_grpc.routing.v1 import routing_pb2, routing_pb2_grpc
from prismops.streams.producer import new_llm_usage_event
from prismops.streams.telemetry import PROPAGATOR

log = logging.getLogger(__name__)

ROUTER_SERVICE = routing_pb2.DESCRIPTOR.services_by_name["Router"].full_name

# ReportOutcomeRequest.status vocabulary.
OK = "ok"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
CLIENT_ERROR = "client_error"
FAILURE_STATUSES = (RATE_LIMITED, SERVER_ERROR, TIMEOUT, CLIENT_ERROR)

# The usage event's CallStatus has no separate 5xx/4xx symbols: both are "error".
USAGE_STATUS = {OK: "ok", RATE_LIMITED: "rate_limited", SERVER_ERROR: "error", TIMEOUT: "timeout", CLIENT_ERROR: "error"}

# Used when a decision carries no RetryPolicy for a step (an older gateway): the design's 1 s, 2 s, 4 s.
DEFAULT_RETRY = routing_pb2.RetryPolicy(
    max_attempts=4, backoff_ms=[1000, 2000, 4000], retry_on=[RATE_LIMITED, SERVER_ERROR, TIMEOUT],
)

ModelLike = tuple[str, str] | routing_pb2.ModelRef


def _model_ref(model: ModelLike) -> routing_pb2.ModelRef:
    if isinstance(model, routing_pb2.ModelRef):
        return model
    provider, name = model
    return routing_pb2.ModelRef(provider=provider, model=name)


class RouterClient:
    """One channel to a gateway. Errors surface as grpc.RpcError (INVALID_ARGUMENT names the bad field).

    `token` goes out as `authorization: Bearer <token>` on every call; `tls_root_cert` (PEM bytes) switches
    the channel to TLS verified against that root, otherwise the channel is plaintext."""

    def __init__(self, target: str, *, token: str | None = None, tls_root_cert: bytes | None = None):
        self.target = target
        if tls_root_cert is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_root_cert)
            self._channel = grpc.secure_channel(target, credentials)
        else:
            self._channel = grpc.insecure_channel(target)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._router = routing_pb2_grpc.RouterStub(self._channel)
        self._admin = routing_pb2_grpc.RouterAdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def decide(
        self,
        tenant: str,
        service: str,
        feature: str,
        allowed: Iterable[tuple[str, str]] = (),
        latency_slo_ms: float = 0.0,
        expected_input_tokens: int = 0,
        expected_output_tokens: int = 0,
        request_id: str = "",
        timeout: float = 2.0,
        *,
        session_id: str = "",
        task_type: str = "",
        hints: Iterable[str] = (),
        prompt_chars: int = 0,
        requires_structured_output: bool = False,
        requires_vision: bool = False,
        region: str = "",
        customer: str = "",
    ) -> routing_pb2.DecideResponse:
        """Empty `allowed` means the policy route's models; `latency_slo_ms=0` means the route's SLO."""
        request = routing_pb2.DecideRequest(
            tenant=tenant,
            service=service,
            feature=feature,
            request_id=request_id,
            allowed_models=[_model_ref(model) for model in allowed],
            latency_slo_ms=latency_slo_ms,
            expected_input_tokens=expected_input_tokens,
            expected_output_tokens=expected_output_tokens,
            session_id=session_id,
            task_type=task_type,
            hints=list(hints),
            prompt_chars=prompt_chars,
            requires_structured_output=requires_structured_output,
            requires_vision=requires_vision,
            region=region,
            customer=customer,
        )
        return self.decide_message(request, timeout=timeout)

    def decide_message(self, request: routing_pb2.DecideRequest, timeout: float = 2.0) -> routing_pb2.DecideResponse:
        """Decide with a request built by the caller (benchmarks reuse one message)."""
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier)  # the caller's trace continues in the gateway's Decide span
        return self._router.Decide(request, timeout=timeout, metadata=self._metadata + tuple(carrier.items()))

    def report_outcome(
        self,
        model: ModelLike,
        status: str,
        *,
        decision_id: str = "",
        http_status: int = 0,
        latency_ms: float = 0.0,
        shadow: bool = False,
        timeout: float = 2.0,
        retry_after_ms: int = 0,
        lease_id: str = "",
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> routing_pb2.ReportOutcomeResponse:
        """Tell the router how a call went; `status` is one of ok/rate_limited/server_error/timeout/client_error.
        `retry_after_ms` (a 429's Retry-After) keeps the model out exactly that long; `lease_id` releases the
        decision's concurrency lease; the token counts correct the estimate charged to token limits."""
        request = routing_pb2.ReportOutcomeRequest(
            decision_id=decision_id, model=_model_ref(model), status=status,
            http_status=http_status, latency_ms=latency_ms, shadow=shadow, retry_after_ms=retry_after_ms,
            lease_id=lease_id, input_tokens=input_tokens, output_tokens=output_tokens,
        )
        return self._router.ReportOutcome(request, timeout=timeout, metadata=self._metadata)

    def get_tables(self, timeout: float = 5.0) -> routing_pb2.GetTablesResponse:
        return self._router.GetTables(routing_pb2.GetTablesRequest(), timeout=timeout, metadata=self._metadata)

    def get_policy(self, timeout: float = 5.0) -> routing_pb2.PolicyDocument:
        return self._admin.GetPolicy(routing_pb2.GetPolicyRequest(), timeout=timeout, metadata=self._metadata)

    def set_policy(
        self, yaml_text: str, *, expected_version: int = 0, comment: str = "", timeout: float = 10.0,
    ) -> routing_pb2.SetPolicyResponse:
        """Install a new policy (admin role); `expected_version` makes it fail with ABORTED if someone was first."""
        request = routing_pb2.SetPolicyRequest(yaml=yaml_text, expected_version=expected_version, comment=comment)
        return self._admin.SetPolicy(request, timeout=timeout, metadata=self._metadata)

    def health(self, service: str = ROUTER_SERVICE, timeout: float = 2.0) -> int:
        """The HealthCheckResponse.ServingStatus the gateway reports for `service`."""
        request = health_pb2.HealthCheckRequest(service=service)
        return self._health.Check(request, timeout=timeout, metadata=self._metadata).status

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Poll the health service until the router says SERVING; False when `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                if self.health(timeout=min(1.0, remaining)) == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RouterClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- calling models along a decision's chain -------------------------------------------------------------


@dataclass(frozen=True)
class LlmCallOutcome:
    """What `invoke` returns for a successful LLM call: the provider's response and its usage.

    `latency_ms=None` lets `call_with_fallback` time the call itself."""

    response: Any = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    latency_ms: float | None = None
    time_to_first_token_ms: float | None = None


def status_for_http(http_status: int) -> str:
    """The outcome status an HTTP answer implies: 429 rate_limited, 5xx server_error, other 4xx client_error."""
    if http_status == 429:
        return RATE_LIMITED
    if http_status >= 500:
        return SERVER_ERROR
    if 400 <= http_status < 500:
        return CLIENT_ERROR
    raise ValueError(f"http_status: must be 4xx or 5xx for a failed call, got {http_status}")


class ProviderError(Exception):
    """Raised by `invoke` when the provider call failed; `status` decides retry and fallback."""

    def __init__(self, status: str, http_status: int = 0, message: str = "", retry_after_s: float | None = None):
        if status not in FAILURE_STATUSES:
            raise ValueError(f"status: must be one of {', '.join(FAILURE_STATUSES)}, got {status!r}")
        if retry_after_s is not None and not (isinstance(retry_after_s, (int, float)) and 0 <= retry_after_s < 1e7):
            raise ValueError(f"retry_after_s: must be seconds >= 0, got {retry_after_s!r}")
        super().__init__(message or status)
        self.status = status
        self.http_status = http_status
        self.message = message
        self.retry_after_s = retry_after_s  # the provider's Retry-After on a 429

    @classmethod
    def from_http(cls, http_status: int, message: str = "", retry_after_s: float | None = None) -> "ProviderError":
        return cls(status_for_http(http_status), http_status, message, retry_after_s)


class RoutingRefused(Exception):
    """The router answered but will not let this call go ahead."""


class BudgetRefused(RoutingRefused):
    """The tenant is over a blocking budget (gRPC FAILED_PRECONDITION); the message names the budget."""

    def __init__(self, message: str, decision_id: str = ""):
        super().__init__(message)
        self.message = message
        self.decision_id = decision_id


class RateLimited(RoutingRefused):
    """The router refused with RESOURCE_EXHAUSTED (a rate limit, quota or concurrency cap) and waiting up to
    `max_limit_wait_s` did not help; `retry_after_s` is the router's last hint, `reason_code` its reason."""

    def __init__(self, message: str, reason_code: str = "", retry_after_s: float = 0.0, decision_id: str = ""):
        super().__init__(message)
        self.message = message
        self.reason_code = reason_code
        self.retry_after_s = retry_after_s
        self.decision_id = decision_id


class TierRefused(RoutingRefused):
    """The tenant's tier allows none of the route's models (FAILED_PRECONDITION, reason tier_no_allowed_model)."""


def refusal_hints(error: grpc.RpcError) -> tuple[float | None, str, str]:
    """(retry-after seconds or None, reason code, decision id) from a refused call's trailing metadata."""
    trailing = getattr(error, "trailing_metadata", None)
    retry_after, code, decision_id = None, "", ""
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == "retry-after-ms":
            try:
                retry_after = max(0.0, int(value) / 1000.0)
            except ValueError:
                retry_after = None
        elif key == "prismops-reason-code":
            code = str(value)
        elif key == "prismops-decision-id":
            decision_id = str(value)
    return retry_after, code, decision_id


class Attempt(NamedTuple):
    provider: str
    model: str
    status: str
    latency_ms: float


class AllModelsFailed(Exception):
    """Every step of the chain failed with a retryable status and no retries were left."""

    def __init__(self, attempts: list[Attempt], last_error: ProviderError):
        tried = ", ".join(f"{a.provider}/{a.model} {a.status}" for a in attempts)
        super().__init__(f"all models failed after {len(attempts)} attempt(s): {tried}")
        self.attempts = attempts
        self.last_error = last_error


def wait_for_router(target: str, check_alive: Callable[[], None], timeout_s: float = 60.0,
                    token: str | None = None) -> str:
    """`target` once the router there says SERVING; when it does not in time, `check_alive` first says whether its
    process died (Components.check_alive raises with the log's tail), else TimeoutError."""
    with RouterClient(target, token=token) as router:
        if not router.wait_ready(timeout_s):
            check_alive()
            raise TimeoutError(f"the gateway at {target} did not report SERVING within {timeout_s:.0f} s")
    return target


@dataclass
class CallResult:
    """The answer, the model that gave it, and every attempt on the way (the caller's cost and latency story)."""

    response: Any
    provider: str
    model: str
    attempts: list[Attempt]
    decision: routing_pb2.DecideResponse
    # The background shadow call, for callers (and tests) that want to wait for it; None when none ran.
    shadow: Future | None = field(default=None, repr=False)
    # True when the response came from the response cache (no provider call, `attempts` empty).
    cache_hit: bool = False
    # The decision's estimated cost of the call a cache hit avoided, exact decimal USD text; "" otherwise.
    saved_usd: str = ""


class RoutingClient(Protocol):
    """The part of RouterClient that `call_with_fallback` uses."""

    def decide(self, tenant: str, service: str, feature: str, *args: Any, **kwargs: Any) -> Any: ...

    def report_outcome(self, model: ModelLike, status: str, **kwargs: Any) -> Any: ...


class LlmUsageSink(Protocol):
    """The part of prismops.streams.producer.UsageProducer that `call_with_fallback` uses."""

    def record_llm_call(self, event: Mapping[str, Any]) -> None: ...


Invoke = Callable[[str, str], Any]

_shadow_lock = threading.Lock()
_shadow_pool: ThreadPoolExecutor | None = None


def default_shadow_executor() -> ThreadPoolExecutor:
    """Shared by every call in the process so shadow traffic cannot grow threads without bound."""
    global _shadow_pool
    with _shadow_lock:
        if _shadow_pool is None:
            _shadow_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="prismops-shadow")
        return _shadow_pool


@dataclass(frozen=True)
class _Step:
    provider: str
    model: str
    retry: routing_pb2.RetryPolicy
    fallback: bool


def _chain(decision: routing_pb2.DecideResponse) -> list[_Step]:
    first_retry = decision.retry if decision.HasField("retry") else DEFAULT_RETRY
    steps = [_Step(decision.model.provider, decision.model.model, first_retry, fallback=False)]
    for step in decision.fallbacks:
        retry = step.retry if step.HasField("retry") else DEFAULT_RETRY
        steps.append(_Step(step.model.provider, step.model.model, retry, fallback=True))
    return steps


def _backoff_s(retry: routing_pb2.RetryPolicy, retry_number: int) -> float:
    """Wait before retry `retry_number` (1-based); past the list's end the last wait repeats."""
    if not retry.backoff_ms:
        return 0.0
    return retry.backoff_ms[min(retry_number, len(retry.backoff_ms)) - 1] / 1000.0


class _CallReporter:
    """Reports each attempt to the router and the usage topic. Router reports are advisory: a gateway that
    cannot take one must not fail a call that already happened, so such failures are logged, not raised."""

    def __init__(
        self,
        client: RoutingClient,
        decision: routing_pb2.DecideResponse,
        request: Mapping[str, Any],
        producer: LlmUsageSink | None,
        usage_defaults: Mapping[str, Any],
    ):
        self._client = client
        self._decision = decision
        self._request = request
        self._producer = producer
        self._usage_defaults = usage_defaults

    def report(
        self,
        provider: str,
        model: str,
        status: str,
        latency_ms: float,
        *,
        http_status: int = 0,
        outcome: Any = None,
        fallback: bool = False,
        shadow: bool = False,
        retry_after_s: float | None = None,
        release_lease: bool = False,
    ) -> None:
        self._report_to_router(provider, model, status, latency_ms, http_status, outcome, shadow, retry_after_s,
                               release_lease)
        if self._producer is not None:
            self._producer.record_llm_call(self._usage_event(
                provider, model, status, latency_ms, http_status, outcome, fallback=fallback, shadow=shadow,
            ))

    def report_cache_hit(self, provider: str, model: str, saved_usd: str, key: str) -> None:
        """A hit: no provider call, so no breaker moves. The router hears of it only to give the lease back (as
        a shadow outcome, which never moves breakers); the usage event says cache_hit with the money saved."""
        if self._decision.lease_id:
            self._report_to_router(provider, model, OK, 0.0, 0, None, True, None, True)
        if self._producer is not None:
            event = self._usage_event(provider, model, OK, 0.0, 0, None, fallback=False, shadow=False)
            event["cache_hit"] = True
            event["labels"] = {**(event.get("labels") or {}), rc.SAVED_USD_LABEL: saved_usd or "0",
                               rc.CACHE_KEY_LABEL: key.rpartition(":")[2][:16]}
            self._producer.record_llm_call(event)

    def _report_to_router(self, provider: str, model: str, status: str, latency_ms: float, http_status: int,
                          outcome: Any, shadow: bool, retry_after_s: float | None, release_lease: bool) -> None:
        extra: dict[str, Any] = {}
        if retry_after_s:
            extra["retry_after_ms"] = max(1, round(retry_after_s * 1000))
        if release_lease and self._decision.lease_id:
            extra["lease_id"] = self._decision.lease_id
        if outcome is not None and not shadow:
            extra["input_tokens"] = int(getattr(outcome, "input_tokens", 0) or 0)
            extra["output_tokens"] = int(getattr(outcome, "output_tokens", 0) or 0)
        try:
            self._client.report_outcome(
                (provider, model), status, decision_id=self._decision.decision_id,
                http_status=http_status, latency_ms=latency_ms, shadow=shadow, **extra,
            )
        except grpc.RpcError as error:
            log.warning("outcome of %s/%s (%s) not reported to the router: %s", provider, model, status, error)

    def _usage_event(
        self, provider: str, model: str, status: str, latency_ms: float, http_status: int, outcome: Any,
        *, fallback: bool, shadow: bool,
    ) -> dict[str, Any]:
        request = self._request
        ttft = getattr(outcome, "time_to_first_token_ms", None)
        fields: dict[str, Any] = {
            **self._usage_defaults,
            "tenant": request.get("tenant", ""),
            "service": request.get("service", ""),
            "feature": request.get("feature", ""),
            "customer": request.get("customer") or None,
            "session_id": request.get("session_id") or None,
            "request_id": request.get("request_id", ""),
            "provider": provider,
            "model": model,
            "input_tokens": int(getattr(outcome, "input_tokens", 0) or 0),
            "output_tokens": int(getattr(outcome, "output_tokens", 0) or 0),
            "cached_input_tokens": int(getattr(outcome, "cached_input_tokens", 0) or 0),
            "reasoning_tokens": int(getattr(outcome, "reasoning_tokens", 0) or 0),
            "latency_ms": round(latency_ms),
            "time_to_first_token_ms": round(ttft) if ttft is not None else None,
            "status": USAGE_STATUS[status],
            "error_code": None if status == OK else (str(http_status) if http_status else status),
            "fallback": fallback,
            "shadow": shadow,
            "decision_id": self._decision.decision_id or None,
            "prompt_chars": int(request.get("prompt_chars", 0) or 0),
        }
        return new_llm_usage_event(**fields)


class _Attempted(NamedTuple):
    outcome: Any
    error: ProviderError | None
    latency_ms: float


def _timed_invoke(invoke: Invoke, provider: str, model: str, clock: Callable[[], float]) -> _Attempted:
    """Call the model once; the latency is the outcome's own when it has one, else what `clock` saw."""
    started = clock()
    try:
        outcome = invoke(provider, model)
    except ProviderError as error:
        return _Attempted(None, error, (clock() - started) * 1000.0)
    measured = (clock() - started) * 1000.0
    own = getattr(outcome, "latency_ms", None)
    return _Attempted(outcome, None, float(own) if own is not None else measured)


def _run_shadow(invoke: Invoke, provider: str, model: str, reporter: _CallReporter, clock: Callable[[], float]) -> None:
    try:
        attempted = _timed_invoke(invoke, provider, model, clock)
        if attempted.error is not None:
            reporter.report(provider, model, attempted.error.status, attempted.latency_ms,
                            http_status=attempted.error.http_status, shadow=True)
        else:
            reporter.report(provider, model, OK, attempted.latency_ms, outcome=attempted.outcome, shadow=True)
    except Exception:  # the shadow is for comparison only: whatever it does must not reach the caller
        log.exception("shadow call to %s/%s failed", provider, model)


def call_with_fallback(
    client: RoutingClient,
    request_kwargs: Mapping[str, Any],
    invoke: Invoke,
    *,
    producer: LlmUsageSink | None = None,
    usage_defaults: Mapping[str, Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    shadow_executor: Executor | None = None,
    max_limit_wait_s: float = 30.0,
    max_retry_after_wait_s: float = 10.0,
    cache: rc.ResponseCache | None = None,
    cache_request: Any = None,
    cache_params: Mapping[str, Any] | None = None,
) -> CallResult:
    """Ask the router, then call [chosen model, *fallbacks] until one answers.

    `request_kwargs` are `RouterClient.decide`'s arguments (a request_id is generated when missing so the
    decision and every usage event share it). `invoke(provider, model)` performs the LLM call and returns an
    `LlmCallOutcome` or raises `ProviderError`. A status in the step's retry_on is retried after the step's
    backoff and, once attempts are spent, falls back to the next step; any other failure (a 4xx other than
    429) is reported and re-raised at once. `usage_defaults` supplies the usage event fields the request does
    not (the schema requires `environment`); an event that breaks the schema raises CodecError, a bug to fix
    rather than a runtime condition. Raises BudgetRefused when the tenant is over budget,
    AllModelsFailed when the whole chain failed; other gRPC errors from Decide propagate unchanged.

    Limits: a Decide refused with RESOURCE_EXHAUSTED (rate limit, quota, concurrency cap) is retried after the
    router's `retry-after-ms` (at least an exponential backoff from 50 ms, at most 5 s a wait) until
    `max_limit_wait_s` of waiting is spent, then RateLimited. A ProviderError with `retry_after_s` (a 429's
    Retry-After) is reported so the router keeps the model out that long, and the next attempt on the same
    model waits at least that long; longer than `max_retry_after_wait_s` and the chain moves to the next
    model at once. The decision's concurrency lease is released with the call's last report.

    Cache: with `cache` and `cache_request` (the JSON form of what would be sent: messages, tools...) and
    `cache_params` (model parameters: temperature, max_tokens...), a response cached for (tenant, chosen
    provider/model, request, params) is returned without calling any model (`cache_hit=True`, `saved_usd` =
    the decision's estimated cost, also on the usage event); a successful answer is stored under the model
    that gave it. Streaming, n > 1 and sampling parameters are not cached (see response_cache)."""
    request = dict(request_kwargs)
    if not request.get("request_id"):
        request["request_id"] = str(uuid.uuid4())
    decision = _decide_waiting(client, request, sleep, max_limit_wait_s)
    reporter = _CallReporter(client, decision, request, producer, usage_defaults or {})
    tenant = str(request.get("tenant", ""))
    use_cache = cache is not None and cache_request is not None
    if use_cache and cache.uncacheable(cache_params):  # type: ignore[union-attr]
        rc._count(rc.LOOKUPS, label="uncacheable")
        use_cache = False
    if use_cache:
        key = rc.cache_key(tenant, decision.model.provider, decision.model.model, cache_request, cache_params)
        hit = cache.lookup(tenant, key)  # type: ignore[union-attr]
        if hit is not None:
            saved = decision.estimated_cost_usd or "0"
            rc._count(rc.LOOKUPS, label="hit")
            rc._count(rc.SAVED_USD, float(saved))
            reporter.report_cache_hit(hit.provider, hit.model, saved, key)
            return CallResult(hit.response, hit.provider, hit.model, [], decision, None, cache_hit=True,
                              saved_usd=saved)
        rc._count(rc.LOOKUPS, label="miss")
    shadow = _start_shadow(decision, invoke, reporter, clock, shadow_executor)

    attempts: list[Attempt] = []
    last_error: ProviderError | None = None
    chain = _chain(decision)
    for step_number, step in enumerate(chain, 1):
        max_attempts = max(1, step.retry.max_attempts)
        wait_at_least = 0.0
        for attempt_number in range(1, max_attempts + 1):
            if attempt_number > 1:
                sleep(max(_backoff_s(step.retry, attempt_number - 1), wait_at_least))
            attempted = _timed_invoke(invoke, step.provider, step.model, clock)
            failure = attempted.error
            status = OK if failure is None else failure.status
            attempts.append(Attempt(step.provider, step.model, status, attempted.latency_ms))
            retry_after = failure.retry_after_s if failure is not None and failure.status == RATE_LIMITED else None
            gives_up_here = failure is not None and (
                failure.status == CLIENT_ERROR or failure.status not in step.retry.retry_on)
            # out longer than we would wait: leave this model now (for the next one, or give up when it is the last)
            leave_step = retry_after is not None and retry_after > max_retry_after_wait_s
            last = failure is None or gives_up_here or (
                step_number == len(chain) and (attempt_number == max_attempts or leave_step))
            reporter.report(step.provider, step.model, status, attempted.latency_ms, outcome=attempted.outcome,
                            http_status=failure.http_status if failure else 0, fallback=step.fallback,
                            retry_after_s=retry_after, release_lease=last)
            if failure is None:
                response = getattr(attempted.outcome, "response", None)
                if use_cache:
                    cache.store_response(  # type: ignore[union-attr]
                        tenant, rc.cache_key(tenant, step.provider, step.model, cache_request, cache_params),
                        step.provider, step.model, response,
                        int(getattr(attempted.outcome, "input_tokens", 0) or 0),
                        int(getattr(attempted.outcome, "output_tokens", 0) or 0))
                return CallResult(response, step.provider, step.model, attempts, decision, shadow)
            if gives_up_here:
                raise failure
            last_error = failure
            if leave_step:
                break
            if retry_after is not None:
                wait_at_least = retry_after
    assert last_error is not None  # the chain has at least one step and every attempt failed
    raise AllModelsFailed(attempts, last_error)


def _start_shadow(
    decision: routing_pb2.DecideResponse,
    invoke: Invoke,
    reporter: _CallReporter,
    clock: Callable[[], float],
    executor: Executor | None,
) -> Future | None:
    if not decision.HasField("shadow") or not decision.shadow.model:
        return None
    provider, model = decision.shadow.provider, decision.shadow.model
    try:
        return (executor or default_shadow_executor()).submit(_run_shadow, invoke, provider, model, reporter, clock)
    except RuntimeError as error:  # an executor already shut down: skip the comparison, keep the call
        log.warning("shadow call to %s/%s not started: %s", provider, model, error)
        return None


LIMIT_BACKOFF_BASE_S = 0.05
LIMIT_BACKOFF_MAX_S = 5.0


def _decide_waiting(
    client: RoutingClient, request: Mapping[str, Any], sleep: Callable[[float], None], max_wait_s: float,
) -> routing_pb2.DecideResponse:
    """Decide; on RESOURCE_EXHAUSTED wait (the router's retry-after, at least an exponential backoff) and
    ask again until `max_wait_s` of waiting is spent."""
    waited, retry_number = 0.0, 0
    while True:
        try:
            return client.decide(**request)
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                _, reason_code, decision_id = refusal_hints(error)
                if reason_code.startswith("tier_"):
                    raise TierRefused(error.details() or "tier refused") from error
                raise BudgetRefused(error.details() or "over budget", decision_id or _decision_id_of(error)) from error
            if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            retry_after, reason_code, decision_id = refusal_hints(error)
            backoff = min(LIMIT_BACKOFF_MAX_S, LIMIT_BACKOFF_BASE_S * 2 ** retry_number)
            wait = min(LIMIT_BACKOFF_MAX_S, max(backoff, retry_after or 0.0))
            if retry_after is None and not reason_code:
                raise  # the gateway itself is overloaded (grpc's own RESOURCE_EXHAUSTED): not ours to wait out
            if waited + wait > max_wait_s:
                raise RateLimited(error.details() or "rate limited", reason_code, retry_after or 0.0,
                                  decision_id) from error
            sleep(wait)
            waited += wait
            retry_number += 1


def _decision_id_of(error: grpc.RpcError) -> str:
    trailing = getattr(error, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == "prismops-decision-id":
            return str(value)
    return ""
