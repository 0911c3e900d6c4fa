"""The local stack's rendered server configs and its "is this process ours?" logic, without starting anything."""

from __future__ import annotations

import json
import os
import socket
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from prismops.infra.config import StackPaths, render_clickhouse_config, render_kafka_properties
from prismops.infra.processes import cmdline_matches, process_alive, read_cmdline
from prismops.infra.stack import LocalStack
from prismops.cli.commands.stack import command
from prismops.settings import Settings, StackSettings

PORTS = dict(
    kafka_port=39092, kafka_controller_port=39093,
    clickhouse_tcp_port=39000, clickhouse_http_port=38123, clickhouse_interserver_port=39009,
)


def stack_settings(home: Path, **overrides) -> StackSettings:
    return StackSettings(home=home, **{**PORTS, **overrides})


def parse_properties(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_paths_are_absolute_and_cache_defaults_under_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = StackPaths.from_settings(StackSettings(home=Path("state")))
    assert paths.home == tmp_path / "state"
    assert paths.kafka_libs == tmp_path / "state" / "cache" / "kafka-3.9.1" / "libs"
    assert paths.maven_repo == tmp_path / "state" / "cache" / "m2"


def test_cache_dir_can_live_outside_home(tmp_path):
    stack = StackSettings(home=tmp_path / "a", cache_dir=tmp_path / "shared", kafka_version="3.8.0")
    paths = StackPaths.from_settings(stack)
    assert paths.kafka_libs == tmp_path / "shared" / "kafka-3.8.0" / "libs"
    assert paths.kafka_data == tmp_path / "a" / "kafka" / "data"


def test_kafka_properties_use_configured_ports_and_data_dir_on_loopback(tmp_path):
    stack = stack_settings(tmp_path)
    props = parse_properties(render_kafka_properties(stack, StackPaths.from_settings(stack)))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:39092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:39093"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")
    assert props["process.roles"] == "broker,controller"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["log.cleaner.backoff.ms"] == "1000", "changelogs compacted soon after a segment rolls"
    assert "0.0.0.0" not in "".join(props.values())


def test_clickhouse_config_uses_configured_ports_and_paths_on_loopback(tmp_path):
    stack = stack_settings(tmp_path)
    root = ET.fromstring(render_clickhouse_config(stack, StackPaths.from_settings(stack)))
    assert root.tag == "yandex"
    assert [host.text for host in root.findall("listen_host")] == ["127.0.0.1"]
    assert root.findtext("tcp_port") == "39000"
    assert root.findtext("http_port") == "38123"
    assert root.findtext("interserver_http_port") == "39009"
    assert root.findtext("path") == f"{tmp_path}/clickhouse/data/"
    assert root.findtext("logger/log") == str(tmp_path / "logs" / "clickhouse-server.log")
    assert root.findtext("logger/errorlog") == str(tmp_path / "logs" / "clickhouse-error.log")
    assert root.findtext("users_config") == "users.xml"


def test_clickhouse_config_escapes_paths(tmp_path):
    stack = stack_settings(tmp_path / "R&D <stack>")
    root = ET.fromstring(render_clickhouse_config(stack, StackPaths.from_settings(stack)))
    assert root.findtext("path") == f"{tmp_path}/R&D <stack>/clickhouse/data/"


def test_clickhouse_users_are_loopback_only_and_skip_settings_18_16_rejects():
    users_xml = (Path(__file__).resolve().parents[2] / "infra" / "clickhouse" / "users.xml").read_text()
    root = ET.fromstring(users_xml)
    assert [ip.text for ip in root.findall("users/default/networks/ip")] == ["127.0.0.1", "::1"]
    assert "allow_experimental_decimal_type" not in users_xml


def test_cmdline_matches_needs_every_expected_arg_verbatim():
    argv = ["/usr/bin/java", "-Xmx768m", "-cp", "/c/libs/*", "kafka.Kafka", "/home/a/kafka/server.properties"]
    assert cmdline_matches(argv, ["kafka.Kafka", "/home/a/kafka/server.properties"])
    assert not cmdline_matches(argv, ["kafka.Kafka", "/home/b/kafka/server.properties"])
    assert not cmdline_matches(argv, ["--config-file=/home/a/clickhouse/config.xml"])
    assert not cmdline_matches(None, ["kafka.Kafka"])
    assert not cmdline_matches([], [])


def test_read_cmdline_of_this_process_and_of_a_gone_one():
    assert read_cmdline(os.getpid()) == sys.orig_argv
    assert process_alive(os.getpid())
    assert read_cmdline(2**22 + 12345) is None
    assert not process_alive(2**22 + 12345)


def test_status_of_an_empty_home_is_stopped_and_down_spares_a_foreign_pid(tmp_path):
    stack = LocalStack(Settings(stack=stack_settings(tmp_path)))
    assert [(s.name, s.state, s.pid) for s in stack.status()] == [
        ("kafka", "stopped", None), ("clickhouse", "stopped", None)
    ]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "kafka.pid").write_text(f"{os.getpid()}\n")  # a reused pid: alive, but not our broker
    assert stack.status()[0].state == "stopped"
    statuses = stack.down()
    assert [s.state for s in statuses] == ["stopped", "stopped"]
    assert not (tmp_path / "run" / "kafka.pid").exists()
    assert process_alive(os.getpid())


def test_status_reports_a_foreign_listener_as_external(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        stack = LocalStack(Settings(stack=stack_settings(tmp_path, clickhouse_tcp_port=port)))
        clickhouse = stack.status()[1]
    assert (clickhouse.state, clickhouse.started_by_us, clickhouse.pid) == ("external", False, None)


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_stack_status_command(tmp_path, fmt):
    result = CliRunner().invoke(command, ["status", "--format", fmt], obj=Settings(stack=stack_settings(tmp_path)))
    assert result.exit_code == 0, result.output
    if fmt == "json":
        assert [row["state"] for row in json.loads(result.output)] == ["stopped", "stopped"]
    else:
        assert "kafka" in result.output and "clickhouse" in result.output
