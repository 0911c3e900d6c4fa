"""A command that cannot reach Kafka or ClickHouse says where it tried and how to start the stack: one line on
stderr, a non-zero exit, no traceback; `--debug` shows the traceback. Run as a user would, in a subprocess,
against ports where nothing listens (no server is needed, none is faked)."""

from __future__ import annotations

import os
import subprocess
import sys

from prismops.testing import free_port


def prismops(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRISMOPS_")}
    return subprocess.run([sys.executable, "-m", "prismops", *args], capture_output=True, text=True,
                          env=base | env, timeout=120)


def test_an_unreachable_clickhouse_is_named_without_a_traceback():
    port = free_port()
    result = prismops("report", "spend", PRISMOPS_CLICKHOUSE__PORT=str(port))
    assert result.returncode == 1
    assert f"cannot reach ClickHouse at 127.0.0.1:{port}" in result.stderr
    assert "prismops stack up" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "migrate" not in result.stderr  # not a missing schema


def test_an_unreachable_kafka_is_named_without_a_traceback():
    port = free_port()
    result = prismops("topics", "create", PRISMOPS_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
                      PRISMOPS_KAFKA__ADMIN_TIMEOUT_S="2")
    assert result.returncode == 1
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in result.stderr
    assert "prismops stack up" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_debug_shows_the_traceback():
    port = free_port()
    result = prismops("--debug", "report", "spend", PRISMOPS_CLICKHOUSE__PORT=str(port))
    assert result.returncode != 0
    assert "Traceback" in result.stderr
