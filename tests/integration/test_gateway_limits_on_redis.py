"""Two gateways share one set of limits through a real Redis (Debian's `redis-server`, started by the stack's
own `RedisServer`, on a free port under a private home): a model's RPM, a tenant's TPM with its retry-after,
and a concurrency cap hold across both, as one gateway would hold them alone. No fake Redis: when
redis-server cannot be found or installed, the test fails with the launcher's message."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import yaml

from prismops.gateway_grpc import codegen

codegen.ensure_stubs()

from prismops.gateway_grpc.client import LlmCallOutcome, RouterClient, call_with_fallback, refusal_hints  # noqa: E402
from prismops.gateway_grpc.live_table import LiveModelTable  # noqa: E402
from prismops.gateway_grpc.policy_config import BUNDLED_POLICY  # noqa: E402
from prismops.gateway_grpc.redis_limits import RedisLimitStore  # noqa: E402
from prismops.gateway_grpc.server import DiscardingPublisher, GatewayState, build_server, open_policy_store  # noqa: E402
from prismops.settings import Settings  # noqa: E402
from prismops.testing import free_port  # noqa: E402

GPT4O, SONNET = ("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4")


def row(provider: str, model: str, p95: float, input_price: str, output_price: str) -> dict:
    import datetime as dt

    return {
        "provider": provider, "model": model, "window_seconds": 300.0, "sample_count": 120, "error_count": 0,
        "error_rate": 0.0, "p50_latency_ms": p95 / 2, "p95_latency_ms": p95, "p99_latency_ms": p95 * 1.4,
        "cost_usd": Decimal("0.25"), "tokens": 400_000, "input_price_per_mtok": Decimal(input_price),
        "output_price_per_mtok": Decimal(output_price), "updated_at": dt.datetime.now(dt.timezone.utc),
    }


@pytest.fixture()
def two_gateways(redis_settings: Settings, tmp_path: Path) -> Iterator[tuple[RouterClient, RouterClient]]:
    document = yaml.safe_load(BUNDLED_POLICY.read_text(encoding="utf-8"))
    document["limits"] = {
        "models": {"openai/gpt-4o": {"rpm": 4}},
        "tenants": {"tight": {"tpm": 3000}},
        "concurrency": [{"name": f"support-{tmp_path.name}", "match": {"service": "support-bot"},
                         "max_in_flight": 3, "lease_ttl_s": 60}],
    }
    for route in document["routes"]:
        route.pop("shadow", None)  # a sampled shadow call runs outside the lease
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(document))
    prefix = f"{redis_settings.redis.key_prefix}{tmp_path.name}:"  # each test its own counters
    servers, clients = [], []
    for _ in range(2):
        settings = redis_settings.with_overrides(
            gateway={"host": "127.0.0.1", "port": free_port(), "policy_file": policy, "limits_store": "redis",
                     "metrics_port": 0},
            redis={"key_prefix": prefix},
        )
        table = LiveModelTable()
        table.upsert(row(*GPT4O, 600, "2.5", "10"))
        table.upsert(row(*SONNET, 700, "3", "15"))
        holder: dict[str, GatewayState] = {}
        state = holder["state"] = GatewayState(settings, table, open_policy_store(settings, None, holder))
        assert isinstance(state.limiter.store, RedisLimitStore) and state.limiter.store.ping()
        server = build_server(settings, table, publisher=DiscardingPublisher(), state=state)
        server.start()
        servers.append(server)
        client = RouterClient(f"127.0.0.1:{settings.gateway.port}")
        assert client.wait_ready(10)
        clients.append(client)
    yield clients[0], clients[1]
    for client in clients:
        client.close()
    for server in servers:
        server.stop(0).wait()


def chat(client: RouterClient, tenant: str = "acme"):
    return client.decide(tenant, "chat", "answer", [GPT4O, SONNET], expected_input_tokens=1000,
                         expected_output_tokens=500)


def test_two_gateways_share_one_model_rpm(two_gateways):
    a, b = two_gateways
    chosen = [chat(gateway).model.model for gateway in (a, b, a, b)]
    assert chosen == ["gpt-4o"] * 4  # 4 rpm in all, not 4 per gateway
    for gateway in (a, b):
        answer = chat(gateway)
        assert answer.model.model == "claude-sonnet-4" and "rate_limited_skip" in answer.reason_codes


def test_a_tenant_at_its_tpm_is_refused_by_either_gateway_with_a_retry_after(two_gateways):
    a, b = two_gateways
    chat(a, "tight")
    chat(b, "tight")  # 3,000 estimated tokens across both
    for gateway in (a, b):
        with pytest.raises(grpc.RpcError) as raised:
            chat(gateway, "tight")
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        retry_after, reason, _ = refusal_hints(raised.value)
        assert reason == "tenant_rate_limited" and 0 < retry_after <= 30.0


def test_a_concurrency_cap_holds_across_gateways_and_a_lease_is_released_on_the_other(two_gateways):
    a, b = two_gateways
    leases = [gateway.decide("acme", "support-bot", "chat") for gateway in (a, b, a)]
    with pytest.raises(grpc.RpcError) as raised:
        b.decide("acme", "support-bot", "chat")
    assert refusal_hints(raised.value)[1] == "concurrency_limited"
    first = leases[0]
    assert b.report_outcome(first.model, "ok", lease_id=first.lease_id).lease_state == "released"
    assert a.report_outcome(first.model, "ok", lease_id=first.lease_id).lease_state == "not_held"
    assert b.decide("acme", "support-bot", "chat").lease_id


def test_a_cap_of_3_holds_for_20_concurrent_callers_spread_over_both_gateways(two_gateways):
    in_flight, most = 0, 0
    lock = threading.Lock()

    def invoke(provider: str, model: str) -> LlmCallOutcome:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.02)  # hold the lease a moment so callers overlap
        with lock:
            in_flight -= 1
        return LlmCallOutcome(response="ok", latency_ms=1)

    def one_call(i: int) -> str:
        gateway = two_gateways[i % 2]
        result = call_with_fallback(gateway, {"tenant": f"t{i}", "service": "support-bot", "feature": "chat"},
                                    invoke, max_limit_wait_s=120, sleep=lambda s: time.sleep(min(s, 0.05)))
        return result.model

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one_call, range(20)))
    assert len(results) == 20 and 1 <= most <= 3


def store_of_its_own(redis_settings: Settings, tmp_path: Path) -> RedisLimitStore:
    """A store on the real server whose keys no other test touches."""
    return RedisLimitStore.from_settings(redis_settings.redis.model_copy(
        update={"key_prefix": f"{redis_settings.redis.key_prefix}{tmp_path.name}:"}))


def scripts_run(store: RedisLimitStore) -> int:
    """Lua script calls the real server has answered so far (its own count, from INFO commandstats)."""
    return store._client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def test_peek_each_answers_as_a_peek_of_each_group_in_one_script_call_and_spends_nothing(redis_settings, tmp_path):
    from prismops.gateway_grpc.limits import BUCKET, WINDOW, Charge

    store = store_of_its_own(redis_settings, tmp_path)
    spent = Charge("model:spent:rpm", BUCKET, 2, 1, 60.0, "spent rpm 2")
    fresh = Charge("model:fresh:rpm", BUCKET, 2, 1, 60.0, "fresh rpm 2")
    # a window of 10^7 s (116 days): the test never straddles its end, as it could a day's in its last second
    daily = Charge("tier:long:requests", WINDOW, 1, 1, 1e7, "requests 1 per 10^7 s")
    for charge in (spent, spent, daily):
        assert store.take([charge], 0.0) == (0.0, None)
    groups = [[fresh], [], [spent], [fresh, daily], [fresh, spent]]

    before = scripts_run(store)
    waits = store.peek_each(groups, 0.0)

    assert scripts_run(store) - before == 1
    one_by_one = [store.peek(group, 0.0) if group else 0.0 for group in groups]
    assert waits == pytest.approx(one_by_one, abs=0.5)  # a spent bucket refills between the two asks
    assert waits[0] == waits[1] == 0.0 and min(waits[2], waits[3], waits[4]) > 0
    assert waits[3] == pytest.approx(1e7 - time.time() % 1e7, abs=2)  # the window waits for its end
    assert store.peek_each(groups, 0.0)[0] == 0.0 and store.peek([fresh], 0.0) == 0.0  # peeking spent nothing


def test_take_unless_checks_every_group_and_spends_the_last_in_one_script_call(redis_settings, tmp_path):
    from prismops.gateway_grpc.limits import BUCKET, Charge

    store = store_of_its_own(redis_settings, tmp_path)
    tenant = Charge("tenant:acme:rpm", BUCKET, 3, 1, 60.0, "tenant acme rpm 3")
    chosen = Charge("model:chosen:rpm", BUCKET, 3, 1, 60.0, "chosen rpm 3")
    other = Charge("model:other:rpm", BUCKET, 1, 1, 60.0, "other rpm 1")

    store.peek([other], 0.0)  # the script is loaded: every call below is one EVALSHA
    before = scripts_run(store)
    assert store.take_unless([[tenant], [chosen], [other]], [tenant, chosen], 0.0)
    assert scripts_run(store) - before == 1
    assert store.peek([other], 0.0) == 0.0  # only checked, not spent
    assert store.peek([Charge("tenant:acme:rpm", BUCKET, 3, 3, 60.0)], 0.0) > 0  # 1 of 3 spent: 3 more would wait

    assert store.take([other], 0.0) == (0.0, None)  # another gateway spends the other candidate's last call
    assert not store.take_unless([[tenant], [chosen], [other]], [tenant, chosen], 0.0)  # a checked group waits
    assert store.take_unless([[tenant], [chosen]], [tenant, chosen], 0.0)  # 2 of 3 spent now
    assert store.take_unless([], [tenant], 0.0)  # 3 of 3
    assert not store.take_unless([], [chosen, tenant], 0.0)  # the take itself would wait now (the tenant's)
    assert store.peek([chosen], 0.0) == 0.0  # and nothing of it was spent: the chosen model has 1 of 3 left
    assert store.take_unless([], [], 0.0)


def test_peek_each_fails_open_when_redis_does_not_answer(redis_settings):
    from prismops.gateway_grpc.limits import BUCKET, Charge

    store = RedisLimitStore.from_settings(redis_settings.redis.model_copy(update={"port": free_port(), "timeout_s": 1.0}))
    charge = Charge("model:any:rpm", BUCKET, 1, 1, 60.0, "any rpm 1")

    assert store.peek_each([[charge], [], [charge, charge]], 0.0) == [0.0, 0.0, 0.0]
