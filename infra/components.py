"""Run the PrismOps components (worker, sink, gateway, alerts) as child processes, as an operator would.

Used by `prismops demo` and the end-to-end tests, so both exercise the real commands.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from prismops.settings import Settings, settings_as_env

# Faust logs a crashed agent or service as "Crashed reason=..." and Python prints "Traceback (...)" for any
# unhandled error; PartitionsMismatch is the first-run changelog race.
CRASH_MARKERS = re.compile(r"Crashed reason=|Traceback \(most recent call last\)|PartitionsMismatch")

COMPONENT_COMMANDS: dict[str, list[str]] = {
    "worker": ["worker", "--loglevel", "INFO"],
    "sink": ["sink"],
    "gateway": ["gateway", "serve"],
    "alerts": ["alerts"],
    "http_ingest": ["ingest", "serve"],  # needs http_ingest.tokens_file in the settings  # idles when budgets.webhook_url is unset, so starting it is always safe
}


def _worker_ready(log: str) -> bool:
    """Whether the worker's latest start reached Ready (mode installs its signal handlers before that)."""
    started = log.rfind("[^Worker]: Starting...")
    return started >= 0 and log.find("[^Worker]: Ready", started) > started


@dataclass
class Components:
    """Child processes started together and always stopped together (SIGTERM, then SIGKILL)."""

    settings: Settings
    log_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, *names: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRISMOPS_")} | settings_as_env(self.settings)
        env["PYTHONUNBUFFERED"] = "1"  # a component killed with -9 keeps its last log lines
        for name in names:
            log = open(self.log_path(name), "ab")
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "prismops", *COMPONENT_COMMANDS[name]],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
            log.close()

    def kill(self, name: str) -> None:
        """SIGKILL one component, as a crash or the OOM killer would, and reap it."""
        process = self.processes[name]
        if process.poll() is None:
            process.kill()
        process.wait()

    def terminate(self, name: str, timeout_s: float = 30.0) -> int:
        """SIGTERM one component (its clean stop) and wait; SIGKILL if it does not exit in time."""
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def restart(self, name: str) -> None:
        """Start a component again after `kill`; its log continues in the same file."""
        process = self.processes.get(name)
        if process is not None and process.poll() is None:
            raise RuntimeError(f"{name} is still running (pid {process.pid})")
        self.start(name)

    def alive(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def crashes(self, name: str) -> list[str]:
        """Lines of a component's log that say an agent or the process crashed (a normal run has none)."""
        path = self.log_path(name)
        if not path.is_file():
            return []
        return [line for line in path.read_text(errors="replace").splitlines() if CRASH_MARKERS.search(line)]

    def log_tails(self, lines: int = 25) -> str:
        """The last lines of every component's log, for a failure message that explains itself in CI."""
        parts = []
        for name in self.processes:
            path = self.log_path(name)
            tail = path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []
            parts.append(f"--- last lines of {name}.log:\n" + ("\n".join(tail) or "(empty)"))
        return "\n".join(parts)

    def worker_stacks(self, wait_s: float = 3.0) -> str:
        """Every thread's and asyncio task's stack of the running worker: mode's Worker writes them to its log on
        SIGUSR1 (only the worker handles that signal; it would end the other components). For a stalled test's
        message: it shows which agent waits on what."""
        process = self.processes.get("worker")
        if process is None or process.poll() is not None:
            return "(the worker is not running)"
        path = self.log_path("worker")
        if not _worker_ready(path.read_text(errors="replace") if path.is_file() else ""):
            return "(the worker has not logged Ready since it started: no signal handler yet, so no stacks)"
        before = path.stat().st_size
        process.send_signal(signal.SIGUSR1)
        deadline, size = time.monotonic() + wait_s, before
        while time.monotonic() < deadline:
            time.sleep(0.5)
            grown = path.stat().st_size
            if grown > before and grown == size:
                break
            size = grown
        with path.open("rb") as log:
            log.seek(before)
            return log.read().decode(errors="replace") or "(the worker wrote no stacks)"

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = self.log_path(name).read_text(errors="replace").splitlines()[-25:]
                raise RuntimeError(f"{name} exited with {process.returncode}; last log lines:\n" + "\n".join(tail))

    def stop(self, timeout_s: float = 30.0) -> dict[str, int]:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        self.processes.clear()
        return codes

    def __enter__(self) -> "Components":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
