"""The gateway's decision memo gives the answers the engine gives: two gateways, one remembering answers and one
deciding every request afresh, are driven through the same script (live rows changing and going stale,
breakers opening on failures and on a 429's Retry-After and closing again, rate limits spent and refilled,
budgets, a policy change, leases, refusals) and must answer every call alike: the same response, the same
status, the same decision record. The memo must also be used, or the comparison would prove nothing."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.gateway_grpc import server as server_module  # noqa: E402
from prismops.gateway_grpc.live_table import LiveModelTable  # noqa: E402
from prismops.gateway_grpc.policy_config import BUNDLED_POLICY  # noqa: E402
from prismops.gateway_grpc.routing.v1 import routing_pb2  # noqa: E402
from prismops.gateway_grpc.server import (  # noqa: E402
    GatewayState, RouterServicer, TemplatedRecord, encode_gateway_record, memo_key, memo_shape, open_policy_store,
)
from prismops.settings import Settings  # noqa: E402
from prismops.streams.codecs import codec_for  # noqa: E402
from prismops.streams.topics import ROUTING_DECISIONS  # noqa: E402

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.timezone.utc)
DECISIONS = codec_for(ROUTING_DECISIONS.schema)
GPT4O, SONNET, MINI, FLASH = ("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4"), ("openai", "gpt-4o-mini"), \
    ("google", "gemini-2.0-flash")
LIMITS = {
    "models": {"openai/gpt-4o": {"rpm": 8}},
    "tenants": {"tight": {"tpm": 4000}},
    "concurrency": [{"name": "support", "match": {"service": "support-bot"}, "max_in_flight": 2, "lease_ttl_s": 60}],
    "max_retry_after_s": 600,
}
TIERS = {"tiers": {"free": {"model_tiers": ["local"]}, "mid": {"model_tiers": ["economy", "local"]}},
         "tenants": {"hobby": "free", "middle": "mid"}}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now


class Aborted(Exception):
    pass


class Context:
    def __init__(self) -> None:
        self.status: tuple[Any, str] | None = None
        self.trailers: tuple = ()

    def invocation_metadata(self) -> tuple:
        return ()

    def code(self) -> Any:
        return self.status[0] if self.status else None

    def set_trailing_metadata(self, trailers: tuple) -> None:
        self.trailers = trailers

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise Aborted(details)


class Recording:
    """Keeps each record and its bytes as the deployed publisher writes them (a remembered decision from its
    template, `encode_gateway_record`), and how many were written from a template."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.values: list[bytes] = []
        self.templated = 0

    def publish(self, key: str, record: Any) -> None:
        self.records.append(dict(record))
        self.values.append(encode_gateway_record(DECISIONS, record))
        self.templated += isinstance(record, TemplatedRecord)

    def publish_and_wait(self, key: str, record: Any, timeout_s: float) -> None:
        return None

    def close(self) -> None:
        return None


class FixedIds:
    """Both gateways get the same decision id for the same step, so shadow sampling and records compare."""

    def __init__(self) -> None:
        self.current = ""

    def new(self) -> str:
        return self.current


def row(key: tuple[str, str], p95: float, input_price: str | None, output_price: str | None, at: dt.datetime,
        error_rate: float = 1 / 120, samples: int = 120) -> dict[str, Any]:
    return {
        "provider": key[0], "model": key[1], "window_seconds": 300.0, "sample_count": samples, "error_count": 1,
        "error_rate": error_rate, "p50_latency_ms": p95 / 2, "p95_latency_ms": p95, "p99_latency_ms": p95 * 1.4,
        "cost_usd": Decimal("0.25"), "tokens": 400_000,
        "input_price_per_mtok": Decimal(input_price) if input_price else None,
        "output_price_per_mtok": Decimal(output_price) if output_price else None, "updated_at": at,
    }


class Gateway:
    def __init__(self, settings: Settings, memo: bool):
        self.clock = Clock()
        self.table = LiveModelTable()
        self.state = GatewayState(settings, self.table, open_policy_store(settings, None, {}), clock=self.clock)
        self.published = Recording()
        self.servicer = RouterServicer(self.state, self.published, memo=memo)

    def decide(self, request: routing_pb2.DecideRequest) -> tuple[Any, ...]:
        context = Context()
        try:
            response = self.servicer.Decide(request, context)
        except Aborted:
            return ("aborted", context.status, tuple(context.trailers))
        return ("ok", json_format.MessageToDict(response, preserving_proto_field_name=True))

    def report(self, request: routing_pb2.ReportOutcomeRequest) -> tuple[Any, ...]:
        context = Context()
        try:
            response = self.servicer.ReportOutcome(request, context)
        except Aborted:
            return ("aborted", context.status)
        return ("ok", json_format.MessageToDict(response, preserving_proto_field_name=True))


