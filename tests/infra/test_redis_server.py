"""The stack's Redis: its config, and that the stack includes it only when `redis.enabled` (no process here;
tests/integration/test_gateway_limits_on_redis.py starts the real redis-server)."""

from __future__ import annotations

from pathlib import Path

from prismops.infra.config import StackPaths
from prismops.infra.stack import LocalStack, RedisServer
from prismops.settings import Settings


def settings_at(home: Path, **redis) -> Settings:
    return Settings().with_overrides(stack={"home": home}, redis={"port": 16999, **redis})


def test_the_config_keeps_redis_on_loopback_in_memory_with_lru_and_our_argv(tmp_path):
    settings = settings_at(tmp_path, maxmemory_mb=64, password="s3cret")
    server = RedisServer(settings, StackPaths.from_settings(settings.stack))
    config = server.render_config().splitlines()
    for line in ("bind 127.0.0.1", "port 16999", 'save ""', "appendonly no", "set-proc-title no",
                 "maxmemory 64mb", "maxmemory-policy allkeys-lru", "requirepass s3cret", "protected-mode yes"):
        assert line in config
    assert server.ownership_args() == [str(tmp_path.resolve() / "redis" / "redis.conf")]
    assert server.address == "127.0.0.1:16999"


def test_the_stack_starts_redis_only_when_enabled(tmp_path):
    assert "redis" not in [s.name for s in LocalStack(settings_at(tmp_path)).servers]
    assert "redis" in [s.name for s in LocalStack(settings_at(tmp_path, enabled=True)).servers]
