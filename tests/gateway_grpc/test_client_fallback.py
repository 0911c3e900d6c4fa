"""call_with_fallback as pure client logic: a fake router, a scripted provider, an injected sleep and clock.

The real server is tested in test_server.py; here the point is the loop a service runs around it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.gateway_grpc.client import (  # noqa: E402
    AllModelsFailed, Attempt, BudgetRefused, LlmCallOutcome, ProviderError, RoutingRefused, call_with_fallback,
    status_for_http,
)
from prismops.gateway_grpc.routing.v1 import routing_pb2  # noqa: E402
from prismops.streams.codecs import codec_for  # noqa: E402

MINI = ("openai", "gpt-4o-mini")
HAIKU = ("anthropic", "claude-3-5-haiku")
LLAMA = ("vllm", "llama-3.1-8b")
RETRY_ALL = ["rate_limited", "server_error", "timeout"]
REQUEST = {
    "tenant": "acme", "service": "chat", "feature": "summarize", "allowed": [MINI, HAIKU, LLAMA],
    "latency_slo_ms": 800, "customer": "globex", "session_id": "sess-7", "prompt_chars": 1234,
}
USAGE_DEFAULTS = {"environment": "staging", "labels": {"team": "search"}}


def retry(max_attempts: int = 4, backoff_ms: Iterable[int] = (1000, 2000, 4000), retry_on=RETRY_ALL):
    return routing_pb2.RetryPolicy(max_attempts=max_attempts, backoff_ms=list(backoff_ms), retry_on=retry_on)


def ref(model: tuple[str, str]) -> routing_pb2.ModelRef:
    return routing_pb2.ModelRef(provider=model[0], model=model[1])


def decision(chosen=MINI, first_retry=None, fallbacks=(), shadow=None) -> routing_pb2.DecideResponse:
    response = routing_pb2.DecideResponse(
        decision_id="dec-1", model=ref(chosen), reason_code="cheapest_within_slo",
        fallbacks=[routing_pb2.RouteStep(model=ref(m), retry=r) for m, r in fallbacks],
    )
    if first_retry is not None:
        response.retry.CopyFrom(first_retry)
    if shadow is not None:
        response.shadow.CopyFrom(ref(shadow))
    return response


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailing=()):
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return self._trailing


class FakeRouter:
    """Answers Decide with a canned response (or error) and records every call."""

    def __init__(self, response: routing_pb2.DecideResponse | None = None, error: Exception | None = None,
                 report_error: Exception | None = None):
        self.response, self.error, self.report_error = response, error, report_error
        self.decide_calls: list[dict[str, Any]] = []
        self.reports: list[tuple[tuple[str, str], str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def decide(self, **kwargs: Any) -> routing_pb2.DecideResponse:
        self.decide_calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return self.response

    def report_outcome(self, model, status, **kwargs: Any) -> None:
        with self._lock:
            self.reports.append((model, status, kwargs))
        if self.report_error is not None:
            raise self.report_error

    def statuses(self, shadow: bool = False) -> list[tuple[tuple[str, str], str]]:
        return [(m, s) for m, s, kw in self.reports if kw["shadow"] is shadow]


class RecordingProducer:
    """Keeps usage events, after encoding them the way UsageProducer would (so a bad field fails here too)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record_llm_call(self, event) -> None:
        codec_for("llm_usage_event").encode(event)
        with self._lock:
            self.events.append(dict(event))


class ScriptedProvider:
    """invoke(provider, model): pops the next scripted result for that model; an exception is raised."""

    def __init__(self, script: dict[tuple[str, str], list[Any]]):
        self.script = {k: list(v) for k, v in script.items()}
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, provider: str, model: str) -> Any:
        with self._lock:
            self.calls.append((provider, model))
            result = self.script[(provider, model)].pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


class SteppingClock:
    """Each reading is `step_s` later than the last, so every call appears to take exactly `step_s`."""

    def __init__(self, step_s: float = 0.25):
        self._ticks = itertools.count()
        self._step_s = step_s
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return next(self._ticks) * self._step_s


def ok(text: str = "hello", **usage: Any) -> LlmCallOutcome:
    return LlmCallOutcome(response={"text": text}, **usage)


def run(router, provider, **kwargs):
    sleeps: list[float] = []
    kwargs.setdefault("clock", SteppingClock())
    result = call_with_fallback(router, REQUEST, provider, sleep=sleeps.append, **kwargs)
    return result, sleeps