@pytest.fixture()
def gateways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Gateway, Gateway, FixedIds]:
    document = yaml.safe_load(BUNDLED_POLICY.read_text(encoding="utf-8"))
    document["limits"] = LIMITS
    document["tenant_tiers"] = TIERS
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    settings = Settings().with_overrides(gateway={"policy_file": path})
    ids = FixedIds()
    monkeypatch.setattr(server_module, "_decision_ids", ids)
    return Gateway(settings, memo=True), Gateway(settings, memo=False), ids


def ref(key: tuple[str, str]) -> routing_pb2.ModelRef:
    return routing_pb2.ModelRef(provider=key[0], model=key[1])


def chat(tenant: str = "acme", models=(GPT4O, SONNET, MINI), request_id: str = "", customer: str = "",
         input_tokens: int = 1000, **fields: Any) -> routing_pb2.DecideRequest:
    return routing_pb2.DecideRequest(
        tenant=tenant, service="chat", feature="answer", allowed_models=[ref(m) for m in models],
        expected_input_tokens=input_tokens, expected_output_tokens=300, latency_slo_ms=800, request_id=request_id,
        customer=customer, **fields,
    )


REQUESTS = {
    "chat": lambda n: chat(request_id=f"r-{n}", customer="jane@example.com" if n % 3 == 0 else ""),
    "chat-pair": lambda n: chat(models=(GPT4O, SONNET), request_id=f"p-{n}"),  # gpt-4o, until its rpm is spent
    "chat-big": lambda n: chat(input_tokens=5000, request_id=f"big-{n}"),
    "chat-tight": lambda n: chat(tenant="tight", request_id=f"t-{n}"),
    "chat-free": lambda n: chat(tenant="hobby"),
    "chat-middle": lambda n: chat(tenant="middle"),
    "route-models": lambda n: routing_pb2.DecideRequest(tenant="acme", service="chat", feature="answer",
                                                        expected_input_tokens=400, expected_output_tokens=100),
    "summaries": lambda n: routing_pb2.DecideRequest(tenant=f"tenant-{n % 4}", service="notes", feature="summarize"),
    "support": lambda n: routing_pb2.DecideRequest(tenant="acme", service="support-bot", feature="chat",
                                                   session_id="s-1", prompt_chars=3000),
    "bad": lambda n: chat(models=(GPT4O, GPT4O)),
    "vision-region": lambda n: chat(requires_vision=True, region="eu"),
}


