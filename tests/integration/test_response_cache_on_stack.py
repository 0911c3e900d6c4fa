"""The response cache on the real stack: a repeated call is answered from Redis (Debian's redis-server, started
by the stack's `RedisServer`), its usage event says cache_hit with the dollars saved, and ClickHouse shows the
hit and the saving per tenant after the real worker and sink; tenant B never reads tenant A's entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal

from prismops.settings import Settings, settings_as_env
from prismops.gateway_grpc.client import LlmCallOutcome, RouterClient, call_with_fallback
from prismops.gateway_grpc.response_cache import SAVED_USD_LABEL, RedisCacheStore, ResponseCache, cache_key
from prismops.streams.producer import UsageProducer
from prismops.testing import clickhouse, wait_for

MINI = ("openai", "gpt-4o-mini")
MESSAGES = [{"role": "user", "content": "What does FinOps measure?"}]
PARAMS = {"temperature": 0, "max_tokens": 100}



def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRISMOPS_")} | settings_as_env(settings)
    return subprocess.run([sys.executable, "-m", "prismops", *args], env=env, capture_output=True, text=True,
                          timeout=120)


SAVINGS_SQL = f"""
SELECT count(), countIf(cache_hit = 1),
       sum(toDecimal64(if(has(label_keys, '{SAVED_USD_LABEL}'),
                          label_values[indexOf(label_keys, '{SAVED_USD_LABEL}')], '0'), 12))
FROM cost_lines
WHERE source = 'llm' AND tenant = %(tenant)s
"""


def test_a_repeated_call_is_served_from_the_cache_and_clickhouse_shows_the_saving(pipeline, redis_settings):
    settings, components = pipeline
    cache = ResponseCache(RedisCacheStore.from_settings(redis_settings.redis), ttl_s=300)
    calls: list[tuple[str, str]] = []

    def invoke(provider: str, model: str) -> LlmCallOutcome:
        calls.append((provider, model))
        return LlmCallOutcome(response={"text": "unit costs"}, input_tokens=120, output_tokens=60, latency_ms=850)

    tenant_a, tenant_b = f"cache-a-{uuid.uuid4().hex[:6]}", f"cache-b-{uuid.uuid4().hex[:6]}"
    results = []
    with RouterClient(f"{settings.gateway.host}:{settings.gateway.port}") as router, UsageProducer(settings) as producer:
        for tenant in (tenant_a, tenant_a, tenant_b):
            request = {"tenant": tenant, "service": "chat", "feature": "faq", "allowed": [MINI]}
            results.append(call_with_fallback(router, request, invoke, producer=producer,
                                              usage_defaults={"environment": "staging"}, cache=cache,
                                              cache_request=MESSAGES, cache_params=PARAMS))
    first, second, other_tenant = results
    assert (first.cache_hit, second.cache_hit, other_tenant.cache_hit) == (False, True, False)
    assert calls == [MINI, MINI]  # A's repeat called no model; B's identical question did
    saved = Decimal(second.saved_usd)
    assert saved > 0
    # B's key is not A's, and A's value is never handed to B even under B's key
    assert cache.lookup(tenant_b, cache_key(tenant_a, *MINI, MESSAGES, PARAMS)) is None

    client = clickhouse(settings)
    rows = wait_for(lambda: [r for r in client.execute(SAVINGS_SQL, {"tenant": tenant_a}) if r[0] >= 2],
                    180, components, "tenant A's two cost lines")
    assert rows == [(2, 1, saved)]
    assert client.execute(SAVINGS_SQL, {"tenant": tenant_b})[0][1] == 0

    report = run_cli(settings, "report", "cache", "--by", "tenant", "--format", "json")
    assert report.returncode == 0, report.stderr
    by_tenant = {row["tenant"]: row for row in json.loads(report.stdout)["rows"]}
    a, b = by_tenant[tenant_a], by_tenant[tenant_b]
    assert (a["llm_requests"], a["cache_hits"], Decimal(a["saved_usd"]), Decimal(a["hit_rate"])) == (2, 1, saved,
                                                                                                   Decimal("0.5"))
    assert Decimal(a["saved_pct"]) == (saved * 100 / (Decimal(a["llm_cost_usd"]) + saved)).quantize(Decimal("0.01"))
    assert (b["cache_hits"], Decimal(b["saved_usd"])) == (0, 0)
    only_a = run_cli(settings, "report", "cache", "--by", "tenant", "--tenant", tenant_a, "--format", "json")
    assert only_a.returncode == 0, only_a.stderr
    assert [row["tenant"] for row in json.loads(only_a.stdout)["rows"]] == [tenant_a]