def test_429_5xx_and_timeout_are_retried_after_1_2_and_4_seconds_then_the_answer_is_returned():
    router = FakeRouter(decision(first_retry=retry()))
    provider = ScriptedProvider({MINI: [
        ProviderError.from_http(429), ProviderError.from_http(503), ProviderError("timeout"), ok("fine"),
    ]})

    result, sleeps = run(router, provider)

    assert sleeps == [1.0, 2.0, 4.0]
    assert provider.calls == [MINI] * 4
    assert (result.provider, result.model, result.response) == (*MINI, {"text": "fine"})
    assert [a.status for a in result.attempts] == ["rate_limited", "server_error", "timeout", "ok"]
    assert router.statuses() == [(MINI, "rate_limited"), (MINI, "server_error"), (MINI, "timeout"), (MINI, "ok")]
    assert [kw["http_status"] for _, _, kw in router.reports] == [429, 503, 0, 0]
    assert {kw["decision_id"] for _, _, kw in router.reports} == {"dec-1"}


def test_a_400_is_neither_retried_nor_fallen_back_from_and_is_re_raised():
    router = FakeRouter(decision(first_retry=retry(), fallbacks=[(HAIKU, retry())]))
    provider = ScriptedProvider({MINI: [ProviderError.from_http(400, "bad schema")], HAIKU: [ok()]})

    with pytest.raises(ProviderError) as raised:
        run(router, provider)

    assert (raised.value.status, raised.value.http_status, raised.value.message) == ("client_error", 400, "bad schema")
    assert provider.calls == [MINI]
    assert router.statuses() == [(MINI, "client_error")]


def test_a_status_the_step_does_not_retry_on_stops_the_chain():
    router = FakeRouter(decision(first_retry=retry(retry_on=["rate_limited"]), fallbacks=[(HAIKU, retry())]))
    provider = ScriptedProvider({MINI: [ProviderError.from_http(500)], HAIKU: [ok()]})

    with pytest.raises(ProviderError, match="server_error"):
        run(router, provider)

    assert provider.calls == [MINI]


def test_fallbacks_are_tried_in_order_each_with_its_own_retry_policy():
    router = FakeRouter(decision(
        first_retry=retry(max_attempts=2, backoff_ms=[1000]),
        fallbacks=[(HAIKU, retry(max_attempts=3, backoff_ms=[500, 700])), (LLAMA, retry(max_attempts=1, backoff_ms=[]))],
    ))
    provider = ScriptedProvider({
        MINI: [ProviderError.from_http(502)] * 2,
        HAIKU: [ProviderError.from_http(429)] * 3,
        LLAMA: [ok("from llama")],
    })

    result, sleeps = run(router, provider)

    assert provider.calls == [MINI, MINI, HAIKU, HAIKU, HAIKU, LLAMA]
    assert sleeps == [1.0, 0.5, 0.7]
    assert (result.provider, result.model, result.response) == (*LLAMA, {"text": "from llama"})
    assert [(a.provider, a.model, a.status) for a in result.attempts] == [
        (*MINI, "server_error"), (*MINI, "server_error"),
        (*HAIKU, "rate_limited"), (*HAIKU, "rate_limited"), (*HAIKU, "rate_limited"), (*LLAMA, "ok"),
    ]


def test_backoff_repeats_its_last_wait_when_attempts_outnumber_the_list():
    router = FakeRouter(decision(first_retry=retry(max_attempts=4, backoff_ms=[250])))
    provider = ScriptedProvider({MINI: [ProviderError("timeout")] * 3 + [ok()]})

    _, sleeps = run(router, provider)

    assert sleeps == [0.25, 0.25, 0.25]


def test_a_decision_without_retry_policies_uses_1_2_4_s_on_every_step():
    router = FakeRouter(decision(fallbacks=[(HAIKU, None)]))
    provider = ScriptedProvider({MINI: [ProviderError.from_http(503)] * 4, HAIKU: [ProviderError.from_http(503)] * 3 + [ok()]})

    result, sleeps = run(router, provider)

    assert sleeps == [1.0, 2.0, 4.0, 1.0, 2.0, 4.0]
    assert result.model == HAIKU[1]