def test_remembered_answers_equal_fresh_answers_through_a_script(gateways):
    remembering, deciding, ids = gateways
    both = (remembering, deciding)
    step = 0

    def at(seconds: float) -> None:
        for gateway in both:
            gateway.clock.now = NOW + dt.timedelta(seconds=seconds)

    def upsert(*rows: dict[str, Any]) -> None:
        for gateway in both:
            for r in rows:
                gateway.table.upsert(r)

    def decide_all(rounds: int = 2) -> None:
        nonlocal step
        for _ in range(rounds):
            for name, make in REQUESTS.items():
                step += 1
                ids.current = f"00000000-0000-4000-8000-{step:012d}"
                request = make(step)
                answers = [gateway.decide(request) for gateway in both]
                assert answers[0] == answers[1], f"step {step} ({name}) differs"

    def report(key: tuple[str, str], status: str, **fields: Any) -> None:
        request = routing_pb2.ReportOutcomeRequest(model=ref(key), status=status, **fields)
        answers = [gateway.report(request) for gateway in both]
        assert answers[0] == answers[1]

    def live(at_s: float, gpt4o_p95: float = 600.0, **extra: Any) -> None:
        stamp = NOW + dt.timedelta(seconds=at_s)
        upsert(row(GPT4O, gpt4o_p95, "2.5", "10", stamp, **extra), row(SONNET, 700, "3", "15", stamp),
               row(MINI, 412, "0.15", "0.6", stamp), row(FLASH, 1200, "0.10", "0.40", stamp))

    decide_all()  # no live rows: static order, nothing to remember
    live(0)
    decide_all(3)  # fresh rows: gpt-4o's rpm of 3 runs out along the way
    at(30)
    decide_all()  # the same rows, older; rate limits partly refilled
    live(30, gpt4o_p95=300)
    decide_all()  # new rows: new answers
    report(MINI, "server_error")
    report(MINI, "server_error")
    decide_all()  # counted failures, breaker still closed
    report(MINI, "server_error")
    decide_all()  # open
    at(61)
    decide_all()  # half-open: one probe
    report(MINI, "ok")
    decide_all()
    report(GPT4O, "rate_limited", http_status=429, retry_after_ms=7000)
    decide_all()  # out for 7 s
    at(66)
    decide_all()
    at(68.5)
    decide_all()  # back (probe), the rows still fresh
    report(GPT4O, "ok")
    decide_all()
    at(95)
    decide_all()  # rows 65 s old: stale, static order
    live(95, error_rate=0.6)  # a live error rate that trips gpt-4o's breaker
    upsert(row(SONNET, 700, None, None, NOW + dt.timedelta(seconds=95)))  # priced from its observed cost
    decide_all()
    at(200)
    live(200, error_rate=0.01)
    decide_all(3)
    for gateway in both:  # a policy change: same rules, a new version, nothing remembered may answer for it
        store = gateway.state.policy_store
        store.install(store.current.text + "\n# touched\n", actor="test", role="admin", source="test")
    decide_all(2)

    assert remembering.published.records == deciding.published.records
    # the remembered decisions were written from their templates, to the bytes the engine's decisions have
    assert remembering.published.values == deciding.published.values
    assert remembering.published.values == [DECISIONS.encode(record) for record in deciding.published.records]
    memo = remembering.servicer.memo
    assert memo is not None and memo.hits > 15 and memo.misses > 10
    assert remembering.published.templated == memo.hits and deciding.published.templated == 0
    assert deciding.servicer.memo is None


def test_the_memo_key_names_every_field_but_the_per_call_ones():
    base = chat(request_id="a", customer="x")
    assert memo_key(base, 64) == memo_key(chat(request_id="b", customer="y"), 64)
    for changed in (chat(tenant="other"), chat(models=(GPT4O, SONNET)), chat(input_tokens=1001),
                    chat(session_id="s"), chat(hints=["simple"]), chat(prompt_chars=10), chat(task_type="code"),
                    chat(requires_structured_output=True), chat(requires_vision=True), chat(region="eu")):
        assert memo_key(changed, 64) != memo_key(base, 64)
    assert memo_key(chat(tenant="a\u200bb"), 64) is None  # left to check_decide, which names the field
    assert memo_key(chat(), 2) is None  # too many models: check_decide refuses


def test_the_memo_shape_is_the_request_without_its_per_call_fields():
    base = chat(request_id="a", customer="x")
    assert memo_shape(base) == memo_shape(chat(request_id="b", customer="y")) == memo_shape(chat())
    for changed in (chat(tenant="other"), chat(models=(GPT4O, SONNET)), chat(input_tokens=1001),
                    chat(session_id="s"), chat(hints=["simple"]), chat(prompt_chars=10), chat(task_type="code"),
                    chat(requires_structured_output=True), chat(requires_vision=True), chat(region="eu")):
        assert memo_shape(changed) != memo_shape(base)
    assert base.request_id == "a" and base.customer == "x"  # the request itself is left as it came


def test_a_remembered_shape_still_checks_its_per_call_fields(one):
    assert one.decide(pair())[0] == "ok"
    for bad in ({"customer": "jane\x07"}, {"request_id": "r\u200b1"}, {"customer": "x" * 1000}):
        status = one.decide(chat(models=(MINI, FLASH), **bad))
        assert status[0] == "aborted" and status[1][0] == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert next(iter(bad)) in status[1][1]
    assert one.servicer.memo.hits == 0
    # allowed by the text rules but not by the fast test (a no-break space): the engine answers, as before
    assert one.decide(chat(models=(MINI, FLASH), customer="Jane\u00a0Doe"))[0] == "ok"
    assert one.servicer.memo.hits == 0
    assert one.decide(chat(models=(MINI, FLASH), request_id="fine", customer="jane"))[0] == "ok"
    assert one.servicer.memo.hits == 1


