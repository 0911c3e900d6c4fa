"""LocalStack's start/wait/stop logic with a stand-in server process, so no Kafka or ClickHouse is needed."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from prismops.infra.processes import process_alive, tail
from prismops.infra.stack import LocalServer, LocalStack, StackError, find_or_install
from prismops.settings import Settings, StackSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandInServer(LocalServer):
    """Runs a Python one-liner as "the server"; it never answers unless told to."""

    name = "stand-in"
    title = "Stand-in"

    def __init__(self, settings: Settings, paths, script: str, answering: bool = False) -> None:
        super().__init__(settings, paths)
        self.port = free_port()
        self.ports = (self.port,)
        self.log_path = self.console_log = paths.logs / "stand-in.log"
        self.script = f"# stand-in for {paths.home}\n{script}"
        self.answering = answering

    def ownership_args(self) -> list[str]:
        return [self.script]

    def prepare(self, progress) -> list[str]:
        return [sys.executable, "-c", self.script]

    def answers(self, timeout_s: float) -> bool:
        return self.answering


@pytest.fixture
def stand_in_stack(tmp_path: Path):
    """Builds a LocalStack around one stand-in server and stops whatever it left running."""
    stacks: list[LocalStack] = []

    def build(script: str, answering: bool = False, timeout_s: float = 1.0) -> LocalStack:
        stack = LocalStack(Settings(stack=StackSettings(home=tmp_path, start_timeout_s=timeout_s)))
        stack.servers = [StandInServer(stack.settings, stack.paths, script, answering)]
        stacks.append(stack)
        return stack

    yield build
    for stack in stacks:
        stack.down()


def test_a_server_that_exits_while_starting_is_reported_with_its_log(tmp_path, stand_in_stack):
    stack = stand_in_stack("print('bind failed: port in use', flush=True); raise SystemExit(3)")
    with pytest.raises(StackError, match="exited with code 3") as error:
        stack.up()
    assert "bind failed: port in use" in str(error.value)
    assert not (tmp_path / "run" / "stand-in.pid").exists()


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path, stand_in_stack):
    stack = stand_in_stack("import time\nprint('still booting', flush=True)\ntime.sleep(120)", timeout_s=1.0)
    with pytest.raises(StackError, match="did not answer .* within 1s") as error:
        stack.up()
    assert "still booting" in str(error.value)
    assert [s.state for s in stack.status()] == ["stopped"]
    assert not (tmp_path / "run" / "stand-in.pid").exists()


def test_up_twice_keeps_the_pid_and_down_stops_it(tmp_path, stand_in_stack):
    stack = stand_in_stack("import time\ntime.sleep(120)", answering=True)
    first = stack.up()[0]
    assert (first.state, first.started_by_us) == ("running", True)
    assert stack.up()[0].pid == first.pid
    assert stack.down()[0].state == "stopped"
    assert not process_alive(first.pid)


def test_tail_reads_only_the_last_lines(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("".join(f"line {n}\n" for n in range(100_000)))
    assert tail(log, 2) == "line 99998\nline 99999"
    assert "no log" in tail(tmp_path / "missing.log")


def test_a_missing_tool_without_root_says_what_to_install(monkeypatch):
    monkeypatch.setattr("prismops.infra.stack.os.geteuid", lambda: 1000)
    with pytest.raises(StackError, match=r"`no-such-server` not found; .*apt-get install -y no-such-package"):
        find_or_install("no-such-server", "no-such-package", progress=lambda message: None)