def test_when_every_step_fails_all_models_failed_carries_every_attempt():
    router = FakeRouter(decision(
        first_retry=retry(max_attempts=2, backoff_ms=[10]), fallbacks=[(HAIKU, retry(max_attempts=1))],
    ))
    provider = ScriptedProvider({MINI: [ProviderError.from_http(500), ProviderError("timeout")],
                                 HAIKU: [ProviderError.from_http(429, "slow down")]})

    with pytest.raises(AllModelsFailed) as raised:
        run(router, provider, clock=SteppingClock(0.5))

    assert raised.value.attempts == [
        Attempt(*MINI, "server_error", 500.0), Attempt(*MINI, "timeout", 500.0), Attempt(*HAIKU, "rate_limited", 500.0),
    ]
    assert raised.value.last_error.message == "slow down"
    assert "3 attempt(s)" in str(raised.value)


def test_latency_is_the_outcomes_own_when_given_else_the_clocks():
    router = FakeRouter(decision(first_retry=retry(max_attempts=2, backoff_ms=[0])))
    provider = ScriptedProvider({MINI: [ProviderError.from_http(500), ok(latency_ms=42.5)]})

    result, _ = run(router, provider, clock=SteppingClock(0.125))

    assert [a.latency_ms for a in result.attempts] == [125.0, 42.5]
    assert [kw["latency_ms"] for _, _, kw in router.reports] == [125.0, 42.5]


def test_every_attempt_emits_a_usage_event_with_the_decision_the_request_and_the_defaults():
    router = FakeRouter(decision(first_retry=retry(max_attempts=2, backoff_ms=[0]), fallbacks=[(HAIKU, retry())]))
    provider = ScriptedProvider({
        MINI: [ProviderError.from_http(503), ProviderError("timeout")],
        HAIKU: [ok(input_tokens=900, output_tokens=120, cached_input_tokens=300, reasoning_tokens=40,
                   latency_ms=812.4, time_to_first_token_ms=95.6)],
    })
    producer = RecordingProducer()

    run(router, provider, producer=producer, usage_defaults=USAGE_DEFAULTS)

    events = producer.events
    assert [(e["model"], e["status"], e["error_code"], e["fallback"]) for e in events] == [
        ("gpt-4o-mini", "error", "503", False), ("gpt-4o-mini", "timeout", "timeout", False),
        ("claude-3-5-haiku", "ok", None, True),
    ]
    request_id = router.decide_calls[0]["request_id"]
    for event in events:
        assert event["decision_id"] == "dec-1" and event["shadow"] is False
        assert (event["tenant"], event["service"], event["feature"]) == ("acme", "chat", "summarize")
        assert (event["customer"], event["session_id"], event["prompt_chars"]) == ("globex", "sess-7", 1234)
        assert (event["environment"], event["labels"]) == ("staging", {"team": "search"})
        assert event["request_id"] == request_id != ""
    assert len({e["event_id"] for e in events}) == 3
    last = events[-1]
    assert (last["provider"], last["input_tokens"], last["output_tokens"]) == ("anthropic", 900, 120)
    assert (last["cached_input_tokens"], last["reasoning_tokens"]) == (300, 40)
    assert (last["latency_ms"], last["time_to_first_token_ms"]) == (812, 96)


def test_a_429_is_reported_to_usage_as_rate_limited():
    router = FakeRouter(decision(first_retry=retry(max_attempts=2, backoff_ms=[0])))
    provider = ScriptedProvider({MINI: [ProviderError.from_http(429), ok()]})
    producer = RecordingProducer()

    run(router, provider, producer=producer, usage_defaults=USAGE_DEFAULTS)

    assert [e["status"] for e in producer.events] == ["rate_limited", "ok"]


def test_a_given_request_id_is_kept_for_the_decision_and_the_events():
    router = FakeRouter(decision())
    producer = RecordingProducer()

    call_with_fallback(router, {**REQUEST, "request_id": "req-42"}, ScriptedProvider({MINI: [ok()]}),
                       producer=producer, usage_defaults=USAGE_DEFAULTS, sleep=lambda s: None)

    assert router.decide_calls[0]["request_id"] == "req-42"
    assert producer.events[0]["request_id"] == "req-42"