def budget_state(tenant: str, spent: str, status: str) -> dict[str, Any]:
    usage = {"budget_id": "tenant-daily-usd", "period": "daily", "period_start": dt.datetime(2026, 6, 15, tzinfo=dt.timezone.utc),
             "unit": "usd", "limit": Decimal("30"), "spent": Decimal(spent),
             "used_pct": float(Decimal(spent) * 100 / Decimal("30")), "status": status}
    return {"scope": "tenant", "scope_id": tenant, "blocked": status == "block", "blocked_reason": None,
            "budgets": [usage], "updated_at": NOW}


@pytest.fixture()
def one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """One remembering gateway with budgets, priced fresh rows of two models without limits."""
    from prismops.gateway_grpc.live_table import BudgetStateTable

    path = tmp_path / "policy.yaml"
    path.write_text(BUNDLED_POLICY.read_text(encoding="utf-8"), encoding="utf-8")
    settings = Settings().with_overrides(gateway={"policy_file": path})
    monkeypatch.setattr(server_module, "_decision_ids", FixedIds())
    gateway = Gateway.__new__(Gateway)
    gateway.clock, gateway.table, gateway.published = Clock(), LiveModelTable(), Recording()
    gateway.state = GatewayState(settings, gateway.table, open_policy_store(settings, None, {}), clock=gateway.clock,
                                 budgets=BudgetStateTable())
    gateway.servicer = RouterServicer(gateway.state, gateway.published)
    gateway.table.upsert(row(MINI, 412, "0.15", "0.6", NOW))
    gateway.table.upsert(row(FLASH, 300, "0.10", "0.40", NOW))
    return gateway


def pair() -> routing_pb2.DecideRequest:
    return chat(models=(MINI, FLASH))


def test_a_row_going_stale_is_not_answered_from_memory(one):
    fresh = [one.decide(pair()) for _ in range(2)]
    assert fresh[0] == fresh[1] and fresh[0][1]["reason_code"] == "cheapest_within_slo"
    assert one.servicer.memo.hits == 1
    one.clock.now = NOW + dt.timedelta(seconds=61)
    stale = one.decide(pair())
    assert stale[1]["reason_code"] == "static_policy_stale_tables" and stale[1]["static_fallback"] is True


def test_the_live_table_age_moves_with_the_clock(one):
    one.decide(pair())
    one.clock.now = NOW + dt.timedelta(seconds=12.3456)
    answer = one.decide(pair())
    assert one.servicer.memo.hits == 1 and answer[1]["live_table_age_ms"] == "12345"
    assert one.published.records[-1]["live_table_age_ms"] == 12345
    assert one.published.records[-1]["decided_at"] == one.clock.now


def test_a_policy_change_is_not_answered_from_memory(one):
    one.decide(pair())
    store = one.state.policy_store
    store.install(store.current.text.replace("latency_slo_ms: 10000", "latency_slo_ms: 9000"), actor="t", role="admin",
                  source="test")
    answer = one.decide(pair())
    assert int(answer[1]["policy_version"]) == 2 and one.servicer.memo.hits == 0


def test_a_budget_standing_change_is_not_answered_from_memory(one):
    one.decide(pair())
    one.state.budgets.upsert(budget_state("acme", "25", "warn"))  # 83 %: downgrade
    warned = one.decide(pair())
    assert warned[1]["budget"]["status"] == "warn" and one.servicer.memo.hits == 0
    assert one.decide(pair()) == warned and one.servicer.memo.hits == 1  # the same standing: remembered
    one.state.budgets.upsert(budget_state("acme", "31", "block"))
    blocked = one.decide(pair())
    assert blocked[0] == "aborted" and blocked[1][0] == grpc.StatusCode.FAILED_PRECONDITION


def test_the_per_call_fields_go_into_the_record(one):
    one.decide(chat(models=(MINI, FLASH), request_id="first", customer=""))
    one.decide(chat(models=(MINI, FLASH), request_id="second", customer="jane@example.com"))
    one.decide(chat(models=(MINI, FLASH), request_id="", customer=""))
    assert one.servicer.memo.hits == 2
    first, second, third = one.published.records
    assert (first["request_id"], first["customer"]) == ("first", None)
    assert second["request_id"] == "second" and second["customer"] and "jane@example.com" not in second["customer"]
    assert (third["request_id"], third["customer"]) == (None, None)
