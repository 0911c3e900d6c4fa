"""`LocalStack` for real: up, idempotent up, both servers answer, down, on non-default ports in a tmp home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from prismops.infra.stack import LocalStack
from prismops.cli.commands.stack import command
from prismops.settings import Settings, StackSettings
from prismops.testing import free_port

pytestmark = pytest.mark.integration

REPO_CACHE = Path(__file__).resolve().parents[2] / ".prismops" / "cache"
PORT_FIELDS = (
    "kafka_port", "kafka_controller_port", "clickhouse_tcp_port", "clickhouse_http_port", "clickhouse_interserver_port",
)


@pytest.fixture
def stack(tmp_path):
    """A second stack beside the session's, on free ports, in its own home."""
    ports = {name: free_port() for name in PORT_FIELDS}
    settings = Settings(stack=StackSettings(home=tmp_path / "home", cache_dir=REPO_CACHE, **ports))
    local_stack = LocalStack(settings)
    yield local_stack
    local_stack.down()


def test_up_is_idempotent_answers_and_down_stops_everything(stack):
    progress: list[str] = []
    first = {s.name: s for s in stack.up(progress=progress.append)}
    assert {name: (s.state, s.started_by_us) for name, s in first.items()} == {
        "kafka": ("running", True), "clickhouse": ("running", True)
    }
    assert "starting Kafka…" in progress and "waiting for ClickHouse…" in progress
    pids = {name: s.pid for name, s in first.items()}
    assert all(pids.values())

    assert {s.name: (s.state, s.pid) for s in stack.status()} == {name: ("running", pid) for name, pid in pids.items()}
    assert {s.name: s.pid for s in stack.up()} == pids

    from clickhouse_driver import Client
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient(stack.settings.kafka_client_config()).list_topics(timeout=10)
    assert metadata.brokers
    assert Client("127.0.0.1", port=stack.settings.stack.clickhouse_tcp_port).execute("SELECT 1") == [(1,)]

    cli = CliRunner().invoke(command, ["status", "--format", "json"], obj=stack.settings)
    assert cli.exit_code == 0, cli.output
    assert {row["name"]: row["pid"] for row in json.loads(cli.output)} == pids

    assert [s.state for s in stack.down()] == ["stopped", "stopped"]
    assert [(s.state, s.pid) for s in stack.status()] == [("stopped", None), ("stopped", None)]
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists()
    assert not list((stack.paths.run).glob("*.pid"))
    assert (stack.paths.kafka_data / "meta.properties").exists()  # data stays for the next `up`


def test_restart_keeps_kafka_storage(stack):
    stack.up()
    meta = (stack.paths.kafka_data / "meta.properties").read_text()
    stack.down()
    progress: list[str] = []
    stack.up(progress=progress.append)
    assert not any("formatting" in line for line in progress)
    assert (stack.paths.kafka_data / "meta.properties").read_text() == meta