def test_the_shadow_runs_in_the_background_without_delaying_the_caller():
    release_shadow = threading.Event()

    def invoke(provider: str, model: str) -> LlmCallOutcome:
        if (provider, model) == LLAMA:
            assert release_shadow.wait(5.0)
            return ok("shadow answer", input_tokens=10, output_tokens=3, latency_ms=77.0)
        return ok("primary answer")

    router = FakeRouter(decision(shadow=LLAMA))
    producer = RecordingProducer()
    with ThreadPoolExecutor(max_workers=1) as executor:
        result = call_with_fallback(router, REQUEST, invoke, producer=producer, usage_defaults=USAGE_DEFAULTS,
                                    sleep=lambda s: None, shadow_executor=executor)
        assert result.response == {"text": "primary answer"}
        assert not result.shadow.done()
        assert router.statuses(shadow=True) == []
        release_shadow.set()
        result.shadow.result(timeout=5.0)

    assert router.statuses(shadow=True) == [(LLAMA, "ok")]
    assert [kw["latency_ms"] for _, _, kw in router.reports if kw["shadow"]] == [77.0]
    shadow_events = [e for e in producer.events if e["shadow"]]
    assert [(e["model"], e["fallback"], e["decision_id"], e["input_tokens"]) for e in shadow_events] == [
        ("llama-3.1-8b", False, "dec-1", 10),
    ]


@pytest.mark.parametrize("failure", [ProviderError.from_http(503), RuntimeError("provider SDK bug")])
def test_a_failing_shadow_does_not_affect_the_caller(failure):
    provider = ScriptedProvider({MINI: [ok("primary answer")], LLAMA: [failure]})
    router = FakeRouter(decision(shadow=LLAMA))
    with ThreadPoolExecutor(max_workers=1) as executor:
        result, _ = run(router, provider, shadow_executor=executor)
        assert result.shadow.result(timeout=5.0) is None

    assert result.response == {"text": "primary answer"}
    assert [(a.model, a.status) for a in result.attempts] == [("gpt-4o-mini", "ok")]
    expected_shadow_reports = [(LLAMA, "server_error")] if isinstance(failure, ProviderError) else []
    assert router.statuses(shadow=True) == expected_shadow_reports


def test_a_shut_down_shadow_executor_skips_the_shadow_and_keeps_the_call():
    executor = ThreadPoolExecutor(max_workers=1)
    executor.shutdown()
    provider = ScriptedProvider({MINI: [ok()], LLAMA: [ok()]})

    result, _ = run(FakeRouter(decision(shadow=LLAMA)), provider, shadow_executor=executor)

    assert result.shadow is None
    assert provider.calls == [MINI]


def test_no_shadow_in_the_decision_means_no_shadow_call():
    provider = ScriptedProvider({MINI: [ok()]})

    result, _ = run(FakeRouter(decision()), provider)

    assert result.shadow is None and provider.calls == [MINI]


def test_a_router_that_cannot_take_a_report_does_not_fail_the_call():
    router = FakeRouter(decision(), report_error=FakeRpcError(grpc.StatusCode.UNAVAILABLE, "gateway restarting"))

    result, _ = run(router, ScriptedProvider({MINI: [ok("still fine")]}))

    assert result.response == {"text": "still fine"}
    assert router.statuses() == [(MINI, "ok")]


def test_a_budget_refusal_surfaces_as_budget_refused_with_the_decision_id():
    refusal = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "tenant acme is over budget daily-usd: $31 of $30",
                           trailing=[("prismops-decision-id", "dec-9")])
    provider = ScriptedProvider({MINI: [ok()]})

    with pytest.raises(BudgetRefused) as raised:
        run(FakeRouter(error=refusal), provider)

    assert isinstance(raised.value, RoutingRefused)
    assert raised.value.message == "tenant acme is over budget daily-usd: $31 of $30"
    assert raised.value.decision_id == "dec-9"
    assert provider.calls == []


def test_other_decide_errors_propagate_as_grpc_errors():
    invalid = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "tenant: is required")

    with pytest.raises(grpc.RpcError) as raised:
        run(FakeRouter(error=invalid), ScriptedProvider({}))

    assert raised.value is invalid


@pytest.mark.parametrize(("http_status", "status"), [
    (429, "rate_limited"), (500, "server_error"), (503, "server_error"), (599, "server_error"),
    (400, "client_error"), (401, "client_error"), (404, "client_error"), (422, "client_error"),
])
def test_http_statuses_map_to_outcome_statuses(http_status, status):
    assert status_for_http(http_status) == status
    assert ProviderError.from_http(http_status).status == status


def test_provider_error_names_the_field_and_the_rule_for_an_unknown_status():
    with pytest.raises(ValueError, match="status: must be one of"):
        ProviderError("exploded")
    with pytest.raises(ValueError, match="http_status: must be 4xx or 5xx"):
        status_for_http(200)
